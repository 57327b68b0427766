package controller

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

func sidecarEnv(c corev1.Container) map[string]string {
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	return env
}

func TestSidecarOptionsBecomeTheSidecarsEnvResourcesAndKeyFiles(t *testing.T) {
	loc := dataLocation{Container: "postgres", DataDir: "/d/pgdata", Mount: corev1.VolumeMount{Name: "data", MountPath: "/d"}}
	base := kcv1.KeycloakBackupSpec{Storage: kcv1.Storage{Volume: &kcv1.VolumeStorage{ClaimName: "a"}}}

	// Defaults: JSON logs, asynchronous, the default requests, no key files.
	def, err := buildSidecar("img", DeliverByImageVolume, &base, "pg", loc)
	if err != nil {
		t.Fatal(err)
	}
	env := sidecarEnv(def.Container)
	if env["KCBACKUP_LOG_FORMAT"] != "json" {
		t.Errorf("KCBACKUP_LOG_FORMAT = %q, want json by default", env["KCBACKUP_LOG_FORMAT"])
	}
	if _, ok := env["KCBACKUP_PARTIAL_INTERVAL"]; ok {
		t.Errorf("KCBACKUP_PARTIAL_INTERVAL set without spec.sidecar.synchronous")
	}
	if got := def.Container.Resources.Requests.Cpu().String(); got != "50m" {
		t.Errorf("default CPU request = %s, want 50m", got)
	}

	// Everything set.
	spec := base.DeepCopy()
	spec.Sidecar = &kcv1.SidecarOptions{Synchronous: true, LogFormat: kcv1.LogFormatText, Resources: &corev1.ResourceRequirements{
		Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")}}}
	spec.Encryption = &kcv1.Encryption{
		RecipientsSecret: &kcv1.SecretKey{Name: "age", Key: "recipients.txt"},
		IdentitySecret:   &kcv1.SecretKey{Name: "age-id", Key: "key.txt"},
	}
	all, err := buildSidecar("img", DeliverByImageVolume, spec, "pg", loc)
	if err != nil {
		t.Fatal(err)
	}
	if all.Hash() == def.Hash() {
		t.Errorf("the sidecar's hash did not change with its options: the pod would not roll")
	}
	env = sidecarEnv(all.Container)
	for k, want := range map[string]string{
		"KCBACKUP_LOG_FORMAT": "text", "KCBACKUP_PARTIAL_INTERVAL": "0s",
		"KCBACKUP_ENCRYPTION_RECIPIENT_FILE": "/var/run/kcbackup/encryption/recipients",
		"KCBACKUP_ENCRYPTION_KEY_FILE":       "/var/run/kcbackup/encryption/identity",
	} {
		if env[k] != want {
			t.Errorf("%s = %q, want %q", k, env[k], want)
		}
	}
	if got := all.Container.Resources.Limits.Memory().String(); got != "256Mi" || all.Container.Resources.Requests != nil {
		t.Errorf("resources = %+v, want exactly spec.sidecar.resources", all.Container.Resources)
	}
	var vol *corev1.Volume
	for i := range all.Volumes {
		if all.Volumes[i].Name == encryptionVolume {
			vol = &all.Volumes[i]
		}
	}
	if vol == nil || vol.Projected == nil || len(vol.Projected.Sources) != 2 ||
		vol.Projected.Sources[0].Secret.Name != "age" || vol.Projected.Sources[0].Secret.Items[0].Key != "recipients.txt" ||
		vol.Projected.Sources[1].Secret.Name != "age-id" || vol.Projected.Sources[1].Secret.Items[0].Path != identityFileName {
		t.Fatalf("encryption volume = %+v, want both Secret keys projected", vol)
	}
	// Injected twice, the key volume is replaced, not repeated.
	tmpl := &corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "postgres"}}}}
	inject(tmpl, all)
	inject(tmpl, all)
	n := 0
	for _, v := range tmpl.Spec.Volumes {
		if v.Name == encryptionVolume {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d encryption volumes after two injections, want 1", n)
	}

	// The restore Job reads with the identity, and never gets the recipients.
	v, m, renv := restoreEncryption(spec.Encryption)
	if v == nil || len(v.Projected.Sources) != 1 || v.Projected.Sources[0].Secret.Name != "age-id" || !m.ReadOnly ||
		len(renv) != 1 || renv[0].Name != "KCBACKUP_ENCRYPTION_KEY_FILE" {
		t.Errorf("restore Job encryption = %+v %+v %+v, want the identity alone", v, m, renv)
	}
	if v, _, _ := restoreEncryption(&kcv1.Encryption{RecipientsSecret: spec.Encryption.RecipientsSecret}); v != nil {
		t.Errorf("restore Job got a key volume from recipients alone: %+v", v)
	}
}

func TestRecordNameIsTheArchiveAndTheBackupTime(t *testing.T) {
	for _, tc := range []struct{ archive, id, want string }{
		{"nightly", "20260301T030000Z", "nightly-20260301030000"},
		{"nightly", "20260301T030000Z-2", "nightly-20260301030000-2"},
		{"nightly", "backup-7", "nightly-backup-7"},
		{"nightly", "Odd_ID.x", "nightly-odd-id-x"},
	} {
		if got := RecordName(tc.archive, tc.id); got != tc.want {
			t.Errorf("RecordName(%q, %q) = %q, want %q", tc.archive, tc.id, got, tc.want)
		}
	}
	long := strings.Repeat("a", 250)
	got := RecordName(long, "20260301T030000Z")
	if len(got) > 253 || !strings.HasSuffix(got, "-20260301030000") || got == RecordName(strings.Repeat("a", 249)+"b", "20260301T030000Z") {
		t.Errorf("long name %q (%d chars): want at most 253, ending with the time, distinct per archive", got, len(got))
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 1023: "1023B", 1024: "1.0KiB", 1536: "1.5KiB", 5 << 30: "5.0GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// A sidecar injected by an operator from before spec.sidecar (no log format variable) is an
// image-only difference for a hold: the default this version adds does not restart a held
// PostgreSQL, nor stop a verify-mode workload's backups.
func TestHoldKeepsASidecarFromBeforeTheLogFormatDefault(t *testing.T) {
	loc := dataLocation{Container: "postgres", DataDir: "/d/pgdata", Mount: corev1.VolumeMount{Name: "data", MountPath: "/d"}}
	kb := &kcv1.KeycloakBackup{Spec: kcv1.KeycloakBackupSpec{Storage: kcv1.Storage{Volume: &kcv1.VolumeStorage{ClaimName: "a"}}}}
	old, err := buildSidecar("img:old", DeliverByImageVolume, &kb.Spec, "pg", loc)
	if err != nil {
		t.Fatal(err)
	}
	before, ok := beforeSidecarOptions(&kb.Spec, old)
	if !ok || before.Hash() == old.Hash() || len(before.Container.Env) != len(old.Container.Env)-1 {
		t.Fatalf("beforeSidecarOptions = %v, %d variables: want the sidecar without its log format", ok, len(before.Container.Env))
	}
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "pg", Annotations: map[string]string{HoldSidecarUpgradeAnnotation: "true"}},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "postgres"}}}}}}
	inject(&d.Spec.Template, before)
	r := &Reconciler{Recorder: events.NewFakeRecorder(10), SidecarImage: "img:new"}
	w := workload{Kind: "Deployment", Obj: d}
	if held, err := r.upgradeHeld(kb, w, loc); err != nil || !held {
		t.Errorf("upgradeHeld = %v, %v: want held", held, err)
	}
	// A spec with sidecar options is not compared with the sidecar from before them.
	kb.Spec.Sidecar = &kcv1.SidecarOptions{LogFormat: kcv1.LogFormatText}
	if held, err := r.upgradeHeld(kb, w, loc); err != nil || held {
		t.Errorf("upgradeHeld with spec.sidecar = %v, %v: want not held (the options changed)", held, err)
	}
	if _, ok := beforeSidecarOptions(&kb.Spec, old); ok {
		t.Errorf("beforeSidecarOptions accepted a spec with spec.sidecar")
	}
}
