package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// RepoRoot is the module's root directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// KcbackupBinary builds the kcbackup binary once per test process, static (CGO_ENABLED=0)
// exactly as Dockerfile.sidecar does, into a directory every user can read (restore_command
// runs it as the postgres user).
func KcbackupBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kcbackup-bin-")
		if err != nil {
			buildErr = err
			return
		}
		os.Chmod(dir, 0o755)
		buildPath = filepath.Join(dir, "kcbackup")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-X github.com/kcbackup/kcbackup/walarchive/buildinfo.version=test", "-o", buildPath, "./sidecar")
		cmd.Dir = RepoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build kcbackup: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

// Sidecar is a running `kcbackup run` process.
type Sidecar struct {
	t       testing.TB
	bin     string
	args    []string
	env     []string
	port    int
	token   string
	logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// SidecarOptions configure StartSidecar.
type SidecarOptions struct {
	Storage string
	// Args are extra flags for `kcbackup run`.
	Args []string
	// Env is added to the process environment (after the PostgreSQL variables).
	Env []string
	// NoWait skips waiting for /readyz.
	NoWait bool
}

// StartSidecar starts `kcbackup run` against pg and waits until it is ready.
func StartSidecar(t testing.TB, pg *Postgres, o SidecarOptions) *Sidecar {
	t.Helper()
	s := &Sidecar{t: t, bin: KcbackupBinary(t), port: FreePort(t), token: "test-token-" + strconv.Itoa(os.Getpid())}
	dir := t.TempDir()
	s.logPath = filepath.Join(dir, "sidecar.log")
	s.args = append([]string{"run", "--storage", o.Storage, "--listen", "127.0.0.1:" + strconv.Itoa(s.port),
		"--spool", filepath.Join(dir, "spool"), "--log-level", "debug"}, o.Args...)
	s.env = append(append(cleanEnv(), pg.Env()...), "KCBACKUP_TOKEN="+s.token)
	s.env = append(s.env, o.Env...)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Kill()
		if t.Failed() {
			t.Logf("sidecar log (last 60 lines):\n%s", tail(s.Log(), 60))
		}
	})
	if !o.NoWait {
		s.WaitReady(60 * time.Second)
	}
	return s
}

// Start starts the process (again, after Stop or Kill).
func (s *Sidecar) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("sidecar already running")
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, s.args...)
	cmd.Env = s.env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start sidecar: %w", err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		s.err = cmd.Wait()
		logf.Close()
		close(done)
	}(cmd, s.done)
	return nil
}

// WaitReady waits until /readyz answers 200.
func (s *Sidecar) WaitReady(timeout time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := http.Get(s.URL() + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if s.Exited() {
			s.t.Fatalf("sidecar exited before it was ready: %v\n%s", s.err, tail(s.Log(), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("sidecar not ready after %s\n%s", timeout, tail(s.Log(), 40))
}

// Exited reports whether the process has exited.
func (s *Sidecar) Exited() bool {
	s.mu.Lock()
	done := s.done
	s.mu.Unlock()
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM and waits for the exit; it returns the exit error.
func (s *Sidecar) Stop(timeout time.Duration) error {
	return s.signal(syscall.SIGTERM, timeout)
}

// Kill sends SIGKILL and waits.
func (s *Sidecar) Kill() { _ = s.signal(syscall.SIGKILL, 10*time.Second) }

func (s *Sidecar) signal(sig syscall.Signal, timeout time.Duration) error {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		s.mu.Lock()
		s.cmd = nil
		s.mu.Unlock()
		return fmt.Errorf("sidecar did not exit within %s of %s", timeout, sig)
	}
	s.mu.Lock()
	s.cmd = nil
	err := s.err
	s.mu.Unlock()
	return err
}

// URL is the sidecar's HTTP base URL.
func (s *Sidecar) URL() string { return "http://127.0.0.1:" + strconv.Itoa(s.port) }

// Token is the API bearer token.
func (s *Sidecar) Token() string { return s.token }

// Client is an API client for the sidecar.
func (s *Sidecar) Client() *apiclient.Client { return apiclient.New(s.URL(), s.token, nil) }

// Status fetches /v1/status.
func (s *Sidecar) Status(ctx context.Context) (apiclient.Status, error) {
	return s.Client().Status(ctx)
}

// Metric returns the value of a metric without labels (or with the given label set
// rendered as in the exposition format, e.g. `kcbackup_uploads_total{kind="segment"}`).
func (s *Sidecar) Metric(name string) (float64, error) {
	resp, err := http.Get(s.URL() + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// Log returns the sidecar's output so far.
func (s *Sidecar) Log() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

// Kcbackup runs the kcbackup binary with args and env (added to the environment) and
// returns stdout, stderr and the exit status.
func Kcbackup(t testing.TB, ctx context.Context, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.CommandContext(ctx, KcbackupBinary(t), args...)
	cmd.Env = append(cleanEnv(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("run kcbackup %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

// DecodeJSON is a small helper for tests reading JSON output.
func DecodeJSON(t testing.TB, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decode JSON %q: %v", s, err)
	}
}
