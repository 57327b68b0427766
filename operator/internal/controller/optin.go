package controller

import (
	"fmt"
	"strings"

	"sigs.k8s.io/controller-runtime/pkg/client"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

// Opting a workload in. Creating a KeycloakBackup is a namespaced permission; without an
// opt-in, anyone allowed to create one could make the operator patch, scale or mount any
// Deployment or StatefulSet of the namespace. The workload's owner says yes with a label on
// the workload itself (on the Keycloak resource, for what the operator scales through it).
const (
	// OptInLabel on a workload (the PostgreSQL Deployment or StatefulSet, or the topmost
	// owner a restore scales, such as a Keycloak resource), "true": the operator may patch,
	// scale and mount it.
	OptInLabel = "kcbackup.keycloak.org/opt-in"
	// OptInValue is OptInLabel's one accepted value.
	OptInValue = "true"

	// ReasonWorkloadNotOptedIn (condition InstanceResolved False, or a restore refused): the
	// workload does not carry OptInLabel, and the operator requires it.
	ReasonWorkloadNotOptedIn = "WorkloadNotOptedIn"
)

// optedIn reports whether the object carries the opt-in label, or the operator does not
// require it.
func (r *Reconciler) optedIn(obj client.Object) bool {
	return r.AllowWorkloadsWithoutOptIn || obj.GetLabels()[OptInLabel] == OptInValue
}

// notOptedInMessage says which object lacks the label and what it would have let the
// operator do.
func notOptedInMessage(kb *kcv1.KeycloakBackup, what, action string) string {
	return fmt.Sprintf("%s in namespace %s does not carry the label %s=%q, so the operator does not %s it: label it "+
		"(kubectl label -n %s %s %s=%s) if this KeycloakBackup may act on it, or run the operator with "+
		"--require-workload-opt-in=false", what, kb.Namespace, OptInLabel, OptInValue, action, kb.Namespace, kubectlName(what), OptInLabel, OptInValue)
}

// kubectlName turns "Kind/name" into what kubectl takes ("kind/name").
func kubectlName(what string) string {
	kind, name, ok := strings.Cut(what, "/")
	if !ok {
		return what
	}
	return strings.ToLower(kind) + "/" + name
}
