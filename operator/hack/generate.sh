#!/usr/bin/env bash
# Regenerates what controller-gen derives from the markers in api/ and operator/:
#   api/v1alpha1/zz_generated.deepcopy.go   (deepcopy functions)
#   deploy/crd/keycloak.org_keycloakbackups.yaml   (the CRD, with its OpenAPI and CEL validation)
#   deploy/rbac/role.yaml   (the operator's ClusterRole, from the +kubebuilder:rbac markers)
#
# Usage: operator/hack/generate.sh [OUTDIR]
# With OUTDIR, the same files are written under OUTDIR (same relative paths) instead of in
# the checkout, which is how the staleness test compares them.
set -euo pipefail

CONTROLLER_TOOLS_VERSION=v0.23.0

root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root}
mkdir -p "$out/api/v1alpha1" "$out/deploy/crd" "$out/deploy/rbac"
cd "$root"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
go run "sigs.k8s.io/controller-tools/cmd/controller-gen@$CONTROLLER_TOOLS_VERSION" \
  object:headerFile=operator/hack/boilerplate.go.txt \
  paths=./api/... \
  output:object:dir="$out/api/v1alpha1"
go run "sigs.k8s.io/controller-tools/cmd/controller-gen@$CONTROLLER_TOOLS_VERSION" \
  crd paths=./api/... output:crd:dir="$out/deploy/crd"
go run "sigs.k8s.io/controller-tools/cmd/controller-gen@$CONTROLLER_TOOLS_VERSION" \
  rbac:roleName=kcbackup-operator paths=./operator/... output:rbac:dir="$out/deploy/rbac"
