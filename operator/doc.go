// Command kcbackup-operator turns KeycloakBackup resources into work for the kcbackup
// sidecar: it injects the sidecar into the PostgreSQL workload, takes base backups on
// demand or on schedule through the sidecar's API, and restores the database in place.
package main
