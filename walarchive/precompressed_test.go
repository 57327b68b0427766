package walarchive

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// precompress compresses payload with the zstd tool, multithreaded, as libzstd does for
// PostgreSQL's server-side compression (BASE_BACKUP ... COMPRESSION 'zstd').
func precompress(t *testing.T, zstdBin string, payload []byte) []byte {
	t.Helper()
	cmd := exec.Command(zstdBin, "-q", "-1", "-T2", "-c")
	cmd.Stdin = bytes.NewReader(payload)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("zstd -1 -T2: %v", err)
	}
	return out
}

func TestPrecompressedObjectsReadLikeAnyOther(t *testing.T) {
	zstdBin := requireTool(t, "zstd", "zstd")
	ageBin := requireTool(t, "age", "age")
	dir := t.TempDir()
	idFile := filepath.Join(dir, "key.txt")
	os.WriteFile(idFile, []byte(testAgeIdentity(t, 4).String()+"\n"), 0o600)
	big := bytes.Repeat([]byte("pgbench_accounts row "), 300000)
	rand.Read(big[:1<<20])
	for _, payload := range [][]byte{nil, []byte("x"), big} {
		for _, k := range []Key{nil, testKey(4)} {
			// Two frames back to back, as an archive split by the server would never be but
			// a reader must still take.
			body := append(precompress(t, zstdBin, payload[:len(payload)/2]), precompress(t, zstdBin, payload[len(payload)/2:])...)
			var stored bytes.Buffer
			ow, err := NewPrecompressedObjectWriterKey(&stored, k)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ow.Write(body); err != nil {
				t.Fatal(err)
			}
			if err := ow.Close(); err != nil {
				t.Fatal(err)
			}
			if ow.RawBytes() != uint64(len(payload)) || ow.Sum() != sha256.Sum256(payload) {
				t.Fatalf("%d bytes: writer recorded %d bytes, sum %x; want the payload's", len(payload), ow.RawBytes(), ow.Sum())
			}
			got, err := decode(stored.Bytes(), k)
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("%d bytes, encrypted %v: read back %d bytes (%v); want the payload", len(payload), k != nil, len(got), err)
			}
			// By hand, as docs/RECOVERY.md reads it.
			obj := filepath.Join(dir, "obj")
			os.WriteFile(obj, stored.Bytes(), 0o600)
			if k != nil {
				if out, err := exec.Command(ageBin, "-d", "-i", idFile, "-o", obj+".zst", obj).CombinedOutput(); err != nil {
					t.Fatalf("age -d: %v: %s", err, out)
				}
				obj += ".zst"
			}
			if out, err := exec.Command(zstdBin, "-q", "-d", "-c", obj).Output(); err != nil || !bytes.Equal(out, payload) {
				t.Fatalf("%d bytes, encrypted %v: zstd -d gave %d bytes (%v); want the payload", len(payload), k != nil, len(out), err)
			}
		}
	}
}

func TestPrecompressedBodyThatDoesNotDecodeIsRefused(t *testing.T) {
	zstdBin := requireTool(t, "zstd", "zstd")
	body := precompress(t, zstdBin, bytes.Repeat([]byte("abc"), 100000))
	for name, bad := range map[string][]byte{
		"cut":      body[:len(body)-5],
		"flipped":  append(append([]byte(nil), body[:len(body)/2]...), append([]byte{body[len(body)/2] ^ 0xff}, body[len(body)/2+1:]...)...),
		"not zstd": []byte("this is a tar file, not zstd"),
	} {
		ow, err := NewPrecompressedObjectWriterKey(&bytes.Buffer{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, werr := ow.Write(bad)
		cerr := ow.Close()
		if werr == nil && cerr == nil {
			t.Fatalf("%s body: stored without an error", name)
		}
	}
	if _, err := (&Archive{Identity: Identity{Compression: CompressionNone}}).PutPrecompressed(t.Context(), "k", bytes.NewReader(body)); err == nil {
		t.Fatal("PutPrecompressed into a compression-none archive succeeded")
	} else if errors.Is(err, ErrCorrupt) {
		t.Fatalf("err = %v; a refusal, not corruption", err)
	}
}
