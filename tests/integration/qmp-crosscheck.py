#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# Cross-check of qmp/ against an independent QMP client: one real QEMU
# (started by tests/integration/qmp-dump through sbx-spawn) has two QMP
# monitors; qmp-dump answers through our QmpClient on the first, this script
# speaks QMP itself (Python stdlib socket + json) on the second. Both must see
# the same greeting version, the same replies to the same commands (including
# a ~100 KiB query-qmp-schema line), the same error class and the same
# SHUTDOWN event. TAP output.
import json
import os
import socket
import shutil
import subprocess
import sys

COMMANDS = [
    "query-status",
    "query-version",
    "query-name",
    "query-kvm",
    "query-commands",
    "query-qmp-schema",
    "query-chardev",
    "query-machines",
    "query-fdsets",
    "no-such-command",
]


def skip(reason):
    print("1..0 # SKIP " + reason)
    sys.exit(77)


class PyQmp:
    """A deliberately simple, blocking QMP client (reference implementation)."""

    def __init__(self, sock):
        self.sock = sock
        self.file = sock.makefile("rb")
        self.events = []
        self.next_id = 100

    def read(self):
        line = self.file.readline()
        if not line:
            raise EOFError("QMP connection closed")
        return json.loads(line)

    def execute(self, command):
        self.next_id += 1
        msg = {"execute": command, "id": self.next_id}
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self.read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if reply.get("id") != self.next_id:
                raise RuntimeError("reply with unexpected id: %r" % reply)
            return reply


def main():
    top_builddir = os.environ.get("top_builddir", os.getcwd())
    dump = os.path.join(top_builddir, "tests", "integration", "qmp-dump")
    if shutil.which("qemu-system-x86_64") is None:
        skip("qemu-system-x86_64 not found (Debian: qemu-system-x86)")
    if not os.access(dump, os.X_OK):
        skip("%s not built (make check builds it)" % dump)

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    os.set_inheritable(theirs.fileno(), True)
    proc = subprocess.Popen(
        [dump, "--extra-monitor-fd", str(theirs.fileno())] + COMMANDS,
        pass_fds=(theirs.fileno(),),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    theirs.close()
    tests = []  # (ok, name, diag)
    try:
        py = PyQmp(ours)
        greeting = py.read()
        py_version = greeting["QMP"]["version"]["qemu"]
        assert py.execute("qmp_capabilities").get("return") == {}
        py_replies = {c: py.execute(c) for c in COMMANDS}

        lines = [json.loads(proc.stdout.readline()) for _ in range(1 + len(COMMANDS))]
        c_version = lines[0]["greeting"]
        tests.append((c_version == py_version, "greeting version", "%r vs %r" % (c_version, py_version)))
        for c, line in zip(COMMANDS, lines[1:]):
            ref = py_replies[c]
            if "return" in ref:
                ok = line.get("command") == c and line.get("return") == ref["return"]
                size = len(json.dumps(ref["return"]))
                tests.append((ok, "%s: same reply (%d bytes)" % (c, size), "" if ok else "differs"))
            else:
                ok = line.get("error-class") == ref["error"]["class"]
                tests.append((ok, "%s: same error class %s" % (c, ref["error"]["class"]),
                              "got %r" % line.get("error-class")))

        proc.stdin.write(b"quit\n")
        proc.stdin.flush()
        # Events go to every monitor: the Python side sees the same SHUTDOWN.
        py_shutdown = next((e for e in py.events if e["event"] == "SHUTDOWN"), None)
        while py_shutdown is None:
            try:
                e = py.read()
            except (EOFError, ConnectionResetError):
                break
            if e.get("event") == "SHUTDOWN":
                py_shutdown = e
        c_event = json.loads(proc.stdout.readline() or "null")
        ok = (py_shutdown is not None and c_event is not None
              and c_event.get("event") == "SHUTDOWN" and c_event.get("data") == py_shutdown.get("data"))
        tests.append((ok, "SHUTDOWN event data identical", "%r vs %r" % (c_event, py_shutdown)))
        rc = proc.wait(timeout=60)
        tests.append((rc == 0, "qmp-dump exits 0 after quit", "rc=%d" % rc))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ours.close()

    print("1..%d" % len(tests))
    failed = 0
    for i, (ok, name, diag) in enumerate(tests, 1):
        print("%s %d - %s" % ("ok" if ok else "not ok", i, name))
        if not ok:
            failed += 1
            print("# " + diag[:2000])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
