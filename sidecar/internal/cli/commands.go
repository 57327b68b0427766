package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kcbackup/kcbackup/sidecar/internal/backup"
	"github.com/kcbackup/kcbackup/sidecar/internal/pgrepl"
	"github.com/kcbackup/kcbackup/sidecar/internal/restore"
	"github.com/kcbackup/kcbackup/walarchive"
)

func requireStorage(url string) error {
	if url == "" {
		return errors.New("--storage (or KCBACKUP_STORAGE) is required: " + walarchive.StorageURLForms)
	}
	return nil
}

func openArchive(ctx context.Context, g *globalOptions, url string) (*walarchive.Archive, error) {
	if err := requireStorage(url); err != nil {
		return nil, err
	}
	key, err := g.key()
	if err != nil {
		return nil, err
	}
	st, err := walarchive.OpenStorage(ctx, url)
	if err != nil {
		return nil, err
	}
	a, err := walarchive.OpenArchive(ctx, st, key)
	if errors.Is(err, walarchive.ErrNoIdentity) {
		return nil, fmt.Errorf("%s holds no kcbackup archive yet (start `kcbackup run` against it first)", url)
	}
	return a, err
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// ---- backup ----

func newBackupCmd(g *globalOptions) *cobra.Command {
	var storageURL, pgURL string
	var asJSON, spread, showProgress bool
	var walTimeout time.Duration
	var checksums, compressOn string
	var zstdWorkers int
	cmd := &cobra.Command{
		Use:   "backup --storage URL",
		Short: "Take one base backup now and print its ID",
		Long: `backup takes a base backup over the replication protocol (BASE_BACKUP with the server's
manifest) and streams it, compressed and checksummed, straight to the archive. It is
complete, and listed, only once all WAL from its start to its stop is in the archive
(archived by a running 'kcbackup run'); its record is written last. One backup at a time per
cluster: a second one is refused.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			log, err := g.logger()
			if err != nil {
				return err
			}
			if err := requireStorage(storageURL); err != nil {
				return err
			}
			pgcfg, err := pgrepl.ParseConfig(pgURL)
			if err != nil {
				return err
			}
			st, err := walarchive.OpenStorage(ctx, storageURL)
			if err != nil {
				return err
			}
			key, err := g.key()
			if err != nil {
				return err
			}
			opts := backup.Options{PG: pgcfg, Storage: st, Key: key, FastCheckpoint: !spread, WALTimeout: walTimeout, Logger: log,
				ZstdWorkers: zstdWorkers}
			switch strings.ToLower(checksums) {
			case "crc32c":
			case "sha256", "sha-256":
				opts.ManifestSHA256 = true
			default:
				return fmt.Errorf("invalid --manifest-checksums %q: expected crc32c or sha256", checksums)
			}
			switch compressOn {
			case "server":
				// Given explicitly, a server built without zstd fails the backup; by default
				// the backup falls back to compressing here.
				opts.RequireServerCompression = cmd.Flags().Changed("compress-on")
			case "client":
				opts.ClientCompression = true
			default:
				return fmt.Errorf("invalid --compress-on %q: expected server or client", compressOn)
			}
			if zstdWorkers < 0 || zstdWorkers > 64 {
				return fmt.Errorf("invalid --zstd-workers %d: expected 0 to 64", zstdWorkers)
			}
			if showProgress || isTerminal(g.stderr) {
				opts.Progress = progressPrinter(g.stderr)
			}
			rec, err := backup.Take(ctx, opts)
			if errors.Is(err, backup.ErrRunning) {
				return &ExitError{Code: 3, Err: err}
			}
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(g.stdout, rec)
			}
			fmt.Fprintln(g.stdout, rec.ID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&storageURL, "storage", "", "archive location: "+walarchive.StorageURLForms)
	f.StringVar(&pgURL, "pg-url", "", "PostgreSQL connection URL (default: the libpq PG* environment variables)")
	f.BoolVar(&asJSON, "json", false, "print the backup's record as JSON")
	f.BoolVar(&spread, "spread-checkpoint", false, "wait for a spread checkpoint instead of requesting a fast one")
	f.DurationVar(&walTimeout, "wal-timeout", 10*time.Minute, "how long to wait for the backup's WAL to reach the archive")
	f.BoolVar(&showProgress, "progress", false, "print progress even when stderr is not a terminal (the server then sizes the data directory first)")
	f.StringVar(&checksums, "manifest-checksums", "crc32c", "file checksums in the backup manifest: crc32c or sha256")
	f.StringVar(&compressOn, "compress-on", "server", "where a zstd archive's base backup is compressed: server (PostgreSQL's BASE_BACKUP COMPRESSION; by default a server built without zstd falls back to client, given explicitly it fails the backup) or client (this process)")
	f.IntVar(&zstdWorkers, "zstd-workers", backup.DefaultZstdWorkers, "with --compress-on server: libzstd threads in the server (0: in the backend process itself)")
	return cmd
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func progressPrinter(w io.Writer) func(done, total int64) {
	start := time.Now()
	var last time.Time
	return func(done, total int64) {
		if time.Since(last) < time.Second {
			return
		}
		last = time.Now()
		rate := float64(done) / time.Since(start).Seconds()
		line := fmt.Sprintf("\rbacked up %d MiB", done>>20)
		if total > 0 {
			pct := float64(done) * 100 / float64(total)
			eta := time.Duration(float64(total-done)/rate) * time.Second
			line += fmt.Sprintf(" of ~%d MiB (%.0f%%), %.1f MiB/s, about %s left", total>>20, pct, rate/(1<<20), eta.Round(time.Second))
		}
		fmt.Fprint(w, line+"   ")
	}
}

// ---- list ----

func newListCmd(g *globalOptions) *cobra.Command {
	var storageURL string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list --storage URL",
		Short: "List backups, timelines and the recovery window",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			a, err := openArchive(ctx, g, storageURL)
			if err != nil {
				return err
			}
			sum, err := a.Summarize(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(g.stdout, backup.CatalogOf(sum))
			}
			tw := tabwriter.NewWriter(g.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTIMELINE\tSTART\tSTOP\tSTART LSN\tSTOP LSN\tDATA\tSTORED")
			for _, b := range sum.Backups {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", b.ID, b.Timeline, b.StartTime.Format(time.RFC3339), b.StopTime.Format(time.RFC3339),
					b.StartLSN, b.StopLSN, humanBytes(b.DataBytes()), humanBytes(b.StoredBytes()))
			}
			tw.Flush()
			fmt.Fprintf(g.stdout, "\ntimelines: %v\n", sum.Timelines)
			if sum.Window == nil {
				fmt.Fprintln(g.stdout, "recovery window: none yet (no complete backup with its WAL)")
			}
			for _, tli := range sum.Timelines {
				for _, w := range sum.Windows[tli] {
					live, hole := "", ""
					if tli == sum.LiveTimeline {
						live = " (live)"
					}
					if w.Hole {
						hole = fmt.Sprintf(" — then a hole in the WAL: %s is missing", w.End.Missing)
					}
					fmt.Fprintf(g.stdout, "recovery window, timeline %d%s: %s to %s%s\n", tli, live,
						w.Earliest.UTC().Format(time.RFC3339), w.Latest.UTC().Format(time.RFC3339), hole)
				}
			}
			for _, p := range sum.Problems {
				fmt.Fprintln(g.stderr, "problem:", p)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&storageURL, "storage", "", "archive location: "+walarchive.StorageURLForms)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func sortedTimelines(m map[uint32]uint64) []uint32 {
	var out []uint32
	for t := range m {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

func humanBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// ---- restore ----

func newRestoreCmd(g *globalOptions) *cobra.Command {
	var storageURL, pgdata, to, backupID, timeline, owner, fetchVia, fetchToken string
	var moveAside, handover bool
	var prefetch int
	cmd := &cobra.Command{
		Use:   "restore --storage URL --pgdata DIR --to (RFC3339 time | latest | xid:N[@LSN])",
		Short: "Restore a base backup and set up recovery to a point in time",
		Long: `restore finds the restorable range (see kcbackup list) that holds the target, picks the
newest backup of that range that ends at or before the target (or --backup), and refuses,
before touching DIR: a target without a time zone, outside every range (in a hole in the
WAL, before the oldest backup, after the end), on two timelines whose histories differ then
(pass --timeline), or in WAL it cannot read.

--to xid:N[@LSN] restores to the commit of transaction N: the restored cluster holds that
transaction and every one that committed before it, none that committed after. N is what
txid_current() returned in the transaction (a 64-bit value is taken modulo 2^32, the id WAL
carries); LSN, what pg_current_wal_lsn() returned in it, is where the search for its commit
starts (without it, at the stop of the oldest usable backup: slower, and an id that came
round again 2^32 transactions later could be taken for it). The commit is searched on the
WAL of --timeline's path (latest: the newest timeline), and the newest backup that stopped
at or before it is chosen; a transaction that aborted, or whose commit is not (yet) in the
archive, is refused, naming the WAL searched. Recovery stops with recovery_target_lsn at the
commit record, inclusive.

It extracts the backup into a staging directory beside DIR, verifying every checksum,
writes recovery.signal and the recovery settings (restore_command calling 'kcbackup
wal-fetch'; recovery_target_time with an explicit offset when the archive holds a
transaction that ended after the target, otherwise recovery_target_lsn of the last archived
transaction by the target, or recovery_target = 'immediate' when none ended after the
backup, so recovery never replays WAL archived later; recovery_target_timeline;
recovery_target_action = promote), then moves a non-empty DIR aside to
DIR.kcbackup-replaced-<time> (only with --move-aside; it is never deleted) and the restored
data into DIR. Start PostgreSQL on DIR: it replays WAL to the target and promotes to a new
timeline.

An archive has one writer. A restore that replaces a data directory (--move-aside on a
non-empty DIR: an in-place restore), or that is given --handover, hands the archive over to
the restored server: the old server's sidecar is fenced and stops writing, and only the
server promoted from this restore may archive into it next ('kcbackup run' on it). Any
other restore makes a copy: its sidecar is refused while the archive has a live writer and
whenever it is not the continuation of what the archive holds; archive a copy into its own
archive (another S3 prefix or volume).

A postmaster.pid in DIR is stale, and ignored (it moves aside with DIR), when the process it
names is not a running postgres in this PID namespace; a server in another container
sharing the volume cannot be seen, so stop it first.

Exit status: 0 restored; 4 refused or failed before DIR was touched (it is exactly as it
was, the old server can be started again); any other status: failed, DIR may have been
replaced (the previous one is kept beside it).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			ctx := cmd.Context()
			// Until restore.Run, nothing is touched; restore.Run says itself how far it got.
			running := false
			defer func() {
				if err != nil && !running {
					err = restore.Untouched(err)
				}
				if errors.Is(err, restore.ErrUntouched) {
					err = &ExitError{Code: ExitRestoreUntouched, Err: err}
				}
			}()
			// Step 1: every input checked before anything is touched.
			if pgdata == "" {
				return errors.New("--pgdata is required: the data directory to restore into")
			}
			if to == "" {
				return errors.New("--to is required: " + walarchive.TargetForms)
			}
			target, err := walarchive.ParseTarget(to)
			if err != nil {
				return err
			}
			var tli uint64
			if timeline != "" && timeline != "latest" {
				if tli, err = strconv.ParseUint(timeline, 10, 32); err != nil || tli == 0 {
					return fmt.Errorf("invalid --timeline %q: expected a positive number or 'latest'", timeline)
				}
			}
			if backupID != "" {
				if err := walarchive.ValidateBackupID(backupID); err != nil {
					return fmt.Errorf("--backup: %w", err)
				}
			}
			if prefetch < 0 || prefetch > 64 {
				return fmt.Errorf("invalid --prefetch %d: expected 0 to 64", prefetch)
			}
			if fetchVia != "" {
				if u, err := url.Parse(fetchVia); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
					return fmt.Errorf("invalid --fetch-via %q: expected http://host:port, the sidecar's API", fetchVia)
				}
				if fetchToken == "" || !filepath.IsAbs(fetchToken) {
					return fmt.Errorf("--fetch-via needs --fetch-token-file: the absolute path of the API token file as PostgreSQL will see it")
				}
			}
			uid, gid, err := resolveOwner(owner, pgdata)
			if err != nil {
				return err
			}
			if pm, err := restore.CheckPostmaster(pgdata); err == nil && pm.PIDFile && !pm.Live {
				fmt.Fprintf(g.stderr, "%s/postmaster.pid names process %d, which is not a running postgres here: "+
					"it is stale (left by a server that was killed) and is moved aside with the data directory\n", pgdata, pm.PID)
			}
			if err := restore.CheckDestination(pgdata, moveAside); err != nil {
				return err
			}
			a, err := openArchive(ctx, g, storageURL)
			if err != nil {
				return err
			}
			plan, err := a.PlanRestore(ctx, walarchive.RestoreRequest{Target: target, BackupID: backupID, Timeline: uint32(tli)}, time.Now())
			if err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the kcbackup binary for restore_command: %w", err)
			}
			// Step 2: restore.
			started := time.Now()
			if target.IsXid() {
				fmt.Fprintf(g.stderr, "transaction %d committed at %s (commit record at %s on timeline %d): recovery stops right after it\n",
					target.Xid, plan.TargetTime.UTC().Format(time.RFC3339Nano), plan.LastXactLSN, plan.Timeline)
			}
			fmt.Fprintf(g.stderr, "restoring backup %s (stopped %s) to %s on timeline %d into %s\n",
				plan.Backup.ID, plan.Backup.StopTime.UTC().Format(time.RFC3339), target, plan.Timeline, pgdata)
			running = true
			res, err := restore.Run(ctx, restore.Options{
				Archive: a, Plan: plan, StorageURL: storageURL, PGData: pgdata, MoveAside: moveAside,
				UID: uid, GID: gid, Kcbackup: self, Prefetch: prefetch, KeyFile: g.keyFileAbs(),
				FetchVia: fetchVia, FetchTokenFile: fetchToken,
			})
			if err != nil {
				return err
			}
			if res.MovedAside != "" {
				fmt.Fprintf(g.stderr, "the previous data directory was moved to %s (kept; remove it yourself once satisfied)\n", res.MovedAside)
			}
			if handover || res.MovedAside != "" {
				if err := handOver(ctx, a, plan, target); err != nil {
					return fmt.Errorf("restored into %s, but %w", pgdata, err)
				}
				fmt.Fprintf(g.stderr, "handed the archive over to the server restored here: the old server's sidecar stops writing into it\n")
			}
			fmt.Fprintf(g.stderr, "restored %s in %s; start PostgreSQL on %s to replay WAL and promote\n",
				humanBytes(res.Bytes), time.Since(started).Round(time.Millisecond), pgdata)
			fmt.Fprintln(g.stdout, plan.Backup.ID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&storageURL, "storage", "", "archive location: "+walarchive.StorageURLForms)
	f.StringVar(&pgdata, "pgdata", "", "data directory to restore into (absolute path)")
	f.StringVar(&to, "to", "", "restore target: 'latest', an RFC 3339 time with a zone (2026-11-24T10:30:00Z), or xid:N[@LSN], the commit of transaction N (txid_current()) searched from LSN (pg_current_wal_lsn() in that transaction), like xid:4711@0/16B3748")
	f.StringVar(&backupID, "backup", "", "restore this backup instead of choosing one")
	f.StringVar(&timeline, "timeline", "latest", "timeline to recover along: a number, or 'latest' for the newest whose recovery range holds the target (a time on two timelines whose histories differ then is refused: choose one)")
	f.BoolVar(&moveAside, "move-aside", false, "move a non-empty --pgdata aside (to DIR.kcbackup-replaced-<time>) instead of refusing; an in-place restore hands the archive over to the restored server")
	f.BoolVar(&handover, "handover", false, "hand the archive over to the restored server even into a new directory (the old server is gone for good): the old writer is fenced")
	f.StringVar(&owner, "owner", "", "user[:group] to own the restored files (default: the owner of --pgdata or its parent when run as root)")
	f.IntVar(&prefetch, "prefetch", 8, "segments wal-fetch downloads ahead during recovery (0 disables)")
	f.StringVar(&fetchVia, "fetch-via", "", "make restore_command fetch WAL through the sidecar's API at this URL (e.g. http://127.0.0.1:8008): PostgreSQL then needs no storage credentials")
	f.StringVar(&fetchToken, "fetch-token-file", "", "with --fetch-via: absolute path of the API token file, as PostgreSQL will read it")
	return cmd
}

// handOver reserves the archive for the server this restore makes: the one that promotes
// from recovery along the plan's timeline onto a timeline newer than every one archived.
func handOver(ctx context.Context, a *walarchive.Archive, plan walarchive.RestorePlan, target walarchive.Target) error {
	tlis, err := a.Timelines(ctx)
	if err != nil {
		return fmt.Errorf("could not hand the archive over: %w", err)
	}
	after := plan.Timeline
	if len(tlis) > 0 && tlis[len(tlis)-1] > after {
		after = tlis[len(tlis)-1]
	}
	host, _ := os.Hostname()
	_, err = a.HandOver(ctx, walarchive.Handover{
		ParentTimeline: plan.Timeline, FromLSN: plan.Backup.StopLSN, AfterTimeline: after,
		BackupID: plan.Backup.ID, Target: target.String(),
	}, host, "in-place restore")
	if err != nil {
		return fmt.Errorf("could not hand the archive over (run the restore again, or kcbackup restore --handover): %w", err)
	}
	return nil
}

// resolveOwner decides who owns the restored data directory.
func resolveOwner(owner, pgdata string) (int, int, error) {
	if owner == "" {
		if os.Geteuid() != 0 {
			return -1, -1, nil
		}
		for _, p := range []string{pgdata, parentDir(pgdata)} {
			if uid, gid, ok := fileOwner(p); ok {
				return uid, gid, nil
			}
		}
		return -1, -1, nil
	}
	name, group, _ := strings.Cut(owner, ":")
	u, err := user.Lookup(name)
	if err != nil {
		if _, nerr := strconv.Atoi(name); nerr != nil {
			return 0, 0, fmt.Errorf("invalid --owner %q: no such user", owner)
		}
		u = &user.User{Uid: name, Gid: name}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			n, nerr := strconv.Atoi(group)
			if nerr != nil {
				return 0, 0, fmt.Errorf("invalid --owner %q: no such group", owner)
			}
			gid = n
		} else {
			gid, _ = strconv.Atoi(g.Gid)
		}
	}
	return uid, gid, nil
}

func parentDir(p string) string {
	i := strings.LastIndex(strings.TrimRight(p, "/"), "/")
	if i <= 0 {
		return "/"
	}
	return p[:i]
}

// ---- verify ----

func newVerifyCmd(g *globalOptions) *cobra.Command {
	var storageURL string
	cmd := &cobra.Command{
		Use:   "verify --storage URL",
		Short: "Check every object's checksum, every backup's completeness and WAL continuity",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			a, err := openArchive(ctx, g, storageURL)
			if err != nil {
				return err
			}
			rep, err := a.Verify(ctx, nil)
			if err != nil {
				return err
			}
			for _, p := range rep.Problems {
				fmt.Fprintln(g.stdout, "PROBLEM", p)
			}
			for _, w := range rep.Warnings {
				fmt.Fprintln(g.stdout, "WARNING", w)
			}
			fmt.Fprintf(g.stdout, "verified %d objects (%s), %d backups: %d problems\n", rep.Objects, humanBytes(rep.Bytes), rep.Backups, len(rep.Problems))
			if len(rep.Problems) > 0 {
				return &ExitError{Code: 1, Err: fmt.Errorf("the archive has %d problems", len(rep.Problems))}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&storageURL, "storage", "", "archive location: "+walarchive.StorageURLForms)
	return cmd
}

// ---- prune ----

func newPruneCmd(g *globalOptions) *cobra.Command {
	var storageURL string
	var keep int
	var within time.Duration
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "prune --storage URL (--keep-backups N | --keep-within DURATION) [--dry-run]",
		Short: "Remove old backups and the WAL no kept backup needs",
		Long: `prune keeps the newest --keep-backups backups and every backup that stopped within
--keep-within (both may be given), and removes the other backups and the WAL no kept backup
restores through. Whatever the policy it keeps, per timeline path, what restores into each
kept range: the newest backup on the live (newest) timeline's path always, and with
--keep-within the youngest backup that stopped before the window on each timeline's path,
which a restore to the window's start needs. WAL is kept from each kept backup's start on,
along every timeline that descends from it; history files are always kept. --dry-run prints
what would go and why each kept backup stays.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r := walarchive.Retention{KeepBackups: keep, KeepWithin: within}
			if err := r.Validate(); err != nil {
				return err
			}
			a, err := openArchive(ctx, g, storageURL)
			if err != nil {
				return err
			}
			plan, err := a.PlanPrune(ctx, r, time.Now())
			if err != nil {
				return err
			}
			verb := "removed"
			if dryRun {
				verb = "would remove"
			} else if err := a.Prune(ctx, plan); err != nil {
				return err
			}
			for _, b := range plan.Keep {
				fmt.Fprintf(g.stdout, "keep backup %s (timeline %d, stopped %s): %s\n", b.ID, b.Timeline, b.StopTime.UTC().Format(time.RFC3339), strings.Join(b.Reasons, "; "))
			}
			for _, b := range plan.RemoveBackups {
				fmt.Fprintf(g.stdout, "%s backup %s (timeline %d, stopped %s): no rule keeps it\n", verb, b.ID, b.Timeline, b.StopTime.UTC().Format(time.RFC3339))
			}
			for _, tli := range sortedTimelines(plan.KeepWALFrom) {
				fmt.Fprintf(g.stdout, "keep WAL of timeline %d from segment %s on (a kept backup restores through it)\n", tli, walarchive.SegmentName(tli, plan.KeepWALFrom[tli], a.SegmentSize()))
			}
			fmt.Fprintf(g.stdout, "%s %d backups and %d WAL objects; kept %d backups\n", verb, len(plan.RemoveBackups), len(plan.RemoveWAL), len(plan.Keep))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&storageURL, "storage", "", "archive location: "+walarchive.StorageURLForms)
	f.IntVar(&keep, "keep-backups", 0, "keep the newest N backups")
	f.DurationVar(&within, "keep-within", 0, "keep backups that stopped within this duration (e.g. 168h)")
	f.BoolVar(&dryRun, "dry-run", false, "only print what would be removed")
	return cmd
}
