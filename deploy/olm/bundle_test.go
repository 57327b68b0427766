package olm

import (
	"bytes"
	"flag"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/operator-framework/api/pkg/manifests"
	operatorsv1alpha1 "github.com/operator-framework/api/pkg/operators/v1alpha1"
	"github.com/operator-framework/api/pkg/validation"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "copy the CRD from deploy/crd into the bundle")

const (
	bundleDir = "bundle"
	crdFile   = "keycloak.org_keycloakbackups.yaml"
)

// TestBundleValidates runs the operator-framework's validators (those of operator-sdk bundle
// validate --select-optional suite=operatorframework) on the bundle, for the Kubernetes
// release kcbackup needs; any error or warning fails.
func TestBundleValidates(t *testing.T) {
	bundle := loadBundle(t)
	validators := validation.DefaultBundleValidators.WithValidators(
		validation.OperatorHubV2Validator,
		validation.StandardCapabilitiesValidator,
		validation.StandardCategoriesValidator,
		validation.GoodPracticesValidator,
		validation.AlphaDeprecatedAPIsValidator,
		validation.ObjectValidator,
	)
	objs := append(bundle.ObjectsToValidate(), bundle, map[string]string{"k8s-version": "1.36"})
	for _, result := range validators.Validate(objs...) {
		for _, e := range result.Errors {
			t.Errorf("%s: error: %s", result.Name, e)
		}
		for _, w := range result.Warnings {
			t.Errorf("%s: warning: %s", result.Name, w)
		}
	}
}

func TestBundleInstallModes(t *testing.T) {
	csv := loadBundle(t).CSV
	want := map[operatorsv1alpha1.InstallModeType]bool{
		operatorsv1alpha1.InstallModeTypeOwnNamespace:    true,
		operatorsv1alpha1.InstallModeTypeSingleNamespace: true,
		operatorsv1alpha1.InstallModeTypeMultiNamespace:  true, // --namespace takes olm.targetNamespaces' comma-separated list
		operatorsv1alpha1.InstallModeTypeAllNamespaces:   true,
	}
	got := map[operatorsv1alpha1.InstallModeType]bool{}
	for _, m := range csv.Spec.InstallModes {
		got[m.Type] = m.Supported
	}
	for mode, supported := range want {
		if s, ok := got[mode]; !ok || s != supported {
			t.Errorf("install mode %s: supported %v (listed %v), want %v", mode, s, ok, supported)
		}
	}
}

func TestBundleCRDIsDeploysCRD(t *testing.T) {
	want, err := os.ReadFile("../crd/" + crdFile)
	if err != nil {
		t.Fatal(err)
	}
	path := bundleDir + "/manifests/" + crdFile
	if *update {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from deploy/crd/%s: run make generate", path, crdFile)
	}
}

// TestBundleRBACIsDeploysRBAC: the CSV's permissions are exactly the operator's rules and
// its leader election rules from deploy/rbac, no more and no less.
func TestBundleRBACIsDeploysRBAC(t *testing.T) {
	spec := loadBundle(t).CSV.Spec.InstallStrategy.StrategySpec
	// Cluster-wide, only the reviews of /metrics' callers (deploy/rbac/metrics_auth.yaml).
	if len(spec.ClusterPermissions) != 1 {
		t.Fatalf("clusterPermissions %v: want one entry, the metrics reviews", spec.ClusterPermissions)
	}
	wantCluster := map[string]bool{"authentication.k8s.io/tokenreviews create": true, "authorization.k8s.io/subjectaccessreviews create": true}
	if got := permissions(spec.ClusterPermissions[0].Rules); !reflect.DeepEqual(got, wantCluster) {
		t.Errorf("clusterPermissions grant %v, want only %v", got, wantCluster)
	}
	if len(spec.Permissions) != 1 || spec.Permissions[0].ServiceAccountName != "kcbackup-operator" {
		t.Fatalf("permissions %v: want one entry, for kcbackup-operator", spec.Permissions)
	}
	got := permissions(spec.Permissions[0].Rules)
	want := map[string]bool{}
	for _, f := range []string{"../rbac/role.yaml", "../rbac/leader_election_role.yaml"} {
		var role struct{ Rules []rbacv1.PolicyRule }
		readYAML(t, f, &role)
		for p := range permissions(role.Rules) {
			want[p] = true
		}
	}
	for p := range want {
		if !got[p] {
			t.Errorf("the CSV lacks %s, which deploy/rbac grants", p)
		}
	}
	for p := range got {
		if !want[p] {
			t.Errorf("the CSV grants %s, which deploy/rbac does not", p)
		}
	}
}

// TestBundleImagesAreTheCSVVersion: the operator and the sidecar it injects run the CSV's
// version, and the operator watches the OperatorGroup's target namespaces.
func TestBundleImagesAreTheCSVVersion(t *testing.T) {
	csv := loadBundle(t).CSV
	tag := "v" + csv.Spec.Version.String()
	if csv.Name != "kcbackup."+tag || csv.Annotations["containerImage"] != "ghcr.io/kcbackup/kcbackup-operator:"+tag {
		t.Errorf("CSV %s, containerImage %s: want kcbackup.%s and the operator image of %s", csv.Name, csv.Annotations["containerImage"], tag, tag)
	}
	deps := csv.Spec.InstallStrategy.StrategySpec.DeploymentSpecs
	if len(deps) != 1 || len(deps[0].Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("want one Deployment with one container, got %d", len(deps))
	}
	c := deps[0].Spec.Template.Spec.Containers[0]
	if c.Image != "ghcr.io/kcbackup/kcbackup-operator:"+tag {
		t.Errorf("operator image %s, want ghcr.io/kcbackup/kcbackup-operator:%s", c.Image, tag)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = "fieldRef:" + e.ValueFrom.FieldRef.FieldPath
		}
	}
	if env["KCBACKUP_SIDECAR_IMAGE"] != "ghcr.io/kcbackup/kcbackup:"+tag {
		t.Errorf("KCBACKUP_SIDECAR_IMAGE %q, want ghcr.io/kcbackup/kcbackup:%s", env["KCBACKUP_SIDECAR_IMAGE"], tag)
	}
	if env["KCBACKUP_WATCH_NAMESPACE"] != "fieldRef:metadata.annotations['olm.targetNamespaces']" {
		t.Errorf("KCBACKUP_WATCH_NAMESPACE %q, want OLM's olm.targetNamespaces annotation", env["KCBACKUP_WATCH_NAMESPACE"])
	}
	if sc := deps[0].Spec.Template.Spec.SecurityContext; sc == nil || sc.RunAsUser != nil {
		t.Errorf("pod securityContext %+v: want no fixed user (OpenShift assigns one)", sc)
	}
}

func loadBundle(t *testing.T) *manifests.Bundle {
	t.Helper()
	b, err := manifests.GetBundleFromDir(bundleDir)
	if err != nil {
		t.Fatalf("load bundle: %v", err)
	}
	if b.CSV == nil {
		t.Fatal("the bundle has no ClusterServiceVersion")
	}
	return b
}

func readYAML(t *testing.T, file string, v any) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// permissions flattens rules into "group/resource verb" entries, the unit two sets of rules
// are compared in.
func permissions(rules []rbacv1.PolicyRule) map[string]bool {
	set := map[string]bool{}
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					key := g + "/" + res + " " + v
					if len(r.ResourceNames) > 0 {
						names := slices.Clone(r.ResourceNames)
						slices.Sort(names)
						key += " names=" + strings.Join(names, ",")
					}
					set[key] = true
				}
			}
		}
	}
	return set
}

// TestBundleUserRolesAreDeploys: the bundle's kcbackup-editor, kcbackup-viewer and
// kcbackup-metrics-reader ClusterRoles are deploy/rbac's, labels included.
func TestBundleUserRolesAreDeploys(t *testing.T) {
	deploy := map[string]rbacv1.ClusterRole{}
	for _, f := range []string{"../rbac/aggregate_roles.yaml", "../rbac/metrics_auth.yaml"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(b), "\n---\n") {
			var cr rbacv1.ClusterRole
			if err := yaml.Unmarshal([]byte(doc), &cr); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if cr.Kind == "ClusterRole" {
				deploy[cr.Name] = cr
			}
		}
	}
	for _, name := range []string{"kcbackup-editor", "kcbackup-viewer", "kcbackup-metrics-reader"} {
		var got rbacv1.ClusterRole
		readYAML(t, bundleDir+"/manifests/"+name+"_rbac.authorization.k8s.io_v1_clusterrole.yaml", &got)
		want, ok := deploy[name]
		if !ok || !reflect.DeepEqual(got.Rules, want.Rules) || !reflect.DeepEqual(got.Labels, want.Labels) {
			t.Errorf("bundle ClusterRole %s %+v differs from deploy/rbac's %+v", name, got, want)
		}
	}
}
