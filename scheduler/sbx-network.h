/* SPDX-License-Identifier: MIT
 *
 * sbx-network: the scheduler's side of a run's network — turns the request's
 * network fields into a GvpNetwork (gvproxy-glue/), starts it in the VM's
 * cgroup, records its helper for orphan reaping, hands QEMU's end of the
 * helper's socketpair and the guest's addressing option to the VM's
 * parameters, reports the exposed ports and the start-up time, and stops it
 * before the VM's cgroup is removed. sbx-manager.c keeps only short hooks.
 */
#pragma once

#include <gio/gio.h>

#include "gvproxy-glue/gvp-network.h"
#include "scheduler/sbx-cgroup.h"
#include "scheduler/sbx-run.h"
#include "scheduler/sbx-vm.h"

G_BEGIN_DECLS

typedef struct _SbxRunNet SbxRunNet;

/* Called once when the helper dies while the VM runs; @error is owned by the callee. */
typedef void (*SbxRunNetDiedFunc)(GError *error, gpointer user_data);

/* NULL when @spec asks for no network (the VM gets no NIC). */
SbxRunNet *sbx_run_net_new(GvpContext *ctx, const SbxRunSpec *spec);
void sbx_run_net_free(SbxRunNet *net);

gboolean sbx_run_net_is_started(SbxRunNet *net);
gboolean sbx_run_net_is_stopped(SbxRunNet *net);

/* Start the helper inside @cgroup (nullable); @run_dir gets its pid record. */
void sbx_run_net_start_async(SbxRunNet *net, const char *vm_id, const char *run_dir,
                             SbxCgroup *cgroup, SbxRunNetDiedFunc died, gpointer died_data,
                             GCancellable *cancellable, GAsyncReadyCallback callback,
                             gpointer user_data);
gboolean sbx_run_net_start_finish(SbxRunNet *net, GAsyncResult *result, GError **error);

/* After a successful start: NIC + fd + guest cmdline into @p (strings owned
 * by @net), exposed ports and network_ms into @result. */
void sbx_run_net_apply(SbxRunNet *net, SbxVmParams *p, SbxRunResult *result);

/* Kill the helper and confirm its death; idempotent, never fails. */
void sbx_run_net_stop_async(SbxRunNet *net, GAsyncReadyCallback callback, gpointer user_data);
void sbx_run_net_stop_finish(SbxRunNet *net, GAsyncResult *result);

G_END_DECLS
