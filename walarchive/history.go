package walarchive

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
)

// TimelineSwitch is one line of a timeline history file: timeline Parent ended at
// SwitchPoint, where its child began.
type TimelineSwitch struct {
	Parent      uint32
	SwitchPoint LSN
	Reason      string
}

// TimelineHistory is the parsed content of a "<tli>.history" file: the ancestors of a
// timeline, oldest first.
type TimelineHistory []TimelineSwitch

// ParseTimelineHistory parses a history file as PostgreSQL writes it (see
// src/backend/access/transam/timeline.c): one "parentTLI<TAB>switchpoint<TAB>reason" line
// per ancestor, comments starting with '#', blank lines ignored. Timelines must increase;
// switch points need not: a restore along an older part of a timeline's path ends that
// timeline before it began (its line then covers no WAL), as PostgreSQL's own
// readTimeLineHistory accepts.
func ParseTimelineHistory(content []byte) (TimelineHistory, error) {
	var h TimelineHistory
	sc := bufio.NewScanner(strings.NewReader(string(content)))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) < 2 {
			return nil, fmt.Errorf("timeline history line %d %q: expected \"<timeline> <switch LSN> [reason]\"", line, text)
		}
		tli, err := strconv.ParseUint(fields[0], 10, 32)
		if err != nil || tli == 0 {
			return nil, fmt.Errorf("timeline history line %d: invalid timeline %q: expected a positive decimal number", line, fields[0])
		}
		lsn, err := ParseLSN(fields[1])
		if err != nil {
			return nil, fmt.Errorf("timeline history line %d: %w", line, err)
		}
		if n := len(h); n > 0 && uint32(tli) <= h[n-1].Parent {
			return nil, fmt.Errorf("timeline history line %d: timeline %d does not follow timeline %d", line, tli, h[n-1].Parent)
		}
		reason := ""
		if i := strings.Index(text, fields[1]); i >= 0 {
			reason = strings.TrimSpace(text[i+len(fields[1]):])
		}
		h = append(h, TimelineSwitch{Parent: uint32(tli), SwitchPoint: lsn, Reason: reason})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read timeline history: %w", err)
	}
	return h, nil
}

// Format writes the history in PostgreSQL's format.
func (h TimelineHistory) Format() []byte {
	var b strings.Builder
	for _, s := range h {
		fmt.Fprintf(&b, "%d\t%s\t%s\n", s.Parent, s.SwitchPoint, s.Reason)
	}
	return []byte(b.String())
}

// TimelineOf returns the timeline that WAL position lsn belongs to, for a cluster whose
// current timeline is tli and whose history is h, as PostgreSQL's tliOfPointInHistory
// does: the newest timeline that began at or before lsn and had not ended by it (ancestor
// i begins where ancestor i-1 ended; tli begins at the last switch point).
func (h TimelineHistory) TimelineOf(lsn LSN, tli uint32) uint32 {
	if len(h) == 0 || lsn >= h[len(h)-1].SwitchPoint {
		return tli
	}
	for i := len(h) - 1; i >= 0; i-- {
		if begin, end := h.span(i); begin <= lsn && lsn < end {
			return h[i].Parent
		}
	}
	return h[0].Parent
}

// span is where ancestor i's WAL lies on the path: from where ancestor i-1 ended to its own
// switch point, cut short where a later timeline began earlier (empty when it covers none).
func (h TimelineHistory) span(i int) (begin, end LSN) {
	if i > 0 {
		begin = h[i-1].SwitchPoint
	}
	end = h[i].SwitchPoint
	for _, s := range h[i+1:] {
		end = min(end, s.SwitchPoint)
	}
	return begin, end
}

// PathPiece is the WAL one ancestor contributes to a timeline's path: [Begin, End).
type PathPiece struct {
	Timeline   uint32
	Begin, End LSN
}

// Path returns each ancestor's piece of the path, oldest first; an ancestor that covers no
// WAL (a restore along an older part of its parent's path) has Begin >= End.
func (h TimelineHistory) Path() []PathPiece {
	out := make([]PathPiece, len(h))
	for i := range h {
		b, e := h.span(i)
		out[i] = PathPiece{Timeline: h[i].Parent, Begin: b, End: e}
	}
	return out
}

// Holds reports whether WAL position lsn of ancestor parent lies on the path h describes:
// parent's WAL up to and including its end (a backup that stopped exactly at a switch point
// lies on both sides).
func (h TimelineHistory) Holds(parent uint32, lsn LSN) bool {
	for i, s := range h {
		if s.Parent == parent {
			begin, end := h.span(i)
			return begin <= lsn && lsn <= end && begin < end
		}
	}
	return false
}
