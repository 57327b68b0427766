package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
)

// benchTB adapts the test harness, which takes a testing.TB, to a main program. Fatal and
// Skip panic with a fatalError that runPhase turns back into an error; Cleanup functions run,
// last first, when the phase (or the whole run) ends. Methods the harness never calls are
// left to the embedded nil interface and would panic if called.
type benchTB struct {
	testing.TB
	name string
	ctx  context.Context

	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

// fatalError is the panic value of benchTB.Fatal: the message the harness gave.
type fatalError struct{ msg string }

func newBenchTB(ctx context.Context, name string) *benchTB {
	return &benchTB{name: name, ctx: ctx}
}

// Helper does nothing: there is no test output to attribute lines to.
func (t *benchTB) Helper() {}

// Name returns the phase name.
func (t *benchTB) Name() string { return t.name }

// Context returns the run's context, cancelled on SIGINT or SIGTERM.
func (t *benchTB) Context() context.Context { return t.ctx }

// Log prints to stderr, as progress.
func (t *benchTB) Log(args ...any) { progress("%s: %s", t.name, fmt.Sprint(args...)) }

// Logf prints to stderr, as progress.
func (t *benchTB) Logf(format string, args ...any) {
	progress("%s: "+format, append([]any{t.name}, args...)...)
}

// Error records a failure and goes on.
func (t *benchTB) Error(args ...any) { t.Fail(); t.Log(args...) }

// Errorf records a failure and goes on.
func (t *benchTB) Errorf(format string, args ...any) { t.Fail(); t.Logf(format, args...) }

// Fail records a failure.
func (t *benchTB) Fail() {
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
}

// Failed reports whether a failure was recorded.
func (t *benchTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

// FailNow stops the phase.
func (t *benchTB) FailNow() { t.Fail(); panic(fatalError{"failed"}) }

// Fatal stops the phase with an error.
func (t *benchTB) Fatal(args ...any) { t.Fail(); panic(fatalError{fmt.Sprint(args...)}) }

// Fatalf stops the phase with an error.
func (t *benchTB) Fatalf(format string, args ...any) {
	t.Fail()
	panic(fatalError{fmt.Sprintf(format, args...)})
}

// Skip stops the phase: a missing component is an error for a benchmark.
func (t *benchTB) Skip(args ...any) { t.Fatal(args...) }

// Skipf stops the phase: a missing component is an error for a benchmark.
func (t *benchTB) Skipf(format string, args ...any) { t.Fatalf(format, args...) }

// SkipNow stops the phase.
func (t *benchTB) SkipNow() { t.Fatal("skipped") }

// Skipped is always false: Skip stops with an error instead.
func (t *benchTB) Skipped() bool { return false }

// Cleanup registers f to run when the phase ends.
func (t *benchTB) Cleanup(f func()) {
	t.mu.Lock()
	t.cleanups = append(t.cleanups, f)
	t.mu.Unlock()
}

// TempDir creates a directory every user can traverse (the postgres user must reach
// archive directories in it) and removes it when the phase ends.
func (t *benchTB) TempDir() string {
	dir, err := os.MkdirTemp("", "kcbackup-bench-")
	if err != nil {
		t.Fatalf("create temporary directory: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("chmod %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			progress("cleanup: remove %s: %v", dir, err)
		}
	})
	return dir
}

// Setenv sets an environment variable for the rest of the phase.
func (t *benchTB) Setenv(key, value string) {
	old, had := os.LookupEnv(key)
	os.Setenv(key, value)
	t.Cleanup(func() {
		if had {
			os.Setenv(key, old)
		} else {
			os.Unsetenv(key)
		}
	})
}

// runCleanups runs the registered cleanups, last registered first, even if one panics.
func (t *benchTB) runCleanups() {
	for {
		t.mu.Lock()
		n := len(t.cleanups)
		if n == 0 {
			t.mu.Unlock()
			return
		}
		f := t.cleanups[n-1]
		t.cleanups = t.cleanups[:n-1]
		t.mu.Unlock()
		func() {
			defer func() {
				if r := recover(); r != nil {
					progress("cleanup of %s: %v", t.name, r)
				}
			}()
			f()
		}()
	}
}

// guard runs fn, turning a Fatal of the harness into an error.
func guard(name string, fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			fe, ok := r.(fatalError)
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("%s: %s", name, fe.msg)
		}
	}()
	return fn()
}
