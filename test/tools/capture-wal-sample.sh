#!/usr/bin/env bash
# Captures WAL samples for the scanner tests (walarchive/walscan_test.go) from a real server
# of one PostgreSQL major version, with what that version's pg_waldump prints for them.
#
# Usage: test/tools/capture-wal-sample.sh MAJOR [OUTDIR]     (MAJOR: 15 to 19; run as root)
#
# It makes a throwaway cluster with initdb --wal-segsize=1 (wal_recycle=off, so every new
# segment file is zero-filled and nothing old follows the last record; autovacuum=off, whose
# work on the new catalogs would otherwise fill segments with hint-bit page images under
# 18's default data checksums) and writes into OUTDIR
# (default walarchive/testdata):
#   pgMAJOR-segN-1MiB.head      first 16 KiB of segment N: three commits and one abort
#   pgMAJOR-segM-1MiB.head      first 64 KiB of segment M = N+1: one commit of a transaction with
#                               4500 subtransactions (about 18 KB, so it crosses at least
#                               two page boundaries), then the commit that drops a temp table
#   pgMAJOR-seg*-1MiB.waldump   what pg_waldump -r Transaction prints for that head (padded
#                               with zeros to the segment's size, TZ=UTC): its COMMIT and
#                               ABORT lines, with LSN, length and time (long subxact lists
#                               shortened, ASSIGNMENT lines left out), then the line that
#                               names the end of valid WAL
# N is 7, or the segment after the one initdb ended in when that is later (on 18, whose
# initdb writes about 8 MiB of WAL with data checksums on by default, N is 9).
# Each capture gives new times, so the tests name the values of the committed files.
#
# 15 runs from the host's packages; 17, 18 and 19 from the root filesystems test/tools/install.sh
# builds (pgroot-17, pgroot-18, pgroot-19), through unshare + chroot + setpriv as the test harness does.
# 16 runs from the portable build (install.sh pg16-portable), bind-mounted as the harness does,
# with 15's psql; it has no pg_waldump, so its oracle is its own pg_walinspect: for 16 the
# .waldump files are replaced by pg16-seg*-1MiB.walinspect, the COMMIT and ABORT records that
# pg_get_wal_records_info lists in the head, one "LSN|COMMIT or ABORT|time (UTC)" line each,
# then "# end of valid WAL: LSN" (the end of the last record in the segment).
set -euo pipefail

major=${1:?usage: $0 MAJOR [OUTDIR]}
outdir=$(realpath "${2:-$(dirname "$0")/../../walarchive/testdata}")
CACHE=${KCBACKUP_CACHE:-$HOME/.cache/kcbackup}
case $major in
  15) root="" ;;
  17) root="$CACHE/pgroot-17-trixie" ;;
  18) root="$CACHE/pgroot-18-sid" ;;
  19) root="$CACHE/pgroot-19-sid-experimental" ;;
  16) root="" portable="$CACHE/pg16-portable-16.14.0-beta.17/native" ;;
  *) echo "capture-wal-sample: MAJOR must be 15 to 19, not $major" >&2; exit 2 ;;
esac
[ -z "$root" ] || [ -d "$root" ] || { echo "capture-wal-sample: $root is missing: run test/tools/install.sh pgroot-$major" >&2; exit 1; }
bin=/usr/lib/postgresql/$major/bin
if [ -n "${portable:-}" ]; then
  [ -x "$portable/bin/postgres" ] || { echo "capture-wal-sample: $portable is missing: run test/tools/install.sh pg16-portable" >&2; exit 1; }
  mkdir -p "/tmp/kcbackup-capture-pg$major"
  bin=/tmp/kcbackup-capture-pg$major/bin
fi
uid=$(id -u postgres) gid=$(id -g postgres)

work=$(mktemp -d /tmp/kcbackup-walsample-XXXXXX)
chmod 0755 "$work"
chown postgres: "$work"
cleanup() {
  as_postgres "$bin/pg_ctl" stop -D "$work/data" -m immediate >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# as_postgres PROGRAM ARGS... runs PROGRAM as postgres where the server of $major runs.
as_postgres() {
  if [ -n "${portable:-}" ]; then
    case $1 in
      "$bin"/psql) shift; set -- /usr/lib/postgresql/15/bin/psql "$@" ;;
      "$bin"/*) # the portable build, bind-mounted at $bin/.. in a private mount namespace
        unshare --mount --propagation private -- /bin/sh -c '
          set -e
          src=$1 dst=$2 uid=$3 gid=$4; shift 4
          mount --bind "$src" "$dst"
          exec /usr/bin/setpriv --reuid="$uid" --regid="$gid" --clear-groups -- env LD_LIBRARY_PATH="$dst/lib" "$@"' \
          capture "$portable" "${bin%/bin}" "$uid" "$gid" "$@"
        return ;;
    esac
  fi
  if [ -z "$root" ]; then
    setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
    return
  fi
  unshare --mount --propagation private -- /bin/sh -c '
    set -e
    root=$1 uid=$2 gid=$3; shift 3
    mount -t proc proc "$root/proc"
    mount -t tmpfs -o mode=1777 shm "$root/dev/shm"
    mount --bind /tmp "$root/tmp"
    exec chroot "$root" /usr/bin/setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"' \
    capture "$root" "$uid" "$gid" "$@"
}

sql() { as_postgres "$bin/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$work" -p 5432 -U postgres -d postgres "$@"; }

# segno prints the number of the segment holding the current insert position.
segno() { printf '%d\n' "0x$(sql -c 'SELECT pg_walfile_name(pg_current_wal_insert_lsn())' | cut -c17-24)"; }

# switch_to N ends segments until the insert position is at the start of segment N.
switch_to() {
  while [ "$(segno)" -lt "$1" ]; do
    sql -c 'INSERT INTO filler VALUES (1)' -c 'SELECT pg_switch_wal()' >/dev/null
  done
}

# capture SEG KIB: copies the first KIB KiB of segment SEG and dumps it with pg_waldump.
capture() {
  local seg=$1 kib=$2 name sample dumpdir end
  sql -c 'SELECT pg_current_wal_flush_lsn()' >/dev/null
  name=$(printf '00000001%08X%08X' 0 "$seg")
  sample="$outdir/pg$major-seg$seg-1MiB.head"
  dump="$outdir/pg$major-seg$seg-1MiB.waldump"
  head -c $((kib * 1024)) "$work/data/pg_wal/$name" >"$sample"
  if [ -n "${portable:-}" ]; then
    capture_walinspect "$seg" "$kib" "$sample"
    return
  fi
  dumpdir="$work/dump-$seg"
  mkdir -p "$dumpdir"
  cp "$sample" "$dumpdir/$name"
  truncate -s 1M "$dumpdir/$name"
  chown -R postgres: "$dumpdir"
  {
    printf '# %s: pg_waldump -r Transaction over %s\n' "$(as_postgres "$bin/pg_waldump" --version)" "$(basename "$sample")"
    printf '# (the first %d KiB of segment %s, padded with zeros), TZ=UTC; COMMIT and ABORT lines only,\n' "$kib" "$name"
    printf '# subxact lists of more than 6 entries shortened to the first and last 3.\n'
    { TZ=UTC as_postgres "$bin/pg_waldump" -r Transaction -p "$dumpdir" "$name" 2>&1 || true; } |
      grep -E 'desc: (COMMIT|ABORT)|pg_waldump: error' |
      sed -E 's/(subxacts: [0-9]+ [0-9]+ [0-9]+)( [0-9]+)+( [0-9]+ [0-9]+ [0-9]+)(;|$)/\1 ...\3\4/'
  } >"$dump"
  # The end of valid WAL must lie inside the head, or the sample would not show it.
  end=$(sed -n 's/.*invalid record length at \([0-9A-F]*\/[0-9A-F]*\).*/\1/p' "$dump" | tail -n 1)
  [ -n "$end" ] || { echo "capture-wal-sample: no end of valid WAL in $dump" >&2; cat "$dump" >&2; exit 1; }
  if [ $((0x${end#*/} - seg * 1048576)) -ge $((kib * 1024)) ]; then
    echo "capture-wal-sample: valid WAL ends at $end, beyond the $kib KiB of $sample" >&2; exit 1
  fi
  echo "$sample: valid WAL ends at $end" >&2
}

# capture_walinspect SEG KIB SAMPLE writes SAMPLE's oracle from the server's pg_walinspect:
# the transaction records in the head and the end of the last record in the segment.
capture_walinspect() {
  local seg=$1 kib=$2 sample=$3 from to out end
  from=$(printf '0/%X' $((seg * 1048576)))
  to=$(printf '0/%X' $((seg * 1048576 + kib * 1024)))
  out="${sample%.head}.walinspect"
  end=$(sql -c "SELECT max(end_lsn) FROM pg_get_wal_records_info('$from', least(pg_current_wal_flush_lsn(), '$(printf '0/%X' $(((seg + 1) * 1048576)))'::pg_lsn))")
  if [ $((0x${end#*/} - seg * 1048576)) -ge $((kib * 1024)) ]; then
    echo "capture-wal-sample: valid WAL ends at $end, beyond the $kib KiB of $sample" >&2; exit 1
  fi
  {
    printf '# pg_walinspect of PostgreSQL %s: pg_get_wal_records_info over %s (the first %d KiB of its segment), TimeZone=UTC;\n' \
      "$(sql -c 'SHOW server_version')" "$(basename "$sample")" "$kib"
    printf '# COMMIT and ABORT records: LSN|record type|transaction time.\n'
    sql -c "SET TimeZone = 'UTC'" -c "SELECT start_lsn || '|' || record_type || '|' || split_part(description, ';', 1)
      FROM pg_get_wal_records_info('$from', least(pg_current_wal_flush_lsn(), '$to'::pg_lsn))
      WHERE resource_manager = 'Transaction' AND record_type IN ('COMMIT', 'ABORT') ORDER BY start_lsn"
    printf '# end of valid WAL: %s\n' "$end"
  } >"$out"
  echo "$sample: valid WAL ends at $end" >&2
}

# Step 1: the cluster, on a socket in $work only.
as_postgres "$bin/initdb" -D "$work/data" -U postgres --auth=trust --no-locale --encoding=UTF8 --no-sync --wal-segsize=1 >/dev/null
as_postgres "$bin/pg_ctl" start -w -D "$work/data" -l "$work/log" \
  -o "-c listen_addresses= -c unix_socket_directories=$work -c port=5432 -c wal_recycle=off -c wal_init_zero=on -c track_commit_timestamp=on -c autovacuum=off" >/dev/null
sql -c 'CREATE TABLE filler (i int)' -c 'CREATE TABLE s (i int)'
[ -z "${portable:-}" ] || sql -c 'CREATE EXTENSION pg_walinspect'

# Step 2: segment N, three commits and an abort.
first=$(($(segno) + 1))
[ "$first" -ge 7 ] || first=7
switch_to "$first"
sql -c 'INSERT INTO s VALUES (1)'
sql -c 'INSERT INTO s VALUES (2)'
sql -c 'BEGIN' -c 'INSERT INTO s VALUES (3)' -c 'ROLLBACK'
sql -c 'INSERT INTO s VALUES (4)'
capture "$first" 16

# Step 3: segment N+1, one commit listing 4500 subtransactions (about 18 KB). Inserts into a
# temporary table give each subtransaction an xid without WAL of their own; the table is
# created in segment N (after its sample was taken), then the session switches to N+1.
[ "$(segno)" = "$first" ] || { echo "capture-wal-sample: expected to be in segment $first, not $(segno)" >&2; exit 1; }
sql >/dev/null <<'SQL'
CREATE TEMP TABLE t (i int);
SELECT pg_switch_wal();
DO $$
BEGIN
  FOR i IN 1..4500 LOOP
    BEGIN
      INSERT INTO t VALUES (i);
    EXCEPTION WHEN others THEN RAISE;
    END;
  END LOOP;
END
$$;
SQL
[ "$(segno)" = $((first + 1)) ] || { echo "capture-wal-sample: expected to be in segment $((first + 1)), not $(segno)" >&2; exit 1; }
capture $((first + 1)) 64
