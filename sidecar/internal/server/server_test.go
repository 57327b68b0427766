package server

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

type fakeBackups struct {
	running *apiclient.BackupJob
	pruned  *apiclient.PruneRequest
}

func (f *fakeBackups) Start(ctx context.Context) (apiclient.BackupJob, error) {
	if f.running != nil {
		return apiclient.BackupJob{}, &RunningJobError{Job: *f.running}
	}
	f.running = &apiclient.BackupJob{ID: "20261124T000000Z", State: apiclient.StateRunning}
	return *f.running, nil
}
func (f *fakeBackups) Job(id string) (apiclient.BackupJob, bool) {
	if f.running != nil && f.running.ID == id {
		return *f.running, true
	}
	return apiclient.BackupJob{}, false
}
func (f *fakeBackups) Catalog(ctx context.Context) (apiclient.Catalog, error) {
	return apiclient.Catalog{}, errors.New("storage unreachable")
}
func (f *fakeBackups) Prune(ctx context.Context, req apiclient.PruneRequest) (apiclient.PruneResult, error) {
	f.pruned = &req
	return apiclient.PruneResult{RemovedBackups: []string{}}, nil
}

func newTestServer(token string) (*httptest.Server, *fakeBackups) {
	fb := &fakeBackups{}
	s := New(Config{Token: token, Registry: prometheus.NewRegistry(), Backups: fb,
		Status: func() apiclient.Status { return apiclient.Status{Timeline: 3, Streaming: true} },
		Ready:  func() error { return errors.New("storage failing") }})
	return httptest.NewServer(s.Handler()), fb
}

func do(t *testing.T, method, url, token, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAPIRequiresTheBearerToken(t *testing.T) {
	ts, _ := newTestServer("s3cret")
	defer ts.Close()
	for _, tok := range []string{"", "wrong", "s3cret2"} {
		if code, body := do(t, "GET", ts.URL+"/v1/status", tok, ""); code != http.StatusUnauthorized || strings.Contains(body, "s3cret") {
			t.Errorf("token %q: %d %s; want 401 without the token in the body", tok, code, body)
		}
	}
	if code, body := do(t, "GET", ts.URL+"/v1/status", "s3cret", ""); code != 200 || !strings.Contains(body, `"timeline":3`) {
		t.Errorf("with the token: %d %s", code, body)
	}
	// Health and metrics need no token and say nothing secret.
	if code, _ := do(t, "GET", ts.URL+"/healthz", "", ""); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, body := do(t, "GET", ts.URL+"/readyz", "", ""); code != 503 || !strings.Contains(body, "storage failing") {
		t.Errorf("/readyz = %d %s; want 503 with the reason", code, body)
	}
	if code, _ := do(t, "GET", ts.URL+"/metrics", "", ""); code != 200 {
		t.Errorf("/metrics = %d", code)
	}
}

func TestAPIWithoutAConfiguredTokenIsDisabled(t *testing.T) {
	ts, _ := newTestServer("")
	defer ts.Close()
	if code, body := do(t, "POST", ts.URL+"/v1/backups", "", ""); code != http.StatusForbidden || !strings.Contains(body, "KCBACKUP_TOKEN") {
		t.Fatalf("no token configured: %d %s; want 403 naming how to set one", code, body)
	}
}

func TestSecondBackupRequestGetsConflictWithTheRunningID(t *testing.T) {
	ts, _ := newTestServer("t")
	defer ts.Close()
	if code, _ := do(t, "POST", ts.URL+"/v1/backups", "t", ""); code != http.StatusAccepted {
		t.Fatalf("first backup: %d", code)
	}
	code, body := do(t, "POST", ts.URL+"/v1/backups", "t", "")
	if code != http.StatusConflict || !strings.Contains(body, "already running") || !strings.Contains(body, `"id":"20261124T000000Z"`) {
		t.Fatalf("second backup: %d %s", code, body)
	}
	if code, _ := do(t, "GET", ts.URL+"/v1/backups/nope", "t", ""); code != http.StatusNotFound {
		t.Fatalf("unknown job: %d", code)
	}
	if code, body := do(t, "GET", ts.URL+"/v1/backups", "t", ""); code != 500 || !strings.Contains(body, "storage unreachable") {
		t.Fatalf("catalog error: %d %s", code, body)
	}
}

func TestPruneRejectsMalformedBodiesNamingTheField(t *testing.T) {
	ts, fb := newTestServer("t")
	defer ts.Close()
	for body, want := range map[string]string{
		`not json`:                   "invalid prune request body",
		`{"keepBackups": -1}`:        "keepBackups",
		`{"keepWithin": "7d"}`:       "keepWithin",
		`{"keepWithin": "-1h"}`:      "keepWithin",
		`{"keepBackupz": 3}`:         "unknown field",
		`{"keepBackups": "three"}`:   "invalid prune request body",
		strings.Repeat(" ", 100<<10): "invalid prune request body",
	} {
		code, got := do(t, "POST", ts.URL+"/v1/prune", "t", body)
		if code != http.StatusBadRequest || !strings.Contains(got, want) {
			t.Errorf("body %.30q: %d %s; want 400 mentioning %q", body, code, got, want)
		}
	}
	if fb.pruned != nil {
		t.Fatal("a malformed request reached Prune")
	}
	if code, _ := do(t, "POST", ts.URL+"/v1/prune", "t", `{"keepBackups": 3, "keepWithin": "168h"}`); code != 200 || fb.pruned.KeepBackups != 3 {
		t.Fatalf("valid prune: %d %+v", code, fb.pruned)
	}
}
