package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/walarchive"
)

// fakeWAL serves one segment and counts the calls.
type fakeWAL struct{ calls int }

const servedSegment = "000000010000000000000001"

func (f *fakeWAL) Fetch(ctx context.Context, name string) ([]byte, error) {
	f.calls++
	if name == servedSegment {
		return []byte("wal bytes"), nil
	}
	return nil, walarchive.ErrWALNotInArchive
}

// tokenServer is a server with every endpoint wired, recording what reached the backends.
type tokenServer struct {
	url      string
	backups  *fakeBackups
	wal      *fakeWAL
	cleanups int
}

func newTokenServer(t *testing.T, admin, fetch string) *tokenServer {
	t.Helper()
	ts := &tokenServer{backups: &fakeBackups{}, wal: &fakeWAL{}}
	cfg := Config{Token: admin, FetchToken: fetch, Registry: prometheus.NewRegistry(), Backups: ts.backups, WAL: ts.wal,
		Status: func() apiclient.Status { return apiclient.Status{Timeline: 3} },
		Ready:  func() error { return nil },
		KeycloakCleanup: func(ctx context.Context, req apiclient.KeycloakCleanupRequest) (apiclient.KeycloakCleanupResult, error) {
			ts.cleanups++
			return apiclient.KeycloakCleanupResult{Database: req.Database, Sessions: req.Sessions}, nil
		}}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	srv := httptest.NewServer(New(cfg).Handler())
	t.Cleanup(srv.Close)
	ts.url = srv.URL
	return ts
}

// adminEndpoints are every /v1 endpoint but the WAL fetch, with a valid request each and
// the status the admin token gets (the fake catalog fails; the job list is read after the
// backup started).
var adminEndpoints = []struct {
	method, path, body string
	adminCode          int
}{
	{http.MethodGet, "/v1/status", "", http.StatusOK},
	{http.MethodPost, "/v1/backups", "", http.StatusAccepted},
	{http.MethodGet, "/v1/backups", "", http.StatusInternalServerError},
	{http.MethodGet, "/v1/backups/20261124T000000Z", "", http.StatusOK},
	{http.MethodPost, "/v1/prune", `{"keepBackups": 1}`, http.StatusOK},
	{http.MethodPost, "/v1/keycloak/cleanup", `{"database":"keycloak","sessions":"all"}`, http.StatusOK},
}

// TestFetchOnlyTokenFetchesWALAndNothingElse: the token PostgreSQL's container holds gets
// WAL, and is refused (403, saying why) by backups, prune, the clean-up and every other /v1
// endpoint, before any of them does anything.
func TestFetchOnlyTokenFetchesWALAndNothingElse(t *testing.T) {
	ts := newTokenServer(t, "admin-token", "fetch-token")

	code, body := do(t, http.MethodGet, ts.url+"/v1/wal/"+servedSegment, "fetch-token", "")
	if code != http.StatusOK || body != "wal bytes" {
		t.Fatalf("GET /v1/wal with the fetch-only token: %d %q; want 200 with the segment", code, body)
	}
	if code, body := do(t, http.MethodGet, ts.url+"/v1/wal/000000010000000000000009", "fetch-token", ""); code != http.StatusNotFound {
		t.Errorf("GET /v1/wal of a missing segment with the fetch-only token: %d %s; want 404", code, body)
	}
	for _, e := range adminEndpoints {
		code, body := do(t, e.method, ts.url+e.path, "fetch-token", e.body)
		if code != http.StatusForbidden || !strings.Contains(body, "fetch-only") || !strings.Contains(body, "admin token") ||
			!strings.Contains(body, e.method+" "+e.path) {
			t.Errorf("%s %s with the fetch-only token: %d %s; want 403 naming the endpoint and the admin token it needs", e.method, e.path, code, body)
		}
		if strings.Contains(body, "admin-token") || strings.Contains(body, "fetch-token") {
			t.Errorf("%s %s: the answer holds a token: %s", e.method, e.path, body)
		}
	}
	if ts.backups.running != nil || ts.backups.pruned != nil || ts.cleanups != 0 {
		t.Fatalf("a request with the fetch-only token reached the backends: backup %+v, prune %+v, clean-ups %d",
			ts.backups.running, ts.backups.pruned, ts.cleanups)
	}
}

// TestAdminTokenOpensEveryEndpoint: the operator's token still calls everything, WAL included.
func TestAdminTokenOpensEveryEndpoint(t *testing.T) {
	ts := newTokenServer(t, "admin-token", "fetch-token")
	for _, e := range adminEndpoints {
		if code, body := do(t, e.method, ts.url+e.path, "admin-token", e.body); code != e.adminCode {
			t.Errorf("%s %s with the admin token: %d %s; want %d", e.method, e.path, code, body, e.adminCode)
		}
	}
	if code, body := do(t, http.MethodGet, ts.url+"/v1/wal/"+servedSegment, "admin-token", ""); code != 200 || body != "wal bytes" {
		t.Errorf("GET /v1/wal with the admin token: %d %q; want 200", code, body)
	}
	if ts.backups.pruned == nil || ts.cleanups != 1 {
		t.Errorf("admin requests did not reach prune (%+v) or the clean-up (%d)", ts.backups.pruned, ts.cleanups)
	}
}

// TestUnknownTokensAreRefusedEverywhere: neither a wrong token nor none opens any endpoint,
// WAL included; a prefix of a real token is not one.
func TestUnknownTokensAreRefusedEverywhere(t *testing.T) {
	ts := newTokenServer(t, "admin-token", "fetch-token")
	for _, tok := range []string{"", "wrong", "fetch", "fetch-token2", "admin"} {
		if code, _ := do(t, http.MethodGet, ts.url+"/v1/wal/"+servedSegment, tok, ""); code != http.StatusUnauthorized {
			t.Errorf("GET /v1/wal with token %q: %d; want 401", tok, code)
		}
		if code, _ := do(t, http.MethodPost, ts.url+"/v1/prune", tok, `{"keepBackups": 1}`); code != http.StatusUnauthorized {
			t.Errorf("POST /v1/prune with token %q: %d; want 401", tok, code)
		}
	}
	if ts.wal.calls != 0 || ts.backups.pruned != nil {
		t.Fatalf("refused requests reached the backends: %d fetches, prune %+v", ts.wal.calls, ts.backups.pruned)
	}
}

// TestWithOnlyTheAdminTokenWALNeedsIt: without a fetch-only token, behaviour is as before:
// the admin token fetches WAL and nothing else does.
func TestWithOnlyTheAdminTokenWALNeedsIt(t *testing.T) {
	ts := newTokenServer(t, "admin-token", "")
	if code, _ := do(t, http.MethodGet, ts.url+"/v1/wal/"+servedSegment, "admin-token", ""); code != 200 {
		t.Errorf("GET /v1/wal with the admin token: %d; want 200", code)
	}
	if code, _ := do(t, http.MethodGet, ts.url+"/v1/wal/"+servedSegment, "fetch-token", ""); code != http.StatusUnauthorized {
		t.Errorf("GET /v1/wal with an unconfigured fetch token: %d; want 401", code)
	}
}

// TestWithOnlyTheFetchTokenTheAdminAPIIsDisabled: a sidecar given only the fetch-only token
// serves WAL and keeps the rest closed.
func TestWithOnlyTheFetchTokenTheAdminAPIIsDisabled(t *testing.T) {
	ts := newTokenServer(t, "", "fetch-token")
	if code, _ := do(t, http.MethodGet, ts.url+"/v1/wal/"+servedSegment, "fetch-token", ""); code != 200 {
		t.Errorf("GET /v1/wal with the fetch-only token: %d; want 200", code)
	}
	if code, body := do(t, http.MethodPost, ts.url+"/v1/prune", "", `{}`); code != http.StatusForbidden || !strings.Contains(body, "KCBACKUP_TOKEN") {
		t.Errorf("POST /v1/prune without an admin token configured: %d %s; want 403 naming how to set one", code, body)
	}
	if ts.backups.pruned != nil {
		t.Fatal("prune ran without an admin token configured")
	}
}

// TestFetchTokenEqualToTheAdminTokenIsRefused: the sidecar must not start with one token in
// both roles, since PostgreSQL's container would then hold the admin's rights.
func TestFetchTokenEqualToTheAdminTokenIsRefused(t *testing.T) {
	err := Config{Token: "same", FetchToken: "same"}.Validate()
	if err == nil || !strings.Contains(err.Error(), "KCBACKUP_FETCH_TOKEN_FILE") || !strings.Contains(err.Error(), "different") ||
		strings.Contains(err.Error(), "same") {
		t.Fatalf("Validate with equal tokens = %v; want an error naming the settings, without the token", err)
	}
	for _, c := range []Config{{Token: "a", FetchToken: "b"}, {Token: "a"}, {FetchToken: "b"}, {}} {
		if err := c.Validate(); err != nil {
			t.Errorf("Validate(%q, %q) = %v; want nil", c.Token, c.FetchToken, err)
		}
	}
}
