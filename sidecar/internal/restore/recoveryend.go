package restore

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// blockMarker starts the block of settings writeRecoveryConfig appends to
// postgresql.auto.conf; blockEnd is its last line.
const (
	blockMarker = "# Added by kcbackup restore at "
	blockEnd    = "archive_mode = off"
)

// recoveryOnly reports whether a setting of a kcbackup block matters only during recovery,
// so it can go once recovery has ended.
func recoveryOnly(name string) bool {
	return name == "restore_command" || name == "recovery_end_command" || strings.HasPrefix(name, "recovery_target")
}

// ClearRecoverySettings removes, from dir/postgresql.auto.conf, the recovery settings of
// every block a kcbackup restore appended (restore_command, recovery_target_*,
// recovery_end_command and the block's comments), keeping archive_mode = off and every
// line outside those blocks. PostgreSQL runs it as recovery_end_command, once recovery has
// ended and recovery.signal is gone: a standby cloned from the restored cluster then
// inherits no target, timeline or restore_command of an old restore. The file is replaced
// atomically; it reports how many lines it removed.
func ClearRecoverySettings(dir string) (int, error) {
	path := filepath.Join(dir, "postgresql.auto.conf")
	if _, err := os.Stat(filepath.Join(dir, "recovery.signal")); err == nil {
		return 0, fmt.Errorf("%s still has recovery.signal: recovery has not ended; refusing to change its recovery settings", dir)
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	var out bytes.Buffer
	removed, inBlock := 0, false
	lines := strings.SplitAfter(string(old), "\n")
	for _, line := range lines {
		text := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(text, blockMarker):
			inBlock = true
			removed++
			continue
		case inBlock && text == blockEnd:
			inBlock = false
		case inBlock && (strings.HasPrefix(text, "#") || recoveryOnly(settingName(text))):
			removed++
			continue
		}
		out.WriteString(line)
	}
	if removed == 0 {
		return 0, nil
	}
	tmp := path + ".kcbackup-tmp"
	os.Remove(tmp) // left by an earlier run that stopped half-way
	info, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	if err := writeSynced(tmp, out.Bytes(), info.Mode().Perm()); err != nil {
		os.Remove(tmp)
		return 0, fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return 0, fmt.Errorf("replace %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return removed, err
	}
	defer d.Close()
	return removed, unix.Fsync(int(d.Fd()))
}

// settingName returns the parameter a "name = value" line sets ("" for anything else).
func settingName(line string) string {
	name, _, ok := strings.Cut(line, "=")
	if !ok {
		return ""
	}
	return strings.ToLower(strings.TrimSpace(name))
}

func writeSynced(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
