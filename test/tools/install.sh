#!/usr/bin/env bash
# Builds the real components the tests start, once, into a cache outside the clone:
#   ${KCBACKUP_CACHE:-$HOME/.cache/kcbackup}/<name>-<version>
# A binary already in the cache is reused. Everything is built from the Go module proxy;
# nothing is downloaded from anywhere else.
#
# Usage: test/tools/install.sh [postgres] [minio] [etcd] [kube-apiserver] [kubectl] [envtest] [promtool]
#        (default: all of them)
set -euo pipefail

MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
ETCD_VERSION=v3.6.6
KUBE_VERSION=v1.37.2

CACHE=${KCBACKUP_CACHE:-$HOME/.cache/kcbackup}
mkdir -p "$CACHE"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

log() { printf '[install] %s\n' "$*" >&2; }

# build_in_wrapper NAME OUT PKG GOMOD_BODY: builds PKG inside a throwaway module whose go.mod is GOMOD_BODY.
build_in_wrapper() {
  local name=$1 out=$2 pkg=$3 body=$4 dir
  dir=$(mktemp -d)
  printf '%s\n' "$body" >"$dir/go.mod"
  printf 'package tools\n\nimport _ "%s"\n' "$pkg" >"$dir/tools.go"
  log "building $name (this takes a few minutes the first time)"
  (cd "$dir" && go mod tidy >/dev/null 2>&1 || true)
  if ! (cd "$dir" && go build -trimpath -o "$out.tmp" "$pkg"); then
    rm -rf "$dir" "$out.tmp"
    return 1
  fi
  rm -rf "$dir"
  mv "$out.tmp" "$out"
}

# build_kube_binary NAME PKG builds a command of k8s.io/kubernetes: that module requires its
# staging modules at v0.0.0 and replaces them with local directories, so a module outside
# the repository replaces each with its published v0.x release.
build_kube_binary() {
  local name=$1 pkg=$2 out="$CACHE/$1-$KUBE_VERSION" gomod staging replaces m
  [ -x "$out" ] && return 0
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  staging=$(awk '/^replace \(/{r=1;next} r&&/^\)/{r=0} r&&$1 ~ /^k8s\.io\//{print $1}' "$gomod" | sort -u)
  [ -n "$staging" ] || { log "no staging modules found in $gomod"; return 1; }
  replaces=""
  for m in $staging; do replaces+="	$m => $m v0.${KUBE_VERSION#v1.}"$'\n'; done
  build_in_wrapper "$name" "$out" "$pkg" "module kcbackup.local/${name}build

go 1.25

require k8s.io/kubernetes $KUBE_VERSION

replace (
$replaces)"
}

install_minio() {
  local out="$CACHE/minio-$MINIO_VERSION" dir
  [ -x "$out" ] && return 0
  dir=$(mktemp -d)
  log "building minio $MINIO_VERSION (about 2.5 minutes)"
  GOBIN="$dir" go install "github.com/minio/minio@$MINIO_VERSION"
  mv "$dir/minio" "$out"
  rm -rf "$dir"
}

install_etcd() {
  local out="$CACHE/etcd-$ETCD_VERSION"
  [ -x "$out" ] && return 0
  build_in_wrapper etcd "$out" go.etcd.io/etcd/server/v3 "module kcbackup.local/etcdbuild

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
}

install_kube_apiserver() { build_kube_binary kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver; }

# kubectl: the tests run `kubectl apply --dry-run=server -k deploy/` against envtest.
install_kubectl() { build_kube_binary kubectl k8s.io/kubernetes/cmd/kubectl; }

install_envtest() {
  install_etcd
  install_kube_apiserver
  local dir="$CACHE/envtest-$KUBE_VERSION-etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  ln -sf "$CACHE/kube-apiserver-$KUBE_VERSION" "$dir/kube-apiserver"
  ln -sf "$CACHE/etcd-$ETCD_VERSION" "$dir/etcd"
}

install_postgres() {
  [ -x /usr/lib/postgresql/15/bin/postgres ] && return 0
  log "installing postgresql-15 from Debian"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-contrib >/dev/null
}

install_promtool() {
  command -v promtool >/dev/null && return 0
  log "installing prometheus (for promtool) from Debian"
  (apt-get install -y -qq prometheus >/dev/null 2>&1) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(postgres minio envtest kubectl promtool)
for t in "${targets[@]}"; do
  case $t in
    minio) install_minio ;;
    etcd) install_etcd ;;
    kube-apiserver) install_kube_apiserver ;;
    envtest) install_envtest ;;
    postgres) install_postgres ;;
    promtool) install_promtool ;;
    kubectl) install_kubectl ;;
    *) log "unknown component $t (expected minio, etcd, kube-apiserver, kubectl, envtest, postgres, promtool)"; exit 2 ;;
  esac
done
