package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// RELIABILITY 1: WAL written, checkpointed and switched away after the slot exists but
// before the first START_REPLICATION is still archived.
func TestCheckpointAndSwitchBeforeFirstStreamLoseNothing(t *testing.T) {
	url := fileArchive(t)
	pg := harness.StartPostgres(t, pgSettings(map[string]string{"wal_keep_size": "0"}))
	exec1(t, pg, "SELECT pg_create_physical_replication_slot('kcbackup', true)")
	start := slotRestart(t, pg)
	for i := 0; i < 5; i++ {
		exec1(t, pg, "CREATE TABLE IF NOT EXISTS early (n int); INSERT INTO early SELECT generate_series(1, 20000)")
		exec1(t, pg, "SELECT pg_switch_wal()")
		exec1(t, pg, "CHECKPOINT")
	}
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url})
	flush := flushLSN(t, pg)
	waitArchived(t, sc, flush, 30*time.Second)
	assertNoGap(t, nil, url, pg, 1, start.SegmentNo(1<<20), flush)
}

// RELIABILITY 18: "not found" only when the file is absent; storage errors are retried and
// then stop recovery (exit 255); no partial file is ever left at the destination.
func TestWALFetchAnswersNotFoundOnlyWhenTheFileIsAbsent(t *testing.T) {
	ctx := context.Background()
	minio := harness.StartMinIO(t)
	env := append(minio.Env(), "KCBACKUP_S3_FORCE_PATH_STYLE=true")
	url := "s3://" + minio.NewBucket(t) + "/db"
	pg := harness.StartPostgres(t, pgSettings(nil))
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Env: env})
	exec1(t, pg, "CREATE TABLE t AS SELECT generate_series(1, 100000) AS n")
	flush := flushLSN(t, pg)
	waitArchived(t, sc, flush, 30*time.Second)
	present := walarchive.SegmentName(1, flush.SegmentNo(1<<20)-1, 1<<20)
	absent := walarchive.SegmentName(1, flush.SegmentNo(1<<20)+100, 1<<20)
	dir := t.TempDir()

	if _, stderr, code := harness.Kcbackup(t, ctx, env, "wal-fetch", "--storage", url, present, filepath.Join(dir, "a")); code != 0 {
		t.Fatalf("present segment: exit %d %s", code, stderr)
	}
	if st, err := os.Stat(filepath.Join(dir, "a")); err != nil || st.Size() != 1<<20 {
		t.Fatalf("fetched segment: %v", err)
	}
	if _, _, code := harness.Kcbackup(t, ctx, env, "wal-fetch", "--storage", url, absent, filepath.Join(dir, "b")); code != 1 {
		t.Fatalf("absent segment: exit %d; want 1", code)
	}
	if _, _, code := harness.Kcbackup(t, ctx, env, "wal-fetch", "--storage", url, "00000009.history", filepath.Join(dir, "h")); code != 1 {
		t.Fatalf("absent history file: exit %d; want 1", code)
	}
	// The store goes away: a present file and an absent one both fail recovery (255), after
	// retrying, and nothing is left at the destination.
	sc.Kill()
	if err := minio.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{present, absent} {
		started := time.Now()
		_, stderr, code := harness.Kcbackup(t, ctx, env, "wal-fetch", "--storage", url, "--retry-for", "3s", name, filepath.Join(dir, "c"))
		if code != 255 || time.Since(started) < 3*time.Second {
			t.Fatalf("%s with the store down: exit %d after %s (%s); want 255 after retrying for 3s", name, code, time.Since(started), stderr)
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != "a" {
			t.Fatalf("wal-fetch left %s behind", e.Name())
		}
	}
	// A storage error that clears within --retry-for is retried to success.
	go func() { time.Sleep(2 * time.Second); minio.Start(ctx) }()
	if _, stderr, code := harness.Kcbackup(t, ctx, env, "wal-fetch", "--storage", url, "--retry-for", "60s", present, filepath.Join(dir, "d")); code != 0 {
		t.Fatalf("fetch across a short outage: exit %d %s", code, stderr)
	}
	if strings.Contains(sc.Log(), minio.SecretKey()) {
		t.Fatal("the S3 secret appears in the sidecar's log")
	}
}

func TestWALFetchPrefetchesTheNextSegmentsAndServesThemIdentically(t *testing.T) {
	ctx := context.Background()
	pg, url, sc, _ := archivedCluster(t, "200ms")
	exec1(t, pg, "CREATE TABLE t AS SELECT generate_series(1, 300000) AS n")
	flush := flushLSN(t, pg)
	waitArchived(t, sc, flush, 30*time.Second)
	first := flush.SegmentNo(1<<20) - 6
	name := func(n uint64) string { return walarchive.SegmentName(1, n, 1<<20) }
	dir := t.TempDir()
	pre := filepath.Join(dir, "prefetch")
	fetch := func(n uint64, extra ...string) {
		args := append([]string{"wal-fetch", "--storage", url}, extra...)
		args = append(args, name(n), filepath.Join(dir, name(n)))
		if _, stderr, code := harness.Kcbackup(t, ctx, nil, args...); code != 0 {
			t.Fatalf("wal-fetch %s: exit %d %s", name(n), code, stderr)
		}
	}
	fetch(first, "--prefetch", "3", "--prefetch-dir", pre)
	deadline := time.Now().Add(30 * time.Second)
	for n := first + 1; n <= first+3; n++ {
		for {
			if _, err := os.Stat(filepath.Join(pre, name(n))); err == nil {
				break
			}
			if time.Now().After(deadline) {
				entries, _ := os.ReadDir(pre)
				t.Fatalf("segment %s was not prefetched (prefetch dir: %v)", name(n), entries)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The next call takes the prefetched file; it is the same as a direct fetch.
	fetch(first+1, "--prefetch", "3", "--prefetch-dir", pre)
	if _, err := os.Stat(filepath.Join(pre, name(first+1))); err == nil {
		t.Fatal("the prefetched segment was not moved into place")
	}
	direct := t.TempDir()
	if _, stderr, code := harness.Kcbackup(t, ctx, nil, "wal-fetch", "--storage", url, name(first+1), filepath.Join(direct, "x")); code != 0 {
		t.Fatal(stderr)
	}
	a, _ := os.ReadFile(filepath.Join(dir, name(first+1)))
	b, _ := os.ReadFile(filepath.Join(direct, "x"))
	if len(a) != 1<<20 || !bytes.Equal(a, b) {
		t.Fatalf("prefetched segment differs from a direct fetch (%d bytes)", len(a))
	}
	// The call that took first+1 started nothing: the one prefetcher saw it taken and
	// keeps the window full, three segments ahead. It must do so before its idle exit
	// (prefetchIdle, 10 s after a segment was taken): after that nothing would.
	taken := time.Now()
	for deadline := taken.Add(prefetchIdle); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(pre, name(first+4))); err == nil {
			break
		}
		if time.Now().After(deadline) {
			entries, _ := os.ReadDir(pre)
			t.Fatalf("after %s was taken, %s was not prefetched (prefetch dir: %v)", name(first+1), name(first+4), entries)
		}
	}
	if n := prefetchers(pre); n != 1 {
		t.Fatalf("%d prefetcher processes for %s; want 1", n, pre)
	}
	// Removing the directory (recovery-end does, once recovery is over) stops it, sooner
	// than its idle exit would: prefetchIdle after it placed first+4, which it did after
	// taken.
	// As recovery-end does: renamed away first, so the prefetcher neither mistakes the
	// deletions for segments taken nor writes into the tree being removed.
	if err := os.Rename(pre, pre+".removing"); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(pre + ".removing"); err != nil {
		t.Fatal(err)
	}
	for deadline := taken.Add(prefetchIdle); prefetchers(pre) > 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the prefetcher still runs after its directory was removed, as long as its idle exit takes")
		}
	}
}

// prefetchIdle is how long wal-fetch's prefetcher waits with nothing taken before it exits
// (prefetchIdle in sidecar/internal/cli/prefetch.go).
const prefetchIdle = 10 * time.Second

// prefetchers counts the running wal-fetch prefetchers of prefetch directory dir.
func prefetchers(dir string) int {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	n := 0
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		worker, inDir := false, false
		for i, a := range args {
			worker = worker || a == "--prefetch-worker"
			inDir = inDir || (a == "--prefetch-dir" && i+1 < len(args) && args[i+1] == dir)
		}
		if worker && inDir {
			n++
		}
	}
	return n
}
