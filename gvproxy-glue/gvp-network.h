/* SPDX-License-Identifier: MIT
 *
 * gvp-network: one VM's user-mode network — the helper process that speaks
 * QEMU's stream netdev protocol on an inherited socketpair (passt), the
 * isolated network namespace it runs in for the "expose" and "allow" modes,
 * the host-side port relays (127.0.0.1 only) and, for "allow", the egress
 * filter: a DNS stub that answers only allow-listed names and a TLS-SNI /
 * HTTP-Host proxy that connects to its own resolution of the allowed name.
 * docs/networking.md explains the mechanism and why it is enforced there.
 *
 * GvpContext is the per-scheduler part (helper binaries, resolver, test
 * resolve overrides); GvpNetwork lives and dies with its VM.
 */
#pragma once

#include <gio/gio.h>

#include "gvproxy-glue/gvp-policy.h"

G_BEGIN_DECLS

/* fd number of the netns handed to nsenter (the helper's socket is given by -F). */
#define GVP_HELPER_FD_NETNS 3
#define GVP_HELPER_FD_QEMU 4

#define GVP_TYPE_CONTEXT (gvp_context_get_type())
G_DECLARE_FINAL_TYPE(GvpContext, gvp_context, GVP, CONTEXT, GObject)

/* Finds the helper (passt on PATH; gvproxy is detected and reported) and
 * nsenter. @resolve_overrides: NULL or "NAME:PORT=ADDR:PORT;..." — the
 * egress proxy connects to ADDR:PORT for NAME:PORT instead of resolving NAME
 * (curl --resolve for the proxy; tests use it to reach 127.0.0.1 servers).
 * Never fails for a missing helper: gvp_network_start_async reports that. */
GvpContext *gvp_context_new(const char *resolve_overrides, GError **error);
/* One line for logs / doctor: which helper, or why none. */
const char *gvp_context_describe(GvpContext *self);

typedef struct {
    GvpMode mode;
    const char *const *allow_domains; /* mode ALLOW: validated by gvp_request_validate */
    gboolean allow_http;              /* mode ALLOW: also plain HTTP by Host header */
    const GvpPort *ports;
    guint n_ports;
    const char *const *cgroup_procs; /* the VM's cgroup.procs/tasks files, NULL-terminated */
} GvpNetworkSpec;

#define GVP_TYPE_NETWORK (gvp_network_get_type())
G_DECLARE_FINAL_TYPE(GvpNetwork, gvp_network, GVP, NETWORK, GObject)

GvpNetwork *gvp_network_new(GvpContext *ctx, const char *id);

/* Bind the exposed ports, set up the namespace and filter, start the helper.
 * On success *out_qemu_fd is QEMU's end of the helper's socketpair (owned by
 * the caller; give it to QEMU as SBX_QEMU_FD_NET). On failure everything
 * already started is stopped again. */
void gvp_network_start_async(GvpNetwork *self, const GvpNetworkSpec *spec,
                             GCancellable *cancellable, GAsyncReadyCallback callback,
                             gpointer user_data);
gboolean gvp_network_start_finish(GvpNetwork *self, GAsyncResult *result, int *out_qemu_fd,
                                  GError **error);

GPid gvp_network_get_helper_pid(GvpNetwork *self);
const char *gvp_network_get_helper_name(GvpNetwork *self);
/* The exposed ports with the external port actually bound (owned GArray of GvpPort). */
GArray *gvp_network_dup_ports(GvpNetwork *self);
/* The VM's network namespace (expose / allow; borrowed), -1 in full mode or
 * before the start completed. For diagnostics and tests. */
int gvp_network_get_netns_fd(GvpNetwork *self);
/* Milliseconds start_async took (namespace, listeners, helper spawn). */
gint64 gvp_network_get_start_ms(GvpNetwork *self);

/* Kill the helper, confirm its death, close every relay, proxy connection
 * and the namespace. Idempotent. */
void gvp_network_stop_async(GvpNetwork *self, GAsyncReadyCallback callback, gpointer user_data);
gboolean gvp_network_stop_finish(GvpNetwork *self, GAsyncResult *result, GError **error);

/* Signal "died" (GvpNetwork *, const char *reason): the helper exited while
 * the network was up (not during stop). The VM's network is gone. */

G_END_DECLS
