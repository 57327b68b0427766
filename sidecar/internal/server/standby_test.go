package server

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

// On a standby, the endpoints that write answer 421 with the reason, and nothing reaches
// the backup service; the ones that only read go on working. The client maps 421 to
// apiclient.ErrStandby.
func TestAStandbyRefusesBackupsPruneAndCleanupWith421(t *testing.T) {
	fb := &fakeBackups{}
	cleaned := false
	why := errors.New("this pod's PostgreSQL is a standby (pg_is_in_recovery() is true): send backups to the primary's sidecar")
	s := New(Config{Token: "tok", Registry: prometheus.NewRegistry(), Backups: fb,
		Status:  func() apiclient.Status { return apiclient.Status{Role: apiclient.RoleStandby} },
		Ready:   func() error { return nil },
		Standby: func() error { return why },
		KeycloakCleanup: func(context.Context, apiclient.KeycloakCleanupRequest) (apiclient.KeycloakCleanupResult, error) {
			cleaned = true
			return apiclient.KeycloakCleanupResult{}, nil
		}})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/v1/backups", ""},
		{"POST", "/v1/prune", `{"keepBackups": 1}`},
		{"POST", "/v1/keycloak/cleanup", `{"database": "keycloak", "sessions": "all"}`},
	} {
		code, body := do(t, c.method, ts.URL+c.path, "tok", c.body)
		if code != http.StatusMisdirectedRequest || !strings.Contains(body, "standby") {
			t.Errorf("%s %s on a standby = %d %s; want 421 naming the standby", c.method, c.path, code, body)
		}
	}
	if fb.running != nil || fb.pruned != nil || cleaned {
		t.Fatalf("a refused call reached the service: backup %v, prune %v, cleanup %v", fb.running, fb.pruned, cleaned)
	}
	if code, body := do(t, "GET", ts.URL+"/v1/status", "tok", ""); code != http.StatusOK || !strings.Contains(body, `"role":"standby"`) {
		t.Errorf("GET /v1/status on a standby = %d %s; want 200 with role standby", code, body)
	}
	_, err := apiclient.New(ts.URL, "tok", nil).StartBackup(context.Background())
	if !errors.Is(err, apiclient.ErrStandby) || errors.Is(err, apiclient.ErrBackupRunning) {
		t.Fatalf("the client's error for a standby's 421 = %v; want ErrStandby", err)
	}
}

// Without the hook (or once the server is the primary) the same calls go through.
func TestThePrimaryServesBackups(t *testing.T) {
	fb := &fakeBackups{}
	s := New(Config{Token: "tok", Registry: prometheus.NewRegistry(), Backups: fb,
		Status: func() apiclient.Status { return apiclient.Status{} }, Ready: func() error { return nil },
		Standby: func() error { return nil }})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	if code, body := do(t, "POST", ts.URL+"/v1/backups", "tok", ""); code != http.StatusAccepted {
		t.Fatalf("POST /v1/backups on the primary = %d %s; want 202", code, body)
	}
}
