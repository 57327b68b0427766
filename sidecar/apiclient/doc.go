// Package apiclient owns the contract of the sidecar's HTTP API: the JSON types both sides
// exchange and a client the operator uses to call it.
//
// The sidecar listens on :8008 by default. Every /v1/ endpoint requires the header
// "Authorization: Bearer <token>" and answers 401 without a known token. The admin token
// (the operator's) opens every endpoint below. The fetch-only token (PostgreSQL's
// restore_command's) opens only GET /v1/wal/{name} and gets 403 everywhere else. Bodies are
// JSON; errors are {"error": "message"} with a 4xx or 5xx status.
//
//	GET  /v1/wal/{name}    → the verified WAL file; 404 only when the archive lacks it
//	                       (admin or fetch-only token)
//
//	GET  /v1/status        → Status
//	POST /v1/backups       → 202 BackupJob; 409 ConflictError when a backup is already running
//	GET  /v1/backups/{id}  → BackupJob (with Backup once completed); 404 when unknown
//	GET  /v1/backups       → Catalog
//	POST /v1/prune         PruneRequest → PruneResult
//	POST /v1/keycloak/cleanup  KeycloakCleanupRequest → KeycloakCleanupResult; 422 when the
//	                       database lacks the session tables (nothing changed)
//
// On a sidecar whose PostgreSQL is a streaming standby, POST /v1/backups, POST /v1/prune and
// POST /v1/keycloak/cleanup answer 421 (ErrStandby): only the primary's sidecar writes into
// the archive. GET /v1/status says Role "standby"; GET /v1/wal and GET /v1/backups still work.
//
// ExitRestoreUntouched is part of the same contract: the exit status of the restore Job the
// operator runs when the data directory was not touched.
package apiclient
