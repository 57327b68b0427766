package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
)

// tailLayout stores a segment's tail the ways a crash, a retry and an older release leave
// it: a format-2 partial [0,100), then parts [100,300), [250,1000) (overlapping: an upload
// retried after more WAL arrived), [1000,1000+extra) in small pieces, and a part past a
// gap. It returns the bytes a reader must serve: the run from the first byte.
func tailLayout(t *testing.T, a *walarchive.Archive, segno uint64, extra int) []byte {
	t.Helper()
	ctx := context.Background()
	seg := a.SegmentSize()
	wal := make([]byte, 1000+extra+5000)
	for i := range wal {
		wal[i] = byte(i*7 + i/251)
	}
	if _, err := a.Put(ctx, walarchive.PartialKey(1, segno, seg), bytes.NewReader(wal[:100])); err != nil {
		t.Fatal(err)
	}
	ranges := [][2]int{{100, 300}, {250, 1000}}
	for s := 1000; s < 1000+extra; s += 3 {
		ranges = append(ranges, [2]int{s, min(s+3, 1000+extra)})
	}
	ranges = append(ranges, [2]int{1000 + extra + 10, 1000 + extra + 4000}) // past a gap
	for _, r := range ranges {
		if _, err := a.PutPart(ctx, 1, segno, uint64(r[0]), uint64(r[1]), bytes.NewReader(wal[r[0]:r[1]])); err != nil {
			t.Fatal(err)
		}
	}
	want := make([]byte, seg)
	copy(want, wal[:1000+extra])
	return want
}

// runRecoverWAL runs the page's `kcb-recover.sh wal` for a segment and returns its output.
func runRecoverWAL(t *testing.T, script string, env []string, name string, segSize uint64) []byte {
	t.Helper()
	dest := filepath.Join(t.TempDir(), name)
	cmd := exec.Command(script, "wal", name, dest)
	cmd.Env = append(append(os.Environ(), env...), fmt.Sprintf("KCB_SEGMENT_SIZE=%d", segSize))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kcb-recover.sh wal %s: %v\n%s", name, err, out)
	}
	got, err := os.ReadFile(dest)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// checkTail compares the script's and kcbackup's reading of a tail with what it must be.
func checkTail(t *testing.T, script string, env []string, a *walarchive.Archive, segno uint64, want []byte) {
	t.Helper()
	name := walarchive.SegmentName(1, segno, a.SegmentSize())
	var fetched bytes.Buffer
	if _, err := a.FetchWALFile(context.Background(), name, &fetched); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fetched.Bytes(), want) {
		t.Fatal("kcbackup's wal-fetch does not serve the tail's run from the first byte, padded")
	}
	if got := runRecoverWAL(t, script, env, name, a.SegmentSize()); !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("kcb-recover.sh serves %d bytes differing from kcbackup's from byte %d; want the run of parts padded to %d", len(got), i, len(want))
	}
}

// The page's script assembles a tail from its parts exactly as kcbackup does: after a
// format-2 partial, through overlapping parts, stopping at a gap, on a file archive (both
// compressions) and on an encrypted MinIO archive with more parts than one listing page.
func TestManualRecoveryAssemblesTheTailFromItsParts(t *testing.T) {
	requireRecoveryTools(t)
	script := recoveryScript(t)
	ctx := context.Background()
	id := walarchive.Identity{SystemIdentifier: "7400000000000000001", PostgresVersion: 15, WALSegmentSize: 1 << 20}
	for _, c := range []walarchive.Compression{walarchive.CompressionZstd, walarchive.CompressionNone} {
		t.Run("file-"+string(c), func(t *testing.T) {
			dir := harness.FileArchiveDir(t)
			st, err := walarchive.OpenStorage(ctx, "file://"+dir)
			if err != nil {
				t.Fatal(err)
			}
			id.Compression = c
			a, err := walarchive.InitArchive(ctx, st, id, nil)
			if err != nil {
				t.Fatal(err)
			}
			checkTail(t, script, []string{"KCB_ARCHIVE=" + dir}, a, 3, tailLayout(t, a, 3, 30))
		})
	}
	t.Run("minio-encrypted", func(t *testing.T) {
		m := harness.StartMinIO(t)
		bucket := m.NewBucket(t)
		for _, kv := range append(m.Env(), "KCBACKUP_S3_FORCE_PATH_STYLE=true") {
			k, v, _ := strings.Cut(kv, "=")
			t.Setenv(k, v)
		}
		st, err := walarchive.OpenStorage(ctx, "s3://"+bucket+"/db")
		if err != nil {
			t.Fatal(err)
		}
		keyDir := t.TempDir()
		idFile, _ := writeAgeIdentity(t, keyDir, "key.txt")
		key, err := walarchive.LoadKeyFiles(idFile, "")
		if err != nil {
			t.Fatal(err)
		}
		id.Compression = walarchive.CompressionZstd
		a, err := walarchive.InitArchive(ctx, st, id, key)
		if err != nil {
			t.Fatal(err)
		}
		curlCfg := filepath.Join(keyDir, "s3.curl")
		os.WriteFile(curlCfg, []byte(fmt.Sprintf("user = \"%s:%s\"\n", m.AccessKey(), m.SecretKey())), 0o600)
		env := []string{"KCB_S3=" + m.Endpoint() + "/" + bucket + "/db", "KCB_S3_REGION=" + harness.MinIORegion,
			"KCB_S3_CURL_CONFIG=" + curlCfg, "KCB_AGE_IDENTITY=" + idFile}
		// 3 * 1100 bytes in 3-byte parts: more than the 1000 keys of one listing page.
		checkTail(t, script, env, a, 5, tailLayout(t, a, 5, 3300))
	})
}
