package walarchive

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestObjectRoundTripsEveryCompression(t *testing.T) {
	big := make([]byte, 3<<20)
	rand.Read(big[:1<<20]) // part random, part zeros: both compressible and not
	for _, c := range []Compression{CompressionNone, CompressionZstd} {
		for _, payload := range [][]byte{nil, {42}, []byte(strings.Repeat("wal", 1000)), big} {
			enc, err := EncodeObject(payload, c)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeObject(enc, "obj")
			if err != nil {
				t.Fatalf("%s, %d bytes: %v", c, len(payload), err)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("%s, %d bytes: payload differs after round trip", c, len(payload))
			}
		}
	}
}

func TestObjectDetectsFlippedAndTruncatedBytes(t *testing.T) {
	payload := make([]byte, 200<<10)
	rand.Read(payload)
	for _, c := range []Compression{CompressionNone, CompressionZstd} {
		enc, _ := EncodeObject(payload, c)
		for _, pos := range []int{0, 5, objectHeaderLen, len(enc) / 2, len(enc) - objectTrailerLen, len(enc) - 1} {
			bad := append([]byte(nil), enc...)
			bad[pos] ^= 0x01
			if _, err := DecodeObject(bad, "wal/x"); err == nil || !strings.Contains(err.Error(), "wal/x") {
				t.Errorf("%s: flipped byte at %d not detected (err=%v)", c, pos, err)
			}
		}
		for _, n := range []int{0, 3, objectHeaderLen, len(enc) / 2, len(enc) - 1} {
			_, err := DecodeObject(enc[:n], "wal/y")
			if err == nil || !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s: truncation to %d bytes not reported as corrupt (err=%v)", c, n, err)
			}
		}
		if _, err := DecodeObject(append(append([]byte(nil), enc...), 0), "wal/z"); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: appended byte not detected (err=%v)", c, err)
		}
	}
}

// errAfterReader returns data then a storage error, which must surface as that error,
// not as corruption.
type errAfterReader struct {
	r   io.Reader
	err error
}

func (e *errAfterReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		return n, e.err
	}
	return n, err
}

func TestObjectReaderKeepsStorageErrorsApartFromCorruption(t *testing.T) {
	enc, _ := EncodeObject(bytes.Repeat([]byte("x"), 1<<20), CompressionZstd)
	storageErr := errors.New("connection reset")
	or, err := NewObjectReader(&errAfterReader{r: bytes.NewReader(enc[:len(enc)/2]), err: storageErr}, "obj")
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(or)
	if !errors.Is(err, storageErr) || errors.Is(err, ErrCorrupt) {
		t.Fatalf("err = %v; want the storage error, not corruption", err)
	}
}

func TestObjectReaderKeepsStorageErrorsApartFromDecryptionFailures(t *testing.T) {
	enc := encode(t, bytes.Repeat([]byte("y"), 1<<20), CompressionZstd, testKey(3))
	storageErr := errors.New("connection reset")
	for _, cut := range []int{10, len(enc) / 2} { // inside the age header, inside the payload
		or, err := NewObjectReaderKey(&errAfterReader{r: bytes.NewReader(enc[:cut]), err: storageErr}, "obj", testKey(3))
		if err == nil {
			_, err = io.ReadAll(or)
		}
		if !errors.Is(err, storageErr) || errors.Is(err, ErrCorrupt) || errors.Is(err, ErrWrongKey) {
			t.Fatalf("cut at %d: err = %v; want the storage error, not corruption", cut, err)
		}
	}
}

func TestObjectOfAnEarlierFormatIsRefusedClearly(t *testing.T) {
	v1 := append([]byte("KCBA\x01\x01\x00\x00"), make([]byte, 60)...)
	_, err := DecodeObject(v1, "wal/old")
	if err == nil || !strings.Contains(err.Error(), "format version 1") || !strings.Contains(err.Error(), "wal/old") {
		t.Fatalf("err = %v; want a refusal naming the object and its format version", err)
	}
}

// requireTool returns the path of a command-line tool; missing, the test skips, or fails
// under CI=true.
func requireTool(t *testing.T, name, debianPackage string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is missing: apt-get install -y %s", name, debianPackage)
	}
	t.Skipf("%s is missing (apt-get install -y %s)", name, debianPackage)
	return ""
}

func TestObjectsAreZstdAndAgeFilesThatPlainToolsRead(t *testing.T) {
	zstdBin := requireTool(t, "zstd", "zstd")
	ageBin := requireTool(t, "age", "age")
	dir := t.TempDir()
	identity := testAgeIdentity(t, 4)
	idFile := filepath.Join(dir, "key.txt")
	os.WriteFile(idFile, []byte(identity.String()+"\n"), 0o600)
	big := make([]byte, 1<<20+77)
	rand.Read(big[:1<<19])
	for _, c := range []Compression{CompressionNone, CompressionZstd} {
		for _, payload := range [][]byte{nil, []byte("x"), big} {
			for _, k := range []Key{nil, testKey(4)} {
				obj := filepath.Join(dir, "obj")
				os.WriteFile(obj, encode(t, payload, c, k), 0o600)
				zsrc := obj
				if k != nil {
					zsrc = filepath.Join(dir, "obj.zst")
					if out, err := exec.Command(ageBin, "-d", "-i", idFile, "-o", zsrc, obj).CombinedOutput(); err != nil {
						t.Fatalf("%s, %d bytes: age -d: %v: %s", c, len(payload), err, out)
					}
				}
				if out, err := exec.Command(zstdBin, "-q", "-t", zsrc).CombinedOutput(); err != nil {
					t.Fatalf("%s, %d bytes, encrypted %v: zstd -t: %v: %s", c, len(payload), k != nil, err, out)
				}
				got, err := exec.Command(zstdBin, "-q", "-d", "-c", zsrc).Output()
				if err != nil || !bytes.Equal(got, payload) {
					t.Fatalf("%s, %d bytes, encrypted %v: zstd -d gave %d bytes (%v); want the payload", c, len(payload), k != nil, len(got), err)
				}
			}
		}
	}
	// zstd -t notices a flipped byte inside an uncompressed object too (content checksum).
	enc, _ := EncodeObject(bytes.Repeat([]byte("z"), 5000), CompressionNone)
	enc[objectHeaderLen+100] ^= 1
	obj := filepath.Join(dir, "bad")
	os.WriteFile(obj, enc, 0o600)
	if err := exec.Command(zstdBin, "-q", "-t", obj).Run(); err == nil {
		t.Fatal("zstd -t accepted an uncompressed object with a flipped byte")
	}
}

func FuzzDecodeObject(f *testing.F) {
	small, _ := EncodeObject([]byte("hello"), CompressionZstd)
	f.Add(small)
	plain, _ := EncodeObject([]byte("hello"), CompressionNone)
	f.Add(plain)
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := DecodeObject(data, "fuzz")
		if err != nil {
			return
		}
		// Whatever decodes must re-encode to a valid object with the same payload.
		again, err := EncodeObject(out, CompressionNone)
		if err != nil {
			t.Fatal(err)
		}
		if back, err := DecodeObject(again, "again"); err != nil || !bytes.Equal(back, out) {
			t.Fatalf("re-encoded payload does not round-trip: %v", err)
		}
	})
}

// benchPayload is 64 MiB, one eighth random: about as compressible as pgbench data.
func benchPayload() []byte {
	data := make([]byte, 64<<20)
	rand.Read(data[:8<<20])
	return data
}

func BenchmarkObjectWriterZstd(b *testing.B) {
	data := benchPayload()
	b.SetBytes(int64(len(data)))
	for i := 0; i < b.N; i++ {
		ow, _ := NewObjectWriter(io.Discard, CompressionZstd)
		io.Copy(ow, bytes.NewReader(data))
		ow.Close()
	}
}

func BenchmarkObjectReaderZstd(b *testing.B) {
	enc, _ := EncodeObject(benchPayload(), CompressionZstd)
	b.SetBytes(64 << 20)
	for i := 0; i < b.N; i++ {
		or, _ := NewObjectReader(bytes.NewReader(enc), "x")
		io.Copy(io.Discard, or)
		or.Close()
	}
}
