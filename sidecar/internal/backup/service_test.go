package backup

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kcbackup/kcbackup/sidecar/internal/metrics"
	"github.com/kcbackup/kcbackup/walarchive"
)

// A restarted sidecar reads the gauges behind KcbackupBaseBackupTooOld and
// KcbackupArchiveGap back from the archive (issue 19): the newest backup's stop time, and
// a gap while the live timeline's newest range ends at a hole.
func TestAlertGaugesAreSeededFromTheArchive(t *testing.T) {
	m := metrics.New()
	s := &Service{cfg: ServiceConfig{Metrics: m}}
	stop := time.Date(2026, 12, 5, 6, 0, 0, 0, time.UTC)
	sum := walarchive.Summary{
		Backups: []walarchive.BackupRecord{{ID: "a", StopTime: stop.Add(-time.Hour)}, {ID: "b", StopTime: stop}},
		Window:  &walarchive.Window{Timeline: 1, Earliest: stop, Latest: stop.Add(time.Minute)},
	}
	s.seedAlertGauges(sum)
	if got := testutil.ToFloat64(m.BackupLastSuccess); got != float64(stop.Unix()) {
		t.Fatalf("last success %v; want the newest backup's stop %d", got, stop.Unix())
	}
	if got := testutil.ToFloat64(m.ArchiveGapLast); got != 0 {
		t.Fatalf("gap %v without a hole", got)
	}
	sum.Window.Hole = true
	before := time.Now().Unix()
	s.seedAlertGauges(sum)
	if got := testutil.ToFloat64(m.ArchiveGapLast); got < float64(before) || got <= testutil.ToFloat64(m.BackupLastSuccess) {
		t.Fatalf("gap %v with the newest range ending at a hole; want now (> last success %v)", got, testutil.ToFloat64(m.BackupLastSuccess))
	}
	// A success recorded by this process is never moved back by an older record.
	s.lastSuccess = stop.Add(time.Hour)
	m.BackupLastSuccess.Set(float64(s.lastSuccess.Unix()))
	s.seedAlertGauges(sum)
	if got := testutil.ToFloat64(m.BackupLastSuccess); got != float64(stop.Add(time.Hour).Unix()) {
		t.Fatalf("last success moved back to %v", got)
	}
}
