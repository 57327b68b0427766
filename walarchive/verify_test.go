package walarchive

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// supersedingStorage completes a partial segment the moment it is first read, as the
// sidecar does between verify's listing and its reads on a live archive.
type supersedingStorage struct {
	storage.Storage
	a    *Archive
	done bool
	seg  []byte
}

func (s *supersedingStorage) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if strings.HasSuffix(key, PartialSuffix) && !s.done {
		s.done = true
		f, _ := ParseWALKey(key, seg1M)
		if _, err := s.a.PutImmutable(ctx, SegmentKey(f.Timeline, f.SegNo, seg1M), bytes.NewReader(s.seg)); err != nil {
			return nil, err
		}
		if err := s.Storage.Delete(ctx, key); err != nil {
			return nil, err
		}
	}
	return s.Storage.Get(ctx, key)
}

func TestVerifyOnALiveArchiveIgnoresAPartialReplacedByItsSegment(t *testing.T) {
	ctx := context.Background()
	t0 := time.Now().Add(-time.Hour)
	a := fakeArchive(t, 2, 9, t0, backupAt("20260101T000000Z", 2, t0))
	g := newWALGen(pg15, seg1M, 10)
	g.commit(t0)
	g.switchSegment()
	if _, err := a.Put(ctx, PartialKey(1, 10, seg1M), bytes.NewReader(g.segment(10)[:8192])); err != nil {
		t.Fatal(err)
	}
	live := &Archive{Storage: &supersedingStorage{Storage: a.Storage, a: a, seg: g.segment(10)}, Identity: a.Identity}
	rep, err := live.Verify(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The backup's object is fake (checked against its record): only that may be reported.
	for _, p := range rep.Problems {
		if strings.Contains(p.Object, "wal/") {
			t.Errorf("verify reported %s on a healthy live archive", p)
		}
	}
	if !live.Storage.(*supersedingStorage).done {
		t.Fatal("the partial was never read: the test did not race")
	}
	// A hole is a warning, not a problem.
	a.Storage.Delete(ctx, SegmentKey(1, 5, seg1M))
	rep, err = a.Verify(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0].Detail, "hole") {
		t.Errorf("warnings %v; want one WAL hole", rep.Warnings)
	}
}
