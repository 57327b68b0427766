package controller

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

// Names and paths of what the operator adds to the PostgreSQL pod template.
const (
	// SidecarContainerName is the name of the injected native sidecar.
	SidecarContainerName = "kcbackup"
	// SidecarHashAnnotation on the pod template holds the hash of the injected sidecar, so
	// the operator changes the template only when the sidecar it wants changes.
	SidecarHashAnnotation = "keycloak.org/kcbackup-sidecar"
	// SidecarLabel marks pod templates that carry the sidecar, so a PodMonitor can select
	// the pods to scrape.
	SidecarLabel = kcv1.SidecarPodLabel

	tokenVolume    = "kcbackup-token"
	spoolVolume    = "kcbackup-spool"
	spoolMountDir  = "/var/lib/kcbackup/spool"
	caVolume       = "kcbackup-ca"
	archiveVolume  = "kcbackup-archive"
	imageVolume    = "kcbackup-image"
	imageMountDir  = "/var/run/kcbackup/image"
	tokenMountDir  = "/var/run/kcbackup/token"
	tokenFile      = tokenMountDir + "/token"
	caMountDir     = "/var/run/kcbackup/ca"
	archiveMountAt = "/var/lib/kcbackup/archive"

	// TokenKey is the key of the token in the token Secret.
	TokenKey = "token"

	// binaryInImage is where Dockerfile.sidecar installs the kcbackup binary.
	binaryInImage = "/usr/local/bin/kcbackup"
	// KcbackupPath is the kcbackup binary as both the PostgreSQL container and the restore
	// Job see it, through an image volume of the sidecar image. The restore Job runs it from
	// there, so the restore_command it writes (which names its own executable) works when
	// PostgreSQL runs it during recovery.
	KcbackupPath = imageMountDir + binaryInImage
)

// postgresEnvNames are storage variables earlier operator versions put into the PostgreSQL
// container; inject removes them, since restore_command now fetches through the sidecar.
var postgresEnvNames = map[string]bool{
	"KCBACKUP_STORAGE": true, "AWS_REGION": true, "AWS_ENDPOINT_URL_S3": true, "KCBACKUP_S3_FORCE_PATH_STYLE": true,
	"AWS_ACCESS_KEY_ID": true, "AWS_SECRET_ACCESS_KEY": true, "KCBACKUP_S3_CA_FILE": true,
}

// ownedVolumes are the pod volumes the operator adds and may replace.
var ownedVolumes = map[string]bool{tokenVolume: true, caVolume: true, archiveVolume: true, imageVolume: true, spoolVolume: true}

// binaryVolume returns the image volume holding the kcbackup binary, and its mount.
func binaryVolume(image string) (corev1.Volume, corev1.VolumeMount) {
	return corev1.Volume{Name: imageVolume, VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{
			Reference: image, PullPolicy: corev1.PullIfNotPresent}}},
		corev1.VolumeMount{Name: imageVolume, MountPath: imageMountDir, ReadOnly: true}
}

// TokenSecretName is the name of the Secret holding the sidecar API token of a workload.
func TokenSecretName(workloadName string) string { return workloadName + "-kcbackup-token" }

// storageEnv returns the environment that tells kcbackup (daemon or restore) where the
// archive is and how to reach it. Credentials come from Secrets, never from values.
func storageEnv(st *kcv1.Storage) ([]corev1.EnvVar, error) {
	u, err := st.URL(archiveMountAt)
	if err != nil {
		return nil, err
	}
	env := []corev1.EnvVar{{Name: "KCBACKUP_STORAGE", Value: u}}
	if s3 := st.S3; s3 != nil {
		if s3.Region != "" {
			env = append(env, corev1.EnvVar{Name: "AWS_REGION", Value: s3.Region})
		}
		if s3.Endpoint != "" {
			env = append(env, corev1.EnvVar{Name: "AWS_ENDPOINT_URL_S3", Value: s3.Endpoint})
		}
		if s3.ForcePathStyle {
			env = append(env, corev1.EnvVar{Name: "KCBACKUP_S3_FORCE_PATH_STYLE", Value: "true"})
		}
		if c := s3.CredentialsSecret; c != nil {
			env = append(env,
				secretEnv("AWS_ACCESS_KEY_ID", c.Name, orDefault(c.AccessKeyIDKey, "AWS_ACCESS_KEY_ID")),
				secretEnv("AWS_SECRET_ACCESS_KEY", c.Name, orDefault(c.SecretAccessKeyKey, "AWS_SECRET_ACCESS_KEY")))
		}
		if s3.CASecret != nil {
			env = append(env, corev1.EnvVar{Name: "KCBACKUP_S3_CA_FILE", Value: caMountDir + "/" + s3.CASecret.Key})
		}
	}
	return env, nil
}

// storageVolumes returns the pod volumes and mounts the storage needs: the archive claim,
// or the CA bundle.
func storageVolumes(st *kcv1.Storage) ([]corev1.Volume, []corev1.VolumeMount) {
	switch {
	case st.Volume != nil:
		return []corev1.Volume{{Name: archiveVolume, VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: st.Volume.ClaimName}}}},
			[]corev1.VolumeMount{{Name: archiveVolume, MountPath: archiveMountAt}}
	case st.S3 != nil && st.S3.CASecret != nil:
		return []corev1.Volume{{Name: caVolume, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
				SecretName: st.S3.CASecret.Name, Items: []corev1.KeyToPath{{Key: st.S3.CASecret.Key, Path: st.S3.CASecret.Key}}}}}},
			[]corev1.VolumeMount{{Name: caVolume, MountPath: caMountDir, ReadOnly: true}}
	}
	return nil, nil
}

func secretEnv(name, secret, key string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: secret}, Key: key}}}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// restrictedSecurityContext is the container security context of everything the operator
// creates: non-root, read-only root filesystem, no privilege escalation, no capabilities.
func restrictedSecurityContext() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		RunAsNonRoot:             ptr.To(true),
		ReadOnlyRootFilesystem:   ptr.To(true),
		AllowPrivilegeEscalation: ptr.To(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// sidecarSpec is what the operator injects into a pod template: one native sidecar (an init
// container with restartPolicy Always, so it starts before PostgreSQL and stops after it)
// and its volumes.
type sidecarSpec struct {
	Container corev1.Container
	Volumes   []corev1.Volume
	// PostgresContainer gets PostgresEnv and PostgresMounts, so that restore_command
	// (kcbackup wal-fetch --sidecar, run by PostgreSQL during recovery) finds the binary and
	// the API token. It fetches WAL through the sidecar, so PostgreSQL's container holds no
	// storage settings or credentials.
	PostgresContainer string
	PostgresEnv       []corev1.EnvVar
	PostgresMounts    []corev1.VolumeMount
}

// Hash identifies the sidecar spec; it changes when anything injected changes.
func (s sidecarSpec) Hash() string {
	b, _ := json.Marshal(s)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:12])
}

// buildSidecar returns the sidecar for the workload whose data lies at loc.
func buildSidecar(image string, spec *kcv1.KeycloakBackupSpec, workloadName string, loc dataLocation) (sidecarSpec, error) {
	env, err := storageEnv(&spec.Storage)
	if err != nil {
		return sidecarSpec{}, err
	}
	var pgEnv []corev1.EnvVar
	pg := spec.Postgres
	env = append(env,
		corev1.EnvVar{Name: "KCBACKUP_LISTEN", Value: ":" + strconv.Itoa(apiclient.DefaultPort)},
		corev1.EnvVar{Name: "KCBACKUP_TOKEN_FILE", Value: tokenFile},
		corev1.EnvVar{Name: "KCBACKUP_PGDATA", Value: loc.DataDir},
		// The root filesystem is read-only: WAL waiting for upload goes to an emptyDir.
		corev1.EnvVar{Name: "KCBACKUP_SPOOL", Value: spoolMountDir},
		corev1.EnvVar{Name: "PGHOST", Value: "localhost"},
		corev1.EnvVar{Name: "PGPORT", Value: strconv.Itoa(int(orDefaultInt(pg.Port, 5432)))},
		corev1.EnvVar{Name: "PGUSER", Value: orDefault(pg.User, "postgres")},
	)
	if pg.PasswordSecret != nil {
		env = append(env, secretEnv("PGPASSWORD", pg.PasswordSecret.Name, pg.PasswordSecret.Key))
	}
	vols, mounts := storageVolumes(&spec.Storage)
	binVol, binMount := binaryVolume(image)
	pgMounts := []corev1.VolumeMount{binMount, {Name: tokenVolume, MountPath: tokenMountDir, ReadOnly: true}}
	vols = append(vols, binVol, corev1.Volume{Name: tokenVolume, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
		SecretName: TokenSecretName(workloadName), Items: []corev1.KeyToPath{{Key: TokenKey, Path: "token"}}}}})
	vols = append(vols, corev1.Volume{Name: spoolVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	mounts = append(mounts,
		corev1.VolumeMount{Name: spoolVolume, MountPath: spoolMountDir},
		corev1.VolumeMount{Name: tokenVolume, MountPath: tokenMountDir, ReadOnly: true},
		// The data volume, read-only, only to report disk usage.
		corev1.VolumeMount{Name: loc.Mount.Name, MountPath: loc.Mount.MountPath, SubPath: loc.Mount.SubPath, ReadOnly: true})
	return sidecarSpec{
		Container: corev1.Container{
			Name:          SidecarContainerName,
			Image:         image,
			Args:          []string{"run"},
			RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways),
			Env:           env,
			Ports: []corev1.ContainerPort{{
				Name: "metrics", ContainerPort: apiclient.DefaultPort, Protocol: corev1.ProtocolTCP,
			}},
			VolumeMounts: mounts,
			// Liveness only: a readiness probe would take the database out of its Service
			// whenever the archive is unreachable, turning a backup outage into a Keycloak one.
			LivenessProbe: &corev1.Probe{
				ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
					Path: "/healthz", Port: intstr.FromString("metrics"),
				}},
				PeriodSeconds: 20, TimeoutSeconds: 5, FailureThreshold: 3,
			},
			Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("50m"),
				corev1.ResourceMemory: resource.MustParse("64Mi"),
			}},
			SecurityContext: restrictedSecurityContext(),
		},
		Volumes:           vols,
		PostgresContainer: loc.Container,
		PostgresEnv:       pgEnv,
		PostgresMounts:    pgMounts,
	}, nil
}

func orDefaultInt(n, def int32) int32 {
	if n == 0 {
		return def
	}
	return n
}

// injected reports whether the template already carries exactly this sidecar.
func injected(t *corev1.PodTemplateSpec, s sidecarSpec) bool {
	if t.Annotations[SidecarHashAnnotation] != s.Hash() || t.Labels[SidecarLabel] != "true" {
		return false
	}
	for _, c := range t.Spec.InitContainers {
		if c.Name == SidecarContainerName {
			return true
		}
	}
	return false
}

// inject puts the sidecar into the template, replacing an older one, and leaves everything
// else as it was.
func inject(t *corev1.PodTemplateSpec, s sidecarSpec) {
	for i := range t.Spec.Containers {
		c := &t.Spec.Containers[i]
		if c.Name != s.PostgresContainer {
			continue
		}
		c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return postgresEnvNames[e.Name] })
		c.Env = append(c.Env, s.PostgresEnv...)
		c.VolumeMounts = slices.DeleteFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return ownedVolumes[m.Name] })
		c.VolumeMounts = append(c.VolumeMounts, s.PostgresMounts...)
	}
	var inits []corev1.Container
	for _, c := range t.Spec.InitContainers {
		if c.Name != SidecarContainerName {
			inits = append(inits, c)
		}
	}
	t.Spec.InitContainers = append(inits, s.Container)
	var vols []corev1.Volume
	for _, v := range t.Spec.Volumes {
		if !ownedVolumes[v.Name] {
			vols = append(vols, v)
		}
	}
	t.Spec.Volumes = append(vols, s.Volumes...)
	if t.Annotations == nil {
		t.Annotations = map[string]string{}
	}
	t.Annotations[SidecarHashAnnotation] = s.Hash()
	if t.Labels == nil {
		t.Labels = map[string]string{}
	}
	t.Labels[SidecarLabel] = "true"
}

// describeStorage names the storage for events and messages without any secret: its URL.
func describeStorage(st *kcv1.Storage) string {
	u, err := st.URL(archiveMountAt)
	if err != nil {
		return "invalid storage"
	}
	return u
}
