package walarchive

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/kcbackup/kcbackup/walarchive/storage/memory"
)

func testKey(b byte) Key { return Key(bytes.Repeat([]byte{b}, 32)) }

func encode(t *testing.T, payload []byte, c Compression, k Key) []byte {
	t.Helper()
	var b bytes.Buffer
	ow, err := NewObjectWriterKey(&b, c, k)
	if err != nil {
		t.Fatal(err)
	}
	ow.Write(payload)
	if err := ow.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func decode(data []byte, k Key) ([]byte, error) {
	or, err := NewObjectReaderKey(bytes.NewReader(data), "obj", k)
	if err != nil {
		return nil, err
	}
	defer or.Close()
	var out bytes.Buffer
	_, err = out.ReadFrom(or)
	return out.Bytes(), err
}

func TestEncryptedObjectsRoundTripAtChunkEdges(t *testing.T) {
	big := make([]byte, 3<<20)
	rand.Read(big)
	for _, c := range []Compression{CompressionNone, CompressionZstd} {
		for _, n := range []int{0, 1, encChunk - objectTrailerLen, encChunk, encChunk + 1, 2 * encChunk, len(big)} {
			payload := big[:n]
			enc := encode(t, payload, c, testKey(1))
			got, err := decode(enc, testKey(1))
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("%s %d bytes: %v", c, n, err)
			}
		}
	}
}

func TestEncryptionFailsClosed(t *testing.T) {
	payload := bytes.Repeat([]byte("secret ledger row "), 20000)
	enc := encode(t, payload, CompressionNone, testKey(1))
	if bytes.Contains(enc, []byte("secret ledger row")) {
		t.Fatal("the plaintext is visible in the encrypted object")
	}
	for name, k := range map[string]Key{"wrong key": testKey(2), "no key": nil} {
		if _, err := decode(enc, k); !errors.Is(err, ErrWrongKey) {
			t.Errorf("%s: err = %v; want ErrWrongKey", name, err)
		}
	}
	plain := encode(t, payload, CompressionNone, nil)
	if _, err := decode(plain, testKey(1)); !errors.Is(err, ErrWrongKey) {
		t.Errorf("unencrypted object read with a key: err = %v; want ErrWrongKey (no downgrade)", err)
	}
	// Tampering: a flipped byte, a cut at a chunk boundary, swapped chunks.
	flipped := append([]byte(nil), enc...)
	flipped[len(flipped)/2] ^= 1
	chunk := encChunk + encTagLen
	head := objectHeaderLen + encHeadLen
	cut := append([]byte(nil), enc[:head+chunk]...)
	swapped := append([]byte(nil), enc...)
	copy(swapped[head:head+chunk], enc[head+chunk:head+2*chunk])
	copy(swapped[head+chunk:head+2*chunk], enc[head:head+chunk])
	for name, bad := range map[string][]byte{"flipped": flipped, "cut at a chunk boundary": cut, "swapped chunks": swapped} {
		if _, err := decode(bad, testKey(1)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: err = %v; want ErrCorrupt", name, err)
		}
	}
}

func TestArchiveKeyMustMatchItsIdentity(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	a, err := InitArchive(ctx, st, testIdentity(), testKey(7))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.PutImmutable(ctx, SegmentKey(1, 1, seg1M), bytes.NewReader(make([]byte, seg1M))); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenArchive(ctx, st, testKey(7)); err != nil {
		t.Fatalf("right key refused: %v", err)
	}
	for name, k := range map[string]Key{"wrong key": testKey(8), "no key": nil} {
		_, err := OpenArchive(ctx, st, k)
		if !errors.Is(err, ErrWrongKey) || !strings.Contains(err.Error(), testKey(7).ID()) {
			t.Errorf("%s: err = %v; want ErrWrongKey naming the archive's key ID", name, err)
		}
		if _, err := InitArchive(ctx, st, testIdentity(), k); !errors.Is(err, ErrWrongKey) {
			t.Errorf("InitArchive with %s: err = %v", name, err)
		}
	}
	plain := memory.New()
	InitArchive(ctx, plain, testIdentity(), nil)
	if _, err := OpenArchive(ctx, plain, testKey(7)); err == nil || !strings.Contains(err.Error(), "not encrypted") {
		t.Errorf("key for an unencrypted archive: err = %v", err)
	}
	if _, err := ParseKey([]byte("too short"), "key.txt"); err == nil || strings.Contains(err.Error(), "too short") {
		t.Errorf("ParseKey of a bad key: err = %v (must not echo the key)", err)
	}
}
