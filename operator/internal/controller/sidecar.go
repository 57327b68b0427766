package controller

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

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

	tokenVolume   = "kcbackup-token"
	spoolVolume   = "kcbackup-spool"
	spoolMountDir = "/var/lib/kcbackup/spool"
	caVolume      = "kcbackup-ca"
	archiveVolume = "kcbackup-archive"
	imageVolume   = "kcbackup-image"
	imageMountDir = "/var/run/kcbackup/image"
	tokenMountDir = "/var/run/kcbackup/token"
	// fetchTokenVolume holds only the fetch-only token: the one token volume PostgreSQL's
	// container mounts.
	fetchTokenVolume = "kcbackup-fetch-token"
	// tokenFile is the token as restore_command reads it in PostgreSQL's container (where
	// the file holds the fetch-only token) and the admin token in the sidecar's.
	tokenFile = tokenMountDir + "/token"
	// fetchTokenFile is the fetch-only token in the sidecar's container.
	fetchTokenFile = tokenMountDir + "/fetch-token"
	caMountDir     = "/var/run/kcbackup/ca"
	archiveMountAt = "/var/lib/kcbackup/archive"

	// TokenKey is the key of the admin token in the token Secret: the operator's, opening
	// every /v1 endpoint of the sidecar. Only the sidecar's container mounts it.
	TokenKey = "token"
	// FetchTokenKey is the key of the fetch-only token in the token Secret: it opens only
	// GET /v1/wal, and is the only token PostgreSQL's container mounts (restore_command).
	FetchTokenKey = "fetch-token"

	// binaryInImage is where Dockerfile.sidecar installs the kcbackup binary.
	binaryInImage = "/usr/local/bin/kcbackup"
	// KcbackupPath is the kcbackup binary as both the PostgreSQL container and the restore
	// Job see it, through an image volume of the sidecar image. The restore Job runs it from
	// there, so the restore_command it writes (which names its own executable) works when
	// PostgreSQL runs it during recovery.
	KcbackupPath = imageMountDir + binaryInImage
	// binaryCopyDir is where DeliverByInitContainer mounts its emptyDir: KcbackupPath's directory.
	binaryCopyDir = imageMountDir + "/usr/local/bin"
)

// postgresEnvNames are storage variables earlier operator versions put into the PostgreSQL
// container; inject removes them, since restore_command now fetches through the sidecar.
var postgresEnvNames = map[string]bool{
	"KCBACKUP_STORAGE": true, "AWS_REGION": true, "AWS_ENDPOINT_URL_S3": true, "KCBACKUP_S3_FORCE_PATH_STYLE": true,
	"AWS_ACCESS_KEY_ID": true, "AWS_SECRET_ACCESS_KEY": true, "KCBACKUP_S3_CA_FILE": true,
}

// ownedVolumes are the pod volumes the operator adds and may replace.
var ownedVolumes = map[string]bool{tokenVolume: true, fetchTokenVolume: true, caVolume: true, archiveVolume: true, imageVolume: true, spoolVolume: true, encryptionVolume: true}

// BinaryDelivery says how the kcbackup binary reaches PostgreSQL's container (for
// restore_command) and the restore Job.
type BinaryDelivery string

// The ways the binary is delivered.
const (
	// DeliverByImageVolume mounts the sidecar image as an image volume (Kubernetes 1.36 or
	// later with a runtime that supports it, such as containerd 2).
	DeliverByImageVolume BinaryDelivery = "image-volume"
	// DeliverByInitContainer copies the binary into an emptyDir with an init container run
	// from the sidecar image, as CloudNativePG does: every Kubernetes version, OpenShift 4.
	DeliverByInitContainer BinaryDelivery = "init-container"
)

// BinaryInitContainerName is the init container that copies the binary in
// DeliverByInitContainer mode.
const BinaryInitContainerName = "kcbackup-binary"

// binarySource returns the volume that holds the kcbackup binary at KcbackupPath, the
// read-only mount of it, and (DeliverByInitContainer) the init container that fills it.
// Both ways put the binary at the same path, so a restore_command written in one mode
// works in the other.
func binarySource(image string, d BinaryDelivery) (corev1.Volume, corev1.VolumeMount, *corev1.Container) {
	mount := corev1.VolumeMount{Name: imageVolume, MountPath: imageMountDir, ReadOnly: true}
	if d != DeliverByInitContainer {
		return corev1.Volume{Name: imageVolume, VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{
			Reference: image, PullPolicy: corev1.PullIfNotPresent}}}, mount, nil
	}
	// The copy is ours alone: an emptyDir per pod, written once before anything else starts.
	// It is mounted where the binary's directory lies in the image volume's layout (copy-binary
	// wants DEST's directory to exist), so KcbackupPath is the same path either way.
	mount.MountPath = binaryCopyDir
	return corev1.Volume{Name: imageVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}, mount,
		&corev1.Container{
			Name:  BinaryInitContainerName,
			Image: image,
			// `kcbackup copy-binary DEST` copies its own executable to DEST (mode 0555,
			// through a temporary file, fsync and rename).
			Command:      []string{binaryInImage, "copy-binary", KcbackupPath},
			VolumeMounts: []corev1.VolumeMount{{Name: imageVolume, MountPath: binaryCopyDir}},
			Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("10m"),
				corev1.ResourceMemory: resource.MustParse("16Mi"),
			}},
			SecurityContext: restrictedSecurityContext(),
		}
}

// TokenSecretName is the name of the Secret holding the sidecar API tokens of a workload:
// the admin token (TokenKey) and the fetch-only token (FetchTokenKey).
func TokenSecretName(workloadName string) string { return workloadName + "-kcbackup-token" }

// Updating the token Secret adds the fetch-only token to a Secret an older operator made.
// +kubebuilder:rbac:groups="",resources=secrets,verbs=update

// ensureToken returns the workload's admin token, making the token Secret (owned by the
// workload, so it lives as long as the sidecar may) on first use with both tokens. A Secret
// without a usable fetch-only token (made by an older operator, or holding one equal to the
// admin token) gets a new one; the admin token is never changed, so the running sidecar
// keeps answering the operator.
func (r *Reconciler) ensureToken(ctx context.Context, kb *kcv1.KeycloakBackup, w workload) (string, error) {
	key := client.ObjectKey{Namespace: kb.Namespace, Name: TokenSecretName(w.Name())}
	var s corev1.Secret
	err := r.APIReader.Get(ctx, key, &s)
	if apierrors.IsNotFound(err) {
		return r.createTokenSecret(ctx, kb, w, key)
	}
	if err != nil {
		return "", fmt.Errorf("get token Secret %s: %w", key.Name, err)
	}
	admin := string(s.Data[TokenKey])
	if admin == "" {
		return "", fmt.Errorf("token Secret %s has no key %q", key.Name, TokenKey)
	}
	if fetch := string(s.Data[FetchTokenKey]); fetch != "" && fetch != admin {
		return admin, nil
	}
	fetch, err := newToken()
	if err != nil {
		return "", err
	}
	// The resourceVersion just read makes this update fail rather than overwrite a
	// concurrent change; the reconcile then starts over.
	s.Data[FetchTokenKey] = []byte(fetch)
	if err := r.Client.Update(ctx, &s); err != nil {
		return "", fmt.Errorf("add the fetch-only token to Secret %s: %w", key.Name, err)
	}
	r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, "FetchTokenAdded", "UpdateSecret",
		"added a fetch-only token (key %q) to Secret %s for %s: PostgreSQL's container now gets it instead of the admin token", FetchTokenKey, key.Name, w)
	return admin, nil
}

// createTokenSecret makes the token Secret with a new admin and a new fetch-only token.
func (r *Reconciler) createTokenSecret(ctx context.Context, kb *kcv1.KeycloakBackup, w workload, key client.ObjectKey) (string, error) {
	admin, err := newToken()
	if err != nil {
		return "", err
	}
	fetch, err := newToken()
	if err != nil {
		return "", err
	}
	gvk, err := r.Client.GroupVersionKindFor(w.Obj)
	if err != nil {
		return "", err
	}
	s := corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: key.Name, Namespace: key.Namespace,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "kcbackup-operator"},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: gvk.GroupVersion().String(), Kind: gvk.Kind, Name: w.Name(), UID: w.Obj.GetUID(),
			}},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{TokenKey: []byte(admin), FetchTokenKey: []byte(fetch)},
	}
	if err := r.Client.Create(ctx, &s); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return r.ensureToken(ctx, kb, w)
		}
		return "", fmt.Errorf("create token Secret %s: %w", key.Name, err)
	}
	r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, "TokenCreated", "CreateSecret",
		"created Secret %s holding the sidecar API tokens of %s", key.Name, w)
	return admin, nil
}

// newToken returns 32 random bytes, hex-encoded.
func newToken() (string, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("generate token: %w", err)
	}
	return hex.EncodeToString(raw), nil
}

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
	// BinaryCopy, when set, is the init container that copies the binary in before the
	// sidecar starts (DeliverByInitContainer).
	BinaryCopy *corev1.Container
	Volumes    []corev1.Volume
	// PostgresContainer gets PostgresEnv and PostgresMounts, so that restore_command
	// (kcbackup wal-fetch --sidecar, run by PostgreSQL during recovery) finds the binary and
	// the fetch-only token. It fetches WAL through the sidecar, so PostgreSQL's container
	// holds no storage settings or credentials, and no token that could back up, prune or
	// clean anything.
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
func buildSidecar(image string, delivery BinaryDelivery, spec *kcv1.KeycloakBackupSpec, workloadName string, loc dataLocation) (sidecarSpec, error) {
	env, err := storageEnv(&spec.Storage)
	if err != nil {
		return sidecarSpec{}, err
	}
	var pgEnv []corev1.EnvVar
	pg := spec.Postgres
	env = append(env,
		corev1.EnvVar{Name: "KCBACKUP_LISTEN", Value: ":" + strconv.Itoa(apiclient.DefaultPort)},
		corev1.EnvVar{Name: "KCBACKUP_TOKEN_FILE", Value: tokenFile},
		corev1.EnvVar{Name: "KCBACKUP_FETCH_TOKEN_FILE", Value: fetchTokenFile},
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
	binVol, binMount, binInit := binarySource(image, delivery)
	// PostgreSQL's container sees the fetch-only token at the path restore_command names
	// (tokenFile), so a restore_command written by an earlier version still works; the
	// sidecar's sees both tokens.
	pgMounts := []corev1.VolumeMount{binMount, {Name: fetchTokenVolume, MountPath: tokenMountDir, ReadOnly: true}}
	secretName := TokenSecretName(workloadName)
	vols = append(vols, binVol,
		corev1.Volume{Name: tokenVolume, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: secretName, Items: []corev1.KeyToPath{{Key: TokenKey, Path: "token"}, {Key: FetchTokenKey, Path: "fetch-token"}}}}},
		corev1.Volume{Name: fetchTokenVolume, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: secretName, Items: []corev1.KeyToPath{{Key: FetchTokenKey, Path: "token"}}}}})
	vols = append(vols, corev1.Volume{Name: spoolVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	mounts = append(mounts,
		corev1.VolumeMount{Name: spoolVolume, MountPath: spoolMountDir},
		corev1.VolumeMount{Name: tokenVolume, MountPath: tokenMountDir, ReadOnly: true},
		// The data volume, read-only, only to report disk usage.
		corev1.VolumeMount{Name: loc.Mount.Name, MountPath: loc.Mount.MountPath, SubPath: loc.Mount.SubPath, ReadOnly: true})
	s := sidecarSpec{
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
		BinaryCopy:        binInit,
		Volumes:           vols,
		PostgresContainer: loc.Container,
		PostgresEnv:       pgEnv,
		PostgresMounts:    pgMounts,
	}
	applySidecarOptions(spec, &s) // sidecar_options.go: spec.sidecar and spec.encryption
	return s, nil
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
		if c.Name != SidecarContainerName && c.Name != BinaryInitContainerName {
			inits = append(inits, c)
		}
	}
	if s.BinaryCopy != nil {
		inits = append(inits, *s.BinaryCopy)
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
