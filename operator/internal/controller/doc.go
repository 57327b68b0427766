// Package controller reconciles KeycloakBackup resources: it resolves the PostgreSQL
// workload, injects the kcbackup sidecar into it, and drives the sidecar's HTTP API to take
// base backups, apply retention, and restore in place (one restore per workload, held by a
// lock annotation; Keycloak's database cleaned through the sidecar before Keycloak starts).
// It never reads or writes WAL, nor opens a database connection, itself.
package controller
