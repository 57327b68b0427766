package controller_test

import (
	"path"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	kccontroller "github.com/kcbackup/kcbackup/operator/internal/controller"
	"github.com/kcbackup/kcbackup/test/harness"
)

// restoreCommandTokenFile is the token file the restore_command the operator's restore
// writes names (see testRestore): PostgreSQL's container reads it during recovery.
const restoreCommandTokenFile = "/var/run/kcbackup/token/token"

// TestEnvtestLeastPrivilege: each container of the database pod holds only the token its
// job needs (RELIABILITY.md 35): PostgreSQL's the fetch-only one, the sidecar both, and an
// older operator's Secret gains the fetch-only token without losing its admin token.
func TestEnvtestLeastPrivilege(t *testing.T) {
	cfg := harness.StartAPIServer(t, "../../../deploy/crd")
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, cfg *rest.Config)
	}{
		{"PostgresMountsOnlyTheFetchTokenSidecarBoth", testPostgresGetsOnlyTheFetchToken},
		{"OldSecretGainsTheFetchTokenAdminTokenKept", testOldSecretGainsTheFetchToken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, cfg)
		})
	}
}

// secretKeyAt resolves a file path as container c of spec sees it to the Secret and key
// it holds; ok is false when no Secret volume provides it.
func secretKeyAt(spec *corev1.PodSpec, c *corev1.Container, file string) (secret, key string, ok bool) {
	for _, m := range c.VolumeMounts {
		rel, found := strings.CutPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !found || m.SubPath != "" {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name != m.Name || v.Secret == nil {
				continue
			}
			if len(v.Secret.Items) == 0 {
				return v.Secret.SecretName, rel, true
			}
			for _, it := range v.Secret.Items {
				if path.Clean(it.Path) == rel {
					return v.Secret.SecretName, it.Key, true
				}
			}
		}
	}
	return "", "", false
}

// secretKeysOf lists every "secret/key" container c can read, through volumes or env.
func secretKeysOf(spec *corev1.PodSpec, c *corev1.Container) []string {
	var keys []string
	for _, m := range c.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name != m.Name || v.Secret == nil {
				continue
			}
			if len(v.Secret.Items) == 0 {
				keys = append(keys, v.Secret.SecretName+"/*")
			}
			for _, it := range v.Secret.Items {
				keys = append(keys, v.Secret.SecretName+"/"+it.Key)
			}
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			keys = append(keys, e.ValueFrom.SecretKeyRef.Name+"/"+e.ValueFrom.SecretKeyRef.Key)
		}
	}
	for _, ef := range c.EnvFrom {
		if ef.SecretRef != nil {
			keys = append(keys, ef.SecretRef.Name+"/*")
		}
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

func envValue(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func (e *env) tokenSecret() *corev1.Secret {
	e.t.Helper()
	var s corev1.Secret
	if err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: kccontroller.TokenSecretName("postgres")}, &s); err != nil {
		e.t.Fatalf("token Secret: %v", err)
	}
	return &s
}

// checkTokenMounts asserts that PostgreSQL's container can read the fetch-only token and no
// other Secret key, at the path restore_command names, and that the sidecar's token files
// are the admin and the fetch-only token.
func checkTokenMounts(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	spec := &d.Spec.Template.Spec
	secret := kccontroller.TokenSecretName(d.Name)
	pg := &spec.Containers[0]
	if got, want := secretKeysOf(spec, pg), []string{secret + "/" + kccontroller.FetchTokenKey}; !slices.Equal(got, want) {
		t.Errorf("the postgres container can read the Secret keys %v; want only %v", got, want)
	}
	if s, k, ok := secretKeyAt(spec, pg, restoreCommandTokenFile); !ok || s != secret || k != kccontroller.FetchTokenKey {
		t.Errorf("restore_command's token file %s in the postgres container is %s/%s (found %v); want %s/%s",
			restoreCommandTokenFile, s, k, ok, secret, kccontroller.FetchTokenKey)
	}
	sc := sidecarOf(d)
	if sc == nil {
		t.Fatal("no sidecar injected")
	}
	for envName, want := range map[string]string{"KCBACKUP_TOKEN_FILE": kccontroller.TokenKey, "KCBACKUP_FETCH_TOKEN_FILE": kccontroller.FetchTokenKey} {
		file := envValue(sc, envName)
		if s, k, ok := secretKeyAt(spec, sc, file); file == "" || !ok || s != secret || k != want {
			t.Errorf("sidecar %s=%q is %s/%s (found %v); want %s/%s", envName, file, s, k, ok, secret, want)
		}
	}
}

func testPostgresGetsOnlyTheFetchToken(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	e.create(volumeBackup("once"))
	e.runPod("postgres-0", dbPods)
	// The backup completes: the operator still calls the sidecar with the admin token.
	e.waitPhase("once", kcv1.PhaseCompleted)

	s := e.tokenSecret()
	admin, fetch := string(s.Data[kccontroller.TokenKey]), string(s.Data[kccontroller.FetchTokenKey])
	if len(admin) != 64 || len(fetch) != 64 || admin == fetch {
		t.Errorf("token Secret holds an admin token of %d bytes and a fetch-only token of %d; want two different 64-byte tokens",
			len(admin), len(fetch))
	}
	checkTokenMounts(t, e.deployment("postgres"))
	e.sidecar.with(func(f *fakeSidecar) {
		if f.badTokens != 0 {
			t.Errorf("the operator called the sidecar with a wrong token %d times", f.badTokens)
		}
	})
}

func testOldSecretGainsTheFetchToken(t *testing.T, cfg *rest.Config) {
	for _, tc := range []struct {
		name string
		data map[string][]byte
	}{
		{"only the admin token (an older operator's Secret)", map[string][]byte{kccontroller.TokenKey: []byte("0123456789abcdef-older-admin-token")}},
		{"a fetch-only token equal to the admin token", map[string][]byte{
			kccontroller.TokenKey: []byte("0123456789abcdef-older-admin-token"), kccontroller.FetchTokenKey: []byte("0123456789abcdef-older-admin-token")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, cfg)
			d := postgresDeployment("postgres", dbLabels)
			e.create(d)
			e.create(&corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: kccontroller.TokenSecretName("postgres"), OwnerReferences: []metav1.OwnerReference{{
					APIVersion: "apps/v1", Kind: "Deployment", Name: d.Name, UID: d.UID,
				}}},
				Data: tc.data,
			})
			e.create(volumeBackup("once"))
			e.runPod("postgres-0", dbPods)
			e.waitPhase("once", kcv1.PhaseCompleted)

			s := e.tokenSecret()
			admin, fetch := string(s.Data[kccontroller.TokenKey]), string(s.Data[kccontroller.FetchTokenKey])
			if admin != "0123456789abcdef-older-admin-token" {
				t.Errorf("the admin token changed to %d bytes; want the older operator's, kept", len(admin))
			}
			if len(fetch) != 64 || fetch == admin {
				t.Errorf("fetch-only token of %d bytes (equal to the admin token: %v); want a new 64-byte token", len(fetch), fetch == admin)
			}
			e.waitEvent("once", "FetchTokenAdded")
			checkTokenMounts(t, e.deployment("postgres"))
			e.sidecar.with(func(f *fakeSidecar) {
				if f.badTokens != 0 {
					t.Errorf("the operator called the sidecar with a wrong token %d times", f.badTokens)
				}
			})
		})
	}
}
