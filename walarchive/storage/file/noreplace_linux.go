package file

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// renameNoReplace moves tmp to p unless p exists (then an error wrapping fs.ErrExist).
// File systems without RENAME_NOREPLACE get link(2), which fails on an existing name too.
func renameNoReplace(tmp, p string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, p, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
		return linkNoReplace(tmp, p)
	}
	if err != nil {
		return &os.LinkError{Op: "renameat2", Old: tmp, New: p, Err: err}
	}
	return nil
}
