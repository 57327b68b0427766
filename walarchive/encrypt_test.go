package walarchive

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/kcbackup/kcbackup/walarchive/storage/memory"
)

// testIdentities are fixed age identities, so failures are reproducible.
var testIdentities = map[byte]*age.X25519Identity{}

func testAgeIdentity(t testing.TB, b byte) *age.X25519Identity {
	if id, ok := testIdentities[b]; ok {
		return id
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	testIdentities[b] = id
	return id
}

// testKey is a key set holding identity b (so it reads and writes).
func testKey(b byte) Key {
	k, err := ParseKeys([]byte(testAgeIdentity(nil, b).String()+"\n"), "id", nil, "")
	if err != nil {
		panic(err)
	}
	return k
}

// recipientsOnly is a key set with only the public keys of the identities bs.
func recipientsOnly(t *testing.T, bs ...byte) Key {
	var lines []string
	for _, b := range bs {
		lines = append(lines, "# recipient "+string('0'+b), testAgeIdentity(t, b).Recipient().String())
	}
	k, err := ParseKeys(nil, "", []byte(strings.Join(lines, "\n")), "recipients.txt")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

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

const ageChunk = 64 << 10

func TestEncryptedObjectsRoundTripAtChunkEdges(t *testing.T) {
	big := make([]byte, 3<<20)
	rand.Read(big)
	for _, c := range []Compression{CompressionNone, CompressionZstd} {
		for _, n := range []int{0, 1, ageChunk - objectTrailerLen - objectHeaderLen, ageChunk, ageChunk + 1, 2 * ageChunk, len(big)} {
			payload := big[:n]
			enc := encode(t, payload, c, testKey(1))
			if !bytes.HasPrefix(enc, []byte(ageMagic)) {
				t.Fatalf("%s %d bytes: the object is not an age file", c, n)
			}
			got, err := decode(enc, testKey(1))
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("%s %d bytes: %v", c, n, err)
			}
		}
	}
}

func TestEachObjectHasItsOwnFileKey(t *testing.T) {
	payload := bytes.Repeat([]byte{1}, 1000)
	a, b := encode(t, payload, CompressionNone, testKey(1)), encode(t, payload, CompressionNone, testKey(1))
	if bytes.Equal(a, b) {
		t.Fatal("two encryptions of the same payload are identical: no fresh file key per object")
	}
}

func TestEncryptionFailsClosed(t *testing.T) {
	payload := bytes.Repeat([]byte("secret ledger row "), 20000)
	enc := encode(t, payload, CompressionNone, testKey(1))
	if bytes.Contains(enc, []byte("secret ledger row")) {
		t.Fatal("the plaintext is visible in the encrypted object")
	}
	for name, k := range map[string]Key{"wrong key": testKey(2), "no key": nil, "only the recipient": recipientsOnly(t, 1)} {
		if _, err := decode(enc, k); !errors.Is(err, ErrWrongKey) {
			t.Errorf("%s: err = %v; want ErrWrongKey", name, err)
		}
	}
	plain := encode(t, payload, CompressionNone, nil)
	if _, err := decode(plain, testKey(1)); !errors.Is(err, ErrWrongKey) || !strings.Contains(err.Error(), "not encrypted") {
		t.Errorf("unencrypted object read with a key: err = %v; want ErrWrongKey (no downgrade)", err)
	}
	// Tampering: a flipped byte in the header and in the payload, a cut at a chunk
	// boundary, an appended byte, swapped payload chunks.
	hdrEnd := bytes.Index(enc, []byte("\n---")) + 48
	flippedHdr := append([]byte(nil), enc...)
	flippedHdr[hdrEnd-2] ^= 1
	flipped := append([]byte(nil), enc...)
	flipped[len(flipped)/2] ^= 1
	chunk := ageChunk + 16
	body := hdrEnd + 16 // after the header and the stream nonce
	cut := append([]byte(nil), enc[:body+chunk]...)
	swapped := append([]byte(nil), enc...)
	copy(swapped[body:body+chunk], enc[body+chunk:body+2*chunk])
	copy(swapped[body+chunk:body+2*chunk], enc[body:body+chunk])
	appended := append(append([]byte(nil), enc...), 0)
	for name, bad := range map[string][]byte{"flipped header": flippedHdr, "flipped": flipped, "cut at a chunk boundary": cut, "swapped chunks": swapped, "appended": appended} {
		if _, err := decode(bad, testKey(1)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: err = %v; want ErrCorrupt", name, err)
		}
	}
}

func TestRecipientsOnlyKeyArchivesButCannotRead(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	writer := recipientsOnly(t, 1, 2)
	a, err := InitArchive(ctx, st, testIdentity(), writer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Put(ctx, "wal/x", bytes.NewReader([]byte("payload"))); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Get(ctx, "wal/x", &bytes.Buffer{}); !errors.Is(err, ErrWrongKey) || !strings.Contains(err.Error(), "identity") {
		t.Fatalf("read with only the recipients: err = %v; want ErrWrongKey asking for the identity", err)
	}
	// Either identity reads it: every recipient gets the file key.
	for _, b := range []byte{1, 2} {
		r, err := OpenArchive(ctx, st, testKey(b))
		if err != nil {
			t.Fatalf("identity %d refused: %v", b, err)
		}
		var out bytes.Buffer
		if _, err := r.Get(ctx, "wal/x", &out); err != nil || out.String() != "payload" {
			t.Fatalf("identity %d: %q, %v", b, out.String(), err)
		}
		// But writing to a subset of the recipients is refused.
		if _, err := InitArchive(ctx, st, testIdentity(), testKey(b)); !errors.Is(err, ErrWrongKey) {
			t.Fatalf("writer with identity %d alone: err = %v; want ErrWrongKey (it would drop a recipient)", b, err)
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
			t.Errorf("%s: err = %v; want ErrWrongKey naming the archive's recipients", name, err)
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
}

func TestParseKeysRejectsBadFilesWithoutEchoingThem(t *testing.T) {
	for name, c := range map[string][2]string{
		"identity garbage":  {"AGE-SECRET-KEY-1NOTAKEY-too-short", ""},
		"recipient garbage": {"", "age1notakey"},
		"only comments":     {"# nothing\n", ""},
		"ssh recipient":     {"", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsKLqeplhpW+uObz5dvMgjz1OxfM/XXUB+VHtZ6isGN alice@rust"},
	} {
		_, err := ParseKeys([]byte(c[0]), "key.txt", []byte(c[1]), "rcpt.txt")
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.Contains(err.Error(), "NOTAKEY") || strings.Contains(err.Error(), "notakey") {
			t.Errorf("%s: err = %v echoes the key material", name, err)
		}
	}
}

func FuzzDecodeEncryptedObject(f *testing.F) {
	k := testKey(5)
	var b bytes.Buffer
	ow, _ := NewObjectWriterKey(&b, CompressionZstd, k)
	ow.Write([]byte("hello"))
	ow.Close()
	f.Add(b.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		// Every failure is classified: corruption or a wrong key, never an error that
		// could pass for the storage's; and nothing but an age file decodes with a key.
		_, err := decode(data, k)
		if err == nil && !bytes.HasPrefix(data, []byte(ageMagic)) {
			t.Fatal("decoded an input that is not an age file with a key")
		}
		if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrWrongKey) {
			t.Fatalf("error %v is neither corruption nor a wrong key", err)
		}
	})
}
