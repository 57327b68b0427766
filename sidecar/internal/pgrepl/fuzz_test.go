package pgrepl

import (
	"testing"

	"github.com/kcbackup/kcbackup/walarchive"
)

type countingSink struct{ archives, data, manifests int }

func (c *countingSink) Started(walarchive.LSN, uint32, []Tablespace) error { return nil }
func (c *countingSink) NewArchive(name, loc string) error                  { c.archives++; return nil }
func (c *countingSink) Manifest() error                                    { c.manifests++; return nil }
func (c *countingSink) Data(p []byte) error                                { c.data += len(p); return nil }
func (c *countingSink) Progress(int64)                                     {}

func TestDispatchBackupMessageDecodesPostgres15Messages(t *testing.T) {
	s := &countingSink{}
	for _, msg := range [][]byte{
		append([]byte("nbase.tar\x00"), 0),
		[]byte("dsome bytes"),
		{'p', 0, 0, 0, 0, 0, 0, 4, 0},
		{'m'},
		[]byte("dmanifest"),
	} {
		if err := dispatchBackupMessage(msg, s); err != nil {
			t.Fatalf("%q: %v", msg, err)
		}
	}
	if s.archives != 1 || s.manifests != 1 || s.data != len("some bytes")+len("manifest") {
		t.Fatalf("decoded %+v", s)
	}
	for _, bad := range [][]byte{{}, {'x'}, []byte("nbase.tar"), []byte("n../etc\x00\x00"), []byte("n/abs\x00\x00"), {'p', 1}} {
		if err := dispatchBackupMessage(bad, &countingSink{}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzDispatchBackupMessage(f *testing.F) {
	f.Add(append([]byte("nbase.tar\x00"), 0))
	f.Add([]byte("dabc"))
	f.Add([]byte{'p', 0, 0, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = dispatchBackupMessage(b, &countingSink{})
	})
}

func FuzzParseReadSlotRow(f *testing.F) {
	f.Add([]byte("physical"), []byte("0/3000028"), []byte("2"))
	f.Fuzz(func(t *testing.T, a, b, c []byte) {
		info, err := ParseReadSlotRow([][]byte{a, b, c})
		if err == nil && info.Exists && string(a) != "physical" {
			t.Fatalf("a %q slot accepted", a)
		}
	})
}

func FuzzParseSize(f *testing.F) {
	f.Add("16MB")
	f.Fuzz(func(t *testing.T, s string) { _, _ = ParseSize(s) })
}
