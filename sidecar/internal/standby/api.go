package standby

import (
	"context"
	"errors"
	"fmt"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/sidecar/internal/streamer"
	"github.com/kcbackup/kcbackup/walarchive"
)

// ErrNotPrimary is wrapped by Standby's and WaitArchived's errors while the server is not
// the primary.
var ErrNotPrimary = errors.New("this pod's PostgreSQL is not the primary")

// Standby returns nil while the server is the primary, else an error naming what it is
// (the API answers 421 with it).
func (s *Supervisor) Standby() error {
	switch s.Phase() {
	case PhasePrimary:
		return nil
	case PhaseStandby:
		return fmt.Errorf("%w: it is a streaming standby (pg_is_in_recovery() is true), whose sidecar stands by and neither archives nor takes backups; send this to the sidecar of the primary", ErrNotPrimary)
	}
	return fmt.Errorf("%w: the sidecar does not know yet whether its PostgreSQL is the primary (%s); try again shortly", ErrNotPrimary, s.lastError())
}

func (s *Supervisor) lastError() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastErr == nil {
		return "no answer yet"
	}
	return s.lastErr.Error()
}

// Archive returns the archive: the streamer's while the server is the primary, else the
// archive opened read-only for the standby (nil before either knows it). It is what the
// backup service and the WAL cache read the catalog and WAL from.
func (s *Supervisor) Archive() *walarchive.Archive {
	if st := s.current(); st != nil {
		return st.Archive()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.readOnly
}

// WaitArchived waits until WAL up to lsn is archived; only the primary's sidecar archives.
func (s *Supervisor) WaitArchived(ctx context.Context, lsn walarchive.LSN) error {
	st := s.current()
	if st == nil {
		return fmt.Errorf("wait for WAL up to %s to be archived: %w", lsn, s.Standby())
	}
	return st.WaitArchived(ctx, lsn)
}

// Ready reports whether the sidecar does its job: on the primary, streaming with the
// storage up; on a standby, keeping its slot.
func (s *Supervisor) Ready() error {
	if st := s.current(); st != nil {
		ss := st.Status()
		switch {
		case !ss.Streaming:
			return fmt.Errorf("not streaming from PostgreSQL: %s", orStarting(ss.LastError))
		case !ss.StorageUp:
			return errors.New("archive storage is failing")
		}
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.phase != PhaseStandby:
		return fmt.Errorf("not streaming from PostgreSQL: %s", orStarting(errString(s.lastErr)))
	case s.slotErr != nil:
		return fmt.Errorf("standing by, but the standby's slot is not kept: %v", s.slotErr)
	case !s.slot.Exists:
		return errors.New("standing by: the standby's slot is not made yet")
	}
	return nil
}

// Status is the API's status: the streamer's on the primary; on a standby, role
// "standby", what the standby has replayed and where the archive ends.
func (s *Supervisor) Status() apiclient.Status {
	if st := s.current(); st != nil {
		out := StatusOf(st.Status())
		out.Role = apiclient.RolePrimary
		return out
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := apiclient.Status{Role: string(s.phase), StorageUp: s.slotErr == nil, ServerFlushLSN: s.server.WALPosition.String()}
	if s.archived > 0 {
		out.ArchivedLSN = s.archived.String()
	}
	switch {
	case s.lastErr != nil:
		out.LastError = s.lastErr.Error()
	case s.phase == PhaseStandby && s.slotErr != nil:
		out.LastError = "standing by (the server is a standby); the standby's slot is not kept: " + s.slotErr.Error()
	case s.phase == PhaseStandby:
		out.LastError = fmt.Sprintf("standing by: the server is a standby; slot %s keeps its WAL from %s, where the archive ends, for when it is promoted", s.cfg.Slot, s.slot.RestartLSN)
	}
	return out
}

// StatusOf converts the streamer's status to the API's.
func StatusOf(s streamer.Status) apiclient.Status {
	st := apiclient.Status{
		SystemIdentifier: s.SystemIdentifier, Timeline: s.Timeline, ServerFlushLSN: s.ServerFlushLSN.String(),
		ArchiveLagBytes: s.ArchiveLagBytes, ArchiveLagSeconds: s.ArchiveLagSeconds,
		StorageUp: s.StorageUp, Streaming: s.Streaming, ReceivedLSN: s.ReceivedLSN.String(),
		LastError: s.LastError,
	}
	if s.ArchivedLSN > 0 {
		st.ArchivedLSN = s.ArchivedLSN.String()
	}
	return st
}

func orStarting(s string) string {
	if s == "" {
		return "starting"
	}
	return s
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
