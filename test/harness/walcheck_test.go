package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// CheckWAL finds copied WAL valid, and a flipped byte or a missing file not, on every
// version: with pg_waldump where the version ships one, with the server's own copy and
// pg_walinspect on the portable 16.
func TestCheckWALAcceptsACopyAndFindsAFlippedByteOrAMissingFile(t *testing.T) {
	t.Parallel()
	ForEachPGVersion(t, func(t *testing.T, version int) {
		ctx := testContext(t)
		pg := StartPostgres(t, PGOptions{Version: version, WALSegmentSizeMB: 1, Settings: map[string]string{"wal_keep_size": "64MB"}})
		start := mustQuery(t, ctx, pg, "SELECT pg_current_wal_insert_lsn()")
		mustExec(t, ctx, pg, "CREATE TABLE t AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 30000) g")
		end := mustQuery(t, ctx, pg, "SELECT pg_current_wal_flush_lsn()")
		from, _ := parseLSNText(start)
		to, _ := parseLSNText(end)
		const seg = 1 << 20
		if to/seg-from/seg < 2 {
			t.Fatalf("WAL from %s to %s spans fewer than three segments", start, end)
		}
		dir := t.TempDir()
		var names []string
		for n := from / seg; n <= to/seg; n++ {
			name := fmt.Sprintf("%08X%08X%08X", 1, n/4096, n%4096)
			b, err := os.ReadFile(filepath.Join(pg.DataDir(), "pg_wal", name))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
			names = append(names, name)
		}
		if err := pg.ChownToServer(dir); err != nil {
			t.Fatal(err)
		}
		if problem, err := pg.CheckWAL(ctx, dir, 1, start, end); problem != "" || err != nil {
			t.Fatalf("a true copy from %s to %s: %q, %v; want no problem", start, end, problem, err)
		}

		// A byte flipped inside a record of the middle segment.
		mid := filepath.Join(dir, names[1])
		b, _ := os.ReadFile(mid)
		b[seg/2] ^= 0xFF
		if err := os.WriteFile(mid, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if problem, err := pg.CheckWAL(ctx, dir, 1, start, end); problem == "" && err == nil {
			t.Errorf("PostgreSQL %s: a flipped byte in %s went unnoticed", strconv.Itoa(version), names[1])
		}
		// The middle segment missing.
		if err := os.Remove(mid); err != nil {
			t.Fatal(err)
		}
		if problem, err := pg.CheckWAL(ctx, dir, 1, start, end); problem == "" && err == nil {
			t.Errorf("PostgreSQL %d: a missing %s went unnoticed", version, names[1])
		}
	})
}
