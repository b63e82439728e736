/* SPDX-License-Identifier: MIT
 *
 * The QEMU command line for a sandbox microVM, built from a plain description
 * (SbxQemuConfig) so it can be unit-tested without starting anything.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef enum {
    SBX_ACCEL_TCG,
    SBX_ACCEL_KVM,
} SbxAccel;

const char *sbx_accel_to_string(SbxAccel accel);

/* fd numbers the child sees (handed over by sbx-spawn). */
#define SBX_QEMU_FD_QMP   3
#define SBX_QEMU_FD_AGENT 4
#define SBX_QEMU_FD_NET   5
#define SBX_QEMU_FD_MEM   6 /* L1 restore: the template RAM file (mem-path=/proc/self/fd/6) */

#define SBX_AGENT_PORT_NAME "org.schedulerd.agent.0"

typedef struct {
    const char *vm_id;
    SbxAccel accel;
    guint memory_mb;
    guint vcpus;
    guint tb_size_mb;           /* TCG translation cache; 0 = QEMU default */
    const char *kernel;         /* uncompressed PVH vmlinux */
    const char *initrd;
    const char *cmdline;        /* guest kernel cmdline, without tsc_early_khz */
    guint tsc_khz;              /* appended as tsc_early_khz= when non-zero */
    const char *rootfs;         /* read-only erofs image, shared by every VM */
    const char *work_disk;      /* per-VM writable disk, NULL: guest uses tmpfs */
    const char *work_format;    /* "qcow2" or "raw" */
    gboolean sandbox;           /* -sandbox on,... (QEMU built with seccomp) */
    gboolean mem_merge;         /* KSM: -M ...,mem-merge=on */
    const char *mem_path;       /* guest RAM in a file (L1 templates), NULL: anonymous */
    gboolean mem_share;         /* share=on (template build) / off (MAP_PRIVATE restore) */
    gboolean incoming_defer;    /* -incoming defer (restore target) */
    gboolean with_netdev;       /* -netdev stream on SBX_QEMU_FD_NET + virtio-net */
    gboolean balloon;           /* virtio-balloon with free page reporting, only where the
                                 * guest RAM is anonymous (see sbx_qemu_has_balloon) */
} SbxQemuConfig;

/* Whether @cfg gets the virtio-balloon device: asked for, and the guest RAM is
 * anonymous (no mem_path, not a restore target). QEMU 7.2 discards a reported or
 * ballooned page with fallocate(PUNCH_HOLE) on the RAM block's fd even for a
 * MAP_PRIVATE (share=off) mapping (ram_block_discard_range, softmmu/physmem.c): in
 * an L1 clone that would punch holes into the template's RAM file under every other
 * clone. Template VMs never get it either, so restored VMs (which inherit the
 * template's device model) do not have it. */
gboolean sbx_qemu_has_balloon(const SbxQemuConfig *cfg);

/* argv (NULL-terminated, owned) for @qemu_binary with @cfg. */
GStrv sbx_qemu_build_argv(const char *qemu_binary, const SbxQemuConfig *cfg);

/* The host's TSC frequency in kHz (for tsc_early_khz under TCG), read from
 * @cpuinfo_path ("/proc/cpuinfo"); 0 if unknown. */
guint sbx_qemu_read_tsc_khz(const char *cpuinfo_path);

G_END_DECLS
