// Package buildinfo says what a kcbackup binary is: the version and source revision stamped
// in when it was linked, and the Go release that built it. Both binaries print it with
// --version and export it as the kcbackup_build_info metric, so a dashboard shows which
// release runs where.
package buildinfo

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Package is this package's import path, the target of the linker flags that stamp a build:
//
//	go build -ldflags "-X github.com/kcbackup/kcbackup/walarchive/buildinfo.version=v0.3.0
//	                   -X github.com/kcbackup/kcbackup/walarchive/buildinfo.revision=$(git rev-parse HEAD)"
const Package = "github.com/kcbackup/kcbackup/walarchive/buildinfo"

// Set only by the linker (-X); never assigned in code.
var (
	version  = "dev"
	revision = ""
)

// Info describes one build.
type Info struct {
	// Version is the release (v0.3.0), or "dev" for a build without one.
	Version string
	// Revision is the git commit the binary was built from: stamped by the linker, else
	// the one Go recorded (with "-dirty" for uncommitted changes), else "unknown".
	Revision string
	// GoVersion is the Go release that built the binary (go1.26.8).
	GoVersion string
}

// Get returns the running binary's build information.
func Get() Info {
	return Info{Version: version, Revision: resolveRevision(revision), GoVersion: runtime.Version()}
}

func resolveRevision(stamped string) string {
	if stamped != "" {
		return stamped
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	return revisionFromSettings(bi.Settings)
}

// revisionFromSettings reads the commit Go's VCS stamping recorded (vcs.revision and
// vcs.modified), or "unknown" when the build had none (built outside a checkout).
func revisionFromSettings(settings []debug.BuildSetting) string {
	rev, dirty := "", false
	for _, s := range settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	switch {
	case rev == "":
		return "unknown"
	case dirty:
		return rev + "-dirty"
	default:
		return rev
	}
}

// String is the one line --version prints after the program's name.
func (i Info) String() string {
	return i.Version + " (revision " + i.Revision + ", " + i.GoVersion + ")"
}

// Collector returns the kcbackup_build_info gauge: always 1, its labels naming the build.
// Both binaries register it (the sidecar on its private registry, the operator on
// controller-runtime's).
func (i Info) Collector() prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "kcbackup",
		Name:      "build_info",
		Help:      "Always 1; the labels name the running build: version, git revision and Go release.",
		ConstLabels: prometheus.Labels{
			"version":   i.Version,
			"revision":  i.Revision,
			"goversion": i.GoVersion,
		},
	})
	g.Set(1)
	return g
}
