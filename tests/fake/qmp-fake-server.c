/* SPDX-License-Identifier: MIT
 *
 * Fake QMP server (see qmp-fake-server.h). Deliberately independent of the
 * code under test: its own line splitting (GString + memchr), json-glib for
 * parsing, non-blocking GSocket I/O driven by GSources in the test's main
 * context, so the client and the fake interleave without threads or sleeps.
 */
#include <string.h>
#include <unistd.h>
#include <gio/gunixfdmessage.h>

#include "tests/fake/qmp-fake-server.h"

typedef struct {
    char *execute;
    char *reply; /* NULL: hold */
} Step;

struct _QmpFake {
    GSocket *socket;
    GSource *in_source;
    GSource *out_source;
    GString *in;
    GByteArray *out;
    GQueue script;       /* Step */
    GPtrArray *received; /* JsonObject */
    GQueue fds;          /* GINT_TO_POINTER(fd) */
    char *failure;
    gboolean eof;
};

static void
step_free(Step *s)
{
    g_free(s->execute);
    g_free(s->reply);
    g_free(s);
}

static void set_failure(QmpFake *self, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void
set_failure(QmpFake *self, const char *fmt, ...)
{
    va_list ap;
    if (self->failure)
        return;
    va_start(ap, fmt);
    self->failure = g_strdup_vprintf(fmt, ap);
    va_end(ap);
}

static gboolean out_cb(GSocket *socket, GIOCondition cond, gpointer data);

static void
flush(QmpFake *self)
{
    while (self->out->len > 0 && self->socket) {
        g_autoptr(GError) error = NULL;
        gssize n = g_socket_send(self->socket, (const char *)self->out->data, self->out->len, NULL,
                                 &error);
        if (n < 0) {
            if (!g_error_matches(error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
                g_byte_array_set_size(self->out, 0); /* peer gone */
            break;
        }
        g_byte_array_remove_range(self->out, 0, (guint)n);
    }
    if (self->out->len > 0 && self->out_source == NULL && self->socket) {
        self->out_source = g_socket_create_source(self->socket, G_IO_OUT, NULL);
        g_source_set_callback(self->out_source, (GSourceFunc)(void (*)(void))out_cb, self, NULL);
        g_source_attach(self->out_source, g_main_context_get_thread_default());
    }
}

static gboolean
out_cb(GSocket *socket, GIOCondition cond, gpointer data)
{
    QmpFake *self = data;
    flush(self);
    if (self->out->len > 0)
        return G_SOURCE_CONTINUE;
    g_source_unref(self->out_source);
    self->out_source = NULL;
    return G_SOURCE_REMOVE;
}

void
qmp_fake_send_len(QmpFake *self, const void *data, gsize len)
{
    g_byte_array_append(self->out, data, (guint)len);
    if (self->out_source == NULL)
        flush(self);
}

void
qmp_fake_send(QmpFake *self, const char *text)
{
    qmp_fake_send_len(self, text, strlen(text));
}

void
qmp_fake_send_greeting(QmpFake *self)
{
    qmp_fake_send(self,
                  "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, "
                  "\"package\": \"fake\"}, \"capabilities\": [\"oob\"]}}\r\n");
}

void
qmp_fake_handshake(QmpFake *self)
{
    qmp_fake_send_greeting(self);
    qmp_fake_expect(self, "qmp_capabilities", "{\"return\": {}}");
}

void
qmp_fake_expect(QmpFake *self, const char *execute, const char *reply_json)
{
    Step *s = g_new0(Step, 1);
    s->execute = g_strdup(execute);
    s->reply = g_strdup(reply_json);
    g_queue_push_tail(&self->script, s);
}

void
qmp_fake_reply(QmpFake *self, guint index, const char *reply_json)
{
    g_autoptr(JsonNode) node = NULL;
    g_autoptr(GError) error = NULL;
    JsonObject *cmd;

    g_assert_cmpuint(index, <, self->received->len);
    cmd = g_ptr_array_index(self->received, index);
    node = json_from_string(reply_json, &error);
    g_assert_no_error(error);
    g_assert_true(JSON_NODE_HOLDS_OBJECT(node));
    if (json_object_has_member(cmd, "id"))
        json_object_set_member(json_node_get_object(node), "id", json_object_dup_member(cmd, "id"));
    g_autofree char *text = json_to_string(node, FALSE);
    qmp_fake_send(self, text);
    qmp_fake_send(self, "\r\n");
}

static void
handle_line(QmpFake *self, const char *line)
{
    g_autoptr(GError) error = NULL;
    g_autoptr(JsonNode) node = json_from_string(line, &error);
    JsonObject *cmd;
    const char *execute;

    if (node == NULL || !JSON_NODE_HOLDS_OBJECT(node)) {
        set_failure(self, "client sent invalid JSON: %s", line);
        return;
    }
    cmd = json_node_get_object(node);
    g_ptr_array_add(self->received, json_object_ref(cmd));
    execute = json_object_get_string_member_with_default(cmd, "execute", "");
    Step *s = g_queue_pop_head(&self->script);
    if (s == NULL) {
        set_failure(self, "unexpected command %s", execute);
        return;
    }
    if (!g_str_equal(s->execute, execute))
        set_failure(self, "expected %s, got %s", s->execute, execute);
    else if (s->reply)
        qmp_fake_reply(self, self->received->len - 1, s->reply);
    step_free(s);
}

static gboolean
in_cb(GSocket *socket, GIOCondition cond, gpointer data)
{
    QmpFake *self = data;
    char buf[65536];
    GInputVector vec = {buf, sizeof buf};
    GSocketControlMessage **msgs = NULL;
    int n_msgs = 0;
    g_autoptr(GError) error = NULL;
    gssize n = g_socket_receive_message(socket, NULL, &vec, 1, &msgs, &n_msgs, NULL, NULL, &error);

    for (int i = 0; i < n_msgs; i++) {
        if (G_IS_UNIX_FD_MESSAGE(msgs[i])) {
            int count = 0;
            g_autofree int *fds = g_unix_fd_message_steal_fds(G_UNIX_FD_MESSAGE(msgs[i]), &count);
            for (int k = 0; k < count; k++)
                g_queue_push_tail(&self->fds, GINT_TO_POINTER(fds[k]));
        }
        g_object_unref(msgs[i]);
    }
    g_free(msgs);
    if (n < 0 && g_error_matches(error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
        return G_SOURCE_CONTINUE;
    if (n <= 0) {
        self->eof = TRUE;
        g_source_unref(self->in_source);
        self->in_source = NULL;
        return G_SOURCE_REMOVE;
    }
    g_string_append_len(self->in, buf, n);
    char *nl;
    while ((nl = memchr(self->in->str, '\n', self->in->len)) != NULL) {
        g_autofree char *line = g_strndup(self->in->str, (gsize)(nl - self->in->str));
        g_string_erase(self->in, 0, nl - self->in->str + 1);
        handle_line(self, line);
    }
    return G_SOURCE_CONTINUE;
}

QmpFake *
qmp_fake_new(int fd)
{
    g_autoptr(GError) error = NULL;
    QmpFake *self = g_new0(QmpFake, 1);

    self->socket = g_socket_new_from_fd(fd, &error);
    g_assert_no_error(error);
    g_socket_set_blocking(self->socket, FALSE);
    self->in = g_string_new(NULL);
    self->out = g_byte_array_new();
    self->received = g_ptr_array_new_with_free_func((GDestroyNotify)json_object_unref);
    g_queue_init(&self->script);
    g_queue_init(&self->fds);
    self->in_source = g_socket_create_source(self->socket, G_IO_IN | G_IO_HUP | G_IO_ERR, NULL);
    g_source_set_callback(self->in_source, (GSourceFunc)(void (*)(void))in_cb, self, NULL);
    g_source_attach(self->in_source, g_main_context_get_thread_default());
    return self;
}

void
qmp_fake_hangup(QmpFake *self)
{
    if (self->in_source) {
        g_source_destroy(self->in_source);
        g_clear_pointer(&self->in_source, g_source_unref);
    }
    if (self->out_source) {
        g_source_destroy(self->out_source);
        g_clear_pointer(&self->out_source, g_source_unref);
    }
    if (self->socket) {
        (void)g_socket_close(self->socket, NULL);
        g_clear_object(&self->socket);
    }
    g_byte_array_set_size(self->out, 0);
}

void
qmp_fake_free(QmpFake *self)
{
    if (self == NULL)
        return;
    qmp_fake_hangup(self);
    g_string_free(self->in, TRUE);
    g_byte_array_unref(self->out);
    g_queue_clear_full(&self->script, (GDestroyNotify)step_free);
    g_ptr_array_unref(self->received);
    int fd;
    while ((fd = qmp_fake_steal_fd(self)) >= 0)
        (void)close(fd);
    g_free(self->failure);
    g_free(self);
}

guint
qmp_fake_get_n_received(QmpFake *self)
{
    return self->received->len;
}

JsonObject *
qmp_fake_peek_received(QmpFake *self, guint index)
{
    g_assert_cmpuint(index, <, self->received->len);
    return g_ptr_array_index(self->received, index);
}

int
qmp_fake_steal_fd(QmpFake *self)
{
    if (g_queue_is_empty(&self->fds))
        return -1;
    return GPOINTER_TO_INT(g_queue_pop_head(&self->fds));
}

const char *
qmp_fake_get_failure(QmpFake *self)
{
    return self->failure;
}

gboolean
qmp_fake_saw_eof(QmpFake *self)
{
    return self->eof;
}
