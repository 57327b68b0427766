package walarchive

import (
	"strings"
	"testing"
)

func TestParseLSNRoundTrips(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want LSN
	}{
		{"0/0", 0},
		{"0/16B3748", 0x16B3748},
		{"1/0", 1 << 32},
		{"FFFFFFFF/FFFFFFFF", ^LSN(0)},
		{"a/b", 0xA<<32 | 0xB},
	} {
		got, err := ParseLSN(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseLSN(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			continue
		}
		back, _ := ParseLSN(got.String())
		if back != got {
			t.Errorf("String() of %q = %q does not parse back", tc.in, got.String())
		}
	}
}

func TestParseLSNRejectsMalformedInput(t *testing.T) {
	for _, in := range []string{"", "0", "/", "0/", "/0", "g/0", "0/x", "123456789/0", "0/123456789", "0/0/0", " 0/0", "-1/0"} {
		if _, err := ParseLSN(in); err == nil || !strings.Contains(err.Error(), "invalid LSN") {
			t.Errorf("ParseLSN(%q) error = %v; want an 'invalid LSN' error", in, err)
		}
	}
}

func TestSegmentNameForEverySegmentSize(t *testing.T) {
	for size := uint64(MinSegmentSize); size <= MaxSegmentSize; size <<= 1 {
		if err := ValidateSegmentSize(size); err != nil {
			t.Fatalf("ValidateSegmentSize(%d): %v", size, err)
		}
		per := 0x100000000 / size
		for _, segno := range []uint64{0, 1, per - 1, per, per + 1, 5*per + 3, 0xFFFFFFFF*per + per - 1} {
			name := SegmentName(7, segno, size)
			tli, got, err := ParseSegmentName(name, size)
			if err != nil || tli != 7 || got != segno {
				t.Fatalf("size %d segno %d: name %s parses to (%d, %d, %v)", size, segno, name, tli, got, err)
			}
		}
	}
	// Known values from PostgreSQL with 16 MiB segments: LSN 1/2A000000 is in segment 0000000100000001000000002A.
	if got := SegmentName(1, LSN(0x12A000000).SegmentNo(16<<20), 16<<20); got != "00000001000000010000002A" {
		t.Errorf("SegmentName = %s; want 00000001000000010000002A", got)
	}
	// With 1 GiB segments there are only 4 segments per xlogid.
	if got := SegmentName(2, 5, 1<<30); got != "000000020000000100000001" {
		t.Errorf("SegmentName 1GiB = %s; want 000000020000000100000001", got)
	}
}

func TestValidateSegmentSizeRejectsOddSizes(t *testing.T) {
	for _, size := range []uint64{0, 1, 512 << 10, 3 << 20, 2 << 30, 16<<20 + 1} {
		if err := ValidateSegmentSize(size); err == nil {
			t.Errorf("ValidateSegmentSize(%d) accepted an invalid size", size)
		}
	}
}

func TestParseSegmentNameRejectsMalformedNames(t *testing.T) {
	for _, name := range []string{"", "0000000100000000000000", "00000001000000000000000g", "000000010000000000000001x",
		"00000000000000000000000A", "0000000100000000000001000", "00000001000000000000001a"} {
		if _, _, err := ParseSegmentName(name, 16<<20); err == nil {
			t.Errorf("ParseSegmentName(%q) accepted a malformed name", name)
		}
	}
	// The low part must fit the segment size: 0x100 is out of range for 16 MiB segments.
	if _, _, err := ParseSegmentName("000000010000000000000100", 16<<20); err == nil {
		t.Error("ParseSegmentName accepted a low part out of range for 16 MiB segments")
	}
}

func TestParseWALFileNameKinds(t *testing.T) {
	const seg = 16 << 20
	for _, tc := range []struct {
		name string
		kind WALFileKind
		tli  uint32
		no   uint64
	}{
		{"000000010000000000000003", WALFileSegment, 1, 3},
		{"000000020000000100000003.partial", WALFilePartial, 2, 0x103},
		{"0000000A.history", WALFileHistory, 10, 0},
		{"000000010000000000000002.00000028.backup", WALFileBackupLabel, 1, 2},
	} {
		f, err := ParseWALFileName(tc.name, seg)
		if err != nil || f.Kind != tc.kind || f.Timeline != tc.tli || f.SegNo != tc.no {
			t.Errorf("ParseWALFileName(%q) = %+v, %v; want kind %d tli %d segno %d", tc.name, f, err, tc.kind, tc.tli, tc.no)
		}
	}
	for _, bad := range []string{"", "RECOVERYHISTORY", "00000001.history.x", "0000000g.history", "../etc/passwd", "000000010000000000000002.0000002G.backup"} {
		if _, err := ParseWALFileName(bad, seg); err == nil {
			t.Errorf("ParseWALFileName(%q) accepted a malformed name", bad)
		}
	}
	if got := BackupLabelFileName(1, LSN(0x2000028), seg); got != "000000010000000000000002.00000028.backup" {
		t.Errorf("BackupLabelFileName = %s", got)
	}
}

func TestTimelineHistoryParsesPostgresFormat(t *testing.T) {
	content := "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n"
	h, err := ParseTimelineHistory([]byte(content))
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 2 || h[0].Parent != 1 || h[0].SwitchPoint != 0x3000158 || h[0].Reason != "no recovery target specified" || h[1].Parent != 2 {
		t.Fatalf("parsed %+v", h)
	}
	if got := h.TimelineOf(0x3000157, 3); got != 1 {
		t.Errorf("TimelineOf before first switch = %d; want 1", got)
	}
	if got := h.TimelineOf(0x3000158, 3); got != 2 {
		t.Errorf("TimelineOf at first switch = %d; want 2", got)
	}
	if got := h.TimelineOf(0x6000000, 3); got != 3 {
		t.Errorf("TimelineOf after last switch = %d; want 3", got)
	}
	again, err := ParseTimelineHistory(h.Format())
	if err != nil || len(again) != 2 || again[1] != h[1] {
		t.Errorf("Format does not round-trip: %+v, %v", again, err)
	}
}

func TestTimelineHistoryRejectsMalformedLines(t *testing.T) {
	for _, content := range []string{"x\t0/1\n", "1\n", "1\tzz\n", "0\t0/1\n", "2\t0/5\n1\t0/6\n"} {
		if _, err := ParseTimelineHistory([]byte(content)); err == nil {
			t.Errorf("ParseTimelineHistory(%q) accepted malformed content", content)
		}
	}
}

func FuzzParseLSN(f *testing.F) {
	f.Add("0/16B3748")
	f.Add("FFFFFFFF/0")
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLSN(s)
		if err != nil {
			return
		}
		if back, err := ParseLSN(l.String()); err != nil || back != l {
			t.Fatalf("%q parsed to %v which does not round-trip", s, l)
		}
	})
}

func FuzzParseWALFileName(f *testing.F) {
	f.Add("000000010000000000000003", uint8(24))
	f.Add("00000002.history", uint8(20))
	f.Add("000000010000000000000002.00000028.backup", uint8(30))
	f.Fuzz(func(t *testing.T, name string, sizeShift uint8) {
		size := uint64(1) << (20 + sizeShift%11)
		w, err := ParseWALFileName(name, size)
		if err != nil {
			return
		}
		if w.Kind == WALFileSegment && SegmentName(w.Timeline, w.SegNo, size) != name {
			t.Fatalf("%q parsed to %+v which formats as %s", name, w, SegmentName(w.Timeline, w.SegNo, size))
		}
	})
}

func FuzzParseTimelineHistory(f *testing.F) {
	f.Add([]byte("1\t0/3000158\tno recovery target specified\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseTimelineHistory(b)
		if err != nil {
			return
		}
		again, err := ParseTimelineHistory(h.Format())
		if err != nil || len(again) != len(h) {
			t.Fatalf("formatted history does not parse back: %v", err)
		}
	})
}
