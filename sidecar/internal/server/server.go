// Package server is the sidecar's HTTP API: /metrics, /healthz and /readyz without
// authentication (they carry no secrets), and /v1/* (status, backups, prune, WAL for
// restore_command, the clean-up of a restored Keycloak database) behind bearer tokens.
// Two tokens, so that each container holds only what its job needs: the admin token (the
// operator's) opens every /v1 endpoint; the fetch-only token (PostgreSQL's, for
// restore_command) opens only GET /v1/wal/{name}, so a compromised database can read WAL
// but cannot prune, back up or clean anything. In read-only mode (Config.ReadOnly, for
// kcbackup serve) only the WAL endpoint exists and every other /v1 path is refused. The wire
// types are those of package apiclient.
package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/walarchive"
)

// Backups is what the API needs of the backup machinery.
type Backups interface {
	// Start begins a base backup; it returns an error wrapping apiclient.ErrBackupRunning
	// (with the running job) when one is already running.
	Start(ctx context.Context) (apiclient.BackupJob, error)
	// Job returns a job by ID.
	Job(id string) (apiclient.BackupJob, bool)
	// Catalog lists the archive's backups and recovery window.
	Catalog(ctx context.Context) (apiclient.Catalog, error)
	// Prune applies retention.
	Prune(ctx context.Context, req apiclient.PruneRequest) (apiclient.PruneResult, error)
}

// WALSource serves WAL files to restore_command (GET /v1/wal/{name}).
type WALSource interface {
	// Fetch returns the verified file; an error wrapping walarchive.ErrWALNotInArchive
	// means it truly is not in the archive.
	Fetch(ctx context.Context, name string) ([]byte, error)
}

// RunningJobError is returned by Backups.Start when a backup is already running.
type RunningJobError struct{ Job apiclient.BackupJob }

func (e *RunningJobError) Error() string {
	return fmt.Sprintf("backup %s is already running; one backup at a time per cluster", e.Job.ID)
}

// Config configures the server.
type Config struct {
	// Addr is the listen address, e.g. ":8008".
	Addr string
	// Token is the admin token: it opens every /v1 endpoint. Empty disables every /v1
	// endpoint but GET /v1/wal (403), so the API is never open by accident.
	Token string
	// FetchToken is the fetch-only token PostgreSQL's restore_command presents: it opens
	// GET /v1/wal/{name} and nothing else (403 elsewhere). Empty: only the admin token
	// fetches WAL. It must differ from Token (Validate).
	FetchToken string
	Registry   *prometheus.Registry
	// Status returns the archiving status.
	Status func() apiclient.Status
	// Ready returns nil when the sidecar is streaming and the storage is up.
	Ready   func() error
	Backups Backups
	// WAL serves restore_command through the sidecar (nil disables /v1/wal).
	WAL WALSource
	// PlanRestore runs the restore planner without restoring (POST /v1/restore-plan; nil
	// disables it). An error wrapping walarchive.ErrRestoreRefused is answered 422, any
	// other (the archive could not be read) 503.
	PlanRestore func(ctx context.Context, req walarchive.RestoreRequest) (walarchive.RestorePlan, error)
	// KeycloakCleanup cleans a restored Keycloak database (POST /v1/keycloak/cleanup; nil
	// disables it). An error wrapping ErrSchemaMismatch is answered 422.
	KeycloakCleanup func(ctx context.Context, req apiclient.KeycloakCleanupRequest) (apiclient.KeycloakCleanupResult, error)
	// Standby, when set, returns an error while this pod's PostgreSQL is not the primary
	// (a streaming standby, or not known yet): the endpoints that write into the archive or
	// the database (POST /v1/backups, /v1/prune, /v1/keycloak/cleanup) then answer 421 with
	// it, so a caller that picked the wrong pod is told which one to ask.
	Standby func() error
	// ReadOnly, when set, makes this the API of a process that only reads the archive
	// (kcbackup serve, beside a restored copy recovering through it): /metrics, /healthz,
	// /readyz and GET /v1/wal/{name} with the fetch-only token, nothing else; every other
	// /v1 path answers 403 with this text, which says why. It needs FetchToken and WAL, and
	// no admin token (Validate).
	ReadOnly string
	Logger   *slog.Logger
}

// Validate refuses a configuration that would blur the two tokens: a fetch-only token
// equal to the admin token would give PostgreSQL's container the admin's rights.
func (c Config) Validate() error {
	if c.FetchToken != "" && tokensEqual(c.FetchToken, c.Token) {
		return errors.New("the fetch-only token (KCBACKUP_FETCH_TOKEN_FILE or KCBACKUP_FETCH_TOKEN) equals the admin token " +
			"(KCBACKUP_TOKEN_FILE or KCBACKUP_TOKEN): expected two different tokens, since the fetch-only one is given to " +
			"PostgreSQL's container and must not open backups, prune or the Keycloak clean-up")
	}
	if c.ReadOnly != "" {
		switch {
		case c.Token != "":
			return errors.New("a read-only API takes no admin token: it serves WAL to restore_command with the fetch-only token and nothing else")
		case c.FetchToken == "":
			return errors.New("a read-only API needs the fetch-only token: without it no request could be served")
		case c.WAL == nil:
			return errors.New("a read-only API needs a WAL source: serving WAL is all it does")
		}
	}
	return nil
}

// Server serves the API.
type Server struct {
	cfg Config
	srv *http.Server
}

// New builds a server; call cfg.Validate first.
func New(cfg Config) *Server {
	s := &Server{cfg: cfg}
	s.srv = &http.Server{
		Addr:              cfg.Addr,
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	return s
}

// Handler returns the HTTP routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.cfg.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /v1/wal/{name}", s.auth(walFetch, s.wal))
	if s.cfg.ReadOnly != "" {
		// Every other /v1 request, whatever its method and token, is told why it cannot be served.
		mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
			writeError(w, http.StatusForbidden, fmt.Sprintf("%s %s: %s", r.Method, r.URL.Path, s.cfg.ReadOnly), "")
		})
		return mux
	}
	mux.Handle("GET /v1/status", s.auth(adminOnly, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.cfg.Status())
	}))
	mux.Handle("POST /v1/backups", s.auth(adminOnly, s.primaryOnly(s.startBackup)))
	mux.Handle("GET /v1/backups", s.auth(adminOnly, func(w http.ResponseWriter, r *http.Request) {
		cat, err := s.cfg.Backups.Catalog(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err.Error(), "")
			return
		}
		writeJSON(w, http.StatusOK, cat)
	}))
	mux.Handle("GET /v1/backups/{id}", s.auth(adminOnly, func(w http.ResponseWriter, r *http.Request) {
		job, ok := s.cfg.Backups.Job(r.PathValue("id"))
		if !ok {
			writeError(w, http.StatusNotFound, fmt.Sprintf("no backup job %q on this sidecar", r.PathValue("id")), "")
			return
		}
		writeJSON(w, http.StatusOK, job)
	}))
	mux.Handle("POST /v1/prune", s.auth(adminOnly, s.primaryOnly(s.prune)))
	// A dry run reads the archive only: a standby's sidecar answers it too.
	mux.Handle("POST /v1/restore-plan", s.auth(adminOnly, s.planRestore))
	mux.Handle("POST /v1/keycloak/cleanup", s.auth(adminOnly, s.primaryOnly(s.keycloakCleanup)))
	return mux
}

// access is who may call an endpoint.
type access int

const (
	// adminOnly: the admin token only.
	adminOnly access = iota
	// walFetch: the admin token or the fetch-only token.
	walFetch
)

// tokensEqual compares two tokens in constant time: both are hashed first, so neither the
// content nor the length of the configured token leaks through timing.
func tokensEqual(got, want string) bool {
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

// auth admits a request whose bearer token may call an endpoint of access a: 401 without
// a known token, 403 for the fetch-only token outside GET /v1/wal, and 403 when the sidecar
// has no token that could open the endpoint.
func (s *Server) auth(a access, next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		// Both comparisons always run, so timing does not tell which token matched.
		admin := tokensEqual(got, s.cfg.Token)
		fetch := tokensEqual(got, s.cfg.FetchToken)
		isAdmin := ok && s.cfg.Token != "" && admin
		isFetch := ok && s.cfg.FetchToken != "" && fetch
		switch {
		case isAdmin, isFetch && a == walFetch:
			next(w, r)
		case isFetch:
			writeError(w, http.StatusForbidden, fmt.Sprintf("this bearer token is the fetch-only token: it may only GET /v1/wal/{name} "+
				"(restore_command); %s %s needs the admin token the operator holds", r.Method, r.URL.Path), "")
		case s.cfg.Token == "" && (a == adminOnly || s.cfg.FetchToken == ""):
			writeError(w, http.StatusForbidden, "the API is disabled: the sidecar has no admin token (set KCBACKUP_TOKEN_FILE or KCBACKUP_TOKEN)", "")
		default:
			w.Header().Set("WWW-Authenticate", `Bearer realm="kcbackup"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong bearer token: expected the header 'Authorization: Bearer <token>'", "")
		}
	})
}

// primaryOnly answers 421 (Misdirected Request, apiclient.ErrStandby) while Config.Standby
// reports that this pod's PostgreSQL is not the primary.
func (s *Server) primaryOnly(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.Standby != nil {
			if err := s.cfg.Standby(); err != nil {
				writeError(w, http.StatusMisdirectedRequest, err.Error(), "")
				return
			}
		}
		next(w, r)
	}
}

func (s *Server) startBackup(w http.ResponseWriter, r *http.Request) {
	job, err := s.cfg.Backups.Start(context.WithoutCancel(r.Context()))
	var running *RunningJobError
	switch {
	case errors.As(err, &running):
		writeError(w, http.StatusConflict, running.Error(), running.Job.ID)
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, err.Error(), "")
	default:
		writeJSON(w, http.StatusAccepted, job)
	}
}

// wal serves one WAL file: 200 with its verified bytes, 404 only when the archive truly
// lacks it, 400 for a malformed name, 500 for a corrupt object, 502 for a storage error.
func (s *Server) wal(w http.ResponseWriter, r *http.Request) {
	if s.cfg.WAL == nil {
		writeError(w, http.StatusNotFound, "this sidecar does not serve WAL", "")
		return
	}
	name := r.PathValue("name")
	data, err := s.cfg.WAL.Fetch(r.Context(), name)
	switch {
	case err == nil:
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		_, _ = w.Write(data)
	case errors.Is(err, walarchive.ErrWALNotInArchive):
		writeError(w, http.StatusNotFound, err.Error(), "")
	case errors.Is(err, walarchive.ErrInvalidName):
		writeError(w, http.StatusBadRequest, err.Error(), "")
	case errors.Is(err, walarchive.ErrCorrupt) || errors.Is(err, walarchive.ErrWrongKey):
		writeError(w, http.StatusInternalServerError, err.Error(), "")
	default:
		writeError(w, http.StatusBadGateway, "storage error: "+err.Error(), "")
	}
}

func (s *Server) prune(w http.ResponseWriter, r *http.Request) {
	var req apiclient.PruneRequest
	if !decodeBody(w, r, &req, "prune", `{"keepBackups": N, "keepWithin": "168h"}`) {
		return
	}
	if req.KeepBackups < 0 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid keepBackups %d: expected 0 or more", req.KeepBackups), "")
		return
	}
	if req.KeepWithin != "" {
		if d, err := time.ParseDuration(req.KeepWithin); err != nil || d <= 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid keepWithin %q: expected a positive Go duration such as 168h", req.KeepWithin), "")
			return
		}
	}
	res, err := s.cfg.Backups.Prune(r.Context(), req)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error(), "")
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// ErrSchemaMismatch is what a KeycloakCleanup error wraps when the database lacks the
// tables the clean-up needs (answered 422, nothing changed).
var ErrSchemaMismatch = apiclient.ErrSchemaMismatch

// planRestore runs the restore planner without restoring: 200 with the plan, 400 for a
// bad request, 422 when the planner refuses the target, 503 when the archive cannot be read.
func (s *Server) planRestore(w http.ResponseWriter, r *http.Request) {
	if s.cfg.PlanRestore == nil {
		writeError(w, http.StatusNotFound, "this sidecar does not plan restores", "")
		return
	}
	var req apiclient.RestorePlanRequest
	if !decodeBody(w, r, &req, "restore plan", `{"target": "latest", an RFC 3339 time with a zone or xid:<N>[@<LSN>], "timeline": 0 or a timeline, "backupID": "" or a backup}`) {
		return
	}
	target, err := walarchive.ParseTarget(req.Target)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid target: "+err.Error(), "")
		return
	}
	plan, err := s.cfg.PlanRestore(r.Context(), walarchive.RestoreRequest{Target: target, BackupID: req.BackupID, Timeline: req.Timeline})
	switch {
	case errors.Is(err, walarchive.ErrRestoreRefused):
		writeError(w, http.StatusUnprocessableEntity, err.Error(), "")
		return
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, "cannot plan a restore now: "+err.Error(), "")
		return
	}
	answer := apiclient.RestorePlan{
		BackupID: plan.Backup.ID, BackupStopTime: plan.Backup.StopTime, Timeline: plan.Timeline, Stop: plan.Stop.String(),
		LastXact: plan.LastXact, Window: apiclient.RecoveryWindow{
			Timeline: plan.Window.Timeline, Earliest: plan.Window.Earliest, Latest: plan.Window.Latest, Hole: plan.Window.Hole,
		},
	}
	if plan.Target.IsXid() {
		answer.CommitLSN, answer.CommitTime = plan.LastXactLSN.String(), plan.TargetTime
	}
	writeJSON(w, http.StatusOK, answer)
}

// keycloakCleanup runs the post-restore clean-up of a Keycloak database: 200 with the rows
// deleted, 400 for a bad request, 422 when the database lacks the session tables, 502 when
// the database cannot be reached or the SQL fails.
func (s *Server) keycloakCleanup(w http.ResponseWriter, r *http.Request) {
	if s.cfg.KeycloakCleanup == nil {
		writeError(w, http.StatusNotFound, "this sidecar does not clean Keycloak databases", "")
		return
	}
	var req apiclient.KeycloakCleanupRequest
	if !decodeBody(w, r, &req, "Keycloak clean-up", `{"database": "keycloak", "sessions": "keep|online|all"}`) {
		return
	}
	if req.Database == "" || len(req.Database) > 63 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid database %q: expected a database name of 1 to 63 bytes", req.Database), "")
		return
	}
	switch req.Sessions {
	case apiclient.SessionsKeep, apiclient.SessionsOnline, apiclient.SessionsAll:
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid sessions %q: expected keep, online or all", req.Sessions), "")
		return
	}
	res, err := s.cfg.KeycloakCleanup(r.Context(), req)
	switch {
	case errors.Is(err, ErrSchemaMismatch):
		writeError(w, http.StatusUnprocessableEntity, err.Error(), "")
	case err != nil:
		writeError(w, http.StatusBadGateway, err.Error(), "")
	default:
		if s.cfg.Logger != nil {
			s.cfg.Logger.Info("cleaned the restored Keycloak database", "database", res.Database, "sessions", res.Sessions,
				"jgroups_ping_rows", res.JGroupsPingRows, "user_session_rows", res.UserSessionRows, "client_session_rows", res.ClientSessionRows,
				"auth_session_rows", res.AuthSessionRows, "keycloak_version", res.KeycloakVersion)
		}
		writeJSON(w, http.StatusOK, res)
	}
}

// Run serves until ctx ends, then shuts down within 5 seconds.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on --listen %s: %w", s.cfg.Addr, err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return s.srv.Shutdown(sctx)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// decodeBody decodes a JSON request body of at most 64 KiB into v, refusing unknown
// fields; on error it answers 400 naming the request (what) and the body expected.
func decodeBody(w http.ResponseWriter, r *http.Request, v any, what, expected string) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "invalid "+what+" request body: "+err.Error()+"; expected "+expected, "")
		return false
	}
	return true
}

func writeError(w http.ResponseWriter, code int, msg, id string) {
	writeJSON(w, code, apiclient.ErrorBody{Error: msg, ID: id})
}
