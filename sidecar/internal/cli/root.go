// Package cli builds the kcbackup command line: the `run` daemon, the read-only `serve` and the one-shot
// commands (wal-fetch, backup, list, restore, verify, prune, cat). Every flag can also be set
// with an environment variable KCBACKUP_<FLAG> (dashes become underscores); a flag given on
// the command line wins. Secrets are never flags.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/walarchive"
)

// ExitRestoreUntouched is restore's exit status when it refused or failed before touching
// the data directory; the operator then scales PostgreSQL and Keycloak back up.
const ExitRestoreUntouched = apiclient.ExitRestoreUntouched

// ExitError carries a specific exit status.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// Execute runs the command line and returns the process exit status.
func Execute(ctx context.Context, version string, args []string, stdout, stderr io.Writer) int {
	root := newRoot(version, stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		if ee.Err != nil {
			fmt.Fprintln(stderr, "kcbackup:", ee.Err)
		}
		return ee.Code
	}
	fmt.Fprintln(stderr, "kcbackup:", err)
	return 2
}

type globalOptions struct {
	logLevel  string
	logFormat string
	keyFile   string
	rcptFile  string
	stdout    io.Writer
	stderr    io.Writer
}

func newRoot(version string, stdout, stderr io.Writer) *cobra.Command {
	g := &globalOptions{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "kcbackup",
		Short: "Continuous WAL archiving and point-in-time restore for PostgreSQL",
		Long: `kcbackup streams PostgreSQL's WAL over the replication protocol to S3 or a volume with an
archive lag of about a second, takes base backups over the same protocol, and restores a
cluster to any second of its recovery window.

Every flag can also be set with an environment variable KCBACKUP_<FLAG>, dashes as
underscores (for example KCBACKUP_STORAGE, KCBACKUP_PARTIAL_INTERVAL); a flag on the command
line wins. PostgreSQL connection settings come from the libpq variables (PGHOST, PGPORT,
PGUSER, PGPASSWORD, PGSSLMODE, PGPASSFILE, ...) or --pg-url. S3 credentials come from the
AWS chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, web identity, ...).`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.PersistentFlags().StringVar(&g.keyFile, "encryption-key-file", "", "age identity file (AGE-SECRET-KEY-1..., from age-keygen): encrypts a new archive to its public key, and is required to read an encrypted one")
	root.PersistentFlags().StringVar(&g.rcptFile, "encryption-recipient-file", "", "age recipients file (age1... public keys, one a line): the keys objects are encrypted to; alone, it lets this process archive without being able to read (no restores; after a restart, the segment in progress is archived only when complete)")
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		return bindEnv(cmd)
	}
	root.AddCommand(
		newRunCmd(g),
		newServeCmd(g),
		newWALFetchCmd(g),
		newBackupCmd(g),
		newListCmd(g),
		newRestoreCmd(g),
		newVerifyCmd(g),
		newPruneCmd(g),
		newCatCmd(g),
		newRecoveryEndCmd(g),
		newCopyBinaryCmd(),
	)
	return root
}

// bindEnv sets every flag not given on the command line from KCBACKUP_<FLAG>.
func bindEnv(cmd *cobra.Command) error {
	var firstErr error
	visit := func(f *pflag.Flag) {
		if firstErr != nil || f.Changed || f.Name == "help" || f.Name == "version" {
			return
		}
		env := "KCBACKUP_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v, ok := os.LookupEnv(env)
		if !ok {
			return
		}
		if err := f.Value.Set(v); err != nil {
			firstErr = fmt.Errorf("invalid %s %q: %v (it sets --%s: %s)", env, v, err, f.Name, f.Usage)
		}
	}
	cmd.Flags().VisitAll(visit)
	cmd.InheritedFlags().VisitAll(visit)
	return firstErr
}

// key loads the encryption key, if one is configured.
func (g *globalOptions) key() (walarchive.Key, error) {
	k, err := walarchive.LoadKeyFiles(g.keyFile, g.rcptFile)
	if err != nil {
		return nil, fmt.Errorf("--encryption-key-file/--encryption-recipient-file: %w", err)
	}
	return k, nil
}

// keyFileAbs is the key file's absolute path, for restore_command.
func (g *globalOptions) keyFileAbs() string {
	if g.keyFile == "" {
		return ""
	}
	if abs, err := filepath.Abs(g.keyFile); err == nil {
		return abs
	}
	return g.keyFile
}

func (g *globalOptions) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("invalid --log-level %q: expected debug, info, warn or error", g.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch g.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(g.stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(g.stderr, opts)), nil
	}
	return nil, fmt.Errorf("invalid --log-format %q: expected text or json", g.logFormat)
}
