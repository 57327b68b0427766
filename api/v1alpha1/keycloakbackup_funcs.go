package v1alpha1

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Condition types.
const (
	// ConditionReady summarises the resource: True when the backup completed, the schedule
	// runs or the restore finished; the reason says what happens or went wrong.
	ConditionReady = "Ready"
	// ConditionValid is False when the spec, or a Secret it names, is unusable.
	ConditionValid = "Valid"
	// ConditionInstanceResolved is True when instanceSelector matched exactly one workload.
	ConditionInstanceResolved = "InstanceResolved"
	// ConditionSidecarReady is True when the sidecar is injected and answers its API.
	ConditionSidecarReady = "SidecarReady"
	// ConditionConflict is True when an older resource selects the same workload with a
	// different storage or connection: this one then does nothing.
	ConditionConflict = "Conflict"
	// ConditionRestorable says, from the first reconcile, whether an in-place restore of the
	// selected workload can run: True (reason Restorable, or BitnamiImage, which a restore
	// handles), False with the reason that would refuse it (DataNotOnClaim,
	// DataDirAtVolumeRoot, MultipleReplicas). Backups run either way.
	ConditionRestorable = "Restorable"
	// ConditionSidecarUpToDate is True when the workload's pod template carries the sidecar
	// the operator builds; False with SidecarNotDeclared (verify mode: the user's manifests
	// lack it) or SidecarUpgradeHeld (an operator upgrade's new sidecar waits until the
	// workload allows the restart it takes).
	ConditionSidecarUpToDate = "SidecarUpToDate"
)

// Condition reasons.
const (
	ReasonValid                = "Valid"
	ReasonInvalidSchedule      = "InvalidSchedule"
	ReasonInvalidRestoreTarget = "InvalidRestoreTarget"
	ReasonInvalidRetention     = "InvalidRetention"
	ReasonInvalidStorage       = "InvalidStorage"
	ReasonInvalidSpec          = "InvalidSpec"
	ReasonSecretMissing        = "SecretMissing"
	// ReasonFromNotFound: spec.from names no KeycloakBackup in the namespace (yet).
	ReasonFromNotFound = "FromNotFound"
	// ReasonInvalidFrom: spec.from names a resource that cannot be an archive's resource
	// (it has from itself, or it is a restore), or the resource repeats the settings it
	// should take from it.
	ReasonInvalidFrom = "InvalidFrom"
	// ReasonRecord: the resource records one base backup (spec.backupID); it does nothing.
	ReasonRecord = "BackupRecord"

	ReasonWorkloadFound            = "WorkloadFound"
	ReasonNoWorkloadMatched        = "NoWorkloadMatched"
	ReasonMultipleWorkloadsMatched = "MultipleWorkloadsMatched"
	ReasonDataVolumeNotFound       = "DataVolumeNotFound"

	ReasonStorageConflict = "StorageConflict"
	ReasonNoConflict      = "NoConflict"

	ReasonSidecarStarting    = "SidecarStarting"
	ReasonSidecarUnreachable = "SidecarUnreachable"
	ReasonSidecarAnswering   = "SidecarAnswering"

	ReasonWaiting             = "Waiting"
	ReasonBackupRunning       = "BackupRunning"
	ReasonBackupCompleted     = "BackupCompleted"
	ReasonBackupFailed        = "BackupFailed"
	ReasonBackupLost          = "BackupLost"
	ReasonScheduled           = "Scheduled"
	ReasonSuspended           = "Suspended"
	ReasonNoBackup            = "NoBackupInArchive"
	ReasonTargetOutsideWindow = "TargetOutsideWindow"
	ReasonRestoreInProgress   = "RestoreInProgress"
	ReasonRestoreJobFailed    = "RestoreJobFailed"
	ReasonRestored            = "Restored"
	// ReasonRestoreRefused: the restore Job refused before touching the data directory; the
	// database and the application were scaled back.
	ReasonRestoreRefused = "RestoreRefused"
	// ReasonRestoreConflict: another restore of the same workload holds its restore lock.
	ReasonRestoreConflict = "RestoreConflict"
	// ReasonRestoreTimedOut: a restore step did not finish within spec.restore.timeout.
	ReasonRestoreTimedOut = "RestoreTimedOut"
	// ReasonKeycloakSchemaMismatch: the Keycloak clean-up found no session tables to clean.
	ReasonKeycloakSchemaMismatch = "KeycloakSchemaMismatch"
	// ReasonPausedForRestore: a schedule or backup waits while a restore holds the workload.
	ReasonPausedForRestore = "PausedForRestore"
	// ReasonRestoreJobNotOwned: a Job with the restore Job's name exists and is not owned by
	// this resource (a leftover of a deleted resource of the same name, or someone else's);
	// it is never taken as this restore's result.
	ReasonRestoreJobNotOwned = "RestoreJobNotOwned"
	// ReasonRestoreJobLost: the restore Job this resource created disappeared before its
	// outcome was seen. It is not created again: it may have moved the data directory aside.
	ReasonRestoreJobLost = "RestoreJobLost"
	// ReasonWALNotArchived: the archive did not reach the server's flush position within
	// spec.restore.timeout; PostgreSQL was not stopped and the application was scaled back.
	ReasonWALNotArchived = "WALNotArchived"
	// ReasonTargetNotYetArchived: restoreTo lies just past the recovery window's end, within
	// the archive lag: the restore waits (a bounded time) for the window to reach it.
	ReasonTargetNotYetArchived = "TargetNotYetArchived"
	// ReasonRestorePlanRefused: the sidecar's planner, the one the restore Job runs, refuses
	// restoreTo (two timelines that differ at the target, a backup that cannot reach it, WAL
	// that does not show where recovery stops); nothing was stopped.
	ReasonRestorePlanRefused = "RestorePlanRefused"
	// ReasonNoApplicationToStop: the restore has no application to stop (applicationSelector
	// unset or selecting nothing) and spec.restore.allowWithoutApplication is not set;
	// nothing was touched.
	ReasonNoApplicationToStop = "NoApplicationToStop"
	// ReasonSidecarUpToDate: the pod template carries the expected sidecar.
	ReasonSidecarUpToDate = "UpToDate"
	// ReasonSidecarNotDeclared: in verify mode, the workload's manifests lack the expected
	// sidecar; the operator does not patch them, and backups and restores wait.
	ReasonSidecarNotDeclared = "SidecarNotDeclared"
	// ReasonSidecarUpgradeHeld: a sidecar upgrade (image only) waits until the workload's
	// annotation kcbackup.keycloak.org/hold-sidecar-upgrade says "false" (the default holds).
	ReasonSidecarUpgradeHeld = "SidecarUpgradeHeld"
	// ReasonImageVolumesUnavailable: the API server refused the image volume that carries
	// the kcbackup binary: the operator needs --binary-delivery=init-container here.
	ReasonImageVolumesUnavailable = "ImageVolumesUnavailable"
	// ReasonRestorable: nothing in the workload's layout stands in the way of a restore.
	ReasonRestorable = "Restorable"
	// ReasonBitnamiImage: PostgreSQL runs a Bitnami image, whose start deletes
	// recovery.signal unless POSTGRESQL_PERFORM_RESTORE=yes: a restore sets it for the
	// restored start and removes it once PostgreSQL promoted.
	ReasonBitnamiImage = "BitnamiImage"
	// ReasonDataNotOnClaim: the data directory is not on a PersistentVolumeClaim.
	ReasonDataNotOnClaim = "DataNotOnClaim"
	// ReasonDataDirAtVolumeRoot: PGDATA is the root of its volume; a restore keeps the
	// replaced data beside it, so it must be a subdirectory.
	ReasonDataDirAtVolumeRoot = "DataDirAtVolumeRoot"
	// ReasonMultipleReplicas: the PostgreSQL workload has more than one replica; an in-place
	// restore would leave the standbys on the old data, so it is refused.
	ReasonMultipleReplicas = "MultipleReplicas"
	// ReasonServerIsStandby: the one running PostgreSQL server is a standby (a replicated
	// workload scaled to one pod, which kept a standby); its sidecar archives nothing, so the
	// WAL the restore must see archived never would be. The restore is refused before
	// anything stops: promote it first (or keep the primary's pod).
	ReasonServerIsStandby = "ServerIsStandby"
	// ReasonReplicationRefused: PostgreSQL refuses the sidecar's replication connection
	// (pg_hba.conf has no replication line for it): nothing is archived.
	ReasonReplicationRefused = "ReplicationRefused"
	// ReasonApplicationNotScalable: what stops the application has a scale subresource that
	// cannot be used (its replicas field is unset); nothing was touched.
	ReasonApplicationNotScalable = "ApplicationNotScalable"
	// ReasonArchiveUnreadable: the archive's catalog cannot be read now (a storage or
	// sidecar error); the target check is retried.
	ReasonArchiveUnreadable = "ArchiveUnreadable"
)

// RestoreLatest is the restoreTo value that restores to the end of the archive.
const RestoreLatest = "latest"

// SpecError is a spec problem found by Validate, with the condition reason it maps to.
type SpecError struct {
	// Reason is the ConditionValid reason.
	Reason string
	// Field is the path of the offending field ("spec.schedule").
	Field string
	// Message says what is wrong and what was expected.
	Message string
}

func (e *SpecError) Error() string { return e.Field + ": " + e.Message }

// IsTerminal reports whether the phase ends the resource's work: a one-off backup that
// completed or failed, or a restore that finished either way.
func (kb *KeycloakBackup) IsTerminal() bool {
	switch kb.Status.Phase {
	case PhaseCompleted, PhaseRestored:
		return true
	case PhaseFailed:
		return kb.Spec.Schedule == ""
	}
	return false
}

// IsRestore reports whether the resource asks for a restore.
func (kb *KeycloakBackup) IsRestore() bool { return kb.Spec.RestoreTo != "" }

// IsScheduled reports whether the resource asks for scheduled backups.
func (kb *KeycloakBackup) IsScheduled() bool { return kb.Spec.Schedule != "" && !kb.IsRestore() }

// IsRecord reports whether the resource is the record of one base backup (spec.backupID):
// it does nothing.
func (kb *KeycloakBackup) IsRecord() bool { return kb.Spec.BackupID != "" }

// ValidateFrom checks, again for API servers without CEL, that a resource with from sets
// none of the archive's settings: it returns the first one set as a *SpecError. A resource
// without from passes.
func (s *KeycloakBackupSpec) ValidateFrom() error {
	if s.From == "" {
		if s.BackupID != "" {
			return &SpecError{ReasonInvalidFrom, "spec.backupID", "a record of a backup needs spec.from naming the archive's resource"}
		}
		return nil
	}
	for _, f := range []struct {
		field string
		set   bool
	}{
		{"instanceSelector", !equality.Semantic.DeepEqual(s.InstanceSelector, metav1.LabelSelector{})},
		{"storage", s.Storage.S3 != nil || s.Storage.Volume != nil},
		{"postgres", !isPostgresDefault(s.Postgres)},
		{"encryption", s.Encryption != nil},
		{"sidecar", s.Sidecar != nil},
		{"schedule", s.Schedule != ""},
		{"retention", s.Retention != nil},
		{"suspend", s.Suspend},
	} {
		if f.set {
			return &SpecError{ReasonInvalidFrom, "spec." + f.field, fmt.Sprintf(
				"is taken from KeycloakBackup %q (spec.from): remove it here, and change it there", s.From)}
		}
	}
	if s.BackupID != "" && s.RestoreTo != "" {
		return &SpecError{ReasonInvalidFrom, "spec.backupID", "a record of a backup excludes restoreTo"}
	}
	return nil
}

// isPostgresDefault reports whether p holds only what the API server's defaulting puts
// into an empty postgres block (user postgres, port 5432).
func isPostgresDefault(p PostgresSpec) bool {
	return (p.User == "" || p.User == "postgres") && (p.Port == 0 || p.Port == 5432) &&
		p.ContainerName == "" && p.DataDir == "" && p.PasswordSecret == nil
}

// CanBeArchiveOf reports why archive cannot be the resource spec.from names, or nil: it
// must be a resource without from of its own (one level, no chains) and not a restore.
func (kb *KeycloakBackup) CanBeArchiveOf(name string) error {
	switch {
	case kb.Spec.From != "":
		return &SpecError{ReasonInvalidFrom, "spec.from", fmt.Sprintf(
			"KeycloakBackup %q has from %q itself: name the archive's resource, %q", kb.Name, kb.Spec.From, kb.Spec.From)}
	case kb.IsRestore():
		return &SpecError{ReasonInvalidFrom, "spec.from", fmt.Sprintf(
			"KeycloakBackup %q is a restore: name the resource that holds the archive's settings", kb.Name)}
	case kb.Name == name:
		return &SpecError{ReasonInvalidFrom, "spec.from", "names this resource itself"}
	}
	return nil
}

// TakeArchiveFrom copies the archive's settings of the resource spec.from names into s:
// the spec the operator then works with. s must have passed ValidateFrom.
func (s *KeycloakBackupSpec) TakeArchiveFrom(archive *KeycloakBackupSpec) {
	s.InstanceSelector = *archive.InstanceSelector.DeepCopy()
	s.Storage = *archive.Storage.DeepCopy()
	s.Postgres = *archive.Postgres.DeepCopy()
	s.Encryption = archive.Encryption.DeepCopy()
	s.Sidecar = archive.Sidecar.DeepCopy()
}

// Validate checks what admission cannot: the cron expression, the restore time, the
// retention duration, and storage exclusivity again (for API servers without CEL). It
// returns the first problem as a *SpecError. A resource with from is validated once its
// archive's settings were taken (TakeArchiveFrom).
func (s *KeycloakBackupSpec) Validate() error {
	if s.From != "" && s.Storage.S3 == nil && s.Storage.Volume == nil {
		return &SpecError{ReasonInvalidFrom, "spec.from", fmt.Sprintf(
			"the archive's settings are those of KeycloakBackup %q: use that resource here", s.From)}
	}
	if e := s.Encryption; e != nil && e.RecipientsSecret == nil && e.IdentitySecret == nil {
		return &SpecError{ReasonInvalidSpec, "spec.encryption", "needs recipientsSecret, identitySecret or both"}
	}
	if e := s.Encryption; e != nil && e.IdentitySecret == nil && s.RestoreTo != "" {
		return &SpecError{ReasonInvalidSpec, "spec.encryption.identitySecret", "a restore of an encrypted archive needs the identity that reads it: set it on the archive's resource"}
	}
	if o := s.Sidecar; o != nil && o.LogFormat != "" && o.LogFormat != LogFormatJSON && o.LogFormat != LogFormatText {
		return &SpecError{ReasonInvalidSpec, "spec.sidecar.logFormat", fmt.Sprintf("%q is not one of json, text", o.LogFormat)}
	}
	if (s.Storage.S3 == nil) == (s.Storage.Volume == nil) {
		return &SpecError{ReasonInvalidStorage, "spec.storage", "exactly one of s3 or volume must be set"}
	}
	if s.Storage.S3 != nil && s.Storage.S3.Bucket == "" {
		return &SpecError{ReasonInvalidStorage, "spec.storage.s3.bucket", "must not be empty"}
	}
	if s.Storage.Volume != nil && s.Storage.Volume.ClaimName == "" {
		return &SpecError{ReasonInvalidStorage, "spec.storage.volume.claimName", "must not be empty"}
	}
	if s.Schedule != "" && s.RestoreTo != "" {
		return &SpecError{ReasonInvalidSpec, "spec", "schedule and restoreTo are mutually exclusive"}
	}
	if s.Schedule != "" {
		if _, err := ParseSchedule(s.Schedule); err != nil {
			return &SpecError{ReasonInvalidSchedule, "spec.schedule", err.Error()}
		}
	}
	if s.RestoreTo != "" {
		if _, _, err := ParseRestoreTarget(s.RestoreTo); err != nil {
			return &SpecError{ReasonInvalidRestoreTarget, "spec.restoreTo", err.Error()}
		}
	}
	if err := s.validateInto(); err != nil {
		return err
	}
	if o := s.Restore; o != nil {
		if s.RestoreTo == "" {
			return &SpecError{ReasonInvalidSpec, "spec.restore", "is used only with restoreTo"}
		}
		if o.Timeout != nil && o.Timeout.Duration < time.Minute {
			return &SpecError{ReasonInvalidSpec, "spec.restore.timeout", fmt.Sprintf("%s is shorter than the minimum of 1m (such as \"30m\")", o.Timeout.Duration)}
		}
		switch o.Sessions {
		case "", SessionsKeep, SessionsOnline, SessionsAll:
		default:
			return &SpecError{ReasonInvalidSpec, "spec.restore.sessions", fmt.Sprintf("%q is not one of keep, online, all", o.Sessions)}
		}
	}
	if r := s.Retention; r != nil {
		if r.KeepBackups < 0 {
			return &SpecError{ReasonInvalidRetention, "spec.retention.keepBackups", "must be at least 1"}
		}
		if r.KeepWithin != "" {
			d, err := time.ParseDuration(r.KeepWithin)
			if err != nil || d <= 0 {
				return &SpecError{ReasonInvalidRetention, "spec.retention.keepWithin",
					fmt.Sprintf("%q is not a positive Go duration such as \"168h\"", r.KeepWithin)}
			}
		}
		if r.KeepBackups == 0 && r.KeepWithin == "" {
			return &SpecError{ReasonInvalidRetention, "spec.retention", "needs keepBackups, keepWithin or both"}
		}
	}
	return nil
}

// ParseSchedule parses a standard 5-field cron expression, a descriptor such as "@daily"
// or "@every 1h", optionally prefixed by CRON_TZ=<zone>.
func ParseSchedule(expr string) (cron.Schedule, error) {
	sched, err := cron.ParseStandard(expr)
	if err != nil {
		return nil, fmt.Errorf("%q is not a cron expression (expected 5 fields such as \"0 3 * * *\" or a descriptor such as \"@daily\"): %w", expr, err)
	}
	return sched, nil
}

// ParseRestoreTarget parses restoreTo: "latest", or an RFC 3339 time with an explicit
// offset. A time without a zone is refused rather than guessed.
func ParseRestoreTarget(s string) (t time.Time, latest bool, err error) {
	if s == RestoreLatest {
		return time.Time{}, true, nil
	}
	t, err = time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("%q is neither %q nor an RFC 3339 time with an offset such as \"2026-03-01T12:00:00Z\"", s, RestoreLatest)
	}
	return t, false, nil
}

// RestoreTimeout returns spec.restore.timeout, or its default.
func (s *KeycloakBackupSpec) RestoreTimeout() time.Duration {
	if s.Restore == nil || s.Restore.Timeout == nil || s.Restore.Timeout.Duration < time.Minute {
		return DefaultRestoreTimeout
	}
	return s.Restore.Timeout.Duration
}

// RestoreSessions returns spec.restore.sessions, or its default.
func (s *KeycloakBackupSpec) RestoreSessions() Sessions {
	if s.Restore == nil || s.Restore.Sessions == "" {
		return DefaultRestoreSessions
	}
	return s.Restore.Sessions
}

// RestoreKeycloakDatabase returns spec.restore.keycloakDatabase, or its default.
func (s *KeycloakBackupSpec) RestoreKeycloakDatabase() string {
	if s.Restore == nil || s.Restore.KeycloakDatabase == "" {
		return DefaultKeycloakDatabase
	}
	return s.Restore.KeycloakDatabase
}

// KeepWithinDuration returns retention.keepWithin as a duration; zero when unset.
func (r *Retention) KeepWithinDuration() time.Duration {
	if r == nil || r.KeepWithin == "" {
		return 0
	}
	d, _ := time.ParseDuration(r.KeepWithin)
	return d
}

// URL returns the storage as the sidecar's KCBACKUP_STORAGE URL: s3://bucket/prefix, or
// file:// followed by mountPath for a volume.
func (s *Storage) URL(volumeMountPath string) (string, error) {
	switch {
	case s.S3 != nil && s.Volume == nil:
		u := url.URL{Scheme: "s3", Host: s.S3.Bucket, Path: "/" + strings.Trim(s.S3.Prefix, "/")}
		return strings.TrimSuffix(u.String(), "/"), nil
	case s.Volume != nil && s.S3 == nil:
		return (&url.URL{Scheme: "file", Path: volumeMountPath}).String(), nil
	}
	return "", errors.New("exactly one of storage.s3 or storage.volume must be set")
}

// SameArchive reports whether two specs make the sidecar archive to the same place with the
// same connection settings, so that both can share one sidecar.
func (s *KeycloakBackupSpec) SameArchive(o *KeycloakBackupSpec) bool {
	return equality.Semantic.DeepEqual(s.Storage, o.Storage) && equality.Semantic.DeepEqual(s.Postgres, o.Postgres)
}

// SetCondition sets a condition of the status, stamped with the generation it describes.
// The transition time changes only when the condition's status does.
func (kb *KeycloakBackup) SetCondition(typ string, status metav1.ConditionStatus, reason, message string) {
	meta.SetStatusCondition(&kb.Status.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: message, ObservedGeneration: kb.Generation,
	})
}

// Condition returns the condition of the given type, or nil.
func (kb *KeycloakBackup) Condition(typ string) *metav1.Condition {
	return meta.FindStatusCondition(kb.Status.Conditions, typ)
}

// SidecarPodLabel is the label the operator puts (with the value "true") on the pod
// template of every workload it gives the kcbackup sidecar; deploy/monitoring's PodMonitor
// selects on it.
const SidecarPodLabel = "kcbackup.keycloak.org/sidecar"

// RestoreAllowsNoApplication reports whether spec.restore.allowWithoutApplication is set.
func (s *KeycloakBackupSpec) RestoreAllowsNoApplication() bool {
	return s.Restore != nil && s.Restore.AllowWithoutApplication
}

// DefaultDrillTables are the Keycloak tables a drill counts unless check.tables says.
var DefaultDrillTables = []string{"realm", "client", "user_entity", "keycloak_role", "keycloak_group"}

// DefaultDrillHistory is how many drill resources a drill schedule keeps.
const DefaultDrillHistory = 3

// CheckDatabase is the database a drill checks: check.database, or keycloak.
func (c *DrillCheck) CheckDatabase() string {
	if c == nil || c.Database == "" {
		return DefaultKeycloakDatabase
	}
	return c.Database
}

// CheckTables are the tables a drill counts: check.tables, or DefaultDrillTables.
func (c *DrillCheck) CheckTables() []string {
	if c == nil || len(c.Tables) == 0 {
		return DefaultDrillTables
	}
	return c.Tables
}

// IsClone reports whether the resource restores into a new instance.
func (kb *KeycloakBackup) IsClone() bool { return kb.IsRestore() && kb.Spec.Into != nil }

// IsDrill reports whether the resource is a restore drill.
func (kb *KeycloakBackup) IsDrill() bool { return kb.IsClone() && kb.Spec.Into.Drill }

// validateInto checks spec.into and spec.drill, for API servers without CEL.
func (s *KeycloakBackupSpec) validateInto() error {
	if in := s.Into; in != nil {
		switch {
		case s.RestoreTo == "":
			return &SpecError{ReasonInvalidSpec, "spec.into", "is used only with restoreTo"}
		case in.Name == "" || len(in.Name) > 52:
			return &SpecError{ReasonInvalidSpec, "spec.into.name", fmt.Sprintf("%q: expected a DNS label of 1 to 52 characters", in.Name)}
		case in.Drill && s.RestoreTo != RestoreLatest:
			return &SpecError{ReasonInvalidSpec, "spec.restoreTo", "a drill (into.drill) restores to the commit of a transaction it marks in production: set restoreTo to latest"}
		case s.ApplicationSelector != nil:
			return &SpecError{ReasonInvalidSpec, "spec.applicationSelector", "a restore into a new instance stops nothing: remove applicationSelector"}
		}
		if in.Drill && in.Namespace != "" {
			return &SpecError{ReasonInvalidSpec, "spec.into.namespace", "a drill's instance is made in the resource's own namespace: remove into.namespace"}
		}
		if in.Size != nil && in.Size.Sign() <= 0 {
			return &SpecError{ReasonInvalidSpec, "spec.into.size", fmt.Sprintf("%s: expected a positive size such as 10Gi", in.Size)}
		}
	}
	if d := s.Drill; d != nil {
		if s.From != "" || s.RestoreTo != "" || s.Schedule == "" {
			return &SpecError{ReasonInvalidSpec, "spec.drill", "belongs to the archive's resource, beside its schedule (without from or restoreTo)"}
		}
		if _, err := ParseSchedule(d.Schedule); err != nil {
			return &SpecError{ReasonInvalidSchedule, "spec.drill.schedule", err.Error()}
		}
		if d.Timeout != nil && d.Timeout.Duration < time.Minute {
			return &SpecError{ReasonInvalidSpec, "spec.drill.timeout", fmt.Sprintf("%s is shorter than the minimum of 1m (such as \"30m\")", d.Timeout.Duration)}
		}
		if d.Size != nil && d.Size.Sign() <= 0 {
			return &SpecError{ReasonInvalidSpec, "spec.drill.size", fmt.Sprintf("%s: expected a positive size such as 10Gi", d.Size)}
		}
	}
	return nil
}

// DrillOfLabel is on every drill resource: the name of the archive's resource it drills
// (`kubectl get kcb -l kcbackup.keycloak.org/drill-of=NAME`).
const DrillOfLabel = "kcbackup.keycloak.org/drill-of"

// NewDrill returns the KeycloakBackup of a restore drill of the archive's resource archive,
// started at: named <archive>-drill-<yyyymmddhhmmss> (UTC), with from, restoreTo latest and
// into.drill, and the settings of archive's spec.drill (or the defaults without one). The
// caller sets the owner (a schedule's drills are owned by the archive's resource).
func NewDrill(archive *KeycloakBackup, at time.Time) *KeycloakBackup {
	stamp := at.UTC().Format("20060102150405")
	base := archive.Name
	if len(base) > 253-len("-drill-")-len(stamp) {
		base = base[:253-len("-drill-")-len(stamp)]
	}
	// The instance's name is a DNS-1035 label of at most 52 characters.
	inst := strings.TrimRight(archive.Name[:min(len(archive.Name), 27)], "-.")
	inst = strings.ReplaceAll(inst, ".", "-")
	if inst == "" || inst[0] < 'a' || inst[0] > 'z' {
		inst = "d" + inst[:min(len(inst), 26)]
	}
	into := &RestoreInto{Name: inst + "-drill-" + stamp, Drill: true}
	var opts *RestoreOptions
	if d := archive.Spec.Drill; d != nil {
		into.StorageClassName, into.Size, into.Check = d.StorageClassName, d.Size, d.Check.DeepCopy()
		if d.Timeout != nil {
			opts = &RestoreOptions{Timeout: d.Timeout.DeepCopy()}
		}
	}
	return &KeycloakBackup{
		TypeMeta: metav1.TypeMeta{APIVersion: GroupVersion.String(), Kind: "KeycloakBackup"},
		ObjectMeta: metav1.ObjectMeta{
			Name: base + "-drill-" + stamp, Namespace: archive.Namespace,
			Labels: map[string]string{DrillOfLabel: archive.Name, "app.kubernetes.io/managed-by": "kcbackup-operator"},
		},
		Spec: KeycloakBackupSpec{From: archive.Name, RestoreTo: RestoreLatest, Into: into, Restore: opts},
	}
}
