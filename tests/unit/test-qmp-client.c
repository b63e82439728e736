/* SPDX-License-Identifier: MIT
 *
 * Component tests of QmpClient (qmp/qmp-client.c) and the typed wrappers
 * (qmp/qmp-commands.c) against the in-process fake QMP server
 * (tests/fake/qmp-fake-server.c) on a socketpair: handshake, routing by id
 * with many commands in flight, events between command and reply, command
 * errors with their class, hang-up mid-command, timeout and cancellation
 * with a late reply, protocol errors (unknown id, id-less error, garbage,
 * invalid UTF-8, over-long line), the pending bound, SCM_RIGHTS fd passing
 * and the blockdev-create job helper. The test drives the GMainContext
 * itself; nothing sleeps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/sbx-fd.h"
#include "qmp/qmp-client.h"
#include "qmp/qmp-commands.h"
#include "qmp/qmp-parser.h"
#include "tests/fake/qmp-fake-server.h"

typedef struct {
    QmpClient *client;
    QmpFake *fake;
    guint n_closed;
    GError *closed_reason;
} Fixture;

typedef struct {
    GAsyncResult *res;
    guint count;
} Wait;

static void
wait_cb(GObject *source, GAsyncResult *res, gpointer data)
{
    Wait *w = data;
    w->count++;
    g_clear_object(&w->res);
    w->res = g_object_ref(res);
}

static void
wait_clear(Wait *w)
{
    g_clear_object(&w->res);
}

static gboolean
hang_guard_cb(gpointer data)
{
    *(gboolean *)data = TRUE;
    return G_SOURCE_REMOVE;
}

/* Iterate the main context until @cond(@data) holds. The 20 s guard only turns a
 * hang into a failure; it is not a timing assertion. */
static void
run_until(gboolean (*cond)(gpointer), gpointer data)
{
    gboolean hung = FALSE;
    guint guard = g_timeout_add_seconds(20, hang_guard_cb, &hung);
    while (!cond(data) && !hung)
        g_main_context_iteration(NULL, TRUE);
    if (!hung)
        g_source_remove(guard);
    assert_false(hung);
}

static gboolean
wait_done(gpointer data)
{
    return ((Wait *)data)->count > 0;
}

static void
run_wait(Wait *w)
{
    run_until(wait_done, w);
}

typedef struct {
    QmpFake *fake;
    guint n;
} Received;

static gboolean
received_n(gpointer data)
{
    Received *r = data;
    return qmp_fake_get_n_received(r->fake) >= r->n;
}

static void
run_until_received(Fixture *f, guint n)
{
    Received r = {f->fake, n};
    run_until(received_n, &r);
}

static gboolean
is_closed(gpointer data)
{
    return ((Fixture *)data)->n_closed > 0;
}

static void
drain(void)
{
    while (g_main_context_iteration(NULL, FALSE))
        ;
}

static void
on_closed(QmpClient *client, const GError *reason, gpointer data)
{
    Fixture *f = data;
    f->n_closed++;
    g_clear_error(&f->closed_reason);
    if (reason)
        f->closed_reason = g_error_copy(reason);
}

static int
setup(void **state)
{
    Fixture *f = g_new0(Fixture, 1);
    int sv[2];
    g_autoptr(GError) error = NULL;

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    f->client = qmp_client_new_for_fd(sv[0], &error);
    assert_non_null(f->client);
    f->fake = qmp_fake_new(sv[1]);
    g_signal_connect(f->client, "closed", G_CALLBACK(on_closed), f);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    Fixture *f = *state;

    if (f->client) {
        GObject *weak = G_OBJECT(f->client);
        g_object_add_weak_pointer(weak, (gpointer *)&weak);
        g_object_unref(f->client);
        drain();
        assert_null(weak); /* nothing kept the client alive */
    }
    if (qmp_fake_get_failure(f->fake))
        fail_msg("fake server: %s", qmp_fake_get_failure(f->fake));
    qmp_fake_free(f->fake);
    drain();
    g_clear_error(&f->closed_reason);
    g_free(f);
    return 0;
}

static void
connect_ok(Fixture *f)
{
    Wait w = {0};
    QmpVersion v = {0};
    g_autoptr(GError) error = NULL;

    qmp_fake_handshake(f->fake);
    qmp_client_connect_async(f->client, QMP_TIMEOUT_DEFAULT, NULL, wait_cb, &w);
    run_wait(&w);
    assert_true(qmp_client_connect_finish(f->client, w.res, &v, &error));
    assert_null(error);
    assert_int_equal(v.major, 7);
    assert_int_equal(v.minor, 2);
    assert_int_equal(v.micro, 22);
    assert_int_equal(qmp_client_get_state(f->client), QMP_CLIENT_STATE_RUNNING);
    assert_string_equal(qmp_client_get_package(f->client), "fake");
    wait_clear(&w);
}

static JsonNode *
execute_finish(Fixture *f, Wait *w, GError **error)
{
    run_wait(w);
    assert_int_equal(w->count, 1);
    return qmp_client_execute_finish(f->client, w->res, error);
}

/* ---- tests ---- */

static void
test_handshake_and_command(void **state)
{
    Fixture *f = *state;
    Wait w = {0};
    g_autoptr(GError) error = NULL;

    assert_int_equal(qmp_client_get_state(f->client), QMP_CLIENT_STATE_GREETING);
    connect_ok(f);
    qmp_fake_expect(
        f->fake, "query-status",
        "{\"return\": {\"status\": \"prelaunch\", \"singlestep\": false, \"running\": false}}");
    g_autoptr(JsonObject) args = json_object_new();
    json_object_set_string_member(args, "probe", "x\"y\n");
    qmp_client_execute_async(f->client, "query-status", args, QMP_TIMEOUT_DEFAULT, NULL, wait_cb,
                             &w);
    g_autoptr(JsonNode) ret = execute_finish(f, &w, &error);
    assert_null(error);
    assert_true(JSON_NODE_HOLDS_OBJECT(ret));
    assert_string_equal(qmp_json_peek_string(json_node_get_object(ret), "status"), "prelaunch");
    /* The message on the wire: execute, arguments (escaped properly), integer id. */
    JsonObject *sent = qmp_fake_peek_received(f->fake, 1);
    assert_string_equal(qmp_json_peek_string(sent, "execute"), "query-status");
    assert_string_equal(qmp_json_peek_string(qmp_json_peek_object(sent, "arguments"), "probe"),
                        "x\"y\n");
    gint64 id0 = -1, id1 = -1;
    assert_true(qmp_json_get_int(qmp_fake_peek_received(f->fake, 0), "id", &id0));
    assert_true(qmp_json_get_int(sent, "id", &id1));
    assert_true(id0 != id1);
    assert_int_equal(qmp_client_get_n_pending(f->client), 0);
    wait_clear(&w);
}

static void
test_out_of_order_replies(void **state)
{
    Fixture *f = *state;
    enum { N = 20 };
    Wait w[N] = {0};

    connect_ok(f);
    for (int i = 0; i < N; i++) {
        g_autoptr(JsonObject) args = json_object_new();
        json_object_set_int_member(args, "n", i);
        qmp_fake_expect(f->fake, "echo", NULL); /* hold */
        qmp_client_execute_async(f->client, "echo", args, QMP_TIMEOUT_DEFAULT, NULL, wait_cb,
                                 &w[i]);
    }
    assert_int_equal(qmp_client_get_n_pending(f->client), N);
    run_until_received(f, 1 + N);
    /* Reply in reverse order, each with its own payload. */
    for (int i = N - 1; i >= 0; i--) {
        JsonObject *cmd = qmp_fake_peek_received(f->fake, 1 + i);
        gint64 n = -1;
        assert_true(qmp_json_get_int(qmp_json_peek_object(cmd, "arguments"), "n", &n));
        g_autofree char *reply = g_strdup_printf("{\"return\": {\"n\": %" G_GINT64_FORMAT "}}", n);
        qmp_fake_reply(f->fake, 1 + i, reply);
    }
    for (int i = 0; i < N; i++) {
        g_autoptr(GError) error = NULL;
        g_autoptr(JsonNode) ret = execute_finish(f, &w[i], &error);
        gint64 n = -1;
        assert_null(error);
        assert_true(qmp_json_get_int(json_node_get_object(ret), "n", &n));
        assert_int_equal(n, i);
        wait_clear(&w[i]);
    }
    assert_int_equal(qmp_client_get_n_pending(f->client), 0);
}

typedef struct {
    guint n;
    char *name;
    gint64 timestamp;
    gboolean guest;
    guint n_stop;
    gboolean reply_seen_first;
    Wait *reply;
} EventLog;

static void
on_shutdown(QmpClient *client, const char *name, JsonObject *data, gint64 timestamp, gpointer user)
{
    EventLog *log = user;
    log->n++;
    g_free(log->name);
    log->name = g_strdup(name);
    log->timestamp = timestamp;
    qmp_json_get_bool(data, "guest", &log->guest);
    log->reply_seen_first = log->reply && log->reply->count > 0;
}

static void
on_stop(QmpClient *client, const char *name, JsonObject *data, gint64 timestamp, gpointer user)
{
    ((EventLog *)user)->n_stop++;
    assert_non_null(data); /* an event without "data" still gets an (empty) object */
    assert_int_equal(json_object_get_size(data), 0);
}

static void
test_event_between_command_and_reply(void **state)
{
    Fixture *f = *state;
    Wait w = {0};
    EventLog log = {0};
    g_autoptr(GError) error = NULL;

    log.reply = &w;
    g_signal_connect(f->client, "event::SHUTDOWN", G_CALLBACK(on_shutdown), &log);
    g_signal_connect(f->client, "event::STOP", G_CALLBACK(on_stop), &log);
    connect_ok(f);
    qmp_fake_expect(f->fake, "quit", NULL);
    qmp_client_execute_async(f->client, "quit", NULL, QMP_TIMEOUT_DEFAULT, NULL, wait_cb, &w);
    run_until_received(f, 2);
    qmp_fake_send(f->fake, "{\"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 123456}, "
                           "\"event\": \"SHUTDOWN\", \"data\": {\"guest\": false, \"reason\": "
                           "\"host-qmp-quit\"}}\r\n");
    qmp_fake_send(
        f->fake,
        "{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 0}}\r\n");
    qmp_fake_reply(f->fake, 1, "{\"return\": {}}");
    g_autoptr(JsonNode) ret = execute_finish(f, &w, &error);
    assert_null(error);
    assert_int_equal(log.n, 1);
    assert_string_equal(log.name, "SHUTDOWN");
    assert_int_equal(log.timestamp, G_GINT64_CONSTANT(1700000000123456));
    assert_false(log.reply_seen_first); /* delivered in wire order */
    assert_int_equal(log.n_stop, 0);    /* detail filters */

    qmp_fake_send(f->fake, "{\"event\": \"STOP\"}\r\n");
    qmp_fake_expect(f->fake, "query-status", "{\"return\": {}}");
    Wait w2 = {0};
    qmp_client_execute_async(f->client, "query-status", NULL, QMP_TIMEOUT_DEFAULT, NULL, wait_cb,
                             &w2);
    g_autoptr(JsonNode) ret2 = execute_finish(f, &w2, NULL);
    assert_int_equal(log.n_stop, 1);
    g_free(log.name);
    wait_clear(&w);
    wait_clear(&w2);
}

static void
test_command_error_class(void **state)
{
    Fixture *f = *state;
    Wait w = {0};
    g_autoptr(GError) error = NULL;

    connect_ok(f);
    qmp_fake_expect(
        f->fake, "device_del",
        "{\"error\": {\"class\": \"DeviceNotFound\", \"desc\": \"Device 'x' not found\"}}");
    qmp_client_execute_async(f->client, "device_del", NULL, QMP_TIMEOUT_DEFAULT, NULL, wait_cb, &w);
    g_autoptr(JsonNode) ret = execute_finish(f, &w, &error);
    assert_null(ret);
    assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_COMMAND));
    assert_int_equal(qmp_error_get_class(error), QMP_ERROR_CLASS_DEVICE_NOT_FOUND);
    assert_string_equal(qmp_error_get_class_name(error), "DeviceNotFound");
    /* A command error does not hurt the connection. */
    assert_int_equal(qmp_client_get_state(f->client), QMP_CLIENT_STATE_RUNNING);
    wait_clear(&w);
}

static void
test_hangup_mid_command(void **state)
{
    Fixture *f = *state;
    Wait w[3] = {0};

    connect_ok(f);
    for (int i = 0; i < 3; i++) {
        qmp_fake_expect(f->fake, "migrate", NULL);
        qmp_client_execute_async(f->client, "migrate", NULL, QMP_TIMEOUT_DEFAULT, NULL, wait_cb,
                                 &w[i]);
    }
    run_until_received(f, 4);
    qmp_fake_hangup(f->fake);
    run_until(is_closed, f);
    for (int i = 0; i < 3; i++) {
        g_autoptr(GError) error = NULL;
        g_autoptr(JsonNode) ret = execute_finish(f, &w[i], &error);
        assert_null(ret);
        assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_DISCONNECTED));
        wait_clear(&w[i]);
    }
    drain();
    for (int i = 0; i < 3; i++)
        assert_int_equal(w[i].count, 1); /* exactly once */
    assert_int_equal(f->n_closed, 1);
    assert_true(g_error_matches(f->closed_reason, QMP_ERROR, QMP_ERROR_DISCONNECTED));
    assert_int_equal(qmp_client_get_state(f->client), QMP_CLIENT_STATE_CLOSED);
    assert_int_equal(qmp_client_get_n_pending(f->client), 0);

    /* After close: new commands fail at once, close stays idempotent. */
    Wait late = {0};
    g_autoptr(GError) error = NULL;
    qmp_client_execute_async(f->client, "cont", NULL, QMP_TIMEOUT_DEFAULT, NULL, wait_cb, &late);
    g_autoptr(JsonNode) ret = execute_finish(f, &late, &error);
    assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_DISCONNECTED));
    qmp_client_close(f->client);
    drain();
    assert_int_equal(f->n_closed, 1);
    wait_clear(&late);
}

static void
test_timeout_then_late_reply(void **state)
{
    Fixture *f = *state;
    Wait w = {0};
    g_autoptr(GError) error = NULL;

    connect_ok(f);
    qmp_fake_expect(f->fake, "query-migrate", NULL);
    qmp_client_execute_async(f->client, "query-migrate", NULL, 20, NULL, wait_cb, &w);
    g_autoptr(JsonNode) ret = execute_finish(f, &w, &error);
    assert_null(ret);
    assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_TIMEOUT));
    /* The reply is still owed: it counts against the pending bound ... */
    assert_int_equal(qmp_client_get_n_pending(f->client), 1);
    /* ... and when it comes, it is swallowed (no second completion, no protocol error). */
    qmp_fake_reply(f->fake, 1, "{\"return\": {\"status\": \"late\"}}");
    qmp_fake_expect(f->fake, "query-status", "{\"return\": {\"status\": \"running\"}}");
    Wait w2 = {0};
    qmp_client_execute_async(f->client, "query-status", NULL, QMP_TIMEOUT_DEFAULT, NULL, wait_cb,
                             &w2);
    g_autoptr(JsonNode) ret2 = execute_finish(f, &w2, NULL);
    assert_string_equal(qmp_json_peek_string(json_node_get_object(ret2), "status"), "running");
    assert_int_equal(w.count, 1);
    assert_int_equal(qmp_client_get_n_pending(f->client), 0);
    assert_int_equal(qmp_client_get_state(f->client), QMP_CLIENT_STATE_RUNNING);
    wait_clear(&w);
    wait_clear(&w2);
}

static void
test_cancel_then_late_reply(void **state)
{
    Fixture *f = *state;
    Wait w = {0};
    g_autoptr(GError) error = NULL;
    g_autoptr(GCancellable) cancel = g_cancellable_new();

    connect_ok(f);
    qmp_fake_expect(f->fake, "stop", NULL);
    qmp_client_execute_async(f->client, "stop", NULL, QMP_TIMEOUT_NONE, cancel, wait_cb, &w);
    run_until_received(f, 2);
    g_cancellable_cancel(cancel);
    g_autoptr(JsonNode) ret = execute_finish(f, &w, &error);
    assert_true(g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED));
    qmp_fake_reply(f->fake, 1, "{\"return\": {}}");
    qmp_fake_expect(f->fake, "cont", "{\"return\": {}}");
    Wait w2 = {0};
    qmp_client_execute_async(f->client, "cont", NULL, QMP_TIMEOUT_DEFAULT, NULL, wait_cb, &w2);
    g_autoptr(GError) error2 = NULL;
    g_autoptr(JsonNode) ret2 = execute_finish(f, &w2, &error2);
    assert_null(error2);
    assert_int_equal(w.count, 1);
    assert_int_equal(qmp_client_get_n_pending(f->client), 0);

    /* Already cancelled before the call: fails without sending anything. */
    Wait w3 = {0};
    g_autoptr(GError) error3 = NULL;
    qmp_client_execute_async(f->client, "cont", NULL, QMP_TIMEOUT_DEFAULT, cancel, wait_cb, &w3);
    g_autoptr(JsonNode) ret3 = execute_finish(f, &w3, &error3);
    assert_true(g_error_matches(error3, G_IO_ERROR, G_IO_ERROR_CANCELLED));
    assert_int_equal(qmp_fake_get_n_received(f->fake), 3);
    wait_clear(&w);
    wait_clear(&w2);
    wait_clear(&w3);
}

/* A bad message from the peer closes the connection with a protocol error; the
 * pending command fails with DISCONNECTED exactly once. */
static void
expect_protocol_close(Fixture *f, const void *bad, gsize len)
{
    Wait w = {0};
    g_autoptr(GError) error = NULL;

    connect_ok(f);
    qmp_fake_expect(f->fake, "query-status", NULL);
    qmp_client_execute_async(f->client, "query-status", NULL, QMP_TIMEOUT_NONE, NULL, wait_cb, &w);
    run_until_received(f, 2);
    qmp_fake_send_len(f->fake, bad, len);
    run_until(is_closed, f);
    g_autoptr(JsonNode) ret = execute_finish(f, &w, &error);
    assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_DISCONNECTED));
    assert_true(g_error_matches(f->closed_reason, QMP_ERROR, QMP_ERROR_PROTOCOL));
    assert_int_equal(f->n_closed, 1);
    drain();
    assert_int_equal(w.count, 1);
    wait_clear(&w);
}

static void
test_unknown_id(void **state)
{
    const char *msg = "{\"return\": {}, \"id\": 9999}\r\n";
    expect_protocol_close(*state, msg, strlen(msg));
}

static void
test_idless_error(void **state)
{
    const char *msg =
        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}}\r\n";
    expect_protocol_close(*state, msg, strlen(msg));
}

static void
test_garbage(void **state)
{
    const char *msg = "this is not json\r\n";
    expect_protocol_close(*state, msg, strlen(msg));
}

static void
test_invalid_utf8(void **state)
{
    const char *msg = "{\"event\": \"\xff\xfe\"}\r\n";
    expect_protocol_close(*state, msg, strlen(msg));
}

static void
test_over_long_line(void **state)
{
    gsize n = QMP_PARSER_DEFAULT_MAX_LINE + 16;
    g_autofree char *big = g_malloc(n);
    memset(big, ' ', n); /* blanks, no newline: only the cap can end this */
    big[0] = '{';
    expect_protocol_close(*state, big, n);
}

static void
test_pending_bound(void **state)
{
    Fixture *f = *state;
    Wait w[3] = {0};
    g_autoptr(GError) error = NULL;

    connect_ok(f);
    qmp_client_set_max_pending(f->client, 2);
    qmp_fake_expect(f->fake, "a", NULL);
    qmp_fake_expect(f->fake, "b", NULL);
    qmp_client_execute_async(f->client, "a", NULL, QMP_TIMEOUT_NONE, NULL, wait_cb, &w[0]);
    qmp_client_execute_async(f->client, "b", NULL, QMP_TIMEOUT_NONE, NULL, wait_cb, &w[1]);
    qmp_client_execute_async(f->client, "c", NULL, QMP_TIMEOUT_NONE, NULL, wait_cb, &w[2]);
    g_autoptr(JsonNode) ret = execute_finish(f, &w[2], &error);
    assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_BUSY));
    run_until_received(f, 3);
    qmp_fake_reply(f->fake, 1, "{\"return\": 1}");
    qmp_fake_reply(f->fake, 2, "{\"return\": 2}");
    g_autoptr(JsonNode) r0 = execute_finish(f, &w[0], NULL);
    g_autoptr(JsonNode) r1 = execute_finish(f, &w[1], NULL);
    assert_int_equal(json_node_get_int(r0), 1);
    assert_int_equal(json_node_get_int(r1), 2);
    assert_int_equal(qmp_fake_get_n_received(f->fake), 3); /* "c" never went out */
    for (int i = 0; i < 3; i++)
        wait_clear(&w[i]);
}

static void
test_fd_passing(void **state)
{
    Fixture *f = *state;
    Wait w = {0};
    g_autoptr(GError) error = NULL;
    g_auto(SbxFd) rd = -1, wr = -1, got = -1;
    int p[2];
    char buf[8] = {0};

    connect_ok(f);
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    rd = p[0];
    wr = p[1];
    qmp_fake_expect(f->fake, "getfd", "{\"return\": {}}");
    qmp_getfd_async(f->client, wr, "mig", NULL, wait_cb, &w);
    run_wait(&w);
    assert_true(qmp_getfd_finish(f->client, w.res, &error));
    assert_null(error);
    assert_string_equal(
        qmp_json_peek_string(qmp_json_peek_object(qmp_fake_peek_received(f->fake, 1), "arguments"),
                             "fdname"),
        "mig");
    /* The fd the fake received is the write end of our pipe. */
    got = qmp_fake_steal_fd(f->fake);
    assert_true(got >= 0);
    assert_int_equal(write(got, "ping", 4), 4);
    assert_int_equal(read(rd, buf, sizeof buf), 4);
    assert_memory_equal(buf, "ping", 4);
    assert_int_equal(qmp_fake_steal_fd(f->fake), -1); /* exactly one fd went */
    wait_clear(&w);
}

static void
test_close_by_caller(void **state)
{
    Fixture *f = *state;
    Wait w = {0};
    g_autoptr(GError) error = NULL;

    connect_ok(f);
    qmp_fake_expect(f->fake, "query-jobs", NULL);
    qmp_client_execute_async(f->client, "query-jobs", NULL, QMP_TIMEOUT_NONE, NULL, wait_cb, &w);
    qmp_client_close(f->client);
    qmp_client_close(f->client);
    g_autoptr(JsonNode) ret = execute_finish(f, &w, &error);
    assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_DISCONNECTED));
    assert_int_equal(f->n_closed, 1);
    assert_null(f->closed_reason);
    wait_clear(&w);
}

static gboolean
fake_saw_eof(gpointer data)
{
    return qmp_fake_saw_eof(data);
}

static void
test_unref_closes_silently(void **state)
{
    Fixture *f = *state;

    connect_ok(f);
    g_clear_object(&f->client);
    run_until(fake_saw_eof, f->fake); /* the socket was closed ... */
    assert_int_equal(f->n_closed, 0); /* ... without "closed" from dispose */
}

static void
test_handshake_failures(void **state)
{
    Fixture *f = *state;
    Wait w = {0};
    g_autoptr(GError) error = NULL;

    /* A reply before any greeting is a protocol error. */
    qmp_client_connect_async(f->client, QMP_TIMEOUT_DEFAULT, NULL, wait_cb, &w);
    qmp_fake_send(f->fake, "{\"return\": {}, \"id\": 0}\r\n");
    run_wait(&w);
    assert_false(qmp_client_connect_finish(f->client, w.res, NULL, &error));
    assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_PROTOCOL));
    assert_int_equal(f->n_closed, 1);
    wait_clear(&w);
}

static void
test_handshake_hangup_and_timeout(void **state)
{
    Fixture *f = *state;
    Wait w = {0};
    g_autoptr(GError) error = NULL;

    /* Greeting, then the peer never answers qmp_capabilities: the handshake times out. */
    qmp_fake_send_greeting(f->fake);
    qmp_fake_expect(f->fake, "qmp_capabilities", NULL);
    qmp_client_connect_async(f->client, 30, NULL, wait_cb, &w);
    run_wait(&w);
    assert_false(qmp_client_connect_finish(f->client, w.res, NULL, &error));
    assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_TIMEOUT));
    assert_int_equal(qmp_client_get_state(f->client), QMP_CLIENT_STATE_CLOSED);
    assert_non_null(qmp_client_get_version(f->client));
    wait_clear(&w);
}

static void
test_hangup_before_greeting(void **state)
{
    Fixture *f = *state;
    Wait w = {0};
    g_autoptr(GError) error = NULL;

    qmp_client_connect_async(f->client, QMP_TIMEOUT_DEFAULT, NULL, wait_cb, &w);
    qmp_fake_hangup(f->fake);
    run_wait(&w);
    assert_false(qmp_client_connect_finish(f->client, w.res, NULL, &error));
    assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_DISCONNECTED));
    wait_clear(&w);
}

static void
test_wrappers(void **state)
{
    Fixture *f = *state;
    Wait w = {0};
    g_autoptr(GError) error = NULL;

    connect_ok(f);
    qmp_fake_expect(
        f->fake, "query-status",
        "{\"return\": {\"status\": \"paused\", \"singlestep\": false, \"running\": false}}");
    qmp_query_status_async(f->client, NULL, wait_cb, &w);
    run_wait(&w);
    gboolean running = TRUE;
    g_autofree char *status = qmp_query_status_finish(f->client, w.res, &running, &error);
    assert_string_equal(status, "paused");
    assert_false(running);
    wait_clear(&w);
    w.count = 0;

    qmp_fake_expect(f->fake, "query-balloon", "{\"return\": {\"actual\": 268435456}}");
    qmp_query_balloon_async(f->client, NULL, wait_cb, &w);
    run_wait(&w);
    gint64 actual = 0;
    assert_true(qmp_query_balloon_finish(f->client, w.res, &actual, &error));
    assert_int_equal(actual, 268435456);
    wait_clear(&w);
    w.count = 0;

    /* A wrapper refuses a malformed reply instead of crashing. */
    qmp_fake_expect(f->fake, "query-status", "{\"return\": {\"status\": 5}}");
    qmp_query_status_async(f->client, NULL, wait_cb, &w);
    run_wait(&w);
    g_autofree char *bad = qmp_query_status_finish(f->client, w.res, NULL, &error);
    assert_null(bad);
    assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_PROTOCOL));
    g_clear_error(&error);
    wait_clear(&w);
    w.count = 0;

    const char *caps[] = {"x-ignore-shared", NULL};
    qmp_fake_expect(f->fake, "migrate-set-capabilities", "{\"return\": {}}");
    qmp_migrate_set_capabilities_async(f->client, caps, TRUE, NULL, wait_cb, &w);
    run_wait(&w);
    assert_true(qmp_migrate_set_capabilities_finish(f->client, w.res, &error));
    JsonObject *args = qmp_json_peek_object(qmp_fake_peek_received(f->fake, 4), "arguments");
    JsonArray *list = qmp_json_peek_array(args, "capabilities");
    assert_non_null(list);
    assert_int_equal(json_array_get_length(list), 1);
    JsonObject *cap = json_array_get_object_element(list, 0);
    assert_string_equal(qmp_json_peek_string(cap, "capability"), "x-ignore-shared");
    gboolean on = FALSE;
    assert_true(qmp_json_get_bool(cap, "state", &on) && on);
    wait_clear(&w);
}

static void
test_blockdev_create_job(void **state)
{
    Fixture *f = *state;
    Wait w = {0};
    g_autoptr(GError) error = NULL;
    g_autoptr(JsonObject) opts = json_object_new();

    connect_ok(f);
    json_object_set_string_member(opts, "driver", "qcow2");
    /* Success: the job concludes without error, is dismissed. Events come
     * before the command's own reply, as QEMU may do. */
    qmp_fake_expect(f->fake, "blockdev-create", NULL);
    qmp_blockdev_create_run_async(f->client, "job0", opts, QMP_TIMEOUT_DEFAULT, NULL, wait_cb, &w);
    run_until_received(f, 2);
    qmp_fake_send(f->fake, "{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"status\": \"created\", "
                           "\"id\": \"job0\"}}\r\n"
                           "{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"status\": "
                           "\"concluded\", \"id\": \"other\"}}\r\n");
    qmp_fake_reply(f->fake, 1, "{\"return\": {}}");
    qmp_fake_expect(f->fake, "query-jobs",
                    "{\"return\": [{\"current-progress\": 1, \"status\": \"concluded\", "
                    "\"total-progress\": 1, \"type\": \"create\", \"id\": \"job0\"}]}");
    qmp_fake_expect(f->fake, "job-dismiss", "{\"return\": {}}");
    qmp_fake_send(f->fake, "{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"status\": \"running\", "
                           "\"id\": \"job0\"}}\r\n"
                           "{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"status\": "
                           "\"concluded\", \"id\": \"job0\"}}\r\n");
    run_wait(&w);
    assert_true(qmp_blockdev_create_run_finish(f->client, w.res, &error));
    assert_null(error);
    assert_int_equal(qmp_fake_get_n_received(f->fake), 4);
    assert_string_equal(
        qmp_json_peek_string(qmp_json_peek_object(qmp_fake_peek_received(f->fake, 3), "arguments"),
                             "id"),
        "job0");
    wait_clear(&w);
    w.count = 0;

    /* Failure: the job reports an error; it is still dismissed and the error returned. */
    qmp_fake_expect(f->fake, "blockdev-create", "{\"return\": {}}");
    qmp_fake_expect(f->fake, "query-jobs",
                    "{\"return\": [{\"status\": \"concluded\", \"type\": \"create\", \"id\": "
                    "\"job1\", \"error\": \"Could not create 'x': No such file\"}]}");
    qmp_fake_expect(f->fake, "job-dismiss", "{\"return\": {}}");
    qmp_blockdev_create_run_async(f->client, "job1", opts, QMP_TIMEOUT_DEFAULT, NULL, wait_cb, &w);
    run_until_received(f, 5);
    qmp_fake_send(f->fake, "{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"status\": "
                           "\"concluded\", \"id\": \"job1\"}}\r\n");
    run_wait(&w);
    assert_false(qmp_blockdev_create_run_finish(f->client, w.res, &error));
    assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_JOB));
    assert_non_null(strstr(error->message, "No such file"));
    assert_int_equal(qmp_fake_get_n_received(f->fake), 7);
    wait_clear(&w);
}

int
main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_handshake_and_command),
        T(test_out_of_order_replies),
        T(test_event_between_command_and_reply),
        T(test_command_error_class),
        T(test_hangup_mid_command),
        T(test_timeout_then_late_reply),
        T(test_cancel_then_late_reply),
        T(test_unknown_id),
        T(test_idless_error),
        T(test_garbage),
        T(test_invalid_utf8),
        T(test_over_long_line),
        T(test_pending_bound),
        T(test_fd_passing),
        T(test_close_by_caller),
        T(test_unref_closes_silently),
        T(test_handshake_failures),
        T(test_handshake_hangup_and_timeout),
        T(test_hangup_before_greeting),
        T(test_wrappers),
        T(test_blockdev_create_job),
    };
#undef T
    return cmocka_run_group_tests_name("qmp-client", tests, NULL, NULL);
}
