#!/bin/bash
# Entrypoint of the PostgreSQL 15 test image, like the official postgres image's: on first
# start it initialises $PGDATA (POSTGRES_PASSWORD, POSTGRES_USER, POSTGRES_DB,
# POSTGRES_INITDB_ARGS) and runs any /docker-entrypoint-initdb.d/*.sql or *.sh, then execs
# postgres. It runs as the postgres user (uid 999) or whatever non-root uid the pod sets: a
# uid without a passwd entry (OpenShift assigns one from the namespace's range) gets one
# through nss_wrapper while the database is initialised, as the official image does
# (initdb refuses to run as a user it cannot look up).
set -Eeuo pipefail
: "${PGDATA:=/var/lib/postgresql/data}"
if [ "${1:-}" = postgres ] || [ "${1:0:1}" = - ]; then
  [ "${1:-}" = postgres ] && shift
  if [ "$(id -u)" = 0 ]; then
    echo "refusing to run as root: set runAsUser (the postgres user is uid 999)" >&2
    exit 1
  fi
  mkdir -p "$PGDATA" && chmod 0700 "$PGDATA"
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
    if ! getent passwd "$(id -u)" >/dev/null; then
      nss=$(find /usr/lib -name libnss_wrapper.so -print -quit)
      if [ -z "$nss" ]; then
        echo "uid $(id -u) has no passwd entry and this image has no nss_wrapper: initdb cannot run" >&2
        exit 1
      fi
      NSS_WRAPPER_PASSWD=$(mktemp) NSS_WRAPPER_GROUP=$(mktemp)
      printf 'postgres:x:%s:%s:PostgreSQL:/var/lib/postgresql:/bin/false\n' "$(id -u)" "$(id -g)" >"$NSS_WRAPPER_PASSWD"
      printf 'postgres:x:%s:\n' "$(id -g)" >"$NSS_WRAPPER_GROUP"
      export LD_PRELOAD=$nss NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
    fi
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
      echo "PGDATA $PGDATA is empty and POSTGRES_PASSWORD is unset: set it to initialise the database" >&2
      exit 1
    fi
    pwfile=$(mktemp); printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    # shellcheck disable=SC2086
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" ${POSTGRES_INITDB_ARGS:-} -D "$PGDATA"
    rm -f "$pwfile"
    printf '\nhost all all all scram-sha-256\nhost replication all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
    printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.auto.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/var/run/postgresql" -w start
    if [ "$POSTGRES_DB" != postgres ]; then
      psql -v ON_ERROR_STOP=1 -h /var/run/postgresql -U "$POSTGRES_USER" -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
    fi
    for f in /docker-entrypoint-initdb.d/*; do
      case "$f" in
        *.sh) echo "running $f"; . "$f" ;;
        *.sql) echo "running $f"; psql -v ON_ERROR_STOP=1 -h /var/run/postgresql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -f "$f" ;;
      esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    unset LD_PRELOAD NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
  fi
  exec postgres "$@"
fi
exec "$@"
