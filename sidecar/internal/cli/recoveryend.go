package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/kcbackup/kcbackup/sidecar/internal/restore"
)

// ---- recovery-end ----

func newRecoveryEndCmd(g *globalOptions) *cobra.Command {
	var pgdata string
	cmd := &cobra.Command{
		Use:   "recovery-end [--pgdata DIR]",
		Short: "Remove a restore's recovery settings from postgresql.auto.conf once recovery has ended (run by PostgreSQL)",
		Long: `A restore sets recovery_end_command to this command. PostgreSQL runs it once, when the
restored cluster has ended recovery (recovery.signal is gone), in the data directory. It
removes the restore's settings from postgresql.auto.conf (restore_command, recovery_target_*,
recovery_end_command), keeping archive_mode = off and every other line, so a standby cloned
from the restored cluster inherits no old target. It finds them in the restore's block and,
when an ALTER SYSTEM during recovery rewrote the file without the block's comments, by
their values; a restore_command or recovery_end_command that runs kcbackup in another form
makes it fail (PostgreSQL logs a warning) and leaves the file as it was. The file is
replaced atomically. It refuses while recovery.signal exists.
It then removes pg_wal/kcbackup-prefetch (segments wal-fetch prefetched that recovery did
not need); its prefetcher stops when the directory is gone.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := restore.ClearRecoverySettings(pgdata)
			if err != nil {
				return err
			}
			if n == 0 {
				fmt.Fprintf(g.stderr, "kcbackup recovery-end: %s/postgresql.auto.conf holds no recovery settings of a kcbackup restore\n", pgdata)
			} else {
				fmt.Fprintf(g.stderr, "kcbackup recovery-end: removed %d lines of restore settings from %s/postgresql.auto.conf\n", n, pgdata)
			}
			removePrefetched(g, pgdata)
			return nil
		},
	}
	cmd.Flags().StringVar(&pgdata, "pgdata", ".", "the data directory (PostgreSQL runs recovery_end_command in it)")
	return cmd
}

// removePrefetched removes the prefetch directories of standalone restores. It renames
// the directory away first: a running prefetcher then finds its directory gone and stops,
// and as it creates files only by their paths under the old name, none can appear in the
// tree while it is removed. The files are copies of archived segments; on failure a
// warning (PostgreSQL logs it and goes on).
func removePrefetched(g *globalOptions, pgdata string) {
	dir := filepath.Join(pgdata, "pg_wal", "kcbackup-prefetch")
	if _, err := os.Stat(dir); err != nil {
		return
	}
	if err := removePrefetchDir(dir); err != nil {
		fmt.Fprintf(g.stderr, "kcbackup recovery-end: could not remove %s (%v); remove it by hand\n", dir, err)
	}
}
