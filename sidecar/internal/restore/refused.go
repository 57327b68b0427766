package restore

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrUntouched is wrapped by every error Run returns while the destination data directory
// is still exactly as it was: the restore refused or failed before moving it aside. A
// caller may then put the old server back into service (the operator scales PostgreSQL
// and Keycloak up again). Any other error may come after the directory was replaced.
var ErrUntouched = errors.New("the data directory was not touched")

type untouchedError struct{ err error }

func (e *untouchedError) Error() string   { return e.err.Error() }
func (e *untouchedError) Unwrap() []error { return []error{e.err, ErrUntouched} }

// Untouched marks err as happening before the data directory was touched.
func Untouched(err error) error {
	if err == nil || errors.Is(err, ErrUntouched) {
		return err
	}
	return &untouchedError{err}
}

// PostmasterState is what postmaster.pid in a data directory says about a server.
type PostmasterState struct {
	// PIDFile is false when the data directory holds no postmaster.pid.
	PIDFile bool
	// PID is the process ID the file names.
	PID int
	// Live is true when that PID is a running postgres process in this PID namespace.
	Live bool
}

// CheckPostmaster reads pgdata/postmaster.pid and tells whether a live postmaster owns it.
//
// It can only see the processes of its own PID namespace: the PID in the file is alive and
// its /proc/PID/comm is "postgres" (or "postmaster"). A PID that is gone, or that belongs to
// another program, makes the file stale, as after a server that was SIGKILLed. A server in
// another PID namespace (another container or pod sharing the volume) is invisible here:
// whoever runs the restore must have stopped it first, as the operator does by waiting until
// no pod of the PostgreSQL workload exists. An unreadable or malformed file is an error:
// without it nothing can be told.
func CheckPostmaster(pgdata string) (PostmasterState, error) {
	path := filepath.Join(pgdata, "postmaster.pid")
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return PostmasterState{}, nil
	}
	if err != nil {
		return PostmasterState{}, fmt.Errorf("read %s: %w", path, err)
	}
	first, _, _ := bytes.Cut(raw, []byte("\n"))
	pid, err := strconv.Atoi(strings.TrimSpace(string(first)))
	if err != nil || pid <= 0 {
		return PostmasterState{}, fmt.Errorf("%s does not start with a process ID (%q): cannot tell whether PostgreSQL runs; stop it and remove the file", path, first)
	}
	st := PostmasterState{PIDFile: true, PID: pid}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return st, nil // no such process: stale
	}
	comm, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "comm"))
	if err != nil {
		// The process exists but cannot be inspected: assume the worst.
		st.Live = true
		return st, nil
	}
	switch strings.TrimSpace(string(comm)) {
	case "postgres", "postmaster":
		st.Live = true
	}
	return st, nil
}
