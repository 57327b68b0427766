#!/usr/bin/env bash
# Writes a release of kcbackup into dist/ (make release VERSION=x.y.z):
#   kcbackup-vX.Y.Z.yaml             the install manifest: namespace, CRD, RBAC, operator, images pinned
#   kcbackup-monitoring-vX.Y.Z.yaml  PodMonitor, ServiceMonitor, PrometheusRule, dashboard (Prometheus Operator CRDs)
#   kcbackup-vX.Y.Z.oci.tar           the sidecar image ghcr.io/kcbackup/kcbackup:vX.Y.Z (OCI archive)
#   kcbackup-operator-vX.Y.Z.oci.tar  the operator image ghcr.io/kcbackup/kcbackup-operator:vX.Y.Z
#   kcbackup-vX.Y.Z-linux-amd64, kcbackup-operator-vX.Y.Z-linux-amd64   the static binaries
#   kubectl-kcbackup-vX.Y.Z-linux-amd64   the kubectl plugin (docs/kubectl-plugin.md)
#   kcbackup-X.Y.Z.tgz               the Helm chart (deploy/helm/kcbackup)
#   kcbackup-olm-bundle-vX.Y.Z.tgz   the OLM bundle (deploy/olm/bundle: CSV, CRD, metrics Service, metadata)
#   RELEASE_NOTES.md                 the version's section of CHANGELOG.md
#   SHA256SUMS                       sha256sum of every file above
#
# The images are built from Dockerfile.sidecar and Dockerfile.operator with buildah, with no
# network, as test/cluster/build.sh builds them: against the base images it makes in
# $KCBACKUP_CACHE/cluster-buildah (the stand-ins for golang:1.26-bookworm and
# distroless/static-debian12:nonroot on a machine that cannot pull, the real ones where
# they were pulled into that storage), with modules from the host's module cache. Needs root.
#
# Usage: deploy/release/release.sh VERSION   (0.3.0 or v0.3.0; tags, images and --version say v0.3.0)
# IMAGES=0 skips the images (the manifest, binaries and notes only, for a quick check).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${KCBACKUP_CACHE:-$HOME/.cache/kcbackup}
DIST=${DIST:-$ROOT/dist}
BUILDINFO=github.com/kcbackup/kcbackup/walarchive/buildinfo
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

log() { printf '[release] %s\n' "$*" >&2; }
die() { printf 'release: %s\n' "$*" >&2; exit 1; }

# Step 1: the version. Semantic versioning, with or without the leading v.
[ $# -eq 1 ] || die "usage: deploy/release/release.sh VERSION (such as 0.3.0)"
[[ $1 =~ ^v?([0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?)$ ]] ||
  die "VERSION \"$1\" is not a semantic version: expected x.y.z or x.y.z-pre (such as 0.3.0 or 0.3.0-rc.1)"
NUMBER=${BASH_REMATCH[1]}
TAG=v$NUMBER
REVISION=$(git -C "$ROOT" rev-parse HEAD)
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]; then
  log "the working tree has uncommitted changes: the build is stamped revision $REVISION-dirty"
  REVISION=$REVISION-dirty
fi
SIDECAR_IMAGE=ghcr.io/kcbackup/kcbackup:$TAG
OPERATOR_IMAGE=ghcr.io/kcbackup/kcbackup-operator:$TAG

# Step 2: the release notes, before anything is built: a version CHANGELOG.md does not
# describe is not released.
notes() {
  awk -v v="$NUMBER" '
    /^## / { if (found) exit; if ($0 ~ "^## \\[?" v "\\]?([ (]|$)") { found = 1 } }
    found { print }
    END { if (!found) exit 1 }' "$ROOT/CHANGELOG.md"
}
rm -rf "$DIST"; mkdir -p "$DIST/.work"
notes >"$DIST/RELEASE_NOTES.md" || die "CHANGELOG.md has no section \"## [$NUMBER]\": write the release's notes first"
log "$TAG at $REVISION"
if head -n 1 "$DIST/RELEASE_NOTES.md" | grep -qi unreleased; then
  log "CHANGELOG.md still calls $NUMBER unreleased: give it its date before publishing"
fi

# The chart's version and appVersion are the release's (Helm reads a chart's version from
# Chart.yaml, so it is set there, not here).
chart=$ROOT/deploy/helm/kcbackup/Chart.yaml
grep -qx "version: $NUMBER" "$chart" && grep -qx "appVersion: $TAG" "$chart" ||
  die "$chart must say version: $NUMBER and appVersion: $TAG"
csv=$ROOT/deploy/olm/bundle/manifests/kcbackup.clusterserviceversion.yaml
grep -qx "  name: kcbackup.$TAG" "$csv" && grep -qx "  version: $NUMBER" "$csv" ||
  die "$csv must be kcbackup.$TAG, version $NUMBER (and its images $TAG; make test-deploy checks them)"

# Step 3: the binaries, static, with the version and revision stamped in.
ldflags="-s -w -X $BUILDINFO.version=$TAG -X $BUILDINFO.revision=$REVISION"
(cd "$ROOT" && GOOS=linux GOARCH=amd64 go build -trimpath -ldflags "$ldflags" -o "$DIST/kcbackup-$TAG-linux-amd64" ./sidecar)
(cd "$ROOT" && GOOS=linux GOARCH=amd64 go build -trimpath -ldflags "$ldflags" -o "$DIST/kcbackup-operator-$TAG-linux-amd64" ./operator)
(cd "$ROOT" && GOOS=linux GOARCH=amd64 go build -trimpath -ldflags "$ldflags" -o "$DIST/kubectl-kcbackup-$TAG-linux-amd64" ./operator/kubectl-kcbackup)
"$DIST/kcbackup-$TAG-linux-amd64" --version | grep -q "kcbackup version $TAG (revision $REVISION," ||
  die "the sidecar binary does not say $TAG: $("$DIST/kcbackup-$TAG-linux-amd64" --version)"
"$DIST/kubectl-kcbackup-$TAG-linux-amd64" --version | grep -q "kubectl-kcbackup version $TAG (revision $REVISION," ||
  die "the kubectl plugin does not say $TAG: $("$DIST/kubectl-kcbackup-$TAG-linux-amd64" --version)"

# Step 4: the manifests. An overlay over deploy/release pins the operator's image and the
# sidecar image it injects (KCBACKUP_SIDECAR_IMAGE) to this version.
KUBECTL=$CACHE/kubectl-v1.37.2
[ -x "$KUBECTL" ] || "$ROOT/test/tools/install.sh" kubectl
overlay=$DIST/.work/overlay
mkdir -p "$overlay"
cat >"$overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$overlay" "$ROOT/deploy/release")
images:
  - name: ghcr.io/kcbackup/kcbackup-operator
    newTag: $TAG
patches:
  - target:
      kind: Deployment
      name: kcbackup-operator
    patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: kcbackup-operator
      spec:
        template:
          spec:
            containers:
              - name: operator
                env:
                  - name: KCBACKUP_SIDECAR_IMAGE
                    value: $SIDECAR_IMAGE
EOF
manifest=$DIST/kcbackup-$TAG.yaml
{ printf '# kcbackup %s: kubectl apply --server-side -f kcbackup-%s.yaml\n' "$TAG" "$TAG"; "$KUBECTL" kustomize "$overlay"; } >"$manifest"
{ printf '# kcbackup %s monitoring (needs the Prometheus Operator CRDs)\n' "$TAG"; "$KUBECTL" kustomize "$ROOT/deploy/release/monitoring"; } \
  >"$DIST/kcbackup-monitoring-$TAG.yaml"
if grep -nE 'image: .*:latest|value: .*:latest' "$manifest"; then die "$manifest still names a :latest image"; fi
grep -q "image: $OPERATOR_IMAGE\$" "$manifest" || die "$manifest does not run $OPERATOR_IMAGE"
grep -q "value: $SIDECAR_IMAGE\$" "$manifest" || die "$manifest does not inject $SIDECAR_IMAGE"

# Step 5: the images, as test/cluster/build.sh builds them (no network, no pull), each saved
# as an OCI archive under its release name.
BUILDAH_ROOT=$CACHE/cluster-buildah
bh() { buildah --root "$BUILDAH_ROOT/storage" --runroot "$BUILDAH_ROOT/run" --storage-driver vfs "$@"; }
# image_says_version ARCHIVE NAME: the binary in the image's layers prints this release's version.
image_says_version() {
  local dir=$DIST/.work/image-$2 b out
  rm -rf "$dir"; mkdir -p "$dir"
  tar -C "$dir" -xf "$1"
  for b in "$dir"/blobs/sha256/*; do tar -C "$dir" -xf "$b" "usr/local/bin/$2" 2>/dev/null || true; done
  [ -x "$dir/usr/local/bin/$2" ] || die "$1 holds no usr/local/bin/$2"
  out=$("$dir/usr/local/bin/$2" --version)
  [[ $out == *"$TAG (revision $REVISION,"* ]] || die "$2 in $1 says \"$out\", not $TAG at $REVISION"
  log "$(basename "$1"): $out"
}
if [ "${IMAGES:-1}" != 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "building the images needs root (buildah); IMAGES=0 skips them"
  "$ROOT/test/cluster/build.sh" debs images # buildah, and the base images Dockerfile.* start from
  (cd "$ROOT" && go mod download)
  mkdir -p "$CACHE/cluster-gocache"
  for file in sidecar operator; do
    name=kcbackup image=$SIDECAR_IMAGE
    [ $file = operator ] && name=kcbackup-operator image=$OPERATOR_IMAGE
    log "image $image from Dockerfile.$file"
    bh bud --quiet --runtime /usr/sbin/runc --network none --pull-never --layers=false \
      -f "$ROOT/Dockerfile.$file" -t "$image" --build-arg "VERSION=$TAG" --build-arg "REVISION=$REVISION" \
      -v "$(go env GOMODCACHE)/cache/download:/gomodproxy:ro" -v "$CACHE/cluster-gocache:/gocache" "$ROOT" >/dev/null
    bh push --quiet "$image" "oci-archive:$DIST/$name-$TAG.oci.tar:$image"
    bh rmi "$image" >/dev/null
    image_says_version "$DIST/$name-$TAG.oci.tar" "$name"
  done
fi

# Step 6: the Helm chart as helm package writes it (a gzipped tar of the chart's directory).
tar -C "$ROOT/deploy/helm" --owner=0 --group=0 --numeric-owner --sort=name --exclude='*.tmp' \
  -czf "$DIST/kcbackup-$NUMBER.tgz" kcbackup

# The OLM bundle (manifests/ and metadata/, as deploy/olm/bundle.Dockerfile packs them).
tar -C "$ROOT/deploy/olm/bundle" --owner=0 --group=0 --numeric-owner --sort=name -czf "$DIST/kcbackup-olm-bundle-$TAG.tgz" manifests metadata

# Step 7: checksums of everything in dist/.
rm -rf "$DIST/.work"
(cd "$DIST" && sha256sum -- * >SHA256SUMS)
log "wrote $DIST (tag the commit it was built from: git tag -a $TAG ${REVISION%-dirty}):"
(cd "$DIST" && ls -l)
