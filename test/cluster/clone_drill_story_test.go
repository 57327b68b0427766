//go:build cluster

package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cloneStatus is the part of a restore into a new instance's status the story reads.
type cloneStatus struct {
	Phase      string `json:"phase"`
	Conditions []struct {
		Type, Status, Reason, Message string
	} `json:"conditions"`
	Restore *struct {
		Step             string `json:"step"`
		PreviousTimeline int64  `json:"previousTimeline"`
		Timeline         int64  `json:"timeline"`
		Instance         *struct {
			StatefulSet, Service, Claim, Host string
			Port                              int32
			Timeline                          int64
			Duration                          string
			Removed                           bool
		} `json:"instance"`
		Drill *struct {
			MarkerXID string `json:"markerXID"`
			MarkerLSN string `json:"markerLSN"`
			Counts    []struct {
				Table    string `json:"table"`
				Source   int64  `json:"source"`
				Restored *int64 `json:"restored"`
			} `json:"counts"`
			Skipped []string `json:"skipped"`
			Checks  []struct {
				Name, Result, Message string
			} `json:"checks"`
			RTO string `json:"rto"`
			RPO string `json:"rpo"`
		} `json:"drill"`
	} `json:"restore"`
	Drill *struct {
		LastDrill  string `json:"lastDrill"`
		LastResult string `json:"lastResult"`
		LastRTO    string `json:"lastRTO"`
		LastRPO    string `json:"lastRPO"`
		LastMsg    string `json:"lastMessage"`
	} `json:"drill"`
}

func (s cloneStatus) ready() (reason, msg string) {
	for _, c := range s.Conditions {
		if c.Type == "Ready" {
			return c.Reason, c.Status + " " + c.Reason + ": " + c.Message
		}
	}
	return "", "no Ready condition"
}

func (p place) cloneStatus(ctx context.Context, name string) (cloneStatus, error) {
	out, err := p.get(ctx, "keycloakbackup", name, "{.status}")
	var st cloneStatus
	if err != nil || out == "" {
		return st, err
	}
	return st, json.Unmarshal([]byte(out), &st)
}

// plugin builds kubectl-kcbackup (as make build does) and returns a function running it
// against the test cluster, in namespace ns.
func plugin(t *testing.T, ctx context.Context, namespace string) func(args ...string) (string, error) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kubectl-kcbackup")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./operator/kubectl-kcbackup")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build kubectl-kcbackup: %v\n%s", err, out)
	}
	return func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig", node.Kubeconfig, "-n", namespace}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
}

// unboundPV is a hostPath PersistentVolume of the local class with no claimRef: the
// controller-manager binds it to any claim of that class (a drill's, whose name the
// story does not know in advance).
func unboundPV(name, dir string) string { return hostPathPVIn(name, "", "", dir) }

// TestCloneAndDrillStory: next to a live production PostgreSQL archiving to a file archive,
// a restore into a new instance (kubectl kcbackup restore --into) holds exactly the rows
// committed by the target while production keeps running and writing, and never writes the
// archive; restore drills (the archive's spec.drill schedule, and kubectl kcbackup drill)
// restore to a marked transaction, check it and remove their instance.
func TestCloneAndDrillStory(t *testing.T) {
	ctx := context.Background()
	p := place{ns: ns, sts: "kc-clone"}
	dumpPlaceOnFailure(t, p)
	kubectlKcbackup := plugin(t, ctx, ns)

	data := hostDir(t, "clone-prod", 999, 999, 0o700)
	archive := hostDir(t, "clone-archive", 65532, 999, 0o2775)
	cloneDir := hostDir(t, "clone-into", 999, 999, 0o700)
	objs := hostPathPVIn("kc-clone-data", ns, "data-kc-clone-0", data) +
		hostPathPVIn("kc-clone-archive", ns, "kc-clone-archive", archive) + claim(ns, "kc-clone-archive") +
		hostPathPVIn("kc-clone-into", ns, "kc-clone-copy-data", cloneDir) +
		p.statefulSet(onePG)
	if out, err := node.KubectlStdin(ctx, objs, "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	p.rollout(t, ctx)

	// The archive's resource: a nightly schedule (spec.drill belongs beside a schedule), and
	// a base backup now, as a user takes one (kubectl kcbackup backup).
	t.Log("production: the archive's resource (nightly schedule) and a base backup now")
	if _, err := node.KubectlStdin(ctx, p.kcb("clone-src", "kc-clone-archive", "  schedule: \"0 3 * * *\"\n"), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	conn, target := p.ordersAroundTarget(t, ctx, kubectlKcbackup, "clone-src", "clone-base")

	// Production keeps writing, from its own connection, through the clone and the drills.
	var next atomic.Int64
	next.Store(100000)
	stopWriting := make(chan struct{})
	var writerErr error
	var wg sync.WaitGroup
	w := p.conn(t, ctx, p.pod(0))
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stopWriting:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := w.Exec(ctx, "INSERT INTO orders VALUES ($1, 'during')", next.Add(1)); err != nil {
				writerErr = err
				return
			}
		}
	}()
	stopWriter := func() {
		select {
		case <-stopWriting:
		default:
			close(stopWriting)
		}
		wg.Wait()
		if writerErr != nil {
			t.Errorf("production's writer failed: %v", writerErr)
		}
	}
	t.Cleanup(stopWriter)

	before := p.podState(t, ctx)

	t.Log("clone: kubectl kcbackup restore clone-src --to T --into kc-clone-copy --wait")
	out, err := kubectlKcbackup("restore", "clone-src", "--to", target.Format(time.RFC3339), "--into", "kc-clone-copy", "--name", "clone-copy", "--wait")
	t.Logf("kubectl-kcbackup restore --into:\n%s", out)
	if err != nil {
		t.Fatalf("kubectl-kcbackup restore --into: %v", err)
	}
	st, err := p.cloneStatus(ctx, "clone-copy")
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != "Restored" || st.Restore == nil || st.Restore.Instance == nil {
		_, msg := st.ready()
		t.Fatalf("clone-copy: phase %q, %s", st.Phase, msg)
	}
	inst := st.Restore.Instance
	if inst.Service != "kc-clone-copy" || inst.Timeline < 2 || inst.Duration == "" {
		t.Errorf("status.restore.instance %+v: want service kc-clone-copy, a promoted timeline and a duration", *inst)
	}
	cp := place{ns: ns, sts: "kc-clone-copy"}
	cc := cp.conn(t, ctx, cp.pod(0))
	var nBefore, nAfter, nDuring int
	if err := cc.QueryRow(ctx, `SELECT count(*) FILTER (WHERE phase = 'before'), count(*) FILTER (WHERE phase = 'after'),
		count(*) FILTER (WHERE phase = 'during') FROM orders`).Scan(&nBefore, &nAfter, &nDuring); err != nil {
		t.Fatal(err)
	}
	if nBefore != 1000 || nAfter != 0 || nDuring != 0 {
		t.Errorf("the clone holds %d/%d/%d rows before/after/during, want exactly the 1000 committed by the target", nBefore, nAfter, nDuring)
	}
	var cloneTL int64
	if err := cc.QueryRow(ctx, "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&cloneTL); err != nil {
		t.Fatal(err)
	}
	_ = cc.Close(ctx)

	// Production: untouched, never restarted, still the archive's writer.
	prodTL := p.untouched(t, ctx, conn, before)
	var histories []string
	_ = filepath.WalkDir(archive, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(d.Name(), ".history") {
			histories = append(histories, strings.TrimPrefix(path, archive))
		}
		return nil
	})
	if len(histories) > 0 || cloneTL == prodTL {
		t.Errorf("the archive holds history files %v (production on timeline %d, the clone promoted to %d): the clone wrote the archive", histories, prodTL, cloneTL)
	}
	fmt.Printf("RESULT clone: kubectl kcbackup restore --to %s --into kc-clone-copy: Restored in %s; the clone holds %d rows (exactly those committed by the target; 500 after it and %d written during the clone are not there); "+
		"production on timeline %d kept running and writing (pod not restarted), the clone promoted to timeline %d, the archive holds no history file: still written only by production's sidecar\n",
		target.Format(time.RFC3339), inst.Duration, nBefore, next.Load()-100000, prodTL, cloneTL)

	// Drills: each needs a volume its claim (named at the tick) binds to.
	drillPV := func(name string) {
		t.Helper()
		dir := hostDir(t, name, 999, 999, 0o700)
		if out, err := node.KubectlStdin(ctx, unboundPV(name, dir), "apply", "-f", "-"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	checkDrill := func(name string) string {
		t.Helper()
		var st cloneStatus
		if err := waitFor(ctx, "drill "+name+" ends", 10*time.Minute, nil, func() error {
			var err error
			if st, err = p.cloneStatus(ctx, name); err != nil {
				return err
			}
			if st.Phase == "Failed" {
				_, msg := st.ready()
				return stopErr(fmt.Errorf("drill %s failed: %s", name, msg))
			}
			if st.Phase != "Restored" {
				return fmt.Errorf("phase %q", st.Phase)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		reason, msg := st.ready()
		if reason != "DrillPassed" {
			t.Errorf("drill %s: %s, want DrillPassed", name, msg)
		}
		d := st.Restore.Drill
		if d == nil {
			t.Fatalf("drill %s: no status.restore.drill", name)
		}
		var counts, checks []string
		for _, c := range d.Counts {
			if c.Restored == nil || *c.Restored != c.Source {
				t.Errorf("drill %s: table %s counted %d in production and %v restored", name, c.Table, c.Source, c.Restored)
				continue
			}
			counts = append(counts, fmt.Sprintf("%s %d=%d", c.Table, c.Source, *c.Restored))
		}
		if len(d.Counts) == 0 {
			t.Errorf("drill %s counted no table (skipped %v)", name, d.Skipped)
		}
		if strings.Join(d.Skipped, ",") != "public.missing_table" {
			t.Errorf("drill %s skipped %v, want the table production does not have: public.missing_table", name, d.Skipped)
		}
		got := map[string]string{}
		for _, c := range d.Checks {
			got[c.Name] = c.Result
			checks = append(checks, c.Name+" "+c.Result)
		}
		// The story's PostgreSQL has amcheck (contrib) and a superuser: a Skipped amcheck here
		// would be a missing component, so it fails like any other check.
		for _, want := range []string{"promoted", "marker", "counts", "amcheck"} {
			if got[want] != "Passed" {
				t.Errorf("drill %s: check %s %q, want Passed (%v)", name, want, got[want], d.Checks)
			}
		}
		if d.RTO == "" || d.RPO == "" {
			t.Errorf("drill %s: RTO %q RPO %q, want both", name, d.RTO, d.RPO)
		}
		if st.Restore.Instance == nil || !st.Restore.Instance.Removed {
			t.Errorf("drill %s: instance not marked removed", name)
		}
		inst := st.Restore.Instance
		if err := waitFor(ctx, "drill "+name+"'s instance gone", 2*time.Minute, nil, func() error {
			out, err := node.Kubectl(ctx, "-n", ns, "get", "statefulsets,pvc,services,pods", "-l", "kcbackup.keycloak.org/instance-of="+name, "-o", "name")
			if err != nil {
				return err
			}
			if strings.TrimSpace(out) != "" {
				return fmt.Errorf("left: %s", strings.Join(strings.Fields(out), " "))
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		return fmt.Sprintf("RTO %s, RPO %s, counts %s, checks %s (timeline %d, marker xid %s)", d.RTO, d.RPO,
			strings.Join(counts, ", "), strings.Join(checks, ", "), inst.Timeline, d.MarkerXID)
	}

	t.Log("drill on a schedule: spec.drill every minute on the archive's resource")
	drillPV("clone-drill-1")
	patch := `{"spec":{"drill":{"schedule":"* * * * *","check":{"tables":["orders","public.missing_table"]}}}}`
	if out, err := node.Kubectl(ctx, "-n", ns, "patch", "keycloakbackup", "clone-src", "--type", "merge", "-p", patch); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var drill string
	if err := waitFor(ctx, "the first scheduled drill", 3*time.Minute, nil, func() error {
		st, err := p.cloneStatus(ctx, "clone-src")
		if err != nil {
			return err
		}
		if st.Drill == nil || st.Drill.LastDrill == "" {
			return fmt.Errorf("no drill yet")
		}
		drill = st.Drill.LastDrill
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// One drill is enough: suspend the schedule so that no second tick needs a volume.
	if out, err := node.Kubectl(ctx, "-n", ns, "patch", "keycloakbackup", "clone-src", "--type", "merge", "-p", `{"spec":{"drill":{"suspend":true}}}`); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	scheduled := checkDrill(drill)
	if err := waitFor(ctx, "clone-src's status.drill.lastResult", 2*time.Minute, nil, func() error {
		st, err := p.cloneStatus(ctx, "clone-src")
		if err != nil {
			return err
		}
		if st.Drill == nil || st.Drill.LastResult != "Restored" {
			return fmt.Errorf("status.drill %+v", st.Drill)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	fmt.Printf("RESULT drill: scheduled (spec.drill every minute) %s: %s\n", drill, scheduled)

	t.Log("drill now: kubectl kcbackup drill clone-src --wait")
	drillPV("clone-drill-2")
	out, err = kubectlKcbackup("drill", "clone-src", "--wait")
	t.Logf("kubectl-kcbackup drill:\n%s", out)
	if err != nil {
		t.Fatalf("kubectl-kcbackup drill: %v", err)
	}
	var st2 cloneStatus
	if err := waitFor(ctx, "clone-src's status.drill names the new drill", time.Minute, nil, func() error {
		var err error
		if st2, err = p.cloneStatus(ctx, "clone-src"); err != nil {
			return err
		}
		if st2.Drill == nil || st2.Drill.LastDrill == drill || st2.Drill.LastResult != "Restored" {
			return fmt.Errorf("status.drill %+v", st2.Drill)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	now := checkDrill(st2.Drill.LastDrill)
	stopWriter()
	fmt.Printf("RESULT drill: kubectl kcbackup drill %s: %s\n", st2.Drill.LastDrill, now)
}
