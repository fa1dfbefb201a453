#!/usr/bin/env bash
# Install the Debian packages pgcoalesce needs to build, test and run.
# Idempotent: when everything is present it only says so; apt-get update runs
# only when something is missing. Needs root for installing, not for checking.
set -euo pipefail

# Everything the build, the unit and integration tests, the benchmarks and the
# systemd checks use.
# libclang-rt-dev holds libFuzzer and the sanitizer runtimes clang links
# (scripts/fuzz.sh); clang only recommends it, and recommends are not installed.
REQUIRED=(
    build-essential cmake pkg-config clang clang-format libclang-rt-dev
    libevent-dev libssl-dev libpq-dev libhiredis-dev libcmocka-dev libpg-query-dev
    libinih-dev libsystemd-dev libprotobuf-c-dev
    postgresql-15 redis-server pgbouncer
    python3 python3-psycopg2 python3-psycopg python3-sqlalchemy python3-asyncpg python3-django
    ruby-activerecord ruby-pg
    valgrind systemd
)
# tests/integration/test_compat.py runs node-postgres and Sequelize (npm
# packages it installs itself with `npm ci` in tests/integration/compat): the
# machine's Node.js and npm when it has them, else Debian's.
command -v node >/dev/null 2>&1 || REQUIRED+=(nodejs)
command -v npm >/dev/null 2>&1 || REQUIRED+=(npm)
# Installed when this Debian release has them (checked with apt-cache policy).
# prometheus brings promtool, which the admin-port tests use to check /metrics.
OPTIONAL=(postgresql-contrib prometheus)

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

has_candidate() {
    local cand
    cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }')
    [ -n "$cand" ] && [ "$cand" != "(none)" ]
}

missing=()
for p in "${REQUIRED[@]}" "${OPTIONAL[@]}"; do
    is_installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "deps: all packages present"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing Debian packages: ${missing[*]}" >&2
    echo "deps: run this script as root (sudo bash scripts/deps.sh) to install them" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "deps: installing ${missing[*]}"
apt-get -o DPkg::Lock::Timeout=300 update -q

to_install=()
for p in "${missing[@]}"; do
    optional=0
    for o in "${OPTIONAL[@]}"; do [ "$p" = "$o" ] && optional=1; done
    if [ $optional -eq 1 ] && ! has_candidate "$p"; then
        echo "deps: $p is not in this Debian release; skipped"
        continue
    fi
    to_install+=("$p")
done
[ ${#to_install[@]} -eq 0 ] && exit 0

# Keep package scripts from starting the system PostgreSQL and Redis: the
# tests and scripts/run.sh start their own on free ports.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
fi
trap '[ $made_policy -eq 1 ] && rm -f "$policy"' EXIT

apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${to_install[@]}"
echo "deps: done"
