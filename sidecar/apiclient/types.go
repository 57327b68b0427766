package apiclient

import "time"

// DefaultPort is the port the sidecar's HTTP API (and its /metrics) listens on by default.
const DefaultPort = 8008

// Status is the answer to GET /v1/status: where PostgreSQL is and how far the archive follows.
type Status struct {
	// SystemIdentifier is PostgreSQL's database system identifier, as a decimal string.
	SystemIdentifier string `json:"systemIdentifier"`
	// Timeline is the timeline PostgreSQL currently writes on.
	Timeline uint32 `json:"timeline"`
	// ServerFlushLSN is PostgreSQL's current WAL flush position, in "X/Y" form.
	ServerFlushLSN string `json:"serverFlushLSN"`
	// ArchivedLSN is the position up to which WAL is durable in the archive, in "X/Y" form;
	// empty when nothing has been archived yet. After a WAL hole (the server lost WAL before
	// it was archived, reported as a gap) it counts from where streaming began after the
	// hole: the WAL in the hole is not in the archive.
	ArchivedLSN string `json:"archivedLSN"`
	// ReceivedLSN is the end of the WAL the sidecar has received from PostgreSQL (in its
	// spool, not yet necessarily in the archive), in "X/Y" form.
	ReceivedLSN string `json:"receivedLSN,omitempty"`
	// ArchiveLagBytes is ServerFlushLSN minus ArchivedLSN.
	ArchiveLagBytes int64 `json:"archiveLagBytes"`
	// ArchiveLagSeconds is the age of the oldest WAL not yet durable in the archive.
	ArchiveLagSeconds float64 `json:"archiveLagSeconds"`
	// StorageUp reports whether the last storage operation succeeded.
	StorageUp bool `json:"storageUp"`
	// Streaming reports whether the sidecar currently streams WAL from PostgreSQL.
	Streaming bool `json:"streaming"`
	// LastError is why the sidecar is not streaming, when it is not (another writer holds
	// the archive, the server is unreachable, ...); empty while it streams.
	LastError string `json:"lastError,omitempty"`
	// Role is what the sidecar found its PostgreSQL to be: RolePrimary (it archives and
	// takes backups), RoleStandby (it stands by, keeping the WAL a promotion would need) or
	// RoleUnknown (the server did not answer yet). Empty from sidecars before replicas.
	Role string `json:"role,omitempty"`
}

// Server roles in Status.Role.
const (
	RolePrimary = "primary"
	RoleStandby = "standby"
	RoleUnknown = "unknown"
)

// Backup job states.
const (
	// StateRunning means the base backup is being taken.
	StateRunning = "running"
	// StateCompleted means the base backup is complete: its manifest and all the WAL it
	// needs are in the archive.
	StateCompleted = "completed"
	// StateFailed means the base backup failed; Error says why.
	StateFailed = "failed"
)

// BackupJob is one base backup started through the API (POST /v1/backups, GET /v1/backups/{id}).
type BackupJob struct {
	// ID identifies the job; it is also the backup's ID once completed.
	ID string `json:"id"`
	// State is StateRunning, StateCompleted or StateFailed.
	State string `json:"state"`
	// Error says why the job failed; empty otherwise.
	Error string `json:"error,omitempty"`
	// StartedAt is when the job started.
	StartedAt time.Time `json:"startedAt"`
	// Backup describes the stored backup; set only when State is StateCompleted.
	Backup *BackupInfo `json:"backup,omitempty"`
}

// Done reports whether the job reached a final state.
func (j BackupJob) Done() bool { return j.State == StateCompleted || j.State == StateFailed }

// BackupInfo describes a complete base backup in the archive.
type BackupInfo struct {
	// ID identifies the backup in the archive.
	ID string `json:"id"`
	// StartTime is when the backup started (pg_backup_start).
	StartTime time.Time `json:"startTime"`
	// StopTime is when the backup stopped (pg_backup_stop); the backup is consistent from here.
	StopTime time.Time `json:"stopTime"`
	// StartLSN is the backup's start position, in "X/Y" form.
	StartLSN string `json:"startLSN"`
	// StopLSN is the backup's stop position, in "X/Y" form.
	StopLSN string `json:"stopLSN"`
	// Timeline is the timeline the backup was taken on.
	Timeline uint32 `json:"timeline"`
	// SizeBytes is the size stored in the archive (after compression).
	SizeBytes int64 `json:"sizeBytes"`
	// DataBytes is the size of the data directory that was backed up.
	DataBytes int64 `json:"dataBytes"`
}

// RecoveryWindow is a range of times a restore can reach on one timeline's path: from the
// stop time of the oldest backup that restores into it to where its WAL stops being
// continuous.
type RecoveryWindow struct {
	// Timeline is the timeline whose path the range lies on.
	Timeline uint32 `json:"timeline,omitempty"`
	// Hole is set when the range ends at missing WAL that later WAL follows.
	Hole bool `json:"hole,omitempty"`
	// Earliest is the earliest time a restore can reach.
	Earliest time.Time `json:"earliest"`
	// Latest is the latest time a restore can reach.
	Latest time.Time `json:"latest"`
}

// Contains reports whether t lies in the window, bounds included.
func (w RecoveryWindow) Contains(t time.Time) bool {
	return !t.Before(w.Earliest) && !t.After(w.Latest)
}

// Catalog is the answer to GET /v1/backups: what the archive holds.
type Catalog struct {
	// Backups lists the complete base backups, oldest first.
	Backups []BackupInfo `json:"backups"`
	// Window is the live timeline's newest restorable range; nil when no backup is
	// complete yet.
	Window *RecoveryWindow `json:"window,omitempty"`
	// Windows are the restorable ranges of every timeline's path, oldest first: a hole in
	// the WAL shows as two ranges.
	Windows []RecoveryWindow `json:"windows"`
	// LiveTimeline is the newest timeline in the archive.
	LiveTimeline uint32 `json:"liveTimeline,omitempty"`
	// Timelines lists the timelines with WAL in the archive, ascending.
	Timelines []uint32 `json:"timelines"`
}

// PruneRequest is the body of POST /v1/prune. A backup is kept when it is among the newest
// KeepBackups or newer than KeepWithin; WAL is kept while a kept backup needs it. A zero
// field sets no limit of its own, so a request with both fields zero removes nothing.
type PruneRequest struct {
	// KeepBackups is how many of the newest backups to keep.
	KeepBackups int `json:"keepBackups,omitempty"`
	// KeepWithin is a Go duration ("168h"): backups newer than this are kept.
	KeepWithin string `json:"keepWithin,omitempty"`
}

// PruneResult is the answer to POST /v1/prune.
type PruneResult struct {
	// RemovedBackups lists the IDs of the backups removed.
	RemovedBackups []string `json:"removedBackups"`
	// RemovedWALObjects counts the WAL objects removed.
	RemovedWALObjects int `json:"removedWALObjects"`
}

// ErrorBody is the body of every error answer.
type ErrorBody struct {
	// Error says what went wrong.
	Error string `json:"error"`
	// ID is the running backup's ID in a 409 answer to POST /v1/backups.
	ID string `json:"id,omitempty"`
}

// The session modes of KeycloakCleanupRequest.
const (
	// SessionsKeep removes no session.
	SessionsKeep = "keep"
	// SessionsOnline removes the persisted online sessions (offline_flag = '0').
	SessionsOnline = "online"
	// SessionsAll empties offline_user_session and offline_client_session.
	SessionsAll = "all"
)

// KeycloakCleanupRequest is the body of POST /v1/keycloak/cleanup: what to remove from a
// restored Keycloak database before Keycloak starts on it. jgroups_ping, Keycloak's
// cluster discovery table, is always emptied when it exists.
type KeycloakCleanupRequest struct {
	// Database is the Keycloak database (required).
	Database string `json:"database"`
	// Sessions is keep, online or all (required).
	Sessions string `json:"sessions"`
}

// KeycloakCleanupResult is the answer to POST /v1/keycloak/cleanup: the rows deleted, in one
// transaction.
type KeycloakCleanupResult struct {
	// Database is the database cleaned.
	Database string `json:"database"`
	// Sessions is the mode applied.
	Sessions string `json:"sessions"`
	// JGroupsPingRows is how many rows were deleted from jgroups_ping.
	JGroupsPingRows int64 `json:"jgroupsPingRows"`
	// UserSessionRows is how many rows were deleted from offline_user_session.
	UserSessionRows int64 `json:"userSessionRows"`
	// ClientSessionRows is how many rows were deleted from offline_client_session.
	ClientSessionRows int64 `json:"clientSessionRows"`
	// AuthSessionRows is how many authentication sessions (logins in progress, persisted
	// by Keycloak 26.7 and later in root_auth_session and auth_session) were deleted.
	AuthSessionRows int64 `json:"authSessionRows,omitempty"`
	// KeycloakVersion is the schema version read from the database's migration_model
	// (empty when it has none).
	KeycloakVersion string `json:"keycloakVersion,omitempty"`
	// Skipped says what was not done and why (a table that does not exist).
	Skipped []string `json:"skipped,omitempty"`
}

// ExitRestoreUntouched is the exit status of `kcbackup restore` when it refused or failed
// before touching the data directory: the server it would have replaced can start again.
// Any other non-zero status may come after the directory was replaced. The operator reads
// it from its restore Job.
const ExitRestoreUntouched = 4

// RestorePlanRequest is the body of POST /v1/restore-plan: a dry run of the planner the
// restore Job runs (kcbackup restore), so that a target is refused before anything stops.
type RestorePlanRequest struct {
	// Target is "latest", an RFC 3339 time with a zone, or xid:<N>[@<LSN>] (the commit of
	// transaction N, searched from LSN on), as kcbackup restore --to.
	Target string `json:"target"`
	// Timeline is the timeline to recover along; 0 means the newest whose ranges hold the
	// target, as kcbackup restore --timeline latest.
	Timeline uint32 `json:"timeline,omitempty"`
	// BackupID forces a backup, as kcbackup restore --backup; empty chooses.
	BackupID string `json:"backupID,omitempty"`
}

// RestorePlan is the answer to POST /v1/restore-plan: what a restore to the target would
// do, as planned now. The archive only grows while production runs, so a restore started
// later reaches the same target.
type RestorePlan struct {
	// BackupID is the base backup the restore starts from.
	BackupID string `json:"backupID"`
	// BackupStopTime is when that backup became consistent.
	BackupStopTime time.Time `json:"backupStopTime"`
	// Timeline is the timeline recovery follows.
	Timeline uint32 `json:"timeline"`
	// Stop is how recovery ends: "end of WAL", "time", "LSN" or "end of backup".
	Stop string `json:"stop"`
	// LastXact is the last archived transaction on the path up to the target (zero when
	// none after the backup).
	LastXact time.Time `json:"lastXact,omitempty"`
	// Window is the recovery range that holds the target.
	Window RecoveryWindow `json:"window"`
	// CommitLSN and CommitTime are, for an xid target, where that transaction's commit
	// record starts ("X/Y" form) and when it committed: recovery stops right after it.
	// Absent for other targets.
	CommitLSN  string    `json:"commitLSN,omitempty"`
	CommitTime time.Time `json:"commitTime,omitzero"`
}
