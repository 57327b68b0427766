package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
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
//	.prefetcher.log   the prefetcher's errors, when wal-fetch's stderr is a pipe
//	SEGMENT           a prefetched complete segment
//	SEGMENT.inprogress  claims SEGMENT while it downloads (a wal-fetch call waits for it)
const (
	positionFile = ".position"
	lockFile     = ".prefetcher.lock"
	// prefetcherLogFile holds the prefetcher's errors when wal-fetch's stderr is a pipe.
	prefetcherLogFile = ".prefetcher.log"
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
	logTo, opened, err := prefetcherLog(o.g.stderr, o.prefetchDir)
	if err != nil {
		return
	}
	if opened {
		defer logTo.Close()
	}
	cmd.Stderr = logTo
	if cmd.Start() == nil {
		_ = cmd.Process.Release()
	}
}

// prefetcherLog opens where the prefetcher writes its errors: wal-fetch's own stderr
// (PostgreSQL's log) when that is a file or a device, and otherwise (a pipe, which the
// prefetcher would hold open long after wal-fetch exited, keeping whoever reads it to its
// end waiting) the file .prefetcher.log in the prefetch directory.
// opened says whether the caller must close the file.
func prefetcherLog(stderr io.Writer, dir string) (f *os.File, opened bool, err error) {
	if f, ok := stderr.(*os.File); ok {
		if st, err := f.Stat(); err == nil && (st.Mode().IsRegular() || st.Mode()&os.ModeCharDevice != 0) {
			return f, false, nil
		}
	}
	f, err = os.OpenFile(filepath.Join(dir, prefetcherLogFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	return f, err == nil, err
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

// prefetcherSignals are the signals that end a prefetcher with exit status 0.
var prefetcherSignals = []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGPIPE}

// prefetcherDrain bounds how long a prefetcher told to stop waits for its downloads.
const prefetcherDrain = 5 * time.Second

// runPrefetcher is the prefetcher process (wal-fetch --prefetch-worker). It always returns
// nil, so the process exits 0, because of whose child it becomes: it is started detached
// by a wal-fetch that exits at once, so it is reparented to PID 1, and where PID 1 is the
// postmaster (the official postgres image, a container without an init) the postmaster
// reaps it. PostgreSQL takes any exit status other than 0 or 1, and any death by a signal,
// of a child it reaps for a crashed server process: it ends every backend and restarts
// (postmaster.c, CleanupBackend and HandleChildCrash). So:
//
//   - every error is written to its log (prefetcherLog) and the prefetcher exits 0:
//     wal-fetch calls then fetch their segments themselves and report what is wrong;
//   - SIGTERM, SIGINT, SIGHUP, SIGQUIT and SIGPIPE are caught: downloads are cancelled,
//     waited for at most prefetcherDrain, and the process exits 0;
//   - a panic of the prefetcher's own code is recovered and logged.
//
// What remains: SIGKILL (the OOM killer's too), a fatal error of the Go runtime, and a
// signal in the process's first milliseconds, before runPrefetcher has its handlers in
// place (the Go runtime then applies the default action). Each makes a PID-1 postmaster
// restart its backends, as the death of any child it reaps would. The prefetcher's memory
// is bounded (prefetchParallel segments); nothing in PostgreSQL signals it (it runs in a
// session of its own).
func (o *walFetchOptions) runPrefetcher(ctx context.Context, name string) (err error) {
	logf := func(format string, args ...any) {
		fmt.Fprintf(o.g.stderr, "kcbackup prefetcher %s: "+format+"\n", append([]any{o.prefetchDir}, args...)...)
	}
	defer func() {
		if r := recover(); r != nil {
			logf("stopped by a panic: %v", r)
		}
		err = nil
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sigs := make(chan os.Signal, 1)
	// Never stopped: a signal that came after the prefetcher returned would otherwise end
	// the process by its default action.
	signal.Notify(sigs, prefetcherSignals...)
	go func() {
		select {
		case sig := <-sigs:
			logf("stopping on %v", sig)
			cancel()
			// A download that does not heed the cancel must not keep the process, nor
			// change its exit status.
			time.Sleep(prefetcherDrain)
			logf("downloads did not stop within %s; exiting", prefetcherDrain)
			os.Exit(0)
		case <-ctx.Done():
		}
	}()
	if err := o.openAndPrefetch(ctx, name); err != nil {
		logf("%v; wal-fetch calls fetch their segments themselves", err)
	}
	return nil
}

// openAndPrefetch opens the archive and runs the prefetcher from segment name on.
func (o *walFetchOptions) openAndPrefetch(ctx context.Context, name string) error {
	key, err := o.g.key()
	if err != nil {
		return err
	}
	st, err := walarchive.OpenStorage(ctx, o.storage)
	if err != nil {
		return fmt.Errorf("open the storage at %s: %w", o.storage, err)
	}
	var archive *walarchive.Archive
	err = o.retry(ctx, func() error {
		archive, err = walarchive.OpenArchive(ctx, st, key)
		return err
	})
	if err != nil {
		return fmt.Errorf("open the archive at %s: %w", o.storage, err)
	}
	f, err := walarchive.ParseWALFileName(name, archive.SegmentSize())
	if err != nil {
		return err
	}
	if f.Kind != walarchive.WALFileSegment {
		return fmt.Errorf("%s is not a complete segment: nothing to prefetch from", name)
	}
	return o.prefetcher(ctx, archive, f)
}

// prefetcher runs until recovery no longer takes segments (prefetchIdle), the directory
// is removed, or ctx ends. A second prefetcher of the same directory exits at once.
func (o *walFetchOptions) prefetcher(ctx context.Context, a *walarchive.Archive, first walarchive.WALFile) error {
	lf, err := os.OpenFile(filepath.Join(o.prefetchDir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	if syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return nil // another prefetcher runs
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
			go func() { results <- prefetchResult{k, o.prefetchOneRecovered(ctx, a, path(k), k)} }()
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
		case <-ctx.Done():
			for range inflight {
				<-results
			}
			return nil
		}
	}
	for range inflight {
		<-results
	}
	return nil
}

// prefetchOneRecovered is prefetchOne with a panic turned into an error: a goroutine's
// panic would otherwise end the process with exit status 2.
func (o *walFetchOptions) prefetchOneRecovered(ctx context.Context, a *walarchive.Archive, p string, k prefetchKey) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("prefetch %s: panic: %v", filepath.Base(p), r)
		}
	}()
	return o.prefetchOne(ctx, a, p, k)
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
