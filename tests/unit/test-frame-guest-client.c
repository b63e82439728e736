/* SPDX-License-Identifier: MIT
 *
 * Component tests of the host client (scheduler/sbx-guest.c) against a
 * scripted peer on a socketpair that plays a misbehaving or slow agent:
 * hello timeout and cancellation, a wrong protocol version, a bad frame,
 * output past the caps, a frame of the wrong type, frames for unknown ids,
 * and requests failing exactly once when the channel dies. The well-behaved
 * path is covered by tests/integration/agent-host with the real agent.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include <fcntl.h>
#include <gio/gunixinputstream.h>
#include <glib-unix.h>

#include "common/sbx-frame.h"
#include "scheduler/sbx-guest.h"
#include "tests/sbx-test-loop.h"

typedef struct {
    int fd;
    guint watch;
    SbxFrameDecoder *dec;
    GQueue frames;
    GThread *writer;
} Peer;

typedef struct {
    Peer peer;
    SbxGuest *guest;
} Fixture;

static gboolean
on_peer_readable(int fd, GIOCondition cond, gpointer data)
{
    Peer *p = data;
    guint8 buf[65536];
    ssize_t n = read(fd, buf, sizeof buf);
    SbxFrame *f;

    if (n <= 0) {
        p->watch = 0;
        return G_SOURCE_REMOVE;
    }
    assert_true(sbx_frame_decoder_feed(p->dec, buf, (gsize)n, NULL));
    while ((f = sbx_frame_decoder_pop(p->dec, NULL)))
        g_queue_push_tail(&p->frames, f);
    return G_SOURCE_CONTINUE;
}

/* Next frame the client sent, skipping its greeting. */
static SbxFrame *
peer_recv(Peer *p)
{
    for (;;) {
        SbxFrame *f;
        while (g_queue_is_empty(&p->frames))
            g_main_context_iteration(NULL, TRUE);
        f = g_queue_pop_head(&p->frames);
        if (!g_str_equal(f->type, "hello"))
            return f;
        sbx_frame_free(f);
    }
}

typedef struct {
    int fd;
    GByteArray *data;
} WriteJob;

static gpointer
writer_thread(gpointer data)
{
    WriteJob *j = data;
    gsize off = 0;
    while (off < j->data->len) {
        ssize_t n = write(j->fd, j->data->data + off, j->data->len - off);
        if (n <= 0)
            break;
        off += (gsize)n;
    }
    g_byte_array_unref(j->data);
    g_free(j);
    return NULL;
}

/* Send raw bytes from a thread (large writes must not block the loop). */
static void
peer_send_raw(Peer *p, GByteArray *wire)
{
    WriteJob *j = g_new(WriteJob, 1);
    if (p->writer)
        g_thread_join(p->writer);
    j->fd = p->fd;
    j->data = g_byte_array_ref(wire);
    p->writer = g_thread_new("peer-writer", writer_thread, j);
}

static void
peer_send(Peer *p, JsonObject *h, const void *payload, gsize len)
{
    g_autoptr(GByteArray) w = g_byte_array_new();
    assert_true(sbx_frame_encode(w, h, payload, len, NULL));
    json_object_unref(h);
    peer_send_raw(p, w);
}

static JsonObject *
hello_header(gint64 protocol)
{
    JsonObject *h = sbx_frame_header_new("hello", 0);
    JsonObject *langs = json_object_new();
    json_object_set_int_member(h, "protocol", protocol);
    json_object_set_string_member(h, "agent_version", "peer");
    json_object_set_boolean_member(langs, "python", TRUE);
    json_object_set_object_member(h, "languages", langs);
    return h;
}

static int
setup(void **state)
{
    Fixture *fx = g_new0(Fixture, 1);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    fx->peer.fd = sv[1];
    fx->peer.dec = sbx_frame_decoder_new();
    g_queue_init(&fx->peer.frames);
    fx->peer.watch = g_unix_fd_add(sv[1], G_IO_IN | G_IO_HUP, on_peer_readable, &fx->peer);
    fx->guest = sbx_guest_new(sv[0]);
    *state = fx;
    return 0;
}

static int
teardown(void **state)
{
    Fixture *fx = *state;
    if (fx->peer.writer)
        g_thread_join(fx->peer.writer);
    g_clear_object(&fx->guest);
    g_clear_handle_id(&fx->peer.watch, g_source_remove);
    close(fx->peer.fd);
    g_queue_clear_full(&fx->peer.frames, (GDestroyNotify)sbx_frame_free);
    sbx_frame_decoder_free(fx->peer.dec);
    while (g_main_context_iteration(NULL, FALSE))
        ;
    g_free(fx);
    return 0;
}

static gboolean
hello(Fixture *fx, GError **error)
{
    GAsyncResult *r = NULL;
    gboolean ok;
    sbx_guest_wait_hello_async(fx->guest, 5000, NULL, sbx_test_store_result, &r);
    ok = sbx_guest_wait_hello_finish(fx->guest, sbx_test_wait_result(&r), error);
    g_object_unref(r);
    return ok;
}

static void
test_client_greets_first(void **state)
{
    Fixture *fx = *state;
    SbxFrame *f;
    while (g_queue_is_empty(&fx->peer.frames))
        g_main_context_iteration(NULL, TRUE);
    f = g_queue_pop_head(&fx->peer.frames);
    assert_string_equal(f->type, "hello");
    assert_int_equal(f->id, 0);
    sbx_frame_free(f);
}

static void
test_hello_timeout(void **state)
{
    Fixture *fx = *state;
    GAsyncResult *r = NULL;
    g_autoptr(GError) error = NULL;
    sbx_guest_wait_hello_async(fx->guest, 50, NULL, sbx_test_store_result, &r);
    assert_false(sbx_guest_wait_hello_finish(fx->guest, sbx_test_wait_result(&r), &error));
    assert_true(g_error_matches(error, SBX_GUEST_ERROR, SBX_GUEST_ERROR_TIMEOUT));
    g_object_unref(r);
    /* A late hello still works for a new waiter. */
    peer_send(&fx->peer, hello_header(SBX_PROTOCOL_VERSION), NULL, 0);
    g_clear_error(&error);
    assert_true(hello(fx, &error));
    assert_string_equal(sbx_guest_get_agent_version(fx->guest), "peer");
    assert_true(sbx_guest_has_language(fx->guest, SBX_LANGUAGE_PYTHON));
    assert_false(sbx_guest_has_language(fx->guest, SBX_LANGUAGE_JAVASCRIPT));
}

static void
test_hello_cancel(void **state)
{
    Fixture *fx = *state;
    GAsyncResult *r = NULL;
    g_autoptr(GError) error = NULL;
    g_autoptr(GCancellable) c = g_cancellable_new();
    sbx_guest_wait_hello_async(fx->guest, 60000, c, sbx_test_store_result, &r);
    g_cancellable_cancel(c);
    assert_false(sbx_guest_wait_hello_finish(fx->guest, sbx_test_wait_result(&r), &error));
    assert_true(g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED));
    g_object_unref(r);
}

static void
test_wrong_protocol(void **state)
{
    Fixture *fx = *state;
    g_autoptr(GError) error = NULL;
    peer_send(&fx->peer, hello_header(99), NULL, 0);
    assert_false(hello(fx, &error));
    assert_true(g_error_matches(error, SBX_GUEST_ERROR, SBX_GUEST_ERROR_PROTOCOL));
    assert_true(sbx_guest_is_closed(fx->guest));
}

static int n_closed;

static void
on_closed(SbxGuest *g, gpointer data)
{
    n_closed++;
}

static void
test_bad_frame_fails_pending_once(void **state)
{
    Fixture *fx = *state;
    GAsyncResult *r1 = NULL, *r2 = NULL, *r3 = NULL;
    g_autoptr(GError) e1 = NULL;
    g_autoptr(GError) e2 = NULL;
    g_autoptr(GError) e3 = NULL;
    g_autoptr(GByteArray) bad = g_byte_array_new();
    static const guint8 huge[8] = { 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0 };

    n_closed = 0;
    g_signal_connect(fx->guest, "closed", G_CALLBACK(on_closed), NULL);
    peer_send(&fx->peer, hello_header(SBX_PROTOCOL_VERSION), NULL, 0);
    assert_true(hello(fx, NULL));
    sbx_guest_ping_async(fx->guest, NULL, sbx_test_store_result, &r1);
    sbx_guest_ping_async(fx->guest, NULL, sbx_test_store_result, &r2);
    sbx_frame_free(peer_recv(&fx->peer));
    sbx_frame_free(peer_recv(&fx->peer));
    g_byte_array_append(bad, huge, sizeof huge);
    peer_send_raw(&fx->peer, bad);
    assert_false(sbx_guest_ping_finish(fx->guest, sbx_test_wait_result(&r1), &e1));
    assert_false(sbx_guest_ping_finish(fx->guest, sbx_test_wait_result(&r2), &e2));
    assert_true(g_error_matches(e1, SBX_GUEST_ERROR, SBX_GUEST_ERROR_DISCONNECTED));
    assert_true(g_error_matches(e2, SBX_GUEST_ERROR, SBX_GUEST_ERROR_DISCONNECTED));
    assert_int_equal(n_closed, 1);
    sbx_guest_ping_async(fx->guest, NULL, sbx_test_store_result, &r3);
    assert_false(sbx_guest_ping_finish(fx->guest, sbx_test_wait_result(&r3), &e3));
    assert_true(g_error_matches(e3, SBX_GUEST_ERROR, SBX_GUEST_ERROR_DISCONNECTED));
    sbx_guest_close(fx->guest);
    assert_int_equal(n_closed, 1);
    g_object_unref(r1);
    g_object_unref(r2);
    g_object_unref(r3);
}

typedef struct {
    gsize out;
    gsize err;
} Counts;

static void
count_output(SbxGuestStream s, const guint8 *d, gsize n, gpointer data)
{
    Counts *c = data;
    if (s == SBX_GUEST_STDOUT)
        c->out += n;
    else
        c->err += n;
}

static void
test_output_caps_enforced(void **state)
{
    Fixture *fx = *state;
    g_autoptr(GBytes) code = g_bytes_new_static("print(1)", 8);
    g_autoptr(GByteArray) w = g_byte_array_new();
    g_autofree guint8 *junk = g_malloc0(SBX_FRAME_MAX_PAYLOAD);
    SbxGuestExecResult res;
    GAsyncResult *r = NULL;
    Counts c = { 0, 0 };
    SbxFrame *req;
    JsonObject *h;

    peer_send(&fx->peer, hello_header(SBX_PROTOCOL_VERSION), NULL, 0);
    assert_true(hello(fx, NULL));
    sbx_guest_exec_async(fx->guest, SBX_LANGUAGE_PYTHON, code, 5, NULL, count_output, &c, NULL, NULL,
                         sbx_test_store_result, &r);
    req = peer_recv(&fx->peer);
    assert_string_equal(req->type, "exec");
    assert_string_equal(sbx_frame_get_string(req, "language", ""), "python");
    assert_int_equal(sbx_frame_get_int(req, "timeout_s", 0), 5);
    assert_int_equal(g_bytes_get_size(req->payload), 8);
    /* A lying agent: 3 MiB of stdout, 1 MiB of stderr, "nothing truncated". */
    for (int i = 0; i < 3; i++) {
        h = sbx_frame_header_new("stdout", req->id);
        assert_true(sbx_frame_encode(w, h, junk, SBX_FRAME_MAX_PAYLOAD, NULL));
        json_object_unref(h);
    }
    h = sbx_frame_header_new("stderr", req->id);
    assert_true(sbx_frame_encode(w, h, junk, SBX_FRAME_MAX_PAYLOAD, NULL));
    json_object_unref(h);
    h = sbx_frame_header_new("exit", 4242); /* unknown id: ignored */
    assert_true(sbx_frame_encode(w, h, NULL, 0, NULL));
    json_object_unref(h);
    h = sbx_frame_header_new("exit", req->id);
    json_object_set_int_member(h, "exit_code", 0);
    json_object_set_boolean_member(h, "stdout_truncated", FALSE);
    assert_true(sbx_frame_encode(w, h, NULL, 0, NULL));
    json_object_unref(h);
    peer_send_raw(&fx->peer, w);
    assert_true(sbx_guest_exec_finish(fx->guest, sbx_test_wait_result(&r), &res, NULL));
    assert_int_equal(c.out, SBX_MAX_STDOUT_BYTES);
    assert_int_equal(c.err, SBX_MAX_STDERR_BYTES);
    assert_true(res.stdout_truncated);
    assert_true(res.stderr_truncated);
    assert_false(sbx_guest_is_closed(fx->guest));
    sbx_frame_free(req);
    g_object_unref(r);
}

static void
test_wrong_frame_type_closes(void **state)
{
    Fixture *fx = *state;
    GAsyncResult *r = NULL;
    g_autoptr(GError) error = NULL;
    SbxFrame *req;

    peer_send(&fx->peer, hello_header(SBX_PROTOCOL_VERSION), NULL, 0);
    assert_true(hello(fx, NULL));
    sbx_guest_ping_async(fx->guest, NULL, sbx_test_store_result, &r);
    req = peer_recv(&fx->peer);
    assert_string_equal(req->type, "ping");
    peer_send(&fx->peer, sbx_frame_header_new("file_chunk", req->id), "x", 1);
    assert_false(sbx_guest_ping_finish(fx->guest, sbx_test_wait_result(&r), &error));
    assert_true(g_error_matches(error, SBX_GUEST_ERROR, SBX_GUEST_ERROR_DISCONNECTED));
    assert_true(sbx_guest_is_closed(fx->guest));
    sbx_frame_free(req);
    g_object_unref(r);
}

static void
test_agent_error_maps(void **state)
{
    Fixture *fx = *state;
    GAsyncResult *r = NULL;
    g_autoptr(GError) error = NULL;
    g_autoptr(GOutputStream) out = g_memory_output_stream_new_resizable();
    SbxFrame *req;
    JsonObject *h;

    peer_send(&fx->peer, hello_header(SBX_PROTOCOL_VERSION), NULL, 0);
    assert_true(hello(fx, NULL));
    sbx_guest_read_file_async(fx->guest, "a/b.txt", out, NULL, sbx_test_store_result, &r);
    req = peer_recv(&fx->peer);
    assert_string_equal(req->type, "read_file");
    assert_string_equal(sbx_frame_get_string(req, "path", ""), "a/b.txt");
    assert_true(sbx_frame_get_int(req, "window", 0) > 0);
    h = sbx_frame_header_new("error", req->id);
    json_object_set_string_member(h, "code", "not_found");
    json_object_set_string_member(h, "message", "no such file");
    peer_send(&fx->peer, h, NULL, 0);
    assert_false(sbx_guest_read_file_finish(fx->guest, sbx_test_wait_result(&r), NULL, &error));
    assert_true(g_error_matches(error, SBX_GUEST_ERROR, SBX_GUEST_ERROR_NOT_FOUND));
    assert_string_equal(error->message, "no such file");
    assert_false(sbx_guest_is_closed(fx->guest));
    sbx_frame_free(req);
    g_object_unref(r);
}

static void
test_input_validated_before_sending(void **state)
{
    Fixture *fx = *state;
    GAsyncResult *r = NULL;
    g_autoptr(GError) error = NULL;
    g_autoptr(GInputStream) in = g_memory_input_stream_new();

    sbx_guest_write_file_async(fx->guest, "../../etc/shadow", in, 0644, NULL, sbx_test_store_result, &r);
    assert_false(sbx_guest_write_file_finish(fx->guest, sbx_test_wait_result(&r), NULL, &error));
    assert_true(g_error_matches(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_PATH));
    g_object_unref(r);
    /* Nothing but the greeting went out. */
    while (g_main_context_iteration(NULL, FALSE))
        ;
    for (GList *l = fx->peer.frames.head; l; l = l->next)
        assert_string_equal(((SbxFrame *)l->data)->type, "hello");
}

static void
test_stalled_upload_fails_on_close(void **state)
{
    Fixture *fx = *state;
    GAsyncResult *r = NULL;
    g_autoptr(GError) error = NULL;
    int p[2];
    SbxFrame *req;

    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    g_autoptr(GInputStream) in = g_unix_input_stream_new(p[0], TRUE);
    peer_send(&fx->peer, hello_header(SBX_PROTOCOL_VERSION), NULL, 0);
    assert_true(hello(fx, NULL));
    /* The source never delivers a byte; the agent goes away meanwhile. */
    sbx_guest_write_file_async(fx->guest, "stalled.bin", in, 0644, NULL, sbx_test_store_result, &r);
    req = peer_recv(&fx->peer);
    assert_string_equal(req->type, "write_file");
    sbx_frame_free(req);
    g_clear_handle_id(&fx->peer.watch, g_source_remove);
    shutdown(fx->peer.fd, SHUT_RDWR);
    assert_false(sbx_guest_write_file_finish(fx->guest, sbx_test_wait_result(&r), NULL, &error));
    assert_true(g_error_matches(error, SBX_GUEST_ERROR, SBX_GUEST_ERROR_DISCONNECTED));
    close(p[1]);
    g_object_unref(r);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_client_greets_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hello_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hello_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_protocol, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_frame_fails_pending_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_output_caps_enforced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_frame_type_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_agent_error_maps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_input_validated_before_sending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stalled_upload_fails_on_close, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
