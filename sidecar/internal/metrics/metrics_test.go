package metrics

import (
	"testing"

	"github.com/kcbackup/kcbackup/walarchive/buildinfo"
)

// TestRegistryExportsBuildInfo: the sidecar's /metrics names the running build, with the
// labels the build stamped.
func TestRegistryExportsBuildInfo(t *testing.T) {
	mfs, err := New().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := buildinfo.Get()
	for _, mf := range mfs {
		if mf.GetName() != "kcbackup_build_info" {
			continue
		}
		labels := map[string]string{}
		for _, l := range mf.GetMetric()[0].GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["version"] != want.Version || labels["revision"] != want.Revision || labels["goversion"] != want.GoVersion ||
			mf.GetMetric()[0].GetGauge().GetValue() != 1 {
			t.Errorf("kcbackup_build_info = %v %v; want 1 with %+v", labels, mf.GetMetric()[0].GetGauge().GetValue(), want)
		}
		return
	}
	t.Error("the registry has no kcbackup_build_info")
}
