package walarchive

import (
	"fmt"
	"strconv"
	"strings"
)

// PGVersion is what kcbackup relies on of one PostgreSQL major version's on-disk formats.
// Every fact kcbackup reads from WAL is here, one table per major version: a version
// missing from the table is refused (at `run`, at backup and at restore planning), never
// read with another version's layout.
type PGVersion struct {
	Major int
	// WALPageMagic is XLOG_PAGE_MAGIC (src/include/access/xlog_internal.h): it changes
	// whenever the WAL format does, so WAL of another version is recognised, not misread.
	WALPageMagic uint16
	// RecordHeaderLen is SizeOfXLogRecord (src/include/access/xlogrecord.h).
	RecordHeaderLen int
	// BlockRefHeaderLen is SizeOfXLogRecordBlockHeader; a block reference that is not
	// BKPBLOCK_SAME_REL is followed by a relation locator of RelLocatorLen bytes
	// (RelFileNode up to 15, RelFileLocator from 16 on: three OIDs in both).
	BlockRefHeaderLen int
	RelLocatorLen     int
	// XactTimeOffset is where xl_xact_commit / xl_xact_abort keep xact_time (TimestampTz,
	// microseconds since 2000-01-01) in the record's main data.
	XactTimeOffset int
}

// The versions kcbackup reads. Sources: src/include/access/xlog_internal.h
// (XLOG_PAGE_MAGIC) and xlogrecord.h of each release branch; the layouts the scanner
// relies on (record header, block reference headers, xl_xact_commit) are unchanged from 15
// to 19, and each version's WAL is checked against a real server's view of it in the tests
// (its own pg_waldump; pg_walinspect for 16, whose portable build ships no pg_waldump).
// 19's page magic was read off a real 19 server's WAL (Debian's 19~rc1-1: pg_control
// version 1905, catalog version 202610061).
var pgVersions = map[int]PGVersion{
	15: {Major: 15, WALPageMagic: 0xD110, RecordHeaderLen: 24, BlockRefHeaderLen: 4, RelLocatorLen: 12, XactTimeOffset: 0},
	16: {Major: 16, WALPageMagic: 0xD113, RecordHeaderLen: 24, BlockRefHeaderLen: 4, RelLocatorLen: 12, XactTimeOffset: 0},
	17: {Major: 17, WALPageMagic: 0xD116, RecordHeaderLen: 24, BlockRefHeaderLen: 4, RelLocatorLen: 12, XactTimeOffset: 0},
	18: {Major: 18, WALPageMagic: 0xD118, RecordHeaderLen: 24, BlockRefHeaderLen: 4, RelLocatorLen: 12, XactTimeOffset: 0},
	19: {Major: 19, WALPageMagic: 0xD122, RecordHeaderLen: 24, BlockRefHeaderLen: 4, RelLocatorLen: 12, XactTimeOffset: 0},
}

// MinPGVersion and MaxPGVersion bound the supported major versions.
const (
	MinPGVersion = 15
	MaxPGVersion = 19
)

// SupportedPGVersions names the supported versions for messages ("15, 16, 17, 18 and 19").
func SupportedPGVersions() string {
	var s []string
	for v := MinPGVersion; v <= MaxPGVersion; v++ {
		s = append(s, strconv.Itoa(v))
	}
	return strings.Join(s[:len(s)-1], ", ") + " and " + s[len(s)-1]
}

// LookupPGVersion returns the format table of a major version, or an error naming the
// versions this kcbackup supports.
func LookupPGVersion(major int) (PGVersion, error) {
	if v, ok := pgVersions[major]; ok {
		return v, nil
	}
	if major < MinPGVersion {
		return PGVersion{}, fmt.Errorf("PostgreSQL %d is not supported: kcbackup supports PostgreSQL %s", major, SupportedPGVersions())
	}
	return PGVersion{}, fmt.Errorf("PostgreSQL %d is not supported by this kcbackup: its WAL format is unknown to it (it reads PostgreSQL %s); use a kcbackup release that supports PostgreSQL %d", major, SupportedPGVersions(), major)
}

// ParseServerVersion returns the major version of a server_version string as PostgreSQL
// reports it: "15.18 (Debian 15.18-0+deb12u1)", "18.6", "18beta1", "17devel", "19rc1".
func ParseServerVersion(s string) (int, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	n, err := strconv.Atoi(t[:i])
	rest := t[i:]
	ok := err == nil && n >= 10 && (rest == "" || rest[0] == '.' || rest[0] == ' ' ||
		strings.HasPrefix(rest, "devel") || strings.HasPrefix(rest, "beta") || strings.HasPrefix(rest, "rc"))
	if !ok {
		return 0, fmt.Errorf("invalid server_version %q: expected a PostgreSQL version such as 18.1, 18beta1 or 17devel", s)
	}
	return n, nil
}
