package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestValidateNamesTheBadSetting(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"no sidecar image", func(c *Config) { c.SidecarImage = "" }, "--sidecar-image"},
		{"bad metrics address", func(c *Config) { c.MetricsAddr = "8080" }, "--metrics-bind-address"},
		{"poll too fast", func(c *Config) { c.PollInterval = time.Millisecond }, "--poll-interval"},
		{"leader election outside a cluster", func(c *Config) { c.LeaderElect = true }, "--leader-election-namespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.SidecarImage = "kcbackup:dev"
			c.LeaderElect = false
			c.ServiceAccountNamespaceFile = filepath.Join(t.TempDir(), "namespace") // outside a cluster
			tc.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want an error naming %s", err, tc.want)
			}
		})
	}
	c := DefaultConfig()
	c.SidecarImage = "kcbackup:dev"
	c.MetricsAddr = "0"
	// In a cluster, leader election defaults to the operator's namespace.
	c.ServiceAccountNamespaceFile = filepath.Join(t.TempDir(), "namespace")
	if err := os.WriteFile(c.ServiceAccountNamespaceFile, []byte("kcbackup-system"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	// Outside, it needs the namespace named.
	c.ServiceAccountNamespaceFile = filepath.Join(t.TempDir(), "absent")
	c.LeaderElectionNamespace = "default"
	if err := c.Validate(); err != nil {
		t.Fatalf("leader election with a namespace outside a cluster: %v", err)
	}
}

func TestDefaultSidecarImageIsTheReleaseOfTheSameVersion(t *testing.T) {
	for version, want := range map[string]string{
		"v1.4.0": "ghcr.io/kcbackup/kcbackup:v1.4.0", "v1.4.0-rc.1": "ghcr.io/kcbackup/kcbackup:v1.4.0-rc.1",
		"dev": "", "21a0182-dirty": "", "v1.4.0-3-g21a0182-dirty": "", "v1.4": "",
	} {
		if got := DefaultSidecarImage(version); got != want {
			t.Errorf("DefaultSidecarImage(%q) = %q, want %q", version, got, want)
		}
	}
}

func TestAutoDeliveryFollowsTheServerVersion(t *testing.T) {
	for _, tc := range []struct {
		major, minor, want string
	}{
		{"1", "33", "init-container"}, {"1", "35+", "init-container"}, {"1", "36", "image-volume"}, {"1", "37", "image-volume"},
		{"2", "0", ""}, {"1", "x", ""},
	} {
		got, why, err := DeliveryForVersion(tc.major, tc.minor)
		if string(got) != tc.want || (tc.want == "") != (err != nil) {
			t.Errorf("%s.%s: %q (%s, %v), want %q", tc.major, tc.minor, got, why, err, tc.want)
		}
	}
}
