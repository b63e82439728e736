/* SPDX-License-Identifier: MIT
 *
 * sbx-network: glue between the manager's run path and gvproxy-glue's
 * GvpNetwork (see sbx-network.h). Talks to sbx-cgroup (the VM's procs files,
 * so the helper is accounted and limited with its VM), sbx-orphans (the pid
 * record a restarted scheduler reaps) and sbx-vm (SbxVmParams).
 */
#define G_LOG_DOMAIN "sbx-network"

#include "scheduler/sbx-network.h"

#include <unistd.h>

#include "scheduler/sbx-orphans.h"

struct _SbxRunNet {
    GvpNetwork *net;
    GvpMode mode;
    char **allow;
    gboolean allow_http;
    GArray *ports;
    char *run_dir;
    char *cmdline; /* base + sbx.net=... */
    int qemu_fd;
    gboolean started;
    gboolean stopped;
    gulong died_id;
    SbxRunNetDiedFunc died;
    gpointer died_data;
};

SbxRunNet *
sbx_run_net_new(GvpContext *ctx, const SbxRunSpec *spec)
{
    if (spec->network == GVP_MODE_NONE || ctx == NULL)
        return NULL;
    SbxRunNet *n = g_new0(SbxRunNet, 1);
    n->net = gvp_network_new(ctx, "vm");
    n->mode = spec->network;
    n->allow = g_strdupv(spec->allow_domains);
    n->allow_http = spec->allow_http;
    n->ports = g_array_copy(spec->expose);
    n->qemu_fd = -1;
    return n;
}

void
sbx_run_net_free(SbxRunNet *n)
{
    if (n == NULL)
        return;
    if (n->died_id)
        g_signal_handler_disconnect(n->net, n->died_id);
    g_object_unref(n->net); /* its dispose kills a helper that was never stopped */
    g_strfreev(n->allow);
    g_array_unref(n->ports);
    g_free(n->run_dir);
    g_free(n->cmdline);
    if (n->qemu_fd >= 0)
        close(n->qemu_fd);
    g_free(n);
}

gboolean
sbx_run_net_is_started(SbxRunNet *n)
{
    return n->started;
}

gboolean
sbx_run_net_is_stopped(SbxRunNet *n)
{
    return n->stopped;
}

static void
died_cb(GvpNetwork *net, const char *reason, gpointer user_data)
{
    SbxRunNet *n = user_data;
    g_signal_handler_disconnect(net, n->died_id);
    n->died_id = 0;
    g_warning("network helper died: %s", reason);
    if (n->died)
        n->died(g_error_new(GVP_ERROR, GVP_ERROR_HELPER_DIED, "%s; the VM lost its network",
                            reason),
                n->died_data);
}

static void
started_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GTask) task = user_data;
    SbxRunNet *n = g_task_get_task_data(task);
    GError *error = NULL;
    if (!gvp_network_start_finish(GVP_NETWORK(source), res, &n->qemu_fd, &error)) {
        g_task_return_error(task, error);
        return;
    }
    n->started = TRUE;
    GPid pid = gvp_network_get_helper_pid(n->net);
    if (!sbx_orphans_record(n->run_dir, gvp_network_get_helper_name(n->net), pid, &error)) {
        g_task_return_error(task, error);
        return;
    }
    g_info("%s network up in %" G_GINT64_FORMAT " ms (helper pid %d)", gvp_mode_to_string(n->mode),
           gvp_network_get_start_ms(n->net), (int)pid);
    g_task_return_boolean(task, TRUE);
}

void
sbx_run_net_start_async(SbxRunNet *n, const char *vm_id, const char *run_dir, SbxCgroup *cgroup,
                        SbxRunNetDiedFunc died, gpointer died_data, GCancellable *cancellable,
                        GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = g_task_new(NULL, cancellable, callback, user_data);
    g_task_set_source_tag(task, sbx_run_net_start_async);
    g_task_set_check_cancellable(task, FALSE); /* see gvp_network_start_async */
    g_task_set_task_data(task, n, NULL);
    g_free(n->run_dir);
    n->run_dir = g_strdup(run_dir);
    n->died = died;
    n->died_data = died_data;
    g_autoptr(GPtrArray) procs = g_ptr_array_new();
    if (cgroup) {
        GPtrArray *files = sbx_cgroup_get_procs_files(cgroup);
        for (guint i = 0; i < files->len; i++)
            g_ptr_array_add(procs, g_ptr_array_index(files, i));
    }
    g_ptr_array_add(procs, NULL);
    GvpNetworkSpec spec = {
        .mode = n->mode,
        .allow_domains = (const char *const *)n->allow,
        .allow_http = n->allow_http,
        .ports = (const GvpPort *)n->ports->data,
        .n_ports = n->ports->len,
        .cgroup_procs = (const char *const *)procs->pdata,
    };
    n->died_id = g_signal_connect(n->net, "died", G_CALLBACK(died_cb), n);
    gvp_network_start_async(n->net, &spec, cancellable, started_cb, task);
}

gboolean
sbx_run_net_start_finish(SbxRunNet *n, GAsyncResult *result, GError **error)
{
    return g_task_propagate_boolean(G_TASK(result), error);
}

void
sbx_run_net_apply(SbxRunNet *n, SbxVmParams *p, SbxRunResult *result)
{
    g_autofree char *opt = gvp_guest_cmdline(n->mode);
    g_free(n->cmdline);
    n->cmdline = g_strdup_printf("%s %s", p->qemu_cfg.cmdline ? p->qemu_cfg.cmdline : "", opt);
    p->qemu_cfg.cmdline = n->cmdline;
    p->qemu_cfg.with_netdev = TRUE;
    p->net_fd = n->qemu_fd;
    if (result) {
        g_autoptr(GArray) ports = gvp_network_dup_ports(n->net);
        g_array_set_size(result->exposed_ports, 0);
        g_array_append_vals(result->exposed_ports, ports->data, ports->len);
        result->timing.network_ms = MAX(gvp_network_get_start_ms(n->net), 1);
    }
}

static void
stopped_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GTask) task = user_data;
    SbxRunNet *n = g_task_get_task_data(task);
    (void)gvp_network_stop_finish(GVP_NETWORK(source), res, NULL);
    n->stopped = TRUE;
    g_task_return_boolean(task, TRUE);
}

void
sbx_run_net_stop_async(SbxRunNet *n, GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = g_task_new(NULL, NULL, callback, user_data);
    g_task_set_source_tag(task, sbx_run_net_stop_async);
    g_task_set_task_data(task, n, NULL);
    if (n->died_id) {
        g_signal_handler_disconnect(n->net, n->died_id);
        n->died_id = 0;
    }
    if (n->qemu_fd >= 0) {
        close(n->qemu_fd);
        n->qemu_fd = -1;
    }
    gvp_network_stop_async(n->net, stopped_cb, task);
}

void
sbx_run_net_stop_finish(SbxRunNet *n, GAsyncResult *result)
{
    (void)g_task_propagate_boolean(G_TASK(result), NULL);
}
