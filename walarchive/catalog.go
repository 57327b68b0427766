package walarchive

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// BackupObject is one stored object of a base backup.
type BackupObject struct {
	// Name is the object's name inside the backup ("base.tar", "16384.tar", "backup_manifest").
	Name string `json:"name"`
	// Location is the tablespace directory an archive belongs to (empty for base.tar).
	Location    string `json:"location,omitempty"`
	RawBytes    uint64 `json:"rawBytes"`
	StoredBytes uint64 `json:"storedBytes"`
	// SHA256 is the hex SHA-256 of the uncompressed bytes.
	SHA256 string `json:"sha256"`
}

// BackupRecord describes a complete base backup. It is the last object written for a
// backup: a backup exists exactly when its record does.
type BackupRecord struct {
	FormatVersion    int            `json:"formatVersion"`
	ID               string         `json:"id"`
	Label            string         `json:"label"`
	SystemIdentifier string         `json:"systemIdentifier"`
	PostgresVersion  int            `json:"postgresVersion"`
	Timeline         uint32         `json:"timeline"`
	StartLSN         LSN            `json:"startLSN"`
	StopLSN          LSN            `json:"stopLSN"`
	StartTime        time.Time      `json:"startTime"`
	StopTime         time.Time      `json:"stopTime"`
	Objects          []BackupObject `json:"objects"`
	// CompressedBy says who compressed the data: CompressedByServer (BASE_BACKUP's
	// COMPRESSION), CompressedByClient (kcbackup, asked for or because the server was built
	// without zstd) or CompressedByNone; empty in records written before it was kept.
	CompressedBy string `json:"compressedBy,omitempty"`
}

// The values of BackupRecord.CompressedBy.
const (
	CompressedByServer = "server"
	CompressedByClient = "client"
	CompressedByNone   = "none"
)

// DataBytes is the backup's uncompressed size.
func (b BackupRecord) DataBytes() uint64 {
	var n uint64
	for _, o := range b.Objects {
		n += o.RawBytes
	}
	return n
}

// StoredBytes is the backup's size in storage.
func (b BackupRecord) StoredBytes() uint64 {
	var n uint64
	for _, o := range b.Objects {
		n += o.StoredBytes
	}
	return n
}

// Validate checks a record read from storage.
func (b BackupRecord) Validate() error {
	if err := ValidateBackupID(b.ID); err != nil {
		return err
	}
	switch {
	case b.Timeline == 0:
		return fmt.Errorf("backup %s: timeline 0", b.ID)
	case b.StopLSN < b.StartLSN:
		return fmt.Errorf("backup %s: stop LSN %s before start LSN %s", b.ID, b.StopLSN, b.StartLSN)
	case b.StopTime.Before(b.StartTime):
		return fmt.Errorf("backup %s: stop time before start time", b.ID)
	case len(b.Objects) == 0:
		return fmt.Errorf("backup %s: no objects", b.ID)
	}
	for _, o := range b.Objects {
		if err := storage.ValidateKey(o.Name); err != nil || strings.Contains(o.Name, "/") {
			return fmt.Errorf("backup %s: invalid object name %q", b.ID, o.Name)
		}
	}
	return nil
}

// NewBackupID returns an ID for a backup started at t that is not taken yet.
func NewBackupID(ctx context.Context, st storage.Storage, t time.Time) (string, error) {
	base := t.UTC().Format("20060102T150405Z")
	for i := 0; i < 100; i++ {
		id := base
		if i > 0 {
			id = fmt.Sprintf("%s-%d", base, i)
		}
		objs, err := st.List(ctx, BackupPrefix(id))
		if err != nil {
			return "", fmt.Errorf("choose backup ID: %w", err)
		}
		if len(objs) == 0 {
			return id, nil
		}
	}
	return "", fmt.Errorf("choose backup ID: 100 backups already started at %s", base)
}

// Backups lists the complete backups, oldest first. A backup directory without a record
// (killed halfway, or still running) is not a backup and is not listed. A record that
// fails verification is reported in problems, not listed.
func (a *Archive) Backups(ctx context.Context) (backups []BackupRecord, problems []error, err error) {
	objs, err := a.Storage.List(ctx, BackupsPrefix)
	if err != nil {
		return nil, nil, fmt.Errorf("list backups: %w", err)
	}
	for _, o := range objs {
		id, name, ok := strings.Cut(strings.TrimPrefix(o.Key, BackupsPrefix), "/")
		if !ok || name != BackupRecordName {
			continue
		}
		rec, err := a.Backup(ctx, id)
		if err != nil {
			problems = append(problems, err)
			continue
		}
		backups = append(backups, rec)
	}
	sort.Slice(backups, func(i, j int) bool { return backups[i].StopLSN < backups[j].StopLSN })
	return backups, problems, nil
}

// Backup reads and checks one backup's record.
func (a *Archive) Backup(ctx context.Context, id string) (BackupRecord, error) {
	if err := ValidateBackupID(id); err != nil {
		return BackupRecord{}, err
	}
	var rec BackupRecord
	if err := a.GetJSON(ctx, BackupRecordKey(id), &rec); err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return BackupRecord{}, fmt.Errorf("backup %s: no such complete backup in the archive", id)
		}
		return BackupRecord{}, fmt.Errorf("backup %s: %w", id, err)
	}
	if rec.ID != id {
		return BackupRecord{}, fmt.Errorf("backup %s: %w: record names backup %q", id, ErrCorrupt, rec.ID)
	}
	if err := rec.Validate(); err != nil {
		return BackupRecord{}, fmt.Errorf("%s: %w: %v", BackupRecordKey(id), ErrCorrupt, err)
	}
	return rec, nil
}

// Timelines lists the timelines that have WAL or a history file in the archive, ascending.
func (a *Archive) Timelines(ctx context.Context) ([]uint32, error) {
	objs, err := a.Storage.List(ctx, walPrefix)
	if err != nil {
		return nil, fmt.Errorf("list WAL: %w", err)
	}
	seen := map[uint32]bool{}
	for _, o := range objs {
		f, err := ParseWALKey(o.Key, a.SegmentSize())
		if err == nil {
			seen[f.Timeline] = true
		}
	}
	var out []uint32
	for t := range seen {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// WALPath maps segment numbers to the timeline whose copy of the segment recovery to
// target timeline reads: the newest timeline in target's history that began at or before
// the segment (PostgreSQL's XLogFileReadAnyTLI does the same).
type WALPath struct {
	Target  uint32
	History TimelineHistory
	segSize uint64
}

// Path returns the WAL path to timeline target.
func (a *Archive) Path(ctx context.Context, target uint32) (WALPath, error) {
	h, err := a.History(ctx, target)
	if err != nil {
		return WALPath{}, err
	}
	return WALPath{Target: target, History: h, segSize: a.SegmentSize()}, nil
}

// TimelineOfSegment is the timeline whose file of segment segno lies on the path.
func (p WALPath) TimelineOfSegment(segno uint64) uint32 {
	// Timeline h[i+1] (or Target) begins at h[i].SwitchPoint.
	tli := uint32(1)
	if len(p.History) > 0 {
		tli = p.History[0].Parent
	}
	for i, s := range p.History {
		if s.SwitchPoint.SegmentNo(p.segSize) <= segno {
			if i+1 < len(p.History) {
				tli = p.History[i+1].Parent
			} else {
				tli = p.Target
			}
		}
	}
	if len(p.History) == 0 {
		tli = p.Target
	}
	return tli
}

// Contains reports whether a backup taken on timeline tli at lsn lies on the path.
func (p WALPath) Contains(tli uint32, lsn LSN) bool {
	if tli == p.Target {
		return true
	}
	if tli > p.Target {
		return false
	}
	return p.History.Holds(tli, lsn)
}

// WALEnd describes how far the archive's WAL reaches along a path.
type WALEnd struct {
	// End is the LSN up to which WAL is known present: the end of the last complete
	// segment, or that segment's start when the next is only a partial (whose length is
	// not known without reading it).
	End LSN
	// LastSegment is the last segment found, and Partial whether it is only a partial.
	LastSegment uint64
	Partial     bool
	// LastModified is when the newest WAL object on the path was stored.
	LastModified time.Time
	// Missing names the first missing segment when the path has a hole before its end.
	Missing string
	// InFlight is set when the run ends where a writer's uploads are still landing: a
	// segment missing with only its few successors stored (Graph.Reach).
	InFlight bool
}

// WALReach walks the path from segment fromSeg and reports how far the WAL is continuous.
func (a *Archive) WALReach(ctx context.Context, p WALPath, fromSeg uint64) (WALEnd, error) {
	g, err := a.ReadGraph(ctx)
	if err != nil {
		return WALEnd{}, err
	}
	return g.Reach(p, fromSeg), nil
}
