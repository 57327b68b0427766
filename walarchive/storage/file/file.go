// Package file stores archive objects as files under a directory, typically a persistent
// volume. Writes are durable before Put returns: temp file, fsync, rename, fsync of the
// directory; readers never see a half-written object and listings hide temp files.
package file

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// tempPrefix starts the name of every file still being written.
const tempPrefix = ".kcbackup-tmp-"

// Store is a storage.Storage rooted at a directory.
type Store struct {
	root string
	// syncs groups the directory fsyncs of concurrent writes (see dirsync.go).
	syncs *dirSyncs
}

var _ storage.Storage = (*Store)(nil)

// New returns a store rooted at dir, an absolute path. The directory is created when missing.
func New(dir string) (*Store, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("file storage directory %q: expected an absolute path", dir)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("file storage directory %q: %w", dir, err)
	}
	return &Store{root: filepath.Clean(dir), syncs: &dirSyncs{}}, nil
}

// Root is the store's directory.
func (s *Store) Root() string { return s.root }

func (s *Store) path(key string) (string, error) {
	if err := storage.ValidateKey(key); err != nil {
		return "", err
	}
	for _, seg := range strings.Split(key, "/") {
		if strings.HasPrefix(seg, tempPrefix) {
			return "", fmt.Errorf("invalid object key %q: segments must not start with %q", key, tempPrefix)
		}
	}
	return filepath.Join(s.root, filepath.FromSlash(key)), nil
}

// Put writes the stream to a temp file beside the target, fsyncs it, renames it into place
// and fsyncs the directory, so the object is either wholly there and durable or not there.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) error {
	return s.put(ctx, key, r, os.Rename)
}

// PutIfAbsent is Put whose final step moves the temp file into place only when no file
// has the name: renameat2(RENAME_NOREPLACE), or link(2) where the file system lacks it. The
// kernel decides atomically, so of two racing writers exactly one wins.
func (s *Store) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	return s.put(ctx, key, r, renameNoReplace)
}

func (s *Store) put(ctx context.Context, key string, r io.Reader, move func(tmp, p string) error) (err error) {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	dir := filepath.Dir(p)
	if err := s.mkdirAll(dir); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(dir, tempPrefix+filepath.Base(p)+"-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	for try := 0; errors.Is(err, fs.ErrNotExist) && try < 3; try++ {
		// A Delete removed the directory once it was empty, between mkdirAll and here.
		if err = s.mkdirAll(dir); err == nil {
			f, err = os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
		}
	}
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err = io.Copy(f, ctxReader{ctx: ctx, r: r}); err != nil {
		return fmt.Errorf("put %s: write: %w", key, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("put %s: fsync: %w", key, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("put %s: close: %w", key, err)
	}
	if err = ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err = move(tmp, p); errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("put %s: %w", key, storage.ErrExists)
	} else if err != nil {
		return fmt.Errorf("put %s: move into place: %w", key, err)
	}
	if err = s.syncs.sync(dir, syncDir); err != nil {
		return fmt.Errorf("put %s: fsync directory: %w", key, err)
	}
	return nil
}

// mkdirAll creates dir and its missing parents, fsyncing each parent whose entries changed.
func (s *Store) mkdirAll(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir && len(parent) >= len(s.root) {
		if err := s.mkdirAll(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(parent)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Get opens the object for reading.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("get %s: %w", key, storage.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	if st, err := f.Stat(); err == nil && st.IsDir() {
		f.Close()
		return nil, fmt.Errorf("get %s: %w", key, storage.ErrNotFound)
	}
	return f, nil
}

// Stat describes the object.
func (s *Store) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	p, err := s.path(key)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	st, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && st.IsDir()) {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, storage.ErrNotFound)
	}
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, err)
	}
	return storage.ObjectInfo{Key: key, Size: st.Size(), ModTime: st.ModTime()}, nil
}

// List returns the objects whose keys start with prefix, sorted, without temp files.
func (s *Store) List(ctx context.Context, prefix string) ([]storage.ObjectInfo, error) {
	// Walk only the deepest directory the prefix names.
	start := s.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = filepath.Join(s.root, filepath.FromSlash(path.Clean(prefix[:i])))
		if !strings.HasPrefix(start, s.root) {
			return nil, fmt.Errorf("list %q: prefix escapes the storage root", prefix)
		}
	}
	var out []storage.ObjectInfo
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() || strings.HasPrefix(d.Name(), tempPrefix) {
			return nil
		}
		rel, err := filepath.Rel(s.root, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted while listing
		}
		if err != nil {
			return err
		}
		out = append(out, storage.ObjectInfo{Key: key, Size: info.Size(), ModTime: info.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %q: %w", prefix, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Delete removes the object; a missing object is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("delete %s: %w", key, err)
	}
	dir := filepath.Dir(p)
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("delete %s: fsync directory: %w", key, err)
	}
	// Like an object store, leave no empty directory behind (a segment's tail parts live in
	// a directory of their own); a directory that is not empty stays.
	if dir != s.root && os.Remove(dir) == nil {
		_ = syncDir(filepath.Dir(dir))
	}
	return nil
}

// ctxReader stops a copy when its context is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
