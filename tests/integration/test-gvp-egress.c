/* SPDX-License-Identifier: MIT
 *
 * Component test of gvp-network's egress filter without a VM: a GvpNetwork
 * in "allow" mode with a real passt and namespace; the test plays the guest
 * from a thread that enters the namespace (where passt would deliver the
 * guest's traffic to the gateway) and talks to the DNS stub on 127.0.0.1:53
 * and the proxy on :443 / :80. The upstream is a TCP echo server on the
 * host's 127.0.0.1, reached through a resolve override, so the test sees
 * exactly which bytes the proxy let through. Needs root (namespaces).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gvproxy-glue/gvp-network.h"
#include "tests/sbx-test-tls-hello.h"


typedef struct {
    GMainLoop *loop;
    GvpContext *ctx;
    GvpNetwork *net;
    int qemu_fd;
    int ns_fd;
    GSocketService *echo;
    guint16 echo_port;
    gboolean ok;
    GError *error;
    /* the "guest" thread's results */
    char dns_allowed[64], dns_sub[64], dns_blocked[64];
    gssize tls_allowed_echo;  /* bytes echoed back for the allowed SNI */
    gssize tls_blocked_echo;  /* ... for a blocked SNI (expect 0: closed) */
    gssize junk_echo;         /* ... for bytes that are not TLS */
    gssize http_echo;         /* ... for an HTTP request to an allowed Host */
    gboolean other_port_refused;
} Fixture;

static void
echo_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GSocketConnection) conn = user_data;
    (void)g_output_stream_splice_finish(G_OUTPUT_STREAM(source), res, NULL);
}

static gboolean
echo_incoming(GSocketService *s, GSocketConnection *conn, GObject *src, gpointer user_data)
{
    /* echo: splice the connection with a pipe-like stream of itself */
    GIOStream *io = G_IO_STREAM(conn);
    GInputStream *in = g_io_stream_get_input_stream(io);
    GOutputStream *out = g_io_stream_get_output_stream(io);
    g_output_stream_splice_async(out, in, G_OUTPUT_STREAM_SPLICE_CLOSE_TARGET, G_PRIORITY_DEFAULT,
                                 NULL, (GAsyncReadyCallback)echo_cb, g_object_ref(conn));
    return TRUE;
}

static void
started_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Fixture *f = user_data;
    f->ok = gvp_network_start_finish(GVP_NETWORK(source), res, &f->qemu_fd, &f->error);
    g_main_loop_quit(f->loop);
}

static void
stopped_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Fixture *f = user_data;
    f->ok = gvp_network_stop_finish(GVP_NETWORK(source), res, NULL);
    g_main_loop_quit(f->loop);
}

static int
setup(void **state)
{
    if (geteuid() != 0)
        return 0; /* the tests skip */
    Fixture *f = g_new0(Fixture, 1);
    f->loop = g_main_loop_new(NULL, FALSE);
    f->qemu_fd = f->ns_fd = -1;
    f->echo = g_socket_service_new();
    g_autoptr(GInetAddress) lo = g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
    g_autoptr(GSocketAddress) any = g_inet_socket_address_new(lo, 0);
    g_autoptr(GSocketAddress) eff = NULL;
    assert_true(g_socket_listener_add_address(G_SOCKET_LISTENER(f->echo), any,
                                              G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, NULL,
                                              &eff, NULL));
    f->echo_port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(eff));
    g_signal_connect(f->echo, "incoming", G_CALLBACK(echo_incoming), NULL);
    g_autofree char *over = g_strdup_printf(
        "api.example.com:443=127.0.0.1:%u;example.com:80=127.0.0.1:%u", f->echo_port, f->echo_port);
    f->ctx = gvp_context_new(over, NULL);
    assert_non_null(f->ctx);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    Fixture *f = *state;
    if (f == NULL)
        return 0;
    if (f->net) {
        gvp_network_stop_async(f->net, stopped_cb, f);
        g_main_loop_run(f->loop);
        g_object_unref(f->net);
    }
    if (f->qemu_fd >= 0)
        close(f->qemu_fd);
    if (f->ns_fd >= 0)
        close(f->ns_fd);
    g_socket_service_stop(f->echo);
    g_socket_listener_close(G_SOCKET_LISTENER(f->echo));
    g_object_unref(f->echo);
    g_object_unref(f->ctx);
    g_main_loop_unref(f->loop);
    g_clear_error(&f->error);
    g_free(f);
    return 0;
}

/* ---- the guest's side, on a thread inside the namespace ------------------- */

static void
dns_query(const char *name, char *out, gsize outlen)
{
    guint8 q[300], r[600];
    gsize n = 12;
    static const guint8 head[] = {0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0};
    memcpy(q, head, 12);
    g_auto(GStrv) labels = g_strsplit(name, ".", 0);
    for (guint i = 0; labels[i]; i++) {
        q[n++] = (guint8)strlen(labels[i]);
        memcpy(q + n, labels[i], strlen(labels[i]));
        n += strlen(labels[i]);
    }
    const guint8 tail[] = {0, 0, 1, 0, 1};
    memcpy(q + n, tail, sizeof tail);
    n += sizeof tail;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(53)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {5, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sendto(s, q, n, 0, (struct sockaddr *)&sa, sizeof sa);
    gssize got = recv(s, r, sizeof r, 0);
    close(s);
    if (got < 12 || r[0] != 0xab || r[1] != 0xcd) {
        g_strlcpy(out, "no answer", outlen);
    } else if ((r[3] & 0xf) != 0) {
        g_snprintf(out, outlen, "rcode %d", r[3] & 0xf);
    } else if (r[7] == 1 && got == (gssize)n + 16) {
        g_snprintf(out, outlen, "%u.%u.%u.%u", r[got - 4], r[got - 3], r[got - 2], r[got - 1]);
    } else {
        g_strlcpy(out, "no data", outlen);
    }
}

/* Send @data to 127.0.0.1:@port, half-close, return how many bytes came back
 * (-1: could not connect). */
static gssize
exchange(guint16 port, const void *data, gsize len)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {15, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(s, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(s);
        return -1;
    }
    (void)!write(s, data, len);
    shutdown(s, SHUT_WR);
    gssize total = 0, n;
    guint8 buf[4096];
    while ((n = read(s, buf, sizeof buf)) > 0)
        total += n;
    close(s);
    return total;
}

static gpointer
guest_thread(gpointer data)
{
    Fixture *f = data;
    if (setns(f->ns_fd, CLONE_NEWNET) != 0)
        return NULL;
    dns_query("example.com", f->dns_allowed, sizeof f->dns_allowed);
    dns_query("api.EXAMPLE.com", f->dns_sub, sizeof f->dns_sub);
    dns_query("example.org", f->dns_blocked, sizeof f->dns_blocked);
    f->tls_allowed_echo = exchange(443, sbx_test_client_hello, sizeof sbx_test_client_hello);
    guint8 blocked[sizeof sbx_test_client_hello];
    memcpy(blocked, sbx_test_client_hello, sizeof sbx_test_client_hello);
    guint8 *at = memmem(blocked, sizeof blocked, "API.Example.com", 15);
    if (at)
        memcpy(at, "API.Example.org", 15); /* same length: a blocked name */
    f->tls_blocked_echo = exchange(443, blocked, sizeof blocked);
    static const char junk[] = "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
    f->junk_echo = exchange(443, junk, strlen(junk)); /* HTTP on the TLS port */
    f->http_echo = exchange(80, junk, strlen(junk));
    f->other_port_refused = exchange(8080, "x", 1) == -1;
    return NULL;
}

static gboolean
thread_done_cb(gpointer data)
{
    Fixture *f = data;
    g_main_loop_quit(f->loop);
    return G_SOURCE_REMOVE;
}

static gpointer
guest_thread_main(gpointer data)
{
    guest_thread(data);
    g_idle_add(thread_done_cb, data);
    return NULL;
}

static void
test_allow_filter(void **state)
{
    Fixture *f = *state;
    if (f == NULL)
        skip(); /* not root: no namespaces */
    const char *const allow[] = {"example.com", NULL};
    GvpNetworkSpec spec = {.mode = GVP_MODE_ALLOW, .allow_domains = allow, .allow_http = TRUE};
    f->net = gvp_network_new(f->ctx, "test");
    gvp_network_start_async(f->net, &spec, NULL, started_cb, f);
    g_main_loop_run(f->loop);
    if (!f->ok && g_error_matches(f->error, GVP_ERROR, GVP_ERROR_UNSUPPORTED))
        skip();
    assert_true(f->ok);
    /* the helper may not have entered the namespace yet: take it from the network */
    f->ns_fd = fcntl(gvp_network_get_netns_fd(f->net), F_DUPFD_CLOEXEC, 3);
    assert_true(f->ns_fd >= 0);

    GThread *t = g_thread_new("guest", guest_thread_main, f);
    g_main_loop_run(f->loop); /* the proxy runs on this loop meanwhile */
    g_thread_join(t);

    assert_string_equal(f->dns_allowed, "192.0.2.1");
    assert_string_equal(f->dns_sub, "192.0.2.1");
    assert_string_equal(f->dns_blocked, "rcode 3");
    assert_int_equal(f->tls_allowed_echo, sizeof sbx_test_client_hello); /* the hello reached upstream and back */
    assert_int_equal(f->tls_blocked_echo, 0);
    assert_int_equal(f->junk_echo, 0);
    assert_int_equal(f->http_echo, strlen("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"));
    assert_true(f->other_port_refused);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_allow_filter, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
