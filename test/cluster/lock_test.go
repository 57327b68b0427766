package cluster

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A second node on the machine waits for the first one's lock, says so, and gets it once
// the first releases it; a wait that outlasts its context fails naming the lock.
func TestSecondClusterWaitsForTheFirst(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cluster.lock")
	var logs []string
	logf := func(f string, a ...any) { logs = append(logs, f) }
	first, err := lockFile(context.Background(), path, logf)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	if _, err := lockFile(ctx, path, logf); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), path) {
		t.Fatalf("second lock while the first is held: %v; want a timeout naming %s", err, path)
	}
	if len(logs) != 1 || !strings.Contains(logs[0], "another single-node cluster runs") {
		t.Fatalf("logs %q; want one line saying it waits", logs)
	}
	got := make(chan error, 1)
	go func() {
		f, err := lockFile(context.Background(), path, logf)
		if err == nil {
			f.Close()
		}
		got <- err
	}()
	first.Close()
	if err := <-got; err != nil {
		t.Fatalf("lock after the first released it: %v", err)
	}
}
