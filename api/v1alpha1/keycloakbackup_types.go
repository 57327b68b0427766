package v1alpha1

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// KeycloakBackupSpec says which PostgreSQL workload to protect, where its archive lives, and
// what to do: one base backup (neither schedule nor restoreTo), a base backup at each tick of
// schedule, or an in-place restore to restoreTo.
//
// The archive's settings (instanceSelector, storage, postgres, encryption, sidecar) are
// written once, on the archive's resource; a resource with from takes them from it and says
// only what it does.
//
// +kubebuilder:validation:XValidation:rule="has(self.from) || (has(self.instanceSelector) && has(self.storage))",message="instanceSelector and storage are required unless from names the archive's resource"
// +kubebuilder:validation:XValidation:rule="!has(self.from) || !(has(self.instanceSelector) || has(self.storage) || has(self.postgres) || has(self.encryption) || has(self.sidecar))",message="a resource with from takes instanceSelector, storage, postgres, encryption and sidecar from the resource it names: remove them here (change them there)"
// +kubebuilder:validation:XValidation:rule="!has(self.from) || !(has(self.schedule) || has(self.retention) || has(self.suspend))",message="schedule, retention and suspend belong to the archive's resource, not to a resource with from"
// +kubebuilder:validation:XValidation:rule="has(oldSelf.from) == has(self.from) && (!has(self.from) || self.from == oldSelf.from)",message="from is immutable: create a new resource for another archive"
// +kubebuilder:validation:XValidation:rule="!has(self.backupID) || (has(self.from) && !has(self.restoreTo))",message="backupID (the record of one backup) needs from and excludes restoreTo"
// +kubebuilder:validation:XValidation:rule="has(oldSelf.backupID) == has(self.backupID) && (!has(self.backupID) || self.backupID == oldSelf.backupID)",message="backupID is immutable"
// +kubebuilder:validation:XValidation:rule="!(has(self.schedule) && has(self.restoreTo))",message="schedule and restoreTo are mutually exclusive: use one resource to schedule backups and another to restore"
// +kubebuilder:validation:XValidation:rule="has(oldSelf.restoreTo) == has(self.restoreTo) && (!has(self.restoreTo) || self.restoreTo == oldSelf.restoreTo)",message="restoreTo is immutable: create a new resource for another restore"
// +kubebuilder:validation:XValidation:rule="!has(self.applicationSelector) || has(self.restoreTo)",message="applicationSelector is used only with restoreTo"
// +kubebuilder:validation:XValidation:rule="!has(self.retention) || has(self.schedule)",message="retention is applied only with schedule"
// +kubebuilder:validation:XValidation:rule="!has(self.restore) || has(self.restoreTo)",message="restore is used only with restoreTo"
// +kubebuilder:validation:XValidation:rule="!has(self.into) || has(self.restoreTo)",message="into is used only with restoreTo"
// +kubebuilder:validation:XValidation:rule="!has(self.into) || !has(self.applicationSelector)",message="a restore into a new instance stops nothing: remove applicationSelector"
// +kubebuilder:validation:XValidation:rule="has(oldSelf.into) == has(self.into) && (!has(self.into) || self.into == oldSelf.into)",message="into is immutable: create a new resource for another instance"
// +kubebuilder:validation:XValidation:rule="!has(self.into) || !has(self.into.drill) || !self.into.drill || self.restoreTo == 'latest'",message="a drill (into.drill) restores to the commit of a transaction it marks in production: set restoreTo to latest"
// +kubebuilder:validation:XValidation:rule="!has(self.drill) || (!has(self.from) && !has(self.restoreTo) && has(self.schedule))",message="drill belongs to the archive's resource, beside its schedule (without from or restoreTo)"
type KeycloakBackupSpec struct {
	// From names the archive's resource: another KeycloakBackup in this namespace, without
	// from itself, whose instanceSelector, storage, postgres, encryption and sidecar this
	// resource uses. A resource with from sets none of these (nor schedule, retention or
	// suspend): it says only what it does, a one-off backup (nothing else set) or a restore
	// (restoreTo). Immutable. Until the named resource exists, the resource waits (Valid
	// False, reason FromNotFound).
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	From string `json:"from,omitempty"`

	// BackupID makes this resource the record of one base backup of the archive, with this
	// ID: the operator creates such a record (named <from>-<backup time>, owned by the
	// schedule's resource, with from naming it) for each backup a schedule takes, and
	// retention deletes it with the backup. A record does nothing; deleting it deletes no
	// archived data. Set only by the operator; immutable.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	BackupID string `json:"backupID,omitempty"`

	// InstanceSelector selects the PostgreSQL workload (a Deployment or a StatefulSet, in the
	// resource's namespace) to back up or restore. It must match exactly one workload, running
	// PostgreSQL 15, 16, 17, 18 or 19 (the sidecar refuses other versions by name). Required
	// unless from is set.
	// +optional
	// +kubebuilder:validation:XValidation:rule="(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)",message="instanceSelector must not be empty: an empty selector matches every workload"
	InstanceSelector metav1.LabelSelector `json:"instanceSelector,omitzero"`

	// Storage is where the WAL archive and the base backups are kept. All resources selecting
	// the same workload must use the same storage: write it once, and name that resource in
	// the from of the others. Required unless from is set.
	// +optional
	Storage Storage `json:"storage,omitzero"`

	// Postgres says how the sidecar connects to PostgreSQL, which must run in the selected
	// workload's pod. The role needs the REPLICATION attribute and pg_backup_start/stop grants,
	// not superuser.
	// +optional
	Postgres PostgresSpec `json:"postgres,omitzero"`

	// Encryption encrypts the archive with age: the sidecar encrypts what it archives to the
	// recipients, and reads (restores, WAL served to a recovering PostgreSQL) with the
	// identity. It applies to a new archive; an archive's encryption is fixed when it starts.
	// +optional
	Encryption *Encryption `json:"encryption,omitempty"`

	// Sidecar tunes the injected kcbackup sidecar: synchronous archiving, its resources and
	// its log format.
	// +optional
	Sidecar *SidecarOptions `json:"sidecar,omitempty"`

	// Schedule is a cron expression ("0 3 * * *", "@hourly", "CRON_TZ=Europe/Paris 0 3 * * *");
	// a base backup is taken at each tick. After downtime, at most one missed tick is caught up.
	// Times are UTC unless a CRON_TZ= prefix says otherwise.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	Schedule string `json:"schedule,omitempty"`

	// Retention removes old base backups, and the WAL only they need, after each scheduled
	// backup. Without it nothing is ever removed.
	// +optional
	Retention *Retention `json:"retention,omitempty"`

	// Suspend pauses the schedule: no new backup starts while it is true. A running backup
	// finishes.
	// +optional
	Suspend bool `json:"suspend,omitempty"`

	// RestoreTo restores the selected database in place to this time: an RFC 3339 timestamp
	// with an explicit offset ("2026-03-01T12:00:00Z", "2026-03-01T13:00:00+01:00"), or
	// "latest" for the end of the archive. The target must lie inside the recovery window; one
	// just past its end, by no more than the sidecar's archive lag plus a minute, is waited for
	// (until that much time has passed since the target).
	// The current data directory is moved aside, never deleted. Immutable; a restore runs once.
	// +optional
	// +kubebuilder:validation:Pattern=`^(latest|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2}))$`
	RestoreTo string `json:"restoreTo,omitempty"`

	// ApplicationSelector selects the Keycloak workloads (Deployments or StatefulSets, by
	// their labels) stopped during a restore and started again afterwards. For each, the
	// operator scales the topmost controlling owner that has a scale subresource: a Keycloak
	// resource of the Keycloak Operator (its /scale is .spec.instances), else the Deployment or
	// StatefulSet itself; status.restore.applications records what it found and the replicas
	// it puts back. Used only with restoreTo. A restore whose selector is unset or selects
	// nothing is refused (reason NoApplicationToStop) before anything is touched, unless
	// spec.restore.allowWithoutApplication is true.
	// +optional
	ApplicationSelector *metav1.LabelSelector `json:"applicationSelector,omitempty"`

	// Restore tunes the in-place restore: the deadline of each waiting step and what is
	// done to the Keycloak database after promotion. Used only with restoreTo.
	// +optional
	Restore *RestoreOptions `json:"restore,omitempty"`

	// Into restores into a new instance instead of in place: a StatefulSet (one pod) with
	// its own claim, made from the PostgreSQL workload's pod template, beside production,
	// which keeps running untouched. Used only with restoreTo. The instance recovers WAL
	// through a read-only `kcbackup serve` container and never archives: it is a copy, and
	// the archive has one writer (production's sidecar). It is deleted with this resource
	// unless into.keep is true. status.restore.instance says how to connect to it.
	// +optional
	Into *RestoreInto `json:"into,omitempty"`

	// Drill schedules restore drills of this archive: at each tick the operator creates a
	// KeycloakBackup (<name>-drill-<yyyymmddhhmmss>, owned by this one, with from and
	// into.drill) that restores the archive's latest point into a throw-away instance,
	// checks it and removes it; status.drill and the kcbackup_operator_drill_* metrics
	// record the outcome, the restore time (RTO) and the data loss window (RPO) measured.
	// Only on the archive's resource.
	// +optional
	Drill *DrillSpec `json:"drill,omitempty"`
}

// RestoreInto is the new instance a restore creates.
type RestoreInto struct {
	// Name is the new instance's name: of its StatefulSet and Service, and of its claim
	// (<name>-data). Nothing of that name may exist: the restore refuses, naming it. The pod
	// is <name>-0, its PostgreSQL <name>.<namespace>.svc on the port of spec.postgres.port.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=52
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`

	// Namespace is where the new instance is made; unset: this resource's. Another
	// namespace must accept restores from this one: its annotation
	// kcbackup.keycloak.org/accept-restores-from lists this namespace (comma-separated),
	// else the restore is refused (InstanceNamespaceNotAccepted). There the operator copies
	// the archive's credentials (S3, CA, age keys) into the Secret <name>-kcbackup-storage;
	// every other Secret and ConfigMap the pod template names must exist there already. An
	// archive on a claim (storage.volume) cannot be read from another namespace. A drill
	// uses this resource's namespace.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespace string `json:"namespace,omitempty"`

	// StorageClassName is the storage class of the new claim; unset: that of the
	// workload's data claim (or the cluster's default).
	// +optional
	StorageClassName *string `json:"storageClassName,omitempty"`

	// Size is the new claim's size; unset: the request of the workload's data claim.
	// +optional
	Size *resource.Quantity `json:"size,omitempty"`

	// Keep keeps the instance (StatefulSet, Service, claim and its token Secret) when
	// this resource is deleted; they are then yours to delete. A drill never keeps it.
	// +optional
	Keep bool `json:"keep,omitempty"`

	// Drill makes this restore a restore drill: the operator marks production in one
	// transaction (locking the tables of check.tables IN SHARE MODE, so no write to them
	// runs meanwhile, and counting their rows), waits until the archive holds that
	// transaction, restores the new instance to exactly its commit, checks it (promoted;
	// the marker committed; the same row counts; amcheck's bt_index_check on the tables'
	// indexes where the extension can be used), records RTO and RPO in status.restore.drill,
	// and removes the instance. It needs restoreTo: latest. The operator sets it on the
	// resources a drill schedule creates; set it yourself for a drill now.
	// +optional
	Drill bool `json:"drill,omitempty"`

	// Check says what a drill checks. Default: database keycloak, tables realm, client,
	// user_entity, keycloak_role and keycloak_group.
	// +optional
	Check *DrillCheck `json:"check,omitempty"`
}

// DrillCheck says what a drill compares between production and the restored instance.
type DrillCheck struct {
	// Database is the database holding the tables; default keycloak.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Database string `json:"database,omitempty"`

	// Tables are the tables whose row counts must be equal in production at the marker
	// and in the restored instance (names, optionally schema-qualified). Those that do not
	// exist in production are skipped and listed. spec.postgres.user needs SELECT and one
	// of UPDATE, DELETE or TRUNCATE on them (LOCK ... IN SHARE MODE needs it).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=127
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$`
	Tables []string `json:"tables,omitempty"`
}

// DrillSpec schedules restore drills.
type DrillSpec struct {
	// Schedule is a cron expression, as spec.schedule ("0 4 * * 0", "@weekly").
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	Schedule string `json:"schedule"`

	// Suspend pauses the drills; a running one finishes.
	// +optional
	Suspend bool `json:"suspend,omitempty"`

	// StorageClassName and Size are those of the throw-away instance's claim (see into).
	// +optional
	StorageClassName *string `json:"storageClassName,omitempty"`
	// +optional
	Size *resource.Quantity `json:"size,omitempty"`

	// Check says what each drill checks (see into.check).
	// +optional
	Check *DrillCheck `json:"check,omitempty"`

	// Timeout bounds each waiting step of a drill (as spec.restore.timeout); default 30m.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m')",message="drill.timeout must be at least 1m"
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// History is how many drill resources are kept, newest first (their status is the
	// evidence of each drill); older ones are deleted. Default 3.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	History int32 `json:"history,omitempty"`
}

// Encryption names the age keys of the archive, each one key of a Secret in the resource's
// namespace. At least one is set.
//
// +kubebuilder:validation:XValidation:rule="has(self.recipientsSecret) || has(self.identitySecret)",message="encryption needs recipientsSecret, identitySecret or both"
type Encryption struct {
	// RecipientsSecret holds the age recipients (age1... public keys, one a line) the archive
	// is encrypted to (the sidecar's --encryption-recipient-file). With it alone the sidecar
	// archives without being able to read: restores need identitySecret.
	// +optional
	RecipientsSecret *SecretKey `json:"recipientsSecret,omitempty"`

	// IdentitySecret holds the age identity (AGE-SECRET-KEY-1..., from age-keygen) that reads
	// the archive (the sidecar's --encryption-key-file): the sidecar, to serve WAL to a
	// recovering PostgreSQL, and the restore Job get it. Without recipientsSecret, the
	// archive is encrypted to this identity's public key. Required for a restore of an
	// encrypted archive.
	// +optional
	IdentitySecret *SecretKey `json:"identitySecret,omitempty"`
}

// LogFormat is the sidecar's log format.
// +kubebuilder:validation:Enum=json;text
type LogFormat string

// The log formats.
const (
	// LogFormatJSON is one JSON object a line, the default in the cluster.
	LogFormatJSON LogFormat = "json"
	// LogFormatText is logfmt-like key=value text.
	LogFormatText LogFormat = "text"
)

// SidecarOptions tunes the injected sidecar.
type SidecarOptions struct {
	// Synchronous archives each commit's WAL before the commit returns, so no committed
	// transaction is missing from the archive: the sidecar uploads as soon as WAL arrives
	// (--partial-interval 0). PostgreSQL must also name it in synchronous_standby_names
	// (synchronous_standby_names = 'kcbackup', its application_name): the operator does not
	// change PostgreSQL's configuration. Commits then wait for one small upload each.
	// +optional
	Synchronous bool `json:"synchronous,omitempty"`

	// Resources are the sidecar container's requests and limits. Default: requests of
	// 50m CPU and 64Mi memory, no limit.
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`

	// LogFormat is the sidecar's log format: json (default) or text.
	// +optional
	LogFormat LogFormat `json:"logFormat,omitempty"`
}

// Sessions says which Keycloak user sessions a restore removes from the restored database.
// +kubebuilder:validation:Enum=keep;online;all
type Sessions string

// The session modes.
const (
	// SessionsKeep removes no session.
	SessionsKeep Sessions = "keep"
	// SessionsOnline removes the persisted online sessions (offline_flag = '0' in
	// offline_user_session and offline_client_session): users log in again, offline tokens
	// keep working.
	SessionsOnline Sessions = "online"
	// SessionsAll empties offline_user_session and offline_client_session: online sessions
	// and offline tokens are gone.
	SessionsAll Sessions = "all"
)

// Defaults of spec.restore.
const (
	DefaultRestoreTimeout   = 30 * time.Minute
	DefaultRestoreSessions  = SessionsOnline
	DefaultKeycloakDatabase = "keycloak"
)

// RestoreOptions tunes an in-place restore.
type RestoreOptions struct {
	// Timeout bounds each step that waits (the application's pods to stop, the archive to
	// reach the server's flush position before PostgreSQL stops, its pods to stop, the
	// restore Job, PostgreSQL to replay WAL, promote and archive on the new timeline, the
	// Keycloak clean-up). A step that takes longer ends the restore Failed with reason
	// RestoreTimedOut (WALNotArchived when the archive did not reach the flush position:
	// nothing was stopped for good). A Go duration; default 30m. The restore Job gets it as its
	// activeDeadlineSeconds. At least 1m.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m')",message="restore.timeout must be at least 1m"
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// Sessions says which user sessions are removed from the restored Keycloak database
	// before Keycloak starts again: keep (none), online (default: the persisted online
	// sessions, rows with offline_flag = '0' of offline_user_session and
	// offline_client_session; users log in again, offline tokens keep working) or all (both
	// tables emptied: offline tokens stop working too). Sessions the restore brought back
	// include ones users had logged out of after the target time. With online or all, a
	// database without these tables (or without their offline_flag column) fails the restore
	// with reason KeycloakSchemaMismatch, and Keycloak stays at zero.
	// +optional
	Sessions Sessions `json:"sessions,omitempty"`

	// KeycloakDatabase is the database Keycloak uses in the restored cluster; the sidecar
	// connects to it as spec.postgres.user, which needs DELETE on jgroups_ping,
	// offline_user_session, offline_client_session and (Keycloak 26.7 and later)
	// auth_session and root_auth_session. Default keycloak.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	KeycloakDatabase string `json:"keycloakDatabase,omitempty"`

	// AllowWithoutApplication lets a restore run when applicationSelector is unset or selects
	// no workload: set it only when no application uses the database, or you stopped Keycloak
	// yourself (Keycloak running on a database being replaced loses what it writes and may
	// serve stale state). Default false: such a restore is refused, reason NoApplicationToStop.
	// +optional
	AllowWithoutApplication bool `json:"allowWithoutApplication,omitempty"`

	// Timeline is the timeline whose history the restore follows. Unset, the restore uses
	// the newest timeline whose recovery range holds restoreTo, and refuses (reason
	// RestoreRefused, nothing changed) a time that lies on two timelines whose histories
	// differ then, as after an earlier in-place restore: set it to choose (see
	// status.recoveryRanges).
	// +optional
	// +kubebuilder:validation:Minimum=1
	Timeline *int64 `json:"timeline,omitempty"`
}

// Storage is where the archive lives: exactly one of s3 or volume.
//
// +kubebuilder:validation:XValidation:rule="has(self.s3) != has(self.volume)",message="exactly one of storage.s3 or storage.volume must be set"
type Storage struct {
	// S3 keeps the archive in an S3-compatible object store.
	// +optional
	S3 *S3Storage `json:"s3,omitempty"`

	// Volume keeps the archive on a PersistentVolumeClaim, mounted into the sidecar. The claim
	// must be mountable by the PostgreSQL pod (ReadWriteOnce on the same node, or ReadWriteMany).
	// +optional
	Volume *VolumeStorage `json:"volume,omitempty"`
}

// S3Storage is an S3 bucket and prefix, with how to reach and authenticate to it.
type S3Storage struct {
	// Bucket is the bucket's name.
	// +required
	// +kubebuilder:validation:MinLength=3
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9][a-z0-9.-]+[a-z0-9]$`
	Bucket string `json:"bucket"`

	// Prefix is the key prefix under which the archive is kept, without leading or trailing
	// slash ("keycloak/prod").
	// +optional
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:Pattern=`^[^/].*[^/]$|^[^/]$`
	Prefix string `json:"prefix,omitempty"`

	// Region is the bucket's region (AWS_REGION).
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Region string `json:"region,omitempty"`

	// Endpoint is the S3 endpoint URL for a non-AWS store ("https://minio.storage:9000").
	// +optional
	// +kubebuilder:validation:Pattern=`^https?://[^\s]+$`
	// +kubebuilder:validation:MaxLength=512
	Endpoint string `json:"endpoint,omitempty"`

	// ForcePathStyle addresses the bucket in the path rather than the host name, as most
	// non-AWS stores need.
	// +optional
	ForcePathStyle bool `json:"forcePathStyle,omitempty"`

	// CredentialsSecret is a Secret in the resource's namespace holding the access key. When
	// unset, the sidecar uses the default AWS credential chain (e.g. a pod identity).
	// +optional
	CredentialsSecret *S3CredentialsSecret `json:"credentialsSecret,omitempty"`

	// CASecret is a Secret holding the PEM CA bundle that signs the endpoint's certificate,
	// when it is not signed by a public CA. TLS is always verified.
	// +optional
	CASecret *SecretKey `json:"caSecret,omitempty"`
}

// S3CredentialsSecret names a Secret and the keys of the access key inside it.
type S3CredentialsSecret struct {
	// Name is the Secret's name.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// AccessKeyIDKey is the key holding the access key ID.
	// +optional
	// +kubebuilder:default=AWS_ACCESS_KEY_ID
	AccessKeyIDKey string `json:"accessKeyIDKey,omitempty"`

	// SecretAccessKeyKey is the key holding the secret access key.
	// +optional
	// +kubebuilder:default=AWS_SECRET_ACCESS_KEY
	SecretAccessKeyKey string `json:"secretAccessKeyKey,omitempty"`
}

// SecretKey names one key of a Secret in the resource's namespace.
type SecretKey struct {
	// Name is the Secret's name.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// Key is the key inside the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Key string `json:"key"`
}

// VolumeStorage keeps the archive on a PersistentVolumeClaim.
type VolumeStorage struct {
	// ClaimName is the PersistentVolumeClaim's name, in the resource's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	ClaimName string `json:"claimName"`
}

// PostgresSpec says how to reach PostgreSQL inside the selected pod.
type PostgresSpec struct {
	// ContainerName is the PostgreSQL container in the pod template. Defaults to the first
	// container.
	// +optional
	ContainerName string `json:"containerName,omitempty"`

	// User is the role the sidecar connects as. It needs REPLICATION.
	// +optional
	// +kubebuilder:default=postgres
	// +kubebuilder:validation:MinLength=1
	User string `json:"user,omitempty"`

	// PasswordSecret holds the role's password (PGPASSWORD). Unset means no password (for
	// example trust authentication on localhost).
	// +optional
	PasswordSecret *SecretKey `json:"passwordSecret,omitempty"`

	// Port is the port PostgreSQL listens on, on localhost.
	// +optional
	// +kubebuilder:default=5432
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port,omitempty"`

	// DataDir is PostgreSQL's data directory (PGDATA) inside the container. Defaults to the
	// container's PGDATA environment variable, else /var/lib/postgresql/data. For a restore
	// it must lie on a volume backed by a PersistentVolumeClaim, below the volume's root
	// (such as /var/lib/postgresql/data/pgdata): the replaced data is kept beside it.
	// +optional
	// +kubebuilder:validation:Pattern=`^/.*`
	DataDir string `json:"dataDir,omitempty"`
}

// Retention is how many base backups to keep. A backup is kept when it satisfies either
// limit; WAL is kept while a kept backup needs it.
//
// +kubebuilder:validation:XValidation:rule="has(self.keepBackups) || has(self.keepWithin)",message="retention needs keepBackups, keepWithin or both"
type Retention struct {
	// KeepBackups keeps this many of the newest base backups.
	// +optional
	// +kubebuilder:validation:Minimum=1
	KeepBackups int32 `json:"keepBackups,omitempty"`

	// KeepWithin keeps the base backups newer than this Go duration ("168h", "720h").
	// +optional
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	KeepWithin string `json:"keepWithin,omitempty"`
}

// Phase is where a KeycloakBackup stands, in one word.
// +kubebuilder:validation:Enum=Pending;BackingUp;Completed;Scheduled;Suspended;Restoring;Restored;Failed
type Phase string

// The phases. Completed, Restored and Failed are terminal for a one-off backup or a restore.
const (
	// PhasePending means the operator has not started any work yet, or waits for a prerequisite.
	PhasePending Phase = "Pending"
	// PhaseBackingUp means a base backup is running.
	PhaseBackingUp Phase = "BackingUp"
	// PhaseCompleted means the one-off base backup completed.
	PhaseCompleted Phase = "Completed"
	// PhaseScheduled means backups are taken on schedule.
	PhaseScheduled Phase = "Scheduled"
	// PhaseSuspended means the schedule is suspended.
	PhaseSuspended Phase = "Suspended"
	// PhaseRestoring means a restore is in progress.
	PhaseRestoring Phase = "Restoring"
	// PhaseRestored means the restore completed.
	PhaseRestored Phase = "Restored"
	// PhaseFailed means the backup or the restore failed; the Ready condition says why.
	PhaseFailed Phase = "Failed"
)

// RestoreStep is the step a restore has reached. The steps run in the order below.
// +kubebuilder:validation:Enum=CheckingTarget;MarkingSource;StoppingApplication;ArchivingWAL;StoppingDatabase;CreatingInstance;RestoringData;StartingDatabase;WaitingForArchive;CleaningKeycloak;StartingApplication;CheckingInstance;RemovingInstance;Done
type RestoreStep string

// The restore steps, in order.
const (
	// RestoreCheckingTarget checks that the target lies inside the recovery window.
	RestoreCheckingTarget RestoreStep = "CheckingTarget"
	// RestoreStoppingApplication scales the application to zero and waits for its pods to go.
	RestoreStoppingApplication RestoreStep = "StoppingApplication"
	// RestoreArchivingWAL takes the server's flush position once the application is stopped
	// and waits until the archive holds the old timeline's WAL up to it, before PostgreSQL
	// is stopped.
	RestoreArchivingWAL RestoreStep = "ArchivingWAL"
	// RestoreStoppingDatabase scales PostgreSQL to zero and waits for its pods to go.
	RestoreStoppingDatabase RestoreStep = "StoppingDatabase"
	// RestoreRestoringData runs the Job that restores into the data volume.
	RestoreRestoringData RestoreStep = "RestoringData"
	// RestoreStartingDatabase scales PostgreSQL back; it replays WAL to the target and promotes.
	RestoreStartingDatabase RestoreStep = "StartingDatabase"
	// RestoreWaitingForArchive waits until the sidecar archives on the new timeline.
	RestoreWaitingForArchive RestoreStep = "WaitingForArchive"
	// RestoreCleaningKeycloak empties jgroups_ping and removes the sessions spec.restore.sessions
	// names, through the sidecar, before Keycloak starts.
	RestoreCleaningKeycloak RestoreStep = "CleaningKeycloak"
	// RestoreStartingApplication scales the application back.
	RestoreStartingApplication RestoreStep = "StartingApplication"
	// RestoreDone means the restore is finished.
	RestoreDone RestoreStep = "Done"

	// The steps of a restore into a new instance (spec.into): CheckingTarget, MarkingSource
	// (drills), ArchivingWAL (drills: until the archive holds the marker), CreatingInstance,
	// RestoringData, StartingDatabase, CheckingInstance (drills), RemovingInstance (drills),
	// Done. Production is never stopped.

	// RestoreMarkingSource marks production in one transaction: SHARE locks on the checked
	// tables, their row counts, the transaction's ID.
	RestoreMarkingSource RestoreStep = "MarkingSource"
	// RestoreCreatingInstance creates the new instance's claim, token Secret and Service.
	RestoreCreatingInstance RestoreStep = "CreatingInstance"
	// RestoreCheckingInstance checks the promoted instance against the marker.
	RestoreCheckingInstance RestoreStep = "CheckingInstance"
	// RestoreRemovingInstance deletes a drill's instance.
	RestoreRemovingInstance RestoreStep = "RemovingInstance"
)

// BackupRecord describes one base backup taken for this resource.
type BackupRecord struct {
	// ID identifies the backup in the archive.
	ID string `json:"id"`
	// StartTime is when the backup started.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// StopTime is when the backup stopped; the database can be restored from here on.
	// +optional
	StopTime *metav1.Time `json:"stopTime,omitempty"`
	// StartLSN is the backup's start position in the WAL.
	// +optional
	StartLSN string `json:"startLSN,omitempty"`
	// StopLSN is the backup's stop position in the WAL.
	// +optional
	StopLSN string `json:"stopLSN,omitempty"`
	// Timeline is the timeline the backup was taken on.
	// +optional
	Timeline int64 `json:"timeline,omitempty"`
	// SizeBytes is the size stored in the archive.
	// +optional
	SizeBytes int64 `json:"sizeBytes,omitempty"`
	// Size is SizeBytes for people ("1.5GiB").
	// +optional
	Size string `json:"size,omitempty"`
}

// OpenedRange is where the recovery range a base backup opens begins: from its stop time,
// on its timeline, a restore can reach any time up to the end of the archive's range that
// holds it (status.recoveryRanges of the archive's resource).
type OpenedRange struct {
	// Timeline is the timeline the backup was taken on.
	Timeline int64 `json:"timeline"`
	// Earliest is the earliest time the backup lets a restore reach: its stop time.
	Earliest metav1.Time `json:"earliest"`
}

// RecoveryWindow is the range of times a restore can reach.
type RecoveryWindow struct {
	// Earliest is the earliest reachable time: the stop time of the oldest backup of the range.
	Earliest metav1.Time `json:"earliest"`
	// Latest is the latest reachable time: the newest archived WAL.
	Latest metav1.Time `json:"latest"`
}

// RecoveryRange is one stretch of times a restore can reach on one timeline's path.
type RecoveryRange struct {
	// Timeline is the timeline whose history the range follows.
	Timeline int64 `json:"timeline"`
	// Earliest is the stop time of the oldest backup that restores into the range.
	Earliest metav1.Time `json:"earliest"`
	// Latest is the latest reachable time of the range.
	Latest metav1.Time `json:"latest"`
	// Hole is set when the range ends at missing WAL that later WAL follows (a replication
	// slot the server invalidated): times after it lie in the next range, or nowhere.
	// +optional
	Hole bool `json:"hole,omitempty"`
}

// WorkloadReference names the workload a resource selected.
type WorkloadReference struct {
	// Kind is Deployment or StatefulSet.
	Kind string `json:"kind"`
	// Name is the workload's name.
	Name string `json:"name"`
}

// ScaledWorkload is what a restore scaled to zero, through its scale subresource, with the
// replicas to give back.
type ScaledWorkload struct {
	// APIVersion is the scaled resource's API version; empty means apps/v1.
	// +optional
	APIVersion string `json:"apiVersion,omitempty"`
	// Kind is the scaled resource's kind: Deployment, StatefulSet, or the kind of the
	// topmost controlling owner with a scale subresource (Keycloak for the Keycloak Operator).
	Kind string `json:"kind"`
	// Name is the scaled resource's name.
	Name string `json:"name"`
	// Replicas is the scale's spec.replicas before the restore (a Keycloak's
	// .spec.instances), put back exactly after it.
	Replicas int32 `json:"replicas"`
	// Selected are the workloads the selector matched that this resource controls (empty:
	// the scaled resource itself was selected); the restore waits for their pods to go.
	// +optional
	// +listType=atomic
	Selected []WorkloadReference `json:"selected,omitempty"`
}

// RestoreStatus is the progress of a restore.
type RestoreStatus struct {
	// Step is the step the restore has reached.
	// +optional
	Step RestoreStep `json:"step,omitempty"`
	// TargetTime is the time restored to; unset for "latest".
	// +optional
	TargetTime *metav1.Time `json:"targetTime,omitempty"`
	// StartTime is when the restore started.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// CompletionTime is when the restore finished.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
	// PreviousTimeline is the timeline PostgreSQL was on before the restore.
	// +optional
	PreviousTimeline int64 `json:"previousTimeline,omitempty"`
	// Timeline is the new timeline PostgreSQL promoted to.
	// +optional
	Timeline int64 `json:"timeline,omitempty"`
	// Database is the PostgreSQL workload, with its replicas before the restore.
	// +optional
	Database *ScaledWorkload `json:"database,omitempty"`
	// Applications are the application workloads scaled to zero, with their replicas before
	// the restore.
	// +optional
	// +listType=atomic
	Applications []ScaledWorkload `json:"applications,omitempty"`
	// JobName is the restore Job.
	// +optional
	JobName string `json:"jobName,omitempty"`
	// RunAsUser and RunAsGroup are the user and group PostgreSQL's container ran as when the
	// restore started, as admitted (with any UID the cluster assigned, as OpenShift does);
	// the restore Job runs as them, so it owns the data directory as PostgreSQL does.
	// +optional
	RunAsUser *int64 `json:"runAsUser,omitempty"`
	// +optional
	RunAsGroup *int64 `json:"runAsGroup,omitempty"`
	// BitnamiPerformRestore is true while the operator has set POSTGRESQL_PERFORM_RESTORE=yes
	// on the Bitnami PostgreSQL container (set before the restored start, removed once
	// PostgreSQL promoted).
	// +optional
	BitnamiPerformRestore bool `json:"bitnamiPerformRestore,omitempty"`
	// JobUID is the UID of the restore Job this resource created (or found, owned by it). A
	// recorded Job is never created again: if it disappears before its outcome was seen,
	// the restore fails.
	// +optional
	JobUID types.UID `json:"jobUID,omitempty"`
	// FlushLSN is the server's WAL flush position on the replaced timeline, taken once the
	// application was stopped. PostgreSQL is stopped only when the archive holds WAL up to it.
	// +optional
	FlushLSN string `json:"flushLSN,omitempty"`
	// StepStartTime is when the current step began; its deadline (spec.restore.timeout)
	// counts from here.
	// +optional
	StepStartTime *metav1.Time `json:"stepStartTime,omitempty"`
	// Keycloak is what the clean-up of the Keycloak database did.
	// +optional
	Keycloak *KeycloakCleanup `json:"keycloak,omitempty"`
	// Instance is the new instance of a restore with spec.into.
	// +optional
	Instance *InstanceStatus `json:"instance,omitempty"`
	// Drill is the marker, the checks and the figures of a drill (spec.into.drill).
	// +optional
	Drill *DrillResult `json:"drill,omitempty"`
}

// InstanceStatus is the new instance a restore made, and what it reached.
type InstanceStatus struct {
	// Namespace is where the instance's objects are.
	// +optional
	Namespace string `json:"namespace,omitempty"`
	// StatefulSet, Service and Claim are the instance's objects.
	StatefulSet string `json:"statefulSet"`
	Service     string `json:"service"`
	Claim       string `json:"claim"`
	// Host and Port are where its PostgreSQL answers (the Service), with the roles and
	// passwords of production at the target.
	Host string `json:"host"`
	Port int32  `json:"port"`
	// Timeline is the timeline the instance promoted to: one after production's, or the
	// restore fails (RecoveryNotRun: it did not recover).
	// +optional
	Timeline int64 `json:"timeline,omitempty"`
	// Ready is set when the instance promoted and answers.
	// +optional
	ReadyTime *metav1.Time `json:"readyTime,omitempty"`
	// Duration is how long the restore took, from its start to the promoted instance
	// answering (a drill's RTO also counts its checks).
	// +optional
	Duration *metav1.Duration `json:"duration,omitempty"`
	// Removed is set once the instance was deleted (a drill's, when done).
	// +optional
	Removed bool `json:"removed,omitempty"`
}

// CheckResult is the outcome of one check of a drill.
// +kubebuilder:validation:Enum=Passed;Failed;Skipped
type CheckResult string

// The check results.
const (
	CheckPassed  CheckResult = "Passed"
	CheckFailed  CheckResult = "Failed"
	CheckSkipped CheckResult = "Skipped"
)

// DrillCheckResult is one check of a drill.
type DrillCheckResult struct {
	// Name is the check: promoted, marker, counts or amcheck.
	Name string `json:"name"`
	// Result is Passed, Failed or Skipped.
	Result CheckResult `json:"result"`
	// Message says what was compared or why it was skipped.
	// +optional
	Message string `json:"message,omitempty"`
}

// TableCount is one table's row count in production at the marker, and restored.
type TableCount struct {
	Table string `json:"table"`
	// Source is the count in production, under the marker's SHARE lock.
	Source int64 `json:"source"`
	// Restored is the count in the restored instance; unset until checked.
	// +optional
	Restored *int64 `json:"restored,omitempty"`
}

// DrillResult is what a drill marked, measured and checked.
type DrillResult struct {
	// MarkerXID is the marker transaction's ID (txid_current(), with its epoch), and
	// MarkerLSN production's WAL position after it committed; the drill restores to its
	// commit (the restore target xid:<id>@<lsn before it>).
	// +optional
	MarkerXID string `json:"markerXID,omitempty"`
	// +optional
	MarkerStartLSN string `json:"markerStartLSN,omitempty"`
	// +optional
	MarkerLSN string `json:"markerLSN,omitempty"`
	// MarkAttempts counts the markers given up on a lock timeout (a write held a checked
	// table); the drill fails at the third.
	// +optional
	MarkAttempts int32 `json:"markAttempts,omitempty"`
	// MarkerTime is when the marker committed (as the operator saw it).
	// +optional
	MarkerTime *metav1.Time `json:"markerTime,omitempty"`
	// ArchivedTime is when the operator saw the archive hold the marker.
	// +optional
	ArchivedTime *metav1.Time `json:"archivedTime,omitempty"`
	// Counts are the checked tables' row counts.
	// +optional
	// +listType=atomic
	Counts []TableCount `json:"counts,omitempty"`
	// Skipped lists tables of check.tables that production does not have.
	// +optional
	// +listType=atomic
	Skipped []string `json:"skipped,omitempty"`
	// Checks are the checks run on the restored instance.
	// +optional
	// +listType=atomic
	Checks []DrillCheckResult `json:"checks,omitempty"`
	// RTO is how long the restore took: from the archive holding the marker to a promoted
	// instance that passed its checks.
	// +optional
	RTO *metav1.Duration `json:"rto,omitempty"`
	// RPO is the data loss window measured: from the marker's commit until the operator
	// saw the archive hold it (an upper bound: the archive may have held it sooner).
	// +optional
	RPO *metav1.Duration `json:"rpo,omitempty"`
}

// DrillStatus is the drills of an archive's resource with spec.drill.
type DrillStatus struct {
	// LastDrill is the newest drill's KeycloakBackup.
	// +optional
	LastDrill string `json:"lastDrill,omitempty"`
	// LastScheduleTime is the tick the newest drill was created for.
	// +optional
	LastScheduleTime *metav1.Time `json:"lastScheduleTime,omitempty"`
	// NextScheduleTime is the next tick.
	// +optional
	NextScheduleTime *metav1.Time `json:"nextScheduleTime,omitempty"`
	// LastResult is the newest finished drill's phase: Restored (passed) or Failed.
	// +optional
	LastResult Phase `json:"lastResult,omitempty"`
	// LastCompletionTime is when the newest finished drill ended.
	// +optional
	LastCompletionTime *metav1.Time `json:"lastCompletionTime,omitempty"`
	// LastSuccessTime is when the newest passed drill ended.
	// +optional
	LastSuccessTime *metav1.Time `json:"lastSuccessTime,omitempty"`
	// LastRTO and LastRPO are the newest passed drill's figures.
	// +optional
	LastRTO *metav1.Duration `json:"lastRTO,omitempty"`
	// +optional
	LastRPO *metav1.Duration `json:"lastRPO,omitempty"`
	// LastMessage is the newest finished drill's Ready message (what failed).
	// +optional
	LastMessage string `json:"lastMessage,omitempty"`
}

// KeycloakCleanup records what the post-restore clean-up removed from the Keycloak database.
type KeycloakCleanup struct {
	// Database is the database cleaned.
	Database string `json:"database"`
	// Sessions is the mode applied (keep, online or all).
	Sessions Sessions `json:"sessions"`
	// JGroupsPingRows is how many rows were deleted from jgroups_ping.
	JGroupsPingRows int64 `json:"jgroupsPingRows"`
	// UserSessionRows is how many rows were deleted from offline_user_session.
	UserSessionRows int64 `json:"userSessionRows"`
	// ClientSessionRows is how many rows were deleted from offline_client_session.
	ClientSessionRows int64 `json:"clientSessionRows"`
	// AuthSessionRows is how many rows were deleted from auth_session and
	// root_auth_session (logins in progress, persisted by Keycloak 26.7 and later).
	// +optional
	AuthSessionRows int64 `json:"authSessionRows,omitempty"`
	// KeycloakVersion is the Keycloak version the database was migrated by, as its
	// migration_model table says (empty when it has none).
	// +optional
	KeycloakVersion string `json:"keycloakVersion,omitempty"`
	// Skipped lists what was not done, and why (a table that does not exist).
	// +optional
	// +listType=atomic
	Skipped []string `json:"skipped,omitempty"`
}

// KeycloakBackupStatus is what the operator observed and did.
type KeycloakBackupStatus struct {
	// Phase is where the resource stands, in one word.
	// +optional
	Phase Phase `json:"phase,omitempty"`

	// ObservedGeneration is the generation of the spec this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions are the details behind the phase. Types: Ready, Valid, InstanceResolved,
	// SidecarReady, Conflict.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// Instance is the PostgreSQL workload the selector matched.
	// +optional
	Instance *WorkloadReference `json:"instance,omitempty"`

	// CurrentBackupID is the ID of the base backup running for this resource.
	// +optional
	CurrentBackupID string `json:"currentBackupID,omitempty"`

	// Backup is the newest base backup this resource took (a one-off backup's, a schedule's
	// latest), or the one a record (spec.backupID) stands for.
	// +optional
	Backup *BackupRecord `json:"backup,omitempty"`

	// OpensRange is where the recovery range that status.backup opens begins, once it
	// completed.
	// +optional
	OpensRange *OpenedRange `json:"opensRange,omitempty"`

	// Backups are the base backups this resource took, newest last (at most 10 are listed).
	// A schedule's backups are also objects: the records it owns (spec.backupID).
	// +optional
	// +listType=atomic
	Backups []BackupRecord `json:"backups,omitempty"`

	// LastBackupTime is when the newest successful backup of this resource stopped.
	// +optional
	LastBackupTime *metav1.Time `json:"lastBackupTime,omitempty"`

	// LastFailedBackupTime is set when the newest backup attempt of this resource failed (to
	// when it ended), and cleared when a backup succeeds. The operator's alert gauges are
	// seeded from it, and from lastBackupTime, after a restart.
	// +optional
	LastFailedBackupTime *metav1.Time `json:"lastFailedBackupTime,omitempty"`

	// LastScheduleTime is the schedule tick the newest backup was started for.
	// +optional
	LastScheduleTime *metav1.Time `json:"lastScheduleTime,omitempty"`

	// NextScheduleTime is the next schedule tick.
	// +optional
	NextScheduleTime *metav1.Time `json:"nextScheduleTime,omitempty"`

	// RecoveryWindow is the newest continuous range of times the archive can restore to on
	// the live timeline, as last seen.
	// +optional
	RecoveryWindow *RecoveryWindow `json:"recoveryWindow,omitempty"`

	// RecoveryRanges are every timeline's restorable ranges, oldest first, as last seen: a
	// hole in the WAL shows as two ranges, and the timeline an in-place restore replaced
	// keeps its own.
	// +optional
	// +listType=atomic
	RecoveryRanges []RecoveryRange `json:"recoveryRanges,omitempty"`

	// Restore is the progress of the restore, for a resource with restoreTo.
	// +optional
	Restore *RestoreStatus `json:"restore,omitempty"`

	// Drill is the drills of spec.drill.
	// +optional
	Drill *DrillStatus `json:"drill,omitempty"`
}

// KeycloakBackup asks for a base backup, a schedule of base backups, or an in-place
// point-in-time restore of the PostgreSQL database behind Keycloak, or records one base
// backup a schedule took (spec.backupID). Deleting it never deletes archived data.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=kcb;kcbackup
// +kubebuilder:printcolumn:name="Workload",type=string,JSONPath=`.status.instance.name`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Step",type=string,JSONPath=`.status.restore.step`
// +kubebuilder:printcolumn:name="Backup Time",type=date,JSONPath=`.status.backup.stopTime`
// +kubebuilder:printcolumn:name="Size",type=string,JSONPath=`.status.backup.size`
// +kubebuilder:printcolumn:name="Instance",type=string,JSONPath=`.spec.into.name`,priority=1
// +kubebuilder:printcolumn:name="From",type=string,JSONPath=`.spec.from`,priority=1
// +kubebuilder:printcolumn:name="Window From",type=string,JSONPath=`.status.recoveryWindow.earliest`,priority=1
// +kubebuilder:printcolumn:name="Window To",type=string,JSONPath=`.status.recoveryWindow.latest`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type KeycloakBackup struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is what the user asks for.
	// +required
	Spec KeycloakBackupSpec `json:"spec"`

	// Status is what the operator observed and did.
	// +optional
	Status KeycloakBackupStatus `json:"status,omitempty"`
}

// KeycloakBackupList is a list of KeycloakBackup.
//
// +kubebuilder:object:root=true
type KeycloakBackupList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// Items are the KeycloakBackups.
	Items []KeycloakBackup `json:"items"`
}

func init() {
	SchemeBuilder.Register(&KeycloakBackup{}, &KeycloakBackupList{})
}
