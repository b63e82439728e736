/* SPDX-License-Identifier: MIT
 *
 * SbxGuest: host client of the guest agent (protocol in docs/guest-protocol.md,
 * codec in common/sbx-frame.c). Owns the host end of the agent channel (a
 * socketpair end whose peer QEMU serves as a virtio-serial port), reads it
 * with a non-blocking fd watch, routes frames to pending requests by id and
 * writes from one bounded output queue. File uploads are pulled from a
 * GInputStream only while the queue is short; downloads use the protocol's
 * credit window (acks after each chunk reaches the destination stream), so
 * neither direction buffers a whole file. Used by the VM lifecycle / manager.
 */
#define G_LOG_DOMAIN "sbx-guest"
#include "scheduler/sbx-guest.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <glib-unix.h>

#include "common/sbx-fd.h"
#include "common/sbx-frame.h"

#define MAX_PENDING 64
#define OUTQ_HIGH (1024 * 1024)
#define READ_WINDOW (4 * 1024 * 1024)
#define READ_BUF (64 * 1024)

G_DEFINE_QUARK(sbx-guest-error-quark, sbx_guest_error)

typedef enum {
    REQ_PING,
    REQ_RESEED,
    REQ_RECLAIM,
    REQ_WARM,
    REQ_EXEC,
    REQ_WRITE,
    REQ_READ,
    REQ_LIST,
} ReqKind;

typedef struct {
    SbxGuest *self; /* borrowed: the task holds the ref */
    gint64 id;
    ReqKind kind;
    GTask *task;
    gulong cancel_id;
    guint cancel_idle;
    /* exec (the guest is not trusted: the host enforces the output caps too) */
    guint64 out_total, err_total;
    gboolean out_trunc, err_trunc;
    SbxGuestOutputFunc output;
    gpointer output_data;
    GDestroyNotify output_destroy;
    /* write */
    GInputStream *src;
    gboolean src_busy;
    gboolean src_done;
    guint mode;
    /* read */
    GOutputStream *dest;
    GQueue chunks; /* GBytes waiting for dest */
    gboolean dest_busy;
    guint64 received;
    guint64 written;
    gboolean end_seen;
    gint64 end_size;
    GBytes *inflight;      /* chunk being written to dest */
    GCancellable *io_cancel; /* cancels the pending stream operation when the request fails */
    GError *deferred;      /* failure decided while a stream callback was pending */
    /* reseed */
    gboolean need_clock; /* fail unless the agent set the wall clock */
} Req;

typedef struct {
    GTask *task;
    GSource *timeout;
    GSource *cancel;
    guint timeout_ms;
} HelloWaiter;

struct _SbxGuest {
    GObject parent_instance;
    int fd;
    gboolean closed;
    guint in_watch;
    guint out_watch;
    SbxFrameDecoder *dec;
    GByteArray *outq;
    gsize outq_off;
    gint64 next_id;
    GHashTable *pending; /* gint64 id -> Req */
    GList *hello_waiters; /* HelloWaiter */
    gboolean hello;
    guint protocol;
    char *agent_version;
    gboolean languages[SBX_N_LANGUAGES];
};

G_DEFINE_TYPE(SbxGuest, sbx_guest, G_TYPE_OBJECT)

enum { SIGNAL_CLOSED, N_SIGNALS };
static guint signals[N_SIGNALS];

static void close_with_error(SbxGuest *self, GError *error);
static void write_pump(SbxGuest *self, Req *r);
static void read_pump(SbxGuest *self, Req *r);
static void hello_waiter_finish(SbxGuest *self, HelloWaiter *w, GError *error);

void
sbx_guest_file_info_free(SbxGuestFileInfo *info)
{
    if (!info)
        return;
    g_free(info->name);
    g_free(info);
}

/* ---- requests ----------------------------------------------------------- */

static void
req_free(Req *r)
{
    if (r->cancel_id) {
        GCancellable *c = g_task_get_cancellable(r->task);
        g_cancellable_disconnect(c, r->cancel_id);
    }
    g_clear_handle_id(&r->cancel_idle, g_source_remove);
    if (r->output_destroy)
        r->output_destroy(r->output_data);
    g_clear_object(&r->src);
    g_clear_object(&r->dest);
    g_queue_clear_full(&r->chunks, (GDestroyNotify)g_bytes_unref);
    g_clear_pointer(&r->inflight, g_bytes_unref);
    g_clear_object(&r->io_cancel);
    g_clear_error(&r->deferred);
    g_clear_object(&r->task);
    g_free(r);
}

/* Remove @r from the table and hand its task back to the caller. */
static GTask *
req_take(SbxGuest *self, Req *r)
{
    GTask *task = g_object_ref(r->task);
    g_hash_table_steal(self->pending, &r->id);
    req_free(r);
    return task;
}

/* Fail @r. While a stream callback holds @r (src_busy/dest_busy) the failure
 * is kept and delivered by that callback, so @r is never freed under it. */
static void
req_fail(SbxGuest *self, Req *r, GError *error)
{
    g_autoptr(GTask) task = NULL;

    if (r->src_busy || r->dest_busy) {
        if (!r->deferred)
            r->deferred = error;
        else
            g_error_free(error);
        /* A source or destination stream may never complete on its own (a pipe). */
        g_cancellable_cancel(r->io_cancel);
        return;
    }
    task = req_take(self, r);
    g_task_return_error(task, error);
}

/* After a stream callback: deliver a deferred failure. TRUE if @r is gone. */
static gboolean
req_fail_deferred(SbxGuest *self, Req *r)
{
    if (!r->deferred)
        return FALSE;
    req_fail(self, r, g_steal_pointer(&r->deferred));
    return TRUE;
}

static void
req_done_int(SbxGuest *self, Req *r, gint64 value)
{
    g_autoptr(GTask) task = req_take(self, r);
    gint64 *v = g_new(gint64, 1);
    *v = value;
    g_task_return_pointer(task, v, g_free);
}

/* ---- output ------------------------------------------------------------- */

static gsize
outq_pending(SbxGuest *self)
{
    return self->outq->len - self->outq_off;
}

static void
resume_uploads(SbxGuest *self)
{
    GHashTableIter it;
    gpointer v;
    g_autoptr(GPtrArray) writers = g_ptr_array_new();

    g_hash_table_iter_init(&it, self->pending);
    while (g_hash_table_iter_next(&it, NULL, &v))
        if (((Req *)v)->kind == REQ_WRITE)
            g_ptr_array_add(writers, v);
    for (guint i = 0; i < writers->len && !self->closed; i++)
        write_pump(self, writers->pdata[i]);
}

static gboolean
on_writable(int fd, GIOCondition cond, gpointer data)
{
    SbxGuest *self = data;

    while (outq_pending(self) > 0) {
        ssize_t n = write(self->fd, self->outq->data + self->outq_off, outq_pending(self));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return G_SOURCE_CONTINUE;
        if (n < 0) {
            int err = errno;
            self->out_watch = 0;
            close_with_error(self, g_error_new(SBX_GUEST_ERROR, SBX_GUEST_ERROR_DISCONNECTED,
                                               "guest channel write failed: %s", g_strerror(err)));
            return G_SOURCE_REMOVE;
        }
        self->outq_off += (gsize)n;
    }
    g_byte_array_set_size(self->outq, 0);
    self->outq_off = 0;
    self->out_watch = 0;
    resume_uploads(self);
    return G_SOURCE_REMOVE;
}

/* Queue a frame (consumes @header). Encoding only fails on limits we enforce
 * before calling, so a failure here is a programming error. */
static void
send_frame(SbxGuest *self, JsonObject *header, const void *payload, gsize len)
{
    g_autoptr(JsonObject) h = header;
    g_autoptr(GError) error = NULL;

    if (self->closed)
        return;
    if (!sbx_frame_encode(self->outq, h, payload, len, &error)) {
        g_critical("sbx-guest: cannot encode a frame: %s", error->message);
        return;
    }
    if (!self->out_watch)
        self->out_watch = g_unix_fd_add(self->fd, G_IO_OUT, on_writable, self);
}

/* ---- cancellation ------------------------------------------------------- */

typedef struct {
    SbxGuest *self;
    gint64 id;
} CancelData;

static gboolean
on_cancel_idle(gpointer data)
{
    CancelData *cd = data;
    Req *r = g_hash_table_lookup(cd->self->pending, &cd->id);

    if (r) {
        JsonObject *h;
        r->cancel_idle = 0;
        /* Tell the agent to stop (kill the exec / drop the transfer). */
        h = sbx_frame_header_new("cancel", ++cd->self->next_id);
        json_object_set_int_member(h, "target", r->id);
        send_frame(cd->self, h, NULL, 0);
        req_fail(cd->self, r, g_error_new_literal(G_IO_ERROR, G_IO_ERROR_CANCELLED,
                                                  "operation was cancelled"));
    }
    return G_SOURCE_REMOVE;
}

static void
on_cancelled(GCancellable *cancellable, gpointer data)
{
    Req *r = data;
    CancelData *cd;

    /* May run inside g_cancellable_cancel() anywhere: defer to the loop. */
    if (r->cancel_idle)
        return;
    cd = g_new(CancelData, 1);
    cd->self = r->self;
    cd->id = r->id;
    r->cancel_idle = g_idle_add_full(G_PRIORITY_DEFAULT, on_cancel_idle, cd, g_free);
}

/* Create a request; NULL (and the task already failed) when it cannot be sent. */
static Req *
req_new(SbxGuest *self, ReqKind kind, GCancellable *cancellable, GAsyncReadyCallback callback,
        gpointer user_data, gpointer source_tag)
{
    g_autoptr(GTask) task = g_task_new(self, cancellable, callback, user_data);
    Req *r;

    g_task_set_source_tag(task, source_tag);
    if (self->closed) {
        g_task_return_new_error(task, SBX_GUEST_ERROR, SBX_GUEST_ERROR_DISCONNECTED,
                                "the guest channel is closed");
        return NULL;
    }
    if (g_hash_table_size(self->pending) >= MAX_PENDING) {
        g_task_return_new_error(task, SBX_GUEST_ERROR, SBX_GUEST_ERROR_TOO_MANY,
                                "%d guest requests are already in flight", MAX_PENDING);
        return NULL;
    }
    if (g_task_return_error_if_cancelled(task))
        return NULL;
    r = g_new0(Req, 1);
    r->self = self;
    r->id = ++self->next_id;
    r->kind = kind;
    r->task = g_steal_pointer(&task);
    g_queue_init(&r->chunks);
    r->io_cancel = g_cancellable_new();
    g_hash_table_insert(self->pending, &r->id, r);
    if (cancellable)
        r->cancel_id = g_cancellable_connect(cancellable, G_CALLBACK(on_cancelled), r, NULL);
    return r;
}

/* ---- incoming frames ---------------------------------------------------- */

static SbxGuestError
map_agent_error(const char *code)
{
    static const struct {
        const char *name;
        SbxGuestError code;
    } map[] = {
        { "invalid_input", SBX_GUEST_ERROR_INVALID_INPUT },
        { "not_found", SBX_GUEST_ERROR_NOT_FOUND },
        { "too_large", SBX_GUEST_ERROR_TOO_LARGE },
        { "busy", SBX_GUEST_ERROR_BUSY },
        { "unavailable", SBX_GUEST_ERROR_UNAVAILABLE },
        { "io", SBX_GUEST_ERROR_IO },
        { "protocol", SBX_GUEST_ERROR_PROTOCOL },
    };
    for (gsize i = 0; code && i < G_N_ELEMENTS(map); i++)
        if (g_str_equal(code, map[i].name))
            return map[i].code;
    return SBX_GUEST_ERROR_FAILED;
}

static void
handle_hello(SbxGuest *self, SbxFrame *f)
{
    JsonNode *langs = json_object_get_member(f->header, "languages");

    self->protocol = (guint)sbx_frame_get_int(f, "protocol", 0);
    g_free(self->agent_version);
    self->agent_version = g_strdup(sbx_frame_get_string(f, "agent_version", "unknown"));
    if (langs && JSON_NODE_HOLDS_OBJECT(langs)) {
        JsonObject *o = json_node_get_object(langs);
        for (int i = 0; i < SBX_N_LANGUAGES; i++) {
            const char *n = sbx_language_to_string((SbxLanguage)i);
            self->languages[i] = json_object_has_member(o, n) && json_object_get_boolean_member(o, n);
        }
    }
    if (self->protocol != SBX_PROTOCOL_VERSION) {
        close_with_error(self, g_error_new(SBX_GUEST_ERROR, SBX_GUEST_ERROR_PROTOCOL,
                                           "guest agent speaks protocol %u, this host speaks %d",
                                           self->protocol, SBX_PROTOCOL_VERSION));
        return;
    }
    if (self->hello)
        return; /* the agent's own greeting and the answer to ours */
    self->hello = TRUE;
    while (self->hello_waiters)
        hello_waiter_finish(self, self->hello_waiters->data, NULL);
}

static void
handle_exec_frame(SbxGuest *self, Req *r, SbxFrame *f)
{
    gsize len = 0;
    const guint8 *data = g_bytes_get_data(f->payload, &len);

    if (g_str_equal(f->type, "stdout") || g_str_equal(f->type, "stderr")) {
        gboolean is_out = g_str_equal(f->type, "stdout");
        guint64 *total = is_out ? &r->out_total : &r->err_total;
        guint64 limit = is_out ? SBX_MAX_STDOUT_BYTES : SBX_MAX_STDERR_BYTES;
        gsize take = *total >= limit ? 0 : (gsize)MIN((guint64)len, limit - *total);
        if (take < len) {
            if (is_out)
                r->out_trunc = TRUE;
            else
                r->err_trunc = TRUE;
        }
        *total += take;
        if (r->output && take > 0)
            r->output(is_out ? SBX_GUEST_STDOUT : SBX_GUEST_STDERR, data, take, r->output_data);
    } else if (g_str_equal(f->type, "exit")) {
        SbxGuestExecResult *res = g_new0(SbxGuestExecResult, 1);
        g_autoptr(GTask) task = NULL;
        res->exit_code = (int)sbx_frame_get_int(f, "exit_code", -1);
        res->timed_out = sbx_frame_get_bool(f, "timed_out", FALSE);
        res->stdout_truncated = sbx_frame_get_bool(f, "stdout_truncated", FALSE) || r->out_trunc;
        res->stderr_truncated = sbx_frame_get_bool(f, "stderr_truncated", FALSE) || r->err_trunc;
        res->retire = sbx_frame_get_bool(f, "retire", FALSE);
        res->stdout_bytes = (guint64)sbx_frame_get_int(f, "stdout_bytes", 0);
        res->stderr_bytes = (guint64)sbx_frame_get_int(f, "stderr_bytes", 0);
        res->duration_us = (guint64)sbx_frame_get_int(f, "duration_us", 0);
        res->accept_us = sbx_frame_get_int(f, "accept_us", -1);
        res->cpu_user_us = (guint64)sbx_frame_get_int(f, "cpu_user_us", 0);
        res->cpu_sys_us = (guint64)sbx_frame_get_int(f, "cpu_sys_us", 0);
        res->max_rss_kb = sbx_frame_get_int(f, "max_rss_kb", 0);
        task = req_take(self, r);
        g_task_return_pointer(task, res, g_free);
    } else {
        close_with_error(self, g_error_new(SBX_GUEST_ERROR, SBX_GUEST_ERROR_PROTOCOL,
                                           "unexpected \"%s\" frame for an exec", f->type));
    }
}

static void
read_finish_if_done(SbxGuest *self, Req *r)
{
    if (!r->end_seen || r->dest_busy || !g_queue_is_empty(&r->chunks))
        return;
    if (r->end_size != (gint64)r->received) {
        req_fail(self, r, g_error_new(SBX_GUEST_ERROR, SBX_GUEST_ERROR_PROTOCOL,
                                      "file size mismatch: agent reported %" G_GINT64_FORMAT
                                      " bytes, received %" G_GUINT64_FORMAT,
                                      r->end_size, r->received));
        return;
    }
    req_done_int(self, r, (gint64)r->written);
}

static void
on_dest_written(GObject *source, GAsyncResult *res, gpointer data)
{
    Req *r = data;
    SbxGuest *self = r->self;
    g_autoptr(GError) error = NULL;
    gsize n = 0;
    gboolean ok = g_output_stream_write_all_finish(G_OUTPUT_STREAM(source), res, &n, &error);

    r->dest_busy = FALSE;
    g_clear_pointer(&r->inflight, g_bytes_unref);
    if (req_fail_deferred(self, r))
        return;
    if (!ok) {
        JsonObject *h = sbx_frame_header_new("cancel", ++self->next_id);
        json_object_set_int_member(h, "target", r->id);
        send_frame(self, h, NULL, 0);
        g_prefix_error(&error, "writing the downloaded file: ");
        req_fail(self, r, g_steal_pointer(&error));
        return;
    }
    r->written += n;
    {
        JsonObject *h = sbx_frame_header_new("file_ack", r->id);
        json_object_set_int_member(h, "bytes", (gint64)r->written);
        send_frame(self, h, NULL, 0);
    }
    read_pump(self, r);
}

static void
read_pump(SbxGuest *self, Req *r)
{
    if (r->dest_busy)
        return;
    r->inflight = g_queue_pop_head(&r->chunks);
    if (!r->inflight) {
        read_finish_if_done(self, r);
        return;
    }
    r->dest_busy = TRUE;
    g_output_stream_write_all_async(r->dest, g_bytes_get_data(r->inflight, NULL),
                                    g_bytes_get_size(r->inflight), G_PRIORITY_DEFAULT,
                                    r->io_cancel, on_dest_written, r);
}

static void
dispatch(SbxGuest *self, SbxFrame *f)
{
    Req *r;

    if (f->id == 0) {
        if (g_str_equal(f->type, "hello"))
            handle_hello(self, f);
        else if (g_str_equal(f->type, "error"))
            close_with_error(self, g_error_new(SBX_GUEST_ERROR, SBX_GUEST_ERROR_PROTOCOL,
                                               "guest agent reported a protocol error: %s",
                                               sbx_frame_get_string(f, "message", "?")));
        return;
    }
    r = g_hash_table_lookup(self->pending, &f->id);
    if (!r || r->deferred)
        return; /* late frames of a cancelled or failed request */
    if (g_str_equal(f->type, "error")) {
        const char *code = sbx_frame_get_string(f, "code", NULL);
        if (r->kind == REQ_WRITE && !r->src_done) {
            /* Let the agent forget the upload it refused. */
            JsonObject *h = sbx_frame_header_new("file_end", r->id);
            json_object_set_boolean_member(h, "abort", TRUE);
            send_frame(self, h, NULL, 0);
            r->src_done = TRUE;
        }
        req_fail(self, r, g_error_new(SBX_GUEST_ERROR, map_agent_error(code), "%s",
                                      sbx_frame_get_string(f, "message", "guest agent error")));
        return;
    }
    switch (r->kind) {
    case REQ_PING:
        if (g_str_equal(f->type, "pong")) {
            req_done_int(self, r, 0);
            return;
        }
        break;
    case REQ_RESEED:
        if (g_str_equal(f->type, "ok") && r->need_clock &&
            !json_object_get_boolean_member_with_default(f->header, "clock_set", FALSE)) {
            req_fail(self, r, g_error_new(SBX_GUEST_ERROR, SBX_GUEST_ERROR_FAILED,
                                          "the guest agent did not set its wall clock"));
            return;
        }
        G_GNUC_FALLTHROUGH;
    case REQ_RECLAIM:
    case REQ_WARM:
        if (g_str_equal(f->type, "ok")) {
            req_done_int(self, r, 0);
            return;
        }
        break;
    case REQ_WRITE:
        if (g_str_equal(f->type, "ok")) {
            if (r->src_busy)
                break; /* cannot be: the agent answers after file_end */
            req_done_int(self, r, sbx_frame_get_int(f, "size", 0));
            return;
        }
        break;
    case REQ_EXEC:
        handle_exec_frame(self, r, f);
        return;
    case REQ_READ:
        if (g_str_equal(f->type, "file_chunk") && !r->end_seen) {
            gsize len = g_bytes_get_size(f->payload);
            if (r->received + len > SBX_MAX_FILE_BYTES ||
                r->received + len - r->written > READ_WINDOW + SBX_FRAME_MAX_PAYLOAD) {
                /* Over the file limit or past the credit we gave: refuse to buffer it. */
                JsonObject *h = sbx_frame_header_new("cancel", ++self->next_id);
                json_object_set_int_member(h, "target", r->id);
                send_frame(self, h, NULL, 0);
                req_fail(self, r, g_error_new(SBX_GUEST_ERROR,
                                              r->received + len > SBX_MAX_FILE_BYTES
                                                  ? SBX_GUEST_ERROR_TOO_LARGE
                                                  : SBX_GUEST_ERROR_PROTOCOL,
                                              "the guest sent more file data than allowed"));
                return;
            }
            r->received += len;
            g_queue_push_tail(&r->chunks, g_bytes_ref(f->payload));
            read_pump(self, r);
            return;
        }
        if (g_str_equal(f->type, "file_end") && !r->end_seen) {
            r->end_seen = TRUE;
            r->end_size = sbx_frame_get_int(f, "size", -1);
            read_pump(self, r);
            return;
        }
        break;
    case REQ_LIST:
        if (g_str_equal(f->type, "file_list")) {
            JsonNode *n = json_object_get_member(f->header, "entries");
            g_autoptr(GPtrArray) out =
                g_ptr_array_new_with_free_func((GDestroyNotify)sbx_guest_file_info_free);
            g_autoptr(GTask) task = NULL;
            if (n && JSON_NODE_HOLDS_ARRAY(n)) {
                JsonArray *arr = json_node_get_array(n);
                for (guint i = 0; i < json_array_get_length(arr); i++) {
                    JsonNode *en = json_array_get_element(arr, i);
                    JsonObject *o;
                    SbxGuestFileInfo *info;
                    const char *type;
                    if (!JSON_NODE_HOLDS_OBJECT(en))
                        continue;
                    o = json_node_get_object(en);
                    info = g_new0(SbxGuestFileInfo, 1);
                    info->name = g_strdup(json_object_get_string_member_with_default(o, "name", ""));
                    type = json_object_get_string_member_with_default(o, "type", "other");
                    info->type = g_str_equal(type, "file")      ? SBX_GUEST_FILE_REGULAR
                                 : g_str_equal(type, "dir")     ? SBX_GUEST_FILE_DIRECTORY
                                 : g_str_equal(type, "symlink") ? SBX_GUEST_FILE_SYMLINK
                                                                : SBX_GUEST_FILE_OTHER;
                    info->size = (guint64)json_object_get_int_member_with_default(o, "size", 0);
                    info->mode = (guint)json_object_get_int_member_with_default(o, "mode", 0);
                    g_ptr_array_add(out, info);
                }
            }
            g_object_set_data(G_OBJECT(r->task), "truncated",
                              GINT_TO_POINTER(sbx_frame_get_bool(f, "truncated", FALSE)));
            task = req_take(self, r);
            g_task_return_pointer(task, g_steal_pointer(&out), (GDestroyNotify)g_ptr_array_unref);
            return;
        }
        break;
    }
    close_with_error(self, g_error_new(SBX_GUEST_ERROR, SBX_GUEST_ERROR_PROTOCOL,
                                       "unexpected \"%s\" frame for request %" G_GINT64_FORMAT,
                                       f->type, f->id));
}

static gboolean
on_readable(int fd, GIOCondition cond, gpointer data)
{
    SbxGuest *self = data;
    guint8 buf[READ_BUF];
    g_autoptr(SbxGuest) keep = g_object_ref(self);

    for (int round = 0; round < 16 && !self->closed; round++) {
        ssize_t n = read(self->fd, buf, sizeof buf);
        g_autoptr(GError) error = NULL;
        SbxFrame *f;

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return G_SOURCE_CONTINUE;
        if (n <= 0) {
            int err = errno;
            self->in_watch = 0;
            close_with_error(self, n == 0 ? g_error_new_literal(SBX_GUEST_ERROR,
                                                                SBX_GUEST_ERROR_DISCONNECTED,
                                                                "the guest closed the channel")
                                          : g_error_new(SBX_GUEST_ERROR, SBX_GUEST_ERROR_DISCONNECTED,
                                                        "guest channel read failed: %s",
                                                        g_strerror(err)));
            return G_SOURCE_REMOVE;
        }
        if (!sbx_frame_decoder_feed(self->dec, buf, (gsize)n, &error)) {
            self->in_watch = 0;
            close_with_error(self, g_error_new(SBX_GUEST_ERROR, SBX_GUEST_ERROR_PROTOCOL,
                                               "bad frame from the guest: %s", error->message));
            return G_SOURCE_REMOVE;
        }
        while (!self->closed && (f = sbx_frame_decoder_pop(self->dec, &error))) {
            dispatch(self, f);
            sbx_frame_free(f);
        }
        if (error) {
            self->in_watch = 0;
            close_with_error(self, g_error_new(SBX_GUEST_ERROR, SBX_GUEST_ERROR_PROTOCOL,
                                               "bad frame from the guest: %s", error->message));
            return G_SOURCE_REMOVE;
        }
    }
    if (self->closed) {
        self->in_watch = 0;
        return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
}

/* ---- close -------------------------------------------------------------- */

static void
close_with_error(SbxGuest *self, GError *error)
{
    g_autoptr(GError) err = error;
    g_autoptr(GPtrArray) reqs = g_ptr_array_new();
    GHashTableIter it;
    gpointer v;

    if (self->closed)
        return;
    self->closed = TRUE;
    g_object_ref(self);
    g_clear_handle_id(&self->in_watch, g_source_remove);
    g_clear_handle_id(&self->out_watch, g_source_remove);
    sbx_fd_close(&self->fd);
    g_debug("guest channel closed: %s", err->message);

    while (self->hello_waiters)
        hello_waiter_finish(self, self->hello_waiters->data, g_error_copy(err));

    g_hash_table_iter_init(&it, self->pending);
    while (g_hash_table_iter_next(&it, NULL, &v))
        g_ptr_array_add(reqs, v);
    for (guint i = 0; i < reqs->len; i++) {
        Req *r = reqs->pdata[i];
        req_fail(self, r, g_error_new(SBX_GUEST_ERROR, SBX_GUEST_ERROR_DISCONNECTED,
                                      "%s", err->message));
    }
    g_signal_emit(self, signals[SIGNAL_CLOSED], 0);
    g_object_unref(self);
}

void
sbx_guest_close(SbxGuest *self)
{
    g_return_if_fail(SBX_IS_GUEST(self));
    close_with_error(self, g_error_new_literal(SBX_GUEST_ERROR, SBX_GUEST_ERROR_DISCONNECTED,
                                               "the guest channel was closed by the host"));
}

gboolean
sbx_guest_is_closed(SbxGuest *self)
{
    return self->closed;
}

/* ---- GObject ------------------------------------------------------------ */

static void
sbx_guest_dispose(GObject *object)
{
    SbxGuest *self = SBX_GUEST(object);
    /* Only reached with no request in flight (each task holds a ref). */
    close_with_error(self, g_error_new_literal(SBX_GUEST_ERROR, SBX_GUEST_ERROR_DISCONNECTED,
                                               "the guest channel was disposed"));
    G_OBJECT_CLASS(sbx_guest_parent_class)->dispose(object);
}

static void
sbx_guest_finalize(GObject *object)
{
    SbxGuest *self = SBX_GUEST(object);
    sbx_frame_decoder_free(self->dec);
    g_byte_array_unref(self->outq);
    g_hash_table_unref(self->pending);
    g_free(self->agent_version);
    G_OBJECT_CLASS(sbx_guest_parent_class)->finalize(object);
}

static void
sbx_guest_class_init(SbxGuestClass *klass)
{
    GObjectClass *oc = G_OBJECT_CLASS(klass);
    oc->dispose = sbx_guest_dispose;
    oc->finalize = sbx_guest_finalize;
    /* Emitted once when the channel closes, after pending requests failed. */
    signals[SIGNAL_CLOSED] = g_signal_new("closed", SBX_TYPE_GUEST, G_SIGNAL_RUN_LAST, 0, NULL,
                                          NULL, NULL, G_TYPE_NONE, 0);
}

static void
sbx_guest_init(SbxGuest *self)
{
    self->fd = -1;
    self->dec = sbx_frame_decoder_new();
    self->outq = g_byte_array_sized_new(64 * 1024);
    self->pending = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, NULL);
}

SbxGuest *
sbx_guest_new(int fd)
{
    SbxGuest *self = g_object_new(SBX_TYPE_GUEST, NULL);
    int fl = fcntl(fd, F_GETFL);

    self->fd = fd;
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        close_with_error(self, g_error_new(SBX_GUEST_ERROR, SBX_GUEST_ERROR_DISCONNECTED,
                                           "bad guest channel fd: %s", g_strerror(errno)));
        return self;
    }
    self->in_watch = g_unix_fd_add(fd, G_IO_IN | G_IO_HUP | G_IO_ERR, on_readable, self);
    /* Greet first: the agent answers with its hello even when it did not see
     * this connection come up (see docs/guest-protocol.md, Connection). */
    send_frame(self, sbx_frame_header_new("hello", 0), NULL, 0);
    return self;
}

/* ---- hello -------------------------------------------------------------- */

static void
hello_waiter_finish(SbxGuest *self, HelloWaiter *w, GError *error)
{
    g_autoptr(GTask) task = w->task;

    self->hello_waiters = g_list_remove(self->hello_waiters, w);
    if (w->timeout) {
        g_source_destroy(w->timeout);
        g_source_unref(w->timeout);
    }
    if (w->cancel) {
        g_source_destroy(w->cancel);
        g_source_unref(w->cancel);
    }
    g_free(w);
    if (error)
        g_task_return_error(task, error);
    else
        g_task_return_boolean(task, TRUE);
}

static gboolean
on_hello_timeout(gpointer data)
{
    HelloWaiter *w = data;
    SbxGuest *self = g_task_get_source_object(w->task);

    hello_waiter_finish(self, w, g_error_new(SBX_GUEST_ERROR, SBX_GUEST_ERROR_TIMEOUT,
                                             "the guest agent did not say hello within %u ms",
                                             w->timeout_ms));
    return G_SOURCE_REMOVE;
}

static gboolean
on_hello_cancelled(GCancellable *cancellable, gpointer data)
{
    HelloWaiter *w = data;
    SbxGuest *self = g_task_get_source_object(w->task);

    hello_waiter_finish(self, w, g_error_new_literal(G_IO_ERROR, G_IO_ERROR_CANCELLED,
                                                     "operation was cancelled"));
    return G_SOURCE_REMOVE;
}

void
sbx_guest_wait_hello_async(SbxGuest *self, guint timeout_ms, GCancellable *cancellable,
                           GAsyncReadyCallback callback, gpointer user_data)
{
    g_autoptr(GTask) task = g_task_new(self, cancellable, callback, user_data);
    HelloWaiter *w;

    g_task_set_source_tag(task, sbx_guest_wait_hello_async);
    if (self->hello) {
        g_task_return_boolean(task, TRUE);
        return;
    }
    if (self->closed) {
        g_task_return_new_error(task, SBX_GUEST_ERROR, SBX_GUEST_ERROR_DISCONNECTED,
                                "the guest channel closed before the agent said hello");
        return;
    }
    if (g_task_return_error_if_cancelled(task))
        return;
    w = g_new0(HelloWaiter, 1);
    w->task = g_steal_pointer(&task);
    w->timeout_ms = timeout_ms;
    w->timeout = g_timeout_source_new(timeout_ms);
    g_source_set_callback(w->timeout, on_hello_timeout, w, NULL);
    g_source_attach(w->timeout, g_task_get_context(w->task));
    if (cancellable) {
        w->cancel = g_cancellable_source_new(cancellable);
        g_source_set_callback(w->cancel, (GSourceFunc)(void (*)(void))on_hello_cancelled, w, NULL);
        g_source_attach(w->cancel, g_task_get_context(w->task));
    }
    self->hello_waiters = g_list_append(self->hello_waiters, w);
}

gboolean
sbx_guest_wait_hello_finish(SbxGuest *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

guint
sbx_guest_get_protocol_version(SbxGuest *self)
{
    return self->hello ? self->protocol : 0;
}

const char *
sbx_guest_get_agent_version(SbxGuest *self)
{
    return self->hello ? self->agent_version : NULL;
}

gboolean
sbx_guest_has_language(SbxGuest *self, SbxLanguage language)
{
    g_return_val_if_fail((guint)language < SBX_N_LANGUAGES, FALSE);
    return self->hello && self->languages[language];
}

/* ---- simple requests ---------------------------------------------------- */

static gboolean
finish_int(SbxGuest *self, GAsyncResult *result, gint64 *out, GError **error)
{
    g_autofree gint64 *v = NULL;
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    v = g_task_propagate_pointer(G_TASK(result), error);
    if (!v)
        return FALSE;
    if (out)
        *out = *v;
    return TRUE;
}

void
sbx_guest_ping_async(SbxGuest *self, GCancellable *cancellable, GAsyncReadyCallback callback,
                     gpointer user_data)
{
    Req *r = req_new(self, REQ_PING, cancellable, callback, user_data, sbx_guest_ping_async);
    if (r)
        send_frame(self, sbx_frame_header_new("ping", r->id), NULL, 0);
}

gboolean
sbx_guest_ping_finish(SbxGuest *self, GAsyncResult *result, GError **error)
{
    return finish_int(self, result, NULL, error);
}

static void
reseed_send(SbxGuest *self, Req *r, GBytes *entropy, gint64 realtime_ns)
{
    guint8 buf[64];
    JsonObject *h;

    h = sbx_frame_header_new("reseed", r->id);
    json_object_set_int_member(h, "realtime_ns", realtime_ns);
    if (entropy) {
        send_frame(self, h, g_bytes_get_data(entropy, NULL), MIN(g_bytes_get_size(entropy), 4096));
        return;
    }
    if (getrandom(buf, sizeof buf, 0) != (ssize_t)sizeof buf) {
        json_object_unref(h);
        req_fail(self, r, g_error_new(SBX_GUEST_ERROR, SBX_GUEST_ERROR_FAILED,
                                      "getrandom: %s", g_strerror(errno)));
        return;
    }
    send_frame(self, h, buf, sizeof buf);
}

void
sbx_guest_reseed_async(SbxGuest *self, GBytes *entropy, GCancellable *cancellable,
                       GAsyncReadyCallback callback, gpointer user_data)
{
    Req *r = req_new(self, REQ_RESEED, cancellable, callback, user_data, sbx_guest_reseed_async);
    /* A restored guest's wall clock stands at the template's save time: the
     * host's clock travels with the entropy. */
    if (r)
        reseed_send(self, r, entropy, g_get_real_time() * 1000);
}

void
sbx_guest_reseed_clock_async(SbxGuest *self, gint64 realtime_ns, GCancellable *cancellable,
                             GAsyncReadyCallback callback, gpointer user_data)
{
    Req *r;
    g_return_if_fail(realtime_ns > 0);
    r = req_new(self, REQ_RESEED, cancellable, callback, user_data, sbx_guest_reseed_async);
    if (!r)
        return;
    r->need_clock = TRUE;
    reseed_send(self, r, NULL, realtime_ns);
}

gboolean
sbx_guest_reseed_finish(SbxGuest *self, GAsyncResult *result, GError **error)
{
    return finish_int(self, result, NULL, error);
}

void
sbx_guest_reclaim_async(SbxGuest *self, GCancellable *cancellable, GAsyncReadyCallback callback,
                        gpointer user_data)
{
    Req *r = req_new(self, REQ_RECLAIM, cancellable, callback, user_data, sbx_guest_reclaim_async);
    if (r)
        send_frame(self, sbx_frame_header_new("reclaim", r->id), NULL, 0);
}

gboolean
sbx_guest_reclaim_finish(SbxGuest *self, GAsyncResult *result, GError **error)
{
    return finish_int(self, result, NULL, error);
}

void
sbx_guest_warm_async(SbxGuest *self, SbxLanguage language, GCancellable *cancellable,
                     GAsyncReadyCallback callback, gpointer user_data)
{
    Req *r = req_new(self, REQ_WARM, cancellable, callback, user_data, sbx_guest_warm_async);
    JsonObject *h;

    if (!r)
        return;
    h = sbx_frame_header_new("warm", r->id);
    json_object_set_string_member(h, "language", sbx_language_to_string(language));
    send_frame(self, h, NULL, 0);
}

gboolean
sbx_guest_warm_finish(SbxGuest *self, GAsyncResult *result, GError **error)
{
    return finish_int(self, result, NULL, error);
}

/* ---- exec --------------------------------------------------------------- */

void
sbx_guest_exec_async(SbxGuest *self, SbxLanguage language, GBytes *code, guint timeout_s,
                     GHashTable *env, SbxGuestOutputFunc output, gpointer output_data,
                     GDestroyNotify output_destroy, GCancellable *cancellable,
                     GAsyncReadyCallback callback, gpointer user_data)
{
    gsize len = 0;
    const void *data = code ? g_bytes_get_data(code, &len) : NULL;
    GError *error = NULL;
    Req *r;
    JsonObject *h;
    JsonObject *envo;

    if ((guint)language >= SBX_N_LANGUAGES) {
        error = g_error_new(SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_LANGUAGE, "unknown language %d",
                            (int)language);
    } else if (!sbx_validate_code(data, len, &error) || !sbx_validate_timeout(timeout_s, &error) ||
               !sbx_validate_env(env, &error)) {
        /* error set */
    }
    if (error) {
        g_autoptr(GTask) task = g_task_new(self, cancellable, callback, user_data);
        g_task_set_source_tag(task, sbx_guest_exec_async);
        if (output_destroy)
            output_destroy(output_data);
        g_task_return_error(task, error);
        return;
    }
    r = req_new(self, REQ_EXEC, cancellable, callback, user_data, sbx_guest_exec_async);
    if (!r) {
        if (output_destroy)
            output_destroy(output_data);
        return;
    }
    r->output = output;
    r->output_data = output_data;
    r->output_destroy = output_destroy;
    h = sbx_frame_header_new("exec", r->id);
    json_object_set_string_member(h, "language", sbx_language_to_string(language));
    json_object_set_int_member(h, "timeout_s", timeout_s);
    envo = json_object_new();
    if (env) {
        GHashTableIter it;
        gpointer k, v;
        g_hash_table_iter_init(&it, env);
        while (g_hash_table_iter_next(&it, &k, &v))
            json_object_set_string_member(envo, k, v);
    }
    json_object_set_object_member(h, "env", envo);
    send_frame(self, h, data, len);
}

gboolean
sbx_guest_exec_finish(SbxGuest *self, GAsyncResult *result, SbxGuestExecResult *out_result,
                      GError **error)
{
    g_autofree SbxGuestExecResult *res = NULL;
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    res = g_task_propagate_pointer(G_TASK(result), error);
    if (!res)
        return FALSE;
    if (out_result)
        *out_result = *res;
    return TRUE;
}

/* ---- write_file --------------------------------------------------------- */

static void
on_src_read(GObject *source, GAsyncResult *res, gpointer data)
{
    Req *r = data;
    SbxGuest *self = r->self;
    g_autoptr(GError) error = NULL;
    g_autoptr(GBytes) b = g_input_stream_read_bytes_finish(G_INPUT_STREAM(source), res, &error);

    r->src_busy = FALSE;
    if (req_fail_deferred(self, r))
        return;
    if (!b) {
        JsonObject *h = sbx_frame_header_new("file_end", r->id);
        json_object_set_boolean_member(h, "abort", TRUE);
        send_frame(self, h, NULL, 0);
        g_prefix_error(&error, "reading the file to upload: ");
        req_fail(self, r, g_steal_pointer(&error));
        return;
    }
    if (g_bytes_get_size(b) == 0) {
        JsonObject *h = sbx_frame_header_new("file_end", r->id);
        json_object_set_int_member(h, "mode", r->mode);
        send_frame(self, h, NULL, 0);
        r->src_done = TRUE;
        return;
    }
    send_frame(self, sbx_frame_header_new("file_chunk", r->id), g_bytes_get_data(b, NULL),
               g_bytes_get_size(b));
    write_pump(self, r);
}

/* A request on a guest path: the path is validated first (nothing is sent for
 * a bad one); NULL when the task already failed. */
static Req *
path_req_new(SbxGuest *self, ReqKind kind, const char *path, gboolean allow_root,
             GCancellable *cancellable, GAsyncReadyCallback callback, gpointer user_data,
             gpointer source_tag)
{
    GError *error = NULL;
    if (!sbx_validate_path(path, path ? strlen(path) : 0, allow_root, &error)) {
        g_autoptr(GTask) task = g_task_new(self, cancellable, callback, user_data);
        g_task_set_source_tag(task, source_tag);
        g_task_return_error(task, error);
        return NULL;
    }
    return req_new(self, kind, cancellable, callback, user_data, source_tag);
}

static void
write_pump(SbxGuest *self, Req *r)
{
    if (r->src_busy || r->src_done || outq_pending(self) >= OUTQ_HIGH)
        return;
    r->src_busy = TRUE;
    g_input_stream_read_bytes_async(r->src, SBX_FRAME_FILE_CHUNK, G_PRIORITY_DEFAULT,
                                    r->io_cancel, on_src_read, r);
}

void
sbx_guest_write_file_async(SbxGuest *self, const char *path, GInputStream *source, guint mode,
                           GCancellable *cancellable, GAsyncReadyCallback callback,
                           gpointer user_data)
{
    Req *r = path_req_new(self, REQ_WRITE, path, FALSE, cancellable, callback, user_data,
                          sbx_guest_write_file_async);
    JsonObject *h;

    if (!r)
        return;
    r->src = g_object_ref(source);
    r->mode = mode & 0777;
    h = sbx_frame_header_new("write_file", r->id);
    json_object_set_string_member(h, "path", path);
    send_frame(self, h, NULL, 0);
    write_pump(self, r);
}

gboolean
sbx_guest_write_file_finish(SbxGuest *self, GAsyncResult *result, guint64 *out_size, GError **error)
{
    gint64 v = 0;
    if (!finish_int(self, result, &v, error))
        return FALSE;
    if (out_size)
        *out_size = (guint64)v;
    return TRUE;
}

/* ---- read_file ---------------------------------------------------------- */

void
sbx_guest_read_file_async(SbxGuest *self, const char *path, GOutputStream *dest,
                          GCancellable *cancellable, GAsyncReadyCallback callback,
                          gpointer user_data)
{
    Req *r = path_req_new(self, REQ_READ, path, FALSE, cancellable, callback, user_data,
                          sbx_guest_read_file_async);
    JsonObject *h;

    if (!r)
        return;
    r->dest = g_object_ref(dest);
    h = sbx_frame_header_new("read_file", r->id);
    json_object_set_string_member(h, "path", path);
    json_object_set_int_member(h, "window", READ_WINDOW);
    send_frame(self, h, NULL, 0);
}

gboolean
sbx_guest_read_file_finish(SbxGuest *self, GAsyncResult *result, guint64 *out_size, GError **error)
{
    gint64 v = 0;
    if (!finish_int(self, result, &v, error))
        return FALSE;
    if (out_size)
        *out_size = (guint64)v;
    return TRUE;
}

/* ---- list_files --------------------------------------------------------- */

void
sbx_guest_list_files_async(SbxGuest *self, const char *path, GCancellable *cancellable,
                           GAsyncReadyCallback callback, gpointer user_data)
{
    Req *r;
    JsonObject *h;

    path = path ? path : "";
    r = path_req_new(self, REQ_LIST, path, TRUE, cancellable, callback, user_data,
                     sbx_guest_list_files_async);
    if (!r)
        return;
    h = sbx_frame_header_new("list_files", r->id);
    json_object_set_string_member(h, "path", path);
    send_frame(self, h, NULL, 0);
}

GPtrArray *
sbx_guest_list_files_finish(SbxGuest *self, GAsyncResult *result, gboolean *out_truncated,
                            GError **error)
{
    GPtrArray *arr;
    g_return_val_if_fail(g_task_is_valid(result, self), NULL);
    arr = g_task_propagate_pointer(G_TASK(result), error);
    if (arr && out_truncated)
        *out_truncated = GPOINTER_TO_INT(g_object_get_data(G_OBJECT(result), "truncated"));
    return arr;
}
