/* SPDX-License-Identifier: MIT
 *
 * QmpClient: transport and routing of the QMP client. Reads go straight into
 * the QmpParser's buffer (qmp-parser.c) from a non-blocking GSocket; every
 * complete message is classified and routed: the greeting drives the state
 * machine, replies complete their GTask by id, events become the detailed
 * "event" signal. Writes are queued in one output buffer and sent at once
 * when the socket allows (no extra main-loop turn); a command that passes an
 * fd goes out with SCM_RIGHTS in the same sendmsg() as its first byte.
 * Used by qmp-commands.c and, through it, by qsd/ and scheduler/.
 */
#include <gio/gunixfdmessage.h>

#include "qmp/qmp-client.h"
#include "qmp/qmp-parser.h"

#define READ_CHUNK       ((gsize)64 * 1024)
#define READS_PER_WAKEUP 8

typedef struct {
    guint64 id;
    char *command;
    GTask *task; /* NULL once abandoned (timed out / cancelled): the reply is swallowed */
    GSource *timeout_source;
    GSource *cancel_source;
} Pending;

typedef struct {
    gsize pos; /* offset in the output buffer of the command's first byte */
    GUnixFDList *fds;
} FdMark;

struct _QmpClient {
    GObject parent_instance;

    GMainContext *context;
    GSocketConnection *connection;
    GSocket *socket;
    QmpClientState state;
    GSource *in_source;
    GSource *out_source;
    QmpParser *parser;

    GString *out;   /* bytes waiting to be sent */
    gsize out_pos;  /* bytes of @out already sent */
    GQueue out_fds; /* FdMark, ordered by pos */
    JsonGenerator *generator;

    GHashTable *pending; /* guint64 id -> Pending */
    guint64 next_id;
    guint max_pending;
    guint default_timeout_ms;

    GTask *connect_task;
    GSource *connect_timeout;
    GSource *connect_cancel;
    guint64 negotiate_id;

    gboolean disposing; /* no "closed" from dispose: the handlers' owners may be going too */
    gboolean have_version;
    QmpVersion version;
    char *package;
};

G_DEFINE_FINAL_TYPE(QmpClient, qmp_client, G_TYPE_OBJECT)

enum { SIGNAL_EVENT, SIGNAL_CLOSED, N_SIGNALS };
static guint signals[N_SIGNALS];

static void close_with_error(QmpClient *self, GError *reason);
static gboolean flush_output(QmpClient *self, gboolean from_source);

static gboolean
debug_enabled(void)
{
    return !g_log_writer_default_would_drop(G_LOG_LEVEL_DEBUG, G_LOG_DOMAIN);
}

/* ---- pending commands ---- */

static void
source_clear(GSource **source)
{
    if (*source) {
        g_source_destroy(*source);
        g_source_unref(*source);
        *source = NULL;
    }
}

static void
pending_free(Pending *p)
{
    source_clear(&p->timeout_source);
    source_clear(&p->cancel_source);
    g_clear_object(&p->task);
    g_free(p->command);
    g_free(p);
}

/* Fail the caller's task now; keep the entry so that the late reply is swallowed. */
static void
pending_abandon(Pending *p, GError *error)
{
    GTask *task = g_steal_pointer(&p->task);

    source_clear(&p->timeout_source);
    source_clear(&p->cancel_source);
    if (task) {
        g_task_return_error(task, error);
        g_object_unref(task);
    } else {
        g_error_free(error);
    }
}

static gboolean
pending_timeout_cb(gpointer data)
{
    Pending *p = data;
    g_debug("%s (id %" G_GUINT64_FORMAT ") timed out", p->command, p->id);
    pending_abandon(
        p, g_error_new(QMP_ERROR, QMP_ERROR_TIMEOUT, "%s: no reply from QEMU in time", p->command));
    return G_SOURCE_REMOVE;
}

static gboolean
pending_cancel_cb(GCancellable *cancellable, gpointer data)
{
    Pending *p = data;
    g_debug("%s (id %" G_GUINT64_FORMAT ") cancelled", p->command, p->id);
    pending_abandon(p, g_error_new(G_IO_ERROR, G_IO_ERROR_CANCELLED, "%s: cancelled", p->command));
    return G_SOURCE_REMOVE;
}

static GSource *
attach(QmpClient *self, GSource *source, GSourceFunc func, gpointer data)
{
    g_source_set_callback(source, func, data, NULL);
    g_source_attach(source, self->context);
    return source;
}

/* ---- output ---- */

static void
fd_mark_free(FdMark *m)
{
    g_clear_object(&m->fds);
    g_free(m);
}

static gboolean
out_ready_cb(GSocket *socket, GIOCondition condition, gpointer data)
{
    QmpClient *self = data;
    g_autoptr(QmpClient) ref = g_object_ref(self);

    flush_output(self, TRUE);
    return G_SOURCE_CONTINUE; /* flush_output removes the source when done */
}

/* Send as much as the socket takes. Returns FALSE if the connection broke
 * (closed now when @from_source, else from the out source next turn). */
static gboolean
flush_output(QmpClient *self, gboolean from_source)
{
    while (self->out_pos < self->out->len) {
        FdMark *mark = g_queue_peek_head(&self->out_fds);
        gsize end = self->out->len;
        GOutputVector vec;
        gssize n;
        g_autoptr(GError) error = NULL;
        gboolean with_fd = mark != NULL && mark->pos == self->out_pos;

        if (mark != NULL && !with_fd)
            end = mark->pos;
        else if (with_fd && mark != NULL && self->out_fds.length > 1)
            end = ((FdMark *)g_queue_peek_nth(&self->out_fds, 1))->pos;
        vec.buffer = self->out->str + self->out_pos;
        vec.size = end - self->out_pos;
        if (with_fd) {
            g_autoptr(GSocketControlMessage) msg = g_unix_fd_message_new_with_fd_list(mark->fds);
            n = g_socket_send_message(self->socket, NULL, &vec, 1, &msg, 1, G_SOCKET_MSG_NONE, NULL,
                                      &error);
        } else {
            n = g_socket_send(self->socket, vec.buffer, vec.size, NULL, &error);
        }
        if (n < 0) {
            if (g_error_matches(error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
                break;
            if (!from_source)
                break; /* the out source reports it from a clean stack */
            close_with_error(self, g_error_new(QMP_ERROR, QMP_ERROR_DISCONNECTED,
                                               "QMP write failed: %s", error->message));
            return FALSE;
        }
        if (with_fd)
            fd_mark_free(g_queue_pop_head(&self->out_fds));
        self->out_pos += (gsize)n;
    }
    if (self->out_pos == self->out->len) {
        g_string_truncate(self->out, 0);
        self->out_pos = 0;
        source_clear(&self->out_source);
        return TRUE;
    }
    if (self->out_source == NULL) {
        self->out_source =
            g_socket_create_source(self->socket, G_IO_OUT | G_IO_ERR | G_IO_HUP, NULL);
        attach(self, self->out_source, (GSourceFunc)(void (*)(void))out_ready_cb, self);
    }
    return TRUE;
}

/* Queue {"execute": command, "arguments": args, "id": id} + "\n". */
static void
queue_command(QmpClient *self, const char *command, JsonObject *arguments, guint64 id,
              GUnixFDList *fds)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(JsonNode) root = NULL;

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "execute");
    json_builder_add_string_value(b, command);
    if (arguments != NULL) {
        JsonNode *args = json_node_alloc();
        json_node_init_object(args, arguments);
        json_builder_set_member_name(b, "arguments");
        json_builder_add_value(b, args);
    }
    json_builder_set_member_name(b, "id");
    json_builder_add_int_value(b, (gint64)id);
    json_builder_end_object(b);
    root = json_builder_get_root(b);

    if (fds != NULL) {
        FdMark *m = g_new0(FdMark, 1);
        m->pos = self->out->len;
        m->fds = g_object_ref(fds);
        g_queue_push_tail(&self->out_fds, m);
    }
    json_generator_set_root(self->generator, root);
    json_generator_to_gstring(self->generator, self->out);
    json_generator_set_root(self->generator, NULL);
    g_string_append_c(self->out, '\n');
    if (debug_enabled())
        g_debug("-> %s (id %" G_GUINT64_FORMAT "%s)", command, id, fds ? ", with fd" : "");
}

/* ---- closing ---- */

static void
close_with_error(QmpClient *self, GError *reason)
{
    g_autoptr(GError) owned_reason = reason;
    g_autoptr(QmpClient) ref = NULL;
    g_autoptr(GPtrArray) failed = NULL;
    GHashTableIter iter;
    gpointer value;

    if (self->state == QMP_CLIENT_STATE_CLOSED)
        return;
    ref = g_object_ref(self);
    self->state = QMP_CLIENT_STATE_CLOSED;
    g_debug("closing: %s", reason ? reason->message : "closed by the caller");

    source_clear(&self->in_source);
    source_clear(&self->out_source);
    (void)g_socket_close(self->socket, NULL);
    g_string_truncate(self->out, 0);
    self->out_pos = 0;
    g_queue_clear_full(&self->out_fds, (GDestroyNotify)fd_mark_free);

    if (self->connect_task) {
        GTask *task = g_steal_pointer(&self->connect_task);
        source_clear(&self->connect_timeout);
        source_clear(&self->connect_cancel);
        if (reason)
            g_task_return_error(task, g_error_copy(reason));
        else
            g_task_return_new_error(task, QMP_ERROR, QMP_ERROR_DISCONNECTED,
                                    "QMP connection closed during the handshake");
        g_object_unref(task);
    }

    /* Detach the table first: a task callback may call back into the client. */
    failed = g_ptr_array_new_with_free_func((GDestroyNotify)pending_free);
    g_hash_table_iter_init(&iter, self->pending);
    while (g_hash_table_iter_next(&iter, NULL, &value)) {
        g_ptr_array_add(failed, value);
        g_hash_table_iter_steal(&iter);
    }
    for (guint i = 0; i < failed->len; i++) {
        Pending *p = g_ptr_array_index(failed, i);
        if (p->task)
            pending_abandon(p, g_error_new(QMP_ERROR, QMP_ERROR_DISCONNECTED,
                                           "%s: QMP connection closed%s%s", p->command,
                                           reason ? ": " : "", reason ? reason->message : ""));
    }
    if (!self->disposing)
        g_signal_emit(self, signals[SIGNAL_CLOSED], 0, reason);
}

void
qmp_client_close(QmpClient *self)
{
    g_return_if_fail(QMP_IS_CLIENT(self));
    close_with_error(self, NULL);
}

/* ---- input and routing ---- */

static gboolean
parse_greeting(QmpClient *self, JsonObject *msg, GError **error)
{
    JsonObject *qmp = qmp_json_peek_object(msg, "QMP");
    JsonObject *version = qmp ? qmp_json_peek_object(qmp, "version") : NULL;
    JsonObject *qemu = version ? qmp_json_peek_object(version, "qemu") : NULL;
    QmpVersion v;

    if (qemu == NULL || !qmp_json_get_int(qemu, "major", &v.major) ||
        !qmp_json_get_int(qemu, "minor", &v.minor) || !qmp_json_get_int(qemu, "micro", &v.micro)) {
        g_set_error(error, QMP_ERROR, QMP_ERROR_PROTOCOL, "QMP greeting without a version");
        return FALSE;
    }
    self->version = v;
    self->have_version = TRUE;
    g_free(self->package);
    self->package = g_strdup(qmp_json_peek_string(version, "package"));
    return TRUE;
}

static void
route_event(QmpClient *self, JsonObject *msg)
{
    const char *name = qmp_json_peek_string(msg, "event");
    JsonObject *data = qmp_json_peek_object(msg, "data");
    g_autoptr(JsonObject) empty = NULL;
    GQuark detail = g_quark_try_string(name); /* never intern peer-chosen strings */

    if (data == NULL)
        data = empty = json_object_new();
    if (debug_enabled())
        g_debug("<- event %s", name);
    g_signal_emit(self, signals[SIGNAL_EVENT], detail, name, data, qmp_message_get_timestamp(msg));
}

static void
route_reply(QmpClient *self, JsonObject *msg, QmpMessageKind kind, guint64 id)
{
    Pending *p = NULL;

    if (!g_hash_table_steal_extended(self->pending, &id, NULL, (gpointer *)&p)) {
        close_with_error(self, g_error_new(QMP_ERROR, QMP_ERROR_PROTOCOL,
                                           "QMP reply with unknown id %" G_GUINT64_FORMAT, id));
        return;
    }
    if (debug_enabled())
        g_debug("<- %s %s (id %" G_GUINT64_FORMAT "%s)", p->command,
                kind == QMP_MESSAGE_RETURN ? "return" : "error", id,
                p->task ? "" : ", late: dropped");
    if (p->task) {
        GTask *task = g_steal_pointer(&p->task);
        source_clear(&p->timeout_source);
        source_clear(&p->cancel_source);
        if (kind == QMP_MESSAGE_RETURN)
            g_task_return_pointer(task, json_object_dup_member(msg, "return"),
                                  (GDestroyNotify)json_node_unref);
        else
            g_task_return_error(
                task, qmp_error_new_from_reply(qmp_json_peek_object(msg, "error"), p->command));
        g_object_unref(task);
    }
    pending_free(p);
}

static void
negotiated(QmpClient *self, JsonObject *msg, QmpMessageKind kind)
{
    if (kind == QMP_MESSAGE_ERROR) {
        close_with_error(
            self, qmp_error_new_from_reply(qmp_json_peek_object(msg, "error"), "qmp_capabilities"));
        return;
    }
    self->state = QMP_CLIENT_STATE_RUNNING;
    g_debug("QMP running (QEMU %" G_GINT64_FORMAT ".%" G_GINT64_FORMAT ".%" G_GINT64_FORMAT ")",
            self->version.major, self->version.minor, self->version.micro);
    if (self->connect_task) {
        GTask *task = g_steal_pointer(&self->connect_task);
        source_clear(&self->connect_timeout);
        source_clear(&self->connect_cancel);
        g_task_return_boolean(task, TRUE);
        g_object_unref(task);
    }
}

static void
route_message(QmpClient *self, JsonObject *msg)
{
    QmpMessageKind kind;
    gint64 id = -1;
    GError *error = NULL;

    if (!qmp_message_classify(msg, &kind, &id, &error)) {
        close_with_error(self, error);
        return;
    }
    switch (self->state) {
    case QMP_CLIENT_STATE_GREETING:
        if (kind != QMP_MESSAGE_GREETING) {
            close_with_error(
                self, g_error_new(QMP_ERROR, QMP_ERROR_PROTOCOL, "expected the QMP greeting"));
            return;
        }
        if (!parse_greeting(self, msg, &error)) {
            close_with_error(self, error);
            return;
        }
        self->state = QMP_CLIENT_STATE_NEGOTIATING;
        self->negotiate_id = self->next_id++;
        queue_command(self, "qmp_capabilities", NULL, self->negotiate_id, NULL);
        flush_output(self, FALSE);
        return;
    case QMP_CLIENT_STATE_NEGOTIATING:
        if (kind == QMP_MESSAGE_EVENT)
            return;
        if (kind == QMP_MESSAGE_GREETING || (guint64)id != self->negotiate_id) {
            close_with_error(self, g_error_new(QMP_ERROR, QMP_ERROR_PROTOCOL,
                                               "unexpected message during negotiation"));
            return;
        }
        negotiated(self, msg, kind);
        return;
    case QMP_CLIENT_STATE_RUNNING:
        if (kind == QMP_MESSAGE_EVENT)
            route_event(self, msg);
        else if (kind == QMP_MESSAGE_GREETING)
            close_with_error(self,
                             g_error_new(QMP_ERROR, QMP_ERROR_PROTOCOL, "second QMP greeting"));
        else
            route_reply(self, msg, kind, (guint64)id);
        return;
    case QMP_CLIENT_STATE_CLOSED:
        return;
    }
}

static void
process_input(QmpClient *self)
{
    while (self->state != QMP_CLIENT_STATE_CLOSED) {
        g_autoptr(JsonObject) msg = NULL;
        GError *error = NULL;

        if (!qmp_parser_next(self->parser, &msg, &error)) {
            if (error)
                close_with_error(self, error);
            return;
        }
        route_message(self, msg);
    }
}

static gboolean
in_ready_cb(GSocket *socket, GIOCondition condition, gpointer data)
{
    QmpClient *self = data;
    g_autoptr(QmpClient) ref = g_object_ref(self);

    for (int i = 0; i < READS_PER_WAKEUP && self->state != QMP_CLIENT_STATE_CLOSED; i++) {
        g_autoptr(GError) error = NULL;
        gsize avail;
        char *buf = qmp_parser_reserve(self->parser, READ_CHUNK, &avail);
        gssize n = g_socket_receive(self->socket, buf, avail, NULL, &error);

        if (n < 0) {
            if (g_error_matches(error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
                break;
            close_with_error(self, g_error_new(QMP_ERROR, QMP_ERROR_DISCONNECTED,
                                               "QMP read failed: %s", error->message));
            break;
        }
        if (n == 0) {
            close_with_error(self, g_error_new(QMP_ERROR, QMP_ERROR_DISCONNECTED,
                                               "QEMU closed the QMP connection"));
            break;
        }
        qmp_parser_commit(self->parser, (gsize)n);
        process_input(self);
        if ((gsize)n < avail)
            break;
    }
    return self->state == QMP_CLIENT_STATE_CLOSED ? G_SOURCE_REMOVE : G_SOURCE_CONTINUE;
}

/* ---- public API ---- */

QmpClient *
qmp_client_new(GSocketConnection *connection)
{
    g_return_val_if_fail(G_IS_SOCKET_CONNECTION(connection), NULL);
    QmpClient *self = g_object_new(QMP_TYPE_CLIENT, NULL);
    self->connection = g_object_ref(connection);
    self->socket = g_object_ref(g_socket_connection_get_socket(connection));
    g_socket_set_blocking(self->socket, FALSE);
    return self;
}

QmpClient *
qmp_client_new_for_fd(int fd, GError **error)
{
    g_autoptr(GSocket) socket = g_socket_new_from_fd(fd, error);
    g_autoptr(GSocketConnection) conn = NULL;

    if (socket == NULL) { /* GSocket has closed @fd already */
        g_prefix_error(error, "QMP socket: ");
        return NULL;
    }
    conn = g_socket_connection_factory_create_connection(socket);
    return qmp_client_new(conn);
}

void
qmp_client_set_default_timeout(QmpClient *self, guint timeout_ms)
{
    g_return_if_fail(QMP_IS_CLIENT(self));
    self->default_timeout_ms = timeout_ms;
}

guint
qmp_client_get_default_timeout(QmpClient *self)
{
    g_return_val_if_fail(QMP_IS_CLIENT(self), 0);
    return self->default_timeout_ms;
}

void
qmp_client_set_max_pending(QmpClient *self, guint max_pending)
{
    g_return_if_fail(QMP_IS_CLIENT(self));
    self->max_pending = MAX(max_pending, 1);
}

guint
qmp_client_get_n_pending(QmpClient *self)
{
    g_return_val_if_fail(QMP_IS_CLIENT(self), 0);
    return g_hash_table_size(self->pending);
}

QmpClientState
qmp_client_get_state(QmpClient *self)
{
    g_return_val_if_fail(QMP_IS_CLIENT(self), QMP_CLIENT_STATE_CLOSED);
    return self->state;
}

const QmpVersion *
qmp_client_get_version(QmpClient *self)
{
    g_return_val_if_fail(QMP_IS_CLIENT(self), NULL);
    return self->have_version ? &self->version : NULL;
}

const char *
qmp_client_get_package(QmpClient *self)
{
    g_return_val_if_fail(QMP_IS_CLIENT(self), NULL);
    return self->package;
}

static guint
effective_timeout(QmpClient *self, int timeout_ms)
{
    return timeout_ms < 0 ? self->default_timeout_ms : (guint)timeout_ms;
}

static gboolean
connect_timeout_cb(gpointer data)
{
    QmpClient *self = data;
    close_with_error(self, g_error_new(QMP_ERROR, QMP_ERROR_TIMEOUT, "QMP handshake timed out"));
    return G_SOURCE_REMOVE;
}

static gboolean
connect_cancel_cb(GCancellable *cancellable, gpointer data)
{
    QmpClient *self = data;
    close_with_error(self,
                     g_error_new(G_IO_ERROR, G_IO_ERROR_CANCELLED, "QMP handshake cancelled"));
    return G_SOURCE_REMOVE;
}

void
qmp_client_connect_async(QmpClient *self, int timeout_ms, GCancellable *cancellable,
                         GAsyncReadyCallback callback, gpointer user_data)
{
    g_return_if_fail(QMP_IS_CLIENT(self));
    g_autoptr(GTask) task = g_task_new(self, cancellable, callback, user_data);
    guint timeout = effective_timeout(self, timeout_ms);

    g_task_set_source_tag(task, qmp_client_connect_async);
    if (self->state != QMP_CLIENT_STATE_GREETING || self->connect_task != NULL) {
        g_task_return_new_error(task, QMP_ERROR, QMP_ERROR_STATE,
                                "QMP connect called twice or after close");
        return;
    }
    if (g_task_return_error_if_cancelled(task))
        return;
    self->connect_task = g_steal_pointer(&task);
    if (timeout > 0)
        self->connect_timeout =
            attach(self, g_timeout_source_new(timeout), connect_timeout_cb, self);
    if (cancellable)
        self->connect_cancel = attach(self, g_cancellable_source_new(cancellable),
                                      (GSourceFunc)(void (*)(void))connect_cancel_cb, self);
    self->in_source = g_socket_create_source(self->socket, G_IO_IN | G_IO_ERR | G_IO_HUP, NULL);
    attach(self, self->in_source, (GSourceFunc)(void (*)(void))in_ready_cb, self);
}

gboolean
qmp_client_connect_finish(QmpClient *self, GAsyncResult *result, QmpVersion *out_version,
                          GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    if (!g_task_propagate_boolean(G_TASK(result), error))
        return FALSE;
    if (out_version)
        *out_version = self->version;
    return TRUE;
}

void
qmp_client_execute_with_fd_async(QmpClient *self, const char *command, JsonObject *arguments,
                                 int fd, int timeout_ms, GCancellable *cancellable,
                                 GAsyncReadyCallback callback, gpointer user_data)
{
    g_return_if_fail(QMP_IS_CLIENT(self));
    g_return_if_fail(command != NULL);
    g_autoptr(GTask) task = g_task_new(self, cancellable, callback, user_data);
    g_autoptr(GUnixFDList) fds = NULL;
    g_autoptr(GError) error = NULL;
    guint timeout = effective_timeout(self, timeout_ms);
    Pending *p;

    g_task_set_source_tag(task, qmp_client_execute_async);
    if (self->state != QMP_CLIENT_STATE_RUNNING) {
        g_task_return_new_error(task, QMP_ERROR,
                                self->state == QMP_CLIENT_STATE_CLOSED ? QMP_ERROR_DISCONNECTED
                                                                       : QMP_ERROR_STATE,
                                "%s: QMP connection is %s", command,
                                self->state == QMP_CLIENT_STATE_CLOSED ? "closed" : "not ready");
        return;
    }
    if (g_hash_table_size(self->pending) >= self->max_pending) {
        g_task_return_new_error(task, QMP_ERROR, QMP_ERROR_BUSY,
                                "%s: %u QMP commands already pending", command, self->max_pending);
        return;
    }
    if (g_task_return_error_if_cancelled(task))
        return;
    if (fd >= 0) {
        if (g_socket_get_family(self->socket) != G_SOCKET_FAMILY_UNIX) {
            g_task_return_new_error(task, QMP_ERROR, QMP_ERROR_FAILED,
                                    "%s: fd passing needs a UNIX socket", command);
            return;
        }
        fds = g_unix_fd_list_new();
        if (g_unix_fd_list_append(fds, fd, &error) < 0) {
            g_task_return_new_error(task, QMP_ERROR, QMP_ERROR_FAILED, "%s: %s", command,
                                    error->message);
            return;
        }
    }

    p = g_new0(Pending, 1);
    p->id = self->next_id++;
    p->command = g_strdup(command);
    p->task = g_steal_pointer(&task);
    if (timeout > 0)
        p->timeout_source = attach(self, g_timeout_source_new(timeout), pending_timeout_cb, p);
    if (cancellable)
        p->cancel_source = attach(self, g_cancellable_source_new(cancellable),
                                  (GSourceFunc)(void (*)(void))pending_cancel_cb, p);
    g_hash_table_insert(self->pending, &p->id, p);
    queue_command(self, command, arguments, p->id, fds);
    flush_output(self, FALSE);
}

void
qmp_client_execute_async(QmpClient *self, const char *command, JsonObject *arguments,
                         int timeout_ms, GCancellable *cancellable, GAsyncReadyCallback callback,
                         gpointer user_data)
{
    qmp_client_execute_with_fd_async(self, command, arguments, -1, timeout_ms, cancellable,
                                     callback, user_data);
}

JsonNode *
qmp_client_execute_finish(QmpClient *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), NULL);
    return g_task_propagate_pointer(G_TASK(result), error);
}

/* ---- GObject ---- */

static void
qmp_client_dispose(GObject *object)
{
    QmpClient *self = QMP_CLIENT(object);

    /* Nothing can be pending here: every task holds a reference to us. */
    self->disposing = TRUE;
    if (self->socket != NULL)
        close_with_error(self, NULL);
    G_OBJECT_CLASS(qmp_client_parent_class)->dispose(object);
}

static void
qmp_client_finalize(GObject *object)
{
    QmpClient *self = QMP_CLIENT(object);

    g_hash_table_unref(self->pending);
    g_queue_clear_full(&self->out_fds, (GDestroyNotify)fd_mark_free);
    g_string_free(self->out, TRUE);
    g_clear_object(&self->generator);
    qmp_parser_free(self->parser);
    g_clear_object(&self->socket);
    g_clear_object(&self->connection);
    g_main_context_unref(self->context);
    g_free(self->package);
    G_OBJECT_CLASS(qmp_client_parent_class)->finalize(object);
}

static void
qmp_client_init(QmpClient *self)
{
    self->context = g_main_context_ref_thread_default();
    self->parser = qmp_parser_new(QMP_PARSER_DEFAULT_MAX_LINE);
    self->out = g_string_sized_new(4096);
    g_queue_init(&self->out_fds);
    self->generator = json_generator_new();
    self->pending =
        g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, (GDestroyNotify)pending_free);
    self->next_id = 1;
    self->max_pending = QMP_CLIENT_DEFAULT_MAX_PENDING;
    self->default_timeout_ms = QMP_CLIENT_DEFAULT_TIMEOUT_MS;
}

static void
qmp_client_class_init(QmpClientClass *klass)
{
    GObjectClass *oc = G_OBJECT_CLASS(klass);

    oc->dispose = qmp_client_dispose;
    oc->finalize = qmp_client_finalize;

    signals[SIGNAL_EVENT] =
        g_signal_new("event", G_TYPE_FROM_CLASS(klass), G_SIGNAL_RUN_LAST | G_SIGNAL_DETAILED, 0,
                     NULL, NULL, NULL, G_TYPE_NONE, 3, G_TYPE_STRING | G_SIGNAL_TYPE_STATIC_SCOPE,
                     JSON_TYPE_OBJECT | G_SIGNAL_TYPE_STATIC_SCOPE, G_TYPE_INT64);
    signals[SIGNAL_CLOSED] =
        g_signal_new("closed", G_TYPE_FROM_CLASS(klass), G_SIGNAL_RUN_LAST, 0, NULL, NULL, NULL,
                     G_TYPE_NONE, 1, G_TYPE_ERROR | G_SIGNAL_TYPE_STATIC_SCOPE);
}
