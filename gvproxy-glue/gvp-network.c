/* SPDX-License-Identifier: MIT
 *
 * gvp-network: the network of one VM. Talks to common/sbx-spawn (the passt
 * helper, started inside the VM's cgroup with its socketpair end as an
 * inherited fd), to the kernel (network namespaces, sockets) and to GIO
 * (resolver, socket client, stream splicing). The scheduler (sbx-manager.c)
 * starts it before QEMU and stops it before the VM's cgroup is removed.
 *
 * Modes (docs/networking.md):
 *   full    passt in the host's namespace, no filter; --no-map-gw keeps the
 *           host's loopback out of reach; exposed ports are passt -t forwards
 *           bound to 127.0.0.1.
 *   expose  passt in a fresh, empty network namespace (only lo): nothing the
 *           guest sends can be routed anywhere. Exposed ports are relayed by
 *           this process from 127.0.0.1:EXT on the host to passt's forward
 *           listener inside the namespace.
 *   allow   as expose, plus listeners of ours inside the namespace on
 *           127.0.0.1:53 (udp, DNS stub), :443 (TLS SNI) and optionally :80
 *           (HTTP Host); passt maps the guest's gateway address to that
 *           loopback. The proxy resolves the allowed name itself (in the host
 *           namespace) and splices the bytes: the guest never chooses a
 *           destination address.
 */
#define G_LOG_DOMAIN "gvp-network"

#include "gvproxy-glue/gvp-network.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/sbx-fd.h"
#include "common/sbx-spawn.h"

#define GVP_NS_PORT_BASE 40000       /* passt's forward listeners inside the namespace */
#define GVP_HELLO_MAX (16 * 1024)    /* bytes read to find the SNI / Host */
#define GVP_HELLO_TIMEOUT_MS 10000
#define GVP_CONNECT_TIMEOUT_S 10
#define GVP_MAX_CONNS 128            /* concurrent proxied/relayed connections per VM */
#define GVP_HELPER_MAC "9a:55:9a:55:9a:55"

/* ---- context ------------------------------------------------------------ */

struct _GvpContext {
    GObject parent_instance;
    char *passt;
    char *nsenter;
    char *gvproxy;
    char *description;
    int host_ns_fd;
    GHashTable *overrides; /* "name:port" -> GSocketAddress */
    GResolver *resolver;
};

G_DEFINE_FINAL_TYPE(GvpContext, gvp_context, G_TYPE_OBJECT)

static gboolean
parse_overrides(GHashTable *table, const char *spec, GError **error)
{
    g_auto(GStrv) items = g_strsplit(spec, ";", 0);
    for (guint i = 0; items[i]; i++) {
        char *item = g_strstrip(items[i]);
        if (!*item)
            continue;
        char *eq = strchr(item, '=');
        char *hc = eq ? g_strrstr_len(item, eq - item, ":") : NULL;
        char *ac = eq ? strrchr(eq + 1, ':') : NULL;
        GvpPort hp, ap;
        g_autofree char *name = NULL;
        if (!eq || !hc || !ac)
            goto bad;
        *eq = '\0';
        *ac = '\0';
        if (!gvp_port_parse(hc + 1, &hp, NULL) || !gvp_port_parse(ac + 1, &ap, NULL))
            goto bad;
        *hc = '\0';
        if (!gvp_domain_normalize(item, &name, NULL))
            goto bad;
        GInetAddress *addr = g_inet_address_new_from_string(eq + 1);
        if (addr == NULL)
            goto bad;
        g_hash_table_replace(table, g_strdup_printf("%s:%u", name, hp.internal),
                             g_inet_socket_address_new(addr, ap.internal));
        g_object_unref(addr);
        continue;
    bad:
        g_set_error(error, GVP_ERROR, GVP_ERROR_INVALID,
                    "resolve override '%s': expected NAME:PORT=ADDR:PORT", items[i]);
        return FALSE;
    }
    return TRUE;
}

GvpContext *
gvp_context_new(const char *resolve_overrides, GError **error)
{
    g_autoptr(GvpContext) self = g_object_new(GVP_TYPE_CONTEXT, NULL);
    if (resolve_overrides && !parse_overrides(self->overrides, resolve_overrides, error))
        return NULL;
    self->passt = g_find_program_in_path("passt");
    self->nsenter = g_find_program_in_path("nsenter");
    self->gvproxy = g_find_program_in_path("gvproxy");
    self->host_ns_fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    if (self->passt)
        self->description =
            g_strdup_printf("passt %s%s%s", self->passt,
                            self->gvproxy ? "; gvproxy found but not used: " : "",
                            self->gvproxy ? "it cannot take an inherited QEMU socket" : "");
    else
        self->description = g_strdup("no network helper: passt is not on PATH (apt install passt)");
    return g_steal_pointer(&self);
}

const char *
gvp_context_describe(GvpContext *self)
{
    return self->description;
}

static void
gvp_context_finalize(GObject *object)
{
    GvpContext *self = GVP_CONTEXT(object);
    g_free(self->passt);
    g_free(self->nsenter);
    g_free(self->gvproxy);
    g_free(self->description);
    if (self->host_ns_fd >= 0)
        close(self->host_ns_fd);
    g_hash_table_unref(self->overrides);
    g_clear_object(&self->resolver);
    G_OBJECT_CLASS(gvp_context_parent_class)->finalize(object);
}

static void
gvp_context_init(GvpContext *self)
{
    self->host_ns_fd = -1;
    self->overrides = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_object_unref);
    self->resolver = g_resolver_get_default();
}

static void
gvp_context_class_init(GvpContextClass *klass)
{
    G_OBJECT_CLASS(klass)->finalize = gvp_context_finalize;
}

/* ---- network ------------------------------------------------------------ */

typedef enum { LISTEN_RELAY, LISTEN_TLS, LISTEN_HTTP } ListenKind;

typedef struct {
    GvpNetwork *net; /* borrowed: the network outlives its listeners */
    ListenKind kind;
    guint16 ns_port;  /* RELAY: passt's listener in the namespace */
    GSocketListener *listener;
} Listen;

struct _GvpNetwork {
    GObject parent_instance;
    GvpContext *ctx;
    char *id;
    GvpMode mode;
    char **allow;
    gboolean allow_http;
    GArray *ports;      /* GvpPort, external filled in */
    int ns_fd;          /* the isolated namespace (expose / allow) */
    GPtrArray *listens; /* Listen* */
    GSocket *dns;
    GSource *dns_source;
    GSocketClient *client;
    GHashTable *conns;  /* Conn* set */
    SbxChild *helper;
    gboolean stopping;
    gboolean stopped;
    GQueue stop_waiters;
    GCancellable *cancellable;
    gint64 t_start, start_ms;
};

enum { SIGNAL_DIED, N_SIGNALS };
static guint signals[N_SIGNALS];

G_DEFINE_FINAL_TYPE(GvpNetwork, gvp_network, G_TYPE_OBJECT)

GvpNetwork *
gvp_network_new(GvpContext *ctx, const char *id)
{
    GvpNetwork *self = g_object_new(GVP_TYPE_NETWORK, NULL);
    self->ctx = g_object_ref(ctx);
    self->id = g_strdup(id);
    return self;
}

GPid
gvp_network_get_helper_pid(GvpNetwork *self)
{
    return self->helper ? sbx_child_get_pid(self->helper) : 0;
}

const char *
gvp_network_get_helper_name(GvpNetwork *self)
{
    return "passt";
}

GArray *
gvp_network_dup_ports(GvpNetwork *self)
{
    GArray *a = g_array_new(FALSE, FALSE, sizeof(GvpPort));
    if (self->ports)
        g_array_append_vals(a, self->ports->data, self->ports->len);
    return a;
}

int
gvp_network_get_netns_fd(GvpNetwork *self)
{
    return self->ns_fd;
}

gint64
gvp_network_get_start_ms(GvpNetwork *self)
{
    return self->start_ms;
}

/* ---- sockets in the namespace ------------------------------------------- */

/* A socket created inside the VM's namespace: the calling thread enters it
 * for the socket() call only (a socket keeps the namespace it was made in). */
static int
ns_socket(GvpNetwork *self, int type, GError **error)
{
    if (setns(self->ns_fd, CLONE_NEWNET) != 0) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "entering the VM's network "
                    "namespace: %s", g_strerror(e));
        return -1;
    }
    int fd = socket(AF_INET, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int e = errno;
    if (setns(self->ctx->host_ns_fd, CLONE_NEWNET) != 0)
        g_critical("cannot return to the host's network namespace: %s", g_strerror(errno));
    if (fd < 0)
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "socket: %s", g_strerror(e));
    return fd;
}

typedef struct {
    gboolean allow;
    gboolean http;
    int ns_fd;
    int fds[3]; /* tls, http, dns (listening / bound inside the namespace) */
} NsSetup;

static void
ns_setup_free(NsSetup *s)
{
    if (s->ns_fd >= 0)
        close(s->ns_fd);
    for (int i = 0; i < 3; i++)
        if (s->fds[i] >= 0)
            close(s->fds[i]);
    g_free(s);
}

static int
bind_loopback(int type, guint16 port, GError **error)
{
    g_auto(SbxFd) fd = socket(AF_INET, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    int one = 1;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        (type == SOCK_STREAM && listen(fd, 64) != 0)) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "binding 127.0.0.1:%u: %s", port,
                    g_strerror(e));
        return -1;
    }
    return sbx_steal_fd(&fd);
}

/* Runs on a thread of its own, which ends afterwards: unshare() moves only
 * this thread into the new namespace, so nothing else is ever affected. */
static gpointer
ns_setup_thread(gpointer data)
{
    g_autoptr(GTask) task = data;
    NsSetup *s = g_task_get_task_data(task);
    GError *error = NULL;

    if (unshare(CLONE_NEWNET) != 0) {
        int e = errno;
        g_task_return_new_error(task, GVP_ERROR, GVP_ERROR_UNSUPPORTED,
                                "cannot create a network namespace (%s): the 'expose' and "
                                "'allow' modes need CAP_SYS_ADMIN",
                                g_strerror(e));
        return NULL;
    }
    s->ns_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    g_auto(SbxFd) ctl = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr = {0};
    g_strlcpy(ifr.ifr_name, "lo", sizeof ifr.ifr_name);
    if (s->ns_fd < 0 || ctl < 0 || ioctl(ctl, SIOCGIFFLAGS, &ifr) != 0 ||
        (ifr.ifr_flags |= IFF_UP, ioctl(ctl, SIOCSIFFLAGS, &ifr) != 0)) {
        int e = errno;
        g_task_return_new_error(task, G_IO_ERROR, g_io_error_from_errno(e),
                                "setting up the network namespace: %s", g_strerror(e));
        return NULL;
    }
    if (s->allow) {
        if ((s->fds[0] = bind_loopback(SOCK_STREAM, 443, &error)) < 0 ||
            (s->http && (s->fds[1] = bind_loopback(SOCK_STREAM, 80, &error)) < 0) ||
            (s->fds[2] = bind_loopback(SOCK_DGRAM, 53, &error)) < 0) {
            g_task_return_error(task, error);
            return NULL;
        }
    }
    g_task_return_boolean(task, TRUE);
    return NULL;
}

/* ---- connections: relays and the egress proxy ---------------------------- */

typedef struct {
    GvpNetwork *net;
    ListenKind kind;
    GIOStream *down;   /* accepted */
    GIOStream *up;     /* our outgoing connection */
    GByteArray *hello; /* proxy: bytes read before the name was known */
    guint8 buf[4096];
    char *name;
    guint16 port;
    guint timer;
    guint pumps; /* directions still copying */
    GCancellable *cancellable;
} Conn;

static void
conn_free(Conn *c)
{
    g_clear_handle_id(&c->timer, g_source_remove);
    g_cancellable_cancel(c->cancellable);
    /* close the sockets themselves: the streams may have operations pending */
    if (c->down)
        (void)g_socket_close(g_socket_connection_get_socket(G_SOCKET_CONNECTION(c->down)), NULL);
    if (c->up)
        (void)g_socket_close(g_socket_connection_get_socket(G_SOCKET_CONNECTION(c->up)), NULL);
    g_clear_object(&c->down);
    g_clear_object(&c->up);
    if (c->hello)
        g_byte_array_unref(c->hello);
    g_free(c->name);
    g_clear_object(&c->cancellable);
    g_free(c);
}

static void
conn_drop(Conn *c, const char *why)
{
    if (why)
        g_debug("%s: %s connection %s%s dropped: %s", c->net->id,
                c->kind == LISTEN_RELAY ? "relay" : c->kind == LISTEN_TLS ? "https" : "http",
                c->name ? "to " : "", c->name ? c->name : "", why);
    g_hash_table_remove(c->net->conns, c); /* frees */
}

/* Two one-way pumps; the end of one direction is passed on as a half-close
 * (shutdown SHUT_WR) of the other socket, so "send, shut down, read the
 * answer" clients and "answer, then close" servers both work. The connection
 * goes when both directions are done, or at the first error. */
static void
pump_done(Conn *c, GAsyncResult *res, GIOStream *to)
{
    g_autoptr(GError) error = NULL;
    if (g_output_stream_splice_finish(g_io_stream_get_output_stream(to), res, &error) < 0) {
        if (!g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
            conn_drop(c, NULL); /* reset or broken: both sides go */
        return;                 /* cancelled: the connection is already gone */
    }
    (void)g_socket_shutdown(g_socket_connection_get_socket(G_SOCKET_CONNECTION(to)), FALSE, TRUE,
                            NULL);
    if (--c->pumps == 0)
        conn_drop(c, NULL);
}

static void
pump_up_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    /* cancelled means freed (conn_free cancels): do not touch @user_data */
    if (g_cancellable_is_cancelled(g_task_get_cancellable(G_TASK(res)))) {
        (void)g_output_stream_splice_finish(G_OUTPUT_STREAM(source), res, NULL);
        return;
    }
    Conn *c = user_data;
    pump_done(c, res, c->up);
}

static void
pump_down_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    /* cancelled means freed (conn_free cancels): do not touch @user_data */
    if (g_cancellable_is_cancelled(g_task_get_cancellable(G_TASK(res)))) {
        (void)g_output_stream_splice_finish(G_OUTPUT_STREAM(source), res, NULL);
        return;
    }
    Conn *c = user_data;
    pump_done(c, res, c->down);
}

static void
conn_splice(Conn *c)
{
    g_clear_handle_id(&c->timer, g_source_remove);
    c->pumps = 2;
    g_output_stream_splice_async(g_io_stream_get_output_stream(c->up),
                                 g_io_stream_get_input_stream(c->down), 0, G_PRIORITY_DEFAULT,
                                 c->cancellable, pump_up_cb, c);
    g_output_stream_splice_async(g_io_stream_get_output_stream(c->down),
                                 g_io_stream_get_input_stream(c->up), 0, G_PRIORITY_DEFAULT,
                                 c->cancellable, pump_down_cb, c);
}

static void
hello_written_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Conn *c = user_data;
    g_autoptr(GError) error = NULL;
    if (!g_output_stream_write_all_finish(G_OUTPUT_STREAM(source), res, NULL, &error)) {
        if (!g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
            conn_drop(c, error->message);
        return;
    }
    conn_splice(c);
}

static void
upstream_connected_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Conn *c = user_data;
    g_autoptr(GError) error = NULL;
    GSocketConnection *up = g_socket_client_connect_finish(G_SOCKET_CLIENT(source), res, &error);
    if (up == NULL) {
        if (!g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
            conn_drop(c, error->message);
        return;
    }
    c->up = G_IO_STREAM(up);
    if (c->hello && c->hello->len > 0) {
        g_output_stream_write_all_async(g_io_stream_get_output_stream(c->up), c->hello->data,
                                        c->hello->len, G_PRIORITY_DEFAULT, c->cancellable,
                                        hello_written_cb, c);
        return;
    }
    conn_splice(c);
}

static void
connect_upstream(Conn *c, GSocketConnectable *where)
{
    g_socket_client_connect_async(c->net->client, where, c->cancellable, upstream_connected_cb, c);
}

static void
resolved_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Conn *c = user_data;
    g_autoptr(GError) error = NULL;
    GList *addrs = g_resolver_lookup_by_name_finish(G_RESOLVER(source), res, &error);
    if (addrs == NULL) {
        if (!g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
            conn_drop(c, error->message);
        return;
    }
    GInetAddress *pick = NULL;
    for (GList *l = addrs; l; l = l->next) {
        GInetAddress *a = l->data;
        /* never into the host itself or its private link-local space */
        if (g_inet_address_get_is_loopback(a) || g_inet_address_get_is_any(a) ||
            g_inet_address_get_is_link_local(a) || g_inet_address_get_is_multicast(a))
            continue;
        pick = a;
        break;
    }
    if (pick == NULL) {
        g_resolver_free_addresses(addrs);
        conn_drop(c, "the name resolves to no usable address");
        return;
    }
    g_autoptr(GSocketAddress) sa = g_inet_socket_address_new(pick, c->port);
    g_resolver_free_addresses(addrs);
    connect_upstream(c, G_SOCKET_CONNECTABLE(sa));
}

static void
proxy_decide(Conn *c)
{
    GvpNetwork *net = c->net;
    if (!gvp_domain_allowed((const char *const *)net->allow, c->name)) {
        conn_drop(c, "name not on the allow-list");
        return;
    }
    g_autofree char *key = g_strdup_printf("%s:%u", c->name, c->port);
    GSocketAddress *over = g_hash_table_lookup(net->ctx->overrides, key);
    if (over) {
        connect_upstream(c, G_SOCKET_CONNECTABLE(over));
        return;
    }
    g_resolver_lookup_by_name_async(net->ctx->resolver, c->name, c->cancellable, resolved_cb, c);
}

static void hello_read_cb(GObject *source, GAsyncResult *res, gpointer user_data);

static void
hello_read_more(Conn *c)
{
    g_input_stream_read_async(g_io_stream_get_input_stream(c->down), c->buf, sizeof c->buf,
                              G_PRIORITY_DEFAULT, c->cancellable, hello_read_cb, c);
}

static void
hello_read_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Conn *c = user_data;
    g_autoptr(GError) error = NULL;
    gssize n = g_input_stream_read_finish(G_INPUT_STREAM(source), res, &error);
    if (n <= 0) {
        if (!g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
            conn_drop(c, n == 0 ? "closed before a name was seen" : error->message);
        return;
    }
    g_byte_array_append(c->hello, c->buf, (guint)n);
    GvpParseResult r = c->kind == LISTEN_TLS
                           ? gvp_tls_parse_sni(c->hello->data, c->hello->len, &c->name)
                           : gvp_http_parse_host(c->hello->data, c->hello->len, &c->name);
    switch (r) {
    case GVP_PARSE_OK:
        g_clear_handle_id(&c->timer, g_source_remove);
        proxy_decide(c);
        return;
    case GVP_PARSE_NEED_MORE:
        if (c->hello->len >= GVP_HELLO_MAX) {
            conn_drop(c, "no name in the first 16 KiB");
            return;
        }
        hello_read_more(c);
        return;
    case GVP_PARSE_NONE:
        conn_drop(c, c->kind == LISTEN_TLS ? "TLS without SNI" : "HTTP without Host");
        return;
    case GVP_PARSE_INVALID:
        conn_drop(c, c->kind == LISTEN_TLS ? "not a TLS ClientHello" : "not an HTTP request");
        return;
    }
}

static gboolean
hello_timeout_cb(gpointer user_data)
{
    Conn *c = user_data;
    c->timer = 0;
    conn_drop(c, "no name within the deadline");
    return G_SOURCE_REMOVE;
}

static void
relay_connected_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Conn *c = user_data;
    g_autoptr(GError) error = NULL;
    if (!g_socket_connection_connect_finish(G_SOCKET_CONNECTION(source), res, &error)) {
        if (!g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
            conn_drop(c, error->message);
        return;
    }
    conn_splice(c);
}

static void
relay_start(Conn *c, guint16 ns_port)
{
    g_autoptr(GError) error = NULL;
    int fd = ns_socket(c->net, SOCK_STREAM, &error);
    if (fd < 0) {
        conn_drop(c, error->message);
        return;
    }
    g_autoptr(GSocket) s = g_socket_new_from_fd(fd, &error);
    if (s == NULL) {
        close(fd);
        conn_drop(c, error->message);
        return;
    }
    c->up = G_IO_STREAM(g_socket_connection_factory_create_connection(s));
    g_autoptr(GInetAddress) lo = g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
    g_autoptr(GSocketAddress) sa = g_inet_socket_address_new(lo, ns_port);
    g_socket_connection_connect_async(G_SOCKET_CONNECTION(c->up), sa, c->cancellable,
                                      relay_connected_cb, c);
}

static void listen_accept(Listen *l);

static void
accepted_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Listen *l = user_data;
    GvpNetwork *net = l->net;
    g_autoptr(GError) error = NULL;
    GSocketConnection *conn =
        g_socket_listener_accept_finish(G_SOCKET_LISTENER(source), res, NULL, &error);
    if (conn == NULL) {
        if (!g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED) && !net->stopping) {
            g_debug("%s: accept: %s", net->id, error->message);
            listen_accept(l);
        }
        return;
    }
    listen_accept(l);
    if (g_hash_table_size(net->conns) >= GVP_MAX_CONNS) {
        g_io_stream_close(G_IO_STREAM(conn), NULL, NULL);
        g_object_unref(conn);
        return;
    }
    Conn *c = g_new0(Conn, 1);
    c->net = net;
    c->kind = l->kind;
    c->down = G_IO_STREAM(conn);
    c->cancellable = g_cancellable_new();
    g_hash_table_add(net->conns, c);
    if (l->kind == LISTEN_RELAY) {
        relay_start(c, l->ns_port);
        return;
    }
    c->port = l->kind == LISTEN_TLS ? 443 : 80;
    c->hello = g_byte_array_new();
    c->timer = g_timeout_add(GVP_HELLO_TIMEOUT_MS, hello_timeout_cb, c);
    hello_read_more(c);
}

static void
listen_accept(Listen *l)
{
    g_socket_listener_accept_async(l->listener, l->net->cancellable, accepted_cb, l);
}

static void
listen_free(Listen *l)
{
    g_socket_listener_close(l->listener);
    g_object_unref(l->listener);
    g_free(l);
}

/* Take a bound, listening fd. */
static gboolean
listen_add(GvpNetwork *self, int fd, ListenKind kind, guint16 ns_port, GError **error)
{
    g_autoptr(GSocket) s = g_socket_new_from_fd(fd, error);
    if (s == NULL) {
        close(fd);
        return FALSE;
    }
    Listen *l = g_new0(Listen, 1);
    l->net = self;
    l->kind = kind;
    l->ns_port = ns_port;
    l->listener = g_socket_listener_new();
    g_ptr_array_add(self->listens, l);
    if (!g_socket_listener_add_socket(l->listener, s, NULL, error))
        return FALSE;
    listen_accept(l);
    return TRUE;
}

/* ---- DNS stub ------------------------------------------------------------ */

static gboolean
dns_readable_cb(GSocket *sock, GIOCondition cond, gpointer user_data)
{
    GvpNetwork *self = user_data;
    guint8 in[512], out[512 + 16];
    for (int budget = 0; budget < 64; budget++) {
        GSocketAddress *from = NULL;
        gssize n = g_socket_receive_from(sock, &from, (char *)in, sizeof in, NULL, NULL);
        if (n < 0)
            break;
        g_autoptr(GSocketAddress) peer = from;
        GvpDnsQuery q;
        if (!gvp_dns_parse_query(in, (gsize)n, &q))
            continue; /* not a query we answer: silence */
        const guint8 gw[4] = {192, 0, 2, 1};
        guint rcode = GVP_DNS_RCODE_NXDOMAIN;
        const guint8 *a = NULL;
        if (q.qclass != 1) {
            rcode = GVP_DNS_RCODE_REFUSED;
        } else if (gvp_domain_allowed((const char *const *)self->allow, q.name)) {
            /* every allowed name is the gateway, i.e. our proxy; other types: no data */
            rcode = GVP_DNS_RCODE_NOERROR;
            a = q.qtype == GVP_DNS_TYPE_A ? gw : NULL;
        }
        g_debug("%s: dns %s type %u -> %s", self->id, q.name, q.qtype,
                rcode == GVP_DNS_RCODE_NOERROR ? "allowed" : "refused");
        gsize len = gvp_dns_build_reply(in, &q, rcode, a, out, sizeof out);
        if (len > 0 && peer)
            (void)g_socket_send_to(sock, peer, (const char *)out, len, NULL, NULL);
    }
    return G_SOURCE_CONTINUE;
}

/* ---- helper -------------------------------------------------------------- */

static void
helper_exited_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GvpNetwork) self = user_data;
    if (!sbx_child_wait_finish(SBX_CHILD(source), res, NULL) || self->stopping)
        return;
    g_autofree char *how = sbx_child_describe_exit(self->helper);
    g_autofree char *tail = sbx_child_dup_console_tail(self->helper, 3);
    g_strstrip(tail);
    g_autofree char *reason = g_strdup_printf("network helper passt %s%s%s", how,
                                              *tail ? ": " : "", tail);
    g_signal_emit(self, signals[SIGNAL_DIED], 0, reason);
}

/* A free port on 127.0.0.1 for passt's own -t forward (full mode only; the
 * port is free when we look: passt fails loudly if someone takes it first). */
static guint16
pick_free_port(GError **error)
{
    g_auto(SbxFd) fd = bind_loopback(SOCK_STREAM, 0, error);
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    if (fd < 0)
        return 0;
    if (getsockname(fd, (struct sockaddr *)&sa, &sl) != 0) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "getsockname: %s", g_strerror(e));
        return 0;
    }
    return ntohs(sa.sin_port);
}

static gboolean
spawn_helper(GvpNetwork *self, const char *const *cgroup_procs, int passt_fd, GError **error)
{
    g_auto(SbxFd) theirs = passt_fd;
    g_autoptr(SbxSpawnSpec) spec = sbx_spawn_spec_new();
    gboolean isolated = self->mode != GVP_MODE_FULL;

    if (isolated) {
        if (self->ctx->nsenter == NULL) {
            g_set_error_literal(error, GVP_ERROR, GVP_ERROR_UNSUPPORTED,
                                "nsenter (util-linux) is not on PATH");
            return FALSE;
        }
        sbx_spawn_spec_add_args(spec, self->ctx->nsenter, NULL);
        sbx_spawn_spec_add_argf(spec, "--net=/proc/self/fd/%d", GVP_HELPER_FD_NETNS);
        sbx_spawn_spec_add_args(spec, "--", NULL);
        int dup_ns = fcntl(self->ns_fd, F_DUPFD_CLOEXEC, 3);
        if (dup_ns < 0) {
            int e = errno;
            g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "dup: %s", g_strerror(e));
            return FALSE;
        }
        sbx_spawn_spec_take_fd(spec, dup_ns, GVP_HELPER_FD_NETNS);
    }
    sbx_spawn_spec_add_args(spec, self->ctx->passt, "-f", "-q", "-1", "-4", NULL);
    sbx_spawn_spec_add_argf(spec, "--fd=%d", GVP_HELPER_FD_QEMU);
    sbx_spawn_spec_add_args(spec, "-a", GVP_GUEST_ADDR, "-g", GVP_GATEWAY_ADDR, NULL);
    sbx_spawn_spec_add_argf(spec, "--netmask=%d", GVP_PREFIX_LEN);
    sbx_spawn_spec_add_args(spec, "--no-dhcp-dns", "--no-dhcp-search", NULL);
    if (isolated) /* the namespace has only lo: let passt take it as template */
        sbx_spawn_spec_add_args(spec, "-i", "lo", "-M", GVP_HELPER_MAC, NULL);
    /* gateway -> loopback mapping only where that loopback is ours (the DNS
     * stub and proxy in the namespace); never the host's own loopback */
    if (self->mode != GVP_MODE_ALLOW)
        sbx_spawn_spec_add_args(spec, "--no-map-gw", NULL);
    if (self->mode == GVP_MODE_FULL)
        sbx_spawn_spec_add_args(spec, "--dns-forward", GVP_GATEWAY_ADDR, NULL);
    for (guint i = 0; i < self->ports->len; i++) {
        GvpPort *p = &g_array_index(self->ports, GvpPort, i);
        sbx_spawn_spec_add_arg(spec, "-t");
        if (isolated)
            sbx_spawn_spec_add_argf(spec, "127.0.0.1/%u:%u", GVP_NS_PORT_BASE + i, p->internal);
        else
            sbx_spawn_spec_add_argf(spec, "127.0.0.1/%u:%u", p->external, p->internal);
    }
    if (!isolated && self->ports->len == 0) /* passt's default is no forwards; say so */
        sbx_spawn_spec_add_args(spec, "-t", "none", NULL);
    sbx_spawn_spec_take_fd(spec, sbx_steal_fd(&theirs), GVP_HELPER_FD_QEMU);
    sbx_spawn_spec_set_console_size(spec, 8 * 1024);
    for (guint i = 0; cgroup_procs && cgroup_procs[i]; i++)
        sbx_spawn_spec_add_cgroup(spec, cgroup_procs[i]);
    self->helper = sbx_child_spawn(spec, error);
    if (self->helper == NULL) {
        g_prefix_error(error, "starting the network helper: ");
        return FALSE;
    }
    sbx_child_wait_async(self->helper, NULL, helper_exited_cb, g_object_ref(self));
    return TRUE;
}

/* ---- start --------------------------------------------------------------- */

typedef struct {
    char **cgroup_procs;
    int qemu_fd;
    int passt_fd;
} StartData;

static void
start_data_free(StartData *sd)
{
    g_strfreev(sd->cgroup_procs);
    if (sd->qemu_fd >= 0)
        close(sd->qemu_fd);
    if (sd->passt_fd >= 0)
        close(sd->passt_fd);
    g_free(sd);
}

static void
start_complete(GTask *task, GError *error)
{
    GvpNetwork *self = g_task_get_source_object(task);
    StartData *sd = g_task_get_task_data(task);
    self->start_ms = (g_get_monotonic_time() - self->t_start + 500) / 1000;
    if (error) {
        g_task_return_error(task, error);
        return;
    }
    g_task_return_int(task, sbx_steal_fd(&sd->qemu_fd));
}

/* Finish a start whose namespace (if any) is ready. */
static void
start_finish_setup(GTask *task)
{
    GvpNetwork *self = g_task_get_source_object(task);
    StartData *sd = g_task_get_task_data(task);
    GError *error = NULL;
    if (!spawn_helper(self, (const char *const *)sd->cgroup_procs, sbx_steal_fd(&sd->passt_fd),
                      &error)) {
        start_complete(task, error);
        return;
    }
    g_debug("%s: %s network up, helper pid %d", self->id, gvp_mode_to_string(self->mode),
            (int)sbx_child_get_pid(self->helper));
    start_complete(task, NULL);
}

static void
ns_ready_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GTask) outer = user_data;
    GvpNetwork *self = g_task_get_source_object(outer);
    GError *error = NULL;
    NsSetup *s = g_task_get_task_data(G_TASK(res));
    if (!g_task_propagate_boolean(G_TASK(res), &error)) {
        start_complete(outer, error);
        return;
    }
    if (self->stopping) {
        start_complete(outer, g_error_new_literal(G_IO_ERROR, G_IO_ERROR_CANCELLED,
                                                  "the network was stopped while starting"));
        return;
    }
    self->ns_fd = sbx_steal_fd(&s->ns_fd);
    if (s->allow) {
        if (!listen_add(self, sbx_steal_fd(&s->fds[0]), LISTEN_TLS, 0, &error) ||
            (s->http && !listen_add(self, sbx_steal_fd(&s->fds[1]), LISTEN_HTTP, 0, &error))) {
            start_complete(outer, error);
            return;
        }
        self->dns = g_socket_new_from_fd(sbx_steal_fd(&s->fds[2]), &error);
        if (self->dns == NULL) {
            start_complete(outer, error);
            return;
        }
        g_socket_set_blocking(self->dns, FALSE); /* the loop must never wait in recv */
        self->dns_source = g_socket_create_source(self->dns, G_IO_IN, NULL);
        g_source_set_callback(self->dns_source, G_SOURCE_FUNC(dns_readable_cb), self, NULL);
        g_source_attach(self->dns_source, g_main_context_get_thread_default());
    }
    start_finish_setup(outer);
}

void
gvp_network_start_async(GvpNetwork *self, const GvpNetworkSpec *spec, GCancellable *cancellable,
                        GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = g_task_new(self, cancellable, callback, user_data);
    g_task_set_source_tag(task, gvp_network_start_async);
    /* a helper that started is reported even when the caller cancelled, so
     * that the caller stops it (it is in the VM's cgroup) */
    g_task_set_check_cancellable(task, FALSE);
    StartData *sd = g_new0(StartData, 1);
    sd->qemu_fd = sd->passt_fd = -1;
    sd->cgroup_procs = g_strdupv((char **)spec->cgroup_procs);
    g_task_set_task_data(task, sd, (GDestroyNotify)start_data_free);
    GError *error = NULL;
    self->t_start = g_get_monotonic_time();
    self->mode = spec->mode;
    self->allow_http = spec->allow_http;

    if (!gvp_request_validate(spec->mode, spec->allow_domains, spec->ports, spec->n_ports, &error) ||
        spec->mode == GVP_MODE_NONE) {
        if (error == NULL)
            error = g_error_new_literal(GVP_ERROR, GVP_ERROR_INVALID, "network 'none' has no helper");
        goto fail;
    }
    if (self->ctx->passt == NULL) {
        error = g_error_new(GVP_ERROR, GVP_ERROR_UNSUPPORTED, "%s", self->ctx->description);
        goto fail;
    }
    GPtrArray *allow = g_ptr_array_new();
    for (guint i = 0; spec->allow_domains && spec->allow_domains[i]; i++) {
        char *norm = NULL;
        if (gvp_domain_normalize(spec->allow_domains[i], &norm, NULL))
            g_ptr_array_add(allow, norm);
    }
    g_ptr_array_add(allow, NULL);
    self->allow = (char **)g_ptr_array_free(allow, FALSE);
    g_array_append_vals(self->ports, spec->ports, spec->n_ports);

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        int e = errno;
        error = g_error_new(G_IO_ERROR, g_io_error_from_errno(e), "socketpair: %s", g_strerror(e));
        goto fail;
    }
    sd->qemu_fd = sv[0];
    sd->passt_fd = sv[1];

    if (spec->mode == GVP_MODE_FULL) {
        for (guint i = 0; i < self->ports->len; i++) {
            GvpPort *p = &g_array_index(self->ports, GvpPort, i);
            if (p->external == 0 && (p->external = pick_free_port(&error)) == 0)
                goto fail;
        }
        start_finish_setup(task);
        g_object_unref(task);
        return;
    }
    /* isolated: bind the host side of every exposed port now (fails early
     * and reports OS-assigned ports without a race) */
    for (guint i = 0; i < self->ports->len; i++) {
        GvpPort *p = &g_array_index(self->ports, GvpPort, i);
        int fd = bind_loopback(SOCK_STREAM, p->external, &error);
        if (fd < 0) {
            g_prefix_error(&error, "exposed port %u: ", p->internal);
            goto fail;
        }
        struct sockaddr_in sa;
        socklen_t sl = sizeof sa;
        if (getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
            p->external = ntohs(sa.sin_port);
        if (!listen_add(self, fd, LISTEN_RELAY, (guint16)(GVP_NS_PORT_BASE + i), &error))
            goto fail;
    }
    NsSetup *s = g_new0(NsSetup, 1);
    s->ns_fd = -1;
    s->fds[0] = s->fds[1] = s->fds[2] = -1;
    s->allow = spec->mode == GVP_MODE_ALLOW;
    s->http = spec->allow_http;
    GTask *inner = g_task_new(self, NULL, ns_ready_cb, task);
    g_task_set_task_data(inner, s, (GDestroyNotify)ns_setup_free);
    GThread *t = g_thread_try_new("gvp-netns", ns_setup_thread, inner, &error);
    if (t == NULL) {
        g_object_unref(inner);
        goto fail_owned;
    }
    g_thread_unref(t);
    return;

fail:
    start_complete(task, error);
    g_object_unref(task);
    return;
fail_owned:
    /* @task is owned by the inner task's callback data, which never runs */
    start_complete(task, error);
    g_object_unref(task);
}

gboolean
gvp_network_start_finish(GvpNetwork *self, GAsyncResult *result, int *out_qemu_fd, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    gssize fd = g_task_propagate_int(G_TASK(result), error);
    if (fd < 0)
        return FALSE;
    *out_qemu_fd = (int)fd;
    return TRUE;
}

/* ---- stop ---------------------------------------------------------------- */

static void
stop_complete(GvpNetwork *self)
{
    GTask *task;
    self->stopped = TRUE;
    while ((task = g_queue_pop_head(&self->stop_waiters)) != NULL) {
        g_task_return_boolean(task, TRUE);
        g_object_unref(task);
    }
    g_object_unref(self); /* taken when the stop began */
}

static void
stop_release(GvpNetwork *self)
{
    g_cancellable_cancel(self->cancellable);
    if (self->dns_source) {
        g_source_destroy(self->dns_source);
        g_clear_pointer(&self->dns_source, g_source_unref);
    }
    if (self->dns)
        g_socket_close(self->dns, NULL);
    g_clear_object(&self->dns);
    g_ptr_array_set_size(self->listens, 0);
    g_hash_table_remove_all(self->conns);
    if (self->ns_fd >= 0) {
        close(self->ns_fd);
        self->ns_fd = -1;
    }
}

static void
helper_reaped_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GvpNetwork *self = user_data;
    (void)sbx_child_wait_finish(SBX_CHILD(source), res, NULL);
    stop_release(self);
    stop_complete(self);
}

void
gvp_network_stop_async(GvpNetwork *self, GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = g_task_new(self, NULL, callback, user_data);
    g_task_set_source_tag(task, gvp_network_stop_async);
    if (self->stopped) {
        g_task_return_boolean(task, TRUE);
        g_object_unref(task);
        return;
    }
    g_queue_push_tail(&self->stop_waiters, task);
    if (self->stopping)
        return;
    self->stopping = TRUE;
    g_object_ref(self);
    if (self->helper && !sbx_child_has_exited(self->helper)) {
        /* passt keeps no state worth a graceful exit */
        sbx_child_kill(self->helper, SIGKILL);
        sbx_child_wait_async(self->helper, NULL, helper_reaped_cb, self);
        return;
    }
    stop_release(self);
    stop_complete(self);
}

gboolean
gvp_network_stop_finish(GvpNetwork *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

static void
gvp_network_dispose(GObject *object)
{
    GvpNetwork *self = GVP_NETWORK(object);
    self->stopping = TRUE;
    /* Last line of defence: a network dropped without stop still dies. */
    if (self->helper && !sbx_child_has_exited(self->helper))
        sbx_child_kill(self->helper, SIGKILL);
    stop_release(self);
    g_clear_object(&self->helper);
    G_OBJECT_CLASS(gvp_network_parent_class)->dispose(object);
}

static void
gvp_network_finalize(GObject *object)
{
    GvpNetwork *self = GVP_NETWORK(object);
    g_ptr_array_unref(self->listens);
    g_hash_table_unref(self->conns);
    g_array_unref(self->ports);
    g_strfreev(self->allow);
    g_clear_object(&self->client);
    g_clear_object(&self->cancellable);
    g_clear_object(&self->ctx);
    g_free(self->id);
    G_OBJECT_CLASS(gvp_network_parent_class)->finalize(object);
}

static void
gvp_network_init(GvpNetwork *self)
{
    self->ns_fd = -1;
    self->listens = g_ptr_array_new_with_free_func((GDestroyNotify)listen_free);
    self->conns = g_hash_table_new_full(g_direct_hash, g_direct_equal, (GDestroyNotify)conn_free,
                                        NULL);
    self->ports = g_array_new(FALSE, FALSE, sizeof(GvpPort));
    self->cancellable = g_cancellable_new();
    self->client = g_socket_client_new();
    g_socket_client_set_timeout(self->client, GVP_CONNECT_TIMEOUT_S);
    g_socket_client_set_family(self->client, G_SOCKET_FAMILY_IPV4);
    g_queue_init(&self->stop_waiters);
}

static void
gvp_network_class_init(GvpNetworkClass *klass)
{
    GObjectClass *oc = G_OBJECT_CLASS(klass);
    oc->dispose = gvp_network_dispose;
    oc->finalize = gvp_network_finalize;
    signals[SIGNAL_DIED] = g_signal_new("died", G_TYPE_FROM_CLASS(klass), G_SIGNAL_RUN_LAST, 0,
                                        NULL, NULL, NULL, G_TYPE_NONE, 1, G_TYPE_STRING);
}
