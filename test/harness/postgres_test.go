package harness

import (
	"context"
	"errors"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// testContext bounds one test's calls to the server.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// mustQuery returns QueryString's result or fails the test.
func mustQuery(t *testing.T, ctx context.Context, pg *Postgres, sql string) string {
	t.Helper()
	v, err := pg.QueryString(ctx, sql)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// mustExec runs Exec or fails the test.
func mustExec(t *testing.T, ctx context.Context, pg *Postgres, sql string) {
	t.Helper()
	if err := pg.Exec(ctx, sql); err != nil {
		t.Fatal(err)
	}
}

func TestPostgresStartsAndRoundTripsSQL(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	pg := StartPostgres(t, PGOptions{Settings: map[string]string{"track_commit_timestamp": "on"}})

	mustExec(t, ctx, pg, "CREATE TABLE kv (k text PRIMARY KEY, v int); INSERT INTO kv VALUES ('a', 42)")
	if got := mustQuery(t, ctx, pg, "SELECT v FROM kv WHERE k = 'a'"); got != "42" {
		t.Errorf("SELECT v = %q, want 42", got)
	}
	for setting, want := range map[string]string{
		"server_version_num":     "15",
		"wal_level":              "replica",
		"max_wal_senders":        "10",
		"max_replication_slots":  "10",
		"fsync":                  "on",
		"track_commit_timestamp": "on",
		"listen_addresses":       "127.0.0.1",
	} {
		if got := mustQuery(t, ctx, pg, "SHOW "+setting); !strings.HasPrefix(got, want) {
			t.Errorf("SHOW %s = %q, want %q", setting, got, want)
		}
	}
	if v, err := os.ReadFile(filepath.Join(pg.DataDir(), "PG_VERSION")); err != nil || strings.TrimSpace(string(v)) != "15" {
		t.Errorf("PG_VERSION = %q, %v; want 15", v, err)
	}
	if !strings.Contains(pg.Log(), "database system is ready to accept connections") {
		t.Errorf("server log lacks the ready message:\n%s", pg.Log())
	}

	// Env points child processes such as psql at the cluster.
	cmd := exec.CommandContext(ctx, pg.Bin("psql"), "-XAtc", "SELECT count(*) FROM kv")
	cmd.Env = append(os.Environ(), pg.Env()...)
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Errorf("psql with Env() = %q, %v; want 1", out, err)
	}
}

func TestPostgresWALSegmentSizeOneMiB(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	pg := StartPostgres(t, PGOptions{WALSegmentSizeMB: 1, DataChecksums: true})

	if got := mustQuery(t, ctx, pg, "SHOW wal_segment_size"); got != "1MB" {
		t.Errorf("SHOW wal_segment_size = %q, want 1MB", got)
	}
	if got := mustQuery(t, ctx, pg, "SHOW data_checksums"); got != "on" {
		t.Errorf("SHOW data_checksums = %q, want on", got)
	}
}

func TestPostgresImmediateStopKeepsCommittedData(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	pg := StartPostgres(t, PGOptions{})
	port := pg.Port()

	mustExec(t, ctx, pg, "CREATE TABLE t (i int); INSERT INTO t SELECT generate_series(1, 1000)")
	if err := pg.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	if err := pg.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("Exec succeeded on a stopped server")
	}
	if err := pg.Start(ctx); err != nil {
		t.Fatal(err)
	}

	if pg.Port() != port {
		t.Errorf("port after restart = %d, want %d", pg.Port(), port)
	}
	if got := mustQuery(t, ctx, pg, "SELECT count(*) FROM t"); got != "1000" {
		t.Errorf("rows after crash recovery = %s, want 1000", got)
	}
	if !strings.Contains(pg.Log(), "not properly shut down; automatic recovery in progress") {
		t.Errorf("server log shows no crash recovery:\n%s", pg.Log())
	}
}

func TestPostgresFastStopThenStartIsClean(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	pg := StartPostgres(t, PGOptions{})

	if err := pg.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	if err := pg.Stop(ctx, "fast"); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := pg.Stop(ctx, "sideways"); err == nil {
		t.Error("Stop accepted an unknown mode")
	}
	if err := pg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pg.Start(ctx); err == nil {
		t.Error("Start succeeded on a running server")
	}
	if strings.Contains(pg.Log(), "automatic recovery in progress") {
		t.Errorf("fast stop needed crash recovery:\n%s", pg.Log())
	}
}

func TestPostgresPgbenchInitialisesAndRuns(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	pg := StartPostgres(t, PGOptions{})

	if out, err := pg.Pgbench(ctx, "-i", "-s", "1"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := mustQuery(t, ctx, pg, "SELECT count(*) FROM pgbench_accounts"); got != "100000" {
		t.Errorf("pgbench_accounts rows = %s, want 100000", got)
	}
	out, err := pg.Pgbench(ctx, "-c", "2", "-t", "50")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "number of transactions actually processed: 100/100") {
		t.Errorf("pgbench output lacks 100/100 transactions:\n%s", out)
	}
	if got := mustQuery(t, ctx, pg, "SELECT count(*) FROM pgbench_history"); got != "100" {
		t.Errorf("pgbench_history rows = %s, want 100", got)
	}
}

func TestPostgresStandbyPromotesToTimelineTwo(t *testing.T) {
	t.Parallel()
	ForEachPGVersion(t, testStandbyPromotesToTimelineTwo)
}

func testStandbyPromotesToTimelineTwo(t *testing.T, version int) {
	ctx := testContext(t)
	primary := StartPostgres(t, PGOptions{Version: version})
	mustExec(t, ctx, primary, "CREATE TABLE t (i int); INSERT INTO t VALUES (1)")

	standby := StartStandby(t, primary, PGOptions{Settings: map[string]string{"hot_standby_feedback": "on"}})
	if standby.Port() == primary.Port() {
		t.Fatalf("standby shares the primary's port %d", primary.Port())
	}
	if got := mustQuery(t, ctx, standby, "SELECT pg_is_in_recovery()"); got != "t" {
		t.Fatalf("standby pg_is_in_recovery() = %s, want t", got)
	}
	if got := mustQuery(t, ctx, standby, "SHOW hot_standby_feedback"); got != "on" {
		t.Errorf("standby hot_standby_feedback = %s, want on", got)
	}

	// A row committed after the base backup arrives by streaming.
	mustExec(t, ctx, primary, "INSERT INTO t VALUES (2)")
	if err := standby.poll(ctx, "wait for replay", func() (bool, error) {
		n, err := standby.QueryString(ctx, "SELECT count(*) FROM t")
		return n == "2", err
	}); err != nil {
		t.Fatal(err)
	}

	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, standby, "CHECKPOINT; INSERT INTO t VALUES (3)")
	if got := mustQuery(t, ctx, standby, "SELECT timeline_id FROM pg_control_checkpoint()"); got != "2" {
		t.Errorf("timeline after promotion = %s, want 2", got)
	}
	if got := mustQuery(t, ctx, primary, "SELECT timeline_id FROM pg_control_checkpoint()"); got != "1" {
		t.Errorf("primary timeline = %s, want 1", got)
	}
}

func TestPostgresPasswordRoleNeedsItsPassword(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	pg := StartPostgres(t, PGOptions{})
	if err := pg.CreateRole(ctx, PGPasswordAuthPrefix+"alice", "s3cret'pw", true); err != nil {
		t.Fatal(err)
	}
	if err := pg.CreateRole(ctx, "bob", "", false); err != nil {
		t.Fatal(err)
	}

	withPassword := func(user, password string) string {
		u, err := url.Parse(pg.ConnString(user, "postgres"))
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.UserPassword(user, password)
		return u.String()
	}
	conn, err := pgconn.Connect(ctx, withPassword("pw_alice", "s3cret'pw"))
	if err != nil {
		t.Fatalf("connect with the right password: %v", err)
	}
	res, err := conn.Exec(ctx, "SELECT current_user, rolreplication FROM pg_roles WHERE rolname = current_user").ReadAll()
	conn.Close(ctx)
	if err != nil || len(res) != 1 || len(res[0].Rows) != 1 ||
		string(res[0].Rows[0][0]) != "pw_alice" || string(res[0].Rows[0][1]) != "t" {
		t.Errorf("session of pw_alice: %v, %v; want pw_alice with replication", res, err)
	}

	for name, connString := range map[string]string{
		"wrong password": withPassword("pw_alice", "wrong"),
		"no password":    pg.ConnString("pw_alice", "postgres"),
	} {
		_, err := pgconn.Connect(ctx, connString)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28P01" { // invalid_password
			t.Errorf("connect with %s: err = %v, want SQLSTATE 28P01", name, err)
		}
	}

	// Roles without a password stay trusted.
	conn, err = pgconn.Connect(ctx, pg.ConnString("bob", "postgres"))
	if err != nil {
		t.Fatalf("connect as trusted role bob: %v", err)
	}
	conn.Close(ctx)
}

func TestPostgresStartFromDataDirRunsArchiveRecovery(t *testing.T) {
	t.Parallel()
	ForEachPGVersion(t, testStartFromDataDirRunsArchiveRecovery)
}

func testStartFromDataDirRunsArchiveRecovery(t *testing.T, version int) {
	ctx := testContext(t)
	primary := StartPostgres(t, PGOptions{Version: version})
	mustExec(t, ctx, primary, "CREATE TABLE t (i int); INSERT INTO t SELECT generate_series(1, 10)")

	// A base backup written by the test process into t.TempDir(), whose parent is 0700:
	// StartFromDataDir must make it reachable and owned by the server's user.
	dir := filepath.Join(t.TempDir(), "restored")
	backup := primary.Command(ctx, "pg_basebackup", "-D", dir, "-X", "stream", "--checkpoint=fast", "--no-sync")
	backup.Env = append(backup.Env, primary.Env()...)
	if out, err := backup.CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(dir, "recovery.signal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}

	// Archive recovery replays the streamed WAL in pg_wal; restore_command finds nothing
	// more, so recovery ends and the server switches to timeline 2. The version comes
	// from the directory's PG_VERSION.
	restored := StartFromDataDir(t, dir, PGOptions{Settings: map[string]string{"restore_command": "false"}})
	if restored.Version() != version {
		t.Errorf("restored cluster runs PostgreSQL %d, want %d from PG_VERSION", restored.Version(), version)
	}
	if err := restored.WaitPromoted(ctx); err != nil {
		t.Fatal(err)
	}
	if restored.Port() == primary.Port() {
		t.Fatalf("restored cluster shares the primary's port %d", primary.Port())
	}
	if got := mustQuery(t, ctx, restored, "SELECT count(*) FROM t"); got != "10" {
		t.Errorf("restored rows = %s, want 10", got)
	}
	mustExec(t, ctx, restored, "CHECKPOINT")
	if got := mustQuery(t, ctx, restored, "SELECT timeline_id FROM pg_control_checkpoint()"); got != "2" {
		t.Errorf("restored timeline = %s, want 2", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "recovery.signal")); !os.IsNotExist(err) {
		t.Errorf("recovery.signal still present after recovery: %v", err)
	}
}

// Every version runs where its programs are, sees the host's temporary directory at the
// same path (so kcbackup's restore_command and data paths are valid), and leaves no mount
// in the test's own mount namespace.
func TestPostgresEachVersionSharesTheTempDirAndLeavesNoMount(t *testing.T) {
	t.Parallel()
	ForEachPGVersion(t, func(t *testing.T, version int) {
		ctx := testContext(t)
		pg := StartPostgres(t, PGOptions{Version: version})
		v := strconv.Itoa(version)
		if got := mustQuery(t, ctx, pg, "SHOW server_version_num"); !strings.HasPrefix(got, v) {
			t.Errorf("server_version_num = %s, want %s…", got, v)
		}
		if b, err := os.ReadFile(filepath.Join(pg.DataDir(), "PG_VERSION")); err != nil || strings.TrimSpace(string(b)) != v {
			t.Errorf("PG_VERSION = %q, %v; want %s", b, err, v)
		}

		// A file the test writes on the host is at the same path for the server and for
		// a command run where the server runs.
		dir := t.TempDir()
		path := filepath.Join(dir, "note")
		if err := os.WriteFile(path, []byte("host-side"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := pg.ChownToServer(dir); err != nil { // t.TempDir()'s parent is 0700
			t.Fatal(err)
		}
		if got := mustQuery(t, ctx, pg, "SELECT pg_read_file("+quoteLiteral(path)+")"); got != "host-side" {
			t.Errorf("server reads %s as %q, want host-side", path, got)
		}
		out, err := pg.ServerSideCommand(ctx, "/bin/cat", path).CombinedOutput()
		if err != nil || string(out) != "host-side" {
			t.Errorf("cat %s where the server runs = %q, %v; want host-side", path, out, err)
		}
		out, err = pg.Command(ctx, "pg_waldump", "--version").CombinedOutput()
		switch {
		case pg.install.portable != nil && pg.install.portable.own("pg_waldump"):
			t.Errorf("the portable PostgreSQL %s now ships pg_waldump: check it here", v)
		case pg.install.portable != nil: // no pg_waldump reads its WAL: running one names what is missing
			if err == nil || !strings.Contains(err.Error(), "pg_waldump") {
				t.Errorf("pg_waldump of the portable PostgreSQL %s = %q, %v; want an error naming pg_waldump", v, out, err)
			}
		case err != nil || !reportsMajor(out, version):
			t.Errorf("pg_waldump --version = %q, %v; want PostgreSQL %s", out, err, v)
		}

		// The root's mounts live in the server's own mount namespace, never in ours.
		if pg.install.root != "" {
			mounts, err := os.ReadFile("/proc/self/mountinfo")
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(mounts), pg.install.root) {
				t.Errorf("the test's mount table holds mounts under %s:\n%s", pg.install.root, mounts)
			}
		}
	})
}

func TestParsePGVersionsAcceptsKnownMajorsOnly(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
		err  string
	}{
		{in: "15,17,18", want: []int{15, 17, 18}},
		{in: " 18 ", want: []int{18}},
		{in: "15,16,19", want: []int{15, 16, 19}},
		{in: "15,14", err: `"14" is not a PostgreSQL major version`},
		{in: "20", err: `"20" is not a PostgreSQL major version`},
		{in: "17,17", err: "17 is listed twice"},
		{in: "seventeen", err: `"seventeen" is not`},
		{in: "15,", err: `"" is not`},
	} {
		got, err := ParsePGVersions(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParsePGVersions(%q) error = %v, want one containing %q", tc.in, err, tc.err)
		case tc.err == "" && (err != nil || !slices.Equal(got, tc.want)):
			t.Errorf("ParsePGVersions(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestQuoteConfEscapesQuotesAndBackslashes(t *testing.T) {
	for in, want := range map[string]string{
		"on":               `'on'`,
		"it's":             `'it''s'`,
		`cp %p /a\b`:       `'cp %p /a\\b'`,
		"FIRST 1 (s1, s2)": `'FIRST 1 (s1, s2)'`,
	} {
		if got := quoteConf(in); got != want {
			t.Errorf("quoteConf(%q) = %s, want %s", in, got, want)
		}
	}
}
