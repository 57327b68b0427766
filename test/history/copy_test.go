package history

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
)

// copyWriterTTL is the copy's sidecar's --writer-ttl: short, so that it tries to claim the
// archive again and again while the copy runs (it retries at most every TTL).
const copyWriterTTL = 3 * time.Second

// copyRefusedTimeout bounds the wait for the copy's sidecar to report its refusal.
const copyRefusedTimeout = time.Minute

// refusals are the reasons the copy's sidecar may give (its status' lastError): production
// is a live writer, or the copy is not the continuation of what the archive holds.
var refusals = []string{"live writer", "copy of an earlier state"}

// restoredCopy is issue 19's story: the archive restored into a new directory at a point
// F of reported range N, started, and given its own sidecar (own spool) on the same
// archive, while production goes on. The copy writes rows. Its sidecar must be refused
// (lastError says why), the archive must gain no timeline from it, and production's
// archiving must go on; the checks after the step (a restore to latest among them) must
// see production's history only. The copy and its sidecar are stopped at the end.
func (w *world) restoredCopy(s step) error {
	cat, err := w.catalog()
	if err != nil {
		return err
	}
	if len(cat.Ranges) == 0 {
		w.logf("  no reported range: nothing to copy")
		return nil
	}
	rg := cat.Ranges[s.N%len(cat.Ranges)]
	target := pointIn(rg, s.F)
	if err := w.waitArchived(); err != nil {
		return err
	}
	parent, err := os.MkdirTemp("", "kcbackup-history-copy-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(parent)
	os.Chmod(parent, 0o755)
	dir := filepath.Join(parent, "pgdata")
	to := target.Format(time.RFC3339Nano)
	_, stderr, code := w.kcbackup(cliTimeout, nil, "restore", "--storage", w.url, "--pgdata", dir, "--to", to,
		"--timeline", fmt.Sprint(rg.Timeline), "--owner", "postgres")
	if code != 0 {
		return fail("a: every reported time restores", "restore of a copy --to %s --timeline %d (in reported %s): exit %d: %s", to, rg.Timeline, rg, code, strings.TrimSpace(stderr))
	}
	w.logf("  copy restored to %s on timeline %d (range %s)", to, rg.Timeline, rg)
	// The copy runs in a subtest: a start the harness gives up on fails that subtest, and
	// its cleanups stop the copy and its sidecar when it ends.
	var opErr error
	ok := w.t.Run("copy", func(t *testing.T) { opErr = w.runCopy(t, dir, s, cat.Timelines) })
	if opErr == nil && !ok {
		opErr = fail("a: every reported time restores", "the restored copy did not start (its log is in the subtest's output above)")
	}
	return opErr
}

// runCopy starts the restored copy in dir and its sidecar, and checks that the sidecar is
// refused while production archives on.
func (w *world) runCopy(t *testing.T, dir string, s step, before []uint32) error {
	// Step 1: start the copy and wait for its promotion.
	cp := harness.StartFromDataDir(t, dir, harness.PGOptions{})
	defer cp.Stop(context.Background(), "fast")
	ctx, cancel := context.WithTimeout(w.ctx, promoteTimeout)
	defer cancel()
	if err := cp.WaitPromoted(ctx); err != nil {
		return fail("a: every reported time restores", "the restored copy did not finish recovery: %v\n%s", err, tailLines(cp.Log(), 25))
	}
	if w.plan.Config.Sync {
		// Its configuration names the sidecar as synchronous standby; it never streams.
		if err := w.setConf(cp, map[string]string{"synchronous_standby_names": "''"}); err != nil {
			return err
		}
	}
	copyTLI, err := w.timeline(cp)
	if err != nil {
		return err
	}
	// Step 2: its own sidecar (own spool) on the same archive.
	cs := harness.StartSidecar(t, cp, harness.SidecarOptions{Storage: w.url, Env: w.env, NoWait: true,
		Args: []string{"--partial-interval", w.plan.Config.Partial, "--writer-ttl", copyWriterTTL.String()}})
	defer cs.Stop(time.Minute)
	why, err := w.waitRefused(cs, 0)
	if err != nil {
		return err
	}
	w.logf("  the copy's sidecar (timeline %d) is refused: %s", copyTLI, clip(why, 200))
	// Step 3: the copy writes rows (and ends a segment), production too.
	refused := refusalCount(cs.Log())
	for i := 0; i < 20+s.N%40; i++ {
		if err := cp.Exec(w.ctx, fmt.Sprintf("INSERT INTO ledger (note) VALUES ('copy-s%d-%d-%d')", w.plan.Seed, w.step, i)); err != nil {
			return fmt.Errorf("write into the copy: %w", err)
		}
	}
	if err := cp.Exec(w.ctx, "SELECT pg_switch_wal()"); err != nil {
		return err
	}
	if err := w.write(20 + s.N%60); err != nil {
		return err
	}
	// Step 4: the copy's sidecar tried again after the copy wrote, and was refused again;
	// production archived its rows meanwhile.
	if _, err := w.waitRefused(cs, refused); err != nil {
		return err
	}
	if err := w.waitArchived(); err != nil {
		return err
	}
	// Step 5: the archive gained no timeline from the copy.
	cat, err := w.catalog()
	if err != nil {
		return err
	}
	for _, tli := range cat.Timelines {
		if w.m.Timelines[tli] == nil {
			return fail("one writer: a restored copy never archives into the archive", "the archive holds timeline %d, which production never wrote (the copy is on timeline %d; timelines before: %v, now: %v)\ncopy's sidecar:\n%s",
				tli, copyTLI, before, cat.Timelines, tailLines(cs.Log(), 20))
		}
	}
	if slices.Contains(cat.Timelines, copyTLI) && copyTLI != w.m.Live {
		return fail("one writer: a restored copy never archives into the archive", "the archive holds the copy's timeline %d", copyTLI)
	}
	// Step 6: the archive's newest writer claim is not the copy's.
	a, err := w.archive()
	if err != nil {
		return err
	}
	ws, err := a.WriterState(w.ctx)
	if err != nil {
		return fmt.Errorf("read the archive's writer state: %w", err)
	}
	if ws.Claim != nil && ws.Claim.Timeline == copyTLI {
		return fail("one writer: a restored copy never archives into the archive", "the archive's newest writer claim is the copy's: %s", ws.Describe(time.Now()))
	}
	w.logf("  copy on timeline %d refused %d times; the archive's timelines stay %v; its writer: %s", copyTLI, refusalCount(cs.Log()), cat.Timelines, ws.Describe(time.Now()))
	return nil
}

// waitRefused waits until the copy's sidecar has logged more than after refusals and
// reports one of refusals in its status; it fails as soon as the sidecar streams.
func (w *world) waitRefused(cs *harness.Sidecar, after int) (string, error) {
	deadline := time.Now().Add(copyRefusedTimeout)
	last := ""
	for time.Now().Before(deadline) {
		st, err := cs.Status(w.ctx)
		if err == nil {
			if st.Streaming {
				return "", fail("one writer: a restored copy is refused", "the copy's sidecar streams (timeline %d, archived %q) while production archives:\n%s", st.Timeline, st.ArchivedLSN, tailLines(cs.Log(), 20))
			}
			last = st.LastError
			for _, r := range refusals {
				if strings.Contains(last, r) && refusalCount(cs.Log()) > after {
					return last, nil
				}
			}
		}
		if cs.Exited() {
			return "", fail("one writer: a restored copy is refused", "the copy's sidecar exited instead of retrying:\n%s", tailLines(cs.Log(), 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return "", fail("one writer: a restored copy is refused", "the copy's sidecar did not report a refusal (%q) within %s after %d refusals; last error %q\n%s",
		refusals, copyRefusedTimeout, after, last, tailLines(cs.Log(), 20))
}

// refusalCount counts the claims the sidecar's log shows refused.
func refusalCount(log string) int {
	return strings.Count(log, "may not archive into this archive")
}

// clip shortens s to at most n bytes for a log line.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
