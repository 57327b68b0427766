// Package v1alpha1 is the v1alpha1 version of the keycloak.org API: the KeycloakBackup
// resource, which asks for base backups, backup schedules and in-place restores of the
// PostgreSQL database behind Keycloak.
//
// +kubebuilder:object:generate=true
// +groupName=keycloak.org
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of the resources in this package.
	GroupVersion = schema.GroupVersion{Group: "keycloak.org", Version: "v1alpha1"}

	// SchemeBuilder adds the types of this package to a scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types of this package to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
