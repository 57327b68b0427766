package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kcbackup/kcbackup/walarchive"
)

// The prefetcher of a restore is one detached process per prefetch directory. It keeps the
// --prefetch complete segments after the last one recovery asked for downloaded, verified
// and fsynced in the directory, over one storage client (its connections stay open, so a
// store a round trip away costs about one round trip per segment). wal-fetch calls only
// rename a waiting segment into place: when one is taken, the prefetcher fetches the next.
// A call that had to fetch its segment itself tells the prefetcher where recovery is
// (after a jump, or on a new timeline) and starts it when none runs.
//
// Files in a prefetch directory:
//
//	.position         the segment the last wal-fetch call fetched itself (its presence:
//	                  a prefetcher was started for this restore)
//	.prefetcher.lock  flock(2)-held by the running prefetcher
//	SEGMENT           a prefetched complete segment
//	SEGMENT.inprogress  claims SEGMENT while it downloads (a wal-fetch call waits for it)
const (
	positionFile = ".position"
	lockFile     = ".prefetcher.lock"
)

// prefetchParallel bounds the downloads the prefetcher runs at once: with the store a
// round trip away, the round trips, not the bandwidth or the CPU, are what replay waits on.
const prefetchParallel = 8

// prefetchIdle is how long the prefetcher stays with nothing to download and no segment
// taken before it exits (recovery ended, paused, or reached the archive's end). Segments
// it leaves are still served; the next call that finds none starts a new prefetcher.
const prefetchIdle = 10 * time.Second

// removePrefetchDir removes a prefetch directory (or a tree of them) so that a prefetcher
// writing into it stops and adds nothing while it goes: it is renamed to a unique sibling
// first, then removed. Deleting the files in place would look to the prefetcher like
// recovery taking them, and it would fetch the next ones into the directory being removed.
func removePrefetchDir(dir string) error {
	gone := fmt.Sprintf("%s.removing-%d", dir, os.Getpid())
	if err := os.Rename(dir, gone); err != nil {
		return err
	}
	return os.RemoveAll(gone)
}

// prefetchStarted reports whether a prefetcher was started for this restore.
func (o *walFetchOptions) prefetchStarted() bool {
	_, err := os.Stat(filepath.Join(o.prefetchDir, positionFile))
	return err == nil
}

// movePrefetcher records served as recovery's position and starts a prefetcher unless one
// runs. It never fails the current fetch.
func (o *walFetchOptions) movePrefetcher(served string) {
	if err := os.MkdirAll(o.prefetchDir, 0o700); err != nil {
		return
	}
	// Rename, not rewrite: the prefetcher never reads half a name. No fsync: a position
	// lost in a crash only costs one more fetch that is not prefetched.
	pos := filepath.Join(o.prefetchDir, positionFile)
	tmp := fmt.Sprintf("%s.%d", pos, os.Getpid())
	if os.WriteFile(tmp, []byte(served), 0o600) != nil || os.Rename(tmp, pos) != nil {
		os.Remove(tmp)
	}
	if prefetcherRunning(o.prefetchDir) {
		return
	}
	self, err := os.Executable()
	if err != nil {
		return
	}
	args := []string{"wal-fetch", "--prefetch-worker", "--storage", o.storage, "--prefetch", strconv.Itoa(o.prefetch),
		"--prefetch-dir", o.prefetchDir, "--encryption-key-file", o.g.keyFileAbs(), "--retry-for", o.retryFor.String(), served, "-"}
	cmd := exec.Command(self, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cmd.Start() == nil {
		_ = cmd.Process.Release()
	}
}

// prefetcherRunning reports whether a prefetcher holds dir's lock.
func prefetcherRunning(dir string) bool {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return false
	}
	defer f.Close()
	if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return true
	}
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}

type prefetchKey struct {
	tli   uint32
	segno uint64
}

type prefetchResult struct {
	key prefetchKey
	err error
}

// prefetcher runs until recovery no longer takes segments (prefetchIdle) or the directory
// is removed. A second prefetcher of the same directory exits at once.
func (o *walFetchOptions) prefetcher(ctx context.Context, a *walarchive.Archive, first walarchive.WALFile) {
	lf, err := os.OpenFile(filepath.Join(o.prefetchDir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return
	}
	defer lf.Close()
	if syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return
	}
	segSize := a.SegmentSize()
	name := func(k prefetchKey) string { return walarchive.SegmentName(k.tli, k.segno, segSize) }
	path := func(k prefetchKey) string { return filepath.Join(o.prefetchDir, name(k)) }
	tli, pos := first.Timeline, first.SegNo
	seenPosition := ""
	placed := map[prefetchKey]bool{}
	inflight := map[prefetchKey]bool{}
	retryAt := map[prefetchKey]time.Time{}
	results := make(chan prefetchResult, prefetchParallel)
	lastActivity := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		// One listing a tick says what is waiting, what was taken, and whether the
		// directory is still there.
		entries, err := os.ReadDir(o.prefetchDir)
		if err != nil {
			break // removed: recovery is over
		}
		waiting := make(map[string]bool, len(entries))
		for _, e := range entries {
			waiting[e.Name()] = true
		}
		now := time.Now()
		// Where recovery is: the last segment a call fetched itself, or the newest taken.
		if b, err := os.ReadFile(filepath.Join(o.prefetchDir, positionFile)); err == nil && string(b) != seenPosition {
			seenPosition = string(b)
			if t, n, err := walarchive.ParseSegmentName(strings.TrimSpace(seenPosition), segSize); err == nil {
				tli, pos, lastActivity = t, n, now
			}
		}
		for k := range placed {
			if !waiting[name(k)] {
				delete(placed, k)
				if k.tli == tli && k.segno > pos {
					pos = k.segno
				}
				lastActivity = now
			}
		}
		// Segments recovery will not ask for any more (behind it, or on another timeline).
		for k := range placed {
			if k.tli != tli || k.segno <= pos {
				os.Remove(path(k))
				delete(placed, k)
			}
		}
		for i := uint64(1); i <= uint64(o.prefetch) && len(inflight) < prefetchParallel; i++ {
			k := prefetchKey{tli, pos + i}
			if placed[k] || inflight[k] || now.Before(retryAt[k]) {
				continue
			}
			if waiting[name(k)] {
				placed[k] = true // left by an earlier prefetcher
				continue
			}
			inflight[k] = true
			go func() { results <- prefetchResult{k, o.prefetchOne(ctx, a, path(k), k)} }()
		}
		if len(inflight) == 0 && now.Sub(lastActivity) > prefetchIdle {
			break
		}
		select {
		case r := <-results:
			delete(inflight, r.key)
			if r.err == nil {
				placed[r.key], lastActivity = true, time.Now()
			} else {
				// Not in the archive (its end, for now), claimed by another process, or a
				// storage error: try again in a second. A call that needs the segment
				// first fetches it itself and reports what is wrong.
				retryAt[r.key] = time.Now().Add(time.Second)
			}
		case <-tick.C:
		}
	}
	for range inflight {
		<-results
	}
}

// prefetchOne downloads one complete segment to p, under a claim a wal-fetch call waits
// for. A partial is never prefetched: it may still grow.
func (o *walFetchOptions) prefetchOne(ctx context.Context, a *walarchive.Archive, p string, k prefetchKey) error {
	marker := p + ".inprogress"
	m, err := os.OpenFile(marker, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		if st, serr := os.Stat(marker); serr == nil && time.Since(st.ModTime()) > 2*time.Minute {
			os.Remove(marker) // from a prefetcher that died
		}
		return err
	}
	m.Close()
	defer os.Remove(marker)
	name := filepath.Base(p)
	return writeAtomically(p, name, func(w io.Writer) error {
		return a.FetchCompleteSegment(ctx, k.tli, k.segno, w)
	})
}
