package standby

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kcbackup/kcbackup/walarchive"
	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// SlotState is a replication slot on the standby as pg_replication_slots shows it.
type SlotState struct {
	Exists bool
	// Type is "physical" or "logical".
	Type string
	// RestartLSN is the oldest WAL the slot keeps (0: none; an invalidated slot).
	RestartLSN walarchive.LSN
	// WALStatus is wal_status: reserved, extended, unreserved or lost.
	WALStatus string
}

// Lost reports whether the server invalidated the slot: the WAL it held is gone.
func (s SlotState) Lost() bool { return s.Exists && (s.RestartLSN == 0 || s.WALStatus == "lost") }

// ErrNotPhysical is returned when a slot of the configured name exists but is logical.
var ErrNotPhysical = errors.New("the replication slot is not a physical slot")

const slotQuery = `SELECT slot_type, coalesce(restart_lsn::text, ''), coalesce(wal_status, '')
  FROM pg_replication_slots WHERE slot_name = $1`

// ReadSlot reads slot name over an SQL connection (it works on a standby, where
// READ_REPLICATION_SLOT's view of the slot is the same).
func ReadSlot(ctx context.Context, conn *pgconn.PgConn, name string) (SlotState, error) {
	res := conn.ExecParams(ctx, slotQuery, [][]byte{[]byte(name)}, nil, nil, nil).Read()
	if res.Err != nil {
		return SlotState{}, fmt.Errorf("read replication slot %s: %w", name, res.Err)
	}
	switch len(res.Rows) {
	case 0:
		return SlotState{}, nil
	case 1:
		return ParseSlotRow(res.Rows[0])
	}
	return SlotState{}, fmt.Errorf("read replication slot %s: %d rows", name, len(res.Rows))
}

// ParseSlotRow parses a row of slotQuery: slot_type, restart_lsn (empty when none), wal_status.
func ParseSlotRow(row [][]byte) (SlotState, error) {
	if len(row) != 3 {
		return SlotState{}, fmt.Errorf("replication slot row: expected 3 columns, got %d", len(row))
	}
	st := SlotState{Exists: true, Type: string(row[0]), WALStatus: string(row[2])}
	if st.Type != "physical" && st.Type != "logical" {
		return SlotState{}, fmt.Errorf("replication slot type %q: expected physical or logical", row[0])
	}
	if len(row[1]) > 0 {
		lsn, err := walarchive.ParseLSN(string(row[1]))
		if err != nil {
			return SlotState{}, fmt.Errorf("replication slot restart_lsn %q: %w", row[1], err)
		}
		st.RestartLSN = lsn
	}
	return st, nil
}

// AdvanceTo returns where the standby's slot should move, given its restart point and the
// end of the WAL the archive holds (archived false: the archive holds none): forward to
// the archive's end, never back (PostgreSQL refuses that), and not at all while the archive
// knows nothing. PostgreSQL itself stops the slot at the standby's replay position
// (pg_replication_slot_advance), so a standby behind the archive keeps all it has.
func AdvanceTo(restart, archivedEnd walarchive.LSN, archived bool) (walarchive.LSN, bool) {
	if !archived || archivedEnd <= restart {
		return 0, false
	}
	return archivedEnd, true
}

// KeepSlot makes sure the physical slot name exists on the standby (created reserving WAL
// when missing, recreated when the server invalidated it) and advances it to archivedEnd.
// It returns the slot as it then is, and whether the slot had been lost (WAL after the
// archive's end may be gone: a promotion would leave a hole until the next base backup).
func KeepSlot(ctx context.Context, conn *pgconn.PgConn, name string, archivedEnd walarchive.LSN, archived bool) (SlotState, bool, error) {
	slot, err := ReadSlot(ctx, conn, name)
	if err != nil {
		return SlotState{}, false, err
	}
	if slot.Exists && slot.Type != "physical" {
		return slot, false, fmt.Errorf("slot %s is %s: %w; choose another --slot", name, slot.Type, ErrNotPhysical)
	}
	lost := slot.Lost()
	if lost {
		if err := exec(ctx, conn, "SELECT pg_drop_replication_slot($1)", name); err != nil {
			return slot, true, fmt.Errorf("drop the invalidated replication slot %s: %w", name, err)
		}
	}
	if !slot.Exists || lost {
		// Step 1: create it reserving WAL at once (PostgreSQL docs, "Replication
		// Management Functions"): on a standby it holds WAL from its last restart point.
		if err := exec(ctx, conn, "SELECT pg_create_physical_replication_slot($1, true)", name); err != nil {
			return slot, lost, fmt.Errorf("create replication slot %s on the standby: %w", name, err)
		}
		if slot, err = ReadSlot(ctx, conn, name); err != nil {
			return slot, lost, err
		}
	}
	// Step 2: let go of what the archive holds, and nothing more.
	to, ok := AdvanceTo(slot.RestartLSN, archivedEnd, archived)
	if !ok {
		return slot, lost, nil
	}
	if err := exec(ctx, conn, "SELECT pg_replication_slot_advance($1, $2::pg_lsn)", name, to.String()); err != nil {
		return slot, lost, fmt.Errorf("advance replication slot %s to the archive's end %s: %w", name, to, err)
	}
	slot, err = ReadSlot(ctx, conn, name)
	return slot, lost, err
}

func exec(ctx context.Context, conn *pgconn.PgConn, sql string, args ...string) error {
	params := make([][]byte, len(args))
	for i, a := range args {
		params[i] = []byte(a)
	}
	return conn.ExecParams(ctx, sql, params, nil, nil, nil).Read().Err
}

// ArchivedEnd returns a point the archive's WAL reaches: the end of the last complete
// segment of the writer's timeline (or, with none there yet, of the newest older timeline
// that has one); false when the archive holds no complete segment. It reads listings only,
// never the live tail (a partial segment can be large), so it may fall short of the true
// end by less than a segment: the standby keeps that much more. The archive only grows at
// its end, so a slot advanced to a past answer never lets go of WAL the archive lacks.
func ArchivedEnd(ctx context.Context, a *walarchive.Archive) (walarchive.LSN, bool, error) {
	st, err := a.WriterState(ctx)
	if err != nil {
		return 0, false, err
	}
	var tlis []uint32
	if t := st.Timeline(); t > 0 {
		for ; t > 0; t-- {
			tlis = append(tlis, t)
		}
	} else {
		all, err := a.Timelines(ctx)
		if err != nil {
			return 0, false, err
		}
		for i := len(all) - 1; i >= 0; i-- {
			tlis = append(tlis, all[i])
		}
	}
	for _, tli := range tlis {
		objs, err := a.Storage.List(ctx, walarchive.TimelineDir(tli))
		if err != nil {
			return 0, false, fmt.Errorf("list archived WAL of timeline %d: %w", tli, err)
		}
		if end, ok := completeEnd(objs, tli, a.SegmentSize()); ok {
			return end, true, nil
		}
	}
	return 0, false, nil
}

// completeEnd returns the end of the last complete segment of timeline tli among objs.
func completeEnd(objs []storage.ObjectInfo, tli uint32, segSize uint64) (walarchive.LSN, bool) {
	var last uint64
	found := false
	for _, o := range objs {
		f, err := walarchive.ParseWALKey(o.Key, segSize)
		if err != nil || f.Timeline != tli || f.Kind != walarchive.WALFileSegment {
			continue
		}
		if !found || f.SegNo > last {
			last, found = f.SegNo, true
		}
	}
	if !found {
		return 0, false
	}
	return walarchive.SegmentStartLSN(last+1, segSize), true
}
