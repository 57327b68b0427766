package v1alpha1_test

import (
	"errors"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

func validSpec() kcv1.KeycloakBackupSpec {
	return kcv1.KeycloakBackupSpec{
		InstanceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "postgres"}},
		Storage:          kcv1.Storage{Volume: &kcv1.VolumeStorage{ClaimName: "archive"}},
	}
}

func TestValidateNamesFieldAndReason(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*kcv1.KeycloakBackupSpec)
		reason string
		field  string
	}{
		{"valid one-off", func(*kcv1.KeycloakBackupSpec) {}, "", ""},
		{"valid schedule", func(s *kcv1.KeycloakBackupSpec) {
			s.Schedule = "CRON_TZ=Europe/Paris 0 3 * * *"
			s.Retention = &kcv1.Retention{KeepBackups: 3}
		}, "", ""},
		{"valid restore", func(s *kcv1.KeycloakBackupSpec) { s.RestoreTo = "2026-03-01T13:00:00+01:00" }, "", ""},
		{"both storages", func(s *kcv1.KeycloakBackupSpec) { s.Storage.S3 = &kcv1.S3Storage{Bucket: "b"} }, kcv1.ReasonInvalidStorage, "spec.storage"},
		{"no storage", func(s *kcv1.KeycloakBackupSpec) { s.Storage = kcv1.Storage{} }, kcv1.ReasonInvalidStorage, "spec.storage"},
		{"bad cron", func(s *kcv1.KeycloakBackupSpec) { s.Schedule = "every day" }, kcv1.ReasonInvalidSchedule, "spec.schedule"},
		{"minute 61", func(s *kcv1.KeycloakBackupSpec) { s.Schedule = "61 * * * *" }, kcv1.ReasonInvalidSchedule, "spec.schedule"},
		{"no such day", func(s *kcv1.KeycloakBackupSpec) { s.RestoreTo = "2026-02-30T00:00:00Z" }, kcv1.ReasonInvalidRestoreTarget, "spec.restoreTo"},
		{"no zone", func(s *kcv1.KeycloakBackupSpec) { s.RestoreTo = "2026-02-01T00:00:00" }, kcv1.ReasonInvalidRestoreTarget, "spec.restoreTo"},
		{"schedule and restore", func(s *kcv1.KeycloakBackupSpec) { s.Schedule, s.RestoreTo = "@daily", "latest" }, kcv1.ReasonInvalidSpec, "spec"},
		{"keepWithin in days", func(s *kcv1.KeycloakBackupSpec) {
			s.Schedule, s.Retention = "@daily", &kcv1.Retention{KeepWithin: "7d"}
		}, kcv1.ReasonInvalidRetention, "spec.retention.keepWithin"},
		{"empty retention", func(s *kcv1.KeycloakBackupSpec) { s.Schedule, s.Retention = "@daily", &kcv1.Retention{} }, kcv1.ReasonInvalidRetention, "spec.retention"},
		{"restore options", func(s *kcv1.KeycloakBackupSpec) {
			s.RestoreTo, s.Restore = "latest", &kcv1.RestoreOptions{Timeout: &metav1.Duration{Duration: time.Hour}, Sessions: kcv1.SessionsAll}
		}, "", ""},
		{"restore options without restoreTo", func(s *kcv1.KeycloakBackupSpec) { s.Restore = &kcv1.RestoreOptions{} }, kcv1.ReasonInvalidSpec, "spec.restore"},
		{"negative timeout", func(s *kcv1.KeycloakBackupSpec) {
			s.RestoreTo, s.Restore = "latest", &kcv1.RestoreOptions{Timeout: &metav1.Duration{Duration: -time.Minute}}
		}, kcv1.ReasonInvalidSpec, "spec.restore.timeout"},
		{"unknown sessions", func(s *kcv1.KeycloakBackupSpec) {
			s.RestoreTo, s.Restore = "latest", &kcv1.RestoreOptions{Sessions: "offline"}
		}, kcv1.ReasonInvalidSpec, "spec.restore.sessions"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := validSpec()
			tc.mutate(&s)
			err := s.Validate()
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			var se *kcv1.SpecError
			if !errors.As(err, &se) || se.Reason != tc.reason || se.Field != tc.field {
				t.Fatalf("Validate = %#v, want reason %s on %s", err, tc.reason, tc.field)
			}
		})
	}
}

func TestParseRestoreTargetKeepsTheOffset(t *testing.T) {
	got, latest, err := kcv1.ParseRestoreTarget("2026-03-01T13:00:00+01:00")
	if err != nil || latest || !got.Equal(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)) {
		t.Fatalf("ParseRestoreTarget = %v, %v, %v; want 12:00 UTC", got, latest, err)
	}
	if _, latest, err := kcv1.ParseRestoreTarget("latest"); err != nil || !latest {
		t.Fatalf("latest: %v, %v", latest, err)
	}
}

func TestStorageURL(t *testing.T) {
	for _, tc := range []struct {
		st   kcv1.Storage
		want string
	}{
		{kcv1.Storage{S3: &kcv1.S3Storage{Bucket: "b", Prefix: "keycloak/prod"}}, "s3://b/keycloak/prod"},
		{kcv1.Storage{S3: &kcv1.S3Storage{Bucket: "b"}}, "s3://b"},
		{kcv1.Storage{Volume: &kcv1.VolumeStorage{ClaimName: "c"}}, "file:///var/lib/kcbackup/archive"},
	} {
		got, err := tc.st.URL("/var/lib/kcbackup/archive")
		if err != nil || got != tc.want {
			t.Errorf("URL = %q, %v; want %q", got, err, tc.want)
		}
	}
	if _, err := (&kcv1.Storage{}).URL("/x"); err == nil {
		t.Error("URL of an empty storage succeeded")
	}
}

func TestRestoreOptionsDefaults(t *testing.T) {
	s := validSpec()
	if s.RestoreTimeout() != 30*time.Minute || s.RestoreSessions() != kcv1.SessionsOnline || s.RestoreKeycloakDatabase() != "keycloak" {
		t.Errorf("defaults = %s, %s, %s; want 30m, online, keycloak", s.RestoreTimeout(), s.RestoreSessions(), s.RestoreKeycloakDatabase())
	}
	s.Restore = &kcv1.RestoreOptions{Timeout: &metav1.Duration{Duration: time.Hour}, Sessions: kcv1.SessionsKeep, KeycloakDatabase: "kc"}
	if s.RestoreTimeout() != time.Hour || s.RestoreSessions() != kcv1.SessionsKeep || s.RestoreKeycloakDatabase() != "kc" {
		t.Errorf("set = %s, %s, %s; want 1h, keep, kc", s.RestoreTimeout(), s.RestoreSessions(), s.RestoreKeycloakDatabase())
	}
}
