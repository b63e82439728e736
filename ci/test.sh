#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The whole test suite, as CI runs it (.ci/run calls exactly this):
#   1-3. ci/build.sh: Debian prerequisites (idempotent), configure + build in
#        build/, the guest image (built or reused from the cache)
#   4. make check: unit, component and integration tests (real QEMU, TCG)
#   5. a sanitizer build (ASAN+UBSAN) in build-asan/ running the unit tests
#   6. a bounded libFuzzer run of the QMP message parser
# Ends with one line "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
jobs=${JOBS:-$(nproc)}

step() { printf '\n==> %s\n' "$*"; }

configure_in() { # dir, configure args...
    local dir=$1; shift
    mkdir -p "$dir"
    if [ ! -f "$dir/Makefile" ] || [ "$top/configure" -nt "$dir/Makefile" ]; then
        (cd "$dir" && "$top/configure" -q "$@")
    fi
}

step "build (ci/build.sh: deps, configure, compile, guest image)"
bash ci/build.sh

status=0
step "make check"
make -C build -j"$jobs" check || status=1

step "sanitizer build (ASAN+UBSAN), unit tests"
configure_in build-asan --enable-sanitizers
make -C build-asan -j"$jobs" >/dev/null
ASAN_OPTIONS=detect_leaks=1 make -C build-asan -j"$jobs" check-unit || status=1

if grep -q '^fuzz-run:' build/Makefile; then
    step "fuzz (bounded)"
    if make -C build fuzz-run; then fuzz_pass=1; else fuzz_fail=1; status=1; fi
fi

# One closing count over every suite that ran.
pass=${fuzz_pass:-0}; fail=${fuzz_fail:-0}
for log in build/test-suite.log build-asan/test-suite.log; do
    [ -f "$log" ] || continue
    p=$(awk '/^# PASS:/{print $3; exit}' "$log"); f=$(awk '/^# FAIL:/{print $3; exit}' "$log")
    e=$(awk '/^# ERROR:/{print $3; exit}' "$log"); x=$(awk '/^# XPASS:/{print $3; exit}' "$log")
    pass=$((pass + ${p:-0})); fail=$((fail + ${f:-0} + ${e:-0} + ${x:-0}))
done
[ "$status" -eq 0 ] || [ "$fail" -gt 0 ] || fail=1
printf '\n%d passed, %d failed\n' "$pass" "$fail"
exit "$status"
