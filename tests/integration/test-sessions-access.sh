#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Session ownership across uids: schedulerd (root) on a private bus that lets
# any uid connect (like the system bus), real QEMU + guest image. A session
# belongs to the uid that created it: another uid gets AccessDenied on every
# method, the owner's other connections and root may use it. The client runs
# as uid 65534 through setpriv. Prints TAP.
set -u

if [ "$(id -u)" != 0 ]; then
    echo "1..0 # SKIP needs root to run a second client as another uid (setpriv)"
    exit 77
fi
for t in dbus-daemon setpriv gdbus; do
    if ! command -v $t >/dev/null; then
        echo "1..0 # SKIP $t not installed (ci/deps.sh installs it)"
        exit 77
    fi
done
b=${top_builddir:?}
ctl=$b/schedulerctl
if [ ! -f "${SBX_GUEST_DIR:-}/vmlinux" ]; then
    echo "1..0 # SKIP no guest image in SBX_GUEST_DIR (make guest-image)"
    exit 77
fi
export SCHEDULERD_L1=0 SCHEDULERD_WARM_POOL=0
work=$(mktemp -d /tmp/sbx-session-access.XXXXXX)
chmod 755 "$work" # the other uid reaches the bus socket
rt=$work/run
bus_pid=
daemon_pid=
cleanup() {
    if [ -n "$daemon_pid" ]; then
        kill -TERM "$daemon_pid" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$daemon_pid" 2>/dev/null
    fi
    [ -n "$bus_pid" ] && kill -TERM "$bus_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=$work/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
EOF
dbus-daemon --config-file="$work/bus.conf" --nofork --nopidfile 2>"$work/bus.log" &
bus_pid=$!
export DBUS_SESSION_BUS_ADDRESS=unix:path=$work/bus
for _ in $(seq 1 100); do [ -S "$work/bus" ] && break; sleep 0.1; done

n=0
ok() { n=$((n+1)); echo "ok $n - $1"; }
not_ok() { n=$((n+1)); echo "not ok $n - $1"; shift; for l in "$@"; do echo "# $l"; done; }
as_other() { setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/nonexistent "$@"; }
vm_count() { pgrep -f -- "$rt/vms/" | wc -l; }

echo "1..6"

"$b/schedulerd" --runtime-dir "$rt" --accel tcg >"$work/daemon.log" 2>&1 &
daemon_pid=$!
up=0
for _ in $(seq 1 300); do
    if gdbus introspect --session -d org.schedulerd.Scheduler1 -o /org/schedulerd/Scheduler1 \
        >/dev/null 2>&1; then up=1; break; fi
    kill -0 "$daemon_pid" 2>/dev/null || break
    sleep 0.1
done
if [ $up = 1 ] && as_other "$ctl" status >/dev/null 2>&1; then
    ok "schedulerd serves a bus that uid 65534 can reach too"
else
    not_ok "daemon / bus" "$(cat "$work/daemon.log" "$work/bus.log")"; echo "Bail out!"; exit 1
fi

# 2-3: root's session: uid 65534 is refused on every method, root is not
id=$("$ctl" session create --idle-timeout 300 2>"$work/err")
e1=$(as_other "$ctl" session exec "$id" 'print("should not run")' 2>&1); r1=$?
e2=$(as_other "$ctl" session ls "$id" 2>&1); r2=$?
e3=$(as_other "$ctl" session download "$id" x - 2>&1); r3=$?
e4=$(as_other "$ctl" session close "$id" 2>&1); r4=$?
if [[ "$id" =~ ^[0-9a-f]{32}$ ]] && [ $r1 = 125 ] && [ $r2 = 125 ] && [ $r3 = 125 ] && [ $r4 = 125 ] \
    && [[ "$e1" == *AccessDenied*"belongs to uid 0"* ]] && [[ "$e2" == *AccessDenied* ]] \
    && [[ "$e3" == *AccessDenied* ]] && [[ "$e4" == *AccessDenied* ]] \
    && [[ "$e1" != *"should not run"* ]]; then
    ok "another uid gets AccessDenied on Exec, ListFiles, ReadFile and Close"
else
    not_ok "AccessDenied" "id=$id $(cat "$work/err")" "$r1 $e1" "$r2 $e2" "$r3 $e3" "$r4 $e4"
fi
out=$("$ctl" session exec "$id" 'print("root ok")' 2>&1); rc=$?
[ $rc = 0 ] && [ "$out" = "root ok" ] && ok "the session is intact and usable by its owner after the refusals" \
    || not_ok "owner after refusals" "rc=$rc $out"

# 4-5: uid 65534's session: its other connections may use it, and root may
id2=$(as_other "$ctl" session create --idle-timeout 300 2>"$work/err")
o1=$(as_other "$ctl" session exec "$id2" 'import os; print(os.getuid() >= 0)' 2>&1); r1=$?
[ $r1 = 0 ] && [ "$o1" = True ] && ok "the owner uid uses its session from another connection" \
    || not_ok "owner from another connection" "id=$id2 $(cat "$work/err")" "$r1 $o1"
o2=$("$ctl" session exec "$id2" 'print("root may")' 2>&1); r2=$?
[ $r2 = 0 ] && [ "$o2" = "root may" ] && ok "root may use another uid's session" \
    || not_ok "root on another uid's session" "$r2 $o2"

# 6: both closed by their owners; nothing left
as_other "$ctl" session close "$id2" 2>"$work/err"; r1=$?
"$ctl" session close "$id" 2>>"$work/err"; r2=$?
sess=$("$ctl" status | awk '$1 == "sessions" { print $2 }')
[ $r1 = 0 ] && [ $r2 = 0 ] && [ "$sess" = 0 ] && [ "$(vm_count)" = 0 ] \
    && ok "owners close their sessions; no session or VM left" \
    || not_ok "close" "$r1 $r2 sessions=$sess vms=$(vm_count)" "$(cat "$work/err")"
