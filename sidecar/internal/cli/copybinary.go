package cli

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
)

// newCopyBinaryCmd builds `kcbackup copy-binary DEST`: the operator's init container copies
// the binary into an emptyDir where image volumes are unavailable (OpenShift 4, Kubernetes
// before 1.36), so PostgreSQL's container and the restore Job can run it.
func newCopyBinaryCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "copy-binary DEST",
		Short: "Copy this kcbackup executable to DEST (the operator's init container)",
		Long: `copy-binary copies the running kcbackup executable to DEST, an absolute path whose
directory exists and is writable (an emptyDir), as a file of mode 0555: through a temporary
file in the same directory, fsynced and renamed, so DEST is never a partial binary. It runs
under any user ID and needs nothing but that directory to be writable. The operator runs it
in an init container where image volumes are unavailable (--binary-delivery init-container).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find this executable: %w", err)
			}
			return copyBinary(self, args[0])
		},
	}
}

// copyBinary copies src to dest (mode 0555) through a temporary file, fsync and rename.
func copyBinary(src, dest string) (err error) {
	if !filepath.IsAbs(dest) {
		return fmt.Errorf("invalid DEST %q: expected an absolute path", dest)
	}
	dir := filepath.Dir(dest)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("invalid DEST %q: its directory %s must exist (an emptyDir mount): %v", dest, dir, err)
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("read %s: %w", src, err)
	}
	defer in.Close()
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(dir, ".kcbackup-copy-"+hex.EncodeToString(rnd[:]))
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o700)
	if err != nil {
		return fmt.Errorf("write into %s: %w", dir, err)
	}
	defer func() {
		if err != nil {
			out.Close()
			os.Remove(tmp)
		}
	}()
	if _, err = io.Copy(out, in); err != nil {
		return fmt.Errorf("copy to %s: %w", tmp, err)
	}
	if err = out.Chmod(0o555); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err = out.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err = out.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err = os.Rename(tmp, dest); err != nil {
		return fmt.Errorf("rename to %s: %w", dest, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
