package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/spf13/cobra"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/walarchive"
	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// Exit statuses of wal-fetch, as restore_command's caller reads them: 1 means "not in the
// archive" (recovery may end there); a status above 125 makes PostgreSQL abort recovery
// with an error instead of ending it early and promoting (see "Recovering Using a
// Continuous Archive Backup" and RestoreArchivedFile in the PostgreSQL sources).
const (
	exitNotFound = 1
	exitFatal    = 255
)

type walFetchOptions struct {
	g           *globalOptions
	storage     string
	retryFor    time.Duration
	prefetch    int
	prefetchDir string
	prefetchRun bool
	sidecar     string
	tokenFile   string
}

func newWALFetchCmd(g *globalOptions) *cobra.Command {
	o := &walFetchOptions{g: g}
	cmd := &cobra.Command{
		Use:   "wal-fetch --storage URL WALFILE DEST",
		Short: "Fetch one WAL file from the archive (for restore_command = '... %f %p')",
		Long: `wal-fetch writes the archived WAL file WALFILE (a segment, a .partial or a .history file)
to DEST, verified, through a temporary name and a rename, so a partial file is never left
at DEST. A segment archived only as the live tail (.partial) is served padded to the full
segment size; PostgreSQL replays up to the end of valid WAL. A wal-fetch killed half-way
(SIGKILL, OOM) leaves its temporary file (.kcbackup-fetch-PID-...) beside DEST; the next
wal-fetch into that directory removes it, never one a running wal-fetch still writes.

With --sidecar URL, the file is fetched through the running sidecar's API (GET /v1/wal/...),
which verifies it and keeps the next segments prefetched in memory; PostgreSQL's container
then needs no storage credentials, only the API token.

Exit status: 0 when DEST was written; 1 when the archive truly has no such file; 255 when
the storage kept failing for --retry-for or an object failed verification, which makes
PostgreSQL stop recovery with an error rather than end it early and promote.

With --prefetch N and --prefetch-dir DIR (relative paths are relative to the working
directory, the data directory under restore_command), one background prefetcher per DIR
keeps the N segments after the last one asked for downloaded, verified and fsynced in DIR,
so replay does not wait on downloads: a call whose segment is waiting only renames it into
place, and the prefetcher fetches the next. The first call, and any call whose segment was
not waiting, starts the prefetcher if none runs; it exits 10s after no segment was taken,
or when DIR is removed (kcbackup recovery-end does). Only complete segments are prefetched
(they never change), each restore in its own DIR, so files from an earlier restore are
never used. kcbackup restore writes restore_command so that the shell renames a waiting
segment itself (mv) before starting wal-fetch. The prefetcher outlives the wal-fetch that
started it, so PID 1 reaps it, and where PID 1 is the postmaster any other exit status
than 0 or 1 makes PostgreSQL restart every backend: the prefetcher logs its errors to
wal-fetch's stderr (PostgreSQL's log; DIR/.prefetcher.log when that is a pipe) and exits 0, and on SIGTERM, SIGINT, SIGHUP, SIGQUIT and SIGPIPE
too. Only SIGKILL (the OOM killer's included) or a Go runtime failure can end it otherwise.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd.Context(), args[0], args[1]) },
	}
	f := cmd.Flags()
	f.StringVar(&o.storage, "storage", "", "archive location: "+walarchive.StorageURLForms)
	f.DurationVar(&o.retryFor, "retry-for", 2*time.Minute, "keep retrying storage errors this long before failing recovery")
	f.IntVar(&o.prefetch, "prefetch", 0, "segments to download ahead in the background (0: none; at most 64)")
	f.StringVar(&o.prefetchDir, "prefetch-dir", "", "directory for prefetched segments (needed with --prefetch)")
	f.BoolVar(&o.prefetchRun, "prefetch-worker", false, "internal: run as the background prefetcher")
	_ = f.MarkHidden("prefetch-worker")
	f.StringVar(&o.sidecar, "sidecar", "", "fetch through the kcbackup sidecar's API at this URL (e.g. http://127.0.0.1:8008) instead of --storage; it verifies and prefetches in memory")
	f.StringVar(&o.tokenFile, "token-file", "", "with --sidecar: file holding the API bearer token (or set KCBACKUP_TOKEN)")
	return cmd
}

func (o *walFetchOptions) run(ctx context.Context, name, dest string) error {
	if o.sidecar != "" {
		return o.runViaSidecar(ctx, name, dest)
	}
	if o.storage == "" {
		return &ExitError{Code: exitFatal, Err: errors.New("--storage (or KCBACKUP_STORAGE) is required: " + walarchive.StorageURLForms)}
	}
	if o.prefetch < 0 || o.prefetch > 64 {
		return &ExitError{Code: exitFatal, Err: fmt.Errorf("invalid --prefetch %d: expected 0 to 64", o.prefetch)}
	}
	if o.prefetch > 0 && o.prefetchDir == "" {
		return &ExitError{Code: exitFatal, Err: errors.New("--prefetch needs --prefetch-dir")}
	}
	if o.prefetchRun {
		return o.runPrefetcher(ctx, name)
	}
	// Step 1: a prefetched complete segment is moved into place before anything else is
	// opened, and that is all: the prefetcher sees it taken and fetches the next one.
	if o.prefetch > 0 && walarchive.IsSegmentName(name) && o.takePrefetched(name, dest) {
		return nil
	}
	key, err := o.g.key()
	if err != nil {
		return &ExitError{Code: exitFatal, Err: err}
	}
	st, err := walarchive.OpenStorage(ctx, o.storage)
	if err != nil {
		return &ExitError{Code: exitFatal, Err: err}
	}
	var archive *walarchive.Archive
	err = o.retry(ctx, func() error {
		archive, err = walarchive.OpenArchive(ctx, st, key)
		return err
	})
	if err != nil {
		return &ExitError{Code: exitFatal, Err: err}
	}
	f, err := walarchive.ParseWALFileName(name, archive.SegmentSize())
	if err != nil {
		return &ExitError{Code: exitFatal, Err: err}
	}
	// Step 2: fetch it, retrying storage errors; "not found" is answered only when true.
	// A segment that was not waiting moves the prefetcher here (and starts it if none
	// runs). On the restore's first segment that happens first, so the next segments
	// download while this one does; later, only after the segment was found, so that
	// polling past the archive's end starts no prefetcher.
	prefetch := o.prefetch > 0 && f.Kind == walarchive.WALFileSegment
	if prefetch && !o.prefetchStarted() {
		o.movePrefetcher(name)
		prefetch = false
	}
	err = o.retry(ctx, func() error {
		return fetchTo(ctx, archive, name, dest)
	})
	switch {
	case err == nil:
		if prefetch {
			o.movePrefetcher(name)
		}
		return nil
	case errors.Is(err, walarchive.ErrWALNotInArchive):
		return &ExitError{Code: exitNotFound}
	default:
		return &ExitError{Code: exitFatal, Err: fmt.Errorf("fetch %s: %w", name, err)}
	}
}

// retry retries op while it fails with a passing storage error, for at least --retry-for:
// the last attempt is made at the deadline. "Not in the archive", corruption, a bad name, a
// wrong key and refused access are answered at once: retrying cannot change them. Each
// retry's cause goes to stderr, which PostgreSQL writes to its log.
func (o *walFetchOptions) retry(ctx context.Context, op func() error) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 250 * time.Millisecond
	bo.MaxInterval = 5 * time.Second
	deadline := time.Now().Add(o.retryFor)
	for {
		err := op()
		if err == nil || errors.Is(err, walarchive.ErrWALNotInArchive) || errors.Is(err, walarchive.ErrCorrupt) ||
			errors.Is(err, walarchive.ErrNoIdentity) || errors.Is(err, walarchive.ErrWrongKey) || storage.IsPermanent(err) {
			return err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return err
		}
		wait := min(bo.NextBackOff(), left)
		fmt.Fprintf(o.g.stderr, "kcbackup wal-fetch: %v; retrying in %s (gives up in %s)\n", err, wait.Round(time.Millisecond), left.Round(time.Second))
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
}

// fetchTo writes the file to dest through a temporary name in dest's directory.
func fetchTo(ctx context.Context, a *walarchive.Archive, name, dest string) error {
	return writeAtomically(dest, name, func(w io.Writer) error {
		_, err := a.FetchWALFile(ctx, name, w)
		return err
	})
}

// takePrefetched moves a prefetched segment to dest, waiting briefly for one in progress.
func (o *walFetchOptions) takePrefetched(name, dest string) bool {
	p := filepath.Join(o.prefetchDir, name)
	marker := p + ".inprogress"
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := os.Rename(p, dest); err == nil {
			return true
		}
		st, err := os.Stat(marker)
		if err != nil || time.Since(st.ModTime()) > 2*time.Minute || time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// runViaSidecar fetches through the sidecar's GET /v1/wal/{name}.
func (o *walFetchOptions) runViaSidecar(ctx context.Context, name, dest string) error {
	u, err := url.Parse(o.sidecar)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return &ExitError{Code: exitFatal, Err: fmt.Errorf("invalid --sidecar %q: expected http://host:port or https://host:port", o.sidecar)}
	}
	token, err := readToken(o.tokenFile)
	if err != nil {
		return &ExitError{Code: exitFatal, Err: err}
	}
	if token == "" {
		return &ExitError{Code: exitFatal, Err: errors.New("--sidecar needs the API token: --token-file or KCBACKUP_TOKEN")}
	}
	client := &http.Client{Timeout: 2 * time.Minute}
	err = o.retry(ctx, func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(o.sidecar, "/")+"/v1/wal/"+url.PathEscape(name), nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("sidecar at %s: %w", o.sidecar, err)
		}
		defer resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			return writeAtomically(dest, name, func(w io.Writer) error {
				n, err := io.Copy(w, resp.Body)
				if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
					err = fmt.Errorf("short response from the sidecar: %d of %d bytes", n, resp.ContentLength)
				}
				return err
			})
		case http.StatusNotFound:
			return fmt.Errorf("%s: %w", name, walarchive.ErrWALNotInArchive)
		default:
			var body apiclient.ErrorBody
			_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body)
			err := fmt.Errorf("sidecar at %s answered %s: %s", o.sidecar, resp.Status, body.Error)
			if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden ||
				resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusInternalServerError {
				return fmt.Errorf("%w: %w", walarchive.ErrCorrupt, err) // retrying cannot help
			}
			return err
		}
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, walarchive.ErrWALNotInArchive):
		return &ExitError{Code: exitNotFound}
	default:
		return &ExitError{Code: exitFatal, Err: fmt.Errorf("fetch %s: %w", name, err)}
	}
}

// writeAtomically has fill write the file into a temporary file beside dest, fsyncs it
// and renames it to dest, so a partial file is never left at dest.
//
// A fetch killed half-way (SIGKILL, OOM) cannot remove its temporary file, so the file
// says whose it is: it is named fetchTempPrefix + "<pid>-<name>-<random>" and its writer
// holds an flock(2) on it while it lives (the kernel drops the lock when the process dies,
// however it dies). Every fetch first removes the temporary files of dead writers in
// dest's directory (removeStaleFetchTemps), so at most one killed fetch's file is left
// between two fetches, never one of a live fetch.
func writeAtomically(dest, name string, fill func(io.Writer) error) error {
	dir := filepath.Dir(dest)
	removeStaleFetchTemps(dir, time.Now())
	tmp, err := os.CreateTemp(dir, fmt.Sprintf("%s%d-%s-*", fetchTempPrefix, os.Getpid(), name))
	if err != nil {
		return fmt.Errorf("create temporary file beside %s: %w", dest, err)
	}
	// Blocking: a cleaner that opened the file before this lock holds it only for a moment.
	err = syscall.Flock(int(tmp.Fd()), syscall.LOCK_EX)
	if err == nil {
		err = fill(tmp)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if err == nil {
		err = os.Rename(tmp.Name(), dest)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// fetchTempPrefix starts the name of every temporary file writeAtomically creates.
const fetchTempPrefix = ".kcbackup-fetch-"

// fetchTempGrace is how young an unlocked temporary file of a live process may be and
// still be its writer's: between creating the file and locking it.
const fetchTempGrace = time.Minute

// removeStaleFetchTemps removes, in dir, the temporary files of fetches that died: a file
// goes when no process holds its lock and its writer's PID is gone (or, should the PID be
// in use again or unknown, when it is older than fetchTempGrace). A file whose lock is
// held is a live fetch's and stays. Errors are ignored: this is tidying, not the fetch.
func removeStaleFetchTemps(dir string, now time.Time) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), fetchTempPrefix)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			f.Close() // held: a live fetch writes it
			continue
		}
		st, err := f.Stat()
		young := err == nil && now.Sub(st.ModTime()) < fetchTempGrace
		if !young || !processAlive(tempWriterPID(rest)) {
			os.Remove(p) // while locked: no fetch can take it over meanwhile
		}
		f.Close()
	}
}

// tempWriterPID reads the writer's PID from a temporary file's name after the prefix
// (0 when the name holds none, as an older kcbackup's names do).
func tempWriterPID(rest string) int {
	s, _, _ := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// processAlive reports whether a process with this PID exists (in this PID namespace);
// an unknown PID (0) counts as alive, so only age removes its file.
func processAlive(pid int) bool {
	if pid <= 0 {
		return true
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
