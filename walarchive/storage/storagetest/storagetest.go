// Package storagetest is the conformance suite every storage.Storage backend must pass.
// Backends call Run from their own tests, MinIO-backed S3 included.
package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// Run runs the conformance suite. open returns a fresh, empty store for each subtest.
func Run(t *testing.T, open func(t *testing.T) storage.Storage) {
	t.Run("RoundTripsStreamsOfUnknownLength", func(t *testing.T) {
		st := open(t)
		for _, size := range []int64{0, 1, 16 << 20, 300 << 20} {
			key := fmt.Sprintf("objects/size-%d", size)
			want := putStream(t, st, key, size, uint64(size))
			got := getSum(t, st, key)
			if got != want {
				t.Fatalf("%d-byte object differs after round trip", size)
			}
			info, err := st.Stat(context.Background(), key)
			if err != nil || info.Size != size || info.Key != key {
				t.Fatalf("Stat(%s) = %+v, %v; want size %d", key, info, err, size)
			}
		}
	})
	t.Run("MissingKeyIsNotFound", func(t *testing.T) {
		st := open(t)
		ctx := context.Background()
		if _, err := st.Get(ctx, "no/such/key"); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Get of a missing key: err = %v; want ErrNotFound", err)
		}
		if _, err := st.Stat(ctx, "no/such/key"); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Stat of a missing key: err = %v; want ErrNotFound", err)
		}
		if err := st.Delete(ctx, "no/such/key"); err != nil {
			t.Errorf("Delete of a missing key: %v; want success", err)
		}
	})
	t.Run("ListsByPrefixPastOneThousandKeys", func(t *testing.T) {
		st := open(t)
		ctx := context.Background()
		const n = 1050
		var wg sync.WaitGroup
		errs := make(chan error, n)
		sem := make(chan struct{}, 16)
		for i := 0; i < n; i++ {
			wg.Add(1)
			sem <- struct{}{}
			go func(i int) {
				defer wg.Done()
				defer func() { <-sem }()
				errs <- st.Put(ctx, fmt.Sprintf("many/%05d", i), bytes.NewReader([]byte{byte(i)}))
			}(i)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		mustPut(t, st, "manyother/x", "x")
		mustPut(t, st, "man", "x")
		list, err := st.List(ctx, "many/")
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != n {
			t.Fatalf("List(many/) returned %d objects; want %d", len(list), n)
		}
		for i, o := range list {
			if want := fmt.Sprintf("many/%05d", i); o.Key != want || o.Size != 1 {
				t.Fatalf("List entry %d = %+v; want key %s size 1 (sorted)", i, o, want)
			}
		}
		all, err := st.List(ctx, "man")
		if err != nil || len(all) != n+2 {
			t.Fatalf("List(man) = %d objects, %v; want %d (prefix is not a directory)", len(all), err, n+2)
		}
	})
	t.Run("PutReplacesExistingObject", func(t *testing.T) {
		st := open(t)
		mustPut(t, st, "a/b", "first version")
		mustPut(t, st, "a/b", "second")
		if got := mustGet(t, st, "a/b"); got != "second" {
			t.Fatalf("after overwrite Get = %q; want %q", got, "second")
		}
	})
	t.Run("DeleteRemovesObject", func(t *testing.T) {
		st := open(t)
		ctx := context.Background()
		mustPut(t, st, "d/x", "x")
		if err := st.Delete(ctx, "d/x"); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Stat(ctx, "d/x"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("Stat after Delete: %v; want ErrNotFound", err)
		}
		if list, _ := st.List(ctx, "d/"); len(list) != 0 {
			t.Fatalf("List after Delete = %+v; want empty", list)
		}
	})
	t.Run("CancelledPutLeavesNoVisibleObject", func(t *testing.T) {
		st := open(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		// 64 MiB stream that cancels the context after 20 MiB, then keeps going.
		r := &cancellingReader{r: newPatternReader(64<<20, 7), after: 20 << 20, cancel: cancel}
		err := st.Put(ctx, "cancelled/obj", r)
		if err == nil {
			t.Fatal("Put with a context cancelled midway succeeded")
		}
		assertAbsent(t, st, "cancelled/obj")
	})
	t.Run("FailedReaderLeavesNoVisibleObjectAndKeepsOldOne", func(t *testing.T) {
		st := open(t)
		mustPut(t, st, "failing/obj", "old")
		r := io.MultiReader(newPatternReader(12<<20, 3), errReader{errors.New("source broke")})
		if err := st.Put(context.Background(), "failing/obj", r); err == nil {
			t.Fatal("Put from a failing reader succeeded")
		}
		if got := mustGet(t, st, "failing/obj"); got != "old" {
			t.Fatalf("failed Put changed the existing object to %d bytes", len(got))
		}
		if err := st.Put(context.Background(), "failing/new", io.MultiReader(newPatternReader(1<<20, 1), errReader{errors.New("x")})); err == nil {
			t.Fatal("Put from a failing reader succeeded")
		}
		assertAbsent(t, st, "failing/new")
	})
	t.Run("ConcurrentPutsToDifferentKeys", func(t *testing.T) {
		st := open(t)
		var wg sync.WaitGroup
		sums := make([][32]byte, 8)
		for i := range sums {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				sums[i] = putStream(t, st, fmt.Sprintf("conc/%d", i), 3<<20+int64(i), uint64(i))
			}(i)
		}
		wg.Wait()
		for i, want := range sums {
			if got := getSum(t, st, fmt.Sprintf("conc/%d", i)); got != want {
				t.Fatalf("conc/%d differs after concurrent puts", i)
			}
		}
	})
	t.Run("PutIfAbsentNeverReplaces", func(t *testing.T) {
		st := open(t)
		ctx := context.Background()
		mustPut(t, st, "imm/a", "first")
		err := st.PutIfAbsent(ctx, "imm/a", onlyReader{bytes.NewReader([]byte("second"))})
		if !errors.Is(err, storage.ErrExists) {
			t.Fatalf("PutIfAbsent over an existing object: err = %v; want ErrExists", err)
		}
		if got := mustGet(t, st, "imm/a"); got != "first" {
			t.Fatalf("PutIfAbsent changed the existing object to %q", got)
		}
		if err := st.PutIfAbsent(ctx, "imm/b", onlyReader{bytes.NewReader([]byte("new"))}); err != nil {
			t.Fatalf("PutIfAbsent of a new key: %v", err)
		}
		if got := mustGet(t, st, "imm/b"); got != "new" {
			t.Fatalf("PutIfAbsent stored %q; want %q", got, "new")
		}
	})
	t.Run("PutIfAbsentRaceHasExactlyOneWinner", func(t *testing.T) {
		st := open(t)
		// Writers of different streams race for one key, small ones (one request) and
		// ones past the 5 MiB multipart threshold of the S3 conformance run.
		for _, size := range []int64{4 << 10, 6 << 20} {
			key := fmt.Sprintf("race/%d", size)
			sums := make([][32]byte, 6)
			errs := Race(len(sums), func(i int) error {
				h := sha256.New()
				defer func() { copy(sums[i][:], h.Sum(nil)) }()
				return st.PutIfAbsent(context.Background(), key, io.TeeReader(newPatternReader(size, uint64(100+i)), h))
			})
			winner := OneWinner(t, errs, storage.ErrExists)
			if got := getSum(t, st, key); got != sums[winner] {
				t.Fatalf("%d-byte race: the stored object is not the winner's", size)
			}
		}
	})
	t.Run("RejectsInvalidKeys", func(t *testing.T) {
		st := open(t)
		for _, key := range []string{"", "/abs", "a//b", "../escape", "a/../b", "a/./b", "trailing/"} {
			if err := st.Put(context.Background(), key, bytes.NewReader(nil)); err == nil {
				t.Errorf("Put(%q) accepted an invalid key", key)
			}
		}
	})
}

func mustPut(t *testing.T, st storage.Storage, key, data string) {
	t.Helper()
	if err := st.Put(context.Background(), key, onlyReader{bytes.NewReader([]byte(data))}); err != nil {
		t.Fatalf("Put(%s): %v", key, err)
	}
}

func mustGet(t *testing.T, st storage.Storage, key string) string {
	t.Helper()
	rc, err := st.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get(%s): %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return string(b)
}

func assertAbsent(t *testing.T, st storage.Storage, key string) {
	t.Helper()
	ctx := context.Background()
	if _, err := st.Stat(ctx, key); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat(%s) after failed Put: %v; want ErrNotFound", key, err)
	}
	list, err := st.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range list {
		if o.Key == key {
			t.Errorf("List shows %s after a failed Put", key)
		}
	}
}

// putStream writes size pseudo-random bytes (seeded) as a stream of unknown length and
// returns their SHA-256.
func putStream(t *testing.T, st storage.Storage, key string, size int64, seed uint64) [32]byte {
	t.Helper()
	h := sha256.New()
	if err := st.Put(context.Background(), key, io.TeeReader(newPatternReader(size, seed), h)); err != nil {
		t.Fatalf("Put(%s, %d bytes): %v", key, size, err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

func getSum(t *testing.T, st storage.Storage, key string) [32]byte {
	t.Helper()
	rc, err := st.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get(%s): %v", key, err)
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// patternReader yields n deterministic pseudo-random bytes; it has no Len or Seek, so
// backends see a stream of unknown length.
type patternReader struct {
	rng  *rand.ChaCha8
	left int64
}

func newPatternReader(n int64, seed uint64) *patternReader {
	var s [32]byte
	for i := 0; i < 8; i++ {
		s[i] = byte(seed >> (8 * i))
	}
	return &patternReader{rng: rand.NewChaCha8(s), left: n}
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.left {
		b = b[:p.left]
	}
	n, _ := p.rng.Read(b)
	p.left -= int64(n)
	return n, nil
}

type cancellingReader struct {
	r      io.Reader
	n      int64
	after  int64
	cancel context.CancelFunc
}

func (c *cancellingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.n >= c.after {
		c.cancel()
	}
	return n, err
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// onlyReader hides any Len/Seek methods of the wrapped reader.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// Race runs write(0) ... write(n-1) in goroutines released at the same moment and returns
// their errors.
func Race(n int, write func(i int) error) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = write(i)
		}()
	}
	close(start)
	wg.Wait()
	return errs
}

// OneWinner fails the test unless exactly one of errs is nil and all others wrap loser; it
// returns the winner's index.
func OneWinner(t *testing.T, errs []error, loser error) int {
	t.Helper()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("writers %d and %d both won the race", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, loser):
			t.Fatalf("writer %d: %v; want success or %v", i, err, loser)
		}
	}
	if winner < 0 {
		t.Fatal("no writer won the race")
	}
	return winner
}
