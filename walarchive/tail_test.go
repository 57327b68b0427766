package walarchive

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/walarchive/storage"
	"github.com/kcbackup/kcbackup/walarchive/storage/memory"
)

// segBytes is a recognisable segment: byte i is i mod 251.
func segBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

func putParts(t *testing.T, a *Archive, segno uint64, data []byte, ranges ...[2]uint64) {
	t.Helper()
	for _, r := range ranges {
		if _, err := a.PutPart(context.Background(), 1, segno, r[0], r[1], bytes.NewReader(data[r[0]:r[1]])); err != nil {
			t.Fatal(err)
		}
	}
}

// The tail a reader uses is the run of parts from the segment's first byte: overlapping
// parts continue it, parts past a gap are never read, and the segment is served padded.
func TestTheTailIsTheRunOfPartsFromTheFirstByte(t *testing.T) {
	ctx := context.Background()
	a, _ := InitArchive(ctx, memory.New(), testIdentity(), nil)
	data := segBytes(seg1M)
	// [0,100) [100,250) [180,300) overlapping (a retried upload), then a gap, then [400,500).
	putParts(t, a, 5, data, [2]uint64{0, 100}, [2]uint64{100, 250}, [2]uint64{180, 300}, [2]uint64{400, 500})
	tail, err := a.ListTail(ctx, 1, 5)
	if err != nil {
		t.Fatal(err)
	}
	if tail.Complete || len(tail.Parts) != 4 {
		t.Fatalf("ListTail = %+v; want 4 parts and no complete segment", tail)
	}
	if _, end := tail.Run(); end != 300 {
		t.Fatalf("run ends at %d, want 300 (the part past the gap at 300 is not part of it)", end)
	}
	var buf bytes.Buffer
	src, err := a.FetchWALFile(ctx, SegmentName(1, 5, seg1M), &buf)
	if err != nil || src != FetchedPartial {
		t.Fatalf("FetchWALFile = %v, %v; want the tail", src, err)
	}
	got := buf.Bytes()
	if len(got) != seg1M {
		t.Fatalf("served %d bytes, want the segment size %d", len(got), seg1M)
	}
	if !bytes.Equal(got[:300], data[:300]) {
		t.Fatal("the served tail differs from the WAL in its first 300 bytes")
	}
	if !bytes.Equal(got[300:], make([]byte, seg1M-300)) {
		t.Fatal("bytes past the run (the part past the gap) were served")
	}
	ok, missing, err := a.HasWAL(ctx, 1, SegmentStartLSN(5, seg1M), SegmentStartLSN(5, seg1M)+300)
	if err != nil || !ok {
		t.Fatalf("HasWAL up to the run's end = %v, %q, %v; want true", ok, missing, err)
	}
	ok, missing, _ = a.HasWAL(ctx, 1, SegmentStartLSN(5, seg1M), SegmentStartLSN(5, seg1M)+301)
	if ok || !strings.Contains(missing, "tail up to") {
		t.Fatalf("HasWAL past the run = %v, %q; want missing, naming the tail's end", ok, missing)
	}
	end, _, err := a.TimelineEnd(ctx, 1)
	if err != nil || end != SegmentStartLSN(5, seg1M)+300 {
		t.Fatalf("TimelineEnd = %s, %v; want the run's end", end, err)
	}
	// The complete segment supersedes the tail, which is then removed.
	if _, err := a.PutImmutable(ctx, SegmentKey(1, 5, seg1M), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if err := a.DeleteTail(ctx, 1, 5); err != nil {
		t.Fatal(err)
	}
	if tail, _ := a.ListTail(ctx, 1, 5); !tail.Complete || !tail.Empty() {
		t.Fatalf("after DeleteTail: %+v; want the complete segment and no parts", tail)
	}
}

// A part whose stored bytes do not match the range its name gives is corrupt, for readers
// and for verify.
func TestAPartShorterThanItsNameIsCorrupt(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	a, _ := InitArchive(ctx, st, testIdentity(), nil)
	data := segBytes(1000)
	if _, err := a.Put(ctx, PartKey(1, 7, seg1M, 0, 1000), bytes.NewReader(data[:900])); err != nil {
		t.Fatal(err)
	}
	if _, err := a.FetchWALFile(ctx, SegmentName(1, 7, seg1M), &bytes.Buffer{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("FetchWALFile of a short part: %v; want ErrCorrupt", err)
	}
	r, err := a.Verify(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Problems) == 0 || !strings.Contains(r.Problems[0].Detail, "its name says 1000") {
		t.Fatalf("verify problems %v; want the short part named", r.Problems)
	}
}

// Part names are checked: a reader never guesses at a key it does not understand.
func TestPartKeysParseStrictly(t *testing.T) {
	f, err := ParseWALKey(PartKey(2, 9, seg1M, 0x10, 0x2000), seg1M)
	if err != nil || f.Kind != WALFilePart || f.Timeline != 2 || f.SegNo != 9 || f.PartStart != 0x10 || f.PartEnd != 0x2000 {
		t.Fatalf("ParseWALKey(part) = %+v, %v", f, err)
	}
	dir := PartsDir(2, 9, seg1M)
	for _, bad := range []string{dir + "00000010-00000010", dir + "00000010-00200000", dir + "10-2000", dir + "0000001g-00002000", "wal/00000003/" + SegmentName(2, 9, seg1M) + ".parts/00000000-00000010"} {
		if _, err := ParseWALKey(bad, seg1M); err == nil {
			t.Errorf("ParseWALKey(%q) accepted", bad)
		}
	}
}

// A format-2 archive is read (its partial is a tail of one part) and a writer moves it to
// format 3; a format this code does not know is refused.
func TestAFormat2ArchiveIsReadAndMovedOn(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	old := testIdentity()
	old.FormatVersion = 2
	data, _ := json.Marshal(old)
	if err := putSmall(ctx, st, IdentityKey, data, CompressionNone, nil); err != nil {
		t.Fatal(err)
	}
	a, err := OpenArchive(ctx, st, nil)
	if err != nil {
		t.Fatalf("a format-2 archive is not read: %v", err)
	}
	wal := segBytes(seg1M)
	if _, err := a.Put(ctx, PartialKey(1, 3, seg1M), bytes.NewReader(wal[:5000])); err != nil {
		t.Fatal(err)
	}
	putParts(t, a, 3, wal, [2]uint64{5000, 6000})
	var buf bytes.Buffer
	if _, err := a.FetchWALFile(ctx, SegmentName(1, 3, seg1M), &buf); err != nil || !bytes.Equal(buf.Bytes()[:6000], wal[:6000]) {
		t.Fatalf("the format-2 partial and a part after it are not read as one tail: %v", err)
	}
	w, err := InitArchive(ctx, st, testIdentity(), nil)
	if err != nil || w.UpgradedFrom != 2 || w.Identity.FormatVersion != FormatVersion {
		t.Fatalf("InitArchive on format 2 = %+v, %v; want it moved to %d", w, err, FormatVersion)
	}
	if a, err := OpenArchive(ctx, st, nil); err != nil || a.Identity.FormatVersion != FormatVersion {
		t.Fatalf("after the move the stored identity is %+v, %v", a, err)
	}
	future := testIdentity()
	future.FormatVersion = FormatVersion + 1
	data, _ = json.Marshal(future)
	putSmall(ctx, st, IdentityKey, data, CompressionNone, nil)
	if _, err := OpenArchive(ctx, st, nil); err == nil || !strings.Contains(err.Error(), "newer kcbackup") {
		t.Fatalf("a newer format: %v; want it refused", err)
	}
}

// A part past a gap (a writer killed with parts in flight) holds no WAL a reader uses: the
// recovery window ends when the run's newest part was stored, never at the stray part's
// time, or a restore to a time after the run's end would succeed without its commits.
func TestAPartPastAGapDoesNotMoveTheWindowsEnd(t *testing.T) {
	ctx := context.Background()
	t0 := time.Now().Add(-2 * time.Hour).UTC().Truncate(time.Second)
	st := memory.New()
	a, _ := InitArchive(ctx, st, testIdentity(), nil)
	fakeWAL(t, a, 1, 2, 4, t0)
	putBackups(t, a, backupAt("20260101T000000Z", 2, t0))
	data := segBytes(seg1M)
	putParts(t, a, 5, data, [2]uint64{0, 100}, [2]uint64{300, 400})
	runAt, strayAt := t0.Add(time.Hour), t0.Add(time.Hour+time.Minute)
	st.SetModTime(PartKey(1, 5, seg1M, 0, 100), runAt)
	st.SetModTime(PartKey(1, 5, seg1M, 300, 400), strayAt)
	for n := uint64(2); n <= 4; n++ {
		st.SetModTime(SegmentKey(1, n, seg1M), t0.Add(time.Duration(n)*time.Minute))
	}
	g, err := a.ReadGraph(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := g.Ranges(1)
	if err != nil || len(rs) != 1 {
		t.Fatalf("ranges %v, %v; want one", rs, err)
	}
	if !rs[0].To.Equal(runAt) || rs[0].Hole {
		t.Fatalf("the window ends at %s (hole %v); want %s, when the run's newest part was stored, not the stray part's %s", rs[0].To, rs[0].Hole, runAt, strayAt)
	}
	// A segment whose only part lies past a gap holds nothing a reader uses: not stored.
	putParts(t, a, 6, data, [2]uint64{50, 60})
	g, _ = a.ReadGraph(ctx)
	if complete, partial := g.Has(1, 6); complete || partial {
		t.Fatalf("a segment with only a part past a gap counts as stored (complete %v, partial %v)", complete, partial)
	}
}

// listMissing is a store whose listings miss one key, as a paged listing taken while that
// object was written misses it.
type listMissing struct {
	storage.Storage
	hide string
}

func (l listMissing) List(ctx context.Context, prefix string) ([]storage.ObjectInfo, error) {
	objs, err := l.Storage.List(ctx, prefix)
	out := objs[:0]
	for _, o := range objs {
		if o.Key != l.hide {
			out = append(out, o)
		}
	}
	return out, err
}

// A segment completed between two pages of a listing shows only its tail, with the next
// segment's WAL after it: the reading looks the segment up once more instead of reporting a
// hole (the history checker's soak saw one with more than 1000 keys in sync mode). A real
// hole, a segment that is only a tail with WAL after it, is still one.
func TestAListingThatMissedACompletedSegmentShowsNoHole(t *testing.T) {
	ctx := context.Background()
	t0 := time.Now().Add(-2 * time.Hour).UTC().Truncate(time.Second)
	st := memory.New()
	a, _ := InitArchive(ctx, st, testIdentity(), nil)
	fakeWAL(t, a, 1, 2, 8, t0)
	putBackups(t, a, backupAt("20260101T000000Z", 2, t0))
	data := segBytes(seg1M)
	putParts(t, a, 8, data, [2]uint64{0, 4096})
	putParts(t, a, 9, data, [2]uint64{0, 100})
	a.Storage = listMissing{Storage: st, hide: SegmentKey(1, 8, seg1M)}
	g, err := a.ReadGraph(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := g.Path(1)
	if end := g.Reach(p, 2); end.Missing != "" || end.LastSegment != 9 {
		t.Fatalf("a listing that missed complete segment 8 reports %+v; want the live end at segment 9, no hole", end)
	}
	// Segment 8 really only a tail, WAL after it: a hole.
	st.Delete(ctx, SegmentKey(1, 8, seg1M))
	g, _ = a.ReadGraph(ctx)
	if end := g.Reach(p, 2); end.Missing != SegmentName(1, 8, seg1M) {
		t.Fatalf("segment 8 stored only as a tail with WAL after it: %+v; want it reported missing", end)
	}
}
