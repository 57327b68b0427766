// Package walcache serves WAL files to restore_command from inside the sidecar: each file is
// verified before it is sent, and after a segment is served the next ones are downloaded
// in parallel into memory, so recovery never waits on one download at a time. Only complete
// segments are prefetched (they never change); the cache lives only as long as the process,
// so nothing from an earlier restore is ever served.
package walcache

import (
	"bytes"
	"context"
	"sync"
	"time"

	"github.com/kcbackup/kcbackup/walarchive"
)

// Source says where a served file came from.
type Source string

// Where a served file came from.
const (
	FromCache   Source = "cache"
	FromArchive Source = "archive"
)

// Config configures a Cache.
type Config struct {
	// Open returns the archive (opened lazily: during a restore the server is not up yet).
	Open func(ctx context.Context) (*walarchive.Archive, error)
	// Ahead is how many segments to prefetch after each one served (0 disables).
	Ahead int
	// TTL evicts prefetched segments nobody asked for.
	TTL time.Duration
	// OnServe, when set, is told where each served file came from.
	OnServe func(Source)
}

// Cache is the sidecar's WAL cache.
type Cache struct {
	cfg     Config
	mu      sync.Mutex
	entries map[string]*entry
	archive *walarchive.Archive
}

type entry struct {
	done    chan struct{}
	data    []byte
	err     error
	created time.Time
}

// New returns a cache.
func New(cfg Config) *Cache {
	if cfg.TTL == 0 {
		cfg.TTL = 5 * time.Minute
	}
	return &Cache{cfg: cfg, entries: map[string]*entry{}}
}

func (c *Cache) open(ctx context.Context) (*walarchive.Archive, error) {
	c.mu.Lock()
	a := c.archive
	c.mu.Unlock()
	if a != nil {
		return a, nil
	}
	a, err := c.cfg.Open(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.archive = a
	c.mu.Unlock()
	return a, nil
}

// Fetch returns the verified content of WAL file name (padded like FetchWALFile). It
// returns an error wrapping walarchive.ErrWALNotInArchive only when the file is absent.
func (c *Cache) Fetch(ctx context.Context, name string) ([]byte, error) {
	a, err := c.open(ctx)
	if err != nil {
		return nil, err
	}
	f, err := walarchive.ParseWALFileName(name, a.SegmentSize())
	if err != nil {
		return nil, err
	}
	c.evict()
	// Step 1: a prefetched (or prefetching) segment is taken from the cache.
	c.mu.Lock()
	e := c.entries[name]
	delete(c.entries, name)
	c.mu.Unlock()
	var data []byte
	src := FromArchive
	if e != nil {
		select {
		case <-e.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if e.err == nil {
			data, src = e.data, FromCache
		}
	}
	// Step 2: otherwise from the archive.
	if data == nil {
		var b bytes.Buffer
		if _, err := a.FetchWALFile(ctx, name, &b); err != nil {
			return nil, err
		}
		data = b.Bytes()
	}
	if c.cfg.OnServe != nil {
		c.cfg.OnServe(src)
	}
	// Step 3: prefetch what recovery will ask for next.
	if f.Kind == walarchive.WALFileSegment {
		c.prefetch(a, f)
	}
	return data, nil
}

func (c *Cache) prefetch(a *walarchive.Archive, f walarchive.WALFile) {
	for i := 1; i <= c.cfg.Ahead; i++ {
		segno := f.SegNo + uint64(i)
		name := walarchive.SegmentName(f.Timeline, segno, a.SegmentSize())
		c.mu.Lock()
		if _, ok := c.entries[name]; ok {
			c.mu.Unlock()
			continue
		}
		e := &entry{done: make(chan struct{}), created: time.Now()}
		c.entries[name] = e
		c.mu.Unlock()
		go func() {
			defer close(e.done)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			// Complete segments only (one read, no lookup first): a partial may grow.
			var b bytes.Buffer
			b.Grow(int(a.SegmentSize()))
			if err := a.FetchCompleteSegment(ctx, f.Timeline, segno, &b); err != nil {
				e.err = err
				return
			}
			e.data = b.Bytes()
		}()
	}
}

// evict drops finished entries older than the TTL.
func (c *Cache) evict() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.entries {
		select {
		case <-e.done:
			if time.Since(e.created) > c.cfg.TTL || e.err != nil {
				delete(c.entries, k)
			}
		default:
		}
	}
}
