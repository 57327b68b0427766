package walarchive

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"
)

// WAL page and record layout (src/include/access/xlog_internal.h and xlogrecord.h); what
// differs between major versions is in PGVersion. kcbackup reads only what it needs to find
// commit and abort times: the recovery window and the choice between a time target and a
// bounded replay depend on the times of the transactions in the archive.
const (
	walPageSize          = 8192
	xlpFirstIsContRecord = 0x0001
	xlpLongHeader        = 0x0002
	shortPageHeaderLen   = 24
	longPageHeaderLen    = 40
	recordHeaderLen      = 24 // every supported version: PGVersion.RecordHeaderLen
	rmXLogID             = 0
	xlogSwitch           = 0x40
	rmXactID             = 1
	xactOpMask           = 0x70
	xactCommit           = 0x00
	xactAbort            = 0x20
	xactCommitPrepared   = 0x30
	xactAbortPrepared    = 0x40
)

// PostgresEpoch is the zero of PostgreSQL's timestamps on the wire and in WAL.
var PostgresEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// XactRecord is a transaction end found in WAL.
type XactRecord struct {
	LSN    LSN
	Commit bool // false for an abort
	Time   time.Time
	// Xid is the transaction id in the record's header (XLogRecord.xl_xid): the top-level
	// transaction that ended, as txid_current() names it (its low 32 bits). A subtransaction
	// aborted on its own carries its own xid; COMMIT PREPARED and ROLLBACK PREPARED carry the
	// xid of the session that ran them (usually 0), the prepared transaction's is in their data.
	Xid uint32
}

// ErrWALFormat is returned (wrapped) when WAL is not in the format of the archive's
// PostgreSQL version: kcbackup refuses to guess where transactions end.
var ErrWALFormat = errors.New("WAL is not in the format of the archive's PostgreSQL version")

// ScanXacts reads WAL of PostgreSQL version v from r, which starts at the first byte of
// segment startSeg, and calls fn for every commit and abort record, in WAL order. It stops
// without error at the end of valid WAL (zeros, a recycled page, a bad checksum) and
// returns the LSN where valid WAL ended. A page at its own address whose magic is not v's
// is an error (ErrWALFormat): it is WAL of another version, not the end of WAL.
func ScanXacts(r io.Reader, v PGVersion, startSeg, segSize uint64, fn func(XactRecord)) (LSN, error) {
	if v.WALPageMagic == 0 || v.RecordHeaderLen != recordHeaderLen {
		return 0, fmt.Errorf("scan WAL: %w: no WAL format for PostgreSQL %d", ErrWALFormat, v.Major)
	}
	s := &walScanner{r: r, v: v, pos: SegmentStartLSN(startSeg, segSize), segSize: segSize}
	return s.run(fn)
}

type walScanner struct {
	r       io.Reader
	v       PGVersion
	segSize uint64
	page    [walPageSize]byte
	pageLSN LSN // LSN of the page in s.page
	pos     LSN // next byte to read
	loaded  bool
	prev    LSN
}

// loadPage reads the page holding s.pos and checks its header; it reports false at the
// end of the stream or of valid WAL.
func (s *walScanner) loadPage() (bool, error) {
	if _, err := io.ReadFull(s.r, s.page[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return false, nil
		}
		return false, err
	}
	s.pageLSN = s.pos.SegmentStart(walPageSize)
	magic := binary.LittleEndian.Uint16(s.page[0:])
	addr := LSN(binary.LittleEndian.Uint64(s.page[8:]))
	if addr != s.pageLSN {
		return false, nil // zeros or a recycled page: the end of valid WAL
	}
	if magic != s.v.WALPageMagic {
		return false, fmt.Errorf("WAL page at %s has magic 0x%04X, not PostgreSQL %d's 0x%04X: %w", s.pageLSN, magic, s.v.Major, s.v.WALPageMagic, ErrWALFormat)
	}
	return true, nil
}

func (s *walScanner) headerLen() uint64 {
	if binary.LittleEndian.Uint16(s.page[2:])&xlpLongHeader != 0 {
		return longPageHeaderLen
	}
	return shortPageHeaderLen
}

// read copies len(buf) bytes of record data starting at s.pos, stepping over page headers.
func (s *walScanner) read(buf []byte) (bool, error) {
	return s.readFn(uint64(len(buf)), func(p []byte) { buf = buf[copy(buf, p):] })
}

// readN returns the next n bytes of record data (n from the record itself, so it is
// collected page by page rather than allocated up front).
func (s *walScanner) readN(n uint64) ([]byte, bool, error) {
	var out []byte
	ok, err := s.readFn(n, func(p []byte) { out = append(out, p...) })
	return out, ok, err
}

func (s *walScanner) readFn(n uint64, sink func([]byte)) (bool, error) {
	for n > 0 {
		off := uint64(s.pos) % walPageSize
		if off == 0 {
			ok, err := s.loadPage()
			if !ok || err != nil {
				return false, err
			}
			info := binary.LittleEndian.Uint16(s.page[2:])
			if s.loaded && info&xlpFirstIsContRecord == 0 {
				return false, nil // the next page does not continue this record
			}
			s.pos += LSN(s.headerLen())
			off = uint64(s.pos) % walPageSize
		}
		k := walPageSize - off
		if k > n {
			k = n
		}
		sink(s.page[off : off+k])
		n -= k
		s.pos += LSN(k)
	}
	return true, nil
}

func maxAlign(l LSN) LSN { return (l + 7) &^ 7 }

func (s *walScanner) run(fn func(XactRecord)) (LSN, error) {
	// The first page: skip the tail of a record that began in the previous segment.
	ok, err := s.loadPage()
	if !ok || err != nil {
		return s.pos, err
	}
	info := binary.LittleEndian.Uint16(s.page[2:])
	remLen := binary.LittleEndian.Uint32(s.page[16:])
	s.pos += LSN(s.headerLen())
	s.loaded = true
	if info&xlpFirstIsContRecord != 0 {
		if ok, err := s.readFn(uint64(remLen), func([]byte) {}); !ok || err != nil {
			return s.pos, err
		}
		s.pos = maxAlign(s.pos)
	}
	var hdr [recordHeaderLen]byte
	for {
		// A record header never starts in the last bytes of a page too short for its length word.
		if walPageSize-uint64(s.pos)%walPageSize < 4 {
			s.pos = maxAlign(s.pos + LSN(walPageSize-uint64(s.pos)%walPageSize))
		}
		start := s.pos
		if uint64(s.pos)%walPageSize == 0 {
			// The record starts on a new page: load it here so read() does not treat it as a
			// continuation.
			ok, err := s.loadPage()
			if !ok || err != nil {
				return start, err
			}
			s.pos += LSN(s.headerLen())
			start = s.pos
		}
		if ok, err := s.read(hdr[:]); !ok || err != nil {
			return start, err
		}
		totLen := binary.LittleEndian.Uint32(hdr[0:])
		prev := LSN(binary.LittleEndian.Uint64(hdr[8:]))
		if totLen < recordHeaderLen || totLen > 1<<30 || (s.prev != 0 && prev != s.prev) {
			return start, nil
		}
		body, ok, err := s.readN(uint64(totLen - recordHeaderLen))
		if !ok || err != nil {
			return start, err
		}
		crc := crc32.Update(crc32.Update(0, crc32c, body), crc32c, hdr[:20])
		if crc != binary.LittleEndian.Uint32(hdr[20:]) {
			return start, nil
		}
		s.prev = start
		if hdr[17] == rmXLogID && hdr[16]&0xF0 == xlogSwitch {
			// The rest of the segment is unused; WAL goes on at the next segment.
			next := SegmentStartLSN(s.pos.SegmentNo(s.segSize)+1, s.segSize)
			pageEnd := s.pageLSN + walPageSize
			if _, err := io.CopyN(io.Discard, s.r, int64(next-pageEnd)); err != nil {
				return next, nil
			}
			s.pos = next
			continue
		}
		if hdr[17] == rmXactID {
			op := hdr[16] & xactOpMask
			if op == xactCommit || op == xactAbort || op == xactCommitPrepared || op == xactAbortPrepared {
				if main, err := mainData(body, s.v); err == nil && len(main) >= s.v.XactTimeOffset+8 {
					us := int64(binary.LittleEndian.Uint64(main[s.v.XactTimeOffset:]))
					fn(XactRecord{LSN: start, Commit: op == xactCommit || op == xactCommitPrepared, Time: PostgresEpoch.Add(time.Duration(us) * time.Microsecond),
						Xid: binary.LittleEndian.Uint32(hdr[4:])})
				}
			}
		}
		s.pos = maxAlign(s.pos)
	}
}

// mainData returns a record's main data: the block headers are walked to find its length,
// and it is the last part of the record.
func mainData(body []byte, v PGVersion) ([]byte, error) {
	pos := 0
	for pos < len(body) {
		id := body[pos]
		switch {
		case id == 255: // XLR_BLOCK_ID_DATA_SHORT
			if pos+2 > len(body) {
				return nil, errors.New("short record")
			}
			n := int(body[pos+1])
			return tailOf(body, n)
		case id == 254: // XLR_BLOCK_ID_DATA_LONG
			if pos+5 > len(body) {
				return nil, errors.New("short record")
			}
			n := int(binary.LittleEndian.Uint32(body[pos+1:]))
			return tailOf(body, n)
		case id == 253: // XLR_BLOCK_ID_ORIGIN
			pos += 3
		case id == 252: // XLR_BLOCK_ID_TOPLEVEL_XID
			pos += 5
		case id <= 32: // a block reference
			if pos+4 > len(body) {
				return nil, errors.New("short record")
			}
			forkFlags := body[pos+1]
			pos += v.BlockRefHeaderLen
			if forkFlags&0x10 != 0 { // BKPBLOCK_HAS_IMAGE
				if pos+5 > len(body) {
					return nil, errors.New("short record")
				}
				bimgInfo := body[pos+4]
				pos += 5
				if bimgInfo&0x01 != 0 && bimgInfo&(0x04|0x08|0x10) != 0 { // hole and compressed
					pos += 2
				}
			}
			if forkFlags&0x80 == 0 { // !BKPBLOCK_SAME_REL: a relation locator follows
				pos += v.RelLocatorLen
			}
			pos += 4 // BlockNumber
		default:
			return nil, fmt.Errorf("unknown block id %d", id)
		}
	}
	return nil, nil // no main data
}

func tailOf(b []byte, n int) ([]byte, error) {
	if n > len(b) {
		return nil, errors.New("main data longer than the record")
	}
	return b[len(b)-n:], nil
}
