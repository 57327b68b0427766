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
		{"1", "33", "init-container"}, {"1", "35+", "init-container"}, {"1", "36", "probe"}, {"1", "37", "probe"},
		{"2", "0", ""}, {"1", "x", ""},
	} {
		got, why, err := DeliveryForVersion(tc.major, tc.minor)
		if string(got) != tc.want || (tc.want == "") != (err != nil) {
			t.Errorf("%s.%s: %q (%s, %v), want %q", tc.major, tc.minor, got, why, err, tc.want)
		}
	}
}

func TestSidecarManifestDeclaresTheSidecarForVerifyMode(t *testing.T) {
	o := SidecarManifestOptions{ResourceFile: "testdata/keycloakbackup.yaml", WorkloadFile: "testdata/statefulset.yaml",
		SidecarImage: "ghcr.io/kcbackup/kcbackup:v1.2.3", BinaryDelivery: "init-container"}
	var out strings.Builder
	if err := o.Run(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kind: StatefulSet", "name: keycloak-postgres", "kcbackup.keycloak.org/sidecar-mode: verify",
		"keycloak.org/kcbackup-sidecar:", "name: kcbackup-binary", "name: kcbackup\n", "image: ghcr.io/kcbackup/kcbackup:v1.2.3",
		"KCBACKUP_STORAGE", "mountPath: /var/run/kcbackup/image"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	for name, bad := range map[string]SidecarManifestOptions{
		"--resource":        {WorkloadFile: "w", SidecarImage: "i", BinaryDelivery: "image-volume"},
		"--workload":        {ResourceFile: "r", SidecarImage: "i", BinaryDelivery: "image-volume"},
		"--sidecar-image":   {ResourceFile: "r", WorkloadFile: "w", BinaryDelivery: "image-volume"},
		"--binary-delivery": {ResourceFile: "r", WorkloadFile: "w", SidecarImage: "i", BinaryDelivery: "auto"},
	} {
		if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("Validate = %v, want an error naming %s", err, name)
		}
	}
	wrong := o
	wrong.WorkloadFile = "testdata/keycloakbackup.yaml"
	if err := wrong.Run(&out); err == nil || !strings.Contains(err.Error(), "want a Deployment or a StatefulSet") {
		t.Errorf("a KeycloakBackup as --workload: %v, want refused", err)
	}
}

func TestWatchNamespacesTakesACommaSeparatedList(t *testing.T) {
	for in, want := range map[string]string{"": "", "keycloak": "keycloak", " a, b ,a": "a,b"} {
		got, err := Config{WatchNamespace: in}.WatchNamespaces()
		if err != nil || strings.Join(got, ",") != want {
			t.Errorf("WatchNamespaces(%q) = %v, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"a,,b", "Keycloak", "a b"} {
		if _, err := (Config{WatchNamespace: bad}).WatchNamespaces(); err == nil || !strings.Contains(err.Error(), "--namespace") {
			t.Errorf("WatchNamespaces(%q) = %v; want an error naming --namespace", bad, err)
		}
	}
}
