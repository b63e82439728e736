/* SPDX-License-Identifier: MIT
 *
 * sbx-qemu: the QEMU command line of a sandbox microVM. Pure: the caller (sbx-vm)
 * hands the result to common/sbx-spawn together with the QMP and agent fds at
 * SBX_QEMU_FD_QMP / SBX_QEMU_FD_AGENT. Choices (measured, see docs/vm.md):
 * microvm with ACPI (the Debian kernel finds virtio-mmio devices through the
 * DSDT), modern virtio-mmio, PVH vmlinux, no NIC unless asked, serial console
 * on stdout for the diagnostics ring.
 */
#define G_LOG_DOMAIN "sbx-qemu"

#include "scheduler/sbx-qemu.h"

#include <stdio.h>
#include <string.h>

const char *
sbx_accel_to_string(SbxAccel accel)
{
    return accel == SBX_ACCEL_KVM ? "kvm" : "tcg";
}

static void
add(GPtrArray *argv, const char *a)
{
    g_ptr_array_add(argv, g_strdup(a));
}

static void addf(GPtrArray *argv, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void
addf(GPtrArray *argv, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_ptr_array_add(argv, g_strdup_vprintf(fmt, ap));
    va_end(ap);
}

/* QEMU option values separate with ',' and escape a literal ',' as ",,". */
static char *
qemu_escape(const char *s)
{
    GString *out = g_string_new(NULL);
    for (; *s; s++) {
        if (*s == ',')
            g_string_append_c(out, ',');
        g_string_append_c(out, *s);
    }
    return g_string_free(out, FALSE);
}

gboolean
sbx_qemu_has_balloon(const SbxQemuConfig *cfg)
{
    return cfg->balloon && cfg->mem_path == NULL && !cfg->incoming_defer;
}

GStrv
sbx_qemu_build_argv(const char *qemu_binary, const SbxQemuConfig *cfg)
{
    GPtrArray *argv = g_ptr_array_new_with_free_func(g_free);
    g_autofree char *kernel = qemu_escape(cfg->kernel);
    g_autofree char *initrd = qemu_escape(cfg->initrd);
    g_autofree char *rootfs = qemu_escape(cfg->rootfs);

    add(argv, qemu_binary);
    if (cfg->vm_id) {
        add(argv, "-name");
        addf(argv, "guest=%s,debug-threads=on", cfg->vm_id);
    }
    add(argv, "-nodefaults");
    add(argv, "-no-user-config");
    add(argv, "-display");
    add(argv, "none");
    add(argv, "-no-reboot");

    add(argv, "-M");
    addf(argv, "microvm,x-option-roms=off,isa-serial=on,mem-merge=%s,dump-guest-core=off%s",
         cfg->mem_merge ? "on" : "off", cfg->mem_path ? ",memory-backend=mem0" : "");
    if (cfg->accel == SBX_ACCEL_KVM) {
        add(argv, "-accel");
        add(argv, "kvm");
        add(argv, "-cpu");
        add(argv, "host,-vmx,-svm");
    } else {
        add(argv, "-accel");
        if (cfg->tb_size_mb > 0)
            addf(argv, "tcg,thread=single,tb-size=%u", cfg->tb_size_mb);
        else
            add(argv, "tcg,thread=single");
    }
    add(argv, "-m");
    addf(argv, "%uM", cfg->memory_mb);
    add(argv, "-smp");
    addf(argv, "%u,maxcpus=%u", MAX(cfg->vcpus, 1), MAX(cfg->vcpus, 1));
    if (cfg->mem_path) {
        g_autofree char *mp = qemu_escape(cfg->mem_path);
        add(argv, "-object");
        /* share=off is a MAP_PRIVATE mapping: restored VMs share the file's
         * page-cache pages copy-on-write. No readonly=on: QEMU 7.2 has no
         * rom= property and would map the guest RAM read-only. */
        addf(argv, "memory-backend-file,id=mem0,size=%uM,mem-path=%s,share=%s", cfg->memory_mb,
             mp, cfg->mem_share ? "on" : "off");
    }
    if (cfg->sandbox) {
        add(argv, "-sandbox");
        add(argv, "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
    }
    add(argv, "-global");
    add(argv, "virtio-mmio.force-legacy=false");

    add(argv, "-kernel");
    add(argv, kernel);
    add(argv, "-initrd");
    add(argv, initrd);
    add(argv, "-append");
    if (cfg->tsc_khz > 0)
        addf(argv, "%s tsc_early_khz=%u", cfg->cmdline ? cfg->cmdline : "", cfg->tsc_khz);
    else
        add(argv, cfg->cmdline ? cfg->cmdline : "");

    /* Console on stdout: drained into the spawn helper's ring for diagnostics. */
    add(argv, "-serial");
    add(argv, "stdio");

    add(argv, "-drive");
    addf(argv, "file=%s,format=raw,if=none,id=root,readonly=on,cache=unsafe,file.locking=off",
         rootfs);
    add(argv, "-device");
    add(argv, "virtio-blk-device,drive=root,serial=sbx-root");
    if (cfg->work_disk) {
        g_autofree char *wd = qemu_escape(cfg->work_disk);
        add(argv, "-drive");
        addf(argv,
             "file=%s,format=%s,if=none,id=work,cache=unsafe,discard=unmap,"
             "werror=report,rerror=report",
             wd, cfg->work_format ? cfg->work_format : "qcow2");
        add(argv, "-device");
        add(argv, "virtio-blk-device,drive=work,serial=sbx-work");
    }

    /* Entropy from the host: without it the guest CRNG is not ready seconds
     * after boot and the first getrandom() of an interpreter blocks. */
    add(argv, "-object");
    add(argv, "rng-random,id=rng0,filename=/dev/urandom");
    add(argv, "-device");
    add(argv, "virtio-rng-device,rng=rng0");

    add(argv, "-chardev");
    addf(argv, "socket,id=qmp,fd=%d", SBX_QEMU_FD_QMP);
    add(argv, "-mon");
    add(argv, "chardev=qmp,mode=control");

    add(argv, "-device");
    add(argv, "virtio-serial-device,max_ports=2");
    add(argv, "-chardev");
    addf(argv, "socket,id=agent,fd=%d", SBX_QEMU_FD_AGENT);
    add(argv, "-device");
    add(argv, "virtserialport,chardev=agent,name=" SBX_AGENT_PORT_NAME);

    /* Idle memory back to the host: the guest reports free pages (order >= 9)
     * and QEMU drops them (madvise DONTNEED on anonymous RAM). */
    if (sbx_qemu_has_balloon(cfg)) {
        add(argv, "-device");
        add(argv, "virtio-balloon-device,free-page-reporting=on");
    }

    if (cfg->with_netdev) {
        add(argv, "-netdev");
        addf(argv, "stream,id=net0,addr.type=fd,addr.str=%d", SBX_QEMU_FD_NET);
        add(argv, "-device");
        add(argv, "virtio-net-device,netdev=net0");
    } else {
        add(argv, "-nic");
        add(argv, "none");
    }
    if (cfg->incoming_defer) {
        add(argv, "-incoming");
        add(argv, "defer");
    }
    g_ptr_array_add(argv, NULL);
    return (GStrv)g_ptr_array_free(argv, FALSE);
}

guint
sbx_qemu_read_tsc_khz(const char *cpuinfo_path)
{
    g_autofree char *text = NULL;
    if (!g_file_get_contents(cpuinfo_path, &text, NULL, NULL))
        return 0;
    const char *p = strstr(text, "\ncpu MHz");
    if (p == NULL)
        return 0;
    p = strchr(p, ':');
    if (p == NULL)
        return 0;
    double mhz = g_ascii_strtod(p + 1, NULL);
    if (mhz <= 0 || mhz > 100000)
        return 0;
    return (guint)(mhz * 1000.0 + 0.5);
}
