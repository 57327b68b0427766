#!/usr/bin/env bash
# Builds what the single-node cluster test (test/cluster) needs, once, into the cache outside the clone:
#   $KCBACKUP_CACHE/cluster-bin-v1.37.2/   kubelet, kube-controller-manager, kube-scheduler
#   $KCBACKUP_CACHE/cluster-containerd-v2.2.9/  containerd, containerd-shim-runc-v2, ctr
#   $KCBACKUP_CACHE/cluster-images/        pause, postgres15, postgres15-anyuid, keycloak stand-in (docker-archive tars)
#   $KCBACKUP_CACHE/cluster-images/kcbackup-<hash>.tar, kcbackup-operator-<hash>.tar: built from
#     Dockerfile.sidecar / Dockerfile.operator with buildah; <hash> covers the sources, so a change rebuilds them.
# kube-apiserver, kubectl and etcd come from test/tools/install.sh (called here when missing).
#
# Usage: test/cluster/build.sh [debs] [kube-deps] [kube] [containerd] [images] [kcbackup-images]   (default: all)
#
# Versions it needs (pinned): Kubernetes v1.37.2 and containerd v2.2.9 built from the Go module
# proxy, etcd v3.6.6; Debian bookworm's runc 1.1.5, containernetworking-plugins 1.1.1, buildah 1.28,
# debootstrap. This VM has cgroup v1 (deprecated in containerd 2.2 and Kubernetes).
set -euo pipefail

KUBE_VERSION=v1.37.2
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${KCBACKUP_CACHE:-$HOME/.cache/kcbackup}
BIN="$CACHE/cluster-bin-$KUBE_VERSION"
IMG="$CACHE/cluster-images"
mkdir -p "$BIN" "$IMG"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

log() { printf '[cluster-build] %s\n' "$*" >&2; }

# One build at a time on a cache: two (a CI clone beside a developer's run) deleted each other's
# temporary and image files (seen: "mv: cannot stat ....tar.tmp", then ErrImageNeverPull).
exec 9>"$CACHE/cluster-build.lock"
if ! flock -n 9; then
  log "waiting for another build using $CACHE"
  flock 9
fi

install_debs() {
  local want=(runc containernetworking-plugins buildah debootstrap iproute2 util-linux) missing=() p
  for p in "${want[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing from Debian: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The same wrapper-module method as build_kube_binary in test/tools/install.sh: k8s.io/kubernetes
# replaces its staging modules with local directories, so a module outside the repository replaces
# each with its published v0.x release. All three commands are built in one go build (shared packages
# compile once), with the version string kubectl can parse.
build_kube() {
  local cmds=(kubelet kube-controller-manager kube-scheduler) todo=() c gomod staging replaces="" m dir pkgs=()
  for c in "${cmds[@]}"; do [ -x "$BIN/$c" ] || todo+=("$c"); done
  [ ${#todo[@]} -eq 0 ] && return 0
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  staging=$(awk '/^replace \(/{r=1;next} r&&/^\)/{r=0} r&&$1 ~ /^k8s\.io\//{print $1}' "$gomod" | sort -u)
  [ -n "$staging" ] || { log "no staging modules found in $gomod"; return 1; }
  for m in $staging; do replaces+="	$m => $m v0.${KUBE_VERSION#v1.}"$'\n'; done
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' RETURN
  printf 'module kcbackup.local/clusterbuild\n\ngo 1.25\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n%s)\n' "$KUBE_VERSION" "$replaces" >"$dir/go.mod"
  { printf '//go:build tools\n\npackage tools\n\nimport (\n'; for c in "${todo[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"; pkgs+=("k8s.io/kubernetes/cmd/$c"); done; printf ')\n'; } >"$dir/tools.go"
  log "building ${todo[*]} $KUBE_VERSION (20-30 minutes cold on 2 cores)"
  (cd "$dir" && go mod tidy -e >/dev/null 2>&1 || true)
  mkdir -p "$dir/out"
  (cd "$dir" && go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2)" -o out/ "${pkgs[@]}")
  for c in "${todo[@]}"; do mv "$dir/out/$c" "$BIN/$c"; done
}

# containerd 2: Debian's containerd 1.6 cannot mount image volumes (CRI Mount.image), which
# the operator uses to give PostgreSQL and the restore Job the kcbackup binary. Built from the
# Go module proxy, CGO_ENABLED=0 (no btrfs snapshotter), with its runc shim and ctr.
CONTAINERD_VERSION=v2.2.9
CONTAINERD_DIR="$CACHE/cluster-containerd-$CONTAINERD_VERSION"
build_containerd() {
  local c tmp="$CONTAINERD_DIR.tmp"
  [ -x "$CONTAINERD_DIR/containerd" ] && [ -x "$CONTAINERD_DIR/containerd-shim-runc-v2" ] && [ -x "$CONTAINERD_DIR/ctr" ] && return 0
  log "building containerd $CONTAINERD_VERSION (a few minutes)"
  rm -rf "$tmp"; mkdir -p "$tmp"
  local pkgs=()
  for c in containerd containerd-shim-runc-v2 ctr; do pkgs+=("github.com/containerd/containerd/v2/cmd/$c@$CONTAINERD_VERSION"); done
  GOBIN="$tmp" go install -trimpath -tags no_btrfs \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" "${pkgs[@]}"
  rm -rf "$CONTAINERD_DIR"; mv "$tmp" "$CONTAINERD_DIR"
}

# buildah keeps its own storage in the cache, never in /var/lib/containers. runc, not crun:
# crun refuses this machine's hybrid cgroup layout.
BUILDAH_ROOT="$CACHE/cluster-buildah"
bh() { buildah --root "$BUILDAH_ROOT/storage" --runroot "$BUILDAH_ROOT/run" --storage-driver vfs "$@"; }
# bud NAME CONTEXT CONTAINERFILE [buildah bud options...]: builds NAME with no network and no pull.
bud() {
  local name=$1 ctx=$2 file=$3; shift 3
  bh bud --quiet --runtime /usr/sbin/runc --network none --pull-never --layers=false -f "$file" -t "$name" "$@" "$ctx" >/dev/null
}
# save NAME FILE: writes NAME as a docker-archive tar (ctr images import keeps its name).
save() { rm -f "$2.tmp"; bh push --quiet "$1" "docker-archive:$2.tmp:$1" && mv "$2.tmp" "$2"; }

HERE="$ROOT/test/cluster/images"
ROOTFS_TAR="$IMG/bookworm-minbase.tar"

# bookworm_rootfs: debootstrap --variant=minbase bookworm, from Debian's archive (about 3 minutes).
bookworm_rootfs() {
  [ -s "$ROOTFS_TAR" ] && return 0
  local d="$IMG/work/bookworm"
  rm -rf "$d"; mkdir -p "$IMG/work"
  log "debootstrap --variant=minbase bookworm"
  debootstrap --variant=minbase bookworm "$d" http://deb.debian.org/debian >"$IMG/work/debootstrap.log" 2>&1 ||
    { log "debootstrap failed, see $IMG/work/debootstrap.log"; return 1; }
  rm -rf "$d/var/cache/apt/archives/"*.deb "$d/var/lib/apt/lists/"*
  tar --numeric-owner -C "$d" -cf "$ROOTFS_TAR.tmp" . && mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
  rm -rf "$d"
}

# postgres_rootfs: the bookworm root with postgresql-15 installed by apt in a chroot; the
# postgres user and group are 999 as in the official image.
postgres_rootfs() {
  local out="$IMG/postgres15-rootfs.tar" d="$IMG/work/pg"
  [ -s "$out" ] && return 0
  bookworm_rootfs
  rm -rf "$d"; mkdir -p "$d"; tar -C "$d" -xf "$ROOTFS_TAR"
  cp /etc/resolv.conf "$d/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' >"$d/usr/sbin/policy-rc.d"; chmod +x "$d/usr/sbin/policy-rc.d"
  mkdir -p "$d/etc/postgresql-common"; echo 'create_main_cluster = false' >"$d/etc/postgresql-common/createcluster.conf"
  log "installing postgresql-15 into the bookworm root"
  chroot "$d" /bin/bash -ec '
    groupadd -r postgres --gid=999
    useradd -r -g postgres --uid=999 --home-dir=/var/lib/postgresql --shell=/bin/bash postgres
    mkdir -p /var/lib/postgresql && chown postgres:postgres /var/lib/postgresql
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null
    apt-get clean; rm -rf /var/lib/apt/lists/*
    mkdir -p /var/run/postgresql /var/lib/postgresql/data
    chown -R postgres:postgres /var/run/postgresql /var/lib/postgresql
    chmod 2777 /var/run/postgresql; chmod 700 /var/lib/postgresql/data' >"$IMG/work/pg-apt.log" 2>&1 ||
    { log "installing postgresql-15 failed, see $IMG/work/pg-apt.log"; return 1; }
  rm -f "$d/usr/sbin/policy-rc.d" "$d/etc/resolv.conf"
  tar --numeric-owner -C "$d" -cf "$out.tmp" . && mv "$out.tmp" "$out"
  rm -rf "$d"
}

# build_images: pause, postgres15 and the Keycloak stand-in, and the stand-ins for the base
# images of Dockerfile.sidecar and Dockerfile.operator.
build_images() {
  local ctx="$IMG/work/ctx" b
  mkdir -p "$ctx"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$ctx/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$ctx/group"
  for b in pause keycloak-standin; do
    [ -s "$IMG/$b.tar" ] && continue
    log "image localhost/kcbackup-test/$b:1"
    (cd "$ROOT" && go build -trimpath -ldflags '-s -w' -o "$ctx/$b" "./test/cluster/$b")
    bud "localhost/kcbackup-test/$b:1" "$ctx" "$HERE/static.Containerfile" --build-arg "BIN=$b"
    save "localhost/kcbackup-test/$b:1" "$IMG/$b.tar"
  done
  if [ ! -s "$IMG/postgres15.tar" ]; then
    postgres_rootfs
    log "image localhost/kcbackup-test/postgres:15"
    ln -f "$IMG/postgres15-rootfs.tar" "$ctx/rootfs.tar"; install -m 0755 "$HERE/postgres-entrypoint.sh" "$ctx/"
    bud localhost/kcbackup-test/postgres:15 "$ctx" "$HERE/postgres.Containerfile"
    save localhost/kcbackup-test/postgres:15 "$IMG/postgres15.tar"
    rm -f "$ctx/rootfs.tar"
  fi
  postgres_anyuid_image
  base_images
}

# postgres_anyuid_image: localhost/kcbackup-test/postgres:15-anyuid, postgres:15 plus
# bookworm's nss_wrapper (apt-get download, the Debian package the image's root comes
# from), so that PostgreSQL initialises under a UID without a passwd entry, as OpenShift's
# restricted-v2 assigns (the OpenShift story).
postgres_anyuid_image() {
  local ctx="$IMG/work/ctx" d="$IMG/work/nss-wrapper"
  [ -s "$IMG/postgres15-anyuid.tar" ] && return 0
  bh inspect --type image localhost/kcbackup-test/postgres:15 >/dev/null 2>&1 ||
    bh pull --quiet "docker-archive:$IMG/postgres15.tar" >/dev/null
  log "image localhost/kcbackup-test/postgres:15-anyuid"
  rm -rf "$d"; mkdir -p "$d"
  (cd "$d" && { apt-get download -qq libnss-wrapper 2>/dev/null || { apt-get update -qq && apt-get download -qq libnss-wrapper; }; } &&
    dpkg-deb -x libnss-wrapper_*.deb root) || { log "could not get Debian's libnss-wrapper"; return 1; }
  (cd "$d/root" && tar --numeric-owner --owner=0 --group=0 -cf "$ctx/nss_wrapper.tar" $(find . -name 'libnss_wrapper.so*'))
  install -m 0755 "$HERE/postgres-entrypoint.sh" "$ctx/"
  bud localhost/kcbackup-test/postgres:15-anyuid "$ctx" "$HERE/postgres-anyuid.Containerfile"
  save localhost/kcbackup-test/postgres:15-anyuid "$IMG/postgres15-anyuid.tar"
  rm -rf "$d" "$ctx/nss_wrapper.tar"
}

# base_images: docker.io/library/golang:1.26-bookworm and gcr.io/distroless/static-debian12:nonroot
# in buildah's storage, made here: the bookworm root plus this machine's Go, and a root with
# only passwd, group, CA certificates and /tmp.
base_images() {
  local ctx="$IMG/work/ctx" d="$IMG/work/distroless"
  if ! bh inspect --type image docker.io/library/golang:1.26-bookworm >/dev/null 2>&1; then
    bookworm_rootfs
    log "stand-in image golang:1.26-bookworm (Go $(go env GOVERSION) from $(go env GOROOT))"
    ln -f "$ROOTFS_TAR" "$ctx/rootfs.tar"
    tar -C "$(dirname "$(go env GOROOT)")" -cf "$ctx/go.tar" "$(basename "$(go env GOROOT)")"
    bud docker.io/library/golang:1.26-bookworm "$ctx" "$HERE/golang.Containerfile"
    rm -f "$ctx/rootfs.tar" "$ctx/go.tar"
  fi
  if ! bh inspect --type image gcr.io/distroless/static-debian12:nonroot >/dev/null 2>&1; then
    log "stand-in image gcr.io/distroless/static-debian12:nonroot"
    rm -rf "$d"; mkdir -p "$d/etc/ssl/certs" "$d/tmp" "$d/home/nonroot"
    chmod 1777 "$d/tmp"; chown 65532:65532 "$d/home/nonroot"
    cp "$ctx/passwd" "$ctx/group" "$d/etc/"
    cp /etc/ssl/certs/ca-certificates.crt "$d/etc/ssl/certs/"
    tar --numeric-owner -C "$d" -cf "$ctx/distroless.tar" .
    bud gcr.io/distroless/static-debian12:nonroot "$ctx" "$HERE/distroless.Containerfile"
    rm -rf "$d" "$ctx/distroless.tar"
  fi
}

# source_hash: what the kcbackup images are built from (Dockerfiles, go.mod, go.sum, Go
# sources outside test/), so a changed source gets a new image.
source_hash() {
  (cd "$ROOT" && git ls-files -co --exclude-standard -- Dockerfile.sidecar Dockerfile.operator go.mod go.sum '*.go' |
    grep -v '^test/' | grep -v '_test\.go$' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
}

# kcbackup_images: the sidecar and operator images from Dockerfile.sidecar and
# Dockerfile.operator, with buildah against the stand-in base images. go mod download reads
# the host's module cache (filled by `go mod download` here); the Go build cache is kept in the
# cache directory, so a rebuild after a source change takes seconds.
kcbackup_images() {
  local h f name
  h=$(source_hash)
  base_images
  (cd "$ROOT" && go mod download)
  mkdir -p "$CACHE/cluster-gocache"
  for f in sidecar operator; do
    name=kcbackup; [ $f = operator ] && name=kcbackup-operator
    [ -s "$IMG/$name-$h.tar" ] && continue
    log "image localhost/$name:$h from Dockerfile.$f"
    bud "localhost/$name:$h" "$ROOT" "$ROOT/Dockerfile.$f" --build-arg "VERSION=cluster-$h" \
      -v "$(go env GOMODCACHE)/cache/download:/gomodproxy:ro" -v "$CACHE/cluster-gocache:/gocache"
    rm -f "$IMG/$name-"[0-9a-f]*.tar
    save "localhost/$name:$h" "$IMG/$name-$h.tar"
    bh rmi "localhost/$name:$h" >/dev/null 2>&1 || true
  done
  echo "$h" >"$IMG/kcbackup-images.hash"
}

# kube-apiserver, kubectl and etcd: the project's own cache entries, built by install.sh when missing.
kube_deps() {
  local need=() c
  for c in etcd-v3.6.6 kube-apiserver-$KUBE_VERSION kubectl-$KUBE_VERSION; do [ -x "$CACHE/$c" ] || need+=("${c%-v*}"); done
  [ ${#need[@]} -eq 0 ] || "$ROOT/test/tools/install.sh" "${need[@]}"
}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  # Everything: the long kube build runs beside the rest (debootstrap and apt mostly wait on the network).
  install_debs
  kube_deps
  build_kube &
  kube_pid=$!
  build_containerd
  build_images
  kcbackup_images
  wait "$kube_pid" || { log "building the kube binaries failed"; exit 1; }
  exit 0
fi
for t in "${targets[@]}"; do
  case $t in
    debs) install_debs ;;
    kube-deps) kube_deps ;;
    kube) build_kube ;;
    containerd) build_containerd ;;
    images) build_images ;;
    kcbackup-images) kcbackup_images ;;
    *) log "unknown target $t (expected debs, kube-deps, kube, containerd, images, kcbackup-images)"; exit 2 ;;
  esac
done
