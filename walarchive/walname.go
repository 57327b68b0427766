package walarchive

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Segment sizes PostgreSQL accepts (initdb --wal-segsize): powers of two from 1 MiB to 1 GiB.
const (
	MinSegmentSize     = 1 << 20
	MaxSegmentSize     = 1 << 30
	DefaultSegmentSize = 16 << 20
)

// ValidateSegmentSize reports whether size is a WAL segment size PostgreSQL can use.
func ValidateSegmentSize(size uint64) error {
	if size < MinSegmentSize || size > MaxSegmentSize || size&(size-1) != 0 {
		return fmt.Errorf("invalid WAL segment size %d: expected a power of two from 1 MiB to 1 GiB", size)
	}
	return nil
}

// segmentsPerXLogID is how many segments share one "xlogid" (the middle 8 hex digits).
func segmentsPerXLogID(segSize uint64) uint64 { return 0x100000000 / segSize }

// SegmentName is the WAL file name of segment segno on timeline tli, as in pg_wal:
// 24 hex digits, timeline + high + low part of the segment number.
func SegmentName(tli uint32, segno, segSize uint64) string {
	per := segmentsPerXLogID(segSize)
	return fmt.Sprintf("%08X%08X%08X", tli, segno/per, segno%per)
}

// ParseSegmentName parses a 24-hex-digit WAL segment file name.
func ParseSegmentName(name string, segSize uint64) (tli uint32, segno uint64, err error) {
	if len(name) != 24 || !isUpperHex(name) {
		return 0, 0, fmt.Errorf("invalid WAL segment name %q: expected 24 upper-case hex digits", name)
	}
	t, _ := strconv.ParseUint(name[0:8], 16, 32)
	hi, _ := strconv.ParseUint(name[8:16], 16, 32)
	lo, _ := strconv.ParseUint(name[16:24], 16, 32)
	per := segmentsPerXLogID(segSize)
	if t == 0 {
		return 0, 0, fmt.Errorf("invalid WAL segment name %q: timeline 0 does not exist", name)
	}
	if lo >= per {
		return 0, 0, fmt.Errorf("invalid WAL segment name %q: low part %X is out of range for %d-byte segments (max %X)", name, lo, segSize, per-1)
	}
	return uint32(t), hi*per + lo, nil
}

// HistoryFileName is the name of timeline tli's history file, e.g. "00000002.history".
func HistoryFileName(tli uint32) string { return fmt.Sprintf("%08X.history", tli) }

// ParseHistoryFileName parses "XXXXXXXX.history".
func ParseHistoryFileName(name string) (uint32, error) {
	base, ok := strings.CutSuffix(name, ".history")
	if !ok || len(base) != 8 || !isUpperHex(base) {
		return 0, fmt.Errorf("invalid timeline history file name %q: expected 8 upper-case hex digits and .history", name)
	}
	t, _ := strconv.ParseUint(base, 16, 32)
	if t == 0 {
		return 0, fmt.Errorf("invalid timeline history file name %q: timeline 0 does not exist", name)
	}
	return uint32(t), nil
}

// PartialSuffix marks a segment that was cut short (end of a timeline, or the live tail).
const PartialSuffix = ".partial"

// BackupLabelFileName is the name PostgreSQL gives a backup history file:
// "<segment>.<offset 8 hex>.backup".
func BackupLabelFileName(tli uint32, start LSN, segSize uint64) string {
	return fmt.Sprintf("%s.%08X.backup", SegmentName(tli, start.SegmentNo(segSize), segSize), start.SegmentOffset(segSize))
}

// WALFileKind says what a file name PostgreSQL asks restore_command for refers to.
type WALFileKind int

// The kinds of WAL file names.
const (
	WALFileSegment WALFileKind = iota + 1
	WALFileHistory
	WALFilePartial
	WALFileBackupLabel
	// WALFilePart is one part of a segment's tail (an archive key only, never a name
	// restore_command is asked for).
	WALFilePart
)

// WALFile is a parsed WAL file name.
type WALFile struct {
	Kind     WALFileKind
	Timeline uint32
	SegNo    uint64 // segment files, partials, parts and backup labels
	// PartStart and PartEnd are the byte range of the segment a part holds (WALFilePart).
	PartStart, PartEnd uint64
}

// ErrInvalidName is matched (errors.Is) by every error ParseWALFileName returns.
var ErrInvalidName = errors.New("invalid WAL file name")

type nameError struct{ err error }

func (e nameError) Error() string        { return e.err.Error() }
func (e nameError) Is(target error) bool { return target == ErrInvalidName }

// ParseWALFileName parses any name restore_command may be asked for: a segment, a
// "<segment>.partial", a "<tli>.history" or a "<segment>.<offset>.backup". Its errors match
// ErrInvalidName.
func ParseWALFileName(name string, segSize uint64) (WALFile, error) {
	f, err := parseWALFileName(name, segSize)
	if err != nil {
		return WALFile{}, nameError{err}
	}
	return f, nil
}

func parseWALFileName(name string, segSize uint64) (WALFile, error) {
	switch {
	case strings.HasSuffix(name, ".history"):
		tli, err := ParseHistoryFileName(name)
		return WALFile{Kind: WALFileHistory, Timeline: tli}, err
	case strings.HasSuffix(name, PartialSuffix):
		tli, segno, err := ParseSegmentName(strings.TrimSuffix(name, PartialSuffix), segSize)
		return WALFile{Kind: WALFilePartial, Timeline: tli, SegNo: segno}, err
	case strings.HasSuffix(name, ".backup") && len(name) == 24+1+8+len(".backup"):
		if !isUpperHex(name[25:33]) || name[24] != '.' {
			return WALFile{}, fmt.Errorf("invalid backup history file name %q: expected <segment>.<8 hex digits>.backup", name)
		}
		tli, segno, err := ParseSegmentName(name[:24], segSize)
		return WALFile{Kind: WALFileBackupLabel, Timeline: tli, SegNo: segno}, err
	default:
		tli, segno, err := ParseSegmentName(name, segSize)
		if err != nil {
			return WALFile{}, fmt.Errorf("invalid WAL file name %q: expected a 24-hex-digit segment name, <segment>.partial, <timeline>.history or <segment>.<offset>.backup", name)
		}
		return WALFile{Kind: WALFileSegment, Timeline: tli, SegNo: segno}, nil
	}
}

// IsSegmentName reports whether name has the form of a WAL segment name (24 upper-case hex
// digits), without knowing the segment size.
func IsSegmentName(name string) bool { return len(name) == 24 && isUpperHex(name) }

func isUpperHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}
