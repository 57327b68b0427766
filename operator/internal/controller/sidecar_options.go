package controller

// What spec.sidecar and spec.encryption ask of the kcbackup sidecar, mapped to its
// environment (every flag of kcbackup is also KCBACKUP_<FLAG>, see `kcbackup --help`), its
// resources and the volume that carries the age keys. buildSidecar (sidecar.go) calls
// applySidecarOptions once the sidecar is built; the restore Job gets the identity through
// restoreEncryption.

import (
	"slices"

	corev1 "k8s.io/api/core/v1"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

// The age keys, as files in the containers that use them.
const (
	// encryptionVolume is a projected volume of the Secret keys spec.encryption names.
	encryptionVolume   = "kcbackup-encryption"
	encryptionMountDir = "/var/run/kcbackup/encryption"
	recipientsFileName = "recipients"
	identityFileName   = "identity"
)

// applySidecarOptions sets on the sidecar what the spec asks beyond storage and connection:
//
//   - the log format (KCBACKUP_LOG_FORMAT, --log-format): spec.sidecar.logFormat, json by
//     default, so a cluster's log pipeline parses it;
//   - synchronous archiving (KCBACKUP_PARTIAL_INTERVAL=0, --partial-interval 0): the tail
//     of the current segment is uploaded as soon as WAL arrives; PostgreSQL's
//     synchronous_standby_names, which makes commits wait for it, is the user's to set;
//   - the container's resources, replacing the default requests;
//   - the age keys (KCBACKUP_ENCRYPTION_RECIPIENT_FILE, KCBACKUP_ENCRYPTION_KEY_FILE),
//     mounted read-only from their Secrets.
func applySidecarOptions(spec *kcv1.KeycloakBackupSpec, s *sidecarSpec) {
	c := &s.Container
	o := spec.Sidecar
	if o == nil {
		o = &kcv1.SidecarOptions{}
	}
	format := kcv1.LogFormatJSON
	if o.LogFormat != "" {
		format = o.LogFormat
	}
	c.Env = append(c.Env, corev1.EnvVar{Name: "KCBACKUP_LOG_FORMAT", Value: string(format)})
	if o.Synchronous {
		c.Env = append(c.Env, corev1.EnvVar{Name: "KCBACKUP_PARTIAL_INTERVAL", Value: "0s"})
	}
	if o.Resources != nil {
		c.Resources = *o.Resources.DeepCopy()
	}
	vol, mount, env := encryptionFiles(spec.Encryption, true)
	if vol == nil {
		return
	}
	c.Env = append(c.Env, env...)
	c.VolumeMounts = append(c.VolumeMounts, *mount)
	s.Volumes = append(s.Volumes, *vol)
}

// beforeSidecarOptions returns s as an operator without spec.sidecar built it: without the
// default log format. Only for a spec that sets neither spec.sidecar nor spec.encryption
// (ok false otherwise). A hold of a sidecar upgrade compares the running sidecar with it
// too, so the default this file adds does not count as a change beyond the image.
func beforeSidecarOptions(spec *kcv1.KeycloakBackupSpec, s sidecarSpec) (sidecarSpec, bool) {
	if spec.Sidecar != nil || spec.Encryption != nil {
		return s, false
	}
	c := s.Container
	c.Env = slices.DeleteFunc(slices.Clone(c.Env), func(e corev1.EnvVar) bool { return e.Name == "KCBACKUP_LOG_FORMAT" })
	s.Container = c
	return s, true
}

// restoreEncryption returns the volume, mount and environment that give the restore Job
// the identity that reads an encrypted archive (nil volume: none is configured). The Job
// never gets the recipients: it does not write to the archive.
func restoreEncryption(e *kcv1.Encryption) (*corev1.Volume, *corev1.VolumeMount, []corev1.EnvVar) {
	return encryptionFiles(e, false)
}

// encryptionFiles projects the Secret keys of e into one volume: the identity, and with
// recipients the recipients too. It returns nil when there is nothing to mount.
func encryptionFiles(e *kcv1.Encryption, recipients bool) (*corev1.Volume, *corev1.VolumeMount, []corev1.EnvVar) {
	if e == nil {
		return nil, nil, nil
	}
	var sources []corev1.VolumeProjection
	var env []corev1.EnvVar
	add := func(ref *kcv1.SecretKey, file, envName string) {
		sources = append(sources, corev1.VolumeProjection{Secret: &corev1.SecretProjection{
			LocalObjectReference: corev1.LocalObjectReference{Name: ref.Name},
			Items:                []corev1.KeyToPath{{Key: ref.Key, Path: file}},
		}})
		env = append(env, corev1.EnvVar{Name: envName, Value: encryptionMountDir + "/" + file})
	}
	if recipients && e.RecipientsSecret != nil {
		add(e.RecipientsSecret, recipientsFileName, "KCBACKUP_ENCRYPTION_RECIPIENT_FILE")
	}
	if e.IdentitySecret != nil {
		add(e.IdentitySecret, identityFileName, "KCBACKUP_ENCRYPTION_KEY_FILE")
	}
	if len(sources) == 0 {
		return nil, nil, nil
	}
	return &corev1.Volume{Name: encryptionVolume, VolumeSource: corev1.VolumeSource{
			Projected: &corev1.ProjectedVolumeSource{Sources: sources}}},
		&corev1.VolumeMount{Name: encryptionVolume, MountPath: encryptionMountDir, ReadOnly: true},
		env
}
