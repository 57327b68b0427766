package e2e

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// assertNoGap fetches every segment of timeline tli from segment `from` to the one
// holding `to` with wal-fetch (as restore_command would) and has pg_waldump read the WAL
// from the start of `from` to `to` without error: the archive has no gap.
func assertNoGap(t *testing.T, env []string, url string, pg *harness.Postgres, tli uint32, from uint64, to walarchive.LSN) {
	t.Helper()
	a := openArchive(t, url)
	seg := a.SegmentSize()
	dir := t.TempDir()
	fetchAll(t, env, url, tli, from, to.SegmentNo(seg), seg, dir)
	out, err := pg.CheckWAL(context.Background(), dir, tli, walarchive.SegmentStartLSN(from, seg).String(), to.String())
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != "" {
		t.Fatalf("pg_waldump over the archive from %s to %s: %s", walarchive.SegmentStartLSN(from, seg), to, out)
	}
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func slotRestart(t *testing.T, pg *harness.Postgres) walarchive.LSN {
	t.Helper()
	return lsn(t, query(t, pg, "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'kcbackup'"))
}

func flushLSN(t *testing.T, pg *harness.Postgres) walarchive.LSN {
	t.Helper()
	return lsn(t, query(t, pg, "SELECT pg_current_wal_flush_lsn()"))
}

func pgbenchFor(t *testing.T, pg *harness.Postgres, seconds string) chan error {
	done := make(chan error, 1)
	go func() {
		out, err := pg.Pgbench(context.Background(), "-T", seconds, "-c", "2", "-j", "2")
		if err != nil {
			err = &benchErr{err, out}
		}
		done <- err
	}()
	return done
}

type benchErr struct {
	err error
	out string
}

func (b *benchErr) Error() string { return b.err.Error() + "\n" + b.out }

// archivedCluster starts a cluster with pgbench tables (scale 1) and a sidecar archiving it
// to a new file:// archive, and returns them with the slot's first segment.
func archivedCluster(t *testing.T, partialInterval string) (*harness.Postgres, string, *harness.Sidecar, uint64) {
	t.Helper()
	pg := harness.StartPostgres(t, pgSettings(nil))
	url := fileArchive(t)
	sc := harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Args: []string{"--partial-interval", partialInterval}})
	first := slotRestart(t, pg).SegmentNo(1 << 20)
	if _, err := pg.Pgbench(context.Background(), "-i", "-s", "1"); err != nil {
		t.Fatal(err)
	}
	return pg, url, sc, first
}
