package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

const (
	// PGBinDir is where Debian's postgresql-15 package installs the server binaries.
	PGBinDir = "/usr/lib/postgresql/15/bin"

	// PGBinDirEnv names the environment variable that overrides PGBinDir.
	PGBinDirEnv = "KCBACKUP_PG_BINDIR"

	// PGSuperuser is the bootstrap superuser of every cluster the harness creates.
	PGSuperuser = "postgres"

	// PGPasswordAuthPrefix is the role-name prefix CreateRole suggests for password roles.
	// It is a naming convention only: pg_hba.conf in PostgreSQL 15 cannot match a prefix,
	// so CreateRole writes one scram-sha-256 line per role it creates with a password.
	PGPasswordAuthPrefix = "pw_"

	// pgOSUser is the OS account the server runs as when the tests run as root.
	pgOSUser = "postgres"

	pgStartTimeout        = 60 * time.Second
	pgRecoveryTimeout     = 120 * time.Second
	pgStopTimeout         = 30 * time.Second
	pgConnectTimeout      = 2 * time.Second
	pgPollInterval        = 50 * time.Millisecond
	pgLogTailLines        = 50
	pgPortAttempts        = 3
	pgDefaultWALSegSizeMB = 16
	pgLogFileName         = "postgres.log"
	pgHBAFileName         = "pg_hba.conf"
)

// PGOptions configures a cluster started by StartPostgres, StartStandby or StartFromDataDir.
type PGOptions struct {
	// WALSegmentSizeMB is initdb's --wal-segsize: a power of two from 1 to 1024.
	// Zero means PostgreSQL's default of 16. Only StartPostgres uses it: a standby or a
	// restored data directory keeps the segment size it was created with.
	WALSegmentSizeMB int

	// Settings are extra server settings, name to value, such as
	// "track_commit_timestamp": "on" or "archive_mode": "on". They override the harness
	// defaults (wal_level=replica, max_wal_senders=10, max_replication_slots=10, fsync=on).
	// StartPostgres and StartStandby append them to postgresql.conf, so ALTER SYSTEM can
	// still change them; StartFromDataDir passes them as -c options because it never edits
	// a restored postgresql.conf. The harness owns port, listen_addresses,
	// unix_socket_directories, hba_file and logging_collector: values given here for those
	// are overridden.
	Settings map[string]string

	// DataChecksums runs initdb with --data-checksums. Only StartPostgres uses it.
	// (PostgreSQL 18's initdb enables checksums by default; the harness leaves that default.)
	DataChecksums bool

	// Version is the PostgreSQL major version, one of PGVersions; zero means
	// PGDefaultVersion (15) for StartPostgres, the primary's for StartStandby and the
	// version in PG_VERSION for StartFromDataDir. 15 runs from the host's packages; 17 and
	// 18 run inside their root filesystem (see pgroot.go), listening on 127.0.0.1 like 15.
	Version int
}

// Postgres is a throwaway PostgreSQL cluster listening on 127.0.0.1 only.
//
// Authentication: every role is trusted over the Unix socket and over TCP from 127.0.0.1,
// for normal and replication connections alike, except the roles CreateRole gave a password,
// which must pass scram-sha-256 over TCP. The harness keeps its own pg_hba.conf outside the
// data directory (hba_file), so a restored data directory's pg_hba.conf is never used.
//
// When the tests run as root the server, initdb, pg_ctl and pg_basebackup run as the
// `postgres` OS user, which owns the data directory; otherwise they run as the current user.
type Postgres struct {
	install *pgInstall
	baseDir string // owned by the harness: socket, log, pg_hba.conf and usually the data directory
	dataDir string
	logPath string
	hbaPath string
	owner   *syscall.Credential // nil when the server runs as the current user

	// These are set before the Postgres is handed out and never change afterwards.
	port         int
	extraArgs    []string // "name=value" pairs passed to postgres as -c options
	readyTimeout time.Duration

	mu           sync.Mutex // guards the fields below; held by Start and Stop while they wait
	passwordRole []string   // roles with a scram-sha-256 line in pg_hba.conf
	proc         *serverProcess
}

// serverProcess is one run of the postmaster.
type serverProcess struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd.Wait has returned
	err    error         // cmd.Wait's result, valid after exited is closed
}

// StartPostgres creates a new cluster with initdb and starts it on a free loopback port.
// The server is stopped (immediate mode) and its directory removed when the test ends;
// if the test failed, the last lines of the server log are printed first.
// It skips the test when that PostgreSQL version is missing (fails it in CI, see Require).
func StartPostgres(t testing.TB, opts PGOptions) *Postgres {
	t.Helper()
	version := opts.Version
	if version == 0 {
		version = PGDefaultVersion
	}
	p := newPostgres(t, version)
	ctx, cancel := context.WithTimeout(t.Context(), pgStartTimeout)
	defer cancel()

	// Step 1: initdb into <base>/data as the server's OS user.
	segMB := opts.WALSegmentSizeMB
	if segMB == 0 {
		segMB = pgDefaultWALSegSizeMB
	}
	if segMB < 1 || segMB > 1024 || segMB&(segMB-1) != 0 {
		t.Fatalf("start postgres: WAL segment size %d MB is not a power of two from 1 to 1024", segMB)
	}
	args := []string{
		"-D", p.dataDir,
		"--username=" + PGSuperuser,
		"--auth=trust",
		"--encoding=UTF8",
		"--no-locale",
		"--no-sync", // a throwaway cluster need not survive a power cut of the test machine
		"--wal-segsize=" + strconv.Itoa(segMB),
	}
	if opts.DataChecksums {
		args = append(args, "--data-checksums")
	}
	if out, err := p.serverUserCommand(ctx, "initdb", args...).CombinedOutput(); err != nil {
		t.Fatalf("initdb %s: %v\n%s", p.dataDir, err, out)
	}

	// Step 2: the harness defaults and the caller's settings go into postgresql.conf.
	settings := map[string]string{
		"wal_level":             "replica",
		"max_wal_senders":       "10",
		"max_replication_slots": "10",
		"fsync":                 "on",
	}
	for name, value := range opts.Settings {
		settings[name] = value
	}
	if err := p.appendConf(settings); err != nil {
		t.Fatal(err)
	}

	// Step 3: start on a free port.
	p.startFresh(t, ctx)
	return p
}

// StartStandby clones primary with pg_basebackup -R -X stream and starts the copy as a
// streaming standby on its own port. The standby inherits the primary's postgresql.conf;
// opts.Settings are appended to it. It is stopped and removed when the test ends (before
// the primary, as cleanups run last-in first-out).
func StartStandby(t testing.TB, primary *Postgres, opts PGOptions) *Postgres {
	t.Helper()
	if opts.Version != 0 && opts.Version != primary.Version() {
		t.Fatalf("start standby: PostgreSQL %d cannot stream from a PostgreSQL %d primary", opts.Version, primary.Version())
	}
	p := newPostgres(t, primary.Version())
	ctx, cancel := context.WithTimeout(t.Context(), pgStartTimeout)
	defer cancel()

	// Step 1: base backup, written by the server's OS user so it owns every file.
	// -R writes standby.signal and primary_conninfo (PostgreSQL docs, "pg_basebackup").
	out, err := p.serverUserCommand(ctx, "pg_basebackup",
		"-D", p.dataDir,
		"-h", "127.0.0.1",
		"-p", strconv.Itoa(primary.Port()),
		"-U", PGSuperuser,
		"-R", "-X", "stream",
		"--checkpoint=fast",
		"--no-sync",
	).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_basebackup from port %d: %v\n%s", primary.Port(), err, out)
	}

	// Step 2: the standby's own settings, after the primary's.
	if len(opts.Settings) > 0 {
		if err := p.appendConf(opts.Settings); err != nil {
			t.Fatal(err)
		}
	}

	// Step 3: start on a free port.
	p.startFresh(t, ctx)
	return p
}

// StartFromDataDir starts a server on an existing data directory, such as one a restore
// produced. The directory is handed to the server's OS user (recursively) and set to mode
// 0700; its parents under os.TempDir() are made traversable, so a t.TempDir() works.
// Port and listen settings, and opts.Settings, are passed as -c options: the directory's
// postgresql.conf is not edited.
//
// The directory may contain recovery.signal or standby.signal. Recovery can take a while,
// so StartFromDataDir waits up to two minutes for the server to accept connections (with
// hot_standby on, as by default, that happens once recovery reaches a consistent state);
// use WaitPromoted to wait for the end of recovery. The server is stopped when the test
// ends; dir itself is left for its creator to remove.
func StartFromDataDir(t testing.TB, dir string, opts PGOptions) *Postgres {
	t.Helper()
	dir, err := filepath.Abs(dir)
	if err != nil {
		t.Fatalf("start postgres from %s: %v", dir, err)
	}
	version, err := dataDirVersion(dir)
	if err != nil {
		t.Fatalf("start postgres from %s: %v", dir, err)
	}
	if opts.Version != 0 && opts.Version != version {
		t.Fatalf("start postgres from %s: the directory is PostgreSQL %d, not %d", dir, version, opts.Version)
	}
	p := newPostgres(t, version)
	p.dataDir = dir
	p.readyTimeout = pgRecoveryTimeout
	for _, name := range sortedKeys(opts.Settings) {
		p.extraArgs = append(p.extraArgs, name+"="+opts.Settings[name])
	}
	if err := p.ChownToServer(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatalf("start postgres from %s: %v", dir, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), pgRecoveryTimeout)
	defer cancel()
	p.startFresh(t, ctx)
	return p
}

// newPostgres checks for the binaries of version, creates the harness directory for one
// cluster and registers its cleanup. The data directory defaults to <base>/data.
func newPostgres(t testing.TB, version int) *Postgres {
	t.Helper()
	component := "PostgreSQL " + strconv.Itoa(version)
	install, err := pgInstallFor(version)
	Require(t, component, err)
	owner, err := install.serverOwner()
	Require(t, component, err)

	base, err := newBaseDir(owner)
	if err != nil {
		t.Fatal(err)
	}
	p := &Postgres{
		install:      install,
		baseDir:      base,
		dataDir:      filepath.Join(base, "data"),
		logPath:      filepath.Join(base, pgLogFileName),
		hbaPath:      filepath.Join(base, pgHBAFileName),
		owner:        owner,
		readyTimeout: pgStartTimeout,
	}
	if err := p.writeHBA(); err != nil {
		_ = os.RemoveAll(base)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last %d lines of the PostgreSQL log %s:\n%s", pgLogTailLines, p.logPath, p.logTail(pgLogTailLines))
		}
		ctx, cancel := context.WithTimeout(context.Background(), pgStopTimeout)
		defer cancel()
		if err := p.Stop(ctx, "immediate"); err != nil {
			t.Errorf("cleanup: %v", err)
			p.kill()
		}
		if err := os.RemoveAll(base); err != nil {
			t.Errorf("cleanup: remove %s: %v", base, err)
		}
	})
	return p
}

// startFresh starts the server for the first time, retrying on another port when the
// free port was taken between FreePort and the server's bind.
func (p *Postgres) startFresh(t testing.TB, ctx context.Context) {
	t.Helper()
	var err error
	for range pgPortAttempts {
		p.port = FreePort(t)
		logStart := p.logSize()
		if err = p.Start(ctx); err == nil {
			return
		}
		if !p.bindFailedSince(logStart) {
			break
		}
	}
	t.Fatal(err)
}

// Port returns the TCP port the server listens on at 127.0.0.1.
func (p *Postgres) Port() int { return p.port }

// DataDir returns the cluster's data directory.
func (p *Postgres) DataDir() string { return p.dataDir }

// Version returns the server's major version, such as 17.
func (p *Postgres) Version() int { return p.install.major }

// Bin returns the path on the host of the PostgreSQL program name, such as "pg_waldump".
// For a version that runs inside a root filesystem that program cannot run on the host:
// use Command, which works for every version.
func (p *Postgres) Bin(name string) string { return p.install.hostPath(name) }

// Command prepares the PostgreSQL program name (such as "pg_waldump" or "pg_verifybackup")
// of this server's version to run as the caller's user where the server runs: on the host
// for 15, inside the version's root filesystem otherwise, where every path under
// os.TempDir() is the same as on the host. Its environment is the caller's without PG*
// variables; append Env() to reach this server.
func (p *Postgres) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return p.install.command(ctx, nil, p.install.program(name), args...)
}

// ServerSideCommand prepares any program, such as the kcbackup binary from KcbackupBinary,
// to run as the caller's user (root) where the server runs, as a user would run it in that
// server's container: program is a path there, and paths under os.TempDir() are the same
// as on the host. For 15 it is exec.CommandContext on the host.
func (p *Postgres) ServerSideCommand(ctx context.Context, program string, args ...string) *exec.Cmd {
	return p.install.command(ctx, nil, program, args...)
}

// ConnString returns a libpq URL for user and database db over TCP, without TLS and
// without a password.
func (p *Postgres) ConnString(user, db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(user),
		Host:     "127.0.0.1:" + strconv.Itoa(p.port),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Env returns the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE, PGSSLMODE) that
// points a child process at this cluster as the superuser. Append it to os.Environ():
// later entries win.
func (p *Postgres) Env() []string {
	return []string{
		"PGHOST=127.0.0.1",
		"PGPORT=" + strconv.Itoa(p.Port()),
		"PGUSER=" + PGSuperuser,
		"PGDATABASE=postgres",
		"PGSSLMODE=disable",
	}
}

// Log returns the server log written so far (the log survives restarts), or "" if none.
func (p *Postgres) Log() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	return string(b)
}

// Exec runs sql, which may hold several statements, as the superuser in database postgres.
func (p *Postgres) Exec(ctx context.Context, sql string) error {
	_, err := p.exec(ctx, sql)
	return err
}

// QueryString runs sql as the superuser in database postgres and returns, in text form,
// the first column of the first row of the last statement's result. A NULL is returned
// as "". It fails when that result has no row.
func (p *Postgres) QueryString(ctx context.Context, sql string) (string, error) {
	results, err := p.exec(ctx, sql)
	if err != nil {
		return "", err
	}
	if len(results) == 0 {
		return "", fmt.Errorf("query %q on port %d: no result", sql, p.Port())
	}
	last := results[len(results)-1]
	if len(last.Rows) == 0 || len(last.Rows[0]) == 0 {
		return "", fmt.Errorf("query %q on port %d: no rows", sql, p.Port())
	}
	return string(last.Rows[0][0]), nil
}

// QueryRow is QueryString under the name some callers look for.
func (p *Postgres) QueryRow(ctx context.Context, sql string) (string, error) {
	return p.QueryString(ctx, sql)
}

// exec runs sql over the simple query protocol, whose results are all text.
func (p *Postgres) exec(ctx context.Context, sql string) ([]*pgconn.Result, error) {
	conn, err := pgconn.Connect(ctx, p.ConnString(PGSuperuser, "postgres"))
	if err != nil {
		return nil, fmt.Errorf("connect to postgres on port %d: %w", p.Port(), err)
	}
	defer conn.Close(context.Background())
	results, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("exec %q on port %d: %w", sql, p.Port(), err)
	}
	return results, nil
}

// CreateRole creates a login role. With a password, the role must authenticate with
// scram-sha-256 over TCP for every database and for replication: CreateRole puts a line
// for it at the top of pg_hba.conf and waits until the server has reloaded the file.
// Without a password the role is trusted like every other. Name password roles with
// PGPasswordAuthPrefix ("pw_alice") so tests read clearly.
func (p *Postgres) CreateRole(ctx context.Context, name, password string, replication bool) error {
	if name == "" || strings.ContainsAny(name, "\"\n\r\t ,") {
		return fmt.Errorf("create role %q: the harness supports names without quotes, commas or spaces", name)
	}
	stmt := "CREATE ROLE " + quoteIdent(name) + " LOGIN"
	if replication {
		stmt += " REPLICATION"
	}
	if password != "" {
		// password_encryption defaults to scram-sha-256 in PostgreSQL 15.
		stmt += " PASSWORD " + quoteLiteral(password)
	}
	if err := p.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("create role %s: %w", name, err)
	}
	if password == "" {
		return nil
	}

	p.mu.Lock()
	p.passwordRole = append(p.passwordRole, name)
	p.mu.Unlock()
	if err := p.writeHBA(); err != nil {
		return fmt.Errorf("create role %s: %w", name, err)
	}
	if err := p.reload(ctx); err != nil {
		return fmt.Errorf("create role %s: %w", name, err)
	}
	return nil
}

// reload makes the server re-read its configuration files and waits until new sessions
// see the reload: a backend inherits pg_conf_load_time() from the postmaster, so a later
// value in a new session means the postmaster has processed the SIGHUP.
func (p *Postgres) reload(ctx context.Context) error {
	before, err := p.QueryString(ctx, "SELECT pg_conf_load_time()")
	if err != nil {
		return fmt.Errorf("reload configuration: %w", err)
	}
	if err := p.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		return fmt.Errorf("reload configuration: %w", err)
	}
	return p.poll(ctx, "reload configuration", func() (bool, error) {
		now, err := p.QueryString(ctx, "SELECT pg_conf_load_time() > "+quoteLiteral(before)+"::timestamptz")
		return now == "t", err
	})
}

// Start starts the server on its data directory and port, and waits until it accepts
// connections (at most one minute, two for StartFromDataDir). It fails if the server is
// already running. Use it after Stop to restart the same cluster.
func (p *Postgres) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc != nil {
		return fmt.Errorf("start postgres on port %d: already running", p.port)
	}
	logFile, err := os.OpenFile(p.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start postgres on port %d: %w", p.port, err)
	}
	defer logFile.Close() // the child holds its own descriptor

	// The harness settings come last: for a repeated -c the last one wins.
	args := []string{"-D", p.dataDir}
	for _, kv := range p.extraArgs {
		args = append(args, "-c", kv)
	}
	for _, kv := range []string{
		"port=" + strconv.Itoa(p.port),
		"listen_addresses=127.0.0.1",
		"unix_socket_directories=" + p.baseDir,
		"hba_file=" + p.hbaPath,
		"logging_collector=off",
	} {
		args = append(args, "-c", kv)
	}
	// Not ctx: it bounds the wait for readiness, not the server's life.
	cmd := p.install.command(context.Background(), p.owner, p.install.program("postgres"), args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// SIGQUIT is an immediate shutdown: the server does not outlive a crashed test binary.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres on port %d: %w", p.port, err)
	}
	proc := &serverProcess{cmd: cmd, exited: make(chan struct{})}
	go func() {
		proc.err = cmd.Wait()
		close(proc.exited)
	}()
	p.proc = proc

	if err := p.waitReady(ctx, proc); err != nil {
		return fmt.Errorf("start postgres on port %d: %w", p.port, err)
	}
	return nil
}

// waitReady polls until the server accepts a connection, it exits, or the timeout passes.
// The caller holds p.mu.
func (p *Postgres) waitReady(ctx context.Context, proc *serverProcess) error {
	ctx, cancel := context.WithTimeout(ctx, p.readyTimeout)
	defer cancel()
	connString := p.ConnString(PGSuperuser, "postgres")
	var lastErr error
	for {
		attemptCtx, attemptCancel := context.WithTimeout(ctx, pgConnectTimeout)
		conn, err := pgconn.Connect(attemptCtx, connString)
		attemptCancel()
		if err == nil {
			_ = conn.Close(ctx)
			return nil
		}
		lastErr = err
		select {
		case <-proc.exited:
			p.proc = nil
			return fmt.Errorf("server exited during startup (%v); last log lines:\n%s", proc.err, p.logTail(pgLogTailLines))
		case <-ctx.Done():
			return fmt.Errorf("not accepting connections: %w (last attempt: %v); last log lines:\n%s", ctx.Err(), lastErr, p.logTail(pgLogTailLines))
		case <-time.After(pgPollInterval):
		}
	}
}

// Stop shuts the server down and waits for it to exit. mode is "smart", "fast" (the
// usual clean shutdown) or "immediate", which skips the shutdown checkpoint like a crash
// does, so the next Start runs crash recovery (PostgreSQL docs, "Shutting Down the
// Server"). Stopping a stopped server does nothing.
func (p *Postgres) Stop(ctx context.Context, mode string) error {
	signals := map[string]syscall.Signal{
		"smart":     syscall.SIGTERM,
		"fast":      syscall.SIGINT,
		"immediate": syscall.SIGQUIT,
	}
	sig, ok := signals[mode]
	if !ok {
		return fmt.Errorf("stop postgres: unknown mode %q (want smart, fast or immediate)", mode)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	proc := p.proc
	if proc == nil {
		return nil
	}
	if err := proc.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop postgres on port %d (%s): %w", p.port, mode, err)
	}
	select {
	case <-proc.exited:
		p.proc = nil
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop postgres on port %d (%s): %w", p.port, mode, ctx.Err())
	}
}

// kill ends the postmaster with SIGKILL; its children notice and exit.
func (p *Postgres) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		return
	}
	_ = p.proc.cmd.Process.Kill()
	<-p.proc.exited
	p.proc = nil
}

// Promote ends recovery on a standby with pg_ctl promote and waits until the server
// accepts writes. PostgreSQL requests a checkpoint on promotion but does not wait for it:
// run CHECKPOINT before reading the new timeline from pg_control_checkpoint().
func (p *Postgres) Promote(ctx context.Context) error {
	out, err := p.serverUserCommand(ctx, "pg_ctl", "promote", "-D", p.dataDir, "-w", "-t", "60").CombinedOutput()
	if err != nil {
		return fmt.Errorf("promote postgres on port %d: %w: %s", p.Port(), err, bytes.TrimSpace(out))
	}
	if err := p.WaitPromoted(ctx); err != nil {
		return fmt.Errorf("promote postgres on port %d: %w", p.Port(), err)
	}
	return nil
}

// WaitPromoted waits, at most two minutes, until pg_is_in_recovery() is false: the end of
// archive recovery of a restored data directory, or of a promotion.
func (p *Postgres) WaitPromoted(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, pgRecoveryTimeout)
	defer cancel()
	return p.poll(ctx, "wait for the end of recovery", func() (bool, error) {
		inRecovery, err := p.QueryString(ctx, "SELECT pg_is_in_recovery()")
		return inRecovery == "f", err
	})
}

// poll calls done until it reports true, the server exits, or ctx ends. Errors from done
// are retried and reported only when giving up.
func (p *Postgres) poll(ctx context.Context, what string, done func() (bool, error)) error {
	var lastErr error
	for {
		ok, err := done()
		if ok && err == nil {
			return nil
		}
		if err != nil {
			lastErr = err
		}
		p.mu.Lock()
		proc := p.proc
		p.mu.Unlock()
		if proc == nil {
			return fmt.Errorf("%s on port %d: server is not running", what, p.Port())
		}
		select {
		case <-proc.exited:
			return fmt.Errorf("%s on port %d: server exited (%v); last log lines:\n%s", what, p.Port(), proc.err, p.logTail(pgLogTailLines))
		case <-ctx.Done():
			return fmt.Errorf("%s on port %d: %w (last error: %v)", what, p.Port(), ctx.Err(), lastErr)
		case <-time.After(pgPollInterval):
		}
	}
}

// Pgbench runs pgbench with args against this cluster as the superuser and returns its
// combined output: Pgbench(ctx, "-i", "-s", "1") initialises, Pgbench(ctx, "-T", "2")
// runs the default TPC-B-like script for two seconds.
func (p *Postgres) Pgbench(ctx context.Context, args ...string) (string, error) {
	cmd := p.Command(ctx, "pgbench", args...)
	cmd.Env = append(cmd.Env, p.Env()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("pgbench %s on port %d: %w: %s", strings.Join(args, " "), p.Port(), err, tail(string(out), 10))
	}
	return string(out), nil
}

// ChownToServer hands path, recursively, to the OS user the server runs as, and makes the
// parents of path that lie under os.TempDir() traversable by that user. Use it for
// directories the server's archive_command or restore_command must reach. It does nothing
// when the server runs as the current user.
func (p *Postgres) ChownToServer(path string) error {
	if p.owner == nil {
		return nil
	}
	if err := chownTree(path, p.owner); err != nil {
		return err
	}
	return makeTraversable(path, p.owner)
}

// serverUserCommand prepares a PostgreSQL program to run as the server's OS user, with a
// libpq environment free of the caller's PG* variables.
func (p *Postgres) serverUserCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := p.install.command(ctx, p.owner, p.install.program(name), args...)
	cmd.Dir = p.baseDir // the caller's working directory may be unreadable to that user
	return cmd
}

// appendConf appends settings to the data directory's postgresql.conf; later lines win.
func (p *Postgres) appendConf(settings map[string]string) error {
	path := filepath.Join(p.dataDir, "postgresql.conf")
	var b strings.Builder
	b.WriteString("\n# Added by the kcbackup test harness.\n")
	for _, name := range sortedKeys(settings) {
		if !validSettingName(name) {
			return fmt.Errorf("write %s: invalid setting name %q", path, name)
		}
		fmt.Fprintf(&b, "%s = %s\n", name, quoteConf(settings[name]))
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// validSettingName reports whether name is a configuration parameter name, custom ones
// ("ext.name") included.
func validSettingName(name string) bool {
	if name == "" || name[0] == '.' || (name[0] >= '0' && name[0] <= '9') {
		return false
	}
	for _, r := range name {
		ok := r == '_' || r == '.' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')
		if !ok {
			return false
		}
	}
	return true
}

// writeHBA replaces the harness's pg_hba.conf: first a scram-sha-256 line per password
// role, then trust for everything else from the socket and from 127.0.0.1. The first
// matching line decides (PostgreSQL docs, "The pg_hba.conf File"), so a password role
// never falls through to trust.
func (p *Postgres) writeHBA() error {
	p.mu.Lock()
	roles := slices.Clone(p.passwordRole)
	p.mu.Unlock()
	var b strings.Builder
	b.WriteString("# Written by the kcbackup test harness.\n")
	for _, role := range roles {
		fmt.Fprintf(&b, "host all,replication %s 127.0.0.1/32 scram-sha-256\n", role)
	}
	b.WriteString("local all,replication all trust\n")
	b.WriteString("host all,replication all 127.0.0.1/32 trust\n")

	tmp := p.hbaPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", p.hbaPath, err)
	}
	if err := os.Rename(tmp, p.hbaPath); err != nil {
		return fmt.Errorf("write %s: %w", p.hbaPath, err)
	}
	return nil
}

// logTail returns the last n lines of the server log.
func (p *Postgres) logTail(n int) string { return tail(p.Log(), n) }

// logSize returns the current length of the server log.
func (p *Postgres) logSize() int64 {
	st, err := os.Stat(p.logPath)
	if err != nil {
		return 0
	}
	return st.Size()
}

// bindFailedSince reports whether the log, from offset on, says the port was taken.
func (p *Postgres) bindFailedSince(offset int64) bool {
	f, err := os.Open(p.logPath)
	if err != nil {
		return false
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return false
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return false
	}
	return bytes.Contains(b, []byte("could not bind")) || bytes.Contains(b, []byte("Address already in use"))
}

// serverOwner returns the credential the server must run under: nil when the tests do not
// run as root, the postgres OS user's when they do (initdb and postgres refuse root).
func serverOwner() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(pgOSUser)
	if err != nil {
		return nil, fmt.Errorf("running as root needs the %q OS user to run the server: %w", pgOSUser, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parse uid %q of user %s: %w", u.Uid, pgOSUser, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parse gid %q of user %s: %w", u.Gid, pgOSUser, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// newBaseDir creates a 0755 directory under os.TempDir() owned by the server's OS user.
// Not t.TempDir(): its parent is 0700, which the postgres user could not traverse.
func newBaseDir(owner *syscall.Credential) (string, error) {
	dir, err := os.MkdirTemp("", "kcbackup-pg-")
	if err != nil {
		return "", fmt.Errorf("create postgres directory: %w", err)
	}
	fail := func(err error) (string, error) {
		_ = os.RemoveAll(dir)
		return "", fmt.Errorf("prepare postgres directory %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return fail(err)
	}
	if owner != nil {
		if err := os.Chown(dir, int(owner.Uid), int(owner.Gid)); err != nil {
			return fail(err)
		}
		if err := makeTraversable(dir, owner); err != nil {
			return fail(err)
		}
	}
	return dir, nil
}

// chownTree gives path and everything below it to owner, without following symlinks.
func chownTree(path string, owner *syscall.Credential) error {
	err := filepath.WalkDir(path, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(owner.Uid), int(owner.Gid))
	})
	if err != nil {
		return fmt.Errorf("chown %s to uid %d: %w", path, owner.Uid, err)
	}
	return nil
}

// makeTraversable checks that owner can search every parent of path. A parent it cannot
// search gets o+x when it is os.TempDir() or below it (as t.TempDir()'s 0700 parent is);
// anywhere else that is an error rather than a surprise chmod.
func makeTraversable(path string, owner *syscall.Credential) error {
	tmp, err := filepath.Abs(os.TempDir())
	if err != nil {
		return fmt.Errorf("resolve %s: %w", os.TempDir(), err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("resolve %s: %w", path, err)
	}
	for dir := filepath.Dir(abs); ; dir = filepath.Dir(dir) {
		st, err := os.Stat(dir)
		if err != nil {
			return fmt.Errorf("make %s reachable: %w", path, err)
		}
		if !searchable(st, owner) {
			if dir != tmp && !strings.HasPrefix(dir, tmp+string(filepath.Separator)) {
				return fmt.Errorf("make %s reachable: uid %d cannot search %s (mode %v) and it is outside %s", path, owner.Uid, dir, st.Mode().Perm(), tmp)
			}
			if err := os.Chmod(dir, st.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("make %s reachable: %w", path, err)
			}
		}
		if dir == filepath.Dir(dir) {
			return nil
		}
	}
}

// searchable reports whether owner may traverse the directory described by st.
func searchable(st fs.FileInfo, owner *syscall.Credential) bool {
	perm := st.Mode().Perm()
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return perm&0o001 != 0
	}
	switch {
	case sys.Uid == owner.Uid:
		return perm&0o100 != 0
	case sys.Gid == owner.Gid:
		return perm&0o010 != 0
	default:
		return perm&0o001 != 0
	}
}

// cleanEnv returns the process environment without PG* variables, so a developer's
// PGHOST or PGDATA never leaks into the programs the harness runs.
func cleanEnv() []string {
	env := os.Environ()
	return slices.DeleteFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "PG") })
}

// sortedKeys returns the keys of m in order, so generated files are stable.
func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// quoteLiteral quotes s as an SQL (and postgresql.conf) string literal.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// quoteConf quotes s as a postgresql.conf string, where a backslash starts an escape.
func quoteConf(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// quoteIdent quotes s as an SQL identifier.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
