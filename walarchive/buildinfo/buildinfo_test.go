package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRevisionFromSettings(t *testing.T) {
	for _, tc := range []struct {
		name     string
		settings []debug.BuildSetting
		want     string
	}{
		{"none recorded", nil, "unknown"},
		{"clean checkout", []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "false"}}, "abc123"},
		{"uncommitted changes", []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "true"}}, "abc123-dirty"},
		{"modified without a revision", []debug.BuildSetting{{Key: "vcs.modified", Value: "true"}}, "unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := revisionFromSettings(tc.settings); got != tc.want {
				t.Errorf("revisionFromSettings = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestStampedRevisionWins(t *testing.T) {
	if got := resolveRevision("0123abc"); got != "0123abc" {
		t.Errorf("resolveRevision(stamped) = %q, want the stamped revision", got)
	}
}

func TestCollectorExportsBuildInfoWithItsLabels(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	info := Info{Version: "v0.3.0", Revision: "abc123", GoVersion: runtime.Version()}
	reg.MustRegister(info.Collector())
	want := `# HELP kcbackup_build_info Always 1; the labels name the running build: version, git revision and Go release.
# TYPE kcbackup_build_info gauge
kcbackup_build_info{goversion="` + runtime.Version() + `",revision="abc123",version="v0.3.0"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "kcbackup_build_info"); err != nil {
		t.Error(err)
	}
}

func TestGetOfAnUnstampedBuild(t *testing.T) {
	i := Get()
	if i.Version != "dev" || i.GoVersion != runtime.Version() || i.Revision == "" {
		t.Errorf("Get() = %+v; want version dev, this Go release and some revision", i)
	}
	if s := i.String(); !strings.HasPrefix(s, "dev (revision ") {
		t.Errorf("String() = %q", s)
	}
}
