#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# schedulerd + schedulerctl end to end on a private D-Bus session bus, with
# real QEMU (TCG here) and the real guest image: each language through the
# daemon, --json output, typed errors for bad input (nothing left behind), the
# embedded mode giving the same result, a client killed mid-run leaving no VM,
# and SIGTERM with a run in flight draining cleanly. Prints TAP.
set -u

if [ -z "${DBUS_SESSION_BUS_ADDRESS:-}" ] || [ -z "${SBX_DAEMON_TEST_INNER:-}" ]; then
    if ! command -v dbus-run-session >/dev/null; then
        echo "1..0 # SKIP dbus-run-session not installed (ci/deps.sh installs dbus-daemon)"
        exit 0
    fi
    export SBX_DAEMON_TEST_INNER=1
    exec dbus-run-session -- bash "$0" "$@" 2> >(grep -v 'Failed to set fd limit' >&2)
fi

b=${top_builddir:?}
ctl=$b/schedulerctl
if [ ! -f "${SBX_GUEST_DIR:-}/vmlinux" ]; then
    echo "1..0 # SKIP no guest image in SBX_GUEST_DIR (make guest-image)"
    exit 0
fi
work=$(mktemp -d /tmp/sbx-daemon-test.XXXXXX)
rt=$work/run
daemon_pid=
cleanup() {
    [ -n "$daemon_pid" ] && kill -KILL "$daemon_pid" 2>/dev/null
    pkill -KILL -f -- "$rt/" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

n=0; failed=0
ok() { n=$((n+1)); echo "ok $n - $1"; }
not_ok() { n=$((n+1)); failed=$((failed+1)); echo "not ok $n - $1"; shift; for l in "$@"; do echo "# $l"; done; }
check() { # description, command...
    local d=$1; shift
    if out=$("$@" 2>&1); then ok "$d"; else not_ok "$d" "$out"; fi
}
# Pooled VMs (warm-*) are capacity the daemon keeps on purpose; per-run VMs are vm-*.
qemu_count() { pgrep -f -- "$rt/vms/vm-" | wc -l; }
run_vms() { ls "$rt/vms" 2>/dev/null | grep '^vm-'; }

echo "1..17"

start_daemon() {
    # L1 restores and the warm pool are tested in test-l1; here every run boots its
    # own vm-* VM, so "no VM left" can be counted exactly.
    SCHEDULERD_L1=0 SCHEDULERD_WARM_POOL=0 \
        "$b/schedulerd" --runtime-dir "$rt" --accel tcg >"$work/daemon.log" 2>&1 &
    daemon_pid=$!
    for _ in $(seq 1 200); do
        gdbus introspect --session -d org.schedulerd.Scheduler1 -o /org/schedulerd/Scheduler1 \
            >/dev/null 2>&1 && return 0
        kill -0 "$daemon_pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

if start_daemon; then ok "schedulerd starts and owns org.schedulerd.Scheduler1"; else
    not_ok "schedulerd starts" "$(cat "$work/daemon.log")"; echo "Bail out! no daemon"; exit 1; fi

# 2-4: each language through the daemon (the CLI finds the daemon on the bus)
out=$("$ctl" run -q 'import sys; print("py", sys.version_info[0])' 2>&1); rc=$?
[ "$rc" = 0 ] && [ "$out" = "py 3" ] && ok "python via the daemon" || not_ok "python via the daemon" "rc=$rc" "$out"
out=$("$ctl" run -q -l javascript 'console.log("js", 1 + 1)' 2>&1); rc=$?
[ "$rc" = 0 ] && [ "$out" = "js 2" ] && ok "javascript via the daemon" || not_ok "javascript via the daemon" "rc=$rc" "$out"
out=$("$ctl" run -q -l raw 'echo sh; exit 3' 2>&1); rc=$?
[ "$rc" = 3 ] && [ "$out" = "sh" ] && ok "raw shell via the daemon, exit status mirrored" || not_ok "raw via the daemon" "rc=$rc" "$out"

# 5: streaming order of stdout and stderr lines is preserved per stream
"$ctl" run -q 'import sys, time
for i in range(5):
    print("o%d" % i, flush=True); print("e%d" % i, file=sys.stderr, flush=True); time.sleep(0.05)' \
    >"$work/o" 2>"$work/e"
[ "$(tr '\n' ' ' <"$work/o")" = "o0 o1 o2 o3 o4 " ] && [ "$(tr '\n' ' ' <"$work/e")" = "e0 e1 e2 e3 e4 " ] \
    && ok "stdout and stderr stream in order to the passed fds" || not_ok "streaming order" "$(cat "$work/o" "$work/e")"

# 6: --json is one valid object with the documented members
"$ctl" run --json 'print("j")' >"$work/j.json" 2>&1
check "--json output validates" python3 - "$work/j.json" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))
assert o["stdout"] == "j\n", o
assert o["exit_code"] == 0 and o["accel"] in ("tcg", "kvm")
t = o["timing"]
for k in ("admission_ms", "setup_ms", "boot_ms", "restore_ms", "exec_ms", "teardown_ms", "total_ms"):
    assert isinstance(t[k], int), k
for k in ("exec_ms", "teardown_ms", "total_ms"):
    assert t[k] > 0, (k, t)
if not o["warm_pool_hit"]:  # a pooled VM was set up and booted before the request
    assert t["setup_ms"] > 0 and (t["boot_ms"] > 0 or t["restore_ms"] > 0), t
assert isinstance(o["warm_pool_hit"], bool) and isinstance(o["l1_hit"], bool)
assert o["memory_peak_mb"] > 0 and o["cpu_ms"] > 0, o
assert o["exposed_ports"] == []
PY

# 7-12: bad input fails with the right error name and leaves nothing behind
before=$(run_vms | wc -l)
bad() { # description, expected name, args...
    local d=$1 name=$2; shift 2
    out=$("$ctl" run --json "$@" 2>&1); rc=$?
    if [ "$rc" = 2 ] && printf '%s' "$out" | python3 -c "import json,sys; o=json.load(sys.stdin); assert o['error']['name']=='$name', o" 2>/dev/null; then
        ok "$d -> $name"; else not_ok "$d -> $name" "rc=$rc" "$out"; fi
}
bad "empty code" InvalidInput ''
printf 'print(1)\0' >"$work/nul.py"
bad "code with NUL" InvalidInput "$work/nul.py"
head -c $((2 * 1024 * 1024)) /dev/zero | tr '\0' 'x' >"$work/big.py"
bad "2 MiB of code" InvalidInput "$work/big.py"
bad "timeout 301" InvalidInput -t 301 'print(1)'
bad "memory 64 MiB" InvalidInput -m 64 'print(1)'
bad "refused env LD_PRELOAD" InvalidInput -e LD_PRELOAD=/x.so 'print(1)'
after=$(run_vms | wc -l)
[ "$before" = "$after" ] && [ "$(qemu_count)" = 0 ] && ok "refused requests left no VM" || not_ok "refused requests left no VM" "vms before=$before after=$after qemu=$(qemu_count)"

# 14: the same request in embedded mode gives the same result
cfg=$work/embedded.conf
printf '[scheduler]\nruntime_dir=%s\naccel=tcg\n' "$work/embedded-run" >"$cfg"
d=$("$ctl" run -q -l raw 'echo same; exit 5' 2>&1; echo "rc=$?")
e=$("$ctl" run -q --embedded --config "$cfg" -l raw 'echo same; exit 5' 2>&1; echo "rc=$?")
[ "$d" = "$e" ] && [ "$d" = "$(printf 'same\nrc=5')" ] && ok "embedded mode gives the same result as the daemon" || not_ok "embedded == daemon" "daemon: $d" "embedded: $e"

# 15: status: --json is one JSON object from the daemon and in embedded mode; the text
# form puts every value in one column, however long the longest key
sd=$("$ctl" status --json 2>"$work/sd.err")
se=$("$ctl" status --json --embedded --config "$cfg" 2>"$work/se.err")
st=$("$ctl" status 2>&1)
is_status_json() { printf '%s' "$1" | python3 -c 'import json, sys; d = json.load(sys.stdin); assert isinstance(d, dict) and "slots_used" in d and "warm_pool_target_javascript" in d'; }
cols=$(printf '%s\n' "$st" | awk '{ match($0, /^[^ ]+ +/); print RLENGTH }' | sort -u)
is_status_json "$sd" && is_status_json "$se" && [ "$(printf '%s\n' "$cols" | wc -l)" = 1 ] \
    && [ "$cols" -gt 27 ] \
    && ok "status --json parses (daemon and embedded); text values in one column" \
    || not_ok "status output" "daemon json: $sd" "embedded json: $se" "columns: $cols" "$st"

# 16: a client killed mid-run leaves no VM
"$ctl" run -q 'import time; print("started", flush=True); time.sleep(60)' >"$work/k.out" 2>&1 &
cpid=$!
for _ in $(seq 1 600); do grep -q started "$work/k.out" 2>/dev/null && break; sleep 0.1; done
kill -KILL "$cpid"; wait "$cpid" 2>/dev/null
for _ in $(seq 1 100); do [ "$(qemu_count)" = 0 ] && [ -z "$(run_vms)" ] && break; sleep 0.1; done
[ "$(qemu_count)" = 0 ] && [ -z "$(run_vms)" ] && grep -q started "$work/k.out" \
    && ok "a client killed mid-run leaves no VM" || not_ok "killed client left a VM" "qemu=$(qemu_count)" "$(run_vms)" "$(cat "$work/k.out")"

# 17: SIGTERM with a run in flight: the run fails with a typed error, the daemon exits 0, nothing left
"$ctl" run 'import time; print("started", flush=True); time.sleep(60)' >"$work/t.out" 2>"$work/t.err" &
cpid=$!
for _ in $(seq 1 600); do grep -q started "$work/t.out" 2>/dev/null && break; sleep 0.1; done
kill -TERM "$daemon_pid"; wait "$daemon_pid"; drc=$?; daemon_pid=
wait "$cpid"; crc=$?
if grep -q started "$work/t.out" && [ "$drc" = 0 ] && [ "$crc" = 125 ] \
   && grep -Eq 'OutcomeUnknown|Cancelled|Transient' "$work/t.err" \
   && [ "$(pgrep -f -- "$rt/vms/" | wc -l)" = 0 ] && [ -z "$(ls "$rt/vms" 2>/dev/null)" ]; then
    ok "SIGTERM drains: the run in flight fails typed, daemon exit 0, no VM or file left"
else
    not_ok "SIGTERM drain" "daemon rc=$drc client rc=$crc qemu=$(pgrep -f -- "$rt/vms/" | wc -l)" \
        "$(ls "$rt/vms" 2>/dev/null)" "$(cat "$work/t.out" "$work/t.err")" "$(tail -5 "$work/daemon.log")"
fi
[ "$failed" = 0 ]
