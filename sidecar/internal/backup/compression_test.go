package backup

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/sidecar/internal/pgrepl"
	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
	"github.com/kcbackup/kcbackup/walarchive/storage/memory"
)

func TestCompressedBySaysWhoCompressed(t *testing.T) {
	for _, tc := range []struct {
		c          walarchive.Compression
		serverZstd bool
		want       string
	}{
		{walarchive.CompressionZstd, true, walarchive.CompressedByServer},
		{walarchive.CompressionZstd, false, walarchive.CompressedByClient},
		{walarchive.CompressionNone, false, walarchive.CompressedByNone},
	} {
		if got := compressedBy(tc.c, tc.serverZstd); got != tc.want {
			t.Errorf("compressedBy(%s, server %v) = %q; want %q", tc.c, tc.serverZstd, got, tc.want)
		}
	}
}

// An explicit --compress-on server (RequireServerCompression) on a server built without
// zstd (PostgreSQL 16's portable build) fails with an error that names the cause and the
// way out, and stores nothing.
func TestRequiredServerCompressionFailsClearlyOnAServerWithoutZstd(t *testing.T) {
	pg := harness.StartPostgres(t, harness.PGOptions{Version: 16})
	cfg, err := pgrepl.ParseConfig(pg.ConnString(harness.PGSuperuser, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	st := memory.New()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = Take(ctx, Options{PG: cfg, Storage: st, Compression: walarchive.CompressionZstd, FastCheckpoint: true, RequireServerCompression: true})
	if err == nil {
		t.Fatal("backup with server-side compression required on a server without zstd succeeded")
	}
	for _, want := range []string{"server-side compression was required (--compress-on server)", "built without zstd", "this build does not support compression with ZSTD", "--compress-on client"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	objs, err := st.List(ctx, walarchive.BackupsPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 0 {
		t.Errorf("the refused backup left %d objects, such as %s", len(objs), objs[0].Key)
	}
}
