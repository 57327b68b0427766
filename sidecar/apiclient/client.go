package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ErrBackupRunning is wrapped by StartBackup's error when the sidecar answers 409: a backup
// is already running. Use errors.As with *RunningError to learn its ID.
var ErrBackupRunning = errors.New("a backup is already running")

// ErrNotFound is wrapped by the error of a call answered with 404.
var ErrNotFound = errors.New("not found")

// ErrUnauthorized is wrapped by the error of a call answered with 401: the token is wrong.
var ErrUnauthorized = errors.New("unauthorized")

// ErrSchemaMismatch is wrapped by the error of KeycloakCleanup answered with 422: the
// database lacks the tables or columns the requested clean-up needs.
var ErrSchemaMismatch = errors.New("the database does not have the Keycloak schema expected")

// ErrStandby is wrapped by the error of a call answered with 421 (Misdirected Request): the
// sidecar's PostgreSQL is a streaming standby, which neither archives nor takes backups;
// send the call to the primary's sidecar.
var ErrStandby = errors.New("this sidecar's PostgreSQL is a standby")

// ErrPlanRefused is wrapped by the error of PlanRestore when the sidecar's planner refuses
// the target (422): asking again gives the same answer until the archive changes. Any
// other error (the archive could not be read, the sidecar did not answer) may pass.
var ErrPlanRefused = errors.New("the restore planner refuses this target")

// PlanRefusedError is PlanRestore's error for a refusal; Message is the planner's, which
// names why and what to pass instead.
type PlanRefusedError struct{ Message string }

func (e *PlanRefusedError) Error() string { return e.Message }

// Unwrap makes errors.Is(err, ErrPlanRefused) true.
func (e *PlanRefusedError) Unwrap() error { return ErrPlanRefused }

// RunningError is StartBackup's error when a backup is already running.
type RunningError struct {
	// ID is the running backup's ID, as the sidecar reported it.
	ID string
}

func (e *RunningError) Error() string { return fmt.Sprintf("backup %s is already running", e.ID) }

// Unwrap makes errors.Is(err, ErrBackupRunning) true.
func (e *RunningError) Unwrap() error { return ErrBackupRunning }

// StatusError is the error of a call the sidecar answered with an unexpected status.
// It names the method, the URL and the status; it never holds the token.
type StatusError struct {
	Method  string
	URL     string
	Code    int
	Message string
}

func (e *StatusError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Code)
	}
	return fmt.Sprintf("%s %s: status %d: %s", e.Method, e.URL, e.Code, msg)
}

// Unwrap maps 404 to ErrNotFound, 401 to ErrUnauthorized, 421 to ErrStandby and 422 to
// ErrSchemaMismatch.
func (e *StatusError) Unwrap() error {
	switch e.Code {
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusUnauthorized:
		return ErrUnauthorized
	case http.StatusUnprocessableEntity:
		return ErrSchemaMismatch
	case http.StatusMisdirectedRequest:
		return ErrStandby
	}
	return nil
}

// Client calls one sidecar's API. It is safe for concurrent use.
type Client struct {
	base  *url.URL
	token string
	http  *http.Client
}

// DefaultTimeout bounds each call when New is given a nil *http.Client.
const DefaultTimeout = 10 * time.Second

// New returns a client for the sidecar at baseURL ("http://10.0.0.7:8008") authenticating
// with token. A nil httpClient means a client with DefaultTimeout.
func New(baseURL, token string, httpClient *http.Client) *Client {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil {
		// Keep the bad URL; every call reports it.
		u = &url.URL{Opaque: baseURL}
	}
	if httpClient == nil {
		httpClient = &http.Client{Timeout: DefaultTimeout}
	}
	return &Client{base: u, token: token, http: httpClient}
}

// Status returns where PostgreSQL and the archive are (GET /v1/status).
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, http.StatusOK, &s)
	return s, err
}

// StartBackup starts a base backup (POST /v1/backups). When one is already running the
// error wraps ErrBackupRunning and is a *RunningError holding the running backup's ID.
func (c *Client) StartBackup(ctx context.Context) (BackupJob, error) {
	var j BackupJob
	err := c.do(ctx, http.MethodPost, "/v1/backups", nil, http.StatusAccepted, &j)
	return j, err
}

// Backup returns the job with the given ID (GET /v1/backups/{id}); the error wraps
// ErrNotFound when the sidecar does not know it.
func (c *Client) Backup(ctx context.Context, id string) (BackupJob, error) {
	var j BackupJob
	err := c.do(ctx, http.MethodGet, "/v1/backups/"+url.PathEscape(id), nil, http.StatusOK, &j)
	return j, err
}

// Catalog returns the backups, recovery window and timelines in the archive (GET /v1/backups).
func (c *Client) Catalog(ctx context.Context) (Catalog, error) {
	var cat Catalog
	err := c.do(ctx, http.MethodGet, "/v1/backups", nil, http.StatusOK, &cat)
	return cat, err
}

// Prune applies a retention policy to the archive (POST /v1/prune).
func (c *Client) Prune(ctx context.Context, req PruneRequest) (PruneResult, error) {
	var r PruneResult
	err := c.do(ctx, http.MethodPost, "/v1/prune", req, http.StatusOK, &r)
	return r, err
}

// PlanRestore asks the sidecar's planner whether a restore to req's target can be made
// and how (POST /v1/restore-plan); nothing is restored. A refusal is a *PlanRefusedError
// (errors.Is ErrPlanRefused).
func (c *Client) PlanRestore(ctx context.Context, req RestorePlanRequest) (RestorePlan, error) {
	var p RestorePlan
	err := c.do(ctx, http.MethodPost, "/v1/restore-plan", req, http.StatusOK, &p)
	var se *StatusError
	if errors.As(err, &se) && se.Code == http.StatusUnprocessableEntity {
		return p, &PlanRefusedError{Message: se.Message}
	}
	return p, err
}

// KeycloakCleanup removes stale cluster-discovery rows and the sessions req names from a
// restored Keycloak database (POST /v1/keycloak/cleanup). A 422 answer (the database lacks
// the session tables) is a *StatusError wrapping ErrSchemaMismatch.
func (c *Client) KeycloakCleanup(ctx context.Context, req KeycloakCleanupRequest) (KeycloakCleanupResult, error) {
	var r KeycloakCleanupResult
	err := c.do(ctx, http.MethodPost, "/v1/keycloak/cleanup", req, http.StatusOK, &r)
	return r, err
}

// do sends one request and decodes the answer into out when the status is want.
func (c *Client) do(ctx context.Context, method, path string, in any, want int, out any) error {
	u := c.base.String() + path
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encode request: %w", method, u, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, u, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// *url.Error names the URL; the token travels in a header, never in it.
		return fmt.Errorf("%s %s: %w", method, u, errors.Unwrap(err))
	}
	defer resp.Body.Close()
	// 1 MiB is far more than any answer of this API; a bigger body is a wrong peer.
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, u, err)
	}
	if resp.StatusCode != want {
		var eb ErrorBody
		_ = json.Unmarshal(raw, &eb)
		if method == http.MethodPost && path == "/v1/backups" && resp.StatusCode == http.StatusConflict {
			return fmt.Errorf("%s %s: %w", method, u, &RunningError{ID: eb.ID})
		}
		return &StatusError{Method: method, URL: u, Code: resp.StatusCode, Message: eb.Error}
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, u, err)
	}
	return nil
}
