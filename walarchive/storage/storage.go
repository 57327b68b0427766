// Package storage defines the small interface every archive backend implements, and the
// errors they share. Backends live in their own packages (file, s3, memory); the
// conformance suite in storagetest runs against each of them.
package storage

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"time"
)

// ErrNotFound is returned (wrapped) by Get, Stat and Delete-free lookups when no object
// exists under the key. Test for it with errors.Is.
var ErrNotFound = errors.New("object not found")

// ErrPermission is returned (wrapped) when the store refuses access (file permissions, an
// S3 403): retrying cannot help until someone changes the permissions or credentials.
// Backends wrap it, or fs.ErrPermission, which callers treat the same way.
var ErrPermission = errors.New("permission denied by the archive storage")

// IsPermanent reports whether a storage error cannot be cured by retrying: access refused.
func IsPermanent(err error) bool {
	return errors.Is(err, ErrPermission) || errors.Is(err, fs.ErrPermission)
}

// ErrExists is returned (wrapped) by PutIfAbsent when an object is already stored under
// the key. Test for it with errors.Is.
var ErrExists = errors.New("an object already exists under this key")

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	// Key is the object's key relative to the storage's root (no leading slash).
	Key string
	// Size is the object's size in bytes.
	Size int64
	// ModTime is when the object was last written.
	ModTime time.Time
}

// Storage is a flat key/value object store rooted at one location (a directory, a bucket
// prefix). Keys are slash-separated relative paths without a leading slash, "." or ".."
// segments; backends reject anything else with an error.
//
// Every implementation must honour these contracts:
//   - Put stores the whole stream under key, or nothing: a reader never sees a partial
//     object, and a Put that fails or whose context is cancelled leaves no new object
//     visible (an object already under key stays as it was). Put replaces an existing object.
//   - PutIfAbsent is Put that stores only when no object exists under key, decided
//     atomically by the backend (not by a Stat before the Put): of two concurrent calls
//     for one key exactly one succeeds, the other returns ErrExists (wrapped), and the
//     stored object is the winner's, whole. An existing object is never changed.
//   - Get returns ErrNotFound (wrapped) when key does not exist. The caller closes the reader.
//   - Stat returns ErrNotFound (wrapped) when key does not exist.
//   - List returns every object whose key starts with prefix, sorted by key, with no
//     temporary or in-progress objects.
//   - Delete of a missing key succeeds.
type Storage interface {
	Put(ctx context.Context, key string, r io.Reader) error
	PutIfAbsent(ctx context.Context, key string, r io.Reader) error
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	List(ctx context.Context, prefix string) ([]ObjectInfo, error)
	Delete(ctx context.Context, key string) error
}

// WithoutConditionalWrites returns st as a store that ignores conditional writes would
// behave (older MinIO releases, Ceph RGW before it honoured If-None-Match): PutIfAbsent
// replaces an existing object like Put. The archive must stay immutable on such a store
// too (docs/reliability.md 31); tests use this to prove it, and KCBACKUP_STORAGE_COMPAT=
// ignore-conditional-writes makes the kcbackup binary use it.
func WithoutConditionalWrites(st Storage) Storage { return ignoringConditional{st} }

type ignoringConditional struct{ Storage }

func (s ignoringConditional) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	return s.Storage.Put(ctx, key, r)
}
