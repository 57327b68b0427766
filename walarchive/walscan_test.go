package walarchive

import (
	"bytes"
	"os"
	"testing"
	"time"
)

// testdata/pg15-seg6-1MiB.head is the first 16 KiB of segment 000000010000000000000006 of a
// PostgreSQL 15.18 cluster made with initdb --wal-segsize=1. pg_waldump lists two commits
// in it: 0/00600500 at 03:56:43.835939 and 0/00600720 at 03:56:43.836072 (UTC), and reports
// the end of valid WAL at 0/6007E0.
func TestScanXactsFindsTheCommitsPgWaldumpLists(t *testing.T) {
	data, err := os.ReadFile("testdata/pg15-seg6-1MiB.head")
	if err != nil {
		t.Fatal(err)
	}
	var got []XactRecord
	end, err := ScanXacts(bytes.NewReader(data), 6, 1<<20, func(x XactRecord) { got = append(got, x) })
	if err != nil {
		t.Fatal(err)
	}
	want := []XactRecord{
		{LSN: 0x600500, Commit: true, Time: time.Date(2026, 11, 24, 3, 56, 43, 835939000, time.UTC)},
		{LSN: 0x600720, Commit: true, Time: time.Date(2026, 11, 24, 3, 56, 43, 836072000, time.UTC)},
	}
	if len(got) != len(want) {
		t.Fatalf("found %d transactions; want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i].LSN != want[i].LSN || got[i].Commit != want[i].Commit || !got[i].Time.Equal(want[i].Time) {
			t.Errorf("transaction %d = %+v; want %+v", i, got[i], want[i])
		}
	}
	if end != 0x6007E0 {
		t.Errorf("end of valid WAL = %s; want 0/6007E0", end)
	}
}

func TestScanXactsStopsAtAFlippedByte(t *testing.T) {
	data, _ := os.ReadFile("testdata/pg15-seg6-1MiB.head")
	bad := append([]byte(nil), data...)
	bad[0x600-0] ^= 0xFF // inside the record before the second commit
	n := 0
	end, err := ScanXacts(bytes.NewReader(bad), 6, 1<<20, func(XactRecord) { n++ })
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 || end >= 0x600720 {
		t.Fatalf("after a corrupt record: %d transactions, end %s; want 1 transaction and an end before 0/600720", n, end)
	}
}

func FuzzScanXacts(f *testing.F) {
	data, _ := os.ReadFile("testdata/pg15-seg6-1MiB.head")
	f.Add(data)
	f.Fuzz(func(t *testing.T, b []byte) {
		// Must never panic or loop; whatever it finds is reported in LSN order.
		var last LSN
		_, _ = ScanXacts(bytes.NewReader(b), 6, 1<<20, func(x XactRecord) {
			if x.LSN < last {
				t.Fatalf("transactions out of order: %s after %s", x.LSN, last)
			}
			last = x.LSN
		})
	})
}
