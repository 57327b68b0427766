package history

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"

	"github.com/kcbackup/kcbackup/test/harness"
)

// Operations a plan is made of.
const (
	opWrite   = "write"   // N ledger rows, one transaction each
	opBackup  = "backup"  // kcbackup backup
	opKill    = "kill"    // sidecar SIGKILL, then restart
	opCrash   = "crash"   // PostgreSQL immediate stop under N rows of load (F >= 0.9 on s3: with the store down), then restart
	opOutage  = "outage"  // MinIO stopped under load, then started (s3 only)
	opPromote = "promote" // a new standby takes over (N rows written first)
	opRestore = "restore" // in-place restore to a point F of a reported range N (mod count)
	opPrune   = "prune"   // kcbackup prune: N encodes the flags, F the --keep-within share
	opHole    = "hole"    // WAL hole: slot invalidated while the sidecar is stopped
	// opCopy: a copy restored to a point F of a reported range N (mod count) runs beside
	// production with its own sidecar on the same archive, and writes rows: it must be
	// refused (issue 19).
	opCopy = "copy"
	// opBoundary: WAL is written across 3 + N%4 segment boundaries while the archive's
	// listing is polled; no hole may ever show on the live path. On s3 the sidecar's
	// complete-segment uploads go through a proxy that holds each for 100 ms * (1 + N%5).
	opBoundary = "boundary"
	// opPartCrash: issue 20's "crash between parts": the sidecar is SIGKILLed, WAL is written
	// past the live tail's stored run, and parts of it past a gap are stored as a crash with
	// parts in flight leaves them (N even: the run's next part missing too); then the sidecar
	// is restarted (see partCrash).
	opPartCrash = "partcrash"
)

// compatIgnoreConditionalWrites is the Compat setting (and KCBACKUP_STORAGE_COMPAT value)
// that makes the store behave as one that ignores If-None-Match.
const compatIgnoreConditionalWrites = "ignore-conditional-writes"

// config is what a seed decides once, before its steps.
type config struct {
	Storage string // "file" or "s3"
	Sync    bool   // synchronous_standby_names = 'kcbackup', --partial-interval 0
	Partial string // --partial-interval
	Commit  string // synchronous_commit in synchronous mode: "on" or "remote_write"
	PG      int    // PostgreSQL major version (harness.PGVersions); 15 when a plan names none
	// Compat is KCBACKUP_STORAGE_COMPAT for the sidecar and every kcbackup command ("" or
	// compatIgnoreConditionalWrites); with it, each check also tries to replace stored
	// immutable objects through a store that ignores conditional writes.
	Compat string
}

// step is one operation with its parameters: N a count or choice, F a fraction in [0, 1).
type step struct {
	Op string
	N  int
	F  float64
}

func (s step) String() string { return fmt.Sprintf("%s:%d:%.3f", s.Op, s.N, s.F) }

// plan is a configuration and its steps; its String form is what KCBACKUP_HISTORY_PLAN takes.
type plan struct {
	Seed   int64
	Config config
	Steps  []step
}

func (p plan) String() string {
	cfg := fmt.Sprintf("storage=%s,sync=%t,partial=%s", p.Config.Storage, p.Config.Sync, p.Config.Partial)
	if p.Config.Commit != "on" {
		cfg += ",commit=" + p.Config.Commit
	}
	if p.Config.PG != harness.PGDefaultVersion {
		cfg += ",pg=" + strconv.Itoa(p.Config.PG)
	}
	if p.Config.Compat != "" {
		cfg += ",compat=" + p.Config.Compat
	}
	parts := []string{cfg}
	for _, s := range p.Steps {
		parts = append(parts, s.String())
	}
	return strings.Join(parts, " ")
}

// weights of the operations in a generated plan. The operations added later (newOps) are
// not drawn from here, so that earlier plans keep their steps.
var weights = []struct {
	op string
	w  int
}{
	{opWrite, 3}, {opBackup, 2}, {opKill, 1}, {opCrash, 1}, {opOutage, 1},
	{opPromote, 1}, {opRestore, 3}, {opPrune, 2}, {opHole, 1},
}

// generatePlan derives a whole plan from seed, before anything runs, so a seed replays
// the same operations with the same parameters.
func generatePlan(seed int64, steps int) plan {
	r := rand.New(rand.NewPCG(uint64(seed), 0x6b636b7570))
	p := plan{Seed: seed}
	p.Config.Storage = []string{"file", "s3"}[r.IntN(2)]
	p.Config.Sync = r.IntN(4) == 0
	p.Config.Partial = []string{"200ms", "1s"}[r.IntN(2)]
	if p.Config.Sync {
		p.Config.Partial = "0"
	}
	total := 0
	for _, w := range weights {
		total += w.w
	}
	for len(p.Steps) < steps {
		pick := r.IntN(total)
		var op string
		for _, w := range weights {
			if pick < w.w {
				op = w.op
				break
			}
			pick -= w.w
		}
		if op == opOutage && p.Config.Storage != "s3" {
			op = opWrite
		}
		s := step{Op: op, N: r.IntN(1000), F: float64(r.IntN(1000)) / 1000}
		switch op {
		case opWrite, opCrash, opPromote, opOutage:
			s.N = 20 + s.N%180
		}
		p.Steps = append(p.Steps, s)
	}
	// Operations added later replace a step now and then, drawn from a stream of their own:
	// a seed's other steps stay those it had before they existed.
	// The crash between parts (issue 20) comes from a stream of its own, before copy and
	// boundary, so that the steps those replace stay as they were (its stream leaves the
	// short default seeds as they were).
	parts := rand.New(rand.NewPCG(uint64(seed), 0x7061727476))
	for i := range p.Steps {
		if parts.IntN(partCrashOneIn) == 0 {
			p.Steps[i].Op = opPartCrash
		}
	}
	later := rand.New(rand.NewPCG(uint64(seed), 0x6c61746572))
	for i := range p.Steps {
		if k := later.IntN(newOpsOneIn); k < len(newOps) {
			p.Steps[i].Op = newOps[k]
		}
	}
	// Drawn last, so that the plans of earlier versions keep their steps.
	p.Config.Commit = "on"
	if p.Config.Sync && r.IntN(2) == 0 {
		p.Config.Commit = "remote_write"
	}
	// Every supported version the harness runs; a seed names its version, whatever is
	// installed, so it replays the same everywhere.
	p.Config.PG = harness.PGVersions[r.IntN(len(harness.PGVersions))]
	if r.IntN(4) == 0 {
		p.Config.Compat = compatIgnoreConditionalWrites
	}
	return p
}

// newOps replace one step in newOpsOneIn each (each op equally likely).
var newOps = []string{opCopy, opBoundary}

const newOpsOneIn = 12

// partCrashOneIn: a crash between parts replaces one step in partCrashOneIn.
const partCrashOneIn = 10

// parsePlan reads the String form of a plan.
func parsePlan(seed int64, s string) (plan, error) {
	fields := strings.Fields(s)
	if len(fields) == 0 {
		return plan{}, fmt.Errorf("empty plan: expected \"storage=file,sync=false,partial=1s op:N:F ...\"")
	}
	p := plan{Seed: seed, Config: config{Commit: "on", PG: harness.PGDefaultVersion}}
	for _, kv := range strings.Split(fields[0], ",") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "storage":
			if v != "file" && v != "s3" {
				return plan{}, fmt.Errorf("plan: storage=%q: expected file or s3", v)
			}
			p.Config.Storage = v
		case "sync":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return plan{}, fmt.Errorf("plan: sync=%q: expected true or false", v)
			}
			p.Config.Sync = b
		case "partial":
			p.Config.Partial = v
		case "commit":
			if v != "on" && v != "remote_write" {
				return plan{}, fmt.Errorf("plan: commit=%q: expected on or remote_write", v)
			}
			p.Config.Commit = v
		case "compat":
			if v != compatIgnoreConditionalWrites {
				return plan{}, fmt.Errorf("plan: compat=%q: expected %s", v, compatIgnoreConditionalWrites)
			}
			p.Config.Compat = v
		case "pg":
			n, err := strconv.Atoi(v)
			if err != nil || !slices.Contains(harness.PGVersions, n) {
				return plan{}, fmt.Errorf("plan: pg=%q: expected one of %v", v, harness.PGVersions)
			}
			p.Config.PG = n
		default:
			return plan{}, fmt.Errorf("plan: unknown setting %q: expected storage, sync, partial, commit, pg or compat", k)
		}
	}
	if p.Config.Storage == "" || p.Config.Partial == "" {
		return plan{}, fmt.Errorf("plan %q: storage and partial are required", fields[0])
	}
	known := map[string]bool{}
	for _, w := range weights {
		known[w.op] = true
	}
	for _, op := range append([]string{opPartCrash}, newOps...) {
		known[op] = true
	}
	for _, f := range fields[1:] {
		parts := strings.Split(f, ":")
		if len(parts) != 3 || !known[parts[0]] {
			return plan{}, fmt.Errorf("plan step %q: expected op:N:F with op one of write, backup, kill, crash, outage, promote, restore, prune, hole, copy, boundary, partcrash", f)
		}
		n, err1 := strconv.Atoi(parts[1])
		x, err2 := strconv.ParseFloat(parts[2], 64)
		if err1 != nil || err2 != nil || n < 0 || x < 0 || x >= 1 {
			return plan{}, fmt.Errorf("plan step %q: expected a count N >= 0 and a fraction 0 <= F < 1", f)
		}
		p.Steps = append(p.Steps, step{Op: parts[0], N: n, F: x})
	}
	return p, nil
}
