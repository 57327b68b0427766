package streamer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/kcbackup/kcbackup/sidecar/internal/pgrepl"
	"github.com/kcbackup/kcbackup/walarchive"
)

// stream receives timeline tli from start (segment-aligned) until the server ends the
// timeline (returning the next one), an error, or ctx's end (then it drains first).
func (s *Streamer) stream(ctx context.Context, conn *pgconn.PgConn, tli uint32, start walarchive.LSN) (uint32, walarchive.LSN, error) {
	segSize := s.segSize
	pos := start
	cur, err := s.openSegment(tli, pos.SegmentNo(segSize))
	if err != nil {
		return 0, 0, err
	}
	var lastSentFlush walarchive.LSN
	nextStatus := time.Time{}
	nextMetrics := time.Time{}
	sendStatus := func() error {
		write, flush := s.ack.positions(pos)
		if err := pgrepl.SendStandbyStatus(conn, write, flush, s.cfg.Now()); err != nil {
			return err
		}
		lastSentFlush = flush
		nextStatus = time.Now().Add(s.cfg.StatusInterval)
		s.updateLagMetrics(lastSentFlush)
		return nil
	}
	pollEvery := 100 * time.Millisecond
	// A synchronous commit waits for this sidecar's acknowledgement: when the archived
	// position moves while a receive is blocked, the receive is interrupted and the status
	// goes out at once, not at the next poll.
	kctx, stopKick := context.WithCancel(ctx)
	defer stopKick()
	kick := newAckKick(kctx, s.ack.moved)

	for {
		if ctx.Err() != nil {
			s.drain(cur)
			if err := sendStatus(); err != nil {
				s.log.Warn("could not send the final flush position", "err", err)
			} else if err := endCopy(conn); err != nil {
				s.log.Warn("final flush position sent; the server did not confirm the end of streaming", "flush", lastSentFlush, "err", err)
			} else {
				s.log.Info("stopped; final flush position sent and processed", "flush", lastSentFlush)
			}
			return 0, 0, ctx.Err()
		}
		// Acknowledge as soon as the archive moved; otherwise every StatusInterval.
		if kick.take() || time.Now().After(nextStatus) {
			if err := sendStatus(); err != nil {
				return 0, 0, err
			}
		}
		// Gauges (lag, spool, slot retention) stay fresh between status messages, which
		// are rare while nothing is archived (an outage is exactly when they matter).
		if now := time.Now(); now.After(nextMetrics) {
			s.updateLagMetrics(lastSentFlush)
			nextMetrics = now.Add(time.Second)
		}
		// Back-pressure: past the spool limit, stop reading; the slot keeps the WAL.
		if s.spool.over() {
			select {
			case <-ctx.Done():
			case <-kick.moved:
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}

		rctx, done := kick.receiveContext(ctx, pollEvery)
		msg, err := conn.ReceiveMessage(rctx)
		done()
		if err != nil {
			// A poll that timed out, a receive interrupted to acknowledge, or the end: the
			// connection stays usable (pgconn resumes a message cut by a deadline).
			if pgconn.Timeout(err) || errors.Is(err, context.Canceled) {
				continue
			}
			return 0, 0, fmt.Errorf("receive WAL: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			switch m.Data[0] {
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(m.Data[1:])
				if err != nil {
					return 0, 0, fmt.Errorf("parse XLogData: %w", err)
				}
				data := xld.WALData // valid only until the next receive: written out below
				walStart := walarchive.LSN(xld.WALStart)
				if walStart > pos {
					return 0, 0, fmt.Errorf("server sent WAL from %s but %s was expected: refusing a gap", walStart, pos)
				}
				if skip := uint64(pos - walStart); skip > 0 {
					if skip >= uint64(len(data)) {
						continue
					}
					data = data[skip:]
				}
				for len(data) > 0 {
					room := segSize - pos.SegmentOffset(segSize)
					n := uint64(len(data))
					if n > room {
						n = room
					}
					if err := s.writeSegment(cur, data[:n]); err != nil {
						return 0, 0, err
					}
					pos += walarchive.LSN(n)
					data = data[n:]
					if pos.SegmentOffset(segSize) == 0 {
						s.endSegment(cur)
						if cur, err = s.openSegment(tli, pos.SegmentNo(segSize)); err != nil {
							return 0, 0, err
						}
					}
				}
				s.noteReceived(pos, walarchive.LSN(xld.ServerWALEnd), len(xld.WALData))
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				pkm, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
				if err != nil {
					return 0, 0, fmt.Errorf("parse keepalive: %w", err)
				}
				s.noteServerEnd(walarchive.LSN(pkm.ServerWALEnd))
				if pkm.ReplyRequested {
					if err := sendStatus(); err != nil {
						return 0, 0, err
					}
				}
			}
		case *pgproto3.CopyDone:
			// The server ended this timeline (it was promoted, or we streamed an old
			// timeline). What we have of the last segment is all there will be on tli:
			// it is stored as a partial, never under the segment's final name.
			s.endSegment(cur)
			res, err := pglogrepl.SendStandbyCopyDone(ctx, conn)
			if err != nil {
				return 0, 0, fmt.Errorf("end of timeline %d: %w", tli, err)
			}
			if res == nil || res.Timeline <= int32(tli) {
				return 0, 0, fmt.Errorf("end of timeline %d: the server named no next timeline", tli)
			}
			return uint32(res.Timeline), walarchive.LSN(res.LSN), nil
		case *pgproto3.ErrorResponse:
			return 0, 0, pgconn.ErrorResponseToPgError(m)
		}
	}
}

// endCopy ends streaming with CopyDone and waits, at most 5 seconds, for the server's
// answer: the walsender handles messages in order, so once it answers, the status update
// sent before was processed (the slot has moved).
func endCopy(conn *pgconn.PgConn) error {
	if err := conn.Conn().SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	_, err := pglogrepl.SendStandbyCopyDone(context.Background(), conn)
	return err
}

// openSegment starts receiving segment segno of timeline tli into the spool.
func (s *Streamer) openSegment(tli uint32, segno uint64) (*segment, error) {
	return s.spool.open(tli, segno, s.segSize, s.ack.generation())
}

func (s *Streamer) writeSegment(seg *segment, p []byte) error { return s.spool.write(seg, p) }

// keepReceivedTail hands the segment a failed session was receiving to the uploader,
// which stores what was received as a partial: the walsender sent it, so the server has it
// flushed, and losing the server's disk must lose at most what was never received. The next
// session receives the segment again from its start; a partial only ever grows.
func (s *Streamer) keepReceivedTail() {
	if cur, _ := s.spool.current(); cur != nil {
		s.endSegment(cur)
	}
}

// endSegment hands a segment that will receive no more bytes to the uploader.
func (s *Streamer) endSegment(seg *segment) {
	s.spool.end(seg)
	s.poke()
}

func (s *Streamer) noteReceived(pos, serverEnd walarchive.LSN, n int) {
	s.mu.Lock()
	s.received = pos
	if serverEnd > s.serverFlush {
		s.serverFlush = serverEnd
	}
	if pos > s.serverFlush {
		s.serverFlush = pos
	}
	s.mu.Unlock()
	s.ack.noteReceived(pos)
	s.m.ReceivedWALBytes.Add(float64(n))
	s.m.ServerFlushLSN.Set(float64(s.serverFlushLSN()))
	s.poke()
}

func (s *Streamer) noteServerEnd(end walarchive.LSN) {
	s.mu.Lock()
	if end > s.serverFlush {
		s.serverFlush = end
	}
	s.mu.Unlock()
	s.m.ServerFlushLSN.Set(float64(end))
}

func (s *Streamer) serverFlushLSN() walarchive.LSN {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.serverFlush
}

func (s *Streamer) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Streamer) updateLagMetrics(acked walarchive.LSN) {
	archived := s.ack.archivedLSN()
	lagSec := s.ack.lagSeconds()
	s.mu.Lock()
	lagBytes := int64(0)
	if s.serverFlush > archived {
		lagBytes = int64(s.serverFlush - archived)
	}
	// WAL the slot holds: from its restart_lsn (read over SQL, or else the position last
	// acknowledged) to the server's end.
	held := acked
	if s.slotRestart != 0 {
		held = s.slotRestart
	}
	retained := int64(0)
	if s.serverFlush > held {
		retained = int64(s.serverFlush - held)
	}
	s.mu.Unlock()
	spool := s.spool.bytes()
	s.m.ArchiveLagBytes.Set(float64(lagBytes))
	s.m.ArchiveLagSeconds.Set(lagSec)
	s.m.SlotRetainedBytes.Set(float64(retained))
	s.m.SpoolBytes.Set(float64(spool))
	s.m.ArchivedLSN.Set(float64(archived))
}

// drain waits, up to DrainTimeout, until the uploader has stored every ended segment and
// the tail of the current one.
func (s *Streamer) drain(cur *segment) {
	s.mu.Lock()
	if !s.mayUploadLocked() {
		s.mu.Unlock()
		return // fenced, or never the writer: nothing of this session is ours to store
	}
	s.mu.Unlock()
	s.tail.setDraining()
	s.poke()
	deadline := time.Now().Add(s.cfg.DrainTimeout)
	for time.Now().Before(deadline) {
		_, _, queued := s.spool.head(0, s.segSize)
		done := queued == 0
		if done && cur != nil {
			n := s.spool.written(cur)
			stored, _ := s.tail.storedLen(cur)
			done = n == 0 || stored >= n
		}
		if done {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.log.Warn("shutdown drain timed out; the slot keeps what was not archived", "timeout", s.cfg.DrainTimeout)
}
