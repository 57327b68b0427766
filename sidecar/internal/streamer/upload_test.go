package streamer

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kcbackup/kcbackup/walarchive"
	"github.com/kcbackup/kcbackup/walarchive/storage"
	"github.com/kcbackup/kcbackup/walarchive/storage/memory"
)

const testSegSize = 1 << 20

// slowStore delays every write to WAL by delay (a store a round trip away), and after each
// write lands it reads the archive's graph: what a listing shows at that moment.
type slowStore struct {
	storage.Storage
	delay   time.Duration
	archive func() *walarchive.Archive
	mu      sync.Mutex
	seen    []string // the holes a listing showed
	writes  int
}

func (s *slowStore) write(ctx context.Context, key string, put func() error) error {
	switch {
	case strings.Contains(key, walarchive.PartsSuffix+"/"):
		time.Sleep(s.delay / 6) // a few bytes
	case strings.HasPrefix(key, "wal/"):
		time.Sleep(s.delay) // a whole segment
	}
	if err := put(); err != nil {
		return err
	}
	s.check(ctx)
	return nil
}

func (s *slowStore) Put(ctx context.Context, key string, r io.Reader) error {
	return s.write(ctx, key, func() error { return s.Storage.Put(ctx, key, r) })
}

func (s *slowStore) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	return s.write(ctx, key, func() error { return s.Storage.PutIfAbsent(ctx, key, r) })
}

func (s *slowStore) check(ctx context.Context) {
	if s.archive == nil {
		return
	}
	a := s.archive()
	if a == nil {
		return
	}
	g, err := a.ReadGraph(ctx)
	if err != nil {
		return
	}
	p, err := g.Path(1)
	if err != nil {
		return
	}
	end := g.Reach(p, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	if end.Missing != "" {
		s.seen = append(s.seen, end.Missing)
	}
}

// testStreamer builds a streamer over st that holds the archive's writer claim, without a
// server: the test feeds its spool directly.
func testStreamer(t *testing.T, st storage.Storage, interval time.Duration) *Streamer {
	t.Helper()
	s, err := New(Config{PG: &pgconn.Config{}, Slot: "kcbackup", PartialInterval: interval, SpoolDir: t.TempDir(), Storage: st})
	if err != nil {
		t.Fatal(err)
	}
	a, err := walarchive.InitArchive(context.Background(), st, walarchive.Identity{
		SystemIdentifier: "7000000000000000001", PostgresVersion: 15, WALSegmentSize: testSegSize,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.archive, s.segSize, s.writerEpoch = a, testSegSize, 1
	s.ack.startSession(walarchive.SegmentStartLSN(1, testSegSize), 0)
	s.setOnce.Do(func() { close(s.archiveSet) })
	return s
}

// At every segment boundary the complete segment and the next segment's first bytes are
// uploaded; on a slow store no listing taken while they land ever shows a hole (issue 19:
// the tail of N+1 landed before N), and the acknowledged position only moves forward over
// stored WAL.
func TestUploadsAtSegmentBoundariesNeverShowAHoleOnASlowStore(t *testing.T) {
	ss := &slowStore{Storage: memory.New(), delay: 60 * time.Millisecond}
	s := testStreamer(t, ss, 0)
	ss.archive = s.Archive
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); s.uploader(ctx) }()

	fill := func(seg *segment, n uint64) {
		for seg.written < n {
			if err := s.writeSegment(seg, make([]byte, min(n-seg.written, testSegSize/4))); err != nil {
				t.Fatal(err)
			}
			s.poke()
		}
	}
	cur, err := s.openSegment(1, 1)
	if err != nil {
		t.Fatal(err)
	}
	for segno := uint64(1); segno <= 4; segno++ {
		fill(cur, testSegSize)
		// The next segment's first bytes arrive before segment N is handed over: the
		// uploader then has N to store and N+1's tail pending at once.
		next, err := s.openSegment(1, segno+1)
		if err != nil {
			t.Fatal(err)
		}
		fill(next, 100)
		s.endSegment(cur)
		if err := s.WaitArchived(ctxTimeout(t, 30*time.Second), walarchive.SegmentStartLSN(segno+1, testSegSize)+100); err != nil {
			t.Fatal(err)
		}
		cur = next
	}
	cancel()
	<-done
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.writes == 0 {
		t.Fatal("no write was observed")
	}
	if len(ss.seen) > 0 {
		t.Fatalf("listings during uploads showed holes at %v", ss.seen)
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// A writer superseded by a hand-over is fenced at its next renewal: it stops uploading,
// drops what it had not stored, and acknowledges nothing more.
func TestAFencedWriterStoresNothingMore(t *testing.T) {
	st := memory.New()
	s := testStreamer(t, st, 0)
	s.cfg.WriterTTL = time.Second
	s.writerID = "0123456789abcdef0123456789abcdef"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := s.archive.Claim(ctx, 0, walarchive.WriterClaim{Kind: walarchive.ClaimWriter, WriterID: s.writerID, Timeline: 1})
	if err != nil {
		t.Fatal(err)
	}
	s.holdEpoch(c.Epoch)
	done := make(chan struct{})
	go func() { defer close(done); s.uploader(ctx) }()
	go s.keepClaim(ctx)

	seg, err := s.openSegment(1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.writeSegment(seg, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	s.poke()
	if err := s.WaitArchived(ctxTimeout(t, 10*time.Second), walarchive.SegmentStartLSN(1, testSegSize)+1000); err != nil {
		t.Fatal(err)
	}
	if _, err := s.archive.HandOver(ctx, walarchive.Handover{ParentTimeline: 1, AfterTimeline: 1}, "restore", "test"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		fenced := s.writerEpoch == 0 && s.fencedBy != nil
		s.mu.Unlock()
		if fenced {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer was not fenced within 10 renewals")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// More WAL arrives, and the segment ends: nothing of it is stored or acknowledged.
	if err := s.writeSegment(seg, make([]byte, testSegSize-1000)); err != nil {
		t.Fatal(err)
	}
	s.endSegment(seg)
	s.poke()
	if job, _, _ := s.nextJob(ctx); job != nil {
		t.Fatal("a fenced writer still has uploads to do")
	}
	if _, err := st.Stat(ctx, walarchive.SegmentKey(1, 1, testSegSize)); err == nil {
		t.Fatal("a fenced writer stored the complete segment")
	}
	if got := s.ack.archivedLSN(); got != walarchive.SegmentStartLSN(1, testSegSize)+1000 {
		t.Fatalf("archived position moved to %s after fencing", got)
	}
	// Claiming the archive again (the hand-over accepted for a restored server) drops what
	// the fenced session left in the spool.
	s.holdEpoch(3)
	if n := s.spool.bytes(); n != 0 {
		t.Fatalf("after claiming again the spool still holds %d bytes of the fenced session", n)
	}
	cancel()
	<-done
}
