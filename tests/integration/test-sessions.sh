#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Sessions end to end: schedulerd on a private D-Bus session bus, real QEMU
# (TCG here), the real guest image, driven by `schedulerctl session ...` and
# `schedulerctl run --upload/--download` (daemon and embedded mode). Checks
# that interpreter state persists across Exec, a user-code error leaves the
# session open, exit 137 closes it with its reason, files round-trip
# byte-identical, bad paths are InvalidInput, Close then Exec is
# SessionClosed, the idle timeout closes a session, and a client killed while
# holding a session leaves no VM. Waits are for events (the Closed signal),
# bounded only as a safety net. Prints TAP.
set -u

if [ -z "${DBUS_SESSION_BUS_ADDRESS:-}" ] || [ -z "${SBX_SESSION_TEST_INNER:-}" ]; then
    if ! command -v dbus-run-session >/dev/null; then
        echo "1..0 # SKIP dbus-run-session not installed (ci/deps.sh installs dbus-daemon)"
        exit 77
    fi
    export SBX_SESSION_TEST_INNER=1
    exec dbus-run-session -- bash "$0" "$@" 2> >(grep -v 'Failed to set fd limit' >&2)
fi

b=${top_builddir:?}
ctl=$b/schedulerctl
if [ ! -f "${SBX_GUEST_DIR:-}/vmlinux" ]; then
    echo "1..0 # SKIP no guest image in SBX_GUEST_DIR (make guest-image)"
    exit 77
fi
# No L1 templates or warm pool here: every QEMU under $rt is then a session's or
# a run's, so "no VM left" is exact (and no background builds compete for CPU).
export SCHEDULERD_L1=0 SCHEDULERD_WARM_POOL=0
work=$(mktemp -d /tmp/sbx-session-test.XXXXXX)
rt=$work/run
daemon_pid=
monitor_pid=
holder_pid=
cleanup() {
    for p in $holder_pid $monitor_pid; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    if [ -n "$daemon_pid" ]; then
        kill -TERM "$daemon_pid" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$daemon_pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT

n=0
ok() { n=$((n+1)); echo "ok $n - $1"; }
not_ok() { n=$((n+1)); echo "not ok $n - $1"; shift; for l in "$@"; do echo "# $l"; done; }
# QEMU processes of this test's daemon (their command lines name $rt/vms/...)
vm_count() { pgrep -f -- "$rt/vms/" | wc -l; }
status_of() { "$ctl" status | awk -v k="$1" '$1 == k { print $2 }'; }
# Wait for the D-Bus Closed signal of session $1 with reason $2 (a safety
# bound of 180 s, not a timing assertion: TCG on a busy host is slow).
wait_closed() {
    for _ in $(seq 1 1800); do
        grep -q "session/$1: org.schedulerd.Scheduler1.Session.Closed ('$2',)" "$work/monitor" && return 0
        sleep 0.1
    done
    return 1
}

echo "1..20"

# Idle timeout of the sessions that do not ask for one: short, for test 16.
cat >"$work/schedulerd.conf" <<'EOF'
[session]
idle_timeout_s=3
EOF
cat >"$work/embedded.conf" <<EOF
[scheduler]
runtime_dir=$work/embedded
EOF
G_MESSAGES_DEBUG=sbx-session "$b/schedulerd" --config "$work/schedulerd.conf" --runtime-dir "$rt" \
    --accel tcg >"$work/daemon.log" 2>&1 &
daemon_pid=$!
up=0
for _ in $(seq 1 300); do
    if gdbus introspect --session -d org.schedulerd.Scheduler1 -o /org/schedulerd/Scheduler1 \
        >/dev/null 2>&1; then up=1; break; fi
    kill -0 "$daemon_pid" 2>/dev/null || break
    sleep 0.1
done
if [ $up = 1 ]; then ok "schedulerd starts and owns org.schedulerd.Scheduler1"; else
    not_ok "schedulerd starts" "$(cat "$work/daemon.log")"; echo "Bail out! no daemon"; exit 1; fi
gdbus monitor --session --dest org.schedulerd.Scheduler1 >"$work/monitor" 2>&1 &
monitor_pid=$!

# 2-4: state persists across Exec; a user-code error does not close the session
id=$("$ctl" session create --idle-timeout 300 2>"$work/err"); rc=$?
if [ $rc = 0 ] && [[ "$id" =~ ^[0-9a-f]{32}$ ]]; then ok "session create prints the session id"; else
    not_ok "session create" "rc=$rc id=$id" "$(cat "$work/err")"; echo "Bail out! no session"; exit 1; fi
out1=$("$ctl" session exec "$id" 'x = 41' 2>&1); rc1=$?
out2=$("$ctl" session exec "$id" 'print(x + 1)' 2>&1); rc2=$?
[ $rc1 = 0 ] && [ -z "$out1" ] && [ $rc2 = 0 ] && [ "$out2" = 42 ] \
    && ok "python state persists across Exec (x = 41, then print(x + 1) -> 42)" \
    || not_ok "state across Exec" "rc1=$rc1 out1=$out1" "rc2=$rc2 out2=$out2"
out1=$("$ctl" session exec "$id" 'raise ValueError("boom")' 2>&1); rc1=$?
out2=$("$ctl" session exec "$id" 'import sys; print(x); sys.exit(3)' 2>&1); rc2=$?
[ $rc1 = 1 ] && [[ "$out1" == *"ValueError: boom"* ]] && [ $rc2 = 3 ] && [ "$out2" = 41 ] \
    && ok "an exception and a non-zero exit leave the session open with its state" \
    || not_ok "user-code errors keep the session" "rc1=$rc1 $out1" "rc2=$rc2 $out2"

# 5: one Exec at a time: a second one meanwhile is Transient (nothing ran), the first
# completes, the session goes on
"$ctl" session exec "$id" 'import time; print("started", flush=True); time.sleep(3); print("first")' \
    >"$work/first" 2>&1 &
first_pid=$!
for _ in $(seq 1 1800); do grep -q started "$work/first" && break; sleep 0.1; done # it runs
second=$("$ctl" session exec "$id" 'print("second")' 2>&1); r2=$?
wait "$first_pid"; r1=$?
third=$("$ctl" session exec "$id" 'print(x)' 2>&1); r3=$?
[ $r2 = 125 ] && [[ "$second" == *Transient*"one Exec at a time"* ]] && [[ "$second" != *"second"$'\n'* ]] \
    && [ $r1 = 0 ] && [ "$(cat "$work/first")" = $'started\nfirst' ] && [ $r3 = 0 ] && [ "$third" = 41 ] \
    && ok "a concurrent Exec is Transient; the running one completes; the session goes on" \
    || not_ok "concurrent Exec" "r1=$r1 $(cat "$work/first")" "r2=$r2 $second" "r3=$r3 $third"

# 6-7: upload / download round-trip a few MiB of random bytes
head -c $((3 * 1024 * 1024 + 123)) /dev/urandom >"$work/rand.bin"
"$ctl" session upload "$id" "$work/rand.bin" data/in/rand.bin 2>"$work/err"; rc1=$?
"$ctl" session download "$id" data/in/rand.bin "$work/rand.out" 2>>"$work/err"; rc2=$?
h1=$(sha256sum <"$work/rand.bin" | cut -d' ' -f1)
h2=$(sha256sum <"$work/rand.out" 2>/dev/null | cut -d' ' -f1)
[ $rc1 = 0 ] && [ $rc2 = 0 ] && [ "$h1" = "$h2" ] \
    && ok "upload then download of 3 MiB of random bytes is byte-identical (sha256)" \
    || not_ok "file round trip" "rc1=$rc1 rc2=$rc2 $h1 $h2" "$(cat "$work/err")"
hg=$("$ctl" session exec "$id" 'import hashlib; print(hashlib.sha256(open("data/in/rand.bin","rb").read()).hexdigest())' 2>&1)
ls_out=$("$ctl" session ls "$id" data/in 2>&1)
[ "$hg" = "$h1" ] && [[ "$ls_out" == *" $((3 * 1024 * 1024 + 123)) rand.bin"* ]] \
    && ok "the code in the session sees the uploaded file; ls lists it with its size" \
    || not_ok "guest view of the upload" "guest sha=$hg" "$ls_out"

# 8-10: bad paths and missing files, with the error names
bad1=$("$ctl" session upload "$id" "$work/rand.bin" ../x 2>&1); rc1=$?
bad2=$("$ctl" session download "$id" /etc/passwd "$work/p" 2>&1); rc2=$?
[ $rc1 = 2 ] && [[ "$bad1" == *InvalidInput* ]] && [ $rc2 = 2 ] && [[ "$bad2" == *InvalidInput* ]] \
    && [ ! -e "$work/p" ] \
    && ok "guest paths ../x and /etc/passwd are InvalidInput (nothing written)" \
    || not_ok "bad paths" "rc1=$rc1 $bad1" "rc2=$rc2 $bad2"
nf=$("$ctl" session download "$id" no/such/file "$work/nf" 2>&1); rc=$?
[ $rc = 125 ] && [[ "$nf" == *NotFound* ]] && [ ! -e "$work/nf" ] \
    && ok "a missing guest file is NotFound and leaves no local file" || not_ok "NotFound" "rc=$rc $nf"
ns=$("$ctl" session exec 0123456789abcdef0123456789abcdef 'print(1)' 2>&1); rc=$?
[ $rc = 125 ] && [[ "$ns" == *NotFound*"no session"* ]] \
    && ok "an unknown session id is NotFound" || not_ok "unknown session" "rc=$rc $ns"

# 11-12: Close, then calls are SessionClosed; the Closed signal says why
"$ctl" session close "$id" 2>"$work/err"; rc=$?
if [ $rc = 0 ] && wait_closed "$id" closed; then ok "Close destroys the VM and emits Closed('closed')"; else
    not_ok "Close" "rc=$rc" "$(cat "$work/err")"; fi
out=$("$ctl" session exec "$id" 'print(1)' 2>&1); rc=$?
[ $rc = 125 ] && [[ "$out" == *SessionClosed*"closed (Close)"* ]] \
    && ok "Exec after Close fails with SessionClosed" || not_ok "Exec after Close" "rc=$rc $out"

# 13-14: exit 137 is reported, then closes the session with its reason
id2=$("$ctl" session create --idle-timeout 300 2>"$work/err")
out=$("$ctl" session exec "$id2" 'import os; os.kill(os.getpid(), 9)' 2>&1); rc=$?
[ $rc = 137 ] && ok "exec killed by SIGKILL reports exit 137" || not_ok "exit 137" "rc=$rc $out" "$(cat "$work/err")"
out=
if wait_closed "$id2" exit-137; then
    out=$("$ctl" session exec "$id2" 'print(1)' 2>&1); rc=$?
fi
[[ "$out" == *SessionClosed*"exit 137"* ]] \
    && ok "exit 137 closes the session: Closed('exit-137'), then SessionClosed naming it" \
    || not_ok "closed after 137" "$out"

# 15: a session outlives a client that only created it (detached), and a
# client killed while holding an attached session leaves no VM
mkfifo "$work/hold"
exec 3<>"$work/hold"   # a writer that never writes: the holder waits on its stdin until killed
"$ctl" session create --attach --idle-timeout 300 <"$work/hold" >"$work/held" 2>&1 &
holder_pid=$!
for _ in $(seq 1 1800); do [ -s "$work/held" ] && break; sleep 0.1; done
id3=$(head -n1 "$work/held")
before=$(vm_count)
kill -KILL "$holder_pid"; wait "$holder_pid" 2>/dev/null; holder_pid=
exec 3<&-
if [[ "$id3" =~ ^[0-9a-f]{32}$ ]] && [ "$before" -ge 1 ] && wait_closed "$id3" owner-left \
    && [ "$(vm_count)" = 0 ] && [ "$(status_of sessions)" = 0 ]; then
    ok "a client killed while holding a session: Closed('owner-left'), no VM left"
else
    not_ok "killed holder" "id=$id3 vms before=$before after=$(vm_count)" "$(cat "$work/held")"
fi

# 16: the idle timeout (3 s from the config file) closes a session
id4=$("$ctl" session create 2>"$work/err")
if [[ "$id4" =~ ^[0-9a-f]{32}$ ]] && wait_closed "$id4" idle && [ "$(vm_count)" = 0 ]; then
    ok "an idle session is closed by its idle timeout: Closed('idle'), VM gone"
else
    not_ok "idle timeout" "id=$id4 vms=$(vm_count)" "$(cat "$work/err")"
fi

# 17-18: run --upload / --download, through the daemon and embedded
code='import hashlib, os; os.makedirs("out", exist_ok=True); open("out/sum.txt", "w").write(hashlib.sha256(open("in.bin", "rb").read()).hexdigest())'
"$ctl" run -q --upload "$work/rand.bin:in.bin" --download "out/sum.txt:$work/sum1" "$code" \
    2>"$work/err"; rc=$?
[ $rc = 0 ] && [ "$(cat "$work/sum1" 2>/dev/null)" = "$h1" ] \
    && ok "run --upload/--download through schedulerd" \
    || not_ok "run with files (daemon)" "rc=$rc" "$(cat "$work/err")"
"$ctl" run -q --embedded --config "$work/embedded.conf" --upload "$work/rand.bin:in.bin" \
    --download "out/sum.txt:$work/sum2" "$code" 2>"$work/err"; rc=$?
[ $rc = 0 ] && [ "$(cat "$work/sum2" 2>/dev/null)" = "$h1" ] \
    && ok "run --upload/--download embedded (same guest client, in-process)" \
    || not_ok "run with files (embedded)" "rc=$rc" "$(cat "$work/err")"

# 19: sessions need the daemon: a clear line in embedded mode; nothing left
out=$("$ctl" session create --embedded 2>&1); rc=$?
[ $rc = 125 ] && [[ "$out" == *"sessions need schedulerd"* ]] && [ "$(vm_count)" = 0 ] \
    && [ "$(status_of sessions)" = 0 ] && [ "$(status_of runs_in_flight)" = 0 ] \
    && ok "session create --embedded says sessions need schedulerd; no session or VM left" \
    || not_ok "embedded refusal / leftovers" "rc=$rc $out" "vms=$(vm_count)" "$("$ctl" status)"

# 20: SIGTERM with a session open: it is closed ('shutdown'), the VM destroyed, exit 0
# (the bus name is already released then, so the reason is read from the log)
id5=$("$ctl" session create --idle-timeout 300 2>"$work/err")
before=$(vm_count)
kill -TERM "$daemon_pid"
wait "$daemon_pid"; rc=$?
daemon_pid=
if [[ "$id5" =~ ^[0-9a-f]{32}$ ]] && [ "$before" = 1 ] && [ $rc = 0 ] \
    && grep -q "session $id5 closed (shutdown)" "$work/daemon.log" && [ "$(vm_count)" = 0 ]; then
    ok "SIGTERM with a session open: Closed('shutdown'), VM destroyed, schedulerd exits 0"
else
    not_ok "SIGTERM with a session" "id=$id5 vms before=$before after=$(vm_count) rc=$rc" \
        "$(grep "$id5" "$work/daemon.log")"
fi
