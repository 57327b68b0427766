package controller_test

import (
	"fmt"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	kccontroller "github.com/kcbackup/kcbackup/operator/internal/controller"
)

// idleBound is the most reconciles, and the most catalog listings, a scheduled resource
// may cost in idleSpan while nothing happens: its next tick is hours away and the window
// end moves at every listing, as partial uploads make it do, and a listing takes 1.1 s, as
// a full listing of a real archive does. The steady state is zero;
// the bound leaves room for the reconciles still settling when the span starts.
const (
	idleSpan  = 10 * time.Second
	idleBound = 3
)

func testIdleScheduleDoesNotLoop(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg, func(r *kccontroller.Reconciler) { r.MaxScheduleWait = 0 })
	e.sidecar.with(func(f *fakeSidecar) { f.movingWindow, f.catalogLatency = true, 1100*time.Millisecond })
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)
	kb := volumeBackup("nightly")
	kb.Spec.Schedule = "0 3 * * *"
	e.clock.SetTime(time.Date(2026, 12, 1, 4, 0, 0, 0, time.UTC))
	e.create(kb)
	e.waitPhase("nightly", kcv1.PhaseScheduled)
	e.waitCondition("nightly", kcv1.ConditionReady, "True", kcv1.ReasonScheduled)

	reconciles, listings := e.reconciles.Load(), e.sidecar.callCount("GET /v1/backups")
	counts := func() (int64, int) {
		return e.reconciles.Load() - reconciles, e.sidecar.callCount("GET /v1/backups") - listings
	}
	defer func() {
		dr, dl := counts()
		perMinute := func(n int64) float64 { return float64(n) * float64(time.Minute) / float64(idleSpan) }
		t.Logf("idle for %s: %d reconciles (%.0f/min), %d catalog listings (%.0f/min)", idleSpan, dr, perMinute(dr), dl, perMinute(int64(dl)))
	}()
	e.consistently("an idle schedule stays quiet", idleSpan, func() (bool, string) {
		dr, dl := counts()
		return dr <= idleBound && dl <= idleBound, fmt.Sprintf("%d reconciles and %d catalog listings; want at most %d each", dr, dl, idleBound)
	})
}
