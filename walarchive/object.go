package walarchive

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"
)

// Every object kcbackup stores is a valid zstd file (RFC 8878) that `zstd -d` turns into
// the original bytes, framed so that it can be verified on its own:
//
//	header  (16 bytes): skippable frame 0x184D2A5B, size 8:
//	                    "KCBA" | object format version (2) | compression (1) | 2 zero bytes
//	body:               one zstd frame holding the payload: compressed, or for compression
//	                    "none" stored as raw blocks, so the bytes are there as they are
//	trailer (52 bytes): skippable frame 0x184D2A5E, size 44: SHA-256 of the payload (32) |
//	                    payload length, big-endian uint64 (8) | "KCBE"
//
// zstd skips skippable frames, so plain tools read the body and ignore kcbackup's metadata.
// Uncompressed objects use zstd's raw blocks (3 bytes of block header per 128 KiB) rather
// than a sidecar object: the checksum stays in the object it covers, an object is still
// written and replaced atomically as one key, and one tool (`zstd -d`) reads every object.
// With encryption the whole file is then encrypted with age (see encrypt.go).
//
// The trailer is written last, so a truncated object has no valid trailer; a flipped bit
// breaks the header, the zstd stream or the checksum. Either way reading fails with
// ErrCorrupt naming the object, and nothing unverified is trusted.
const (
	objectMagic       = "KCBA"
	objectEndMagic    = "KCBE"
	objectVersion     = 2
	headerFrameMagic  = 0x184D2A5B
	trailerFrameMagic = 0x184D2A5E
	frameHeadLen      = 8 // skippable frame magic and size
	objectHeaderLen   = frameHeadLen + 8
	trailerDataLen    = sha256.Size + 8 + 4
	objectTrailerLen  = frameHeadLen + trailerDataLen
)

// headerFramePrefix is how every unencrypted object starts: the header frame's magic and size.
func headerFramePrefix() []byte {
	b := binary.LittleEndian.AppendUint32(nil, headerFrameMagic)
	return binary.LittleEndian.AppendUint32(b, objectHeaderLen-frameHeadLen)
}

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

// ObjectWriter frames, compresses, checksums and (with a key) encrypts a payload written
// to it. Close writes the trailer; it does not close the underlying writer.
type ObjectWriter struct {
	inner  io.Writer      // where the zstd file goes: cw, or the age encryption writing to cw
	age    io.WriteCloser // nil when not encrypted
	comp   io.WriteCloser // the zstd encoder or the raw-block writer, writing to inner
	enc    *zstd.Encoder
	pre    *precompressedBody // set when the body is written already compressed
	sum    hash.Hash
	n      uint64
	closed bool
	cw     countingWriter
}

// NewObjectWriter starts an unencrypted object on w with the given compression.
func NewObjectWriter(w io.Writer, c Compression) (*ObjectWriter, error) {
	return NewObjectWriterKey(w, c, nil)
}

// NewObjectWriterKey starts an object on w; with a key, the whole object is encrypted to
// the key's recipients.
func NewObjectWriterKey(w io.Writer, c Compression, key Key) (*ObjectWriter, error) {
	return newObjectWriter(w, c, key, false)
}

// NewPrecompressedObjectWriterKey starts a zstd object whose body is written to it already
// compressed: zstd frames, as PostgreSQL's server-side compression sends them. The object
// stored is the same as NewObjectWriterKey's with CompressionZstd, so every reader reads it
// alike; the trailer's length and SHA-256 cover the decompressed payload, which is decoded
// as it passes to compute them (an undecodable or cut body fails Write or Close).
func NewPrecompressedObjectWriterKey(w io.Writer, key Key) (*ObjectWriter, error) {
	return newObjectWriter(w, CompressionZstd, key, true)
}

func newObjectWriter(w io.Writer, c Compression, key Key, precompressed bool) (*ObjectWriter, error) {
	code, err := c.code()
	if err != nil {
		return nil, err
	}
	ow := &ObjectWriter{sum: sha256.New()}
	ow.cw = countingWriter{w: w}
	ow.inner = &ow.cw
	if key != nil {
		if ow.age, err = encryptTo(&ow.cw, key); err != nil {
			return nil, fmt.Errorf("start encryption: %w", err)
		}
		ow.inner = ow.age
	}
	header := append(headerFramePrefix(), objectMagic[0], objectMagic[1], objectMagic[2], objectMagic[3], objectVersion, code, 0, 0)
	if _, err := ow.inner.Write(header); err != nil {
		return nil, fmt.Errorf("write object header: %w", err)
	}
	switch {
	case precompressed:
		ow.pre = newPrecompressedBody(ow.inner, ow.sum, &ow.n)
		ow.comp = ow.pre
	case c == CompressionZstd:
		ow.enc = encoderPool.Get().(*zstd.Encoder)
		ow.enc.Reset(ow.inner)
		ow.comp = ow.enc
	default:
		ow.comp = newRawFrameWriter(ow.inner)
	}
	return ow, nil
}

// precompressedBody passes compressed bytes through to w and decodes them on the side,
// hashing and counting the payload they hold; a bounded pipe lets decoding overlap the
// next bytes' arrival.
type precompressedBody struct {
	w    io.Writer
	pw   *PipeWriter
	done chan error
	err  error // the decoder's error, once it has stopped early
}

func newPrecompressedBody(w io.Writer, sum hash.Hash, n *uint64) *precompressedBody {
	pr, pw := Pipe(1 << 20)
	b := &precompressedBody{w: w, pw: pw, done: make(chan error, 1)}
	go func() {
		dec := decoderPool.Get().(*zstd.Decoder)
		err := dec.Reset(pr)
		if err == nil {
			var c int64
			c, err = io.Copy(sum, dec)
			*n = uint64(c)
		}
		dec.Reset(nil)
		decoderPool.Put(dec)
		if err != nil {
			err = fmt.Errorf("the compressed body does not decode: %w", err)
			pr.CloseWithError(err)
		}
		b.done <- err
	}()
	return b
}

func (b *precompressedBody) Write(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.w.Write(p)
	if err != nil {
		return n, err
	}
	if _, err := b.pw.Write(p[:n]); err != nil {
		b.err = <-b.done // the decoder stopped: its error says why
		if b.err == nil {
			b.err = errors.New("the compressed body has bytes after its last zstd frame")
		}
		return n, b.err
	}
	return n, nil
}

// Close waits for the decoder to reach the end of the body.
func (b *precompressedBody) Close() error {
	if b.err != nil {
		return b.err
	}
	b.pw.Close()
	b.err = <-b.done
	return b.err
}

// Write adds payload bytes (for a precompressed object: compressed bytes).
func (ow *ObjectWriter) Write(p []byte) (int, error) {
	if ow.closed {
		return 0, errors.New("write to closed object writer")
	}
	if ow.pre != nil {
		return ow.pre.Write(p) // the decoder hashes and counts the payload
	}
	n, err := ow.comp.Write(p)
	ow.sum.Write(p[:n])
	ow.n += uint64(n)
	return n, err
}

// Close ends the zstd frame, writes the trailer and ends the encryption.
func (ow *ObjectWriter) Close() error {
	if ow.closed {
		return nil
	}
	ow.closed = true
	err := ow.comp.Close()
	if ow.enc != nil {
		ow.enc.Reset(nil)
		encoderPool.Put(ow.enc)
		ow.enc = nil
	}
	if err != nil {
		return fmt.Errorf("finish zstd frame: %w", err)
	}
	trailer := make([]byte, 0, objectTrailerLen)
	trailer = binary.LittleEndian.AppendUint32(trailer, trailerFrameMagic)
	trailer = binary.LittleEndian.AppendUint32(trailer, trailerDataLen)
	trailer = ow.sum.Sum(trailer)
	trailer = binary.BigEndian.AppendUint64(trailer, ow.n)
	trailer = append(trailer, objectEndMagic...)
	if _, err := ow.inner.Write(trailer); err != nil {
		return fmt.Errorf("write object trailer: %w", err)
	}
	if ow.age != nil {
		if err := ow.age.Close(); err != nil {
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
// and an error wrapping ErrCorrupt otherwise. A storage error is returned as it is, never
// as corruption. A caller must not trust the bytes before it has seen io.EOF.
type ObjectReader struct {
	name  string
	src   *errRecorder // the stored bytes, with the storage's first error
	split *trailerSplitter
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
// object without the right identity, and an unencrypted object when a key is given, are
// refused with ErrWrongKey.
func NewObjectReaderKey(r io.Reader, name string, key Key) (*ObjectReader, error) {
	src := &errRecorder{r: r}
	plain, err := openEncryption(bufio.NewReaderSize(src, 64<<10), src, name, key)
	if err != nil {
		return nil, err
	}
	var hdr [objectHeaderLen]byte
	if _, err := io.ReadFull(plain, hdr[:]); err != nil {
		if src.err != nil {
			return nil, fmt.Errorf("read %s: %w", name, src.err)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%s: %w: shorter than the %d-byte header", name, ErrCorrupt, objectHeaderLen)
		}
		return nil, fmt.Errorf("%s: %w: %v", name, ErrCorrupt, err)
	}
	if err := checkHeader(hdr[:], name); err != nil {
		return nil, err
	}
	or := &ObjectReader{name: name, src: src, split: newTrailerSplitter(plain), sum: sha256.New()}
	or.dec = decoderPool.Get().(*zstd.Decoder)
	if err := or.dec.Reset(or.split); err != nil {
		or.Close()
		return nil, or.readError(err)
	}
	return or, nil
}

// checkHeader checks the header frame: magic, size, object format version, compression.
func checkHeader(hdr []byte, name string) error {
	if string(hdr[:4]) == objectMagic {
		return fmt.Errorf("%s: object format version %d, written by an earlier kcbackup, is not supported (this kcbackup reads version %d; there are no archives of that format to migrate): %w", name, hdr[4], objectVersion, ErrCorrupt)
	}
	if !bytes.Equal(hdr[:frameHeadLen], headerFramePrefix()) || string(hdr[frameHeadLen:frameHeadLen+4]) != objectMagic {
		return fmt.Errorf("%s: %w: not a kcbackup object (bad header frame)", name, ErrCorrupt)
	}
	if v := hdr[frameHeadLen+4]; v != objectVersion {
		return fmt.Errorf("%s: unsupported object format version %d (this kcbackup reads version %d): %w", name, v, objectVersion, ErrCorrupt)
	}
	if c := hdr[frameHeadLen+5]; c > 1 {
		return fmt.Errorf("%s: %w: unknown compression code %d", name, ErrCorrupt, c)
	}
	if hdr[frameHeadLen+6] != 0 || hdr[frameHeadLen+7] != 0 {
		return fmt.Errorf("%s: %w: reserved header bytes are not zero", name, ErrCorrupt)
	}
	return nil
}

// readError tells a storage error (returned as it is) from corruption.
func (or *ObjectReader) readError(err error) error {
	if or.src.err != nil {
		return fmt.Errorf("read %s: %w", or.name, or.src.err)
	}
	return fmt.Errorf("%s: %w: %v", or.name, ErrCorrupt, err)
}

// Read implements io.Reader.
func (or *ObjectReader) Read(p []byte) (int, error) {
	if or.err != nil {
		return 0, or.err
	}
	n, err := or.dec.Read(p)
	or.sum.Write(p[:n])
	or.n += uint64(n)
	if err == io.EOF {
		err = or.verify()
		if err == nil {
			err = io.EOF
		}
	} else if err != nil {
		err = or.readError(err)
	}
	if err != nil {
		or.err = err
	}
	return n, err
}

func (or *ObjectReader) verify() error {
	// The decoder stops at the end of the zstd stream; the splitter must be at its end
	// too, or bytes were appended.
	if _, err := io.Copy(io.Discard, or.split); err != nil {
		return or.readError(err)
	}
	t := or.split.trailer
	if len(t) != objectTrailerLen || !bytes.Equal(t[:frameHeadLen], trailerFramePrefix()) || string(t[objectTrailerLen-4:]) != objectEndMagic {
		return or.fail("truncated: missing trailer")
	}
	d := t[frameHeadLen:]
	if n := binary.BigEndian.Uint64(d[32:40]); n != or.n {
		return or.fail("length %d does not match the recorded %d bytes", or.n, n)
	}
	if !bytes.Equal(or.sum.Sum(nil), d[:32]) {
		return or.fail("SHA-256 checksum mismatch")
	}
	return nil
}

func trailerFramePrefix() []byte {
	b := binary.LittleEndian.AppendUint32(nil, trailerFrameMagic)
	return binary.LittleEndian.AppendUint32(b, trailerDataLen)
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
	err     error // a read error of the underlying stream (storage or decryption)
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

// rawFrameWriter writes its input as one zstd frame of raw (stored) blocks with a content
// checksum, so that uncompressed objects are zstd files too and `zstd -t` checks them.
type rawFrameWriter struct {
	w       io.Writer
	buf     []byte // the block being filled
	out     []byte // the encoded block, reused
	sum     *xxhash.Digest
	started bool
}

// rawBlockMax is the largest zstd block, and the frame's window size.
const rawBlockMax = 128 << 10

func newRawFrameWriter(w io.Writer) *rawFrameWriter {
	return &rawFrameWriter{w: w, buf: make([]byte, 0, rawBlockMax), sum: xxhash.New()}
}

func (r *rawFrameWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		if len(r.buf) == rawBlockMax {
			if err := r.flush(false); err != nil {
				return total - len(p), err
			}
		}
		n := copy(r.buf[len(r.buf):rawBlockMax], p)
		r.buf = r.buf[:len(r.buf)+n]
		r.sum.Write(p[:n])
		p = p[n:]
	}
	return total, nil
}

// flush writes the buffered bytes as one raw block, after the frame header on first use.
func (r *rawFrameWriter) flush(last bool) error {
	out := r.out[:0]
	if !r.started {
		// Magic, frame header descriptor (content checksum, no content size, no dictionary)
		// and a window descriptor of 128 KiB (exponent 7).
		out = append(out, 0x28, 0xB5, 0x2F, 0xFD, 0x04, 7<<3)
		r.started = true
	}
	bh := uint32(len(r.buf)) << 3 // block type 0: raw
	if last {
		bh |= 1
	}
	out = append(out, byte(bh), byte(bh>>8), byte(bh>>16))
	out = append(out, r.buf...)
	r.out, r.buf = out, r.buf[:0]
	_, err := r.w.Write(out)
	return err
}

// Close writes the last block and the content checksum (the low 32 bits of XXH64).
func (r *rawFrameWriter) Close() error {
	if err := r.flush(true); err != nil {
		return err
	}
	_, err := r.w.Write(binary.LittleEndian.AppendUint32(nil, uint32(r.sum.Sum64())))
	return err
}
