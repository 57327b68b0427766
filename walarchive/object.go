package walarchive

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Every object kcbackup stores is framed so that it can be verified on its own:
//
//	header  (8 bytes):  "KCBA" | format version (1) | compression (1) | 2 zero bytes
//	body:               the payload, compressed as the header says
//	trailer (44 bytes): SHA-256 of the uncompressed payload (32) | uncompressed length,
//	                    big-endian uint64 (8) | "KCBE"
//
// The trailer is written last, so a truncated object has no valid trailer; a flipped bit
// breaks either the compressed stream or the checksum. Either way reading fails with
// ErrCorrupt naming the object, and nothing unverified is trusted.
const (
	objectMagic      = "KCBA"
	objectEndMagic   = "KCBE"
	objectVersion    = 1
	objectHeaderLen  = 8
	objectTrailerLen = sha256.Size + 8 + 4
)

// ErrCorrupt is returned (wrapped, with the object's name) when a stored object fails
// verification: bad header, truncated, undecodable or checksum mismatch.
var ErrCorrupt = errors.New("object is corrupt")

// Compression is how an archive compresses the objects it stores.
type Compression string

// The supported compressions.
const (
	CompressionNone Compression = "none"
	CompressionZstd Compression = "zstd"
)

// ParseCompression parses a compression name.
func ParseCompression(s string) (Compression, error) {
	switch Compression(s) {
	case CompressionNone, CompressionZstd:
		return Compression(s), nil
	}
	return "", fmt.Errorf("invalid compression %q: expected zstd or none", s)
}

func (c Compression) code() (byte, error) {
	switch c {
	case CompressionNone:
		return 0, nil
	case CompressionZstd:
		return 1, nil
	}
	return 0, fmt.Errorf("invalid compression %q: expected zstd or none", c)
}

// zstd encoders and decoders are costly to build; they are pooled and reset per object.
var (
	encoderPool = sync.Pool{New: func() any {
		// SpeedFastest: WAL and base backups compress well even at the fastest level, and
		// the CPU it saves belongs to PostgreSQL on the same node.
		e, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedFastest))
		if err != nil {
			panic(err) // only on invalid options, which are constant
		}
		return e
	}}
	decoderPool = sync.Pool{New: func() any {
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			panic(err)
		}
		return d
	}}
)

// ObjectWriter frames, compresses and checksums a payload written to it. Close writes the
// trailer; it does not close the underlying writer.
type ObjectWriter struct {
	w      io.Writer
	seal   *sealWriter
	comp   io.Writer // w itself, or the zstd encoder writing to w
	enc    *zstd.Encoder
	sum    hash.Hash
	n      uint64
	closed bool
	cw     countingWriter
}

// NewObjectWriter starts an unencrypted object on w with the given compression.
func NewObjectWriter(w io.Writer, c Compression) (*ObjectWriter, error) {
	return NewObjectWriterKey(w, c, nil)
}

// NewObjectWriterKey starts an object on w; with a key, the body and trailer are encrypted.
func NewObjectWriterKey(w io.Writer, c Compression, key Key) (*ObjectWriter, error) {
	code, err := c.code()
	if err != nil {
		return nil, err
	}
	ow := &ObjectWriter{sum: sha256.New()}
	ow.cw = countingWriter{w: w}
	ow.w = &ow.cw
	header := []byte{objectMagic[0], objectMagic[1], objectMagic[2], objectMagic[3], objectVersion, code, 0, 0}
	if key != nil {
		header[6] = encryptAESG
	}
	if _, err := ow.w.Write(header); err != nil {
		return nil, fmt.Errorf("write object header: %w", err)
	}
	if key != nil {
		if ow.seal, err = newSealWriter(&ow.cw, key, header); err != nil {
			return nil, fmt.Errorf("start encryption: %w", err)
		}
		ow.w = ow.seal
	}
	ow.comp = ow.w
	if c == CompressionZstd {
		ow.enc = encoderPool.Get().(*zstd.Encoder)
		ow.enc.Reset(ow.w)
		ow.comp = ow.enc
	}
	return ow, nil
}

// Write adds payload bytes.
func (ow *ObjectWriter) Write(p []byte) (int, error) {
	if ow.closed {
		return 0, errors.New("write to closed object writer")
	}
	n, err := ow.comp.Write(p)
	ow.sum.Write(p[:n])
	ow.n += uint64(n)
	return n, err
}

// Close flushes the compressed stream and writes the trailer.
func (ow *ObjectWriter) Close() error {
	if ow.closed {
		return nil
	}
	ow.closed = true
	if ow.enc != nil {
		err := ow.enc.Close()
		ow.enc.Reset(nil)
		encoderPool.Put(ow.enc)
		ow.enc = nil
		if err != nil {
			return fmt.Errorf("finish zstd stream: %w", err)
		}
	}
	trailer := make([]byte, 0, objectTrailerLen)
	trailer = ow.sum.Sum(trailer)
	trailer = binary.BigEndian.AppendUint64(trailer, ow.n)
	trailer = append(trailer, objectEndMagic...)
	if _, err := ow.w.Write(trailer); err != nil {
		return fmt.Errorf("write object trailer: %w", err)
	}
	if ow.seal != nil {
		if err := ow.seal.Close(); err != nil {
			return fmt.Errorf("finish encryption: %w", err)
		}
	}
	return nil
}

// Sum is the SHA-256 of the payload; valid after Close.
func (ow *ObjectWriter) Sum() [32]byte {
	var s [32]byte
	copy(s[:], ow.sum.Sum(nil))
	return s
}

// RawBytes is the number of payload bytes written.
func (ow *ObjectWriter) RawBytes() uint64 { return ow.n }

// StoredBytes is the number of bytes written to the underlying writer, framing included.
func (ow *ObjectWriter) StoredBytes() uint64 { return ow.cw.n }

type countingWriter struct {
	w io.Writer
	n uint64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += uint64(n)
	return n, err
}

// ObjectReader reads and verifies an object written by ObjectWriter. Read returns the
// payload; the final Read returns io.EOF only when the trailer's length and checksum match,
// and an error wrapping ErrCorrupt otherwise. A caller must not trust the bytes before it
// has seen io.EOF.
type ObjectReader struct {
	name  string
	split *trailerSplitter
	body  io.Reader
	dec   *zstd.Decoder
	sum   hash.Hash
	n     uint64
	err   error
}

// NewObjectReader starts reading the unencrypted object named name (used in errors) from r.
func NewObjectReader(r io.Reader, name string) (*ObjectReader, error) {
	return NewObjectReaderKey(r, name, nil)
}

// NewObjectReaderKey starts reading an object with a key. It fails closed: an encrypted
// object without the right key, and an unencrypted object when a key is given, are refused
// with ErrWrongKey.
func NewObjectReaderKey(r io.Reader, name string, key Key) (*ObjectReader, error) {
	var hdr [objectHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%s: %w: shorter than the %d-byte header", name, ErrCorrupt, objectHeaderLen)
		}
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if string(hdr[:4]) != objectMagic {
		return nil, fmt.Errorf("%s: %w: not a kcbackup object (bad magic)", name, ErrCorrupt)
	}
	if hdr[4] != objectVersion {
		return nil, fmt.Errorf("%s: unsupported object format version %d (this kcbackup reads version %d)", name, hdr[4], objectVersion)
	}
	switch hdr[6] {
	case 0:
		if key != nil {
			return nil, fmt.Errorf("%s is not encrypted, but this archive's objects must be: %w", name, ErrWrongKey)
		}
	case encryptAESG:
		dr, err := newOpenReader(r, key, hdr[:], name)
		if err != nil {
			return nil, err
		}
		r = dr
	default:
		return nil, fmt.Errorf("%s: %w: unknown encryption code %d", name, ErrCorrupt, hdr[6])
	}
	or := &ObjectReader{name: name, split: newTrailerSplitter(r), sum: sha256.New()}
	switch hdr[5] {
	case 0:
		or.body = or.split
	case 1:
		or.dec = decoderPool.Get().(*zstd.Decoder)
		if err := or.dec.Reset(or.split); err != nil {
			or.Close()
			return nil, fmt.Errorf("%s: %w: %v", name, ErrCorrupt, err)
		}
		or.body = or.dec
	default:
		return nil, fmt.Errorf("%s: %w: unknown compression code %d", name, ErrCorrupt, hdr[5])
	}
	return or, nil
}

// Read implements io.Reader.
func (or *ObjectReader) Read(p []byte) (int, error) {
	if or.err != nil {
		return 0, or.err
	}
	n, err := or.body.Read(p)
	or.sum.Write(p[:n])
	or.n += uint64(n)
	if err == io.EOF {
		err = or.verify()
		if err == nil {
			err = io.EOF
		}
	} else if err != nil {
		if or.split.err != nil {
			err = or.split.err // an error from the storage, not corruption
		} else {
			err = fmt.Errorf("%s: %w: %v", or.name, ErrCorrupt, err)
		}
	}
	if err != nil {
		or.err = err
	}
	return n, err
}

func (or *ObjectReader) verify() error {
	// The body reader stops at the end of the compressed stream; the splitter must be at
	// its end too, or bytes were appended.
	if _, err := io.Copy(io.Discard, or.split); err != nil {
		return or.fail("%v", err)
	}
	if or.split.err != nil {
		return or.split.err
	}
	t := or.split.trailer
	if len(t) != objectTrailerLen || string(t[objectTrailerLen-4:]) != objectEndMagic {
		return or.fail("truncated: missing trailer")
	}
	if n := binary.BigEndian.Uint64(t[32:40]); n != or.n {
		return or.fail("length %d does not match the recorded %d bytes", or.n, n)
	}
	if !bytes.Equal(or.sum.Sum(nil), t[:32]) {
		return or.fail("SHA-256 checksum mismatch")
	}
	return nil
}

func (or *ObjectReader) fail(format string, args ...any) error {
	return fmt.Errorf("%s: %w: %s", or.name, ErrCorrupt, fmt.Sprintf(format, args...))
}

// Sum is the payload's SHA-256; meaningful once Read has returned io.EOF.
func (or *ObjectReader) Sum() [32]byte {
	var s [32]byte
	copy(s[:], or.sum.Sum(nil))
	return s
}

// Close releases the decoder. It does not close the underlying reader.
func (or *ObjectReader) Close() error {
	if or.dec != nil {
		or.dec.Reset(nil)
		decoderPool.Put(or.dec)
		or.dec = nil
	}
	return nil
}

// trailerSplitter passes through all but the last objectTrailerLen bytes of a stream and
// keeps those back as the trailer.
type trailerSplitter struct {
	r       io.Reader
	buf     []byte
	start   int
	end     int
	eof     bool
	trailer []byte
	err     error // a read error of the underlying stream (storage), kept apart from corruption
}

func newTrailerSplitter(r io.Reader) *trailerSplitter {
	return &trailerSplitter{r: r, buf: make([]byte, 64<<10+objectTrailerLen)}
}

func (s *trailerSplitter) Read(p []byte) (int, error) {
	for {
		if avail := s.end - s.start - objectTrailerLen; avail > 0 {
			n := copy(p, s.buf[s.start:s.start+avail])
			s.start += n
			return n, nil
		}
		if s.eof {
			return 0, io.EOF
		}
		if s.err != nil {
			return 0, s.err
		}
		// Move the held-back bytes to the front and read more behind them.
		s.end = copy(s.buf, s.buf[s.start:s.end])
		s.start = 0
		n, err := s.r.Read(s.buf[s.end:])
		s.end += n
		if err == io.EOF {
			s.eof = true
			s.trailer = append([]byte(nil), s.buf[s.start:s.end]...)
			if len(s.trailer) > objectTrailerLen {
				s.trailer = s.trailer[len(s.trailer)-objectTrailerLen:]
			}
			if s.end-s.start < objectTrailerLen {
				s.end = s.start // nothing more to pass through; verify reports the truncation
			}
		} else if err != nil {
			s.err = err
		}
	}
}

// EncodeObject frames payload into a new byte slice (for small objects).
func EncodeObject(payload []byte, c Compression) ([]byte, error) {
	var b bytes.Buffer
	ow, err := NewObjectWriter(&b, c)
	if err != nil {
		return nil, err
	}
	if _, err := ow.Write(payload); err != nil {
		return nil, err
	}
	if err := ow.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// DecodeObject verifies and unframes a whole object held in memory.
func DecodeObject(data []byte, name string) ([]byte, error) {
	or, err := NewObjectReader(bytes.NewReader(data), name)
	if err != nil {
		return nil, err
	}
	defer or.Close()
	return io.ReadAll(or)
}
