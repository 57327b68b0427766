package walarchive

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Client-side encryption (optional, per archive). An encrypted object is
//
//	header (8 bytes, byte 6 = 1) | key ID (8) | nonce prefix (8) | sealed chunks
//
// where the sealed stream holds the compressed body and the trailer, cut into 64 KiB
// chunks, each sealed with AES-256-GCM under nonce = prefix || chunk counter (4 bytes) and
// additional data = the header, the key ID and whether the chunk is the last. Reordered,
// dropped, truncated or appended chunks and a wrong key all fail to open: encryption fails
// closed, with ErrWrongKey when the key ID differs and ErrCorrupt otherwise.
const (
	encChunk    = 64 << 10
	encTagLen   = 16
	encHeadLen  = 16
	keyIDLen    = 8
	encryptAESG = 1
)

// ErrWrongKey means an object or archive was encrypted with another key (or none is given).
var ErrWrongKey = errors.New("wrong or missing encryption key")

// Key is a 32-byte AES-256 key.
type Key []byte

// ID is the key's fingerprint: the first 8 bytes of its SHA-256 (safe to store and show).
func (k Key) ID() string { return hex.EncodeToString(k.id()) }

func (k Key) id() []byte {
	s := sha256.Sum256(append([]byte("kcbackup key id\x00"), k...))
	return s[:keyIDLen]
}

// LoadKeyFile reads a key: 32 raw bytes, or 64 hex digits, or base64 of 32 bytes.
func LoadKeyFile(path string) (Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read encryption key file: %w", err)
	}
	return ParseKey(b, path)
}

// ParseKey parses key material; name is used in errors (never the key itself).
func ParseKey(b []byte, name string) (Key, error) {
	if len(b) == 32 {
		return Key(b), nil
	}
	s := strings.TrimSpace(string(b))
	if k, err := hex.DecodeString(s); err == nil && len(k) == 32 {
		return Key(k), nil
	}
	if k, err := base64.StdEncoding.DecodeString(s); err == nil && len(k) == 32 {
		return Key(k), nil
	}
	return nil, fmt.Errorf("invalid encryption key in %s: expected 32 random bytes, as raw bytes, 64 hex digits or base64 (e.g. head -c 32 /dev/urandom | base64)", name)
}

func (k Key) aead() (cipher.AEAD, error) {
	if len(k) != 32 {
		return nil, fmt.Errorf("invalid encryption key: %d bytes, expected 32", len(k))
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// sealWriter encrypts a stream in chunks.
type sealWriter struct {
	w      io.Writer
	aead   cipher.AEAD
	prefix [8]byte
	ad     []byte
	buf    []byte
	n      uint32
	out    []byte
}

func newSealWriter(w io.Writer, k Key, header []byte) (*sealWriter, error) {
	a, err := k.aead()
	if err != nil {
		return nil, err
	}
	s := &sealWriter{w: w, aead: a, buf: make([]byte, 0, encChunk)}
	if _, err := rand.Read(s.prefix[:]); err != nil {
		return nil, err
	}
	head := append(k.id(), s.prefix[:]...)
	s.ad = append(append([]byte(nil), header...), k.id()...)
	if _, err := w.Write(head); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *sealWriter) nonce() []byte {
	n := make([]byte, 12)
	copy(n, s.prefix[:])
	binary.BigEndian.PutUint32(n[8:], s.n)
	return n
}

func (s *sealWriter) adFor(final bool) []byte {
	f := byte(0)
	if final {
		f = 1
	}
	return append(append([]byte(nil), s.ad...), f)
}

func (s *sealWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		k := copy(s.buf[len(s.buf):cap(s.buf)], p)
		s.buf = s.buf[:len(s.buf)+k]
		p = p[k:]
		if len(s.buf) == encChunk && len(p) > 0 {
			if err := s.flush(false); err != nil {
				return 0, err
			}
		}
	}
	return total, nil
}

func (s *sealWriter) flush(final bool) error {
	if s.n == ^uint32(0) {
		return errors.New("object too large to encrypt")
	}
	s.out = s.aead.Seal(s.out[:0], s.nonce(), s.buf, s.adFor(final))
	s.n++
	s.buf = s.buf[:0]
	_, err := s.w.Write(s.out)
	return err
}

// Close seals the last chunk (possibly empty).
func (s *sealWriter) Close() error { return s.flush(true) }

// openReader decrypts a stream written by sealWriter.
type openReader struct {
	r    *bufio.Reader
	aead cipher.AEAD
	pre  [8]byte
	ad   []byte
	n    uint32
	buf  []byte
	pos  int
	done bool
	name string
	ct   []byte
}

func newOpenReader(r io.Reader, k Key, header []byte, name string) (*openReader, error) {
	var head [encHeadLen]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return nil, fmt.Errorf("%s: %w: encryption header is truncated", name, ErrCorrupt)
	}
	if k == nil {
		return nil, fmt.Errorf("%s is encrypted (key ID %x) and no key was given: %w", name, head[:keyIDLen], ErrWrongKey)
	}
	if string(head[:keyIDLen]) != string(k.id()) {
		return nil, fmt.Errorf("%s is encrypted with key ID %x, not with the given key (%s): %w", name, head[:keyIDLen], k.ID(), ErrWrongKey)
	}
	a, err := k.aead()
	if err != nil {
		return nil, err
	}
	o := &openReader{r: bufio.NewReaderSize(r, encChunk+encTagLen+1), aead: a, name: name,
		ad: append(append([]byte(nil), header...), k.id()...)}
	copy(o.pre[:], head[keyIDLen:])
	return o, nil
}

func (o *openReader) Read(p []byte) (int, error) {
	for o.pos == len(o.buf) {
		if o.done {
			return 0, io.EOF
		}
		if err := o.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, o.buf[o.pos:])
	o.pos += n
	return n, nil
}

func (o *openReader) next() error {
	if cap(o.ct) < encChunk+encTagLen {
		o.ct = make([]byte, encChunk+encTagLen)
	}
	ct := o.ct[:encChunk+encTagLen]
	n, err := io.ReadFull(o.r, ct)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return err // the storage's error, not corruption
	}
	ct = ct[:n]
	final := n < encChunk+encTagLen
	if !final {
		if _, perr := o.r.Peek(1); perr == io.EOF {
			final = true
		} else if perr != nil {
			return perr
		}
	}
	nonce := make([]byte, 12)
	copy(nonce, o.pre[:])
	binary.BigEndian.PutUint32(nonce[8:], o.n)
	f := byte(0)
	if final {
		f = 1
	}
	pt, oerr := o.aead.Open(o.buf[:0], nonce, ct, append(append([]byte(nil), o.ad...), f))
	if oerr != nil {
		return fmt.Errorf("%s: %w: chunk %d fails authentication (truncated, altered or reordered)", o.name, ErrCorrupt, o.n)
	}
	o.n++
	o.buf, o.pos, o.done = pt, 0, final
	return nil
}
