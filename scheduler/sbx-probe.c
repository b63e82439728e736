/* SPDX-License-Identifier: MIT
 *
 * Startup system probe (see sbx-probe.h). main.c runs it once before
 * admission starts (its planned slot count comes from sbx-admission), logs
 * every warning, hands the accelerator to the VM layer (sbx-qemu) and keeps
 * the report for D-Bus Status and `schedulerctl doctor`. Reads procfs/sysfs
 * through injectable roots (sbx-hostinfo helpers); the KVM test talks to the
 * real /dev/kvm with ioctls and runs in a GTask thread.
 */
#define G_LOG_DOMAIN "sbx-probe"

#include "scheduler/sbx-probe.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "common/sbx-fd.h"

#define MAX_MAP_COUNT_MIN      262144
#define DEFAULT_SLOTS          64
#define DEFAULT_THREADS_PER_VM 32
#define FDS_PER_VM             64

const char *
sbx_probe_status_to_string(SbxProbeStatus status)
{
    switch (status) {
    case SBX_PROBE_OK:
        return "ok";
    case SBX_PROBE_WARN:
        return "warn";
    case SBX_PROBE_ERROR:
        return "error";
    }
    return "error";
}

static void
item_free(gpointer data)
{
    SbxProbeItem *it = data;

    g_free(it->name);
    g_free(it->value);
    g_free(it->message);
    g_free(it->fix);
    g_free(it);
}

static void G_GNUC_PRINTF(5, 6) add_item(SbxProbeReport *r, const char *name, SbxProbeStatus status,
                                         const char *fix, const char *fmt_value, ...)
{
    /* value via printf, message set by the caller right after (see set_msg) */
    SbxProbeItem *it = g_new0(SbxProbeItem, 1);
    va_list ap;

    it->name = g_strdup(name);
    it->status = status;
    it->fix = g_strdup(fix);
    va_start(ap, fmt_value);
    it->value = g_strdup_vprintf(fmt_value, ap);
    va_end(ap);
    g_ptr_array_add(r->items, it);
}

static void G_GNUC_PRINTF(2, 3) set_msg(SbxProbeReport *r, const char *fmt, ...)
{
    SbxProbeItem *it = g_ptr_array_index(r->items, r->items->len - 1);
    va_list ap;

    va_start(ap, fmt);
    g_free(it->message);
    it->message = g_strdup_vprintf(fmt, ap);
    va_end(ap);
}

static const char *
proc_root(const SbxProbeOptions *o)
{
    return o->roots.proc_root ? o->roots.proc_root : "/proc";
}

static const char *
sys_root(const SbxProbeOptions *o)
{
    return o->roots.sys_root ? o->roots.sys_root : "/sys";
}

static gboolean
read_u64_file(const char *path, guint64 *out, char **out_raw)
{
    g_autofree char *s = sbx_host_read_small(path);
    char *end = NULL;

    if (out_raw)
        *out_raw = g_strdup(s);
    if (!s || !g_ascii_isdigit(*s))
        return FALSE;
    *out = g_ascii_strtoull(s, &end, 10);
    return end != s && *end == '\0';
}

/* ---- rlimits ------------------------------------------------------------ */

static char *
fmt_rlim(rlim_t v)
{
    return v == RLIM_INFINITY ? g_strdup("unlimited")
                              : g_strdup_printf("%llu", (unsigned long long)v);
}

static void
check_rlimit(SbxProbeReport *r, const SbxProbeOptions *o, int resource, const char *name,
             rlim_t need, const char *fix, const char *what, const char *note)
{
    struct rlimit rl;
    gboolean raised = FALSE;
    g_autofree char *soft = NULL;
    g_autofree char *hard = NULL;
    g_autofree char *need_s = fmt_rlim(need);

    if (getrlimit(resource, &rl) != 0) {
        add_item(r, name, SBX_PROBE_ERROR, NULL, "unknown");
        set_msg(r, "getrlimit failed: %s", g_strerror(errno));
        return;
    }
    if (o->raise_limits && rl.rlim_cur != rl.rlim_max) {
        struct rlimit want = {rl.rlim_max, rl.rlim_max};
        if (setrlimit(resource, &want) == 0) {
            rl = want;
            raised = TRUE;
        }
    }
    soft = fmt_rlim(rl.rlim_cur);
    hard = fmt_rlim(rl.rlim_max);
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        add_item(r, name, SBX_PROBE_WARN, fix, "soft %s, hard %s", soft, hard);
        set_msg(r,
                "the %s limit %s is below the %s the planned slots need; bursts of VMs will fail "
                "with EMFILE/EAGAIN%s.%s",
                what, soft, need_s, raised ? " (soft limit already raised to the hard limit)" : "",
                note);
    } else {
        add_item(r, name, SBX_PROBE_OK, NULL, "soft %s, hard %s", soft, hard);
        set_msg(r, "the %s limit covers the %s the planned slots need%s.%s", what, need_s,
                raised ? "; soft limit raised to the hard limit" : "", note);
    }
}

/* ---- sysctls ------------------------------------------------------------- */

static void
check_overcommit(SbxProbeReport *r, const SbxProbeOptions *o)
{
    g_autofree char *path = g_build_filename(proc_root(o), "sys/vm/overcommit_memory", NULL);
    g_autofree char *raw = NULL;
    guint64 v;

    if (!read_u64_file(path, &v, &raw)) {
        add_item(r, "vm.overcommit_memory", SBX_PROBE_WARN, NULL, "%s", raw ? raw : "unreadable");
        set_msg(r, "cannot read %s", path);
        return;
    }
    if (v == 1) {
        add_item(r, "vm.overcommit_memory", SBX_PROBE_OK, NULL, "1");
        set_msg(r, "always overcommit: QEMU thread stacks are never refused");
        return;
    }
    add_item(r, "vm.overcommit_memory", SBX_PROBE_WARN, "sysctl -w vm.overcommit_memory=1",
             "%" G_GUINT64_FORMAT, v);
    set_msg(r,
            "%s: under a burst of VMs the kernel refuses thread-stack mappings, glibc turns ENOMEM "
            "into "
            "EAGAIN and QEMU aborts in qemu_thread_create",
            v == 2 ? "strict accounting (2) refuses overcommitted memory"
                   : "heuristic overcommit (0)");
}

static void
check_max_map_count(SbxProbeReport *r, const SbxProbeOptions *o)
{
    g_autofree char *path = g_build_filename(proc_root(o), "sys/vm/max_map_count", NULL);
    g_autofree char *raw = NULL;
    g_autofree char *fix = g_strdup_printf("sysctl -w vm.max_map_count=%d", MAX_MAP_COUNT_MIN);
    guint64 v;

    if (!read_u64_file(path, &v, &raw)) {
        add_item(r, "vm.max_map_count", SBX_PROBE_WARN, NULL, "%s", raw ? raw : "unreadable");
        set_msg(r, "cannot read %s", path);
        return;
    }
    if (v < MAX_MAP_COUNT_MIN) {
        add_item(r, "vm.max_map_count", SBX_PROBE_WARN, fix, "%" G_GUINT64_FORMAT, v);
        set_msg(r, "below %d: QEMU processes with many threads and mappings can hit ENOMEM on mmap",
                MAX_MAP_COUNT_MIN);
    } else {
        add_item(r, "vm.max_map_count", SBX_PROBE_OK, NULL, "%" G_GUINT64_FORMAT, v);
        set_msg(r, "at least %d", MAX_MAP_COUNT_MIN);
    }
}

/* kernel.threads-max and kernel.pid_max: every QEMU thread takes one of each. */
static void
check_task_sysctl(SbxProbeReport *r, const SbxProbeOptions *o, const char *name, const char *rel,
                  guint64 need, guint64 max_value)
{
    g_autofree char *path = g_build_filename(proc_root(o), rel, NULL);
    g_autofree char *raw = NULL;
    guint64 v;

    if (!read_u64_file(path, &v, &raw)) {
        add_item(r, name, SBX_PROBE_WARN, NULL, "%s", raw ? raw : "unreadable");
        set_msg(r, "cannot read %s", path);
        return;
    }
    if (v < need) {
        g_autofree char *fix =
            g_strdup_printf("sysctl -w %s=%" G_GUINT64_FORMAT, name, MIN(need * 2, max_value));
        add_item(r, name, SBX_PROBE_WARN, fix, "%" G_GUINT64_FORMAT, v);
        set_msg(r,
                "below the %" G_GUINT64_FORMAT
                " threads the planned slots need: thread creation fails with EAGAIN and QEMU "
                "aborts",
                need);
    } else {
        add_item(r, name, SBX_PROBE_OK, NULL, "%" G_GUINT64_FORMAT, v);
        set_msg(r, "enough for the planned slots (%" G_GUINT64_FORMAT " threads)", need);
    }
}

/* The smallest pids.max over the daemon's group and its ancestors. */
static void
check_pids_max(SbxProbeReport *r, const SbxProbeOptions *o, guint64 need)
{
    g_autofree char *mount = NULL;
    g_autofree char *rel = NULL;
    g_autofree char *dir = NULL;
    g_autofree char *limiting = NULL;
    guint64 best = G_MAXUINT64;
    gboolean found = FALSE;

    mount = sbx_host_cgroup1_mount(&o->roots, "pids");
    if (mount)
        rel = sbx_host_self_cgroup_path(&o->roots, "pids");
    if (!mount || !rel) {
        g_clear_pointer(&mount, g_free);
        mount = sbx_host_cgroup2_mount(&o->roots);
        if (mount)
            rel = sbx_host_self_cgroup_path(&o->roots, "");
    }
    if (!mount || !rel) {
        add_item(r, "cgroup.pids.max", SBX_PROBE_OK, NULL, "no pids controller");
        set_msg(r, "the daemon's cgroup has no pids limit");
        return;
    }
    dir = g_build_filename(mount, rel, NULL);
    while (strlen(dir) > strlen(mount) && g_str_has_suffix(dir, "/"))
        dir[strlen(dir) - 1] = '\0';
    for (;;) {
        g_autofree char *f = g_build_filename(dir, "pids.max", NULL);
        guint64 v;
        char *slash;
        if (g_file_test(f, G_FILE_TEST_EXISTS)) {
            found = TRUE;
            if (read_u64_file(f, &v, NULL) && v < best) {
                best = v;
                g_free(limiting);
                limiting = g_strdup(f);
            }
        }
        if (strlen(dir) <= strlen(mount))
            break;
        slash = strrchr(dir, '/');
        if (!slash)
            break;
        *slash = '\0';
        if (strlen(dir) < strlen(mount))
            break;
    }
    if (!limiting) {
        add_item(r, "cgroup.pids.max", SBX_PROBE_OK, NULL, "max");
        set_msg(r, found ? "no pids limit on the daemon's cgroup"
                         : "the daemon's cgroup has no pids limit");
        return;
    }
    if (best < need) {
        g_autofree char *fix = g_strdup_printf("echo max > %s", limiting);
        add_item(r, "cgroup.pids.max", SBX_PROBE_WARN, fix, "%" G_GUINT64_FORMAT, best);
        set_msg(r,
                "%s caps the daemon and its VMs below the %" G_GUINT64_FORMAT
                " tasks the planned slots need "
                "(under systemd: TasksMax=infinity)",
                limiting, need);
    } else {
        add_item(r, "cgroup.pids.max", SBX_PROBE_OK, NULL, "%" G_GUINT64_FORMAT, best);
        set_msg(r, "%s allows the %" G_GUINT64_FORMAT " tasks the planned slots need", limiting,
                need);
    }
}

static void
check_ksm(SbxProbeReport *r, const SbxProbeOptions *o)
{
    g_autofree char *path = g_build_filename(sys_root(o), "kernel/mm/ksm/run", NULL);
    g_autofree char *fix = g_strdup_printf("echo 1 > %s", path);
    g_autofree char *raw = NULL;
    guint64 v;

    if (!g_file_test(path, G_FILE_TEST_EXISTS)) {
        add_item(r, "ksm", SBX_PROBE_WARN, NULL, "unavailable");
        set_msg(r, "the kernel has no KSM (CONFIG_KSM): identical guest pages are not merged");
        return;
    }
    if (read_u64_file(path, &v, &raw) && v == 1) {
        add_item(r, "ksm", SBX_PROBE_OK, NULL, "1");
        set_msg(r, "KSM is merging identical guest pages (mem-merge=on)");
        return;
    }
    add_item(r, "ksm", SBX_PROBE_WARN, fix, "%s", raw ? raw : "unreadable");
    set_msg(r,
            "KSM is off: identical pages of guests are not merged, so each VM costs its full RSS");
}

static void
check_psi(SbxProbeReport *r, const SbxProbeOptions *o)
{
    g_autofree char *path = g_build_filename(proc_root(o), "pressure/memory", NULL);
    g_autofree char *contents = NULL;
    double v;

    if (!g_file_get_contents(path, &contents, NULL, NULL) ||
        (v = sbx_host_parse_psi_full_avg10(contents)) < 0) {
        add_item(r, "psi", SBX_PROBE_WARN,
                 "add psi=1 to the kernel command line (needs CONFIG_PSI=y)", "unavailable");
        set_msg(r, "no memory pressure information (%s): the PSI admission gate is off", path);
        return;
    }
    add_item(r, "psi", SBX_PROBE_OK, NULL, "memory full avg10=%.2f", v);
    set_msg(r, "memory pressure is available for the admission gate");
}

/* ---- KVM ------------------------------------------------------------------ */

/* Real-mode test program at guest-physical 0x1000. It reports progress on
 * port 0x10 after each step and ends with hlt:
 *   lock cmpxchg8b [0x1100]; out 1; fxsave [0x1200]; out 2;
 *   xor eax,eax; cpuid; out 3; fxrstor [0x1200]; out 4; hlt
 * Hardware virtualization runs it natively. PVM's instruction emulator (the
 * only way it runs a non-PVM guest) dies at fxsave with a shutdown, the same
 * class of failure that kills stock kernels there (feasibility.md §3.4). */
static const guint8 kvm_test_code[] = {
    0xf0, 0x0f, 0xc7, 0x0e, 0x00, 0x11, /* lock cmpxchg8b [0x1100] */
    0xb0, 0x01, 0xe6, 0x10,             /* mov al,1; out 0x10,al */
    0x0f, 0xae, 0x06, 0x00, 0x12,       /* fxsave [0x1200] */
    0xb0, 0x02, 0xe6, 0x10,             /* mov al,2; out 0x10,al */
    0x66, 0x31, 0xc0, 0x0f, 0xa2,       /* xor eax,eax; cpuid */
    0xb0, 0x03, 0xe6, 0x10,             /* mov al,3; out 0x10,al */
    0x0f, 0xae, 0x0e, 0x00, 0x12,       /* fxrstor [0x1200] */
    0xb0, 0x04, 0xe6, 0x10,             /* mov al,4; out 0x10,al */
    0xf4,                               /* hlt */
};
#define KVM_TEST_STEPS 4
#define KVM_TEST_PORT  0x10

static const char *
kvm_exit_name(guint32 reason)
{
    switch (reason) {
    case KVM_EXIT_IO:
        return "KVM_EXIT_IO";
    case KVM_EXIT_HLT:
        return "KVM_EXIT_HLT";
    case KVM_EXIT_SHUTDOWN:
        return "KVM_EXIT_SHUTDOWN (triple fault)";
    case KVM_EXIT_FAIL_ENTRY:
        return "KVM_EXIT_FAIL_ENTRY";
    case KVM_EXIT_INTERNAL_ERROR:
        return "KVM_EXIT_INTERNAL_ERROR (emulation failure)";
    case KVM_EXIT_MMIO:
        return "KVM_EXIT_MMIO";
    default:
        return "unexpected exit";
    }
}

/* Returns TRUE when the test guest ran to its hlt. */
static gboolean
kvm_run_test_guest(int kvm, char **out_reason)
{
    g_auto(SbxFd) vm = -1;
    g_auto(SbxFd) vcpu = -1;
    void *mem = MAP_FAILED;
    struct kvm_run *run = MAP_FAILED;
    long run_size = 0;
    struct kvm_userspace_memory_region region = {0};
    struct kvm_sregs sregs;
    struct kvm_regs regs = {0};
    guint step = 0;
    gboolean ok = FALSE;

    vm = ioctl(kvm, KVM_CREATE_VM, 0UL);
    if (vm < 0) {
        *out_reason = g_strdup_printf("KVM_CREATE_VM failed: %s", g_strerror(errno));
        goto out;
    }
    mem = mmap(NULL, 0x1000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        *out_reason = g_strdup_printf("mmap failed: %s", g_strerror(errno));
        goto out;
    }
    memcpy(mem, kvm_test_code, sizeof kvm_test_code);
    region.slot = 0;
    region.guest_phys_addr = 0x1000;
    region.memory_size = 0x1000;
    region.userspace_addr = (guint64)(guintptr)mem;
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
        *out_reason = g_strdup_printf("KVM_SET_USER_MEMORY_REGION failed: %s", g_strerror(errno));
        goto out;
    }
    vcpu = ioctl(vm, KVM_CREATE_VCPU, 0UL);
    if (vcpu < 0) {
        *out_reason = g_strdup_printf("KVM_CREATE_VCPU failed: %s", g_strerror(errno));
        goto out;
    }
    run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < (long)sizeof(struct kvm_run)) {
        *out_reason = g_strdup("KVM_GET_VCPU_MMAP_SIZE failed");
        goto out;
    }
    run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) {
        *out_reason = g_strdup_printf("mmap of the vcpu failed: %s", g_strerror(errno));
        goto out;
    }
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) {
        *out_reason = g_strdup_printf("KVM_GET_SREGS failed: %s", g_strerror(errno));
        goto out;
    }
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0;
    sregs.ds.selector = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) {
        *out_reason = g_strdup_printf("KVM_SET_SREGS failed: %s", g_strerror(errno));
        goto out;
    }
    regs.rip = 0x1000;
    regs.rflags = 0x2;
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) {
        *out_reason = g_strdup_printf("KVM_SET_REGS failed: %s", g_strerror(errno));
        goto out;
    }
    /* At most one exit per step plus the hlt: the loop is bounded. */
    for (guint i = 0; i < KVM_TEST_STEPS + 2; i++) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            *out_reason = g_strdup_printf("KVM_RUN failed after step %u of %d: %s", step,
                                          KVM_TEST_STEPS, g_strerror(errno));
            goto out;
        }
        if (run->exit_reason == KVM_EXIT_IO && run->io.direction == KVM_EXIT_IO_OUT &&
            run->io.port == KVM_TEST_PORT && run->io.size == 1) {
            guint8 v = *((guint8 *)run + run->io.data_offset);
            if (v != step + 1) {
                *out_reason = g_strdup_printf("test guest reported step %u after step %u", v, step);
                goto out;
            }
            step = v;
            continue;
        }
        if (run->exit_reason == KVM_EXIT_HLT && step == KVM_TEST_STEPS) {
            ok = TRUE;
            goto out;
        }
        *out_reason = g_strdup_printf("test guest stopped after step %u of %d with %s", step,
                                      KVM_TEST_STEPS, kvm_exit_name(run->exit_reason));
        goto out;
    }
    *out_reason = g_strdup("test guest did not reach its hlt");
out:
    if (run != MAP_FAILED)
        munmap(run, (size_t)run_size);
    if (mem != MAP_FAILED)
        munmap(mem, 0x1000);
    return ok;
}

static gboolean
cpu_has_hw_virt(const SbxHostRoots *roots)
{
    g_autofree char *path =
        g_build_filename(roots && roots->proc_root ? roots->proc_root : "/proc", "cpuinfo", NULL);
    g_autofree char *contents = NULL;
    g_auto(GStrv) lines = NULL;

    if (!g_file_get_contents(path, &contents, NULL, NULL))
        return FALSE;
    lines = g_strsplit(contents, "\n", -1);
    for (guint i = 0; lines[i]; i++) {
        if (g_str_has_prefix(lines[i], "flags")) {
            g_auto(GStrv) flags = g_strsplit_set(lines[i], " \t:", -1);
            return g_strv_contains((const char *const *)flags, "vmx") ||
                   g_strv_contains((const char *const *)flags, "svm");
        }
    }
    return FALSE;
}

SbxAccel
sbx_probe_kvm(const char *dev_kvm, const SbxHostRoots *roots, char **out_reason)
{
    g_auto(SbxFd) kvm = -1;
    g_autofree char *pvm = g_build_filename(roots && roots->sys_root ? roots->sys_root : "/sys",
                                            "module/kvm_pvm", NULL);
    g_autofree char *why = NULL;
    int api;

    if (!dev_kvm)
        dev_kvm = "/dev/kvm";
    if (!g_file_test(dev_kvm, G_FILE_TEST_EXISTS)) {
        *out_reason = g_strdup_printf("%s does not exist (no KVM on this host)", dev_kvm);
        return SBX_ACCEL_TCG;
    }
    kvm = open(dev_kvm, O_RDWR | O_CLOEXEC);
    if (kvm < 0) {
        *out_reason = g_strdup_printf("cannot open %s: %s", dev_kvm, g_strerror(errno));
        return SBX_ACCEL_TCG;
    }
    api = ioctl(kvm, KVM_GET_API_VERSION, 0);
    if (api != KVM_API_VERSION) {
        *out_reason = g_strdup_printf("%s is not a usable KVM device (KVM_GET_API_VERSION: %s)",
                                      dev_kvm, api < 0 ? g_strerror(errno) : "unexpected version");
        return SBX_ACCEL_TCG;
    }
    if (!kvm_run_test_guest(kvm, &why)) {
        *out_reason = g_strdup_printf(
            "a test guest cannot run under KVM: %s%s", why,
            g_file_test(pvm, G_FILE_TEST_IS_DIR) ? " (kvm_pvm is loaded: PVM)" : "");
        return SBX_ACCEL_TCG;
    }
    if (g_file_test(pvm, G_FILE_TEST_IS_DIR) && !cpu_has_hw_virt(roots)) {
        *out_reason =
            g_strdup("/dev/kvm is PVM (kvm_pvm loaded, no vmx/svm CPU flag): only PVM-aware guest "
                     "kernels run on it, stock kernels die in its emulator");
        return SBX_ACCEL_TCG;
    }
    if (!cpu_has_hw_virt(roots)) {
        *out_reason =
            g_strdup("the CPU reports neither vmx nor svm: KVM would emulate, not virtualize");
        return SBX_ACCEL_TCG;
    }
    *out_reason = g_strdup("a test guest ran under KVM with hardware virtualization (vmx/svm)");
    return SBX_ACCEL_KVM;
}

static void
check_kvm(SbxProbeReport *r, const SbxProbeOptions *o)
{
    const char *dev = o->dev_kvm ? o->dev_kvm : "/dev/kvm";
    g_autofree char *reason = NULL;

    if (!o->test_kvm) {
        r->accel = SBX_ACCEL_TCG;
        r->accel_reason = g_strdup("KVM test skipped");
        add_item(r, "accel", SBX_PROBE_OK, NULL, "tcg");
        set_msg(r, "%s", r->accel_reason);
        return;
    }
    r->accel = sbx_probe_kvm(dev, &o->roots, &reason);
    r->accel_reason = g_strdup(reason);
    if (r->accel == SBX_ACCEL_KVM) {
        add_item(r, "accel", SBX_PROBE_OK, NULL, "kvm");
        set_msg(r, "%s", reason);
    } else {
        const char *fix = NULL;
        g_autofree char *fix_s = NULL;
        if (g_file_test(dev, G_FILE_TEST_EXISTS) && access(dev, R_OK | W_OK) != 0) {
            fix_s = g_strdup_printf(
                "usermod -aG kvm $(id -un)   # or: setfacl -m u:$(id -un):rw %s", dev);
            fix = fix_s;
        } else if (!g_file_test(dev, G_FILE_TEST_EXISTS)) {
            fix = "enable VT-x/AMD-V (nested virtualization on a cloud VM) so /dev/kvm appears";
        } else {
            fix = "run on a host with hardware virtualization (vmx/svm), or boot PVM-aware guest "
                  "kernels";
        }
        add_item(r, "accel", SBX_PROBE_WARN, fix, "tcg");
        set_msg(r, "falling back to TCG (software emulation, several times slower): %s", reason);
    }
}

/* ---- the report ------------------------------------------------------------ */

SbxProbeReport *
sbx_probe_run(const SbxProbeOptions *opts)
{
    SbxProbeReport *r = g_new0(SbxProbeReport, 1);
    guint slots = opts->planned_slots ? opts->planned_slots : DEFAULT_SLOTS;
    guint tpv = opts->threads_per_vm ? opts->threads_per_vm : DEFAULT_THREADS_PER_VM;
    guint64 threads = (guint64)slots * tpv + 1024;

    r->items = g_ptr_array_new_with_free_func(item_free);
    check_rlimit(
        r, opts, RLIMIT_NOFILE, "rlimit_nofile", (rlim_t)slots * FDS_PER_VM + 1024,
        "LimitNOFILE=1048576 in the service unit (or `ulimit -Hn 1048576` as root before starting)",
        "open-file", "");
    check_rlimit(r, opts, RLIMIT_NPROC, "rlimit_nproc", (rlim_t)threads,
                 "LimitNPROC=infinity in the service unit (or `ulimit -Hu unlimited` as root "
                 "before starting)",
                 "per-user process/thread",
                 " RLIMIT_NPROC counts every thread of every VM of the user, so the daemon never "
                 "sets it on children.");
    check_overcommit(r, opts);
    check_max_map_count(r, opts);
    check_task_sysctl(r, opts, "kernel.threads-max", "sys/kernel/threads-max", threads, G_MAXINT32);
    /* PID_MAX_LIMIT on 64-bit */
    check_task_sysctl(r, opts, "kernel.pid_max", "sys/kernel/pid_max", threads, 4194304);
    check_pids_max(r, opts, threads);
    check_kvm(r, opts);
    check_ksm(r, opts);
    check_psi(r, opts);
    return r;
}

typedef struct {
    SbxProbeOptions opts;
    char *proc_root;
    char *sys_root;
    char *cgroup_root;
    char *dev_kvm;
} ProbeJob;

static void
probe_job_free(ProbeJob *job)
{
    g_free(job->proc_root);
    g_free(job->sys_root);
    g_free(job->cgroup_root);
    g_free(job->dev_kvm);
    g_free(job);
}

static void
probe_thread(GTask *task, gpointer source, gpointer data, GCancellable *cancellable)
{
    ProbeJob *job = data;

    g_task_return_pointer(task, sbx_probe_run(&job->opts), (GDestroyNotify)sbx_probe_report_free);
}

void
sbx_probe_run_async(const SbxProbeOptions *opts, GCancellable *cancellable,
                    GAsyncReadyCallback callback, gpointer user_data)
{
    g_autoptr(GTask) task = g_task_new(NULL, cancellable, callback, user_data);
    ProbeJob *job = g_new0(ProbeJob, 1);

    job->opts = *opts;
    job->opts.roots.proc_root = job->proc_root = g_strdup(opts->roots.proc_root);
    job->opts.roots.sys_root = job->sys_root = g_strdup(opts->roots.sys_root);
    job->opts.roots.cgroup_root = job->cgroup_root = g_strdup(opts->roots.cgroup_root);
    job->opts.dev_kvm = job->dev_kvm = g_strdup(opts->dev_kvm);
    g_task_set_source_tag(task, sbx_probe_run_async);
    g_task_set_task_data(task, job, (GDestroyNotify)probe_job_free);
    g_task_run_in_thread(task, probe_thread);
}

SbxProbeReport *
sbx_probe_run_finish(GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, NULL), NULL);
    return g_task_propagate_pointer(G_TASK(result), error);
}

const SbxProbeItem *
sbx_probe_report_find(const SbxProbeReport *report, const char *name)
{
    for (guint i = 0; i < report->items->len; i++) {
        const SbxProbeItem *it = g_ptr_array_index(report->items, i);
        if (strcmp(it->name, name) == 0)
            return it;
    }
    return NULL;
}

guint
sbx_probe_report_count(const SbxProbeReport *report, SbxProbeStatus status)
{
    guint n = 0;

    for (guint i = 0; i < report->items->len; i++)
        if (((const SbxProbeItem *)g_ptr_array_index(report->items, i))->status == status)
            n++;
    return n;
}

JsonNode *
sbx_probe_report_to_json(const SbxProbeReport *report)
{
    g_autoptr(JsonBuilder) b = json_builder_new();

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "accel");
    json_builder_add_string_value(b, sbx_accel_to_string(report->accel));
    json_builder_set_member_name(b, "accel_reason");
    json_builder_add_string_value(b, report->accel_reason ? report->accel_reason : "");
    json_builder_set_member_name(b, "warnings");
    json_builder_add_int_value(b, sbx_probe_report_count(report, SBX_PROBE_WARN));
    json_builder_set_member_name(b, "errors");
    json_builder_add_int_value(b, sbx_probe_report_count(report, SBX_PROBE_ERROR));
    json_builder_set_member_name(b, "items");
    json_builder_begin_array(b);
    for (guint i = 0; i < report->items->len; i++) {
        const SbxProbeItem *it = g_ptr_array_index(report->items, i);
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "name");
        json_builder_add_string_value(b, it->name);
        json_builder_set_member_name(b, "status");
        json_builder_add_string_value(b, sbx_probe_status_to_string(it->status));
        json_builder_set_member_name(b, "value");
        json_builder_add_string_value(b, it->value ? it->value : "");
        json_builder_set_member_name(b, "message");
        json_builder_add_string_value(b, it->message ? it->message : "");
        json_builder_set_member_name(b, "fix");
        if (it->fix)
            json_builder_add_string_value(b, it->fix);
        else
            json_builder_add_null_value(b);
        json_builder_end_object(b);
    }
    json_builder_end_array(b);
    json_builder_end_object(b);
    return json_builder_get_root(b);
}

char *
sbx_probe_report_to_string(const SbxProbeReport *report, gboolean pretty)
{
    g_autoptr(JsonNode) root = sbx_probe_report_to_json(report);
    g_autoptr(JsonGenerator) gen = json_generator_new();

    json_generator_set_pretty(gen, pretty);
    json_generator_set_root(gen, root);
    return json_generator_to_data(gen, NULL);
}

void
sbx_probe_report_free(SbxProbeReport *report)
{
    if (!report)
        return;
    g_ptr_array_unref(report->items);
    g_free(report->accel_reason);
    g_free(report);
}
