package walarchive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// One archive has one live writer (docs/reliability.md 30). Who that is lives in the archive
// itself, as a numbered log of claims plus one heartbeat:
//
//	writer/<epoch>.claim   immutable: who took the archive over, when and why (written
//	                       with PutIfAbsent, so of two claimants of one epoch one wins)
//	writer/lease.json      the holder's heartbeat: epoch, timeline, when it was renewed and
//	                       for how long it holds (replaced on every renewal)
//
// The newest claim is the archive's writer. A sidecar archives only while it holds the
// newest claim: it checks for a newer one on every renewal, and one that finds it was
// superseded (fenced) stops uploading and drops what it had not stored. A claim lapses
// when its heartbeat is older than its TTL (a crashed writer), or at once when its holder
// stopped and released it. A new server may claim a lapsed archive only when it is the
// continuation of what the archive holds (ContinuationOf); anything else, such as a copy
// restored to an earlier point, needs an explicit hand-over (an in-place restore writes
// one; kcbackup restore --handover too).
//
// Claims and the heartbeat are never encrypted (they hold identities, hosts and times, no
// data): a sidecar given only the recipients of an encrypted archive must read them.
const (
	writerPrefix   = "writer/"
	writerLeaseKey = writerPrefix + "lease.json"
	claimSuffix    = ".claim"
)

// DefaultWriterTTL is how long a writer's claim holds after its last renewal.
const DefaultWriterTTL = 30 * time.Second

// ErrNotWriter is returned (wrapped) when this server may not write into the archive: the
// archive has another live writer, or the server is not the continuation of what the
// archive holds. The message names the other writer and what to do.
var ErrNotWriter = errors.New("this server may not archive into this archive")

// ErrAwaitingPromotion is returned (wrapped, with ErrNotWriter) while the archive is handed
// over to a restored server that is still in recovery: it may claim the archive once it
// promotes, so the claim is worth retrying soon.
var ErrAwaitingPromotion = errors.New("the restored server has not promoted yet")

// ErrFenced is returned (wrapped) when a writer finds that a newer claim superseded its own.
var ErrFenced = errors.New("this writer was superseded by a newer claim on the archive")

// ClaimKind says why a claim was written.
type ClaimKind string

const (
	// ClaimWriter is a server's sidecar taking the archive.
	ClaimWriter ClaimKind = "writer"
	// ClaimHandover reserves the archive for a server being restored in place: only a
	// server that Handover.Accepts may claim it next.
	ClaimHandover ClaimKind = "handover"
)

// WriterClaim is one entry of the archive's writer log.
type WriterClaim struct {
	Epoch uint64    `json:"epoch"`
	Kind  ClaimKind `json:"kind"`
	// WriterID identifies the claiming sidecar; it survives the sidecar's restarts (it is
	// kept in its spool directory), so a restarted sidecar recognises its own claim.
	WriterID string `json:"writerID,omitempty"`
	// Host is where the claimant ran (a pod name), for messages.
	Host string `json:"host,omitempty"`
	// Timeline is the server's timeline when it claimed.
	Timeline  uint32    `json:"timeline,omitempty"`
	ClaimedAt time.Time `json:"claimedAt"`
	// Reason says how the claim came about, for people.
	Reason   string    `json:"reason,omitempty"`
	Handover *Handover `json:"handover,omitempty"`
}

// Handover describes the server an in-place restore makes the archive's next writer: the
// one promoted from recovery along ParentTimeline from a backup that stopped at FromLSN,
// onto a timeline newer than every timeline the archive had then.
type Handover struct {
	ParentTimeline uint32 `json:"parentTimeline"`
	FromLSN        LSN    `json:"fromLSN"`
	AfterTimeline  uint32 `json:"afterTimeline"`
	BackupID       string `json:"backupID,omitempty"`
	Target         string `json:"target,omitempty"`
}

// Accepts reports whether a server on timeline tli with history h is the one restored:
// it branched from ParentTimeline at or after FromLSN onto a timeline newer than
// AfterTimeline.
func (h Handover) Accepts(tli uint32, hist TimelineHistory) error {
	if tli == h.ParentTimeline {
		return fmt.Errorf("the server is on timeline %d; the archive was handed over to a server restored along timeline %d once it promotes onto a timeline after %d: %w", tli, h.ParentTimeline, h.AfterTimeline, ErrAwaitingPromotion)
	}
	if tli <= h.AfterTimeline || len(hist) == 0 {
		return fmt.Errorf("the server is on timeline %d; the archive was handed over to a server restored along timeline %d and promoted onto a timeline after %d", tli, h.ParentTimeline, h.AfterTimeline)
	}
	last := hist[len(hist)-1]
	if last.Parent != h.ParentTimeline || last.SwitchPoint < h.FromLSN {
		return fmt.Errorf("the server's timeline %d branched from timeline %d at %s; the archive was handed over to a server restored along timeline %d from %s", tli, last.Parent, last.SwitchPoint, h.ParentTimeline, h.FromLSN)
	}
	return nil
}

// WriterLease is the holder's heartbeat.
type WriterLease struct {
	Epoch     uint64    `json:"epoch"`
	WriterID  string    `json:"writerID"`
	Host      string    `json:"host,omitempty"`
	Timeline  uint32    `json:"timeline"`
	RenewedAt time.Time `json:"renewedAt"`
	// TTLSeconds is how long the claim holds after RenewedAt.
	TTLSeconds float64 `json:"ttlSeconds"`
	// Released is set by a writer that stopped cleanly: its claim lapses at once.
	Released bool `json:"released,omitempty"`
}

// WriterState is the archive's writer log as last read: its newest claim (nil when no
// server has claimed the archive yet) and the heartbeat.
type WriterState struct {
	Claim *WriterClaim
	Lease *WriterLease
}

// Epoch is the newest claim's epoch (0: none).
func (s WriterState) Epoch() uint64 {
	if s.Claim == nil {
		return 0
	}
	return s.Claim.Epoch
}

// Live reports whether the newest claim still holds at now, and until when. A hand-over
// holds until the restored server claims the archive (or another hand-over replaces it).
func (s WriterState) Live(now time.Time) (bool, time.Time) {
	c := s.Claim
	if c == nil {
		return false, time.Time{}
	}
	if c.Kind == ClaimHandover {
		return true, time.Time{}
	}
	if l := s.Lease; l != nil && l.Epoch == c.Epoch && l.WriterID == c.WriterID {
		if l.Released {
			return false, l.RenewedAt
		}
		until := l.RenewedAt.Add(time.Duration(l.TTLSeconds * float64(time.Second)))
		return now.Before(until), until
	}
	// Claimed but never renewed: the claim itself holds for one default TTL.
	until := c.ClaimedAt.Add(DefaultWriterTTL)
	return now.Before(until), until
}

// Timeline is the newest timeline the holder reported (its claim's, or its heartbeat's).
func (s WriterState) Timeline() uint32 {
	if s.Claim == nil {
		return 0
	}
	t := s.Claim.Timeline
	if l := s.Lease; l != nil && l.Epoch == s.Claim.Epoch && l.Timeline > t {
		t = l.Timeline
	}
	return t
}

// Describe names the holder for messages.
func (s WriterState) Describe(now time.Time) string {
	c := s.Claim
	if c == nil {
		return "no writer"
	}
	if c.Kind == ClaimHandover {
		return fmt.Sprintf("a hand-over (claim %d, %s) to the server restored along timeline %d from backup %s", c.Epoch, c.ClaimedAt.UTC().Format(time.RFC3339), c.Handover.ParentTimeline, c.Handover.BackupID)
	}
	live, until := s.Live(now)
	state := "lapsed " + until.UTC().Format(time.RFC3339)
	if live {
		state = "holds until " + until.UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("writer %s on %s (claim %d, timeline %d, %s)", c.WriterID, orUnknown(c.Host), c.Epoch, s.Timeline(), state)
}

func orUnknown(s string) string {
	if s == "" {
		return "an unknown host"
	}
	return s
}

func claimKey(epoch uint64) string { return fmt.Sprintf("%s%020d%s", writerPrefix, epoch, claimSuffix) }

// parseClaimKey returns the epoch of a claim's key.
func parseClaimKey(key string) (uint64, bool) {
	name, ok := strings.CutPrefix(key, writerPrefix)
	if !ok || path.Dir(name) != "." {
		return 0, false
	}
	num, ok := strings.CutSuffix(name, claimSuffix)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(num, 10, 64)
	return n, err == nil && n > 0
}

// WriterState reads the newest claim and the heartbeat.
func (a *Archive) WriterState(ctx context.Context) (WriterState, error) {
	objs, err := a.Storage.List(ctx, writerPrefix)
	if err != nil {
		return WriterState{}, fmt.Errorf("list the archive's writer claims: %w", err)
	}
	var epochs []uint64
	for _, o := range objs {
		if n, ok := parseClaimKey(o.Key); ok {
			epochs = append(epochs, n)
		}
	}
	var st WriterState
	if len(epochs) == 0 {
		return st, nil
	}
	sort.Slice(epochs, func(i, j int) bool { return epochs[i] < epochs[j] })
	var c WriterClaim
	if err := getPlainJSON(ctx, a.Storage, claimKey(epochs[len(epochs)-1]), &c); err != nil {
		return WriterState{}, fmt.Errorf("read the archive's newest writer claim: %w", err)
	}
	if err := c.validate(epochs[len(epochs)-1]); err != nil {
		return WriterState{}, fmt.Errorf("%s: %w: %v", claimKey(epochs[len(epochs)-1]), ErrCorrupt, err)
	}
	st.Claim = &c
	var l WriterLease
	switch err := getPlainJSON(ctx, a.Storage, writerLeaseKey, &l); {
	case errors.Is(err, storage.ErrNotFound):
	case err != nil:
		return WriterState{}, fmt.Errorf("read the archive's writer lease: %w", err)
	default:
		st.Lease = &l
	}
	return st, nil
}

func (c WriterClaim) validate(epoch uint64) error {
	if c.Epoch != epoch {
		return fmt.Errorf("claim says epoch %d", c.Epoch)
	}
	switch c.Kind {
	case ClaimWriter:
		if c.WriterID == "" {
			return errors.New("writer claim without a writer ID")
		}
	case ClaimHandover:
		if c.Handover == nil {
			return errors.New("hand-over claim without its restored server")
		}
	default:
		return fmt.Errorf("unknown claim kind %q (written by a newer kcbackup?)", c.Kind)
	}
	return nil
}

// Claim writes claim c as the next epoch after prev. Of two claimants of one epoch one
// wins; the other gets ErrNotWriter. On a store that ignores conditional writes the race
// is detected at the next renewal instead (see CheckFenced).
func (a *Archive) Claim(ctx context.Context, prev uint64, c WriterClaim) (WriterClaim, error) {
	c.Epoch = prev + 1
	if err := c.validate(c.Epoch); err != nil {
		return WriterClaim{}, err
	}
	if c.ClaimedAt.IsZero() {
		c.ClaimedAt = time.Now().UTC()
	}
	data, err := marshalJSON(c)
	if err != nil {
		return WriterClaim{}, err
	}
	if !a.conditionalWrites() {
		if _, err := a.Storage.Stat(ctx, claimKey(c.Epoch)); err == nil {
			return WriterClaim{}, fmt.Errorf("claim %d was written by someone else at the same moment: %w", c.Epoch, ErrNotWriter)
		} else if !errors.Is(err, storage.ErrNotFound) {
			return WriterClaim{}, fmt.Errorf("write writer claim %d: %w", c.Epoch, err)
		}
	}
	if _, err := putFramedBytes(ctx, a.Storage.PutIfAbsent, claimKey(c.Epoch), data, nil); err != nil {
		if errors.Is(err, storage.ErrExists) {
			return WriterClaim{}, fmt.Errorf("claim %d was written by someone else at the same moment: %w", c.Epoch, ErrNotWriter)
		}
		return WriterClaim{}, fmt.Errorf("write writer claim %d: %w", c.Epoch, err)
	}
	return c, nil
}

// RenewLease writes the holder's heartbeat.
func (a *Archive) RenewLease(ctx context.Context, l WriterLease) error {
	data, err := marshalJSON(l)
	if err != nil {
		return err
	}
	if _, err := putFramedBytes(ctx, a.Storage.Put, writerLeaseKey, data, nil); err != nil {
		return fmt.Errorf("renew the archive's writer lease: %w", err)
	}
	return nil
}

// CheckFenced returns ErrFenced (wrapped, naming the newer claim) when a claim newer than
// epoch exists, or when claim epoch is no longer the one writerID wrote (a store without
// conditional writes let two claimants write it).
func (a *Archive) CheckFenced(ctx context.Context, epoch uint64, writerID string) error {
	if _, err := a.Storage.Stat(ctx, claimKey(epoch+1)); err == nil {
		var c WriterClaim
		desc := fmt.Sprintf("claim %d", epoch+1)
		if getPlainJSON(ctx, a.Storage, claimKey(epoch+1), &c) == nil {
			desc = WriterState{Claim: &c}.Describe(time.Now())
		}
		return fmt.Errorf("%s superseded claim %d: %w", desc, epoch, ErrFenced)
	} else if !errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("check the archive's writer claims: %w", err)
	}
	if a.conditionalWrites() {
		return nil
	}
	var c WriterClaim
	if err := getPlainJSON(ctx, a.Storage, claimKey(epoch), &c); err != nil {
		return fmt.Errorf("read writer claim %d: %w", epoch, err)
	}
	if c.WriterID != writerID {
		return fmt.Errorf("claim %d now names writer %s on %s (the store ignores conditional writes and both wrote it): %w", epoch, c.WriterID, orUnknown(c.Host), ErrFenced)
	}
	return nil
}

// HandOver reserves the archive for the server an in-place restore is making: the current
// writer is fenced at its next renewal, and only a server that h accepts may claim next.
func (a *Archive) HandOver(ctx context.Context, h Handover, host, reason string) (WriterClaim, error) {
	st, err := a.WriterState(ctx)
	if err != nil {
		return WriterClaim{}, err
	}
	return a.Claim(ctx, st.Epoch(), WriterClaim{Kind: ClaimHandover, Host: host, Reason: reason, Handover: &h})
}

// ServerPath is where a server stands: its timeline and that timeline's history.
type ServerPath struct {
	Timeline uint32
	History  TimelineHistory
}

// ContinuationOf checks that a server is the continuation of timeline tli's WAL as the
// archive holds it up to end: the server runs tli itself, or a descendant that branched
// from tli at or after end (it has every byte archived). A server that branched earlier (a
// copy restored to an earlier point, a standby that was behind) would make the archive
// hold two histories at once.
func ContinuationOf(srv ServerPath, tli uint32, end LSN) error {
	if srv.Timeline == tli {
		return nil
	}
	for _, p := range srv.History.Path() {
		if p.Timeline != tli {
			continue
		}
		if p.End >= end {
			return nil
		}
		return fmt.Errorf("the server's timeline %d branched from timeline %d at %s, but the archive holds timeline %d's WAL up to %s: the server is a copy of an earlier state (a restore to a point in time, a standby that was behind)", srv.Timeline, tli, p.End, tli, end)
	}
	if tli > srv.Timeline {
		return fmt.Errorf("the archive's writer is on timeline %d, newer than the server's timeline %d: this server was replaced (a failover or a restore) and must not archive here", tli, srv.Timeline)
	}
	return fmt.Errorf("the archive's writer is on timeline %d, which is not on the server's timeline %d's path (%s)", tli, srv.Timeline, strings.TrimSpace(string(srv.History.Format())))
}

// TimelineEnd returns how far timeline tli's stored WAL reaches (false when it has none):
// the end of its last complete segment, or the length of its last partial. A partial that
// cannot be read counts as a whole segment, so the answer never falls short.
func (a *Archive) TimelineEnd(ctx context.Context, tli uint32) (LSN, bool, error) {
	end, ok, err := a.timelineEnd(ctx, tli)
	if errors.Is(err, storage.ErrNotFound) {
		// The partial was replaced by its complete segment between listing and reading.
		end, ok, err = a.timelineEnd(ctx, tli)
	}
	return end, ok, err
}

func (a *Archive) timelineEnd(ctx context.Context, tli uint32) (LSN, bool, error) {
	objs, err := a.Storage.List(ctx, TimelineDir(tli))
	if err != nil {
		return 0, false, fmt.Errorf("list timeline %d: %w", tli, err)
	}
	var last uint64
	found, complete := false, false
	for _, o := range objs {
		f, err := ParseWALKey(o.Key, a.SegmentSize())
		if err != nil || f.Timeline != tli {
			continue
		}
		if !found || f.SegNo > last {
			last, complete, found = f.SegNo, false, true
		}
		if f.SegNo == last && f.Kind == WALFileSegment {
			complete = true
		}
	}
	if !found {
		return 0, false, nil
	}
	if complete {
		return SegmentStartLSN(last+1, a.SegmentSize()), true, nil
	}
	t, err := a.ListTail(ctx, tli, last)
	if errors.Is(err, ErrCorrupt) || errors.Is(err, ErrWrongKey) {
		return SegmentStartLSN(last+1, a.SegmentSize()), true, nil
	}
	if err != nil {
		return 0, false, err
	}
	if t.Complete {
		return SegmentStartLSN(last+1, a.SegmentSize()), true, nil
	}
	// The tail's run from the first byte; parts past a gap are uploads that never
	// completed in order: the claim's end is what a reader can use.
	_, n := t.Run()
	return SegmentStartLSN(last, a.SegmentSize()) + LSN(n), true, nil
}

// getPlainJSON reads an unencrypted framed JSON object (see the writer log's keys).
func getPlainJSON(ctx context.Context, st storage.Storage, key string, v any) error {
	data, err := getSmall(ctx, st, key, nil)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %w: %v", key, ErrCorrupt, err)
	}
	return nil
}

// isPlainKey reports whether key is stored unencrypted in an encrypted archive.
func isPlainKey(key string) bool { return key == IdentityKey || strings.HasPrefix(key, writerPrefix) }
