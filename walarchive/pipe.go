package walarchive

import (
	"context"
	"errors"
	"io"
	"sync"
)

// putFramed frames, compresses (and with a key, encrypts) r while put stores the result,
// in bounded memory.
func putFramed(ctx context.Context, put func(context.Context, string, io.Reader) error, key string, r io.Reader, c Compression, k Key) (PutResult, error) {
	return putWith(ctx, put, key, r, func(w io.Writer) (*ObjectWriter, error) { return NewObjectWriterKey(w, c, k) })
}

func putWith(ctx context.Context, put func(context.Context, string, io.Reader) error, key string, r io.Reader, newWriter func(io.Writer) (*ObjectWriter, error)) (PutResult, error) {
	pr, pw := Pipe(4 << 20)
	var res PutResult
	go func() {
		ow, err := newWriter(pw)
		if err == nil {
			_, err = io.Copy(ow, r)
			if cerr := ow.Close(); err == nil {
				err = cerr
			}
			res.RawBytes, res.StoredBytes, res.SHA256 = ow.RawBytes(), ow.StoredBytes(), ow.Sum()
		}
		pw.CloseWithError(err)
	}()
	err := put(ctx, key, pr)
	pr.CloseWithError(errors.New("upload ended")) // unblock the encoder if put returned early
	if err != nil {
		return PutResult{}, err
	}
	return res, nil
}

// Pipe is like io.Pipe with a bounded buffer: the writer goes on while the reader works on
// earlier bytes, so receiving, compressing and uploading overlap instead of taking turns,
// and memory stays bounded by size.
func Pipe(size int) (*PipeReader, *PipeWriter) {
	p := &pipe{max: size}
	p.cond = sync.NewCond(&p.mu)
	return &PipeReader{p}, &PipeWriter{p}
}

type pipe struct {
	mu     sync.Mutex
	cond   *sync.Cond
	buf    []byte
	off    int
	max    int
	werr   error // set when the writer closed (io.EOF for a clean close)
	rerr   error // set when the reader closed
	closed bool
}

// PipeReader is the read half of Pipe.
type PipeReader struct{ p *pipe }

// PipeWriter is the write half of Pipe.
type PipeWriter struct{ p *pipe }

// Read reads buffered bytes, waiting for the writer when there are none.
func (r *PipeReader) Read(b []byte) (int, error) {
	p := r.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.off == len(p.buf) && p.werr == nil && p.rerr == nil {
		p.cond.Wait()
	}
	if p.rerr != nil {
		return 0, io.ErrClosedPipe
	}
	if p.off == len(p.buf) {
		return 0, p.werr
	}
	n := copy(b, p.buf[p.off:])
	p.off += n
	if p.off == len(p.buf) {
		p.buf, p.off = p.buf[:0], 0
	}
	p.cond.Broadcast()
	return n, nil
}

// CloseWithError makes later writes fail with err.
func (r *PipeReader) CloseWithError(err error) error {
	p := r.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		err = io.ErrClosedPipe
	}
	if p.rerr == nil {
		p.rerr = err
	}
	p.cond.Broadcast()
	return nil
}

// Write buffers b, waiting while the buffer is full.
func (w *PipeWriter) Write(b []byte) (int, error) {
	p := w.p
	p.mu.Lock()
	defer p.mu.Unlock()
	written := 0
	for len(b) > 0 {
		for len(p.buf)-p.off >= p.max && p.rerr == nil {
			p.cond.Wait()
		}
		if p.rerr != nil {
			return written, p.rerr
		}
		if p.werr != nil {
			return written, io.ErrClosedPipe
		}
		if p.off > 0 && len(p.buf)+len(b) > cap(p.buf) {
			p.buf = p.buf[:copy(p.buf, p.buf[p.off:])]
			p.off = 0
		}
		n := p.max - (len(p.buf) - p.off)
		if n > len(b) {
			n = len(b)
		}
		p.buf = append(p.buf, b[:n]...)
		b = b[n:]
		written += n
		p.cond.Broadcast()
	}
	return written, nil
}

// Close ends the stream: the reader gets io.EOF after the buffered bytes.
func (w *PipeWriter) Close() error { return w.CloseWithError(nil) }

// CloseWithError ends the stream with err (io.EOF when nil) after the buffered bytes.
func (w *PipeWriter) CloseWithError(err error) error {
	p := w.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		err = io.EOF
	}
	if p.werr == nil {
		p.werr = err
	}
	p.cond.Broadcast()
	return nil
}
