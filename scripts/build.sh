#!/usr/bin/env bash
# Configure and build pgcoalesce: build/ normally, build-asan/ with --sanitize
# (AddressSanitizer + UndefinedBehaviorSanitizer). Installs missing packages
# first. Extra CMake arguments may be given in PGC_CMAKE_ARGS.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

builddir=build
cmake_args=()
for arg in "$@"; do
    case "$arg" in
    --sanitize)
        builddir=build-asan
        cmake_args+=(-DPGC_SANITIZE=ON)
        ;;
    -h | --help)
        echo "usage: scripts/build.sh [--sanitize]"
        exit 0
        ;;
    *)
        echo "build.sh: unknown argument: $arg (usage: scripts/build.sh [--sanitize])" >&2
        exit 2
        ;;
    esac
done
# shellcheck disable=SC2206 # word splitting of PGC_CMAKE_ARGS is intended
[ -n "${PGC_CMAKE_ARGS:-}" ] && cmake_args+=(${PGC_CMAKE_ARGS})

bash "$root/scripts/deps.sh"
cmake -S "$root" -B "$root/$builddir" "${cmake_args[@]}"
cmake --build "$root/$builddir" -j "$(nproc)"
