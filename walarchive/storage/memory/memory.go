// Package memory is an in-memory storage.Storage for fast unit tests. It honours the same
// contracts as the real backends (the conformance suite runs against it).
package memory

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// Store keeps objects in a map.
type Store struct {
	mu      sync.RWMutex
	objects map[string]object
	// FailPuts, when set, makes every Put fail with this error (to simulate an outage).
	failPuts error
}

type object struct {
	data    []byte
	modTime time.Time
}

var _ storage.Storage = (*Store)(nil)

// New returns an empty store.
func New() *Store { return &Store{objects: map[string]object{}} }

// SetFailPuts makes every later Put fail with err (nil restores normal operation).
func (s *Store) SetFailPuts(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failPuts = err
}

// Put reads the whole stream, then stores it.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) error {
	return s.put(ctx, key, r, false)
}

// PutIfAbsent reads the whole stream, then stores it unless the key exists by then.
func (s *Store) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	return s.put(ctx, key, r, true)
}

func (s *Store) put(ctx context.Context, key string, r io.Reader, ifAbsent bool) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	var b bytes.Buffer
	buf := make([]byte, 256<<10)
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("put %s: %w", key, err)
		}
		n, err := r.Read(buf)
		b.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("put %s: %w", key, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failPuts != nil {
		return fmt.Errorf("put %s: %w", key, s.failPuts)
	}
	if _, exists := s.objects[key]; exists && ifAbsent {
		return fmt.Errorf("put %s: %w", key, storage.ErrExists)
	}
	s.objects[key] = object{data: b.Bytes(), modTime: time.Now()}
	return nil
}

// Get returns a reader over a snapshot of the object.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := storage.ValidateKey(key); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	o, ok := s.objects[key]
	if !ok {
		return nil, fmt.Errorf("get %s: %w", key, storage.ErrNotFound)
	}
	return io.NopCloser(bytes.NewReader(o.data)), nil
}

// Stat describes the object.
func (s *Store) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := storage.ValidateKey(key); err != nil {
		return storage.ObjectInfo{}, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	o, ok := s.objects[key]
	if !ok {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, storage.ErrNotFound)
	}
	return storage.ObjectInfo{Key: key, Size: int64(len(o.data)), ModTime: o.modTime}, nil
}

// List returns the objects under prefix, sorted by key.
func (s *Store) List(ctx context.Context, prefix string) ([]storage.ObjectInfo, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []storage.ObjectInfo
	for k, o := range s.objects {
		if strings.HasPrefix(k, prefix) {
			out = append(out, storage.ObjectInfo{Key: k, Size: int64(len(o.data)), ModTime: o.modTime})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Delete removes the object.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.objects, key)
	return nil
}

// Corrupt flips one byte of a stored object at offset off (for tests of verification).
func (s *Store) Corrupt(key string, off int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.objects[key]
	if !ok || off >= len(o.data) {
		return fmt.Errorf("corrupt %s at %d: no such object or offset", key, off)
	}
	d := append([]byte(nil), o.data...)
	d[off] ^= 0xFF
	s.objects[key] = object{data: d, modTime: o.modTime}
	return nil
}

// SetModTime sets when a stored object was written (for tests of time-ordered reasoning).
func (s *Store) SetModTime(key string, t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.objects[key]
	if !ok {
		return fmt.Errorf("set the time of %s: no such object", key)
	}
	o.modTime = t
	s.objects[key] = o
	return nil
}
