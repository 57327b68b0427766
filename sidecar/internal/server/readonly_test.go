package server

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

const readOnlyNote = "this is a read-only kcbackup serve process: it only serves GET /v1/wal/{name}"

// newReadOnlyServer is the API of kcbackup serve: the fetch-only token, WAL, nothing else.
func newReadOnlyServer(t *testing.T, ready func() error) (string, *fakeWAL) {
	t.Helper()
	wal := &fakeWAL{}
	cfg := Config{FetchToken: "fetch-token", Registry: prometheus.NewRegistry(), WAL: wal, Ready: ready, ReadOnly: readOnlyNote}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	srv := httptest.NewServer(New(cfg).Handler())
	t.Cleanup(srv.Close)
	return srv.URL, wal
}

// TestReadOnlyServesWALWithTheFetchToken: the same answers as run's endpoint: the file, 404
// for an absent one (so restore_command ends recovery), 400 for a bad name, 401 without the token.
func TestReadOnlyServesWALWithTheFetchToken(t *testing.T) {
	url, wal := newReadOnlyServer(t, func() error { return nil })
	if code, body := do(t, http.MethodGet, url+"/v1/wal/"+servedSegment, "fetch-token", ""); code != http.StatusOK || body != "wal bytes" {
		t.Fatalf("GET /v1/wal with the fetch token: %d %q; want 200 with the segment", code, body)
	}
	if code, body := do(t, http.MethodGet, url+"/v1/wal/000000010000000000000009", "fetch-token", ""); code != http.StatusNotFound {
		t.Errorf("GET /v1/wal of an absent segment: %d %s; want 404", code, body)
	}
	for _, tok := range []string{"", "wrong", "admin-token"} {
		if code, _ := do(t, http.MethodGet, url+"/v1/wal/"+servedSegment, tok, ""); code != http.StatusUnauthorized {
			t.Errorf("GET /v1/wal with token %q: %d; want 401", tok, code)
		}
	}
	if wal.calls != 2 {
		t.Errorf("WAL fetches reaching the source: %d; want 2 (the refused ones must not)", wal.calls)
	}
}

// TestReadOnlyRefusesEveryOtherV1Path: backups, prune, status, the plan, the clean-up, a
// write to the WAL path and unknown paths are refused with the note, whatever the token.
func TestReadOnlyRefusesEveryOtherV1Path(t *testing.T) {
	url, wal := newReadOnlyServer(t, func() error { return nil })
	type request struct{ method, path, body string }
	reqs := []request{
		{http.MethodPost, "/v1/restore-plan", `{"target":"latest"}`},
		{http.MethodPut, "/v1/wal/" + servedSegment, "x"},
		{http.MethodDelete, "/v1/wal/" + servedSegment, ""},
		{http.MethodGet, "/v1/anything/else", ""},
	}
	for _, e := range adminEndpoints {
		reqs = append(reqs, request{e.method, e.path, e.body})
	}
	for _, r := range reqs {
		for _, tok := range []string{"fetch-token", "admin-token", ""} {
			code, body := do(t, r.method, url+r.path, tok, r.body)
			if code != http.StatusForbidden || !strings.Contains(body, "read-only kcbackup serve") || !strings.Contains(body, r.method+" "+r.path) {
				t.Errorf("%s %s with token %q: %d %s; want 403 naming the request and the read-only process", r.method, r.path, tok, code, body)
			}
		}
	}
	if wal.calls != 0 {
		t.Fatalf("refused requests reached the WAL source %d times", wal.calls)
	}
}

// TestReadOnlyHealthAndReadiness: /healthz and /metrics answer without a token, /readyz
// reports the readiness function.
func TestReadOnlyHealthAndReadiness(t *testing.T) {
	notReady := errors.New("the archive is not opened yet")
	url, _ := newReadOnlyServer(t, func() error { return notReady })
	if code, body := do(t, http.MethodGet, url+"/readyz", "", ""); code != http.StatusServiceUnavailable || !strings.Contains(body, "not opened") {
		t.Errorf("/readyz before the archive is read: %d %s; want 503 saying why", code, body)
	}
	notReady = nil
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		if code, body := do(t, http.MethodGet, url+p, "", ""); code != http.StatusOK {
			t.Errorf("GET %s: %d %s; want 200", p, code, body)
		}
	}
}

// TestReadOnlyConfigIsValidatedForItsOneJob: no admin token, a fetch token and a WAL source.
func TestReadOnlyConfigIsValidatedForItsOneJob(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"admin token", Config{ReadOnly: readOnlyNote, Token: "a", FetchToken: "f", WAL: &fakeWAL{}}, "no admin token"},
		{"no fetch token", Config{ReadOnly: readOnlyNote, WAL: &fakeWAL{}}, "fetch-only token"},
		{"no WAL", Config{ReadOnly: readOnlyNote, FetchToken: "f"}, "WAL source"},
	} {
		if err := c.cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Validate = %v; want an error saying %q", c.name, err, c.want)
		}
	}
}
