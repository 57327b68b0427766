package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/kcbackup/kcbackup/walarchive"
)

// newCatCmd builds `kcbackup cat KEY`: any object's verified, decrypted, decompressed bytes.
func newCatCmd(g *globalOptions) *cobra.Command {
	var storageURL, output string
	cmd := &cobra.Command{
		Use:   "cat --storage URL [-o FILE] KEY",
		Short: "Print an archive object's plain bytes (decrypted, decompressed, verified)",
		Long: `cat prints the payload of the object stored under KEY (a key relative to the archive
root, as a listing of the archive shows them: backups/<ID>/backup.json,
backups/<ID>/base.tar, wal/00000001/000000010000000000000003, ...), decrypted with the
archive's identity when it is encrypted and checked against the object's SHA-256 and length.

To stdout, bytes are written before the check ends: trust them only when cat exits 0 (exit 1
means the object failed verification or is missing). With -o FILE, the bytes go to a
temporary file that is renamed to FILE only once verified.

Without kcbackup the same bytes come from: zstd -d < OBJECT, or for an encrypted archive
age -d -i KEY-FILE OBJECT | zstd -d (see docs/RECOVERY.md).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			a, err := openArchive(ctx, g, storageURL)
			if err != nil {
				return err
			}
			key := args[0]
			k := a.Key
			if key == walarchive.IdentityKey {
				k = nil // the archive's identity is never encrypted
			}
			if output == "" {
				if _, err := walarchive.GetObject(ctx, a.Storage, key, g.stdout, k); err != nil {
					return &ExitError{Code: 1, Err: err}
				}
				return nil
			}
			return catToFile(func(w io.Writer) error {
				_, err := walarchive.GetObject(ctx, a.Storage, key, w, k)
				return err
			}, output)
		},
	}
	cmd.Flags().StringVar(&storageURL, "storage", "", "archive location: "+walarchive.StorageURLForms)
	cmd.Flags().StringVarP(&output, "output", "o", "", "write to this file (renamed into place only once verified) instead of stdout")
	return cmd
}

// catToFile writes through get to a temporary file beside path and renames it to path
// only when get succeeded.
func catToFile(get func(io.Writer) error, path string) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return fmt.Errorf("--output %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if err := get(f); err != nil {
		f.Close()
		return &ExitError{Code: 1, Err: err}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("--output %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("--output %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("--output %s: %w", path, err)
	}
	return nil
}
