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
// per ancestor, comments starting with '#', blank lines ignored. Timelines must increase.
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
		if n := len(h); n > 0 && (uint32(tli) <= h[n-1].Parent || lsn < h[n-1].SwitchPoint) {
			return nil, fmt.Errorf("timeline history line %d: timeline %d at %s does not follow timeline %d at %s", line, tli, lsn, h[n-1].Parent, h[n-1].SwitchPoint)
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
// current timeline is tli and whose history is h: the first ancestor whose switch point
// lies after lsn, or tli itself.
func (h TimelineHistory) TimelineOf(lsn LSN, tli uint32) uint32 {
	for _, s := range h {
		if lsn < s.SwitchPoint {
			return s.Parent
		}
	}
	return tli
}

// SwitchPointOf returns where timeline parent ended according to h, and whether h names it.
func (h TimelineHistory) SwitchPointOf(parent uint32) (LSN, bool) {
	for _, s := range h {
		if s.Parent == parent {
			return s.SwitchPoint, true
		}
	}
	return 0, false
}
