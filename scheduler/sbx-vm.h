/* SPDX-License-Identifier: MIT
 *
 * SbxVm: one microVM and everything it owns — the QEMU process (spawned with
 * its QMP and guest-channel sockets as inherited fds, inside its cgroup before
 * exec), the QMP client, the guest-agent client, its work disk, its runtime
 * directory and its cgroup — released in reverse order by sbx_vm_destroy_async,
 * which also works on a half-built VM.
 */
#pragma once

#include <gio/gio.h>

#include "scheduler/sbx-cgroup.h"
#include "scheduler/sbx-guest.h"
#include "scheduler/sbx-qemu.h"

G_BEGIN_DECLS

#define SBX_VM_ERROR (sbx_vm_error_quark())
GQuark sbx_vm_error_quark(void);

typedef enum {
    SBX_VM_ERROR_SPAWN,        /* QEMU could not be started */
    SBX_VM_ERROR_DIED,         /* QEMU exited (message has the console tail) */
    SBX_VM_ERROR_BOOT_TIMEOUT, /* no agent hello within the boot timeout */
    SBX_VM_ERROR_MIGRATION,    /* saving or loading the device state failed */
} SbxVmError;

typedef enum {
    SBX_VM_STATE_NEW,
    SBX_VM_STATE_BOOTING,
    SBX_VM_STATE_READY,
    SBX_VM_STATE_DEAD,      /* QEMU exited on its own */
    SBX_VM_STATE_DESTROYED,
} SbxVmState;

typedef struct {
    const char *qemu;          /* binary */
    SbxQemuConfig qemu_cfg;    /* kernel, initrd, rootfs, cmdline, memory ... (work_disk set by the VM) */
    const char *run_dir;       /* this VM's runtime directory (created; removed on destroy) */
    const char *work_disk;     /* path of a disk the VM takes ownership of, or NULL */
    const char *work_format;
    SbxCgroup *cgroup;         /* already created, nullable; the VM destroys it */
    guint boot_timeout_ms;
    int mem_fd;                /* > 0: the guest RAM file (L1 template), opened by the
                                * caller (borrowed): QEMU maps this very file through
                                * /proc/self/fd, so a template replaced on disk meanwhile
                                * cannot be mixed with the state read earlier */
    int net_fd;                /* with qemu_cfg.with_netdev: QEMU's end of the network
                                * helper's socketpair (borrowed; QEMU gets a duplicate) */
} SbxVmParams;

#define SBX_TYPE_VM (sbx_vm_get_type())
G_DECLARE_FINAL_TYPE(SbxVm, sbx_vm, SBX, VM, GObject)

SbxVm *sbx_vm_new(const char *id);
const char *sbx_vm_get_id(SbxVm *self);
SbxVmState sbx_vm_get_state(SbxVm *self);
GPid sbx_vm_get_pid(SbxVm *self);
/* Borrowed; valid once booted. */
SbxGuest *sbx_vm_get_guest(SbxVm *self);
SbxCgroup *sbx_vm_get_cgroup(SbxVm *self);
/* Milliseconds from spawn to the agent's hello. */
gint64 sbx_vm_get_boot_ms(SbxVm *self);
/* The last @n console lines (diagnostics). */
char *sbx_vm_dup_console_tail(SbxVm *self, guint n);
/* How QEMU ended ("killed by signal 9 (Killed)"), or NULL while it runs. */
char *sbx_vm_dup_exit_description(SbxVm *self);

/* TRUE when QEMU has the virtio-balloon device (free page reporting): cold-booted
 * VMs with anonymous RAM, never L1 templates or their clones (sbx_qemu_has_balloon). */
gboolean sbx_vm_has_balloon(SbxVm *self);
/* An idle VM gives memory back: with the balloon, ask the guest to drop its
 * clean page cache and compact (sbx_guest_reclaim_async); free page reporting
 * then returns the freed blocks to the host. No-op without the balloon or when
 * not READY. Fire and forget (failures are logged at debug level). */
void sbx_vm_give_back_memory(SbxVm *self);

/* Start QEMU and wait for the agent's hello. The VM keeps @params' strings it
 * needs. On failure the VM is left for sbx_vm_destroy_async to clean. */
void sbx_vm_boot_async(SbxVm *self, const SbxVmParams *params, GCancellable *cancellable,
                       GAsyncReadyCallback callback, gpointer user_data);
gboolean sbx_vm_boot_finish(SbxVm *self, GAsyncResult *result, GError **error);

/* ---- L1 templates (docs/snapshots.md) ----
 * Prestart: start QEMU with -incoming defer (params->qemu_cfg describes the
 * template's machine: mem_path = its RAM file, mem_share FALSE = MAP_PRIVATE),
 * connect QMP and set x-ignore-shared + events. The VM stays BOOTING. */
void sbx_vm_prestart_async(SbxVm *self, const SbxVmParams *params, GCancellable *cancellable,
                           GAsyncReadyCallback callback, gpointer user_data);
gboolean sbx_vm_prestart_finish(SbxVm *self, GAsyncResult *result, GError **error);
/* TRUE while a pre-started QEMU waits for its device state. */
gboolean sbx_vm_is_prestarted(SbxVm *self);
/* Restore: (prestart first when the VM is NEW; @params may be NULL otherwise)
 * migrate-incoming from @state_fd (borrowed, duplicated), cont, agent ping and
 * CRNG reseed. READY afterwards; on failure destroy the VM. */
void sbx_vm_restore_async(SbxVm *self, const SbxVmParams *params, int state_fd,
                          GCancellable *cancellable, GAsyncReadyCallback callback,
                          gpointer user_data);
gboolean sbx_vm_restore_finish(SbxVm *self, GAsyncResult *result, GError **error);
/* Milliseconds from sbx_vm_restore_async to an answering agent. */
gint64 sbx_vm_get_restore_ms(SbxVm *self);
/* Template build: stop the guest and write its device state (x-ignore-shared:
 * the RAM stays in the share=on RAM file) to @fd (borrowed). The VM is left
 * stopped; destroy it afterwards. */
void sbx_vm_save_state_async(SbxVm *self, int fd, GCancellable *cancellable,
                             GAsyncReadyCallback callback, gpointer user_data);
gboolean sbx_vm_save_state_finish(SbxVm *self, GAsyncResult *result, GError **error);

/* Release everything: guest channel, QMP quit with a short deadline, SIGKILL,
 * confirmed death, work disk and run dir removed, cgroup removed. Idempotent.
 * After sbx_vm_kill there is no QMP quit: it waits for the death of the
 * killed QEMU, then removes the rest. */
void sbx_vm_destroy_async(SbxVm *self, GAsyncReadyCallback callback, gpointer user_data);
gboolean sbx_vm_destroy_finish(SbxVm *self, GAsyncResult *result, GError **error);

/* SIGKILL QEMU's process group now (a throw-away VM needs no QMP quit): no
 * guest code runs once this returns. Nothing else is released; destroy the VM
 * afterwards. No "died" signal follows. Idempotent; a no-op once QEMU exited. */
void sbx_vm_kill(SbxVm *self);

/* Signal "died" (SbxVm *, const char *reason): QEMU exited while the VM was
 * booting or ready (not during destroy, not after sbx_vm_kill). */

G_END_DECLS
