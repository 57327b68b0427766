// Package apiclient owns the contract of the sidecar's HTTP API: the JSON types both sides
// exchange and a client the operator uses to call it.
//
// The sidecar listens on :8008 by default. Every /v1/ endpoint requires the header
// "Authorization: Bearer <token>" and answers 401 without it. Bodies are JSON; errors are
// {"error": "message"} with a 4xx or 5xx status.
//
//	GET  /v1/status        → Status
//	POST /v1/backups       → 202 BackupJob; 409 ConflictError when a backup is already running
//	GET  /v1/backups/{id}  → BackupJob (with Backup once completed); 404 when unknown
//	GET  /v1/backups       → Catalog
//	POST /v1/prune         PruneRequest → PruneResult
//	POST /v1/keycloak/cleanup  KeycloakCleanupRequest → KeycloakCleanupResult; 422 when the
//	                       database lacks the session tables (nothing changed)
//
// ExitRestoreUntouched is part of the same contract: the exit status of the restore Job the
// operator runs when the data directory was not touched.
package apiclient
