package streamer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kcbackup/kcbackup/sidecar/internal/pgrepl"
	"github.com/kcbackup/kcbackup/walarchive"
)

// writerIDFile keeps the sidecar's writer identity in its spool directory, so a restarted
// sidecar (same pod, same volume) recognises its own claim on the archive at once. The
// spool is emptied at start, except for this file.
const writerIDFile = "writer-id"

// loadWriterID reads the writer identity kept in dir, creating it on first use.
func loadWriterID(dir string) (string, error) {
	p := filepath.Join(dir, writerIDFile)
	if b, err := os.ReadFile(p); err == nil {
		id := strings.TrimSpace(string(b))
		if len(id) == 32 {
			if _, err := hex.DecodeString(id); err == nil {
				return id, nil
			}
		}
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	id := hex.EncodeToString(raw[:])
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write writer identity: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return "", fmt.Errorf("write writer identity: %w", err)
	}
	return id, nil
}

// serverPath reads the server's timeline history over the replication connection.
func serverPath(ctx context.Context, conn *pgconn.PgConn, info pgrepl.ServerInfo) (walarchive.ServerPath, error) {
	srv := walarchive.ServerPath{Timeline: info.Timeline}
	if info.Timeline <= 1 {
		return srv, nil
	}
	res, err := pglogrepl.TimelineHistory(ctx, conn, int32(info.Timeline))
	if err != nil {
		return srv, fmt.Errorf("TIMELINE_HISTORY %d: %w", info.Timeline, err)
	}
	if srv.History, err = walarchive.ParseTimelineHistory(res.Content); err != nil {
		return srv, fmt.Errorf("timeline %d history from the server: %w", info.Timeline, err)
	}
	return srv, nil
}

// claimArchive makes this sidecar the archive's one writer for the server it is connected
// to, given the archive's writer log as just read (st), or returns an error wrapping walarchive.ErrNotWriter that says who holds the archive
// and what to do. Run retries it with backoff: a crashed writer's claim lapses, a restored
// server is promoted, a stopped writer releases its claim.
func (s *Streamer) claimArchive(ctx context.Context, a *walarchive.Archive, st walarchive.WriterState, srv walarchive.ServerPath) error {
	now := s.cfg.Now()
	c := st.Claim
	reason := "first writer"
	switch {
	case c != nil && c.Kind == walarchive.ClaimHandover:
		if err := c.Handover.Accepts(srv.Timeline, srv.History); err != nil {
			return fmt.Errorf("%w: %w", walarchive.ErrNotWriter, err)
		}
		reason = fmt.Sprintf("accepted hand-over %d (restore of backup %s to %s)", c.Epoch, c.Handover.BackupID, c.Handover.Target)
	case c != nil && c.WriterID == s.writerID:
		if err := s.checkContinuation(ctx, a, srv, st.Timeline()); err != nil {
			return err
		}
		s.holdEpoch(c.Epoch)
		s.log.Info("holding the archive's writer claim again", "claim", c.Epoch, "timeline", srv.Timeline)
		return s.renewLease(ctx)
	case c != nil:
		if live, until := st.Live(now); live {
			return fmt.Errorf("%w: the archive %s has a live writer: %s; it lapses %s unless renewed. If this server replaces it, stop that sidecar first (it releases its claim); a copy of the cluster (a restore to look at old data, a clone, a second pod) must archive into its own archive: another S3 prefix or volume",
				walarchive.ErrNotWriter, s.cfg.StorageName, st.Describe(now), until.UTC().Format(time.RFC3339))
		}
		if err := s.checkContinuation(ctx, a, srv, st.Timeline()); err != nil {
			return err
		}
		reason = "took over from " + st.Describe(now)
	default:
		tlis, err := a.Timelines(ctx)
		if err != nil {
			return err
		}
		if len(tlis) > 0 {
			if err := s.checkContinuation(ctx, a, srv, tlis[len(tlis)-1]); err != nil {
				return err
			}
		}
	}
	claim, err := a.Claim(ctx, st.Epoch(), walarchive.WriterClaim{
		Kind: walarchive.ClaimWriter, WriterID: s.writerID, Host: s.cfg.Host, Timeline: srv.Timeline, Reason: reason,
	})
	if err != nil {
		return err
	}
	s.holdEpoch(claim.Epoch)
	s.log.Info("claimed the archive as its writer", "claim", claim.Epoch, "timeline", srv.Timeline, "reason", reason)
	return s.renewLease(ctx)
}

// checkContinuation refuses a server that is not the continuation of timeline tli as the
// archive holds it.
func (s *Streamer) checkContinuation(ctx context.Context, a *walarchive.Archive, srv walarchive.ServerPath, tli uint32) error {
	if tli == 0 {
		return nil
	}
	end, ok, err := a.TimelineEnd(ctx, tli)
	if err != nil {
		return err
	}
	if !ok {
		return nil
	}
	if err := walarchive.ContinuationOf(srv, tli, end); err != nil {
		return fmt.Errorf("%w: %v. Point this server at its own archive (another S3 prefix or volume); to make it the archive's writer anyway (the old server is gone for good), restore it with kcbackup restore --handover, which hands the archive over explicitly", walarchive.ErrNotWriter, err)
	}
	return nil
}

// holdEpoch records the claim this sidecar holds (0: none).
func (s *Streamer) holdEpoch(epoch uint64) {
	s.mu.Lock()
	s.writerEpoch = epoch
	drop := s.fencedSpool
	s.fencedSpool = false
	s.mu.Unlock()
	if drop {
		// Claimed again after being fenced: what the fenced sessions left in the spool
		// (the tail kept when the session ended) is not this claim's to store.
		if n := s.spool.clear(); n > 0 {
			s.log.Warn("dropped WAL received before this sidecar was fenced", "bytes", n)
		}
	}
	s.poke()
}

// mayUploadLocked reports whether this sidecar holds the archive's writer claim.
func (s *Streamer) mayUploadLocked() bool { return s.writerEpoch != 0 }

// renewLease writes the heartbeat for the held claim.
func (s *Streamer) renewLease(ctx context.Context) error {
	s.mu.Lock()
	epoch, tli, a := s.writerEpoch, s.timeline, s.archive
	s.mu.Unlock()
	if epoch == 0 || a == nil {
		return nil
	}
	return a.RenewLease(ctx, walarchive.WriterLease{
		Epoch: epoch, WriterID: s.writerID, Host: s.cfg.Host, Timeline: tli,
		RenewedAt: s.cfg.Now().UTC(), TTLSeconds: s.cfg.WriterTTL.Seconds(),
	})
}

// keepClaim renews the held claim every sixth of its TTL and checks, each time, that no
// newer claim superseded it; a superseded sidecar is fenced. It runs until ctx ends.
func (s *Streamer) keepClaim(ctx context.Context) {
	t := time.NewTicker(max(s.cfg.WriterTTL/6, 100*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		epoch, a := s.writerEpoch, s.archive
		s.mu.Unlock()
		if epoch == 0 || a == nil {
			continue
		}
		err := a.CheckFenced(ctx, epoch, s.writerID)
		if errors.Is(err, walarchive.ErrFenced) {
			s.fence(epoch, err)
			continue
		}
		if err == nil {
			err = s.renewLease(ctx)
		}
		if err != nil && ctx.Err() == nil {
			s.noteStorage("lease", err)
		}
	}
}

// fence stops a superseded writer: it uploads nothing more, drops the WAL it had not
// stored (the server's slot still holds it, and it is not this sidecar's to archive any
// more), and ends its session; the next session claims the archive again only if it may.
func (s *Streamer) fence(epoch uint64, why error) {
	s.mu.Lock()
	if s.writerEpoch != epoch {
		s.mu.Unlock()
		return
	}
	s.writerEpoch = 0
	s.fencedBy, s.fencedSpool = why, true
	cancel := s.cancelSession
	s.mu.Unlock()
	s.ack.invalidate() // uploads in flight acknowledge nothing
	dropped := s.spool.clear()
	s.log.Error("fenced: a newer claim took the archive over; this sidecar stops writing into it", "claim", epoch, "err", why, "dropped_unarchived_bytes", dropped)
	s.setErr(why)
	if cancel != nil {
		cancel()
	}
}

// releaseClaim marks the held claim released, so the next writer need not wait for it to
// lapse. It is called once the final uploads are done.
func (s *Streamer) releaseClaim() {
	s.mu.Lock()
	epoch, tli, a := s.writerEpoch, s.timeline, s.archive
	s.writerEpoch = 0
	s.mu.Unlock()
	if epoch == 0 || a == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.CheckFenced(ctx, epoch, s.writerID); err != nil {
		return // superseded (or the store is down): nothing of ours to release
	}
	err := a.RenewLease(ctx, walarchive.WriterLease{
		Epoch: epoch, WriterID: s.writerID, Host: s.cfg.Host, Timeline: tli,
		RenewedAt: s.cfg.Now().UTC(), TTLSeconds: s.cfg.WriterTTL.Seconds(), Released: true,
	})
	if err != nil {
		s.log.Warn("could not release the archive's writer claim; it lapses after its TTL", "claim", epoch, "err", err)
		return
	}
	s.log.Info("released the archive's writer claim", "claim", epoch)
}
