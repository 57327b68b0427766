package walarchive

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a PostgreSQL write-ahead log location: a byte position in the WAL stream.
type LSN uint64

// ParseLSN parses the textual form PostgreSQL prints, "XXXXXXXX/XXXXXXXX" (two hex
// numbers of at most 8 digits each).
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("invalid LSN %q: expected two hex numbers of up to 8 digits separated by '/', like 0/16B3748", s)
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("invalid LSN %q: expected hex digits on both sides of '/'", s)
	}
	return LSN(h<<32 | l), nil
}

// String formats the LSN the way PostgreSQL does.
func (l LSN) String() string {
	return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l))
}

// MarshalText implements encoding.TextMarshaler, so LSNs appear as "0/16B3748" in JSON.
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// SegmentNo is the number of the WAL segment that contains this LSN.
func (l LSN) SegmentNo(segSize uint64) uint64 { return uint64(l) / segSize }

// SegmentOffset is the LSN's byte offset inside its segment.
func (l LSN) SegmentOffset(segSize uint64) uint64 { return uint64(l) % segSize }

// SegmentStart is the LSN of the first byte of the segment containing l.
func (l LSN) SegmentStart(segSize uint64) LSN { return LSN(uint64(l) - uint64(l)%segSize) }

// SegmentStartLSN is the LSN of the first byte of segment segno.
func SegmentStartLSN(segno, segSize uint64) LSN { return LSN(segno * segSize) }
