#!/usr/bin/env bash
# The run command.
#   scripts/run.sh -c FILE   build, then run pgcoalesce with that config
#   scripts/run.sh           build, start a throwaway PostgreSQL (role app,
#                            password app, database app) and Redis, and run
#                            pgcoalesce in front of them on 127.0.0.1:6432
#                            (PGC_LISTEN=host:port to change) until Ctrl-C.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
LISTEN=${PGC_LISTEN:-127.0.0.1:6432}

usage() {
    echo "usage: scripts/run.sh [-c FILE [pgcoalesce options...]]" >&2
    exit 2
}

case "${1:-}" in
"") ;;
-c) [ $# -ge 2 ] || usage ;;
-h | --help) usage ;;
*) usage ;;
esac

bash "$root/scripts/build.sh"
bin=$root/build/pgcoalesce
if [ $# -gt 0 ]; then
    exec "$bin" "$@"
fi

free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# PostgreSQL will not run as root: as root, run its commands as postgres.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

rundir=$root/.run
mkdir -p "$rundir"
pgdir=$rundir/pg
pg_tmp=0 # 1: pgdir is a temp dir under /tmp, removed on exit
rm -rf "$pgdir"
mkdir -p "$pgdir"
if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$pgdir"
    if ! runuser -u postgres -- test -w "$pgdir"; then
        # The repository is not reachable for postgres (e.g. under /root).
        rm -rf "$pgdir"
        pgdir=$(mktemp -d /tmp/pgcoalesce-run-pg.XXXXXX)
        pg_tmp=1
        chown postgres: "$pgdir"
    fi
fi
redisdir=$rundir/redis
rm -rf "$redisdir"
mkdir -p "$redisdir"

pgport=$(free_port)
redisport=$(free_port)
pgc_pid=
pg_started=0
redis_started=0

# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
    trap - EXIT INT TERM
    if [ -n "$pgc_pid" ] && kill -0 "$pgc_pid" 2>/dev/null; then
        kill -TERM "$pgc_pid" 2>/dev/null || true
        wait "$pgc_pid" 2>/dev/null || true
    fi
    if [ "$pg_started" -eq 1 ]; then
        echo "run: stopping PostgreSQL"
        as_pg "$PG_BINDIR/pg_ctl" -D "$pgdir/data" -m fast -w stop >/dev/null || true
    fi
    [ "$pg_tmp" -eq 1 ] && rm -rf "$pgdir"
    if [ "$redis_started" -eq 1 ] && [ -f "$redisdir/redis.pid" ]; then
        echo "run: stopping Redis"
        kill "$(cat "$redisdir/redis.pid")" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "run: initdb in $pgdir"
as_pg "$PG_BINDIR/initdb" -D "$pgdir/data" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 -E UTF8 --no-locale >"$pgdir/initdb.log" 2>&1 ||
    { cat "$pgdir/initdb.log" >&2; exit 1; }
as_pg "$PG_BINDIR/pg_ctl" -D "$pgdir/data" -l "$pgdir/postgresql.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $pgport -k $pgdir -c password_encryption=scram-sha-256" \
    start >/dev/null
pg_started=1
as_pg "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$pgdir" -p "$pgport" -U postgres -d postgres \
    -c "CREATE ROLE app LOGIN PASSWORD 'app'" -c "CREATE DATABASE app OWNER app"
echo "run: PostgreSQL on 127.0.0.1:$pgport (log $pgdir/postgresql.log)"

redis-server --port "$redisport" --bind 127.0.0.1 --unixsocket "$redisdir/redis.sock" \
    --save "" --appendonly no --dir "$redisdir" --daemonize yes \
    --pidfile "$redisdir/redis.pid" --logfile "$redisdir/redis.log"
redis_started=1
for _ in $(seq 50); do [ -s "$redisdir/redis.pid" ] && break; sleep 0.1; done
echo "run: Redis on 127.0.0.1:$redisport (log $redisdir/redis.log), the cache's store"

echo
echo "Connect with:  postgresql://app:app@$LISTEN/app"
echo "               psql 'postgresql://app:app@$LISTEN/app'"
echo "Ctrl-C stops pgcoalesce, PostgreSQL and Redis."
echo
# The identity-map cache on the throwaway Redis (writes through the proxy invalidate it).
"$bin" --upstream "postgresql://app:app@127.0.0.1:$pgport/app" --listen "$LISTEN" \
    --set "cache_url=redis://127.0.0.1:$redisport/0" &
pgc_pid=$!
set +e
wait "$pgc_pid"
status=$?
pgc_pid=
exit $status
