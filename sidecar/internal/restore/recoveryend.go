package restore

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
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

// The values writeRecoveryConfig writes, as PostgreSQL reads them back (unquoted). They
// are how ClearRecoverySettings recognises kcbackup's settings in a file ALTER SYSTEM
// rewrote: PostgreSQL then writes every setting again as name = 'value' and drops every
// comment, the block's marker included ("ALTER SYSTEM" in the PostgreSQL documentation).
var (
	// shellWord is one word as ShellQuote writes it.
	shellWord = `'(?:[^']|'\\'')*'`
	// ourRestoreCommand: [PrefetchedFastPath] 'KCBACKUP' 'wal-fetch' 'ARG'... %f %p
	ourRestoreCommand = regexp.MustCompile(`^(?:mv -f ` + shellWord + `/%f %p 2>/dev/null \|\| )?` +
		shellWord + ` 'wal-fetch'(?: ` + shellWord + `)* %f %p$`)
	// ourRecoveryEndCommand: 'KCBACKUP' recovery-end
	ourRecoveryEndCommand = regexp.MustCompile(`^` + shellWord + ` recovery-end$`)
	// ourTargetValues: for each recovery_target* setting, the values a restore writes.
	ourTargetValues = map[string]*regexp.Regexp{
		"recovery_target":           regexp.MustCompile(`^(|immediate)$`),
		"recovery_target_lsn":       regexp.MustCompile(`^(|[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8})$`),
		"recovery_target_name":      regexp.MustCompile(`^$`),
		"recovery_target_xid":       regexp.MustCompile(`^$`),
		"recovery_target_time":      regexp.MustCompile(`^(|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,6})?[+-]\d\d:\d\d)$`),
		"recovery_target_inclusive": regexp.MustCompile(`^on$`),
		"recovery_target_action":    regexp.MustCompile(`^promote$`),
		"recovery_target_timeline":  regexp.MustCompile(`^(latest|[0-9]+)$`),
	}
)

// ClearRecoverySettings removes kcbackup's recovery settings from dir/postgresql.auto.conf:
// restore_command, recovery_target_* and recovery_end_command as a restore wrote them, and
// the comments of its block, keeping archive_mode = off and every other line. PostgreSQL
// runs it as recovery_end_command, once recovery has ended and recovery.signal is gone: a
// standby cloned from the restored cluster then inherits no target, timeline or
// restore_command of an old restore.
//
// The settings are recognised inside the block a restore appended and, as an ALTER SYSTEM
// during recovery rewrites the file without comments, anywhere by their values: a
// restore_command that runs kcbackup wal-fetch and a recovery_end_command that runs
// kcbackup recovery-end in the form a restore writes them; once one of them (or a block)
// is found, every recovery_target* setting with a value a restore writes. A
// restore_command or recovery_end_command that names kcbackup but not in that form is an
// error, and the file is left as it was: kcbackup cannot tell whose it is.
//
// The file is replaced atomically (temporary file, fsync, rename, fsync of dir); it
// reports how many lines it removed, 0 when there was nothing to remove.
func ClearRecoverySettings(dir string) (int, error) {
	path := filepath.Join(dir, "postgresql.auto.conf")
	if _, err := os.Stat(filepath.Join(dir, "recovery.signal")); err == nil {
		return 0, fmt.Errorf("%s still has recovery.signal: recovery has not ended; refusing to change its recovery settings", dir)
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	out, removed, err := clearRecoverySettings(string(old))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	if removed == 0 {
		return 0, nil
	}
	if err := replaceFile(dir, path, []byte(out)); err != nil {
		return 0, err
	}
	return removed, nil
}

// clearRecoverySettings returns conf without kcbackup's recovery settings (see
// ClearRecoverySettings) and how many lines it removed.
func clearRecoverySettings(conf string) (string, int, error) {
	lines := strings.SplitAfter(conf, "\n")
	// Pass 1: is this a file a kcbackup restore set recovery up in?
	ours := false
	for _, line := range lines {
		text := strings.TrimSpace(line)
		if strings.HasPrefix(text, blockMarker) {
			ours = true
			continue
		}
		name, value, ok := parseSetting(text)
		if !ok {
			continue
		}
		mine, err := commandIsOurs(name, value)
		if err != nil {
			return "", 0, fmt.Errorf("%w in line %q", err, text)
		}
		ours = ours || mine
	}
	if !ours {
		return conf, 0, nil
	}
	// Pass 2: keep everything but kcbackup's lines.
	var out strings.Builder
	removed, inBlock := 0, false
	for _, line := range lines {
		text := strings.TrimSpace(line)
		name, value, isSetting := parseSetting(text)
		drop := false
		switch {
		case strings.HasPrefix(text, blockMarker):
			inBlock, drop = true, true
		case inBlock && text == blockEnd:
			inBlock = false
		case inBlock && strings.HasPrefix(text, "#"):
			drop = true
		case isSetting && inBlock && recoveryOnly(name):
			drop = true
		case isSetting && (name == "restore_command" || name == "recovery_end_command"):
			drop, _ = commandIsOurs(name, value)
		case isSetting && ourTargetValues[name] != nil:
			drop = ourTargetValues[name].MatchString(value)
		}
		if drop {
			removed++
			continue
		}
		out.WriteString(line)
	}
	return out.String(), removed, nil
}

// commandIsOurs reports whether a restore_command or recovery_end_command value is the one
// a kcbackup restore writes; it fails for one that names kcbackup in another form.
func commandIsOurs(name, value string) (bool, error) {
	var ours *regexp.Regexp
	var mark string
	switch name {
	case "restore_command":
		ours, mark = ourRestoreCommand, "wal-fetch"
	case "recovery_end_command":
		ours, mark = ourRecoveryEndCommand, "recovery-end"
	default:
		return false, nil
	}
	if ours.MatchString(value) {
		return true, nil
	}
	if strings.Contains(value, mark) || strings.Contains(value, "kcbackup") {
		return false, fmt.Errorf("%s %q runs kcbackup but not as a kcbackup restore writes it: cannot tell whether it is a restore's setting; remove it by hand (ALTER SYSTEM RESET %s)", name, value, name)
	}
	return false, nil
}

// parseSetting parses a postgresql.conf line "name = value" or "name value", with an
// optional trailing comment, into the lower-cased name and the value as PostgreSQL reads
// it: a quoted value unquoted (doubled quotes and backslash escapes, "Parameter Interaction via the
// Configuration File" in the PostgreSQL documentation). ok is false for blank lines,
// comments and anything else.
func parseSetting(line string) (name, value string, ok bool) {
	i := 0
	for i < len(line) && (isNameByte(line[i]) || (i > 0 && line[i] == '.')) {
		i++
	}
	if i == 0 || (line[0] >= '0' && line[0] <= '9') {
		return "", "", false
	}
	name = strings.ToLower(line[:i])
	rest := strings.TrimLeft(line[i:], " \t")
	if strings.HasPrefix(rest, "=") {
		rest = strings.TrimLeft(rest[1:], " \t")
	}
	if !strings.HasPrefix(rest, "'") {
		v, _, _ := strings.Cut(rest, "#")
		return name, strings.TrimSpace(v), true
	}
	var b strings.Builder
	for j := 1; j < len(rest); j++ {
		c := rest[j]
		switch {
		case c == '\'' && j+1 < len(rest) && rest[j+1] == '\'':
			b.WriteByte('\'')
			j++
		case c == '\'':
			return name, b.String(), true
		case c == '\\' && j+1 < len(rest):
			j++
			switch e := rest[j]; e {
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			default:
				b.WriteByte(e)
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", "", false // unterminated quote
}

func isNameByte(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

// replaceFile replaces path (in dir) by data: a temporary file beside it, fsynced, renamed
// over it, and dir fsynced, so a crash leaves either the old or the new file.
func replaceFile(dir, path string, data []byte) error {
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	tmp := path + ".kcbackup-tmp"
	os.Remove(tmp) // left by an earlier run that stopped half-way
	if err := writeSynced(tmp, data, info.Mode().Perm()); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("replace %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := unix.Fsync(int(d.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
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
