#!/usr/bin/env bash
# The test command: installs missing packages, builds, runs the whole ctest
# suite (unit + integration against a real PostgreSQL and Redis), runs the
# unit tests under valgrind memcheck, then builds with ASan+UBSan and runs the
# whole suite again, then runs the fuzz targets
# for a 60 s smoke (scripts/fuzz.sh). Exits non-zero if anything failed.
# Works from any directory.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

bash "$root/scripts/deps.sh" || exit 1

status=0
failed=()
passed_total=0
failed_total=0
logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT

# Add one ctest run's counts ("90% tests passed, 1 tests failed out of 10").
count_results() {
    local line nfail nall
    line=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$1" | tail -n 1)
    [ -n "$line" ] || return 0
    nfail=$(sed -E 's/.*passed, ([0-9]+) tests? failed.*/\1/' <<<"$line")
    nall=$(sed -E 's/.*out of ([0-9]+).*/\1/' <<<"$line")
    passed_total=$((passed_total + nall - nfail))
    failed_total=$((failed_total + nfail))
}

run_suite() { # run_suite NAME BUILD-DIR BUILD-FLAGS...
    local name=$1 dir=$2
    shift 2
    echo "=== $name: build"
    if ! bash "$root/scripts/build.sh" "$@"; then
        failed+=("$name build")
        failed_total=$((failed_total + 1))
        status=1
        return
    fi
    echo "=== $name: ctest"
    if ! (cd "$root/$dir" && ctest --output-on-failure -j "$(nproc)") 2>&1 | tee "$logdir/$name.log"; then
        failed+=("$name tests")
        status=1
    fi
    count_results "$logdir/$name.log"
}

# Formatting: every C file as the root .clang-format says (STYLE.md).
if command -v clang-format >/dev/null 2>&1; then
    unformatted=$(cd "$root" && git ls-files '*.c' '*.h' 2>/dev/null | while read -r f; do
        clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || echo "$f"; done)
    if [ -n "$unformatted" ]; then
        echo "=== not formatted with .clang-format (run clang-format -i):"
        echo "$unformatted"
        failed+=("clang-format")
        status=1
    fi
fi

run_suite plain build

# Valgrind memcheck over the unit tests of the plain build (each counts as one test).
echo "=== valgrind: unit tests"
bash "$root/scripts/valgrind.sh" 2>&1 | tee "$logdir/valgrind.log"
vg_rc=${PIPESTATUS[0]}
passed_total=$((passed_total + $(grep -cE '^valgrind [a-z_]+ ok$' "$logdir/valgrind.log" || true)))
vg_failed=$(grep -cE '^valgrind [a-z_]+ FAILED$' "$logdir/valgrind.log" || true)
failed_total=$((failed_total + vg_failed))
if [ "$vg_rc" -ne 0 ]; then
    failed+=("valgrind")
    [ "$vg_failed" -gt 0 ] || failed_total=$((failed_total + 1))
    status=1
fi
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
run_suite sanitized build-asan --sanitize

# Fuzzing smoke: every libFuzzer target (clang, build-fuzz/) on a copy of its
# committed corpus, about 60 s in all; each target counts as one test.
echo "=== fuzz: smoke"
FUZZ_TOTAL=60 bash "$root/scripts/fuzz.sh" 2>&1 | tee "$logdir/fuzz.log"
fuzz_rc=${PIPESTATUS[0]}
fuzz_ok=$(grep -cE '^fuzz [a-z_]+ +ok ' "$logdir/fuzz.log" || true)
fuzz_failed=$(grep -cE '^fuzz [a-z_]+ +FAILED ' "$logdir/fuzz.log" || true)
passed_total=$((passed_total + fuzz_ok))
failed_total=$((failed_total + fuzz_failed))
if [ "$fuzz_rc" -ne 0 ]; then
    failed+=("fuzz smoke")
    [ "$fuzz_failed" -gt 0 ] || failed_total=$((failed_total + 1))
    status=1
fi

if [ $status -ne 0 ]; then
    echo "=== FAILED: ${failed[*]}"
else
    echo "=== all test suites passed"
fi
echo "tests: $passed_total passed, $failed_total failed"
exit $status
