/* SPDX-License-Identifier: MIT
 *
 * SbxManager: the scheduler core. Owns the admission controller, the cgroup
 * manager, the storage daemon and work-disk pool, the probe report, and every
 * live VM. Runs requests end to end (validate -> admit -> work disk -> boot ->
 * exec with streamed output -> teardown) and reports typed errors (SBX_ERROR)
 * that say whether the user's code ran. Both schedulerd (behind D-Bus) and
 * schedulerctl's embedded mode drive this same object.
 */
#pragma once

#include <gio/gio.h>

#include "scheduler/sbx-config.h"
#include "scheduler/sbx-probe.h"
#include "scheduler/sbx-run.h"
#include "scheduler/sbx-vm.h"

G_BEGIN_DECLS

#define SBX_TYPE_MANAGER (sbx_manager_get_type())
G_DECLARE_FINAL_TYPE(SbxManager, sbx_manager, SBX, MANAGER, GObject)

/* Takes ownership of @cfg. */
SbxManager *sbx_manager_new(SbxConfig *cfg);
const SbxConfig *sbx_manager_get_config(SbxManager *self);

/* Probe the host, reap orphans of a crashed predecessor, set up cgroups, the
 * storage daemon and the work-disk pool. Fails when the guest image is missing. */
void sbx_manager_start_async(SbxManager *self, GCancellable *cancellable,
                             GAsyncReadyCallback callback, gpointer user_data);
gboolean sbx_manager_start_finish(SbxManager *self, GAsyncResult *result, GError **error);

/* Stop admitting; cancel queued and running requests; destroy every VM; stop
 * the storage daemon. Completes when everything is released. */
void sbx_manager_shutdown_async(SbxManager *self, GAsyncReadyCallback callback, gpointer user_data);
gboolean sbx_manager_shutdown_finish(SbxManager *self, GAsyncResult *result, GError **error);

/* Progress of a run, for the CLI's progress line. */
typedef enum {
    SBX_RUN_STAGE_ADMISSION,
    SBX_RUN_STAGE_BOOT,
    SBX_RUN_STAGE_EXEC,
    SBX_RUN_STAGE_TEARDOWN,
} SbxRunStage;
typedef void (*SbxRunProgressFunc)(SbxRunStage stage, gpointer user_data);

/* Run @spec in a fresh VM. stdout/stderr are written to the streams while the
 * code runs (either may be NULL: discarded). The result is returned even when
 * the user's code failed; an error means the scheduler could not run it. */
void sbx_manager_run_async(SbxManager *self, const SbxRunSpec *spec, GOutputStream *out,
                           GOutputStream *err, SbxRunProgressFunc progress, gpointer progress_data,
                           GCancellable *cancellable, GAsyncReadyCallback callback,
                           gpointer user_data);
SbxRunResult *sbx_manager_run_finish(SbxManager *self, GAsyncResult *result, GError **error);

/* ---- sessions (scheduler/sbx-session.h) ----
 * A session's VM goes through the same admission, work disk, cgroup and boot
 * path as a run, and is kept until the session releases it. */
typedef struct _SbxSession SbxSession;
/* Opaque: a booted VM with its admission reservation, held by one SbxSession. */
typedef struct _SbxVmLease SbxVmLease;

/* Boot a VM for a session. @spec: language, memory (code ignored);
 * @idle_timeout_s 0 = [session] idle_timeout_s. */
void sbx_manager_create_session_async(SbxManager *self, const SbxRunSpec *spec,
                                      guint idle_timeout_s, GCancellable *cancellable,
                                      GAsyncReadyCallback callback, gpointer user_data);
SbxSession *sbx_manager_create_session_finish(SbxManager *self, GAsyncResult *result,
                                              GError **error);
/* Borrowed; NULL when no open session has @id. */
SbxSession *sbx_manager_lookup_session(SbxManager *self, const char *id);
guint sbx_manager_get_n_sessions(SbxManager *self);

/* For sbx-session.c. The VM (borrowed) and the timings of its start. */
SbxVm *sbx_vm_lease_get_vm(SbxVmLease *lease);
const SbxTimings *sbx_vm_lease_get_timings(SbxVmLease *lease);
/* Exec @spec in the lease's VM with the run path's streamed output; the VM
 * stays up. *@out_retire: the guest asked for the VM to be retired (exit 137). */
void sbx_manager_lease_exec_async(SbxManager *self, SbxVmLease *lease, const SbxRunSpec *spec,
                                  GOutputStream *out, GOutputStream *err,
                                  GCancellable *cancellable, GAsyncReadyCallback callback,
                                  gpointer user_data);
SbxRunResult *sbx_manager_lease_exec_finish(SbxManager *self, GAsyncResult *result,
                                            gboolean *out_retire, GError **error);
/* Destroy the VM and release its reservation; @lease is freed. */
void sbx_manager_lease_release_async(SbxManager *self, SbxVmLease *lease,
                                     GAsyncReadyCallback callback, gpointer user_data);
gboolean sbx_manager_lease_release_finish(SbxManager *self, GAsyncResult *result, GError **error);

/* Status() / Doctor() contents. */
GVariant *sbx_manager_get_status(SbxManager *self);
const SbxProbeReport *sbx_manager_get_probe(SbxManager *self);
const char *sbx_manager_get_accel(SbxManager *self);
/* VMs alive: runs in flight, session VMs, and VMs still being released. */
guint sbx_manager_get_n_vms(SbxManager *self);

/* A run's result is delivered once its QEMU was sent SIGKILL and its cgroup
 * counters were read; the rest of the teardown (death, network helper, files,
 * cgroup, then the admission reservation) goes on in the background
 * (docs/vm-lifecycle.md). These count and wait for those cleanups: the wait
 * completes when none is in flight. Shutdown waits for them by itself. */
guint sbx_manager_get_n_cleanups(SbxManager *self);
void sbx_manager_wait_cleanups_async(SbxManager *self, GAsyncReadyCallback callback,
                                     gpointer user_data);
gboolean sbx_manager_wait_cleanups_finish(SbxManager *self, GAsyncResult *result, GError **error);

G_END_DECLS
