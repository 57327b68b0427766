package e2e

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

func TestRestoreThroughTheSidecarUsesItsPrefetchedCache(t *testing.T) {
	ctx := context.Background()
	pg, url, sc, _ := archivedCluster(t, "200ms")
	createLedger(t, pg)
	takeBackup(t, pg, url, nil)
	l := startLedger(t, pg)
	bench := pgbenchFor(t, pg, "4")
	time.Sleep(4 * time.Second)
	l.Stop()
	if err := <-bench; err != nil {
		t.Fatal(err)
	}
	waitArchived(t, sc, flushLSN(t, pg), 30*time.Second)

	// The token file is all PostgreSQL gets: no storage settings, no credentials.
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte(sc.Token()+"\n"), 0o644)
	restored, _ := restoreAndStart(t, nil, url, "latest", "--fetch-via", sc.URL(), "--fetch-token-file", tokenFile)
	if got, want := ledgerState(t, restored), ledgerState(t, pg); got != want {
		t.Fatalf("restore through the sidecar: ledger %s; want %s", got, want)
	}
	hits, err := sc.Metric(`kcbackup_wal_served_total{source="cache"}`)
	if err != nil || hits < 3 {
		t.Fatalf("prefetched segments served from the cache: %v, %v; want several", hits, err)
	}
	misses, _ := sc.Metric(`kcbackup_wal_served_total{source="archive"}`)
	t.Logf("served %v segments from the prefetch cache, %v on demand", hits, misses)

	// The endpoint answers 404 only for absent files, 400 for bad names, 401 without the token.
	for path, want := range map[string]int{
		"/v1/wal/" + walarchive.SegmentName(1, 0xFFFF, 1<<20): http.StatusNotFound,
		"/v1/wal/not-a-wal-file":                              http.StatusBadRequest,
	} {
		req, _ := http.NewRequest("GET", sc.URL()+path, nil)
		req.Header.Set("Authorization", "Bearer "+sc.Token())
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != want {
			t.Fatalf("GET %s: %v %v; want %d", path, resp.StatusCode, err, want)
		}
		resp.Body.Close()
	}
	_, _, code := harness.Kcbackup(t, ctx, nil, "wal-fetch", "--sidecar", sc.URL(), "--token-file", tokenFile,
		walarchive.SegmentName(1, 0xFFFF, 1<<20), filepath.Join(dir, "x"))
	if code != 1 {
		t.Fatalf("wal-fetch --sidecar of an absent segment: exit %d; want 1", code)
	}
}
