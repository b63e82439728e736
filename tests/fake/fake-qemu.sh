#!/bin/sh
# SPDX-License-Identifier: MIT
#
# A fake qemu-system-x86_64 for the error paths of the VM lifecycle
# (tests/integration/test-vm-lifecycle.c): the scheduler spawns it exactly as
# it spawns QEMU (QMP socket on fd 3, guest-agent socket on fd 4, console =
# stdout+stderr). The first word of the file named by $FAKE_QEMU_MODE_FILE
# (else $FAKE_QEMU_MODE) picks the behaviour:
#   hang     print a few console lines, then never answer (boot timeout)
#   crash    print a message and exit 1 at once
#   garbage  write a non-JSON line on the QMP fd, then hang
# Hanging is `exec sleep`, so the process the scheduler kills is the only one.
mode=${FAKE_QEMU_MODE:-hang}
if [ -n "$FAKE_QEMU_MODE_FILE" ] && [ -r "$FAKE_QEMU_MODE_FILE" ]; then
    read -r mode _ < "$FAKE_QEMU_MODE_FILE"
fi
case "$mode" in
hang)
    echo "fake-qemu: console line one"
    echo "fake-qemu: console line two (pid $$)"
    exec sleep 600
    ;;
crash)
    echo "fake-qemu: cannot allocate guest RAM (simulated)" >&2
    exit 1
    ;;
garbage)
    echo "fake-qemu: about to speak nonsense on QMP"
    printf 'this is not a QMP greeting\n{"also": not json\n' >&3
    exec sleep 600
    ;;
*)
    echo "fake-qemu: unknown mode '$mode'" >&2
    exit 2
    ;;
esac
