package cli

import (
	"os"
	"syscall"
)

func fileOwner(p string) (int, int, bool) {
	st, err := os.Stat(p)
	if err != nil {
		return 0, 0, false
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return int(sys.Uid), int(sys.Gid), true
}
