package history

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"

	"github.com/kcbackup/kcbackup/walarchive"
	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// checkImmutable is invariant (e), on a seed whose store ignores If-None-Match (Compat):
// through an Archive opened on storage.WithoutConditionalWrites, replacing a stored complete
// segment and a stored history file (one of each, chosen by r) with different bytes fails
// with ErrConflict and leaves the stored bytes as they were; so does a tail part (format 3)
// of a timeline the cluster left, stored again over its range with other bytes (a live
// tail's parts are removed when its segment completes, and a part stored in a removed
// part's place would stay). At setup it also checks that
// the sidecar found out the store ignores conditional writes.
func (w *world) checkImmutable(r *rand.Rand, setup bool) error {
	const inv = "e: a stored segment, history or tail part is never replaced (store ignoring If-None-Match)"
	if setup && !strings.Contains(w.sc.Log(), "ignores conditional writes") {
		return fail(inv, "with KCBACKUP_STORAGE_COMPAT=%s the sidecar did not log that the store ignores conditional writes:\n%s", w.plan.Config.Compat, tailLines(w.sc.Log(), 20))
	}
	plain, err := w.archive()
	if err != nil {
		return err
	}
	a := *plain
	a.Storage = storage.WithoutConditionalWrites(plain.Storage)
	a.Conditional = walarchive.ConditionalUnknown
	if c, err := a.ProbeConditionalWrites(w.ctx); err != nil || c != walarchive.ConditionalIgnored {
		return fail(inv, "ProbeConditionalWrites on storage.WithoutConditionalWrites = %v, %v; want %v", c, err, walarchive.ConditionalIgnored)
	}
	objs, err := a.Storage.List(w.ctx, "wal/")
	if err != nil {
		return err
	}
	var segs, hists, parts []walarchive.WALFile
	var keys, partKeys []string
	for _, o := range objs {
		f, err := walarchive.ParseWALKey(o.Key, a.SegmentSize())
		switch {
		case err != nil:
		case f.Kind == walarchive.WALFileSegment:
			segs, keys = append(segs, f), append(keys, o.Key)
		case f.Kind == walarchive.WALFileHistory:
			hists = append(hists, f)
		case f.Kind == walarchive.WALFilePart && f.Timeline != w.m.Live:
			parts, partKeys = append(parts, f), append(partKeys, o.Key)
		}
	}
	done := []string{}
	if len(segs) > 0 {
		i := r.IntN(len(segs))
		other := make([]byte, a.SegmentSize())
		for j := range other {
			other[j] = byte(r.IntN(256))
		}
		if err := w.tryReplace(&a, inv, keys[i], func() error {
			_, err := a.PutImmutable(w.ctx, keys[i], bytes.NewReader(other))
			return err
		}); err != nil {
			return err
		}
		done = append(done, keys[i])
	}
	if len(hists) > 0 {
		h := hists[r.IntN(len(hists))]
		key := walarchive.HistoryKey(h.Timeline)
		other := walarchive.TimelineHistory{{Parent: h.Timeline - 1, SwitchPoint: walarchive.LSN(0x7000000 + r.IntN(1<<20)), Reason: "not this archive's"}}.Format()
		if err := w.tryReplace(&a, inv, key, func() error { return a.PutHistory(w.ctx, h.Timeline, other) }); err != nil {
			return err
		}
		done = append(done, key)
	}
	if len(parts) > 0 {
		i := r.IntN(len(parts))
		p := parts[i]
		other := make([]byte, p.PartEnd-p.PartStart)
		for j := range other {
			other[j] = byte(r.IntN(256))
		}
		if err := w.tryReplace(&a, inv, partKeys[i], func() error {
			_, err := a.PutPart(w.ctx, p.Timeline, p.SegNo, p.PartStart, p.PartEnd, bytes.NewReader(other))
			return err
		}); err != nil {
			return err
		}
		done = append(done, partKeys[i])
	}
	w.tally.add("immutability-check", 1)
	w.logf("  (e) store ignoring If-None-Match: %s kept (ErrConflict)", strings.Join(done, ", "))
	return nil
}

// tryReplace runs put, which stores different bytes under key, and checks that it fails
// with ErrConflict and that the stored object's bytes did not change.
func (w *world) tryReplace(a *walarchive.Archive, inv, key string, put func() error) error {
	before, err := w.rawObject(a, key)
	if err != nil {
		return err
	}
	perr := put()
	after, err := w.rawObject(a, key)
	if err != nil {
		return err
	}
	if !bytes.Equal(before, after) {
		return fail(inv, "%s was replaced by different bytes (%d bytes before, %d after; put returned %v)", key, len(before), len(after), perr)
	}
	if !errors.Is(perr, walarchive.ErrConflict) {
		return fail(inv, "storing different bytes under %s returned %v; want ErrConflict (the stored bytes are unchanged)", key, perr)
	}
	return nil
}

// rawObject reads an object's stored bytes (framing included).
func (w *world) rawObject(a *walarchive.Archive, key string) ([]byte, error) {
	rc, err := a.Storage.Get(w.ctx, key)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	defer rc.Close()
	return io.ReadAll(rc)
}
