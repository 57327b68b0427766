package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"golang.org/x/sync/errgroup"

	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// Put stores the stream r under key, replacing any object already there, or stores nothing.
//
// A stream shorter than or equal to PartSize is buffered and sent with one PutObject, which
// S3 applies atomically. A longer stream goes up as a multipart upload with at most
// Concurrency parts in flight, so memory stays near (Concurrency+1) * PartSize whatever the
// stream's length. The object becomes visible only when CompleteMultipartUpload succeeds;
// if reading, any part, or the context fails first, the upload is aborted (with a context
// detached from the caller's, so that cancellation does not prevent the cleanup) and no
// parts are left behind.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) error {
	return s.put(ctx, key, r, false)
}

// PutIfAbsent is Put with If-None-Match: * on the PutObject or CompleteMultipartUpload
// that makes the object visible, so S3 itself refuses to replace an existing object: of
// two racing writers exactly one wins, the other gets storage.ErrExists (S3's 412
// Precondition Failed). A store that ignores the header (older MinIO or Ceph releases)
// replaces the object instead: Archive.ProbeConditionalWrites finds that out at start, and
// on such a store (or before the probe) Archive.PutImmutable checks with Stat and compares
// first, never replacing a stored object.
func (s *Store) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	return s.put(ctx, key, r, true)
}

func (s *Store) put(ctx context.Context, key string, r io.Reader, ifAbsent bool) error {
	ok, err := s.objectKey(key)
	if err != nil {
		return err
	}
	bufs := newPartBuffers(s.cfg.PartSize, s.cfg.Concurrency+1)

	// Step 1: read up to two parts to tell a small object from a large one. Exactly PartSize
	// bytes (a WAL segment with the default part size) still takes the single-request path.
	// The first buffer grows with the data, so small objects cost little memory.
	first, err := readFirstPart(r, s.cfg.PartSize)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("put %s: read: %w", s.where(ok), err)
	}
	if errors.Is(err, io.EOF) {
		return s.putSingle(ctx, ok, first, ifAbsent)
	}
	second := bufs.get()
	n2, err := readPart(r, second)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("put %s: read: %w", s.where(ok), err)
	}
	if n2 == 0 {
		return s.putSingle(ctx, ok, first, ifAbsent)
	}

	// Step 2: the multipart upload; from here every failure aborts it.
	return s.putMultipart(ctx, ok, r, bufs, first, second[:n2], errors.Is(err, io.EOF), ifAbsent)
}

// putSingle stores body with one PutObject.
func (s *Store) putSingle(ctx context.Context, objectKey string, body []byte, ifAbsent bool) error {
	in := &s3.PutObjectInput{
		Bucket:        aws.String(s.cfg.Bucket),
		Key:           aws.String(objectKey),
		Body:          bytes.NewReader(body),
		ContentLength: aws.Int64(int64(len(body))),
	}
	if ifAbsent {
		in.IfNoneMatch = aws.String("*")
	}
	_, err := s.client.PutObject(ctx, in)
	if isPreconditionFailed(err) {
		return fmt.Errorf("put %s: %w", s.where(objectKey), storage.ErrExists)
	}
	if err != nil {
		return fmt.Errorf("put %s: %w", s.where(objectKey), err)
	}
	return nil
}

// putMultipart uploads first, second and the rest of r as one multipart upload. eof says
// whether r was already exhausted by second.
func (s *Store) putMultipart(ctx context.Context, objectKey string, r io.Reader, bufs *partBuffers, first, second []byte, eof, ifAbsent bool) error {
	create := &s3.CreateMultipartUploadInput{Bucket: aws.String(s.cfg.Bucket), Key: aws.String(objectKey)}
	if s.checksums {
		create.ChecksumAlgorithm = types.ChecksumAlgorithmCrc32
	}
	created, err := s.client.CreateMultipartUpload(ctx, create)
	if err != nil {
		return fmt.Errorf("put %s: start multipart upload: %w", s.where(objectKey), err)
	}
	uploadID := aws.ToString(created.UploadId)

	var (
		mu    sync.Mutex
		parts []types.CompletedPart
	)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.cfg.Concurrency)
	send := func(num int32, body []byte) {
		g.Go(func() error {
			defer bufs.put(body)
			in := &s3.UploadPartInput{
				Bucket:        aws.String(s.cfg.Bucket),
				Key:           aws.String(objectKey),
				UploadId:      aws.String(uploadID),
				PartNumber:    aws.Int32(num),
				Body:          bytes.NewReader(body),
				ContentLength: aws.Int64(int64(len(body))),
			}
			if s.checksums {
				in.ChecksumAlgorithm = types.ChecksumAlgorithmCrc32
			}
			out, err := s.client.UploadPart(gctx, in)
			if err != nil {
				return fmt.Errorf("upload part %d: %w", num, err)
			}
			mu.Lock()
			parts = append(parts, types.CompletedPart{
				PartNumber:    aws.Int32(num),
				ETag:          out.ETag,
				ChecksumCRC32: out.ChecksumCRC32,
			})
			mu.Unlock()
			return nil
		})
	}

	// Step 1: send the parts already read, then read and send the rest. g.Go blocks while
	// Concurrency parts are in flight, which bounds the buffers in use.
	send(1, first)
	send(2, second)
	var readErr error
	for num := int32(3); !eof && gctx.Err() == nil; num++ {
		buf := bufs.get()
		n, err := readPart(r, buf)
		if err != nil && !errors.Is(err, io.EOF) {
			bufs.put(buf)
			readErr = fmt.Errorf("read: %w", err)
			break
		}
		eof = errors.Is(err, io.EOF)
		if n == 0 {
			bufs.put(buf)
			break
		}
		if num > MaxParts {
			bufs.put(buf)
			readErr = fmt.Errorf("stream longer than %d parts of %d bytes; raise the part size", MaxParts, s.cfg.PartSize)
			break
		}
		send(num, buf[:n])
	}
	err = errors.Join(readErr, g.Wait())
	if err == nil {
		// A cancellation seen only now must still leave nothing behind.
		err = ctx.Err()
	}

	// Step 2: complete, with parts in ascending order as S3 requires.
	if err == nil {
		sort.Slice(parts, func(i, j int) bool { return aws.ToInt32(parts[i].PartNumber) < aws.ToInt32(parts[j].PartNumber) })
		complete := &s3.CompleteMultipartUploadInput{
			Bucket:          aws.String(s.cfg.Bucket),
			Key:             aws.String(objectKey),
			UploadId:        aws.String(uploadID),
			MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
		}
		if ifAbsent {
			complete.IfNoneMatch = aws.String("*")
		}
		_, err = s.client.CompleteMultipartUpload(ctx, complete)
		if err == nil {
			return nil
		}
		if isPreconditionFailed(err) {
			err = storage.ErrExists
		} else {
			err = fmt.Errorf("complete multipart upload: %w", err)
		}
	}

	// Step 3: abort, so that neither an object nor stored parts remain.
	if abortErr := s.abort(ctx, objectKey, uploadID); abortErr != nil {
		err = errors.Join(err, abortErr)
	}
	return fmt.Errorf("put %s: %w", s.where(objectKey), err)
}

// abort aborts a multipart upload, even when ctx is already cancelled.
func (s *Store) abort(ctx context.Context, objectKey, uploadID string) error {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	_, err := s.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{
		Bucket:   aws.String(s.cfg.Bucket),
		Key:      aws.String(objectKey),
		UploadId: aws.String(uploadID),
	})
	if err != nil && apiErrorCode(err) != "NoSuchUpload" {
		return fmt.Errorf("abort multipart upload %s (its parts stay stored until aborted or expired by a lifecycle rule): %w", uploadID, err)
	}
	return nil
}

// readFirstPart reads up to limit bytes from r into a buffer that starts small and doubles
// as needed, never beyond limit. It returns io.EOF when r ended before limit bytes.
func readFirstPart(r io.Reader, limit int64) ([]byte, error) {
	buf := make([]byte, 0, min(limit, 64<<10))
	for int64(len(buf)) < limit {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(2*int64(cap(buf)), limit))
			copy(grown, buf)
			buf = grown
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// readPart fills buf from r. It returns io.EOF, with the count read, when r ended before
// buf was full (possibly with nothing read).
func readPart(r io.Reader, buf []byte) (int, error) {
	n, err := io.ReadFull(r, buf)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = io.EOF
	}
	return n, err
}

// partBuffers hands out at most limit buffers of one part each, allocated on first use and
// reused within one Put.
type partBuffers struct {
	size int64
	mu   sync.Mutex
	free [][]byte
}

func newPartBuffers(size int64, limit int) *partBuffers {
	return &partBuffers{size: size, free: make([][]byte, 0, limit)}
}

func (p *partBuffers) get() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		buf := p.free[n-1]
		p.free = p.free[:n-1]
		return buf[:cap(buf)]
	}
	return make([]byte, p.size)
}

func (p *partBuffers) put(buf []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.free = append(p.free, buf[:cap(buf)])
}

// isPreconditionFailed reports whether err is S3's answer to a failed If-None-Match: 412
// Precondition Failed.
func isPreconditionFailed(err error) bool {
	if err == nil {
		return false
	}
	if apiErrorCode(err) == "PreconditionFailed" {
		return true
	}
	var respErr *awshttp.ResponseError
	return errors.As(err, &respErr) && respErr.HTTPStatusCode() == http.StatusPreconditionFailed
}
