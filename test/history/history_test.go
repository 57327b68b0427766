package history

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/test/harness"
)

// Environment variables that select what TestHistory runs.
const (
	envRun       = "KCBACKUP_HISTORY"            // "1": run the short default seeds
	envSeed      = "KCBACKUP_HISTORY_SEED"       // run this one seed
	envSeeds     = "KCBACKUP_HISTORY_SEEDS"      // run this many seeds, from envFirstSeed
	envFirstSeed = "KCBACKUP_HISTORY_FIRST_SEED" // first of envSeeds (default 1)
	envSteps     = "KCBACKUP_HISTORY_STEPS"      // steps per seed
	envPlan      = "KCBACKUP_HISTORY_PLAN"       // run exactly this plan (as a failure prints it)
	envReport    = "KCBACKUP_HISTORY_REPORT"     // append one JSON line per failure to this file
)

// defaultSeeds and defaultSteps are the short run: a file:// history (restore, promotion,
// prune), a MinIO one (backup, outage, prune, restore) and a MinIO one whose store ignores
// If-None-Match (a restored copy beside production, an in-place restore, a slow store at
// segment boundaries, a backup), a PostgreSQL 16 one (promotion, backups, a copy) and a
// PostgreSQL 19 one (a copy, a promotion, a slow store at segment boundaries).
var defaultSeeds = []int64{22, 29, 10, 37, 50}

const defaultSteps, soakSteps = 4, 10

func TestHistory(t *testing.T) {
	seeds, steps, err := selection()
	if err != nil {
		t.Fatal(err)
	}
	if p := os.Getenv(envPlan); p != "" {
		seed := int64(0)
		if len(seeds) == 1 {
			seed = seeds[0]
		}
		pl, err := parsePlan(seed, p)
		if err != nil {
			t.Fatalf("%s: %v", envPlan, err)
		}
		t.Run("plan", func(t *testing.T) { runPlan(t, pl).report(t) })
		return
	}
	if seeds == nil {
		t.Skipf("the history checker runs when asked: %s=1 (short seeds), %s=N, %s=N or `make soak SEEDS=N`", envRun, envSeed, envSeeds)
	}
	var total tally
	for _, seed := range seeds {
		pl := generatePlan(seed, steps)
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { total.merge(runPlan(t, pl)) })
	}
	total.report(t)
}

// tally counts what the histories ran: steps by operation (those applied, failed or not),
// seeds by configuration, and the checks the new operations make.
type tally map[string]int

func (c *tally) add(what string, n int) {
	if *c == nil {
		*c = tally{}
	}
	(*c)[what] += n
}

func (c *tally) merge(o tally) {
	for k, n := range o {
		c.add(k, n)
	}
}

// report logs the tally and appends it to the soak report (envReport) as a line of its
// own ("kind": "summary"; failure lines have none).
func (c tally) report(t *testing.T) {
	keys := slices.Sorted(maps.Keys(c))
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, c[k]))
	}
	t.Logf("soak summary: %s", strings.Join(parts, " "))
	if path := os.Getenv(envReport); path != "" {
		line, _ := json.Marshal(map[string]any{"kind": "summary", "counts": c})
		if f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			f.Write(append(line, '\n'))
			f.Close()
		}
	}
}

// selection reads which seeds to run and how many steps each has.
func selection() ([]int64, int, error) {
	steps := defaultSteps
	var seeds []int64
	num := func(name string) (int64, error) {
		n, err := strconv.ParseInt(os.Getenv(name), 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%s=%q: expected a number >= 0", name, os.Getenv(name))
		}
		return n, nil
	}
	if os.Getenv(envSeeds) != "" {
		steps = soakSteps
		n, err := num(envSeeds)
		if err != nil {
			return nil, 0, err
		}
		first := int64(1)
		if os.Getenv(envFirstSeed) != "" {
			if first, err = num(envFirstSeed); err != nil {
				return nil, 0, err
			}
		}
		for i := int64(0); i < n; i++ {
			seeds = append(seeds, first+i)
		}
	}
	if os.Getenv(envSeed) != "" {
		n, err := num(envSeed)
		if err != nil {
			return nil, 0, err
		}
		seeds = []int64{n}
	}
	if seeds == nil && (os.Getenv(envRun) == "1" || harness.InCI()) { // CI never skips it
		seeds = defaultSeeds
	}
	if os.Getenv(envSteps) != "" {
		n, err := num(envSteps)
		if err != nil {
			return nil, 0, err
		}
		steps = int(n)
	}
	return seeds, steps, nil
}

// runPlan runs one history: setup, then each step followed by the invariant checks. The
// first broken invariant ends the history with a report that replays it.
func runPlan(t *testing.T, p plan) tally {
	w := &world{t: t, ctx: t.Context(), plan: p, m: newModel()}
	w.tally.add("seeds", 1)
	w.tally.add("seeds-storage-"+p.Config.Storage, 1)
	if p.Config.Compat != "" {
		w.tally.add("seeds-compat-"+p.Config.Compat, 1)
	}
	defer func() {
		if t.Failed() {
			w.tally.add("seeds-failed", 1)
		}
	}()
	t.Logf("seed %d plan: %s", p.Seed, p)
	started := time.Now()
	current := -1
	defer func() {
		if t.Failed() && current >= -1 {
			t.Logf("history of seed %d failed at step %d; plan: %s", p.Seed, current, p)
		}
	}()
	stepOf := func(i int) step {
		if i < 0 {
			return step{Op: "setup"}
		}
		return p.Steps[i]
	}
	failed := false
	report := func(i int, err error) {
		s := stepOf(i)
		failed = true
		inv := "operation " + s.Op + " failed"
		var f *failure
		if errors.As(err, &f) {
			inv = f.Invariant
		}
		t.Errorf("HISTORY FAILURE seed=%d step=%d (%s) invariant=%q after %s:\n%v\n\nplan: %s\nreplay: %s='%s' go test ./test/history -run TestHistory -v\n   or: %s=%d %s=%d go test ./test/history -run TestHistory -v\nsteps so far:\n%s",
			p.Seed, i, s, inv, time.Since(started).Round(time.Second), err, p, envPlan, p, envSeed, p.Seed, envSteps, len(p.Steps), strings.Join(w.log, "\n"))
		if path := os.Getenv(envReport); path != "" {
			line, _ := json.Marshal(map[string]any{"seed": p.Seed, "step": i, "op": s.String(), "invariant": inv, "error": err.Error(), "plan": p.String()})
			if f, ferr := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); ferr == nil {
				f.Write(append(line, '\n'))
				f.Close()
			}
		}
		current = -2 // reported
	}
	w.report, w.step = report, -1
	setup := step{Op: "setup"}
	if err := w.setup(); err != nil {
		report(-1, err)
		return w.tally
	}
	if err := w.check(-1, setup, len(p.Steps) == 0); err != nil {
		report(-1, err)
		return w.tally
	}
	for i, s := range p.Steps {
		current, w.step = i, i
		at := time.Now()
		w.logf("step %d: %s", i, s)
		w.tally.add("steps", 1)
		w.tally.add("op-"+s.Op, 1)
		if err := w.apply(s); err != nil {
			report(i, err)
			return w.tally
		}
		if err := w.check(i, s, i == len(p.Steps)-1); err != nil {
			report(i, err)
			return w.tally
		}
		w.logf("step %d: %s done in %s", i, s, time.Since(at).Round(100*time.Millisecond))
	}
	if !failed {
		t.Logf("seed %d: %d steps clean in %s", p.Seed, len(p.Steps), time.Since(started).Round(time.Second))
	}
	return w.tally
}

func TestGeneratedPlansReplayFromTheirText(t *testing.T) {
	for seed := int64(1); seed < 50; seed++ {
		p := generatePlan(seed, 12)
		q, err := parsePlan(seed, p.String())
		if err != nil || q.String() != p.String() {
			t.Fatalf("seed %d: plan %q parsed back as %q (%v)", seed, p, q, err)
		}
		if p.String() != generatePlan(seed, 12).String() {
			t.Fatalf("seed %d: two plans differ", seed)
		}
	}
	for _, bad := range []string{"storage=file,sync=false,partial=1s,compat=yes", "", "storage=tape,sync=false,partial=1s", "storage=file,sync=false,partial=1s write:x:0.1", "storage=file,sync=false,partial=1s fly:1:0.1"} {
		if _, err := parsePlan(1, bad); err == nil {
			t.Errorf("parsePlan(%q) accepted a bad plan", bad)
		}
	}
}

func TestGeneratedPlansHoldTheNewOperations(t *testing.T) {
	seen := map[string]int{}
	for seed := int64(1); seed <= 100; seed++ {
		p := generatePlan(seed, 10)
		for _, s := range p.Steps {
			seen[s.Op]++
		}
		if p.Config.Compat != "" {
			seen["compat"]++
			if !strings.Contains(p.String(), ",compat="+compatIgnoreConditionalWrites) {
				t.Fatalf("seed %d: the plan line %q does not name compat", seed, p)
			}
		}
	}
	for _, want := range []string{opCopy, opBoundary, opPartCrash, "compat"} {
		if seen[want] == 0 {
			t.Errorf("100 generated plans of 10 steps hold no %s (seen %v)", want, seen)
		}
	}
}

// Operations added later replace steps from a stream of their own: seeds whose plans hold
// none of them keep the plans they had before (here as printed before copy and boundary).
func TestEarlierPlansKeepTheirSteps(t *testing.T) {
	for seed, want := range map[int64]string{
		22: "storage=file,sync=false,partial=1s,pg=17 restore:700:0.625 promote:105:0.262 prune:595:0.123 write:57:0.221",
		29: "storage=s3,sync=false,partial=200ms backup:670:0.134 outage:49:0.016 prune:731:0.004 restore:313:0.231",
	} {
		if got := generatePlan(seed, 4).String(); got != want {
			t.Errorf("seed %d: plan %q; before the new operations it was %q", seed, got, want)
		}
	}
}
