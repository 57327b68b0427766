package controller

// A new instance in another namespace (spec.into.namespace). That namespace must accept
// restores from the resource's (AcceptRestoresAnnotation), since the operator creates a
// pod there holding copies of the archive's credentials. The copies go into one Secret
// (<name>-kcbackup-storage); every other Secret and ConfigMap the pod template names must
// exist there already. Owner references cannot cross namespaces: the resource carries
// InstanceFinalizer, and its deletion deletes the instance (unless into.keep).

import (
	"context"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

// Reading the target namespace's acceptance, and the ConfigMaps its pod template names.
//
// +kubebuilder:rbac:groups="",resources=namespaces;configmaps,verbs=get

const (
	// AcceptRestoresAnnotation on a Namespace lists the namespaces (comma-separated) whose
	// KeycloakBackups may restore into a new instance there.
	AcceptRestoresAnnotation = "kcbackup.keycloak.org/accept-restores-from"
	// InstanceFinalizer is on a restore whose instance is in another namespace: its
	// deletion deletes the instance first (unless into.keep).
	InstanceFinalizer = "kcbackup.keycloak.org/remove-instance"
	// ReasonInstanceNamespaceNotAccepted: into.namespace does not accept restores from the
	// resource's namespace.
	ReasonInstanceNamespaceNotAccepted = "InstanceNamespaceNotAccepted"
)

// The keys of the copied credentials in <name>-kcbackup-storage.
const (
	copiedAccessKey     = "AWS_ACCESS_KEY_ID"
	copiedSecretKey     = "AWS_SECRET_ACCESS_KEY"
	copiedCA            = "ca.crt"
	copiedAgeIdentity   = "age-identity"
	copiedAgeRecipients = "age-recipients"
)

// instanceSpec is the spec the instance's pod and restore Job are built from: kb's, or,
// for an instance elsewhere, kb's with every Secret of the archive named by its copy.
func instanceSpec(kb *kcv1.KeycloakBackup) *kcv1.KeycloakBackupSpec {
	if !kb.IsClone() || !elsewhere(kb) {
		return &kb.Spec
	}
	s := kb.Spec.DeepCopy()
	name := namesOf(kb).storage
	if s3 := s.Storage.S3; s3 != nil {
		if s3.CredentialsSecret != nil {
			s3.CredentialsSecret = &kcv1.S3CredentialsSecret{Name: name, AccessKeyIDKey: copiedAccessKey, SecretAccessKeyKey: copiedSecretKey}
		}
		if s3.CASecret != nil {
			s3.CASecret = &kcv1.SecretKey{Name: name, Key: copiedCA}
		}
	}
	if e := s.Encryption; e != nil {
		if e.IdentitySecret != nil {
			e.IdentitySecret = &kcv1.SecretKey{Name: name, Key: copiedAgeIdentity}
		}
		if e.RecipientsSecret != nil {
			e.RecipientsSecret = &kcv1.SecretKey{Name: name, Key: copiedAgeRecipients}
		}
	}
	s.Postgres.PasswordSecret = nil // only the operator connects, with the Secret of kb's namespace
	return s
}

// checkElsewhere refuses, before anything is created, an instance in a namespace that
// does not accept restores from kb's, an archive that cannot be read from there, or a pod
// template naming a Secret or ConfigMap missing there. msg is empty when all is well.
func (r *Reconciler) checkElsewhere(ctx context.Context, kb *kcv1.KeycloakBackup, db workload) (reason, msg string, err error) {
	n := namesOf(kb)
	var ns corev1.Namespace
	if err := r.APIReader.Get(ctx, client.ObjectKey{Name: n.ns}, &ns); err != nil {
		if apierrors.IsNotFound(err) {
			return ReasonInstanceNamespaceNotAccepted, fmt.Sprintf("namespace %s (spec.into.namespace) does not exist", n.ns), nil
		}
		if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
			return ReasonInstanceNamespaceNotAccepted, fmt.Sprintf("this operator may not read namespace %s (%v): an operator installed for "+
				"some namespaces only (--namespace, a Role) cannot restore into another namespace", n.ns, err), nil
		}
		return "", "", fmt.Errorf("get namespace %s (spec.into.namespace): %w", n.ns, err)
	}
	accepted := false
	for _, a := range strings.Split(ns.Annotations[AcceptRestoresAnnotation], ",") {
		accepted = accepted || strings.TrimSpace(a) == kb.Namespace
	}
	if !accepted {
		return ReasonInstanceNamespaceNotAccepted, fmt.Sprintf("namespace %s does not accept restores from namespace %s: the operator would "+
			"create a pod there with copies of this archive's credentials. Annotate it (kubectl annotate namespace %s %s=%s) if it should",
			n.ns, kb.Namespace, n.ns, AcceptRestoresAnnotation, kb.Namespace), nil
	}
	if kb.Spec.Storage.Volume != nil {
		return ReasonInstanceUnsupported, fmt.Sprintf("the archive is on claim %s (storage.volume), which pods of namespace %s cannot mount: "+
			"restore into this namespace, or keep the archive on S3", kb.Spec.Storage.Volume.ClaimName, n.ns), nil
	}
	var missing []string
	for _, ref := range podTemplateRefs(&db.Template().Spec) {
		var obj client.Object = &corev1.Secret{}
		if ref.kind == "ConfigMap" {
			obj = &corev1.ConfigMap{}
		}
		err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: n.ns, Name: ref.name}, obj)
		if apierrors.IsNotFound(err) && !ref.optional {
			missing = append(missing, ref.kind+" "+ref.name)
			continue
		}
		if err != nil && !apierrors.IsNotFound(err) {
			return "", "", fmt.Errorf("get %s %s in namespace %s: %w", ref.kind, ref.name, n.ns, err)
		}
	}
	if len(missing) > 0 {
		return ReasonInstanceUnsupported, fmt.Sprintf("the pod template of %s names %s, missing in namespace %s: create them there "+
			"(the operator copies only the archive's credentials)", db, strings.Join(missing, ", "), n.ns), nil
	}
	return "", "", nil
}

// templateRef is a Secret or ConfigMap a pod template names.
type templateRef struct {
	kind, name string
	optional   bool
}

// podTemplateRefs lists the Secrets and ConfigMaps spec names, but the operator's own
// volumes (the instance brings its own).
func podTemplateRefs(spec *corev1.PodSpec) []templateRef {
	var refs []templateRef
	add := func(kind, name string, optional *bool) {
		ref := templateRef{kind, name, optional != nil && *optional}
		if name != "" && !slices.Contains(refs, ref) {
			refs = append(refs, ref)
		}
	}
	for _, v := range spec.Volumes {
		switch {
		case ownedVolumes[v.Name]:
		case v.Secret != nil:
			add("Secret", v.Secret.SecretName, v.Secret.Optional)
		case v.ConfigMap != nil:
			add("ConfigMap", v.ConfigMap.Name, v.ConfigMap.Optional)
		}
	}
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		if c.Name == SidecarContainerName || c.Name == BinaryInitContainerName {
			continue
		}
		for _, e := range c.Env {
			if f := e.ValueFrom; f != nil && f.SecretKeyRef != nil {
				add("Secret", f.SecretKeyRef.Name, f.SecretKeyRef.Optional)
			} else if f != nil && f.ConfigMapKeyRef != nil {
				add("ConfigMap", f.ConfigMapKeyRef.Name, f.ConfigMapKeyRef.Optional)
			}
		}
		for _, e := range c.EnvFrom {
			if e.SecretRef != nil {
				add("Secret", e.SecretRef.Name, e.SecretRef.Optional)
			} else if e.ConfigMapRef != nil {
				add("ConfigMap", e.ConfigMapRef.Name, e.ConfigMapRef.Optional)
			}
		}
	}
	return refs
}

// storageCopy is the Secret of an instance elsewhere holding copies of the archive's
// credentials, read from kb's namespace.
func (r *Reconciler) storageCopy(ctx context.Context, kb *kcv1.KeycloakBackup) (*corev1.Secret, error) {
	data := map[string][]byte{}
	read := func(name, key, as string) error {
		var s corev1.Secret
		if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: kb.Namespace, Name: name}, &s); err != nil {
			return fmt.Errorf("read Secret %s to copy it into namespace %s: %w", name, namesOf(kb).ns, err)
		}
		v, ok := s.Data[key]
		if !ok {
			return fmt.Errorf("Secret %s has no key %q", name, key)
		}
		data[as] = v
		return nil
	}
	var err error
	if s3 := kb.Spec.Storage.S3; s3 != nil {
		if c := s3.CredentialsSecret; c != nil {
			err = read(c.Name, orDefault(c.AccessKeyIDKey, "AWS_ACCESS_KEY_ID"), copiedAccessKey)
			if err == nil {
				err = read(c.Name, orDefault(c.SecretAccessKeyKey, "AWS_SECRET_ACCESS_KEY"), copiedSecretKey)
			}
		}
		if c := s3.CASecret; c != nil && err == nil {
			err = read(c.Name, c.Key, copiedCA)
		}
	}
	if e := kb.Spec.Encryption; e != nil && err == nil {
		if e.IdentitySecret != nil {
			err = read(e.IdentitySecret.Name, e.IdentitySecret.Key, copiedAgeIdentity)
		}
		if e.RecipientsSecret != nil && err == nil {
			err = read(e.RecipientsSecret.Name, e.RecipientsSecret.Key, copiedAgeRecipients)
		}
	}
	if err != nil {
		return nil, err
	}
	return &corev1.Secret{ObjectMeta: r.instanceMeta(kb, namesOf(kb).storage), Type: corev1.SecretTypeOpaque, Data: data}, nil
}

// needsInstanceFinalizer: a restore whose instance, elsewhere, must go with it.
// It is added once the target is accepted (status.restore.instance is set), before anything
// is made there: a refused restore never carries it.
func needsInstanceFinalizer(kb *kcv1.KeycloakBackup) bool {
	return kb.IsClone() && elsewhere(kb) && !kb.Spec.Into.Keep && kb.Status.Restore != nil && kb.Status.Restore.Instance != nil
}

// removeInstanceElsewhere deletes the instance of a resource being deleted; done once none
// of its objects is left.
func (r *Reconciler) removeInstanceElsewhere(ctx context.Context, kb *kcv1.KeycloakBackup) (bool, error) {
	if !controllerutil.ContainsFinalizer(kb, InstanceFinalizer) || kb.Status.Restore == nil || kb.Status.Restore.Instance == nil {
		return true, nil // nothing was made there
	}
	if kb.Status.Restore.JobName == "" {
		kb.Status.Restore.JobName = restoreJobName(kb)
	}
	gone, err := r.deleteInstance(ctx, kb)
	if err != nil || !gone {
		n := namesOf(kb)
		why := "waiting for its objects to go"
		if err != nil {
			why = err.Error()
		}
		r.Recorder.Eventf(kb, nil, corev1.EventTypeWarning, "InstanceNotRemoved", "Remove",
			"deleting the new instance %s in namespace %s (%s); this resource stays until it is gone. To leave it: "+
				"kubectl delete sts,svc,pvc,secret,job -n %s -l %s=%s, or drop the finalizer: kubectl patch keycloakbackup %s -n %s --type=json "+
				"-p '[{\"op\":\"remove\",\"path\":\"/metadata/finalizers\"}]'", n.sts, n.ns, why, n.ns, instanceUIDLabel, kb.UID, kb.Name, kb.Namespace)
	}
	return gone, err
}
