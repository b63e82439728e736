#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Integration test: boot the real guest image (make guest-image) under TCG with plain
qemu-system-x86_64, the way the host attaches it (docs/guest-image.md), and check the
chain kernel -> initramfs init (guest/init/sbx-init) -> read-only erofs root -> agent.

The init's `sbx.debug` option prints its mount table and sysctls on the serial console and
`sbx.agent=PATH` names the program to exec; pointing it at a path that does not exist
makes init report the missing agent and power off, which exercises the whole init path
whether or not the image already contains the agent. The last case boots the image as is:
with an agent it expects the agent's hello frame on the agent port (with python3, node
and sh found in the root), without one init's report.

TAP output, stdlib only. Skips (77) when the image or QEMU is missing.
"""
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import hashlib

BOOT_TIMEOUT = 120  # a hang guard, not a timing assertion (TCG on a loaded 2-core host)
AGENT_PORT = "org.schedulerd.agent.0"

results = []


def tap_skip(reason):
    print("1..0 # SKIP " + reason)
    sys.exit(77)


def check(ok, name, diag=None):
    results.append(ok)
    print("%s %d - %s" % ("ok" if ok else "not ok", len(results), name))
    if not ok and diag:
        for line in str(diag).splitlines()[-60:]:
            print("# " + line)


def host_tsc_khz():
    try:
        with open("/sys/devices/system/cpu/cpu0/tsc_freq_khz") as f:
            return int(f.read().strip())
    except OSError:
        pass
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    raise RuntimeError("no cpu MHz in /proc/cpuinfo")


class Boot:
    """One QEMU run: console text, bytes from the agent port, exit status."""

    def __init__(self, image, extra_append="", root=True, work=None, wait_frame=False):
        with open(os.path.join(image, "cmdline")) as f:
            cmdline = f.read().strip()
        append = "%s tsc_early_khz=%d %s" % (cmdline, host_tsc_khz(), extra_append)
        host_end, guest_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [
            QEMU, "-M", "microvm", "-accel", "tcg", "-m", "512", "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-global", "virtio-mmio.force-legacy=false",
            "-kernel", os.path.join(image, "vmlinux"),
            "-initrd", os.path.join(image, "initramfs.cpio"),
            "-append", append.strip(),
            "-serial", "stdio",
        ]
        if root:
            argv += ["-drive", "file=%s,format=raw,if=none,id=root,readonly=on"
                     % os.path.join(image, "rootfs.erofs"),
                     "-device", "virtio-blk-device,drive=root,serial=sbx-root"]
        if work:
            argv += ["-drive", "file=%s,format=qcow2,if=none,id=work" % work,
                     "-device", "virtio-blk-device,drive=work,serial=sbx-work"]
        argv += ["-device", "virtio-serial-device",
                 "-chardev", "socket,id=agent,fd=%d" % guest_end.fileno(),
                 "-device", "virtserialport,chardev=agent,name=" + AGENT_PORT]
        self.port_data = b""
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, pass_fds=(guest_end.fileno(),))
        guest_end.close()
        out = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
        reader.start()
        host_end.settimeout(1.0)
        try:
            deadline = t0 + BOOT_TIMEOUT
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    chunk = host_end.recv(65536)
                except socket.timeout:
                    continue
                if chunk:
                    self.port_data += chunk
                    if wait_frame and first_frame(self.port_data):
                        break
                else:
                    time.sleep(0.05)  # port closed; QEMU is about to exit
            self.timed_out = proc.poll() is None and not (
                wait_frame and first_frame(self.port_data))
        finally:
            if proc.poll() is None:
                proc.kill()
            self.rc = proc.wait()
            reader.join(10)
            host_end.close()
        self.console = (out[0] if out else b"").decode("utf-8", "replace")

    def log(self):
        return "rc=%s timed_out=%s\n%s" % (self.rc, self.timed_out, self.console)


def first_frame(data):
    """The JSON header of the first complete wire frame in data (docs/guest-protocol.md:
    u32be header_len | u32be payload_len | JSON header | payload), or None."""
    if len(data) < 8:
        return None
    hl, pl = struct.unpack(">II", data[:8])
    if len(data) < 8 + hl + pl:
        return None
    try:
        return json.loads(data[8:8 + hl].decode("utf-8"))
    except ValueError:
        return {"undecodable": data[:8 + hl]}


def lines(console, prefix):
    return [l.strip() for l in console.splitlines() if l.strip().startswith(prefix)]


def mount_of(console, target):
    """The 'sbx-init: mount: SRC TARGET TYPE OPTS ...' line for target, split."""
    for l in lines(console, "sbx-init: mount: "):
        f = l[len("sbx-init: mount: "):].split()
        if len(f) >= 4 and f[1] == target:
            return f
    return None


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rootfs_contents(image, manifest, dest):
    """fsck.erofs --extract the root and check its contents: (ok, name, diagnostics)."""
    name = ("rootfs.erofs extracts cleanly; has python3, Debian node 18, sh, .pyc, user 1000, "
            "CA certificates, no docs; the initramfs has the manifest's agent")
    fsck = shutil.which("fsck.erofs")
    if not fsck:
        return False, name, "fsck.erofs not installed (erofs-utils)"
    r = subprocess.run([fsck, "--extract=" + dest, os.path.join(image, "rootfs.erofs")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return False, name, "fsck.erofs failed: %s%s" % (r.stdout, r.stderr)
    problems = []

    def has(rel):
        return os.path.lexists(os.path.join(dest, rel))
    for rel in ("usr/bin/python3", "usr/bin/node", "bin/sh", "home/user", "tmp", "run",
                "usr/lib/python3.11/__pycache__/os.cpython-311.pyc"):
        if not has(rel):
            problems.append("missing /" + rel)
    try:
        with open(os.path.join(dest, "usr/lib/ssl/cert.pem")) as f:  # openssl's default CAfile
            ncerts = f.read().count("BEGIN CERTIFICATE")
    except OSError:
        ncerts = 0
    if ncerts < 50:
        problems.append("TLS trust store /usr/lib/ssl/cert.pem has %d certificates" % ncerts)
    for rel in ("usr/share/doc", "usr/share/man"):
        if has(rel):
            problems.append("/%s not stripped" % rel)
    with open(os.path.join(dest, "etc/passwd")) as f:
        if not any(l.startswith("user:x:1000:1000:") and l.rstrip().split(":")[5] == "/home/user"
                   for l in f):
            problems.append("/etc/passwd has no user 1000 with home /home/user")
    with open(os.path.join(dest, "etc/group")) as f:
        if not any(l.startswith("user:x:1000:") for l in f):
            problems.append("/etc/group has no group 1000")
    # The agent is in the initramfs (/agent, bind-mounted at /usr/libexec/sbx by init).
    if not os.path.isdir(os.path.join(dest, "usr/libexec/sbx")):
        problems.append("no /usr/libexec/sbx (the agent's mount point) in the root")
    ird = dest + ".initramfs"
    os.makedirs(ird)
    with open(os.path.join(image, "initramfs.cpio"), "rb") as cpio_in:
        r = subprocess.run(["cpio", "-id", "--quiet"], cwd=ird, stdin=cpio_in,
                           capture_output=True, text=True)
    if r.returncode != 0:
        problems.append("cpio -i initramfs.cpio failed: %s" % r.stderr)
    agent = os.path.join(ird, "agent/sbx-agent")
    if manifest.get("agent_sha256"):
        if not os.path.isfile(agent) or sha256_file(agent) != manifest["agent_sha256"]:
            problems.append("initramfs /agent/sbx-agent differs from manifest agent_sha256")
    elif os.path.lexists(agent):
        problems.append("agent present but manifest says none")
    try:
        with open(os.path.join(image, "packages.txt")) as f:
            pk = dict(l.strip().split("=", 1) for l in f if "=" in l)
        if not pk.get("nodejs", "").startswith("18.") or "nodesource" in pk.get("nodejs", ""):
            problems.append("nodejs is %r, not Debian's 18.x" % pk.get("nodejs"))
        for p in ("python3", "libglib2.0-0", "libjson-glib-1.0-0"):
            if p not in pk:
                problems.append("package %s missing" % p)
    except OSError as e:
        problems.append("packages.txt: %s" % e)
    return not problems, name, "\n".join(problems)


def main():
    image = os.environ.get("SBX_GUEST_DIR") or os.path.join(
        os.environ.get("top_builddir", "."), "guest/image/current")
    if not os.path.isfile(os.path.join(image, "manifest.json")):
        tap_skip("no guest image at %s (run `make guest-image`)" % image)
    if not QEMU:
        tap_skip("qemu-system-x86_64 not installed")
    qemu_img = shutil.which("qemu-img")
    if not qemu_img:
        tap_skip("qemu-img not installed")
    with open(os.path.join(image, "manifest.json")) as f:
        manifest = json.load(f)

    print("1..%d" % (10 if manifest.get("agent_sha256") else 9))

    # 1. the image matches its manifest
    bad = []
    for name, info in sorted(manifest["files"].items()):
        p = os.path.join(image, name)
        if os.path.getsize(p) != info["size"] or sha256_file(p) != info["sha256"]:
            bad.append(name)
    want = {"vmlinux", "initramfs.cpio", "rootfs.erofs", "work-seed.ext4", "cmdline"}
    check(not bad and want <= set(manifest["files"]) and manifest["format"] == 1,
          "image files match manifest.json", "bad: %s, files: %s" % (bad, list(manifest["files"])))

    with tempfile.TemporaryDirectory(prefix="sbx-guest-boot.") as tmp:
        # 2. the root filesystem decompresses cleanly and holds what the contract lists
        check(*rootfs_contents(image, manifest, os.path.join(tmp, "rootfs")))
        shutil.rmtree(os.path.join(tmp, "rootfs"), ignore_errors=True)

        work = os.path.join(tmp, "work.qcow2")
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-b",
                        os.path.abspath(os.path.join(image, "work-seed.ext4")), "-F", "raw", work],
                       check=True)

        # 3-5. root + work disk, debug output, agent path that does not exist
        b = Boot(image, "sbx.debug sbx.agent=/nonexistent-agent", work=work)
        root = mount_of(b.console, "/")
        home = mount_of(b.console, "/home/user")
        tmpm = mount_of(b.console, "/tmp")
        run = mount_of(b.console, "/run")
        ok = (root is not None and root[2] == "erofs" and root[3].split(",")[0] == "ro"
              and home is not None and home[2] == "ext4" and home[3].split(",")[0] == "rw"
              and tmpm is not None and tmpm[2] == "tmpfs" and "size=" in tmpm[3]
              and run is not None and run[2] == "tmpfs")
        check(ok, "init mounts erofs root ro, work disk ext4 on /home/user, tmpfs /tmp and /run",
              b.log())
        sysctls = {}
        for l in lines(b.console, "sbx-init: sysctl: "):
            k, _, v = l[len("sbx-init: sysctl: "):].partition(" = ")
            sysctls[k] = v
        want_sysctl = {"kernel/unprivileged_bpf_disabled": "1", "user/max_user_namespaces": "0",
                       "vm/unprivileged_userfaultfd": "0", "kernel/kptr_restrict": "2",
                       "kernel/dmesg_restrict": "1", "kernel/yama/ptrace_scope": "2"}
        check(sysctls == want_sysctl, "hardening sysctls are set before the agent runs",
              "got %s\n%s" % (sysctls, b.log()))
        check(not b.timed_out and b.rc == 0
              and any("no agent: /nonexistent-agent" in l for l in lines(b.console, "sbx-init:")),
              "missing agent: init reports it and powers off (QEMU exits 0)", b.log())

        # 6. no work disk: /home/user is a tmpfs owned by the user
        b = Boot(image, "sbx.debug sbx.agent=/nonexistent-agent")
        home = mount_of(b.console, "/home/user")
        check(home is not None and home[2] == "tmpfs" and "uid=1000" in home[3]
              and "gid=1000" in home[3] and b.rc == 0 and not b.timed_out,
              "without a work disk /home/user is a tmpfs owned by uid 1000", b.log())

        # 7. the work seed's root is owned by 1000 (checked on the host side with debugfs)
        debugfs = shutil.which("debugfs") or "/sbin/debugfs"
        st = subprocess.run([debugfs, "-R", "stat /", os.path.join(image, "work-seed.ext4")],
                            capture_output=True, text=True)
        check(st.returncode == 0 and "User:  1000" in st.stdout and "Group:  1000" in st.stdout
              and "Mode:  0755" in st.stdout,
              "work-seed.ext4 root directory is 0755 and owned by 1000:1000",
              st.stdout + st.stderr)

        # 8. no root disk: init fails clearly and powers off (never hangs)
        b = Boot(image, "", root=False)
        check(not b.timed_out and b.rc == 0
              and any('fatal: no disk with serial "sbx-root"' in l for l in lines(b.console, "sbx-init:")),
              "without a root disk init reports it and powers off", b.log())

        # 9. the image as built: the agent's first bytes arrive on the port, or (image
        #    without an agent) init reports the missing /usr/libexec/sbx/sbx-agent
        if manifest.get("agent_sha256"):
            b = Boot(image, "", work=work, wait_frame=True)
            hello = first_frame(b.port_data) or {}
            langs = hello.get("languages", {})
            check(hello.get("type") == "hello" and hello.get("protocol") == 1
                  and langs.get("python") is True and langs.get("javascript") is True
                  and langs.get("raw") is True,
                  "the agent's hello arrives on %s and finds python3, node and sh" % AGENT_PORT,
                  "hello: %r\nport: %r\n%s" % (hello, b.port_data[:300], b.log()))
            boot = hello.get("boot") or {}
            marks = [boot.get(k) for k in ("init_start_ns", "modules_ns", "root_ns", "exec_ns",
                                           "main_ns", "hello_ns")]
            check(boot.get("clock") == "boottime" and all(isinstance(m, int) and m > 0 for m in marks)
                  and marks == sorted(marks),
                  "the hello carries the boot timeline (init start, modules, root, exec, agent "
                  "main, hello) in order", "boot: %r" % (boot,))
        else:
            b = Boot(image, "", work=work)
            check(not b.timed_out and b.rc == 0
                  and any("no agent: /usr/libexec/sbx/sbx-agent" in l for l in lines(b.console, "sbx-init:")),
                  "image without agent: init reaches exec of /usr/libexec/sbx/sbx-agent and reports it",
                  b.log())

    sys.exit(0 if all(results) else 1)


QEMU = shutil.which("qemu-system-x86_64")

if __name__ == "__main__":
    main()
