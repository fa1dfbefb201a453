#!/usr/bin/env bash
# Valgrind memcheck over every cmocka unit test of build/ (scripts/build.sh
# first): a test passes when it passes and valgrind finds no invalid access,
# no use of uninitialised memory and no definite or indirect leak. Prints
# "valgrind NAME ok|FAILED" per test; exits non-zero if any failed.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PGC_TEST_DATA=$root/tests/data
status=0
logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT
for t in "$root"/build/tests/test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    if valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect \
        --show-leak-kinds=definite,indirect "$t" >"$logdir/$name.out" 2>"$logdir/$name.err"; then
        echo "valgrind $name ok"
    else
        echo "valgrind $name FAILED"
        tail -n 40 "$logdir/$name.err" "$logdir/$name.out"
        status=1
    fi
done
exit $status
