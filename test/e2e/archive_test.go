package e2e

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

func TestArchiveKeepsUpUnderLoadAndWALIsByteIdentical(t *testing.T) {
	harness.ForEachPGVersion(t, testArchiveKeepsUpUnderLoadAndWALIsByteIdentical)
}

func testArchiveKeepsUpUnderLoadAndWALIsByteIdentical(t *testing.T, version int) {
	ctx := context.Background()
	pg := harness.StartPostgres(t, pgSettingsOn(version, nil))
	url := fileArchive(t)
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Args: []string{"--partial-interval", "1s"}})

	startLSN := slotRestart(t, pg)
	first := startLSN.SegmentNo(1 << 20)
	if _, err := pg.Pgbench(ctx, "-i", "-s", "2"); err != nil {
		t.Fatal(err)
	}
	if out, err := pg.Pgbench(ctx, "-T", "5", "-c", "4", "-j", "2"); err != nil {
		t.Fatalf("pgbench: %v\n%s", err, out)
	}
	flush := lsn(t, query(t, pg, "SELECT pg_current_wal_flush_lsn()"))
	took := waitArchived(t, sc, flush, 30*time.Second)
	t.Logf("archive reached the server's flush position %s %s after load stopped", flush, took.Round(time.Millisecond))

	// Every complete archived segment equals the server's file, byte for byte.
	a := openArchive(t, url)
	seg := a.SegmentSize()
	dir := t.TempDir()
	first, last := startLSN.SegmentNo(seg), flush.SegmentNo(seg)
	fetchAll(t, nil, url, 1, first, last, seg, dir)
	compared := 0
	for n := first; n < last; n++ {
		name := walarchive.SegmentName(1, n, seg)
		got, err := os.ReadFile(dir + "/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if want := serverFile(t, pg, "pg_wal/"+name); !bytes.Equal(got, want) {
			t.Fatalf("archived segment %s differs from the server's", name)
		}
		compared++
	}
	if compared < 10 {
		t.Fatalf("only %d complete segments compared; the load should produce more", compared)
	}
	// pg_waldump reads the fetched WAL end to end without a gap.
	out, err := pg.CheckWAL(ctx, dir, 1, walarchive.SegmentStartLSN(first, seg).String(), flush.String())
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != "" {
		t.Fatalf("pg_waldump reported: %s", out)
	}
	// The slot never got ahead of the archive.
	confirmed := lsn(t, query(t, pg, "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'kcbackup'"))
	st, _ := sc.Status(ctx)
	if archived := lsn(t, st.ArchivedLSN); confirmed > archived {
		t.Fatalf("slot restart_lsn %s is ahead of the archive %s", confirmed, archived)
	}
	if v, err := sc.Metric(`kcbackup_uploads_total{kind="segment"}`); err != nil || v < 10 {
		t.Fatalf("segment uploads metric = %v, %v", v, err)
	}
	// SIGTERM: exit 0 after uploading everything and reporting the final flush position,
	// so the slot stands exactly at the end of the archive.
	exec1(t, pg, "CREATE TABLE last_words AS SELECT generate_series(1, 1000) AS n")
	final := flushLSN(t, pg)
	if err := sc.Stop(30 * time.Second); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, sc.Log())
	}
	if got := slotRestart(t, pg); got < final {
		t.Fatalf("after SIGTERM the slot is at %s; the final flush position %s was not reported", got, final)
	}
	assertNoGap(t, nil, url, pg, 1, first, final)
}
