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
	}
	for _, c := range []prometheus.Collector{m.lastSuccess, m.lastFailed, m.scheduleInterval, m.restoreFailed, m.restoreFailures} {
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
	if kb.IsRestore() {
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
	for _, v := range []*prometheus.GaugeVec{m.lastSuccess, m.lastFailed, m.scheduleInterval, m.restoreFailed} {
		v.DeleteLabelValues(ns, name)
	}
	m.restoreFailures.DeletePartialMatch(prometheus.Labels{"namespace": ns, "name": name})
}
