package controller

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
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

// forget drops every series of a deleted resource.
func (m *Metrics) forget(ns, name string) {
	for _, v := range []*prometheus.GaugeVec{m.lastSuccess, m.lastFailed, m.scheduleInterval, m.restoreFailed} {
		v.DeleteLabelValues(ns, name)
	}
	m.restoreFailures.DeletePartialMatch(prometheus.Labels{"namespace": ns, "name": name})
}
