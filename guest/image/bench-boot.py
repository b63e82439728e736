#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Boot benchmark of the guest image under plain QEMU (the raw floor the scheduler's
cold-boot path is compared against).

Boots the image N times (default 10) with the contract's device set (microvm, TCG,
virtio-mmio, root erofs + work disk overlay, agent port on a socketpair) and reports, in
host seconds from Popen():
  first_byte  the first byte on the agent port (the agent's hello), when the image has
              an agent; otherwise init's "no agent" console line, i.e. the moment init
              would have exec'd the agent (root mounted, switch_root done)
  exit        QEMU exit (only for images without an agent: init powers off)
Prints one line per run and min/median/max, and which accelerator was used (always TCG
on hosts without real KVM; see docs/guest-image.md).

With an agent it also reads the whole hello frame and prints the guest's own boot
timeline from its optional "boot" member (CLOCK_BOOTTIME inside the guest, one clock):
  init     kernel -> init's first instruction (init_start)
  modules  init's module loading
  root     disks found, root mounted, switch_root
  pre-exec lo/network, sysctls, up to execve
  ld       execve -> the agent's main() (loader, relocation, constructors)
  main     main() -> hello built (the agent's own start-up work)

usage: bench-boot.py [--image DIR] [-n N] [--no-work] [--cmdline STR]
"""
import argparse
import json
import os
import struct
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

AGENT_PORT = "org.schedulerd.agent.0"


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


def boot_once(qemu, image, work, has_agent, cmdline=None, timeout=120.0):
    if cmdline is None:
        with open(os.path.join(image, "cmdline")) as f:
            cmdline = f.read().strip()
    append = "%s tsc_early_khz=%d" % (cmdline, host_tsc_khz())
    host_end, guest_end = socket.socketpair()
    argv = [qemu, "-M", "microvm", "-accel", "tcg", "-m", "512", "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-global", "virtio-mmio.force-legacy=false",
            "-kernel", os.path.join(image, "vmlinux"),
            "-initrd", os.path.join(image, "initramfs.cpio"),
            "-append", append, "-serial", "stdio",
            "-drive", "file=%s,format=raw,if=none,id=root,readonly=on"
            % os.path.join(image, "rootfs.erofs"),
            "-device", "virtio-blk-device,drive=root,serial=sbx-root"]
    if work:
        argv += ["-drive", "file=%s,format=qcow2,if=none,id=work" % work,
                 "-device", "virtio-blk-device,drive=work,serial=sbx-work"]
    argv += ["-device", "virtio-serial-device",
             "-chardev", "socket,id=agent,fd=%d" % guest_end.fileno(),
             "-device", "virtserialport,chardev=agent,name=" + AGENT_PORT]
    marks = {}
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, pass_fds=(guest_end.fileno(),))
    guest_end.close()

    def console():
        for line in proc.stdout:
            if b"sbx-init: no agent" in line and "first_byte" not in marks:
                marks["first_byte"] = time.monotonic() - t0
    reader = threading.Thread(target=console, daemon=True)
    reader.start()
    try:
        if has_agent:
            host_end.settimeout(timeout)
            first = host_end.recv(1)
            if first:
                marks["first_byte"] = time.monotonic() - t0
                hello = read_frame(host_end, first)
                if hello is not None:
                    marks["boot"] = hello.get("boot") or {}
            proc.kill()
        else:
            proc.wait(timeout)
            marks["exit"] = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(5)
        host_end.close()
    return marks


def read_exact(sock, n, buf=b""):
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_frame(sock, first):
    """The JSON header of the frame that starts with the byte @first (the hello)."""
    prefix = read_exact(sock, 8, first)
    if prefix is None:
        return None
    hlen, plen = struct.unpack(">II", prefix)
    body = read_exact(sock, hlen + plen)
    if body is None:
        return None
    return json.loads(body[:hlen].decode("utf-8"))


# (name, from, to) over the hello's "boot" member; ms between the two marks.
STAGES = [("init", None, "init_start_ns"), ("modules", "init_start_ns", "modules_ns"),
          ("root", "modules_ns", "root_ns"), ("pre-exec", "root_ns", "exec_ns"),
          ("ld", "exec_ns", "main_ns"), ("main", "main_ns", "hello_ns")]


def stage_ms(boot):
    out = {}
    for name, a, b in STAGES:
        if b in boot and (a is None or a in boot):
            out[name] = (boot[b] - (boot[a] if a else 0)) / 1e6
    if "exec_ns" in boot and "hello_ns" in boot:
        out["exec->hello"] = (boot["hello_ns"] - boot["exec_ns"]) / 1e6
    return out


def summary(values):
    if not values:
        return "n/a"
    return "%.3f / %.3f / %.3f" % (min(values), statistics.median(values), max(values))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default=os.environ.get("SBX_GUEST_DIR", "guest/image/current"))
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--no-work", action="store_true", help="no work disk (/home/user tmpfs)")
    ap.add_argument("--cmdline", help="kernel command line instead of the image's (A/B tests)")
    args = ap.parse_args()
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        sys.exit("qemu-system-x86_64 not found")
    with open(os.path.join(args.image, "manifest.json")) as f:
        manifest = json.load(f)
    has_agent = bool(manifest.get("agent_sha256"))
    what = "agent first byte on %s" % AGENT_PORT if has_agent else "init's 'no agent' line"
    print("bench-boot: image %s (kernel %s), accel tcg, N=%d, measuring %s"
          % (os.path.realpath(args.image), manifest["kernel_version"], args.n, what))
    firsts, exits, stages = [], [], {}
    with tempfile.TemporaryDirectory(prefix="sbx-bench-boot.") as tmp:
        for i in range(args.n):
            work = None
            if not args.no_work:
                work = os.path.join(tmp, "work%d.qcow2" % i)
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b",
                                os.path.abspath(os.path.join(args.image, "work-seed.ext4")),
                                "-F", "raw", work], check=True)
            m = boot_once(qemu, args.image, work, has_agent, args.cmdline)
            if "first_byte" in m:
                firsts.append(m["first_byte"])
            if "exit" in m:
                exits.append(m["exit"])
            st = stage_ms(m.get("boot", {}))
            for k, v in st.items():
                stages.setdefault(k, []).append(v)
            print("run %2d: first_byte %s  exit %s%s" % (
                i + 1, "%.3f" % m["first_byte"] if "first_byte" in m else "-",
                "%.3f" % m["exit"] if "exit" in m else "-",
                "  guest ms: " + " ".join("%s %.1f" % kv for kv in st.items()) if st else ""))
    print("first_byte min/median/max: %s s (%d/%d runs)" % (summary(firsts), len(firsts), args.n))
    if exits:
        print("exit       min/median/max: %s s" % summary(exits))
    for k, v in stages.items():
        print("guest %-11s min/median/max: %s ms" % (k, summary(v)))
    return 0 if len(firsts) == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
