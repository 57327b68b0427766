//go:build cluster

package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// replicasManifest is a two-pod streaming PostgreSQL: ordinal 0 initialises the database,
// any other ordinal with an empty PGDATA seeds it with pg_basebackup from the primary
// (through primary, a proxy on the node IP the test points at the current primary: there
// is no cluster DNS) and starts as its standby. A volume with a file "rejoin" at its root
// starts as a standby too (the test leaves it for the old primary, as a failover manager
// demotes it). Labelled to opt in to kcbackup.
func replicasManifest(p place, primary *Proxy) string {
	host, port, _ := strings.Cut(primary.Addr, ":")
	return p.statefulSet(pgSet{
		replicas: 2,
		image:    "localhost/kcbackup-test/postgres:15",
		podSC:    postgresUserSC,
		run: fmt.Sprintf(`          command:
            - bash
            - -ec
            - |
              ord=${HOSTNAME##*-}
              conninfo="host=%s port=%s user=postgres password=$POSTGRES_PASSWORD application_name=$HOSTNAME"
              if [ ! -s "$PGDATA/PG_VERSION" ] && [ "$ord" != 0 ]; then
                echo "ordinal $ord, PGDATA empty: seeding it from the primary"
                rm -rf "$PGDATA"
                pg_basebackup -d "$conninfo" -D "$PGDATA" -X stream -c fast
                touch "$PGDATA/standby.signal"
              fi
              if [ -e /var/lib/postgresql/data/rejoin ]; then
                echo "demoted: starting as a standby of the primary"
                touch "$PGDATA/standby.signal"
                rm -f /var/lib/postgresql/data/rejoin
              fi
              exec docker-entrypoint.sh postgres -c wal_level=replica -c max_wal_senders=10 -c max_replication_slots=10 \
                -c hot_standby=on -c "primary_conninfo=$conninfo"`, host, port),
	})
}

// TestReplicasStory: a primary and a streaming standby, one archive. Only the primary's
// sidecar archives; the primary's pod is deleted and the standby promoted: its sidecar
// archives on, without a hole; an in-place restore of the two pods is refused before
// anything stops (MultipleReplicas); scaled to one pod, the restore runs; scaled back to
// two, the new standby is seeded from the restored primary and follows it.
func TestReplicasStory(t *testing.T) {
	ctx := context.Background()
	p := place{ns: ns, sts: "kc-replicas"}
	dumpPlaceOnFailure(t, p)

	var primary atomic.Value
	primary.Store(p.pod(0))
	proxy, err := Listen(node.Net.NodeIP.String(), func(ctx context.Context) (string, error) {
		pod := primary.Load().(string)
		if pod == "" {
			return "", fmt.Errorf("no primary: failing over")
		}
		ip, err := p.podIP(ctx, pod)
		if err != nil {
			return "", err
		}
		return ip + ":5432", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })

	data := []string{hostDir(t, "replicas-0", 999, 999, 0o700), hostDir(t, "replicas-1", 999, 999, 0o700)}
	archive := hostDir(t, "replicas-archive", 65532, 999, 0o2775)
	objs := hostPathPVIn("kc-replicas-0", ns, "data-kc-replicas-0", data[0]) + hostPathPVIn("kc-replicas-1", ns, "data-kc-replicas-1", data[1]) +
		hostPathPVIn("kc-replicas-archive", ns, "kc-replicas-archive", archive) + claim(ns, "kc-replicas-archive") + replicasManifest(p, proxy)
	if out, err := node.KubectlStdin(ctx, objs, "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	p.rollout(t, ctx)
	inRecovery := func(pod string) bool {
		var r bool
		c := p.conn(t, ctx, pod)
		if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&r); err != nil {
			t.Fatal(err)
		}
		_ = c.Close(ctx)
		return r
	}
	if inRecovery(p.pod(0)) || !inRecovery(p.pod(1)) {
		t.Fatal("want ordinal 0 a primary and ordinal 1 its standby")
	}

	t.Log("a manual backup of the two-pod StatefulSet")
	t0 := time.Now()
	if _, err := node.KubectlStdin(ctx, p.kcb("replicas", "kc-replicas-archive", ""), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	st := p.waitPhase(t, ctx, "replicas", "Completed", 8*time.Minute, "Failed")
	backupSecs := time.Since(t0).Seconds()
	p.rollout(t, ctx)
	roles := func(want0, want1 string) {
		t.Helper()
		if err := waitFor(ctx, fmt.Sprintf("roles %s, %s", want0, want1), 2*time.Minute, nil, func() error {
			r0, err := p.role(ctx, p.pod(0))
			if err != nil {
				return err
			}
			r1, err := p.role(ctx, p.pod(1))
			if err != nil {
				return err
			}
			if r0 != want0 || r1 != want1 {
				return fmt.Errorf("sidecars say %s and %s", r0, r1)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	roles("primary", "standby")
	if up, err := p.metric(ctx, p.pod(1), "kcbackup_up"); err != nil || up != 0 {
		t.Errorf("the standby's sidecar: kcbackup_up %v (%v), want 0: it must not archive", up, err)
	}
	for _, c := range st.Conditions {
		if c.Type == "Restorable" {
			t.Logf("condition Restorable %s %s: %s", c.Status, c.Reason, c.Message)
		}
	}

	conn := p.conn(t, ctx, p.pod(0))
	loadKeycloakSchema(t, ctx, conn)
	if _, err := conn.Exec(ctx, `CREATE TABLE failover (id int PRIMARY KEY, phase text NOT NULL);
		INSERT INTO failover SELECT g, 'before' FROM generate_series(1, 1000) g`); err != nil {
		t.Fatal(err)
	}
	p.waitArchived(t, ctx, conn, p.pod(0))
	_ = conn.Close(ctx)

	t.Log("fail over: the primary's pod is deleted, the standby promoted")
	uid0, _ := p.get(ctx, "pod", p.pod(0), "{.metadata.uid}")
	// The old primary comes back demoted (a failover manager's job): a marker on its volume.
	if err := os.WriteFile(filepath.Join(data[0], "rejoin"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(data[0], "rejoin"), 999, 999); err != nil {
		t.Fatal(err)
	}
	primary.Store("") // no new replication connection until the standby is promoted
	if _, err := node.Kubectl(ctx, "-n", ns, "delete", "pod", p.pod(0), "--wait=false"); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, "the old primary's pod gone", 2*time.Minute, nil, func() error {
		if u, _ := p.get(ctx, "pod", p.pod(0), "{.metadata.uid}"); u == uid0 {
			return fmt.Errorf("pod %s still the old one", p.pod(0))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	c1 := p.conn(t, ctx, p.pod(1))
	promoted := time.Now()
	if _, err := c1.Exec(ctx, "SELECT pg_promote(true, 60)"); err != nil {
		t.Fatal(err)
	}
	primary.Store(p.pod(1))
	if _, err := c1.Exec(ctx, "INSERT INTO failover SELECT g, 'after' FROM generate_series(1001, 2000) g"); err != nil {
		t.Fatal(err)
	}
	p.waitArchived(t, ctx, c1, p.pod(1))
	archivingAgain := time.Since(promoted).Seconds()
	roles("standby", "primary")
	t.Logf("promoted %s: its sidecar archived the commits after the promotion %.1fs later; the old primary rejoined as a standby", p.pod(1), archivingAgain)

	target := pastTarget(t, ctx, c1)
	if _, err := c1.Exec(ctx, "DROP TABLE failover"); err != nil {
		t.Fatal(err)
	}
	p.waitArchived(t, ctx, c1, p.pod(1))
	window := p.waitWindowCovers(t, ctx, p.pod(1), target)
	if !strings.HasSuffix(window, "hole false") {
		t.Errorf("the range holding the target has a hole: %s", window)
	}
	t.Logf("the archive holds %s after the failover: %s", target.Format(time.RFC3339), window)
	_ = c1.Close(ctx)

	t.Log("an in-place restore of the two pods is refused before anything stops")
	uids := map[string]string{}
	for _, pod := range []string{p.pod(0), p.pod(1)} {
		uids[pod], _ = p.get(ctx, "pod", pod, "{.metadata.uid}")
	}
	restore := func(name string) string {
		return p.kcb(name, "kc-replicas-archive", fmt.Sprintf("  restoreTo: %q\n", target.Format(time.RFC3339))+noApplication)
	}
	if _, err := node.KubectlStdin(ctx, restore("replicas-restore-refused"), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	st = p.waitPhase(t, ctx, "replicas-restore-refused", "Failed", 3*time.Minute, "Restored")
	refusal := st.ready()
	if !strings.Contains(refusal, "MultipleReplicas") {
		t.Fatalf("refused for another reason than MultipleReplicas: %s", refusal)
	}
	for pod, uid := range uids {
		if got, _ := p.get(ctx, "pod", pod, "{.metadata.uid}"); got != uid {
			t.Errorf("pod %s was replaced by the refused restore", pod)
		}
	}
	if r, _ := p.get(ctx, "statefulset", p.sts, "{.spec.replicas}"); r != "2" {
		t.Errorf("replicas %s after the refused restore, want 2", r)
	}
	if _, err := node.Kubectl(ctx, "-n", ns, "get", "job", "replicas-restore-refused-restore"); err == nil {
		t.Error("a restore Job was created for a refused restore")
	}
	t.Logf("refused: %s", refusal)

	t.Log("the documented way: scale to one pod, drop the standby's claim, restore, scale back")
	if _, err := node.Kubectl(ctx, "-n", ns, "scale", "statefulset", p.sts, "--replicas=1"); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, p.pod(1)+" gone", 2*time.Minute, nil, func() error {
		if _, err := node.Kubectl(ctx, "-n", ns, "get", "pod", p.pod(1)); err == nil {
			return fmt.Errorf("pod %s still there", p.pod(1))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.Kubectl(ctx, "-n", ns, "delete", "pvc", "data-"+p.pod(1), "--wait=true", "--timeout=60s"); err != nil {
		t.Fatal(err)
	}
	if _, err := node.Kubectl(ctx, "delete", "pv", "kc-replicas-1", "--wait=true", "--timeout=60s"); err != nil {
		t.Fatal(err)
	}
	fresh := hostDir(t, "replicas-1-reseeded", 999, 999, 0o700)
	if _, err := node.KubectlStdin(ctx, hostPathPVIn("kc-replicas-1-reseeded", ns, "data-"+p.pod(1), fresh), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	// The pod that remains is the demoted old primary, a standby: its sidecar archives
	// nothing, so a restore is refused before anything stops. Promote it first.
	if _, err := node.KubectlStdin(ctx, restore("replicas-restore-standby"), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	st = p.waitPhase(t, ctx, "replicas-restore-standby", "Failed", 3*time.Minute, "Restored")
	if !strings.Contains(st.ready(), "ServerIsStandby") {
		t.Fatalf("refused for another reason than ServerIsStandby: %s", st.ready())
	}
	if got, _ := p.get(ctx, "pod", p.pod(0), "{.metadata.uid}"); got != uids[p.pod(0)] {
		t.Errorf("pod %s was replaced by the refused restore", p.pod(0))
	}
	t.Logf("with the standby left: %s", st.ready())
	primary.Store("")
	c0 := p.conn(t, ctx, p.pod(0))
	if _, err := c0.Exec(ctx, "SELECT pg_promote(true, 60)"); err != nil {
		t.Fatal(err)
	}
	primary.Store(p.pod(0))
	roles1 := func() error {
		r, err := p.role(ctx, p.pod(0))
		if err == nil && r != "primary" {
			err = fmt.Errorf("the sidecar says %s", r)
		}
		return err
	}
	if err := waitFor(ctx, p.pod(0)+" primary", 2*time.Minute, nil, roles1); err != nil {
		t.Fatal(err)
	}
	p.waitArchived(t, ctx, c0, p.pod(0))
	_ = c0.Close(ctx)

	t0 = time.Now()
	if _, err := node.KubectlStdin(ctx, restore("replicas-restore"), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	st = p.waitPhase(t, ctx, "replicas-restore", "Restored", 10*time.Minute, "Failed")
	restoreSecs := time.Since(t0).Seconds()
	t.Logf("restore to %s with one pod: Restored in %.1fs, timeline %d -> %d", target.Format(time.RFC3339), restoreSecs, st.Restore.PreviousTimeline, st.Restore.Timeline)
	c0 = p.conn(t, ctx, p.pod(0))
	count := func(c *pgx.Conn) (before, after int) {
		t.Helper()
		if err := c.QueryRow(ctx, "SELECT count(*) FILTER (WHERE phase = 'before'), count(*) FILTER (WHERE phase = 'after') FROM failover").Scan(&before, &after); err != nil {
			t.Fatalf("the dropped table is not back: %v", err)
		}
		return before, after
	}
	b0, a0 := count(c0)
	if b0 != 1000 || a0 != 1000 {
		t.Errorf("restored: %d rows from before the failover and %d from after, want 1000 and 1000", b0, a0)
	}

	t.Log("scaled back to two pods: the standby is seeded from the restored primary and follows it")
	if _, err := node.Kubectl(ctx, "-n", ns, "scale", "statefulset", p.sts, "--replicas=2"); err != nil {
		t.Fatal(err)
	}
	p.rollout(t, ctx)
	if !inRecovery(p.pod(1)) {
		t.Fatalf("%s is not a standby after scaling back", p.pod(1))
	}
	if _, err := c0.Exec(ctx, "INSERT INTO failover VALUES (2001, 'after')"); err != nil {
		t.Fatal(err)
	}
	var lsn string
	if err := c0.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	c1 = p.conn(t, ctx, p.pod(1))
	if err := waitFor(ctx, p.pod(1)+" replays the restored primary's commit", 2*time.Minute, nil, func() error {
		var ok bool
		if err := c1.QueryRow(ctx, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("replay behind %s", lsn)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	b1, a1 := count(c1)
	var tl0, tl1 int64
	_ = c0.QueryRow(ctx, "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&tl0)
	_ = c1.QueryRow(ctx, "SELECT received_tli FROM pg_stat_wal_receiver").Scan(&tl1)
	if b1 != b0 || a1 != a0+1 {
		t.Errorf("the standby has %d/%d rows, want %d/%d", b1, a1, b0, a0+1)
	}
	if tl1 != tl0 {
		t.Errorf("the standby receives timeline %d, the restored primary is on %d", tl1, tl0)
	}
	roles("primary", "standby")
	fmt.Printf("RESULT replicas: 2-pod streaming StatefulSet; backup %.1fs; failover (pod deleted, standby promoted) to archiving again %.1fs; "+
		"restore of 2 pods refused before anything stopped (MultipleReplicas); scaled to 1, the standby left refused (ServerIsStandby), promoted: restored %d rows (%d committed after the failover) in %.1fs, "+
		"timeline %d -> %d; scaled to 2: standby re-seeded from the restored primary, follows it on timeline %d\n",
		backupSecs, archivingAgain, b0+a0, a0, restoreSecs, st.Restore.PreviousTimeline, st.Restore.Timeline, tl1)
}
