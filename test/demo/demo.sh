#!/usr/bin/env bash
# make demo: kcbackup's main job on the embedded default, start to finish, in plain words.
#
#   1. start a throwaway PostgreSQL (15, or KCBACKUP_PG_VERSION=16, 17, 18 or 19) and `kcbackup run`
#      archiving to file://./demo/archive
#   2. write data (a Keycloak-like user table and pgbench), take a base backup
#   3. make a mistake: DROP TABLE realm_user
#   4. restore to just before the mistake into a new data directory, start it, and show the
#      table is back; print the archive lag, backup size and restore time
#   5. check every stored object with the standard tools alone: `zstd -t`, and with
#      KCBACKUP_DEMO_ENCRYPT=1 (the archive encrypted with a new age key) `age -d | zstd -t`
#
# It leaves nothing running. Run as root it runs PostgreSQL and kcbackup as the postgres user.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PGV=${KCBACKUP_PG_VERSION:-15}
KCBACKUP=$ROOT/bin/kcbackup
DEMO=$ROOT/demo
CLIENT=/usr/lib/postgresql/15/bin # psql and pgbench of 15 talk to every supported server
[ -x "$KCBACKUP" ] || { echo "bin/kcbackup is missing: run make build" >&2; exit 1; }
[ -x "$CLIENT/postgres" ] || { echo "installing postgresql-15 (Debian)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null; }

# setpriv execs in place (unlike runuser), so a background PID is the program's own.
as_pg() { if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else "$@"; fi; }
case $PGV in
  15)
    PGBIN=${KCBACKUP_PG_BINDIR:-$CLIENT}
    run_pg() { as_pg "$@"; } ;;
  16)
    # The npm registry's portable build (test/tools/install.sh pg16-portable; built without
    # zstd, so `kcbackup backup` compresses in kcbackup), bind-mounted where the postgres user
    # can reach it, in a private mount namespace that lives as long as the server.
    [ "$(id -u)" = 0 ] || { echo "KCBACKUP_PG_VERSION=16 runs PostgreSQL from a bind mount: run as root" >&2; exit 1; }
    PORTABLE=${KCBACKUP_CACHE:-$HOME/.cache/kcbackup}/pg16-portable-16.14.0-beta.17/native
    [ -x "$PORTABLE/bin/postgres" ] || test/tools/install.sh pg16-portable
    MNT=/tmp/kcbackup-pg16-portable-16.14.0-beta.17
    mkdir -p "$MNT" && chmod 0755 "$MNT"
    PGBIN=$MNT/bin
    run_pg() {
      unshare --mount --propagation private -- sh -c 'P=$1 M=$2; shift 2
        mount --bind "$P" "$M" &&
        exec setpriv --reuid=postgres --regid=postgres --init-groups -- env LD_LIBRARY_PATH="$M/lib" "$@"' sh "$PORTABLE" "$MNT" "$@"
    } ;;
  17 | 18 | 19)
    # Debian's server of that version in the minimal root test/tools/install.sh builds, run
    # in a private mount namespace: the demo directory and bin/ at the same paths inside, so
    # restore_command and the data directories are valid on both sides.
    [ "$(id -u)" = 0 ] || { echo "KCBACKUP_PG_VERSION=$PGV runs PostgreSQL in a chroot: run as root" >&2; exit 1; }
    case $PGV in 17) suite=trixie ;; 18) suite=sid ;; 19) suite=sid-experimental ;; esac
    PGROOT=${KCBACKUP_CACHE:-$HOME/.cache/kcbackup}/pgroot-$PGV-$suite
    [ -x "$PGROOT/usr/lib/postgresql/$PGV/bin/postgres" ] || test/tools/install.sh "pgroot-$PGV"
    PGBIN=/usr/lib/postgresql/$PGV/bin
    run_pg() {
      mkdir -p "$PGROOT$DEMO" "$PGROOT$ROOT/bin"
      unshare --mount --propagation private -- sh -c 'R=$1 D=$2 B=$3; shift 3
        mount -t proc proc "$R/proc" && mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm" &&
        mount --bind "$D" "$R$D" && mount --bind "$B" "$R$B" &&
        exec chroot "$R" setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"' sh "$PGROOT" "$DEMO" "$ROOT/bin" "$@"
    } ;;
  *) echo "invalid KCBACKUP_PG_VERSION $PGV: expected 15, 16, 17, 18 or 19" >&2; exit 2 ;;
esac
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ms() { date +%s%3N; }

cleanup() {
  set +e
  [ -n "${SIDECAR_PID:-}" ] && kill "$SIDECAR_PID" 2>/dev/null && wait "$SIDECAR_PID" 2>/dev/null
  pkill -f -- "--spool $DEMO/spool" 2>/dev/null
  for d in "$DEMO/primary" "$DEMO/restored"; do
    [ -f "$d/postmaster.pid" ] && run_pg "$PGBIN/pg_ctl" -D "$d" -m fast stop >/dev/null 2>&1
  done
}
trap cleanup EXIT

rm -rf "$DEMO"
mkdir -p "$DEMO"
[ "$(id -u)" = 0 ] && chown postgres: "$DEMO"
PORT=$(free_port); RPORT=$(free_port); API=$(free_port)
export PGHOST=127.0.0.1 PGUSER=postgres PGDATABASE=postgres PGSSLMODE=disable
TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
for tool in zstd ${KCBACKUP_DEMO_ENCRYPT:+age age-keygen}; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install -y zstd age" >&2; exit 1; }
done
if [ "${KCBACKUP_DEMO_ENCRYPT:-}" = 1 ]; then
  age-keygen -o "$DEMO/key.txt" 2>/dev/null
  [ "$(id -u)" = 0 ] && chown postgres: "$DEMO/key.txt"
  export KCBACKUP_ENCRYPTION_KEY_FILE=$DEMO/key.txt
fi

step "1. Start PostgreSQL $PGV on port $PORT and the kcbackup sidecar archiving to file://$DEMO/archive"
run_pg "$PGBIN/initdb" -D "$DEMO/primary" -U postgres --auth=trust >/dev/null
cat >>"$DEMO/primary/postgresql.conf" <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DEMO'
track_commit_timestamp = on
CONF
run_pg "$PGBIN/pg_ctl" -D "$DEMO/primary" -l "$DEMO/primary.log" -w start >/dev/null
as_pg env PGPORT=$PORT KCBACKUP_TOKEN=$TOKEN "$KCBACKUP" run --storage "file://$DEMO/archive" \
  --listen 127.0.0.1:$API --spool "$DEMO/spool" >"$DEMO/sidecar.log" 2>&1 &
SIDECAR_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$API/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$API/readyz" >/dev/null || { cat "$DEMO/sidecar.log"; exit 1; }
say "sidecar ready: streaming WAL through the replication slot 'kcbackup'"

export PGPORT=$PORT
step "2. Write data and take a base backup"
"$CLIENT/psql" -qX -c "CREATE TABLE realm_user (id serial PRIMARY KEY, username text NOT NULL, created timestamptz DEFAULT now())" \
  -c "INSERT INTO realm_user (username) SELECT 'user' || g FROM generate_series(1, 1000) g"
"$CLIENT/pgbench" -q -i -s 5 >/dev/null 2>&1
say "realm_user: $("$CLIENT/psql" -qAtX -c 'SELECT count(*) FROM realm_user') rows; pgbench tables: 500000 accounts"
t0=$(ms)
BACKUP=$(as_pg env PGPORT=$PORT "$KCBACKUP" backup --storage "file://$DEMO/archive" 2>>"$DEMO/backup.log")
t1=$(ms)
SIZE=$("$KCBACKUP" list --storage "file://$DEMO/archive" --json | python3 -c 'import json,sys; b=json.load(sys.stdin)["backups"][-1]; print("%.1f MiB of data stored as %.1f MiB" % (b["dataBytes"]/2**20, b["sizeBytes"]/2**20))')
say "backup $BACKUP in $((t1 - t0)) ms: $SIZE (zstd)"
"$CLIENT/pgbench" -T 3 -c 2 >/dev/null 2>&1
"$CLIENT/psql" -qX -c "INSERT INTO realm_user (username) SELECT 'late-user' || g FROM generate_series(1, 234) g"
BEFORE=$("$CLIENT/psql" -qAtX -c 'SELECT count(*) FROM realm_user')
sleep 1
T=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
sleep 1

step "3. The mistake: DROP TABLE realm_user (just after $T)"
"$CLIENT/psql" -qX -c "DROP TABLE realm_user"
"$CLIENT/psql" -qX -c "SELECT count(*) FROM realm_user" 2>&1 | sed 's/^/   /' || true
sleep 1.5
LAG=$(curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$API/v1/status" | python3 -c 'import json,sys; s=json.load(sys.stdin); print("archive lag %.2f s, %d bytes (server %s, archived %s)" % (s["archiveLagSeconds"], s["archiveLagBytes"], s["serverFlushLSN"], s["archivedLSN"]))')
say "$LAG"

step "4. Restore to $T (just before the mistake) into $DEMO/restored"
"$KCBACKUP" list --storage "file://$DEMO/archive" | sed 's/^/   /'
t0=$(ms)
as_pg "$KCBACKUP" restore --storage "file://$DEMO/archive" --pgdata "$DEMO/restored" --to "$T" 2>&1 | sed 's/^/   /'
run_pg "$PGBIN/pg_ctl" -D "$DEMO/restored" -l "$DEMO/restored.log" -o "-p $RPORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$DEMO" -w -t 300 start >/dev/null
for _ in $(seq 600); do
  [ "$("$CLIENT/psql" -p $RPORT -qAtX -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ] && break; sleep 0.1
done
t1=$(ms)
AFTER=$("$CLIENT/psql" -p $RPORT -qAtX -c 'SELECT count(*) FROM realm_user')
say "restored and recovered in $((t1 - t0)) ms; the server promoted to timeline $("$CLIENT/psql" -p $RPORT -qAtX -c 'SELECT timeline_id FROM pg_control_checkpoint()')"
say "realm_user is back: $AFTER rows (it had $BEFORE before the DROP)"
[ "$AFTER" = "$BEFORE" ] || { echo "   expected $BEFORE rows" >&2; exit 1; }

step "5. Every stored object read by the standard tools alone"
checked=0
while IFS= read -r -d '' obj; do
  rel=${obj#"$DEMO/archive/"}
  if [ -n "${KCBACKUP_ENCRYPTION_KEY_FILE:-}" ] && [ "$rel" != identity.json ]; then
    age -d -i "$KCBACKUP_ENCRYPTION_KEY_FILE" "$obj" | zstd -q -t || { echo "   age -d | zstd -t fails on $rel" >&2; exit 1; }
  else
    zstd -q -t "$obj" || { echo "   zstd -t fails on $rel" >&2; exit 1; }
  fi
  checked=$((checked + 1))
done < <(find "$DEMO/archive" -type f ! -name '.kcbackup-tmp-*' -print0)
say "$checked objects pass ${KCBACKUP_ENCRYPTION_KEY_FILE:+age -d -i $DEMO/key.txt | }zstd -t"
zstd -q -d -c <"$DEMO/archive/identity.json" | sed -n 's/^/   identity.json: /p' | head -3

step "Done: everything is stopped; the files are under $DEMO (make clean removes them)"
