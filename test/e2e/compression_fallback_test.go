package e2e

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// fallbackLogLine is what `kcbackup backup` logs when the server cannot compress.
const fallbackLogLine = "the server cannot compress base backups with zstd"

// PostgreSQL 16's portable build has no zstd: `kcbackup backup` with the default
// --compress-on server must still take the backup, compressing in kcbackup instead, say so
// once in its log, and record who compressed (issue 23). 15 (Debian's, with zstd) keeps
// server-side compression and logs no fallback.
func TestBackupOnAServerWithoutZstdFallsBackToClientCompression(t *testing.T) {
	for _, tc := range []struct {
		version int
		want    string
	}{
		{16, walarchive.CompressedByClient},
		{15, walarchive.CompressedByServer},
	} {
		t.Run("pg"+strconv.Itoa(tc.version), func(t *testing.T) {
			ctx := context.Background()
			pg := harness.StartPostgres(t, pgSettingsOn(tc.version, nil))
			url := fileArchive(t)
			harness.StartSidecar(t, pg, harness.SidecarOptions{Storage: url, Args: []string{"--partial-interval", "200ms"}})
			exec1(t, pg, "CREATE TABLE t AS SELECT g AS i, repeat('x', 200) AS pad FROM generate_series(1, 20000) g")

			out, stderr, code := harness.Kcbackup(t, ctx, pg.Env(), "backup", "--storage", url, "--json")
			if code != 0 {
				t.Fatalf("backup on PostgreSQL %d exited %d: %s", tc.version, code, stderr)
			}
			var rec walarchive.BackupRecord
			harness.DecodeJSON(t, out, &rec)
			if rec.CompressedBy != tc.want {
				t.Errorf("PostgreSQL %d: the record says compressedBy %q; want %q", tc.version, rec.CompressedBy, tc.want)
			}
			wantLines := map[string]int{walarchive.CompressedByClient: 1, walarchive.CompressedByServer: 0}[tc.want]
			if n := strings.Count(stderr, fallbackLogLine); n != wantLines {
				t.Errorf("PostgreSQL %d: the fallback is logged %d times; want %d:\n%s", tc.version, n, wantLines, stderr)
			}
			// The data is stored compressed either way, and the backup is listed.
			var data walarchive.BackupObject
			for _, o := range rec.Objects {
				if o.Name == "base.tar" {
					data = o
				}
			}
			if data.RawBytes == 0 || data.StoredBytes*2 > data.RawBytes {
				t.Errorf("PostgreSQL %d: base.tar stored in %d bytes for %d: not compressed", tc.version, data.StoredBytes, data.RawBytes)
			}
			list, stderr, code := harness.Kcbackup(t, ctx, nil, "list", "--storage", url)
			if code != 0 || !strings.Contains(list, rec.ID) {
				t.Errorf("list after the backup (exit %d): %s%s; want %s listed", code, list, stderr, rec.ID)
			}
		})
	}
}
