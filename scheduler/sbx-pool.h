/* SPDX-License-Identifier: MIT
 *
 * SbxPool: everything that keeps a run from paying for a boot (docs/snapshots.md):
 *  - L1 templates (sbx-template): looked up per run, built in the background
 *    through admission after a miss, restored into fresh or pre-started QEMUs;
 *  - the warm pool: per language, ready VMs with a warm REPL holding their
 *    admission reservation, used once and destroyed (throw-away semantics).
 * The manager calls the short hooks below from its run path; the pool never
 * starves real requests: it fills only while the admission queue is empty and
 * an idle pooled VM is evicted when a request finds no capacity.
 * Sizes and switches come from [pool] of the config; the environment
 * overrides them at every use (no restart): SCHEDULERD_L1=0|1,
 * SCHEDULERD_L1_PREFETCH=0|1, SCHEDULERD_WARM_POOL=<n per language> (0 = off),
 * SCHEDULERD_L1_PRESTART=<n>, SCHEDULERD_L1_BUILD_DRAIN_S=<s>.
 * Templates exist per (language, memory size), bounded by l1_max_templates
 * (least recently used evicted); the warm pool and pre-started QEMUs serve the
 * default memory size only.
 */
#pragma once

#include <gio/gio.h>

#include "qsd/qsd-daemon.h"
#include "qsd/qsd-overlay-pool.h"
#include "scheduler/sbx-admission.h"
#include "scheduler/sbx-cgroup.h"
#include "scheduler/sbx-config.h"
#include "scheduler/sbx-run.h"
#include "scheduler/sbx-template.h"
#include "scheduler/sbx-vm.h"

G_BEGIN_DECLS

/* Borrowed; the manager outlives the pool. */
typedef struct {
    const SbxConfig *cfg;
    SbxAccel accel;
    guint tsc_khz;
    const char *kernel, *initrd, *rootfs, *cmdline, *seed;
    const char *vms_dir;  /* VM run dirs */
    const char *l1_dir;   /* template cache */
    QsdDaemon *qsd;
    QsdOverlayPool *disks;
    SbxCgroupManager *cgroups;
    SbxAdmission *admission;
    guint64 vm_mem_cost, vm_cpu_cost; /* admission cost of a default-memory VM */
    SbxAdmissionConfig acfg;          /* the cost of other sizes (template builds) */
} SbxPoolDeps;

#define SBX_TYPE_POOL (sbx_pool_get_type())
G_DECLARE_FINAL_TYPE(SbxPool, sbx_pool, SBX, POOL, GObject)

SbxPool *sbx_pool_new(const SbxPoolDeps *deps, GError **error);

/* Cold-boot VM parameters for @memory_mb (work disk, cgroup, run dir left to the caller). */
void sbx_pool_fill_vm_params(SbxPool *self, guint memory_mb, SbxVmParams *p);

/* ---- L1 ---- */
/* The template for this run's language and memory size, or NULL (L1 off,
 * none yet: a build is scheduled in the background, or invalid: counted). */
SbxTemplate *sbx_pool_l1_lookup(SbxPool *self, SbxLanguage language, guint memory_mb);
/* @p (from fill_vm_params) turned into a restore of @tpl. */
void sbx_pool_l1_vm_params(SbxPool *self, SbxTemplate *tpl, SbxVmParams *p);
/* The work disk for a VM: a qcow2 overlay over @tpl's disk, or (tpl NULL) a
 * disk from the work-disk pool. */
void sbx_pool_take_disk_async(SbxPool *self, SbxTemplate *tpl, const char *dest,
                              GCancellable *cancellable, GAsyncReadyCallback callback,
                              gpointer user_data);
gboolean sbx_pool_take_disk_finish(SbxPool *self, GAsyncResult *result, GError **error);
/* A pre-started -incoming defer QEMU for @tpl (its disk, cgroup and run dir
 * ready; l1_prestart / SCHEDULERD_L1_PRESTART per language, default 1; default
 * memory only), or NULL. */
SbxVm *sbx_pool_take_prestarted(SbxPool *self, SbxTemplate *tpl, SbxLanguage language);
/* Restore @vm (NEW, or pre-started: @p may then be NULL) from @tpl with @p; starts the prefetch
 * unless l1_prefetch is off. */
void sbx_pool_l1_restore_async(SbxPool *self, SbxTemplate *tpl, SbxVm *vm, const SbxVmParams *p,
                               GCancellable *cancellable, GAsyncReadyCallback callback,
                               gpointer user_data);
gboolean sbx_pool_l1_restore_finish(SbxPool *self, GAsyncResult *result, GError **error);
/* Count a failed restore (Status l1_restore_failures); drop @tpl's entry when
 * the failure came from its files. */
void sbx_pool_l1_restore_failed(SbxPool *self, SbxTemplate *tpl, const GError *error);
void sbx_pool_l1_hit(SbxPool *self);
/* A cold boot of @language/@memory_mb happened: schedule that key's template build. */
void sbx_pool_note_cold_boot(SbxPool *self, SbxLanguage language, guint memory_mb);
SbxTemplateCache *sbx_pool_get_template_cache(SbxPool *self);

/* ---- warm pool ---- */
/* A pooled VM for @spec (default memory), with its reservation, or NULL. */
SbxVm *sbx_pool_take_warm(SbxPool *self, const SbxRunSpec *spec, SbxReservation **out_res);
/* A request of @language costing @mem/@cpu is about to queue: if the admission
 * cannot serve it right now, destroy one idle pooled VM (another language
 * first) so its reservation goes back. TRUE if one was. */
gboolean sbx_pool_make_room(SbxPool *self, SbxLanguage language, guint64 mem, guint64 cpu);
/* Refill in the background when the admission queue is empty. */
void sbx_pool_kick(SbxPool *self);
/* Status keys: warm_pool_<lang>, l1_hits, l1_restore_failures, l1_templates ... */
void sbx_pool_add_status(SbxPool *self, GVariantBuilder *status_vardict);
/* Destroy every pooled VM, stop building; completes when all are gone. */
void sbx_pool_shutdown_async(SbxPool *self, GAsyncReadyCallback callback, gpointer user_data);
gboolean sbx_pool_shutdown_finish(SbxPool *self, GAsyncResult *result, GError **error);

G_END_DECLS
