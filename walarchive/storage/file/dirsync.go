package file

import "sync"

// dirSyncs shares directory fsyncs between concurrent writes to one directory (group
// commit): a write whose entry changed needs an fsync of the directory that starts after
// the change; one fsync serves every write that changed the directory before it started.
// Tail parts of one segment land in one directory several at a time, so under a stream of
// synchronous commits this halves the fsyncs per part.
type dirSyncs struct {
	mu   sync.Mutex
	dirs map[string]*dirSync
}

type dirSync struct {
	cond *sync.Cond
	// started and completed count the fsyncs of the directory; errs keeps the error of
	// each completed one still awaited.
	running            bool
	started, completed uint64
	errs               map[uint64]error
	waiters            map[uint64]int
}

func (d *dirSyncs) get(dir string) *dirSync {
	if d.dirs == nil {
		d.dirs = map[string]*dirSync{}
	}
	ds := d.dirs[dir]
	if ds == nil {
		ds = &dirSync{cond: sync.NewCond(&d.mu), errs: map[uint64]error{}, waiters: map[uint64]int{}}
		d.dirs[dir] = ds
	}
	return ds
}

// sync makes the entries of dir changed before the call durable, with sync(dir) for the
// fsync itself.
func (d *dirSyncs) sync(dir string, fsync func(string) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	ds := d.get(dir)
	// The fsync this write needs is the next to start: one running now may have started
	// before the change.
	need := ds.started + 1
	ds.waiters[need]++
	defer func() {
		if ds.waiters[need]--; ds.waiters[need] == 0 {
			delete(ds.waiters, need)
			delete(ds.errs, need)
		}
		if !ds.running && len(ds.waiters) == 0 {
			delete(d.dirs, dir)
		}
	}()
	for ds.completed < need {
		if ds.running {
			ds.cond.Wait()
			continue
		}
		ds.running = true
		ds.started++
		gen := ds.started
		d.mu.Unlock()
		err := fsync(dir)
		d.mu.Lock()
		ds.running = false
		ds.completed = gen
		for g := range ds.waiters {
			if g <= gen {
				ds.errs[g] = err
			}
		}
		ds.cond.Broadcast()
	}
	return ds.errs[need]
}
