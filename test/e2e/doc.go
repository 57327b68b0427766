// Package e2e holds end-to-end tests that run the real kcbackup binary against real
// PostgreSQL 15 clusters and a real MinIO, started by the tests themselves (see
// test/harness). They check the promises of docs/reliability.md.
package e2e
