package controller

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

// Metrics are the operator's own series, one per KeycloakBackup. Alerts rely on these names.
type Metrics struct {
	lastSuccess      *prometheus.GaugeVec
	lastFailed       *prometheus.GaugeVec
	scheduleInterval *prometheus.GaugeVec
	restoreFailed    *prometheus.GaugeVec
	restoreFailures  *prometheus.CounterVec

	drillLastSuccess *prometheus.GaugeVec
	drillLastFailed  *prometheus.GaugeVec
	drillInterval    *prometheus.GaugeVec
	drillRTO         *prometheus.GaugeVec
	drillRPO         *prometheus.GaugeVec
	drills           *prometheus.CounterVec
}

// NewMetrics creates the operator's metrics and registers them on reg (in the operator,
// controller-runtime's metrics.Registry; in tests, a private registry).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	labels := []string{"namespace", "name"}
	m := &Metrics{
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kcbackup_operator_last_backup_success_timestamp_seconds",
			Help: "Stop time of the newest successful base backup of a KeycloakBackup, in Unix seconds.",
		}, labels),
		lastFailed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kcbackup_operator_last_backup_failed",
			Help: "1 when the most recent base backup attempt of a KeycloakBackup failed, else 0.",
		}, labels),
		scheduleInterval: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kcbackup_operator_schedule_interval_seconds",
			Help: "Seconds between the next two ticks of a scheduled KeycloakBackup.",
		}, labels),
		restoreFailed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kcbackup_operator_restore_failed",
			Help: "1 when the restore of a KeycloakBackup failed, else 0.",
		}, labels),
		restoreFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kcbackup_operator_restore_failures_total",
			Help: "Restores of a KeycloakBackup that ended Failed, by reason (RestoreRefused, RestoreTimedOut, RestoreJobFailed, ...).",
		}, append(labels, "reason")),
		drillLastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kcbackup_operator_drill_last_success_timestamp_seconds",
			Help: "When the newest passed restore drill of an archive's KeycloakBackup (name) finished, in Unix seconds; 0 while none passed.",
		}, labels),
		drillLastFailed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kcbackup_operator_drill_last_failed",
			Help: "1 when the newest finished restore drill of an archive's KeycloakBackup failed, else 0.",
		}, labels),
		drillInterval: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kcbackup_operator_drill_interval_seconds",
			Help: "Seconds between the next two ticks of the drill schedule of a KeycloakBackup.",
		}, labels),
		drillRTO: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kcbackup_operator_drill_rto_seconds",
			Help: "How long the newest passed restore drill's restore took: from the archive holding its target to a promoted, checked instance.",
		}, labels),
		drillRPO: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kcbackup_operator_drill_rpo_seconds",
			Help: "The data loss window the newest passed restore drill measured: from its marker's commit until the archive held it.",
		}, labels),
		drills: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kcbackup_operator_drills_total",
			Help: "Restore drills of an archive's KeycloakBackup that finished, by result (succeeded, failed).",
		}, append(labels, "result")),
	}
	for _, c := range []prometheus.Collector{m.lastSuccess, m.lastFailed, m.scheduleInterval, m.restoreFailed, m.restoreFailures,
		m.drillLastSuccess, m.drillLastFailed, m.drillInterval, m.drillRTO, m.drillRPO, m.drills} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register operator metrics: %w", err)
		}
	}
	return m, nil
}

func (m *Metrics) backupSucceeded(ns, name string, stopUnix float64) {
	m.lastSuccess.WithLabelValues(ns, name).Set(stopUnix)
	m.lastFailed.WithLabelValues(ns, name).Set(0)
}

func (m *Metrics) backupFailed(ns, name string) { m.lastFailed.WithLabelValues(ns, name).Set(1) }

func (m *Metrics) scheduled(ns, name string, intervalSeconds float64) {
	m.scheduleInterval.WithLabelValues(ns, name).Set(intervalSeconds)
}

func (m *Metrics) unscheduled(ns, name string) { m.scheduleInterval.DeleteLabelValues(ns, name) }

func (m *Metrics) restoreResult(ns, name string, failed bool) {
	v := 0.0
	if failed {
		v = 1
	}
	m.restoreFailed.WithLabelValues(ns, name).Set(v)
}

// restoreEndedFailed records a failed restore and its reason.
func (m *Metrics) restoreEndedFailed(ns, name, reason string) {
	m.restoreFailures.WithLabelValues(ns, name, reason).Inc()
}

// seed sets the gauges behind alerts from what the resource's status persists, so that an
// operator restart (a fresh process, empty gauges) does not blind an alert until the next
// backup or restore ends in this process. The status and the gauges are changed together by
// the steps, so seeding at every reconcile only ever restores what was last stored.
func (m *Metrics) seed(kb *kcv1.KeycloakBackup, now time.Time) {
	ns, name, st := kb.Namespace, kb.Name, &kb.Status
	if st.LastBackupTime != nil {
		m.lastSuccess.WithLabelValues(ns, name).Set(float64(st.LastBackupTime.Unix()))
	}
	switch {
	case st.LastFailedBackupTime != nil:
		m.lastFailed.WithLabelValues(ns, name).Set(1)
	case st.LastBackupTime != nil:
		m.lastFailed.WithLabelValues(ns, name).Set(0)
	}
	if kb.IsScheduled() {
		if sched, err := kcv1.ParseSchedule(kb.Spec.Schedule); err == nil {
			next := sched.Next(now)
			m.scheduled(ns, name, sched.Next(next).Sub(next).Seconds())
		}
	}
	m.seedDrills(kb, now)
	if kb.IsRestore() && !kb.IsDrill() { // a drill's outcome is in the drill series
		switch st.Phase {
		case kcv1.PhaseFailed:
			m.restoreResult(ns, name, true)
		case kcv1.PhaseRestored:
			m.restoreResult(ns, name, false)
		}
	}
}

// forget drops every series of a deleted resource.
func (m *Metrics) forget(ns, name string) {
	for _, v := range []*prometheus.GaugeVec{m.lastSuccess, m.lastFailed, m.scheduleInterval, m.restoreFailed,
		m.drillLastSuccess, m.drillLastFailed, m.drillInterval, m.drillRTO, m.drillRPO} {
		v.DeleteLabelValues(ns, name)
	}
	m.restoreFailures.DeletePartialMatch(prometheus.Labels{"namespace": ns, "name": name})
	m.drills.DeletePartialMatch(prometheus.Labels{"namespace": ns, "name": name})
}

// seedDrills sets the drill gauges of an archive's resource from status.drill: the alerts
// see the last drill's outcome after an operator restart, and a drill schedule whose drills
// never passed exports 0 (KcbackupRestoreDrillTooOld then counts from the schedule's start).
func (m *Metrics) seedDrills(kb *kcv1.KeycloakBackup, now time.Time) {
	ns, name := kb.Namespace, kb.Name
	d := kb.Spec.Drill
	if d == nil || kb.IsRestore() || kb.Spec.From != "" {
		for _, v := range []*prometheus.GaugeVec{m.drillLastSuccess, m.drillLastFailed, m.drillInterval, m.drillRTO, m.drillRPO} {
			v.DeleteLabelValues(ns, name)
		}
		return
	}
	if sched, err := kcv1.ParseSchedule(d.Schedule); err == nil {
		next := sched.Next(now)
		m.drillInterval.WithLabelValues(ns, name).Set(sched.Next(next).Sub(next).Seconds())
	}
	st := kb.Status.Drill
	success := 0.0
	if st != nil && st.LastSuccessTime != nil {
		success = float64(st.LastSuccessTime.Unix())
		if st.LastRTO != nil {
			m.drillRTO.WithLabelValues(ns, name).Set(st.LastRTO.Seconds())
		}
		if st.LastRPO != nil {
			m.drillRPO.WithLabelValues(ns, name).Set(st.LastRPO.Seconds())
		}
	}
	m.drillLastSuccess.WithLabelValues(ns, name).Set(success)
	if st != nil && st.LastResult != "" {
		failed := 0.0
		if st.LastResult == kcv1.PhaseFailed {
			failed = 1
		}
		m.drillLastFailed.WithLabelValues(ns, name).Set(failed)
	}
}

// drillEnded counts a finished drill of the archive's resource archive.
func (m *Metrics) drillEnded(ns, archive string, passed bool) {
	result := "failed"
	if passed {
		result = "succeeded"
	}
	m.drills.WithLabelValues(ns, archive, result).Inc()
}
