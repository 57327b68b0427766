package walarchive

import (
	"fmt"
	"path"
	"strconv"
	"strings"
)

// The archive's layout. Every object is framed (see object.go); completeness is decided
// by exact keys, never by listing: a backup exists when its record exists, a segment when
// its key exists.
//
//	identity.json                              the cluster this archive belongs to
//	wal/<TLI>.history                          timeline history files
//	wal/<TLI>/<segment>                        complete WAL segments
//	wal/<TLI>/<segment>.parts/<start>-<end>    the live tail as appended parts (format 3): bytes
//	                                           [start, end) of the segment, 8 hex digits each; also
//	                                           a segment cut short at the end of a timeline
//	wal/<TLI>/<segment>.partial                the whole tail as one object (format 2, read only)
//	backups/<ID>/base.tar, <OID>.tar            base backup archives (data directory, tablespaces)
//	backups/<ID>/backup_manifest               the server's backup manifest
//	backups/<ID>/backup.json                   the backup's record, written last
const (
	IdentityKey   = "identity.json"
	walPrefix     = "wal/"
	BackupsPrefix = "backups/"
	// BackupRecordName is the last object written for a backup.
	BackupRecordName = "backup.json"
)

// TimelineDir is the key prefix of timeline tli's segments.
func TimelineDir(tli uint32) string { return fmt.Sprintf("%s%08X/", walPrefix, tli) }

// SegmentKey is the key of a complete segment.
func SegmentKey(tli uint32, segno, segSize uint64) string {
	return TimelineDir(tli) + SegmentName(tli, segno, segSize)
}

// PartialKey is the key of a segment stored partially.
func PartialKey(tli uint32, segno, segSize uint64) string {
	return SegmentKey(tli, segno, segSize) + PartialSuffix
}

// PartsSuffix ends the name of the "directory" holding a segment's tail parts.
const PartsSuffix = ".parts"

// PartsDir is the key prefix of the tail parts of a segment.
func PartsDir(tli uint32, segno, segSize uint64) string {
	return SegmentKey(tli, segno, segSize) + PartsSuffix + "/"
}

// PartKey is the key of the part holding bytes [start, end) of a segment's tail.
func PartKey(tli uint32, segno, segSize, start, end uint64) string {
	return PartsDir(tli, segno, segSize) + fmt.Sprintf("%08X-%08X", start, end)
}

// parsePartName parses a part's name, "<start>-<end>" in 8 upper-case hex digits each, and
// checks 0 <= start < end <= segSize.
func parsePartName(name string, segSize uint64) (start, end uint64, err error) {
	if len(name) != 17 || name[8] != '-' || !isUpperHex(name[:8]) || !isUpperHex(name[9:]) {
		return 0, 0, fmt.Errorf("invalid tail part name %q: expected <start>-<end>, 8 upper-case hex digits each", name)
	}
	start, _ = strconv.ParseUint(name[:8], 16, 64)
	end, _ = strconv.ParseUint(name[9:], 16, 64)
	if start >= end || end > segSize {
		return 0, 0, fmt.Errorf("invalid tail part name %q: expected start < end <= the segment size %d", name, segSize)
	}
	return start, end, nil
}

// HistoryKey is the key of timeline tli's history file.
func HistoryKey(tli uint32) string { return walPrefix + HistoryFileName(tli) }

// BackupPrefix is the key prefix of one backup's objects.
func BackupPrefix(id string) string { return BackupsPrefix + id + "/" }

// BackupRecordKey is the key of one backup's record.
func BackupRecordKey(id string) string { return BackupPrefix(id) + BackupRecordName }

// ParseWALKey parses a key under wal/ back into what it holds.
func ParseWALKey(key string, segSize uint64) (WALFile, error) {
	rest, ok := strings.CutPrefix(key, walPrefix)
	if !ok {
		return WALFile{}, fmt.Errorf("key %q is not under %s", key, walPrefix)
	}
	dir, name := path.Split(rest)
	if segDir, ok := strings.CutSuffix(dir, PartsSuffix+"/"); ok {
		// wal/<TLI>/<segment>.parts/<start>-<end>
		tdir, segName := path.Split(segDir)
		tli, segno, err := ParseSegmentName(segName, segSize)
		if err != nil {
			return WALFile{}, fmt.Errorf("key %q: %w", key, err)
		}
		if want := fmt.Sprintf("%08X/", tli); tdir != want {
			return WALFile{}, fmt.Errorf("key %q: tail part of timeline %d stored under %q", key, tli, tdir)
		}
		start, end, err := parsePartName(name, segSize)
		if err != nil {
			return WALFile{}, fmt.Errorf("key %q: %w", key, err)
		}
		return WALFile{Kind: WALFilePart, Timeline: tli, SegNo: segno, PartStart: start, PartEnd: end}, nil
	}
	f, err := ParseWALFileName(name, segSize)
	if err != nil {
		return WALFile{}, fmt.Errorf("key %q: %w", key, err)
	}
	switch f.Kind {
	case WALFileHistory:
		if dir != "" {
			return WALFile{}, fmt.Errorf("key %q: history files live directly under %s", key, walPrefix)
		}
	case WALFileSegment, WALFilePartial:
		want := fmt.Sprintf("%08X/", f.Timeline)
		if dir != want {
			return WALFile{}, fmt.Errorf("key %q: segment of timeline %d stored under %q", key, f.Timeline, dir)
		}
	default:
		return WALFile{}, fmt.Errorf("key %q: unexpected file kind in the WAL archive", key)
	}
	return f, nil
}

// ValidateBackupID checks a backup ID: as NewBackupID makes them, "YYYYMMDDTHHMMSSZ" with an
// optional "-N" suffix, so IDs sort by time and are safe in keys and Kubernetes names.
func ValidateBackupID(id string) error {
	base, suffix, _ := strings.Cut(id, "-")
	if len(base) != 16 || base[8] != 'T' || base[15] != 'Z' {
		return fmt.Errorf("invalid backup ID %q: expected the form 20060102T150405Z", id)
	}
	for i, c := range base {
		if i == 8 || i == 15 {
			continue
		}
		if c < '0' || c > '9' {
			return fmt.Errorf("invalid backup ID %q: expected the form 20060102T150405Z", id)
		}
	}
	if suffix != "" {
		if n, err := strconv.Atoi(suffix); err != nil || n < 1 {
			return fmt.Errorf("invalid backup ID %q: the suffix after '-' must be a positive number", id)
		}
	}
	return nil
}
