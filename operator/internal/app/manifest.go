package app

import (
	"errors"
	"fmt"
	"io"
	"os"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	kccontroller "github.com/kcbackup/kcbackup/operator/internal/controller"
)

// SidecarManifestOptions are the inputs of `kcbackup-operator sidecar-manifest`.
type SidecarManifestOptions struct {
	// ResourceFile is a KeycloakBackup in YAML or JSON.
	ResourceFile string
	// WorkloadFile is the PostgreSQL Deployment or StatefulSet in YAML or JSON.
	WorkloadFile string
	// SidecarImage is the kcbackup image, as the operator is configured with it.
	SidecarImage string
	// BinaryDelivery is image-volume or init-container, as the operator uses.
	BinaryDelivery string
}

// Validate names the first missing or bad option.
func (o SidecarManifestOptions) Validate() error {
	switch {
	case o.ResourceFile == "":
		return errors.New("--resource is required: a file holding the KeycloakBackup")
	case o.WorkloadFile == "":
		return errors.New("--workload is required: a file holding the PostgreSQL Deployment or StatefulSet")
	case o.SidecarImage == "":
		return errors.New("--sidecar-image (or KCBACKUP_SIDECAR_IMAGE) is required: the image the operator injects")
	case o.BinaryDelivery != string(kccontroller.DeliverByImageVolume) && o.BinaryDelivery != string(kccontroller.DeliverByInitContainer):
		return fmt.Errorf("--binary-delivery %q is not image-volume or init-container (say what the operator chose; it logs it at start)", o.BinaryDelivery)
	}
	return nil
}

// Run writes the strategic-merge patch that declares the sidecar to out.
func (o SidecarManifestOptions) Run(out io.Writer) error {
	if err := o.Validate(); err != nil {
		return err
	}
	var kb kcv1.KeycloakBackup
	if err := readObject(o.ResourceFile, &kb); err != nil {
		return err
	}
	if kb.Kind != "KeycloakBackup" {
		return fmt.Errorf("--resource %s holds a %q, want a KeycloakBackup", o.ResourceFile, kb.Kind)
	}
	if err := kb.Spec.Validate(); err != nil {
		return fmt.Errorf("--resource %s: %w", o.ResourceFile, err)
	}
	var meta struct{ Kind string }
	if err := readObject(o.WorkloadFile, &meta); err != nil {
		return err
	}
	var obj client.Object
	switch meta.Kind {
	case "Deployment":
		obj = &appsv1.Deployment{}
	case "StatefulSet":
		obj = &appsv1.StatefulSet{}
	default:
		return fmt.Errorf("--workload %s holds a %q, want a Deployment or a StatefulSet", o.WorkloadFile, meta.Kind)
	}
	if err := readObject(o.WorkloadFile, obj); err != nil {
		return err
	}
	patch, err := kccontroller.SidecarPatch(o.SidecarImage, kccontroller.BinaryDelivery(o.BinaryDelivery), &kb, obj)
	if err != nil {
		return err
	}
	b, err := yaml.Marshal(patch)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "# kcbackup sidecar for %s %s, KeycloakBackup %s (image %s, binary by %s).\n# Apply as a strategic-merge patch "+
		"(kustomize patches:) or copy into the manifest; the operator verifies it and never patches the workload.\n%s",
		meta.Kind, obj.GetName(), kb.Name, o.SidecarImage, o.BinaryDelivery, b)
	return err
}

// readObject decodes a YAML or JSON file (fields it does not know are ignored).
func readObject(path string, into any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(b, into); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
