#!/bin/sh
# SPDX-License-Identifier: MIT
# Smoke test of the benchmark program (so `make bench` cannot rot): one run of
# the host anchor, the raw-QEMU floor and a cold boot through the scheduler,
# then check the summary line parses and carries numbers for those paths.
# Not a speed check: no number is compared with a target.
bench="${top_builddir:-.}/tests/bench/sbx-bench"
if [ -z "${SBX_GUEST_DIR:-}" ] || [ ! -d "$SBX_GUEST_DIR" ]; then
  echo "1..0 # SKIP SBX_GUEST_DIR not set (make guest-image)"
  exit 77
fi
echo "1..3"
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
"$bench" create --runs 1 --paths host,floor,cold --json "$tmp/create.json" \
  --dat "$tmp/create.dat" >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ $rc -eq 0 ]; then echo "ok 1 - sbx-bench create ran"; else
  echo "not ok 1 - sbx-bench create exited $rc"; sed 's/^/# /' "$tmp/err" "$tmp/out"; fi
line=$(grep '^bench-create: ' "$tmp/out" | tail -n 1)
echo "# $line"
# every field is key=value with a number or n/a; the measured paths have numbers
if printf '%s\n' "$line" | grep -Eq '^bench-create:( [a-z0-9_]+=([0-9]+(\.[0-9]+)?|n/a|tcg|kvm))+$' &&
   printf '%s\n' "$line" | grep -Eq ' floor_ms=[0-9.]+ ' &&
   printf '%s\n' "$line" | grep -Eq ' cold_ms=[0-9.]+ ' &&
   printf '%s\n' "$line" | grep -Eq ' cold_ratio=[0-9.]+ ' &&
   printf '%s\n' "$line" | grep -Eq ' l1_ms=n/a '; then
  echo "ok 2 - summary line parses (floor, cold, ratio numeric; L1 not measured is n/a)"
else
  echo "not ok 2 - summary line does not parse: $line"
fi
if "${PYTHON3:-python3}" -c '
import json, sys
d = json.load(open(sys.argv[1]))
p = d["paths"]
assert d["benchmark"] == "create" and d["machine"]["accel"] in ("tcg", "kvm")
assert p["floor"]["first_output_ms"]["n"] == 1 and p["cold"]["end_to_end_ms"]["n"] == 1
assert p["cold"]["exec_ms"]["p50"] > 0 and d["cold_ratio"] > 0
' "$tmp/create.json" && [ -s "$tmp/create.dat" ]; then
  echo "ok 3 - JSON and plot data written"
else
  echo "not ok 3 - JSON / plot data missing or incomplete"
fi
