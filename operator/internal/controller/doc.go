// Package controller reconciles KeycloakBackup resources: it resolves the PostgreSQL
// workload, injects the kcbackup sidecar into it, and drives the sidecar's HTTP API to take
// base backups, apply retention, and restore in place. It never reads or writes WAL itself.
package controller
