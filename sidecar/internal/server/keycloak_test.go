package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

// TestKeycloakCleanupEndpoint: the clean-up needs the token, refuses a malformed request
// before touching the database, answers 422 for a schema mismatch and 502 for another error,
// and the client maps them.
func TestKeycloakCleanupEndpoint(t *testing.T) {
	var calls []apiclient.KeycloakCleanupRequest
	s := New(Config{Token: "tok", Registry: prometheus.NewRegistry(), Backups: &fakeBackups{},
		Status: func() apiclient.Status { return apiclient.Status{} }, Ready: func() error { return nil },
		KeycloakCleanup: func(ctx context.Context, req apiclient.KeycloakCleanupRequest) (apiclient.KeycloakCleanupResult, error) {
			calls = append(calls, req)
			switch req.Database {
			case "notkeycloak":
				return apiclient.KeycloakCleanupResult{}, fmt.Errorf("database %q: %w: no table offline_user_session", req.Database, apiclient.ErrSchemaMismatch)
			case "down":
				return apiclient.KeycloakCleanupResult{}, errors.New("connect to database \"down\": connection refused")
			}
			return apiclient.KeycloakCleanupResult{Database: req.Database, Sessions: req.Sessions, JGroupsPingRows: 2, UserSessionRows: 3}, nil
		}})
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	url := srv.URL + "/v1/keycloak/cleanup"

	if code, _ := do(t, http.MethodPost, url, "", `{"database":"keycloak","sessions":"online"}`); code != http.StatusUnauthorized {
		t.Errorf("without token: %d, want 401", code)
	}
	for _, body := range []string{`{"database":"","sessions":"online"}`, `{"database":"keycloak","sessions":"some"}`,
		`{"database":"keycloak","sessions":"online","drop":true}`, `not json`} {
		if code, msg := do(t, http.MethodPost, url, "tok", body); code != http.StatusBadRequest || !strings.Contains(msg, "expected") {
			t.Errorf("body %s: %d %s, want 400 saying what is expected", body, code, msg)
		}
	}
	if len(calls) != 0 {
		t.Fatalf("the database was reached for a refused request: %+v", calls)
	}
	c := apiclient.New(srv.URL, "tok", nil)
	res, err := c.KeycloakCleanup(context.Background(), apiclient.KeycloakCleanupRequest{Database: "keycloak", Sessions: apiclient.SessionsOnline})
	if err != nil || res.JGroupsPingRows != 2 || res.UserSessionRows != 3 || res.Sessions != "online" {
		t.Errorf("clean-up = %+v, %v; want the rows removed", res, err)
	}
	_, err = c.KeycloakCleanup(context.Background(), apiclient.KeycloakCleanupRequest{Database: "notkeycloak", Sessions: apiclient.SessionsAll})
	if !errors.Is(err, apiclient.ErrSchemaMismatch) || !strings.Contains(err.Error(), "offline_user_session") {
		t.Errorf("schema mismatch: err = %v, want ErrSchemaMismatch naming the table", err)
	}
	_, err = c.KeycloakCleanup(context.Background(), apiclient.KeycloakCleanupRequest{Database: "down", Sessions: apiclient.SessionsAll})
	var se *apiclient.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusBadGateway || errors.Is(err, apiclient.ErrSchemaMismatch) {
		t.Errorf("database down: err = %v, want a 502 that is not a schema mismatch", err)
	}
}
