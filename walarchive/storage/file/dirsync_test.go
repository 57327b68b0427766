package file

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Every write returns only after an fsync of its directory that started after its change,
// and concurrent writes share fsyncs; an fsync's error reaches the writes it served.
func TestDirectoryFsyncsAreSharedButNeverStartBeforeTheChange(t *testing.T) {
	var d dirSyncs
	var changes atomic.Int64
	var mu sync.Mutex
	var done []int64 // for each completed fsync, the number of changes made before it started
	var calls atomic.Int64
	fsync := func(string) error {
		seen := changes.Load()
		calls.Add(1)
		time.Sleep(2 * time.Millisecond)
		mu.Lock()
		done = append(done, seen)
		mu.Unlock()
		return nil
	}
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := changes.Add(1)
			if err := d.sync("/a", fsync); err != nil {
				t.Error(err)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, seen := range done {
				if seen >= mine {
					return
				}
			}
			t.Errorf("change %d returned before an fsync that started after it", mine)
		}()
	}
	wg.Wait()
	if n := calls.Load(); n >= 64 {
		t.Errorf("64 concurrent writes took %d fsyncs; want them shared", n)
	}
	if len(d.dirs) != 0 {
		t.Errorf("state left behind for %d directories", len(d.dirs))
	}
	boom := errors.New("EIO")
	if err := d.sync("/b", func(string) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("fsync error = %v; want it returned", err)
	}
}
