package walarchive

import (
	"encoding/binary"
	"hash/crc32"
	"time"
)

// walGen writes valid WAL in PostgreSQL's page and record format (the subset the scanner
// reads: commit and abort records with the transaction's xid in their header, and
// XLOG_SWITCH), so planning is tested on WAL whose transactions
// and times are known. The scanner it feeds is itself checked against pg_waldump on WAL of
// real servers (walscan_test.go and the e2e tests).
type walGen struct {
	v       PGVersion
	segSize uint64
	first   uint64
	data    []byte // from the first byte of segment first
	pos     LSN
	prev    LSN
	lastXid uint32 // the xid of the last transaction commit() ended
}

func newWALGen(v PGVersion, segSize, firstSeg uint64) *walGen {
	return &walGen{v: v, segSize: segSize, first: firstSeg, pos: SegmentStartLSN(firstSeg, segSize)}
}

func (g *walGen) off(l LSN) int { return int(uint64(l) - uint64(SegmentStartLSN(g.first, g.segSize))) }

// put appends record bytes at g.pos, writing page headers at page starts.
func (g *walGen) put(b []byte, recordLeft int) {
	for len(b) > 0 {
		if uint64(g.pos)%walPageSize == 0 {
			g.pageHeader(recordLeft)
		}
		room := walPageSize - int(uint64(g.pos)%walPageSize)
		n := min(room, len(b))
		g.grow(g.off(g.pos) + n)
		copy(g.data[g.off(g.pos):], b[:n])
		g.pos += LSN(n)
		b = b[n:]
		recordLeft -= n
	}
}

func (g *walGen) grow(n int) {
	if n > len(g.data) {
		g.data = append(g.data, make([]byte, n-len(g.data))...)
	}
}

func (g *walGen) pageHeader(contLeft int) {
	hdr := make([]byte, shortPageHeaderLen)
	var info uint16
	if g.pos.SegmentOffset(g.segSize) == 0 {
		info |= xlpLongHeader
		hdr = make([]byte, longPageHeaderLen)
		binary.LittleEndian.PutUint32(hdr[32:], uint32(g.segSize))
	}
	if contLeft > 0 {
		info |= xlpFirstIsContRecord
	}
	binary.LittleEndian.PutUint16(hdr[0:], g.v.WALPageMagic)
	binary.LittleEndian.PutUint16(hdr[2:], info)
	binary.LittleEndian.PutUint32(hdr[4:], 1)
	binary.LittleEndian.PutUint64(hdr[8:], uint64(g.pos))
	binary.LittleEndian.PutUint32(hdr[16:], uint32(max(contLeft, 0)))
	g.grow(g.off(g.pos) + len(hdr))
	copy(g.data[g.off(g.pos):], hdr)
	g.pos += LSN(len(hdr))
}

// record appends one record of transaction xid (0: none) and returns the LSN where it starts.
func (g *walGen) record(rmid, info byte, xid uint32, body []byte) LSN {
	if uint64(g.pos)%walPageSize == 0 {
		g.pageHeader(0)
	}
	start := g.pos
	hdr := make([]byte, recordHeaderLen)
	binary.LittleEndian.PutUint32(hdr[0:], uint32(recordHeaderLen+len(body)))
	binary.LittleEndian.PutUint32(hdr[4:], xid)
	binary.LittleEndian.PutUint64(hdr[8:], uint64(g.prev))
	hdr[16], hdr[17] = info, rmid
	crc := crc32.Update(crc32.Update(0, crc32c, body), crc32c, hdr[:20])
	binary.LittleEndian.PutUint32(hdr[20:], crc)
	rec := append(hdr, body...)
	g.put(rec, len(rec))
	g.prev = start
	g.pos = maxAlign(g.pos)
	return start
}

// commit appends a commit record ending, at t, a transaction with the next xid (from 1000).
func (g *walGen) commit(t time.Time) LSN {
	if g.lastXid < 1000 {
		g.lastXid = 999
	}
	g.lastXid++
	return g.xactEnd(xactCommit, t, g.lastXid)
}

// xactEnd appends the end (op xactCommit or xactAbort) of transaction xid at t.
func (g *walGen) xactEnd(op byte, t time.Time, xid uint32) LSN {
	body := make([]byte, 2+8)
	body[0], body[1] = 255, 8 // XLR_BLOCK_ID_DATA_SHORT, 8 bytes of main data: xact_time
	binary.LittleEndian.PutUint64(body[2:], uint64(t.Sub(PostgresEpoch).Microseconds()))
	return g.record(rmXactID, op, xid, body)
}

// noop appends a record that is not a transaction end (an XLOG record with n bytes of data).
func (g *walGen) noop(n int) LSN {
	body := append([]byte{255, byte(n)}, make([]byte, n)...)
	return g.record(rmXLogID, 0x20, 0, body)
}

// switchSegment appends XLOG_SWITCH: the rest of the segment is unused.
func (g *walGen) switchSegment() {
	g.record(rmXLogID, xlogSwitch, 0, nil)
	next := SegmentStartLSN(g.pos.SegmentNo(g.segSize)+1, g.segSize)
	if g.pos.SegmentOffset(g.segSize) == 0 {
		next = g.pos
	}
	g.grow(g.off(next))
	g.pos = next
}

// segment returns the bytes of segment n (zeros past the end of the WAL written).
func (g *walGen) segment(n uint64) []byte {
	out := make([]byte, g.segSize)
	lo := int((n - g.first) * g.segSize)
	if lo < len(g.data) {
		copy(out, g.data[lo:])
	}
	return out
}
