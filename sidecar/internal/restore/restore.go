// Package restore turns a restore plan into a data directory PostgreSQL recovers from:
// it extracts the base backup into a staging directory beside the destination, checking
// every object's checksum against the backup's record, writes the recovery settings, and
// only then moves the previous data directory aside (never deleting it) and the staged one
// into place.
package restore

import (
	"archive/tar"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kcbackup/kcbackup/walarchive"
)

// Options configure a restore.
type Options struct {
	Archive *walarchive.Archive
	Plan    walarchive.RestorePlan
	// StorageURL is written into restore_command.
	StorageURL string
	// PGData is the destination data directory.
	PGData string
	// MoveAside allows a non-empty PGData: it is renamed to PGData.kcbackup-replaced-<time>.
	MoveAside bool
	// UID and GID own the restored files (-1 keeps the current user).
	UID, GID int
	// Kcbackup is the path of the kcbackup binary restore_command runs.
	Kcbackup string
	// Prefetch is how many segments wal-fetch downloads ahead (0 disables prefetch).
	Prefetch int
	// KeyFile is the encryption key file restore_command passes on ("" when unencrypted).
	KeyFile string
	// FetchVia, when set, makes restore_command fetch through the sidecar's API at this URL
	// (with the token in FetchTokenFile) instead of from the storage directly.
	FetchVia       string
	FetchTokenFile string
	Now            func() time.Time
}

// Result says what a restore did.
type Result struct {
	PGData string
	// MovedAside is where the previous data directory went ("" if there was none).
	MovedAside string
	Bytes      uint64
}

// CheckDestination refuses a destination restore must not write to; it touches nothing.
func CheckDestination(pgdata string, moveAside bool) error {
	if !filepath.IsAbs(pgdata) {
		return fmt.Errorf("invalid --pgdata %q: expected an absolute path", pgdata)
	}
	st, err := os.Stat(pgdata)
	if errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Stat(filepath.Dir(pgdata)); err != nil {
			return fmt.Errorf("invalid --pgdata %q: its parent directory does not exist", pgdata)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("--pgdata %s: %w", pgdata, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("invalid --pgdata %q: it is not a directory", pgdata)
	}
	entries, err := os.ReadDir(pgdata)
	if err != nil {
		return fmt.Errorf("--pgdata %s: %w", pgdata, err)
	}
	if len(entries) > 0 && !moveAside {
		return fmt.Errorf("--pgdata %s is not empty: stop PostgreSQL and add --move-aside to keep the current data beside it, or choose an empty directory", pgdata)
	}
	pm, err := CheckPostmaster(pgdata)
	if err != nil {
		return err
	}
	if pm.Live {
		return fmt.Errorf("--pgdata %s holds postmaster.pid of the running postgres process %d: stop PostgreSQL before restoring into it", pgdata, pm.PID)
	}
	return nil
}

// Run carries out the restore. Its errors wrap ErrUntouched until the data directory is
// moved aside (step 3).
func Run(ctx context.Context, o Options) (Result, error) {
	touched := false
	res, err := run(ctx, o, &touched)
	if err != nil && !touched {
		err = Untouched(err)
	}
	return res, err
}

func run(ctx context.Context, o Options, touched *bool) (Result, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if err := CheckDestination(o.PGData, o.MoveAside); err != nil {
		return Result{}, err
	}
	b := o.Plan.Backup
	for _, obj := range b.Objects {
		if obj.Name != "base.tar" && obj.Name != "backup_manifest" {
			// Tablespaces would be written to locations the stored record names, outside the
			// staging directory: not supported (Keycloak's database does not use them).
			return Result{}, fmt.Errorf("backup %s holds tablespace archive %s (location %q): restoring tablespaces is not supported", b.ID, obj.Name, obj.Location)
		}
	}
	// Step 1: extract into a staging directory beside the destination.
	staging := fmt.Sprintf("%s.kcbackup-restoring-%s", o.PGData, b.ID)
	if err := os.RemoveAll(staging); err != nil { // our own leftover from an interrupted restore
		return Result{}, fmt.Errorf("clear staging directory %s: %w", staging, err)
	}
	if err := os.Mkdir(staging, 0o700); err != nil {
		return Result{}, fmt.Errorf("create staging directory: %w", err)
	}
	res := Result{PGData: o.PGData}
	cleanup := true
	defer func() {
		if cleanup {
			os.RemoveAll(staging)
		}
	}()
	for _, obj := range b.Objects {
		n, err := extractObject(ctx, o.Archive, b, obj, staging)
		if err != nil {
			return Result{}, err
		}
		res.Bytes += n
	}
	// Step 2: recovery settings.
	if err := writeRecoveryConfig(staging, o); err != nil {
		return Result{}, err
	}
	if err := os.MkdirAll(filepath.Join(staging, "pg_wal", "archive_status"), 0o700); err != nil {
		return Result{}, err
	}
	if err := chownTree(staging, o.UID, o.GID); err != nil {
		return Result{}, err
	}
	// Files are written without an fsync each; one syncfs makes them all durable before
	// the restored directory is moved into place.
	if err := syncFS(staging); err != nil {
		return Result{}, fmt.Errorf("sync restored files: %w", err)
	}
	// Step 3: move the previous data aside (never delete it), then the staged data in.
	*touched = true
	if entries, err := os.ReadDir(o.PGData); err == nil {
		if len(entries) > 0 {
			aside := fmt.Sprintf("%s.kcbackup-replaced-%s", o.PGData, o.Now().UTC().Format("20060102T150405Z"))
			if err := os.Rename(o.PGData, aside); err != nil {
				return Result{}, fmt.Errorf("move the previous data directory aside to %s: %w", aside, err)
			}
			res.MovedAside = aside
		} else if err := os.Remove(o.PGData); err != nil {
			return Result{}, err
		}
	}
	if err := os.Rename(staging, o.PGData); err != nil {
		return Result{}, fmt.Errorf("move restored data into %s: %w", o.PGData, err)
	}
	cleanup = false
	if err := os.Chmod(o.PGData, 0o700); err != nil {
		return res, err
	}
	return res, syncDir(filepath.Dir(o.PGData))
}

// extractObject streams one backup object out of the archive, verifying it.
func extractObject(ctx context.Context, a *walarchive.Archive, b walarchive.BackupRecord, obj walarchive.BackupObject, staging string) (uint64, error) {
	key := walarchive.BackupPrefix(b.ID) + obj.Name
	rc, err := a.Storage.Get(ctx, key)
	if err != nil {
		return 0, fmt.Errorf("restore %s: %w", key, err)
	}
	defer rc.Close()
	or, err := a.Reader(rc, key)
	if err != nil {
		return 0, err
	}
	defer or.Close()
	counter := &countReader{r: or}
	switch {
	case obj.Name == "backup_manifest":
		if err := writeFile(filepath.Join(staging, "backup_manifest"), counter, 0o600); err != nil {
			return 0, fmt.Errorf("restore %s: %w", key, err)
		}
	case obj.Name == "base.tar":
		if err := extractTar(counter, staging); err != nil {
			return 0, fmt.Errorf("restore %s: %w", key, err)
		}
	default:
		return 0, fmt.Errorf("restore %s: unknown backup object", key)
	}
	// Drain to the end so the trailer is checked, then compare with the record.
	if _, err := io.Copy(io.Discard, counter); err != nil {
		return 0, fmt.Errorf("restore %s: %w", key, err)
	}
	sum := or.Sum()
	if hex.EncodeToString(sum[:]) != obj.SHA256 || counter.n != obj.RawBytes {
		return 0, fmt.Errorf("restore %s: %w: content does not match the backup record", key, walarchive.ErrCorrupt)
	}
	return counter.n, nil
}

type countReader struct {
	r io.Reader
	n uint64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += uint64(n)
	return n, err
}

// extractTar unpacks a tar stream under dir. Every path is resolved inside dir (os.Root):
// no entry, and no symlink an entry creates, can make a later entry write outside it.
func extractTar(r io.Reader, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(filepath.FromSlash(h.Name))
		if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, ".."+string(filepath.Separator)) {
			return fmt.Errorf("tar entry %q escapes the data directory", h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o700); err != nil {
				return fmt.Errorf("tar entry %q: %w", h.Name, err)
			}
		case tar.TypeReg:
			if d := filepath.Dir(name); d != "." {
				if err := root.MkdirAll(d, 0o700); err != nil {
					return fmt.Errorf("tar entry %q: %w", h.Name, err)
				}
			}
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("tar entry %q: %w", h.Name, err)
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("tar entry %q: %w", h.Name, err)
			}
		case tar.TypeSymlink:
			if err := root.Symlink(h.Linkname, name); err != nil {
				return fmt.Errorf("tar entry %q: %w", h.Name, err)
			}
		default:
			return fmt.Errorf("tar entry %q has unsupported type %q", h.Name, h.Typeflag)
		}
	}
}

func writeFile(path string, r io.Reader, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syncFS flushes the file system holding dir (syncfs(2)): every file extracted there.
func syncFS(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return unix.Syncfs(int(d.Fd()))
}

// PrefetchedFastPath is what restore_command runs before wal-fetch when segments are
// prefetched into dir: a segment waiting there (complete, verified and fsynced by the
// prefetcher, which then fetches the next) is renamed into place by the shell, with no
// process of kcbackup's to start; anything else (not prefetched yet, still downloading, a
// history file or a partial) falls through to wal-fetch. Both paths are in pg_wal, so
// the rename is atomic.
func PrefetchedFastPath(dir string) string {
	return "mv -f " + ShellQuote(dir) + "/%f %p 2>/dev/null || "
}

// writeRecoveryConfig appends the recovery settings to postgresql.auto.conf (read last, so
// they win) and creates recovery.signal.
func writeRecoveryConfig(dir string, o Options) error {
	p := o.Plan
	fetch := []string{o.Kcbackup, "wal-fetch", "--storage", o.StorageURL}
	if o.KeyFile != "" {
		fetch = append(fetch, "--encryption-key-file", o.KeyFile)
	}
	prefetchDir := ""
	if o.FetchVia != "" {
		// The sidecar verifies, decrypts and prefetches; PostgreSQL needs only the token.
		fetch = []string{o.Kcbackup, "wal-fetch", "--sidecar", o.FetchVia, "--token-file", o.FetchTokenFile}
	} else if o.Prefetch > 0 {
		prefetchDir = "pg_wal/kcbackup-prefetch/" + p.Backup.ID + "-" + o.Now().UTC().Format("20060102T150405")
		fetch = append(fetch, "--prefetch", fmt.Sprint(o.Prefetch), "--prefetch-dir", prefetchDir)
	}
	var quoted []string
	for _, a := range fetch {
		quoted = append(quoted, ShellQuote(a))
	}
	cmd := strings.Join(quoted, " ") + " %f %p"
	if prefetchDir != "" {
		cmd = PrefetchedFastPath(prefetchDir) + cmd
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n# Added by kcbackup restore at %s: backup %s, target %s, timeline %d.\n", o.Now().UTC().Format(time.RFC3339), p.Backup.ID, p.Target, p.Timeline)
	fmt.Fprintf(&b, "restore_command = %s\n", GUCQuote(cmd))
	// A backup of a cluster that was itself restored carries that restore's settings in its
	// postgresql.auto.conf: unset every recovery target first (later lines win, and two
	// different targets set at once are refused), then set this restore's.
	for _, g := range []string{"recovery_target", "recovery_target_lsn", "recovery_target_name", "recovery_target_time", "recovery_target_xid"} {
		fmt.Fprintf(&b, "%s = ''\n", g)
	}
	switch p.Stop {
	case walarchive.StopAtTime:
		// A transaction that ended after the target is archived on the path, so recovery
		// stops before it. An explicit offset: the server's TimeZone cannot change the instant.
		fmt.Fprintf(&b, "recovery_target_time = %s\n", GUCQuote(p.Target.Time.UTC().Format("2006-01-02 15:04:05.999999-07:00")))
		b.WriteString("recovery_target_inclusive = on\n")
		b.WriteString("recovery_target_action = 'promote'\n")
	case walarchive.StopAtLSN:
		// No transaction that ended after the target is archived yet: stop right after the
		// last one that ended by it, even if the archive grows while recovery runs.
		fmt.Fprintf(&b, "# The last transaction archived by the target ended at %s.\n", p.LastXact.UTC().Format(time.RFC3339Nano))
		fmt.Fprintf(&b, "recovery_target_lsn = '%s'\n", p.LastXactLSN)
		b.WriteString("recovery_target_inclusive = on\n")
		b.WriteString("recovery_target_action = 'promote'\n")
	case walarchive.StopImmediate:
		// No transaction ended between the backup's stop and the target: stop as soon as the
		// backup is consistent, never replaying WAL archived later.
		b.WriteString("# No transaction ended between the backup's stop and the target.\n")
		b.WriteString("recovery_target = 'immediate'\n")
		b.WriteString("recovery_target_action = 'promote'\n")
	}
	if p.NewestTimeline {
		// The newest timeline in the archive when the restore was planned: 'latest' is the
		// same one now, and lets a standby cloned from the restored cluster follow later ones.
		fmt.Fprintf(&b, "# Timeline %d, the newest in the archive.\nrecovery_target_timeline = 'latest'\n", p.Timeline)
	} else {
		fmt.Fprintf(&b, "recovery_target_timeline = '%d'\n", p.Timeline)
	}
	// Once recovery has ended, these settings only harm: a standby cloned from the restored
	// cluster would inherit them. PostgreSQL runs recovery_end_command after it removed
	// recovery.signal; it removes this block but for archive_mode.
	fmt.Fprintf(&b, "recovery_end_command = %s\n", GUCQuote(ShellQuote(o.Kcbackup)+" recovery-end"))
	// Archiving on the new timeline is done by the sidecar, never by archive_command.
	b.WriteString("archive_mode = off\n")
	f, err := os.OpenFile(filepath.Join(dir, "postgresql.auto.conf"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("write recovery settings: %w", err)
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return fmt.Errorf("write recovery settings: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "recovery.signal"), nil, 0o600)
}

// ShellQuote quotes s for /bin/sh.
func ShellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// GUCQuote quotes s as a postgresql.conf string value. PostgreSQL reads a backslash in
// one as an escape ("Parameter Interaction via the Configuration File"), so backslashes
// are doubled as well as quotes: the backslash of ShellQuote's escaped quote must reach the shell intact.
func GUCQuote(s string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", "''") + "'"
}

func chownTree(dir string, uid, gid int) error {
	if uid < 0 && gid < 0 {
		return nil
	}
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
