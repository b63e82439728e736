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

/* Status() / Doctor() contents. */
GVariant *sbx_manager_get_status(SbxManager *self);
const SbxProbeReport *sbx_manager_get_probe(SbxManager *self);
const char *sbx_manager_get_accel(SbxManager *self);
guint sbx_manager_get_n_vms(SbxManager *self);

G_END_DECLS
