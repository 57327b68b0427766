package v1alpha1_test

import (
	"errors"
	"os"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

func TestValidateFromRefusesTheArchivesSettings(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spec  kcv1.KeycloakBackupSpec
		field string
	}{
		{"without from", validSpec(), ""},
		{"from alone", kcv1.KeycloakBackupSpec{From: "prod"}, ""},
		{"from and a restore", kcv1.KeycloakBackupSpec{From: "prod", RestoreTo: "latest"}, ""},
		{"a record", kcv1.KeycloakBackupSpec{From: "prod", BackupID: "20260301T030000Z"}, ""},
		{"from with the API server's postgres defaults", kcv1.KeycloakBackupSpec{From: "prod",
			Postgres: kcv1.PostgresSpec{User: "postgres", Port: 5432}}, ""},
		{"from and storage", kcv1.KeycloakBackupSpec{From: "prod", Storage: validSpec().Storage}, "spec.storage"},
		{"from and a selector", kcv1.KeycloakBackupSpec{From: "prod", InstanceSelector: validSpec().InstanceSelector}, "spec.instanceSelector"},
		{"from and a user", kcv1.KeycloakBackupSpec{From: "prod", Postgres: kcv1.PostgresSpec{User: "backup"}}, "spec.postgres"},
		{"from and encryption", kcv1.KeycloakBackupSpec{From: "prod", Encryption: &kcv1.Encryption{}}, "spec.encryption"},
		{"from and sidecar", kcv1.KeycloakBackupSpec{From: "prod", Sidecar: &kcv1.SidecarOptions{}}, "spec.sidecar"},
		{"from and a schedule", kcv1.KeycloakBackupSpec{From: "prod", Schedule: "@daily"}, "spec.schedule"},
		{"a record without from", func() kcv1.KeycloakBackupSpec { s := validSpec(); s.BackupID = "x"; return s }(), "spec.backupID"},
		{"a record restoring", kcv1.KeycloakBackupSpec{From: "prod", BackupID: "x", RestoreTo: "latest"}, "spec.backupID"},
	} {
		err := tc.spec.ValidateFrom()
		var se *kcv1.SpecError
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("%s: %v, want accepted", tc.name, err)
		case tc.field != "" && (!errors.As(err, &se) || se.Field != tc.field || se.Reason != kcv1.ReasonInvalidFrom):
			t.Errorf("%s: %v, want InvalidFrom on %s", tc.name, err, tc.field)
		}
	}
}

func TestTakeArchiveFromCopiesTheArchiveSettingsOnly(t *testing.T) {
	archive := validSpec()
	archive.Schedule = "@daily"
	archive.Encryption = &kcv1.Encryption{IdentitySecret: &kcv1.SecretKey{Name: "age", Key: "identity"}}
	archive.Sidecar = &kcv1.SidecarOptions{Synchronous: true}
	s := kcv1.KeycloakBackupSpec{From: "prod", RestoreTo: "latest"}
	s.TakeArchiveFrom(&archive)
	if err := s.Validate(); err != nil {
		t.Fatalf("resolved spec: %v", err)
	}
	if s.Schedule != "" || s.RestoreTo != "latest" || s.Storage.Volume == nil || s.Sidecar == nil || !s.Sidecar.Synchronous {
		t.Errorf("resolved spec = %+v, want the archive's settings and its own restoreTo, no schedule", s)
	}
	archive.Sidecar.Synchronous = false
	if !s.Sidecar.Synchronous {
		t.Errorf("the resolved spec shares the archive's sidecar options: want a copy")
	}
	// Unresolved, a spec with from says where its settings are.
	var se *kcv1.SpecError
	if err := (&kcv1.KeycloakBackupSpec{From: "prod"}).Validate(); !errors.As(err, &se) || se.Field != "spec.from" {
		t.Errorf("Validate of an unresolved spec = %v, want an error on spec.from", err)
	}
	// A restore of an encrypted archive needs the identity.
	s.Encryption = &kcv1.Encryption{RecipientsSecret: &kcv1.SecretKey{Name: "age", Key: "r"}}
	if err := s.Validate(); !errors.As(err, &se) || se.Field != "spec.encryption.identitySecret" {
		t.Errorf("restore with recipients only = %v, want an error on spec.encryption.identitySecret", err)
	}
}

func TestCanBeArchiveOf(t *testing.T) {
	archive := &kcv1.KeycloakBackup{ObjectMeta: metav1.ObjectMeta{Name: "prod"}, Spec: validSpec()}
	if err := archive.CanBeArchiveOf("adhoc"); err != nil {
		t.Errorf("a schedule's resource: %v", err)
	}
	for name, kb := range map[string]*kcv1.KeycloakBackup{
		"with from": {ObjectMeta: metav1.ObjectMeta{Name: "adhoc"}, Spec: kcv1.KeycloakBackupSpec{From: "prod"}},
		"a restore": {ObjectMeta: metav1.ObjectMeta{Name: "undo"}, Spec: kcv1.KeycloakBackupSpec{RestoreTo: "latest"}},
		"itself":    {ObjectMeta: metav1.ObjectMeta{Name: "self"}, Spec: validSpec()},
	} {
		if err := kb.CanBeArchiveOf("self"); err == nil {
			t.Errorf("%s: accepted as an archive's resource", name)
		}
	}
}

// TestCRDNamesAndColumns: `kubectl get keycloak` is the Keycloak Operator's, so the CRD is
// in no category; `kubectl get kcb` shows the workload, phase, step, time and size.
func TestCRDNamesAndColumns(t *testing.T) {
	data, err := os.ReadFile("../../deploy/crd/keycloak.org_keycloakbackups.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var crd struct {
		Spec struct {
			Names    struct{ Categories, ShortNames []string }
			Versions []struct {
				AdditionalPrinterColumns []struct {
					Name     string
					Priority int
				} `json:"additionalPrinterColumns"`
			}
		}
	}
	if err := yaml.Unmarshal(data, &crd); err != nil {
		t.Fatal(err)
	}
	if len(crd.Spec.Names.Categories) != 0 {
		t.Errorf("categories = %v, want none (keycloak shadows the Keycloak Operator's kind)", crd.Spec.Names.Categories)
	}
	var shown []string
	for _, c := range crd.Spec.Versions[0].AdditionalPrinterColumns {
		if c.Priority == 0 {
			shown = append(shown, c.Name)
		}
	}
	if got := strings.Join(shown, ","); got != "Workload,Phase,Step,Backup Time,Size,Age" {
		t.Errorf("kubectl get columns = %s", got)
	}
}
