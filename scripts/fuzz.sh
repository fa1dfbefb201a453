#!/usr/bin/env bash
# Fuzzing: configure build-fuzz/ with clang and PGC_FUZZ=ON (libFuzzer,
# ASan+UBSan), build the targets of tests/fuzz, and run each on a copy of
# its committed corpus. Fails when any target finds a crash, a leak, UB or
# a hang; the input that did it is kept in build-fuzz/fuzz-artifacts/.
#
#   scripts/fuzz.sh                  # the smoke: about 60 s in all, split evenly
#   scripts/fuzz.sh -t 600           # 600 s per target
#   scripts/fuzz.sh -t 300 shape msg # only these targets
#   scripts/fuzz.sh -j 2 -t 300      # two targets at a time
#   scripts/fuzz.sh -k -t 300        # keep the grown corpus in build-fuzz/fuzz-corpus/<name>/
#                                    # and start from it the next time -k is given
#
# A bare number as the first argument is the seconds per target, as -t.
# FUZZ_TOTAL (default 60) is the smoke's total when no time is given.
# Extra libFuzzer flags for every target go in FUZZ_FLAGS. Installs missing
# packages first (scripts/deps.sh). Works from any directory.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$root/build-fuzz"

usage() {
    echo "usage: scripts/fuzz.sh [SECONDS] [-t SECONDS-PER-TARGET] [-j JOBS] [-k] [TARGET...]" >&2
    exit 2
}

per_target=""
jobs=1
keep=0
targets=()
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then
    per_target=$1
    shift
fi
while [ $# -gt 0 ]; do
    case "$1" in
    -t) [ $# -ge 2 ] || usage; per_target=$2; shift 2 ;;
    -j) [ $# -ge 2 ] || usage; jobs=$2; shift 2 ;;
    -k) keep=1; shift ;;
    -h | --help) usage ;;
    -*) usage ;;
    *) targets+=("${1#fuzz_}"); shift ;;
    esac
done

bash "$root/scripts/deps.sh"
CC=clang cmake -S "$root" -B "$build" -DPGC_FUZZ=ON -DPGC_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j "$(nproc)" --target fuzz_targets

if [ ${#targets[@]} -eq 0 ]; then
    for src in "$root"/tests/fuzz/fuzz_*.c; do
        name=$(basename "$src" .c)
        [ -x "$build/tests/fuzz/$name" ] && targets+=("${name#fuzz_}")
    done
fi
for t in "${targets[@]}"; do
    [ -x "$build/tests/fuzz/fuzz_$t" ] || { echo "fuzz.sh: no target fuzz_$t" >&2; exit 2; }
done
if [ -z "$per_target" ]; then
    per_target=$(( ${FUZZ_TOTAL:-60} / ${#targets[@]} ))
    [ "$per_target" -ge 1 ] || per_target=1
fi

# Per-target libFuzzer settings: longest input and dictionary.
max_len() {
    case "$1" in
    shape | analyze | batch | params) echo 40000 ;; # reach SHAPE_MAX_SQL (32 KiB)
    admin | http | msg) echo 20000 ;;
    *) echo 8192 ;;
    esac
}
dict_for() {
    case "$1" in
    shape | analyze | batch | params) echo sql ;;
    scram_server | scram_client | auth) echo scram ;;
    admin | http | config | pgoutput | cache_key | cache_url) echo "$1" ;;
    esac
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
artifacts="$build/fuzz-artifacts"
mkdir -p "$artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# run_one NAME: fuzz one target; its log in $work/NAME.log, status in $work/NAME.rc
run_one() {
    local t=$1 corpus="$work/corpus-$1" dict=() d
    mkdir -p "$corpus" "$artifacts/$t"
    cp -r "$root/tests/fuzz/corpus/$t/." "$corpus/" 2>/dev/null || true
    if [ $keep -eq 1 ] && [ -d "$build/fuzz-corpus/$t" ]; then
        cp -r "$build/fuzz-corpus/$t/." "$corpus/"
    fi
    d=$(dict_for "$t")
    [ -n "$d" ] && dict=(-dict="$root/tests/fuzz/dict/$d.dict")
    set +e
    # shellcheck disable=SC2086 # FUZZ_FLAGS is a list of flags
    (cd "$work" && "$build/tests/fuzz/fuzz_$t" "$corpus" -max_total_time="$per_target" \
        -timeout=25 -rss_limit_mb=2048 -max_len="$(max_len "$t")" -print_final_stats=1 \
        -artifact_prefix="$artifacts/$t/" "${dict[@]}" ${FUZZ_FLAGS:-}) >"$work/$t.log" 2>&1
    echo $? >"$work/$t.rc"
    set -e
    if [ $keep -eq 1 ]; then
        mkdir -p "$build/fuzz-corpus/$t"
        cp -r "$corpus/." "$build/fuzz-corpus/$t/"
    fi
}

echo "=== fuzz: ${#targets[@]} targets, ${per_target} s each, $jobs at a time"
running=0
for t in "${targets[@]}"; do
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

status=0
for t in "${targets[@]}"; do
    rc=$(cat "$work/$t.rc" 2>/dev/null || echo 1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log" 2>/dev/null | tail -n 1)
    cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$work/$t.log" 2>/dev/null | tail -n 1 || true)
    if [ "$rc" -eq 0 ]; then
        printf 'fuzz %-13s ok      %8s runs  %s\n' "$t" "${execs:-?}" "$cov"
    else
        status=1
        printf 'fuzz %-13s FAILED  %8s runs  %s\n' "$t" "${execs:-?}" "$cov"
        grep -E 'ERROR|error|runtime error|fuzz check failed|SUMMARY|Test unit written|^    #[0-9]' \
            "$work/$t.log" | head -n 40 | sed 's/^/    /' || true
    fi
done
[ $status -eq 0 ] && echo "=== fuzz: no crash" || echo "=== fuzz: FAILED (inputs in $artifacts)"
exit $status
