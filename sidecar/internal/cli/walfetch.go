package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/spf13/cobra"

	"github.com/kcbackup/kcbackup/walarchive"
)

// Exit statuses of wal-fetch, as restore_command's caller reads them: 1 means "not in the
// archive" (recovery may end there); a status above 125 makes PostgreSQL abort recovery
// with an error instead of ending it early and promoting (see "Recovering Using a
// Continuous Archive Backup" and RestoreArchivedFile in the PostgreSQL sources).
const (
	exitNotFound = 1
	exitFatal    = 255
)

type walFetchOptions struct {
	g           *globalOptions
	storage     string
	retryFor    time.Duration
	prefetch    int
	prefetchDir string
	prefetchRun bool
}

func newWALFetchCmd(g *globalOptions) *cobra.Command {
	o := &walFetchOptions{g: g}
	cmd := &cobra.Command{
		Use:   "wal-fetch --storage URL WALFILE DEST",
		Short: "Fetch one WAL file from the archive (for restore_command = '... %f %p')",
		Long: `wal-fetch writes the archived WAL file WALFILE (a segment, a .partial or a .history file)
to DEST, verified, through a temporary name and a rename, so a partial file is never left
at DEST. A segment archived only as the live tail (.partial) is served padded to the full
segment size; PostgreSQL replays up to the end of valid WAL.

Exit status: 0 when DEST was written; 1 when the archive truly has no such file; 255 when
the storage kept failing for --retry-for or an object failed verification, which makes
PostgreSQL stop recovery with an error rather than end it early and promote.

With --prefetch N and --prefetch-dir DIR (relative paths are relative to the working
directory, the data directory under restore_command), the next N segments are downloaded in
parallel in the background so replay does not wait on one download at a time. Only complete
segments are prefetched (they never change), each in its own directory per restore, so
files from an earlier restore are never used.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd.Context(), args[0], args[1]) },
	}
	f := cmd.Flags()
	f.StringVar(&o.storage, "storage", "", "archive location: "+walarchive.StorageURLForms)
	f.DurationVar(&o.retryFor, "retry-for", 2*time.Minute, "keep retrying storage errors this long before failing recovery")
	f.IntVar(&o.prefetch, "prefetch", 0, "segments to download ahead in the background (0: none; at most 64)")
	f.StringVar(&o.prefetchDir, "prefetch-dir", "", "directory for prefetched segments (needed with --prefetch)")
	f.BoolVar(&o.prefetchRun, "prefetch-worker", false, "internal: run as the background prefetcher")
	_ = f.MarkHidden("prefetch-worker")
	return cmd
}

func (o *walFetchOptions) run(ctx context.Context, name, dest string) error {
	if o.storage == "" {
		return &ExitError{Code: exitFatal, Err: errors.New("--storage (or KCBACKUP_STORAGE) is required: " + walarchive.StorageURLForms)}
	}
	if o.prefetch < 0 || o.prefetch > 64 {
		return &ExitError{Code: exitFatal, Err: fmt.Errorf("invalid --prefetch %d: expected 0 to 64", o.prefetch)}
	}
	if o.prefetch > 0 && o.prefetchDir == "" {
		return &ExitError{Code: exitFatal, Err: errors.New("--prefetch needs --prefetch-dir")}
	}
	key, err := o.g.key()
	if err != nil {
		return &ExitError{Code: exitFatal, Err: err}
	}
	st, err := walarchive.OpenStorage(ctx, o.storage)
	if err != nil {
		return &ExitError{Code: exitFatal, Err: err}
	}
	var archive *walarchive.Archive
	err = o.retry(ctx, func() error {
		archive, err = walarchive.OpenArchive(ctx, st, key)
		return err
	})
	if err != nil {
		return &ExitError{Code: exitFatal, Err: err}
	}
	if o.prefetchRun {
		o.prefetchWorker(ctx, archive, name)
		return nil
	}
	f, err := walarchive.ParseWALFileName(name, archive.SegmentSize())
	if err != nil {
		return &ExitError{Code: exitFatal, Err: err}
	}

	// Step 1: a prefetched complete segment is moved into place at once.
	if o.prefetch > 0 && f.Kind == walarchive.WALFileSegment {
		defer o.startPrefetch(archive, f)
		if o.takePrefetched(name, dest) {
			return nil
		}
	}
	// Step 2: fetch it, retrying storage errors; "not found" is answered only when true.
	err = o.retry(ctx, func() error {
		return fetchTo(ctx, archive, name, dest)
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, walarchive.ErrWALNotInArchive):
		return &ExitError{Code: exitNotFound}
	default:
		return &ExitError{Code: exitFatal, Err: fmt.Errorf("fetch %s: %w", name, err)}
	}
}

// retry retries op while it fails with anything but "not in the archive", corruption or a
// bad name, for at least --retry-for: the last attempt is made at the deadline.
func (o *walFetchOptions) retry(ctx context.Context, op func() error) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 250 * time.Millisecond
	bo.MaxInterval = 5 * time.Second
	deadline := time.Now().Add(o.retryFor)
	for {
		err := op()
		if err == nil || errors.Is(err, walarchive.ErrWALNotInArchive) || errors.Is(err, walarchive.ErrCorrupt) ||
			errors.Is(err, walarchive.ErrNoIdentity) || errors.Is(err, walarchive.ErrWrongKey) {
			return err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return err
		}
		wait := bo.NextBackOff()
		if wait > left {
			wait = left
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
}

// fetchTo writes the file to dest through a temporary name in dest's directory.
func fetchTo(ctx context.Context, a *walarchive.Archive, name, dest string) error {
	tmp, err := os.CreateTemp(filepath.Dir(dest), ".kcbackup-fetch-"+name+"-*")
	if err != nil {
		return fmt.Errorf("create temporary file beside %s: %w", dest, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := a.FetchWALFile(ctx, name, tmp); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), dest); err != nil {
		return fmt.Errorf("move %s into place: %w", name, err)
	}
	ok = true
	return nil
}

// takePrefetched moves a prefetched segment to dest, waiting briefly for one in progress.
func (o *walFetchOptions) takePrefetched(name, dest string) bool {
	p := filepath.Join(o.prefetchDir, name)
	marker := p + ".inprogress"
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := os.Rename(p, dest); err == nil {
			return true
		}
		st, err := os.Stat(marker)
		if err != nil || time.Since(st.ModTime()) > 2*time.Minute || time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startPrefetch launches a detached worker for the next segments not yet present or in
// progress. It never fails the current fetch.
func (o *walFetchOptions) startPrefetch(a *walarchive.Archive, f walarchive.WALFile) {
	if err := os.MkdirAll(o.prefetchDir, 0o700); err != nil {
		return
	}
	var names []string
	for i := 1; i <= o.prefetch; i++ {
		n := walarchive.SegmentName(f.Timeline, f.SegNo+uint64(i), a.SegmentSize())
		p := filepath.Join(o.prefetchDir, n)
		if _, err := os.Stat(p); err == nil {
			continue
		}
		m, err := os.OpenFile(p+".inprogress", os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			if st, serr := os.Stat(p + ".inprogress"); serr == nil && time.Since(st.ModTime()) > 2*time.Minute {
				os.Remove(p + ".inprogress") // a worker that died; the next fetch retries
			}
			continue
		}
		m.Close()
		names = append(names, n)
	}
	if len(names) == 0 {
		return
	}
	self, err := os.Executable()
	if err != nil {
		return
	}
	args := []string{"wal-fetch", "--prefetch-worker", "--storage", o.storage, "--prefetch-dir", o.prefetchDir,
		"--encryption-key-file", o.g.keyFileAbs(),
		"--retry-for", o.retryFor.String(), joinNames(names), "-"}
	cmd := exec.Command(self, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cmd.Start() == nil {
		_ = cmd.Process.Release()
	} else {
		for _, n := range names {
			os.Remove(filepath.Join(o.prefetchDir, n) + ".inprogress")
		}
	}
}

func joinNames(names []string) string {
	s := ""
	for i, n := range names {
		if i > 0 {
			s += ","
		}
		s += n
	}
	return s
}

// prefetchWorker downloads the named complete segments in parallel into the prefetch
// directory. Missing segments (the end of the archive) are simply skipped.
func (o *walFetchOptions) prefetchWorker(ctx context.Context, a *walarchive.Archive, list string) {
	var names []string
	start := 0
	for i := 0; i <= len(list); i++ {
		if i == len(list) || list[i] == ',' {
			names = append(names, list[start:i])
			start = i + 1
		}
	}
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for _, n := range names {
		f, err := walarchive.ParseWALFileName(n, a.SegmentSize())
		p := filepath.Join(o.prefetchDir, n)
		if err != nil || f.Kind != walarchive.WALFileSegment {
			os.Remove(p + ".inprogress")
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer os.Remove(p + ".inprogress")
			// Only complete segments: a partial may grow, so it is never cached.
			key := walarchive.SegmentKey(f.Timeline, f.SegNo, a.SegmentSize())
			if _, err := a.Storage.Stat(ctx, key); err != nil {
				return
			}
			_ = o.retry(ctx, func() error { return fetchTo(ctx, a, n, p) })
		}()
	}
	wg.Wait()
}
