// SPDX-License-Identifier: MIT
/*
 * sbx-init: PID 1 of the guest initramfs (a static binary, no GLib).
 *
 * It turns the kernel's bare initramfs into the sandbox's root and hands over to the
 * guest agent: mounts /proc /sys /dev, loads the modules listed in /etc/modules.list
 * (finit_module), finds the disks the host attached by their virtio serial ("sbx-root",
 * "sbx-work" in /sys/block/vd* /serial), mounts the root read-only (erofs) on /newroot,
 * moves /proc /sys /dev there, adds devpts, /dev/shm, tmpfs /tmp and /run, the work disk
 * (ext4) on /home/user or a tmpfs when there is none, switches root, brings up lo, gives
 * the NIC its static address when the host asked for a network (sbx.net=, see
 * docs/networking.md), sets the hardening sysctls and starts /usr/libexec/sbx/sbx-agent
 * (from the initramfs, bind-mounted there read-only) in a child; PID 1 then only reaps
 * and powers off when the agent exits.
 *
 * Talks to: the host only through the serial console (messages prefixed "sbx-init:")
 * and by powering off; the agent (guest/agent) only by exec. On any fatal error it prints
 * one line and powers the VM off (reboot(RB_POWER_OFF)), so the host sees QEMU exit;
 * it never waits for anything longer than the bounded device wait.
 *
 * Kernel command line options (all optional):
 *   sbx.debug           print each stage, the mount table and the sysctls
 *   sbx.agent=PATH      exec PATH instead of /usr/libexec/sbx/sbx-agent
 *   sbx.tmp_size=SIZE   size of the /tmp tmpfs (tmpfs syntax, default 25%)
 *   sbx.home_size=SIZE  size of the /home/user tmpfs when there is no work disk (default 25%)
 *   sbx.net=ADDR/PREFIX,GW[,DNS]  static IPv4 on the NIC, default route, /run/resolv.conf
 *                       (set by the host for networked VMs, see docs/networking.md)
 *
 * Built with `gcc -static -Os` and none of the project's GLib flags (guest/Makefile.inc).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The agent, its loader and libraries are in the initramfs under /agent (RAM: exec reads
 * nothing from disk) and bind-mounted read-only at SBX_AGENT_DIR in the root, where the
 * agent's ELF interpreter and rpath point (guest/image/build.sh). */
#define SBX_AGENT_INITRAMFS "/agent"
#define SBX_AGENT_DIR   "/usr/libexec/sbx"
#define SBX_AGENT_PATH  SBX_AGENT_DIR "/sbx-agent"
#define SBX_ROOT_SERIAL "sbx-root"
#define SBX_WORK_SERIAL "sbx-work"
#define SBX_NEWROOT     "/newroot"
#define SBX_USER_UID    1000
#define SBX_USER_GID    1000
/* Bounded wait for the root disk to show up: 1 ms steps, 5 s at most. */
#define SBX_DEV_WAIT_STEPS 5000

static bool debug;
static char cmdline[4096];

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void
say(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    int n = snprintf(buf, sizeof buf, "sbx-init: ");

    va_start(ap, fmt);
    n += vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    (void)!write(STDERR_FILENO, buf, (size_t)n);
}

/* CLOCK_BOOTTIME in ns: the one clock of the boot timeline (the agent reads the same). */
static long long
boot_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double
uptime(void)
{
    return (double)boot_ns() / 1e9;
}

#define dbg(...)                                                                                   \
    do {                                                                                           \
        if (debug)                                                                                 \
            say(__VA_ARGS__);                                                                      \
    } while (0)

static _Noreturn void
power_off(void)
{
    sync();
    reboot(RB_POWER_OFF);
    /* Not reached on a working kernel; if it is, PID 1 exiting panics (panic=-1). */
    _exit(1);
}

/* PID 1 after the agent started: reap every process that ends, power off when the agent
 * itself does (the host sees QEMU exit). */
static _Noreturn void
reap_until_agent_exits(pid_t agent)
{
    for (;;) {
        int status = 0;
        pid_t pid = waitpid(-1, &status, 0);

        if (pid == agent || (pid < 0 && errno == ECHILD)) {
            say("agent exited (status 0x%x); powering off", status);
            power_off();
        }
    }
}

static _Noreturn void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static _Noreturn void
fatal(const char *fmt, ...)
{
    char buf[900];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    say("fatal: %s; powering off", buf);
    power_off();
}

/* Value of `key=value` on the kernel command line into out; "" for a bare `key`.
 * Returns false when the key is absent. */
static bool
cmdline_get(const char *key, char *out, size_t outlen)
{
    size_t kl = strlen(key);

    for (const char *p = cmdline; (p = strstr(p, key)) != NULL; p += kl) {
        if (p != cmdline && p[-1] != ' ')
            continue;
        if (p[kl] == '=') {
            size_t vl = strcspn(p + kl + 1, " \n");
            if (vl >= outlen)
                vl = outlen - 1;
            memcpy(out, p + kl + 1, vl);
            out[vl] = '\0';
            return true;
        }
        if (p[kl] == ' ' || p[kl] == '\n' || p[kl] == '\0') {
            if (outlen)
                out[0] = '\0';
            return true;
        }
    }
    return false;
}

static ssize_t
read_file(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;

    if (fd < 0)
        return -1;
    n = read(fd, buf, len - 1);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    return n;
}

static void
mount_or_die(const char *src, const char *dst, const char *type, unsigned long flags,
             const char *data)
{
    if (mount(src, dst, type, flags, data) != 0)
        fatal("mount %s (%s) on %s: %s", src, type ? type : "move", dst, strerror(errno));
}

/* A virtio device of type @id (/sys/bus/virtio/devices/ * /device, "0x0005") is
 * present. virtio_mmio probes the platform's devices when it loads, so this holds
 * once it is in. */
static bool
has_virtio_device(long id)
{
    DIR *d = opendir("/sys/bus/virtio/devices");
    struct dirent *de;
    bool found = false;

    if (!d)
        return false;
    while (!found && (de = readdir(d))) {
        char path[300], buf[32];

        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/sys/bus/virtio/devices/%s/device", de->d_name);
        found = read_file(path, buf, sizeof buf) > 0 && strtol(buf, NULL, 16) == id;
    }
    closedir(d);
    return found;
}

static void
load_modules(void)
{
    FILE *f = fopen("/etc/modules.list", "re");
    char line[256];

    if (!f)
        fatal("/etc/modules.list: %s", strerror(errno));
    while (fgets(line, sizeof line, f)) {
        int fd, err = 0;
        double t0;

        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0] || line[0] == '#')
            continue;
        /* The balloon (5) exists only in cold-booted VMs (docs/snapshots.md). */
        if (strstr(line, "/virtio_balloon.ko") && !has_virtio_device(5)) {
            unlink(line);
            continue;
        }
        fd = open(line, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            say("module %s: %s", line, strerror(errno));
            continue;
        }
        t0 = uptime();
        if (syscall(SYS_finit_module, fd, "", 0) != 0)
            err = errno;
        close(fd);
        dbg("module %s: %.1f ms%s", line, (uptime() - t0) * 1e3, err ? " (not loaded)" : "");
        /* EEXIST: built in or already loaded; ENODEV: no such hardware (crc32c-intel
         * without SSE4.2 under TCG). Neither matters. */
        if (err && err != EEXIST && err != ENODEV)
            say("module %s: %s", line, strerror(err));
        unlink(line); /* the initramfs is RAM: give it back */
    }
    fclose(f);
    unlink("/etc/modules.list");
}

/* Scan /sys/block/vd* for the two serials; fills "/dev/vdX" paths. Returns true once the
 * root disk has been seen. */
static bool
scan_disks(char *root_dev, size_t rl, char *work_dev, size_t wl)
{
    DIR *d = opendir("/sys/block");
    struct dirent *de;

    if (!d)
        return false;
    while ((de = readdir(d)) != NULL) {
        char path[300], serial[64];

        if (strncmp(de->d_name, "vd", 2) != 0)
            continue;
        snprintf(path, sizeof path, "/sys/block/%s/serial", de->d_name);
        if (read_file(path, serial, sizeof serial) < 0)
            continue;
        serial[strcspn(serial, "\r\n")] = '\0';
        if (strcmp(serial, SBX_ROOT_SERIAL) == 0)
            snprintf(root_dev, rl, "/dev/%s", de->d_name);
        else if (strcmp(serial, SBX_WORK_SERIAL) == 0)
            snprintf(work_dev, wl, "/dev/%s", de->d_name);
    }
    closedir(d);
    return root_dev[0] != '\0';
}

static void
find_disks(char *root_dev, size_t rl, char *work_dev, size_t wl)
{
    const struct timespec step = {0, 1000000};
    int i;

    root_dev[0] = work_dev[0] = '\0';
    for (i = 0; i < SBX_DEV_WAIT_STEPS; i++) {
        if (scan_disks(root_dev, rl, work_dev, wl) && access(root_dev, F_OK) == 0)
            break;
        nanosleep(&step, NULL);
    }
    if (i == SBX_DEV_WAIT_STEPS)
        fatal("no disk with serial \"%s\" after %d ms (is the root image attached as "
              "virtio-blk-device,serial=%s?)",
              SBX_ROOT_SERIAL, SBX_DEV_WAIT_STEPS, SBX_ROOT_SERIAL);
    /* Both disks are probed by the same virtio_blk load; the work disk needs no extra wait,
     * only its device node. */
    if (work_dev[0]) {
        for (i = 0; i < SBX_DEV_WAIT_STEPS && access(work_dev, F_OK) != 0; i++)
            nanosleep(&step, NULL);
        if (i == SBX_DEV_WAIT_STEPS)
            fatal("%s (%s) has no device node", work_dev, SBX_WORK_SERIAL);
    }
}

static void
mount_newroot(const char *root_dev, const char *work_dev)
{
    const unsigned long nsd = MS_NOSUID | MS_NODEV;
    char opts[128], size[32];

    mount_or_die(root_dev, SBX_NEWROOT, "erofs", MS_RDONLY | nsd, NULL);
    if (access(SBX_AGENT_INITRAMFS, F_OK) == 0) {
        mount_or_die(SBX_AGENT_INITRAMFS, SBX_NEWROOT SBX_AGENT_DIR, NULL, MS_BIND, NULL);
        mount_or_die("none", SBX_NEWROOT SBX_AGENT_DIR, NULL,
                     MS_BIND | MS_REMOUNT | MS_RDONLY | nsd, NULL);
    }
    /* The work disk first: its /dev node is reachable only until /dev moves. */
    if (work_dev[0]) {
        mount_or_die(work_dev, SBX_NEWROOT "/home/user", "ext4", nsd, "errors=remount-ro");
    } else {
        if (!cmdline_get("sbx.home_size", size, sizeof size) || !size[0])
            snprintf(size, sizeof size, "25%%");
        snprintf(opts, sizeof opts, "mode=0755,uid=%d,gid=%d,size=%s", SBX_USER_UID, SBX_USER_GID,
                 size);
        mount_or_die("tmpfs", SBX_NEWROOT "/home/user", "tmpfs", nsd, opts);
    }
    mount_or_die("/proc", SBX_NEWROOT "/proc", NULL, MS_MOVE, NULL);
    mount_or_die("/sys", SBX_NEWROOT "/sys", NULL, MS_MOVE, NULL);
    mount_or_die("/dev", SBX_NEWROOT "/dev", NULL, MS_MOVE, NULL);

    /* /dev is the devtmpfs (writable): ptys, POSIX shm, and the /dev/fd links. */
    mkdir(SBX_NEWROOT "/dev/pts", 0755);
    mkdir(SBX_NEWROOT "/dev/shm", 01777);
    mount_or_die("devpts", SBX_NEWROOT "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                 "mode=0620,ptmxmode=0666,gid=5");
    mount_or_die("shm", SBX_NEWROOT "/dev/shm", "tmpfs", nsd, "mode=1777,size=10%");
    symlink("/proc/self/fd", SBX_NEWROOT "/dev/fd");
    symlink("/proc/self/fd/0", SBX_NEWROOT "/dev/stdin");
    symlink("/proc/self/fd/1", SBX_NEWROOT "/dev/stdout");
    symlink("/proc/self/fd/2", SBX_NEWROOT "/dev/stderr");

    if (!cmdline_get("sbx.tmp_size", size, sizeof size) || !size[0])
        snprintf(size, sizeof size, "25%%");
    snprintf(opts, sizeof opts, "mode=1777,size=%s", size);
    mount_or_die("tmpfs", SBX_NEWROOT "/tmp", "tmpfs", nsd, opts);
    mount_or_die("tmpfs", SBX_NEWROOT "/run", "tmpfs", nsd | MS_NOEXEC, "mode=0755,size=16m");
}

static void
switch_root(void)
{
    /* Nothing of the initramfs is needed any more (modules are already gone). */
    unlink("/init");
    if (chdir(SBX_NEWROOT) != 0)
        fatal("chdir %s: %s", SBX_NEWROOT, strerror(errno));
    mount_or_die(".", "/", NULL, MS_MOVE, NULL);
    if (chroot(".") != 0 || chdir("/") != 0)
        fatal("chroot: %s", strerror(errno));
}

static void
loopback_up(void)
{
    struct ifreq ifr = {0};
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    if (s < 0)
        return;
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP;
        if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0)
            say("lo up: %s", strerror(errno));
    }
    close(s);
}

/* sbx.net=ADDR/PREFIX,GATEWAY[,DNS]: static IPv4 on the first non-lo interface (the host's
 * user-mode network helper answers ARP for everything; no DHCP round trip), a default route
 * and /run/resolv.conf (/etc/resolv.conf links there). The host asked for a network: a
 * failure is fatal rather than a VM that silently has none. */
static void
network_up(void)
{
    char spec[128], ifname[IFNAMSIZ] = "", *gw, *dns, *slash;
    struct ifreq ifr;
    struct rtentry rt;
    struct sockaddr_in *sin;
    struct in_addr addr, gwa, dnsa;
    unsigned long prefix;
    int s, i;

    if (!cmdline_get("sbx.net", spec, sizeof spec) || !spec[0])
        return;
    gw = strchr(spec, ',');
    if (gw)
        *gw++ = '\0';
    dns = gw ? strchr(gw, ',') : NULL;
    if (dns)
        *dns++ = '\0';
    slash = strchr(spec, '/');
    if (slash)
        *slash++ = '\0';
    prefix = slash ? strtoul(slash, NULL, 10) : 24;
    if (!gw || inet_pton(AF_INET, spec, &addr) != 1 || inet_pton(AF_INET, gw, &gwa) != 1 ||
        prefix < 1 || prefix > 30 || (dns && inet_pton(AF_INET, dns, &dnsa) != 1))
        fatal("sbx.net: expected ADDR/PREFIX,GATEWAY[,DNS]");
    /* virtio_net probed when its module loaded; the device node may trail by a moment */
    for (i = 0; i < SBX_DEV_WAIT_STEPS && !ifname[0]; i++) {
        DIR *d = opendir("/sys/class/net");
        struct dirent *de;

        while (d && (de = readdir(d)) != NULL)
            if (de->d_name[0] != '.' && strcmp(de->d_name, "lo") != 0 &&
                strlen(de->d_name) < sizeof ifname)
                snprintf(ifname, sizeof ifname, "%s", de->d_name);
        if (d)
            closedir(d);
        if (!ifname[0])
            nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    if (!ifname[0])
        fatal("sbx.net: no network interface (is virtio_net in the initramfs?)");
    s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        fatal("sbx.net: socket: %s", strerror(errno));
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    sin->sin_addr = addr;
    if (ioctl(s, SIOCSIFADDR, &ifr) != 0)
        fatal("sbx.net: %s address: %s", ifname, strerror(errno));
    sin->sin_addr.s_addr = htonl(0xffffffffUL << (32 - prefix));
    if (ioctl(s, SIOCSIFNETMASK, &ifr) != 0)
        fatal("sbx.net: %s netmask: %s", ifname, strerror(errno));
    if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0)
        fatal("sbx.net: %s flags: %s", ifname, strerror(errno));
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0)
        fatal("sbx.net: %s up: %s", ifname, strerror(errno));
    memset(&rt, 0, sizeof rt);
    ((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
    ((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
    sin = (struct sockaddr_in *)&rt.rt_gateway;
    sin->sin_family = AF_INET;
    sin->sin_addr = gwa;
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    if (ioctl(s, SIOCADDRT, &rt) != 0)
        fatal("sbx.net: default route via %s: %s", gw, strerror(errno));
    close(s);
    if (dns) {
        char line[64];
        int fd = open("/run/resolv.conf", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        int n = snprintf(line, sizeof line, "nameserver %s\noptions attempts:1 timeout:2\n", dns);

        if (fd < 0 || write(fd, line, (size_t)n) != n)
            fatal("sbx.net: /run/resolv.conf: %s", strerror(errno));
        close(fd);
    }
    dbg("network: %s %s/%lu via %s dns %s", ifname, spec, prefix, gw, dns ? dns : "(none)");
}

static const struct {
    const char *path;
    const char *value;
} hardening[] = {
    {"/proc/sys/kernel/unprivileged_bpf_disabled", "1"},
    {"/proc/sys/user/max_user_namespaces", "0"},
    {"/proc/sys/vm/unprivileged_userfaultfd", "0"},
    {"/proc/sys/kernel/kptr_restrict", "2"},
    {"/proc/sys/kernel/dmesg_restrict", "1"},
    {"/proc/sys/kernel/yama/ptrace_scope", "2"},
};

static void
apply_sysctls(void)
{
    for (size_t i = 0; i < sizeof hardening / sizeof hardening[0]; i++) {
        int fd = open(hardening[i].path, O_WRONLY | O_CLOEXEC);

        if (fd < 0) {
            if (errno != ENOENT)
                say("%s: %s", hardening[i].path, strerror(errno));
            continue;
        }
        if (write(fd, hardening[i].value, strlen(hardening[i].value)) < 0)
            say("%s = %s: %s", hardening[i].path, hardening[i].value, strerror(errno));
        close(fd);
    }
}

static void
debug_report(void)
{
    char buf[4096];

    if (read_file("/proc/self/mounts", buf, sizeof buf) > 0) {
        for (char *save = NULL, *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
            say("mount: %s", l);
    }
    for (size_t i = 0; i < sizeof hardening / sizeof hardening[0]; i++) {
        char v[32];

        if (read_file(hardening[i].path, v, sizeof v) > 0) {
            v[strcspn(v, "\n")] = '\0';
            say("sysctl: %s = %s", hardening[i].path + strlen("/proc/sys/"), v);
        }
    }
}

int
main(void)
{
    long long t_start = boot_ns(), t_modules, t_root;
    pid_t agent_pid;
    char root_dev[300], work_dev[300], agent[256], boot_env[128];
    char *const envp[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                          "HOME=/root", "LANG=C.UTF-8", "TERM=linux", boot_env, NULL};

    if (getpid() != 1) {
        fprintf(stderr, "sbx-init: must run as PID 1 in the guest initramfs\n");
        return 1;
    }
    umask(022);
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755");
    /* The kernel opens /dev/console as fds 0-2 when the initramfs has one; make sure. */
    if (fcntl(STDERR_FILENO, F_GETFD) < 0) {
        int fd = open("/dev/console", O_RDWR | O_NOCTTY);
        if (fd >= 0) {
            for (int i = 0; i < 3; i++)
                if (fcntl(i, F_GETFD) < 0)
                    dup2(fd, i);
            if (fd > 2)
                close(fd);
        }
    }
    if (read_file("/proc/cmdline", cmdline, sizeof cmdline) < 0)
        cmdline[0] = '\0';
    debug = cmdline_get("sbx.debug", agent, sizeof agent);
    if (!cmdline_get("sbx.agent", agent, sizeof agent) || !agent[0])
        snprintf(agent, sizeof agent, "%s", SBX_AGENT_PATH);
    dbg("start at %.3f s", uptime());

    load_modules();
    t_modules = boot_ns();
    dbg("modules loaded at %.3f s", (double)t_modules / 1e9);

    find_disks(root_dev, sizeof root_dev, work_dev, sizeof work_dev);
    dbg("root %s, work %s at %.3f s", root_dev, work_dev[0] ? work_dev : "(none: tmpfs)", uptime());

    mount_newroot(root_dev, work_dev);
    switch_root();
    t_root = boot_ns();
    if (sethostname("sandbox", strlen("sandbox")) != 0)
        say("sethostname: %s", strerror(errno));
    loopback_up();
    network_up();
    apply_sysctls();
    if (debug)
        debug_report();

    if (access(agent, X_OK) != 0) {
        say("no agent: %s: %s (root %s mounted read-only, work %s); powering off", agent,
            strerror(errno), root_dev, work_dev[0] ? work_dev : "tmpfs");
        power_off();
    }
    dbg("exec %s at %.3f s", agent, uptime());
    /* PID 1 stays here and only reaps: orphans are re-parented to it, and the agent
     * waits for its own children. Forking this small static process is cheaper than
     * the agent forking itself, and the agent does not have to before its hello. */
    agent_pid = fork();
    if (agent_pid < 0)
        fatal("fork: %s", strerror(errno));
    if (agent_pid == 0) {
        /* The boot timeline for the agent's hello (docs/guest-protocol.md): init start,
         * modules loaded, switch_root done, execve, in CLOCK_BOOTTIME ns. */
        snprintf(boot_env, sizeof boot_env, "SBX_BOOT_NS=%lld,%lld,%lld,%lld", t_start,
                 t_modules, t_root, boot_ns());
        execve(agent, (char *const[]){agent, NULL}, envp);
        say("fatal: exec %s: %s; powering off", agent, strerror(errno));
        _exit(127);
    }
    reap_until_agent_exits(agent_pid);
}
