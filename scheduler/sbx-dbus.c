/* SPDX-License-Identifier: MIT
 *
 * sbx-dbus: D-Bus adapter between the generated skeleton (data/, namespace
 * SbxDBus) and SbxManager. No scheduling logic lives here: validate, call the
 * manager's _async, reply; errors leave as registered names (sbx-error.c).
 * Sessions (SbxSession, sbx-session.c) are exported as
 * org.schedulerd.Scheduler1.Session objects under SBX_DBUS_PATH/session/<id>;
 * the creator's uid is recorded (org.freedesktop.DBus.GetConnectionUnixUser)
 * and only that uid or root may use one; the creator leaving the bus closes it.
 */
#include "scheduler/sbx-dbus.h"

#include <gio/gunixfdlist.h>
#include <gio/gunixinputstream.h>
#include <gio/gunixoutputstream.h>

#include "data/sbx-dbus-generated.h"
#include "scheduler/sbx-error.h"
#include "scheduler/sbx-session.h"

#define SBX_DBUS_PATH "/org/schedulerd/Scheduler1"
/* A closed session stays exported this long, so late calls get SessionClosed
 * (not UnknownObject). */
#define SBX_DBUS_TOMBSTONE_S 300

struct _SbxDBusAdapter {
    GObject parent_instance;
    SbxManager *manager;
    SbxDBusScheduler1 *skeleton;
    GDBusConnection *connection;
    GHashTable *watches; /* sender -> Watch* */
    GHashTable *sessions; /* object path -> SessionExport* (open and tombstones) */
    guint n_calls;
};

G_DEFINE_FINAL_TYPE(SbxDBusAdapter, sbx_dbus_adapter, G_TYPE_OBJECT)

/* One bus-name watch per sender with runs in flight; vanishing cancels them. */
typedef struct {
    guint watch_id;
    guint refs;
    GCancellable *cancellable;
} Watch;

static void
watch_free(Watch *w)
{
    g_bus_unwatch_name(w->watch_id);
    g_object_unref(w->cancellable);
    g_free(w);
}

static void
sender_vanished_cb(GDBusConnection *connection, const char *name, gpointer user_data)
{
    Watch *w = user_data;
    g_info("client %s left the bus: tearing down its runs", name);
    g_cancellable_cancel(w->cancellable);
}

static GCancellable *
watch_sender(SbxDBusAdapter *self, const char *sender)
{
    Watch *w = g_hash_table_lookup(self->watches, sender);
    if (w == NULL) {
        w = g_new0(Watch, 1);
        w->cancellable = g_cancellable_new();
        w->watch_id = g_bus_watch_name_on_connection(self->connection, sender,
                                                     G_BUS_NAME_WATCHER_FLAGS_NONE, NULL,
                                                     sender_vanished_cb, w, NULL);
        g_hash_table_insert(self->watches, g_strdup(sender), w);
    }
    w->refs++;
    return g_object_ref(w->cancellable);
}

static void
unwatch_sender(SbxDBusAdapter *self, const char *sender)
{
    Watch *w = g_hash_table_lookup(self->watches, sender);
    if (w && --w->refs == 0)
        g_hash_table_remove(self->watches, sender);
}

static void
update_properties(SbxDBusAdapter *self)
{
    g_autoptr(GVariant) st = g_variant_ref_sink(sbx_manager_get_status(self->manager));
    guint32 used = 0, queue = 0;
    g_variant_lookup(st, "slots_used", "u", &used);
    g_variant_lookup(st, "queue_length", "u", &queue);
    sbx_dbus_scheduler1_set_slots_used(self->skeleton, used);
    sbx_dbus_scheduler1_set_queue_length(self->skeleton, queue);
    sbx_dbus_scheduler1_set_accelerator(self->skeleton, sbx_manager_get_accel(self->manager));
}

typedef struct {
    SbxDBusAdapter *self;
    GDBusMethodInvocation *invocation;
    char *sender;
} Call;

static void
run_done_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Call *c = user_data;
    SbxDBusAdapter *self = c->self;
    g_autoptr(GError) error = NULL;
    g_autoptr(SbxRunResult) result = sbx_manager_run_finish(SBX_MANAGER(source), res, &error);

    if (result)
        sbx_dbus_scheduler1_complete_run(self->skeleton, c->invocation,
                                         sbx_run_result_to_variant(result));
    else
        g_dbus_method_invocation_return_gerror(c->invocation, error);
    unwatch_sender(self, c->sender);
    self->n_calls--;
    update_properties(self);
    g_free(c->sender);
    g_object_unref(self);
    g_free(c);
}

static GOutputStream *
fd_stream(GDBusMethodInvocation *invocation, GVariant *handle, GError **error)
{
    GUnixFDList *fds = g_dbus_message_get_unix_fd_list(g_dbus_method_invocation_get_message(invocation));
    gint32 index = g_variant_get_handle(handle);
    if (fds == NULL || index < 0 || index >= g_unix_fd_list_get_length(fds)) {
        g_set_error(error, SBX_ERROR, SBX_ERROR_INVALID_INPUT,
                    "output handle %d does not name a passed file descriptor", index);
        return NULL;
    }
    int fd = g_unix_fd_list_get(fds, index, error);
    if (fd < 0)
        return NULL;
    return g_unix_output_stream_new(fd, TRUE);
}

static gboolean
handle_run(SbxDBusScheduler1 *skeleton, GDBusMethodInvocation *invocation, GVariant *arg_spec,
           GVariant *arg_stdout, GVariant *arg_stderr, gpointer user_data)
{
    SbxDBusAdapter *self = user_data;
    g_autoptr(GError) error = NULL;
    g_autoptr(SbxRunSpec) spec = sbx_run_spec_new(sbx_manager_get_config(self->manager));

    if (!sbx_run_spec_from_variant(spec, arg_spec, &error)) {
        g_dbus_method_invocation_return_gerror(invocation, error);
        return TRUE;
    }
    g_autoptr(GOutputStream) out = fd_stream(invocation, arg_stdout, &error);
    g_autoptr(GOutputStream) err = out ? fd_stream(invocation, arg_stderr, &error) : NULL;
    if (err == NULL) {
        g_dbus_method_invocation_return_gerror(invocation, error);
        return TRUE;
    }
    Call *c = g_new0(Call, 1);
    c->self = g_object_ref(self);
    c->invocation = invocation;
    c->sender = g_strdup(g_dbus_method_invocation_get_sender(invocation));
    g_autoptr(GCancellable) cancellable = watch_sender(self, c->sender ? c->sender : "");
    self->n_calls++;
    sbx_manager_run_async(self->manager, spec, out, err, NULL, NULL, cancellable, run_done_cb, c);
    update_properties(self);
    return TRUE;
}

static gboolean
handle_status(SbxDBusScheduler1 *skeleton, GDBusMethodInvocation *invocation, gpointer user_data)
{
    SbxDBusAdapter *self = user_data;
    sbx_dbus_scheduler1_complete_status(skeleton, invocation, sbx_manager_get_status(self->manager));
    return TRUE;
}

static gboolean
handle_doctor(SbxDBusScheduler1 *skeleton, GDBusMethodInvocation *invocation, gpointer user_data)
{
    SbxDBusAdapter *self = user_data;
    const SbxProbeReport *report = sbx_manager_get_probe(self->manager);
    GVariantBuilder b, items;
    g_variant_builder_init(&items, G_VARIANT_TYPE("aa{sv}"));
    for (guint i = 0; report && i < report->items->len; i++) {
        const SbxProbeItem *it = g_ptr_array_index(report->items, i);
        GVariantBuilder item;
        g_variant_builder_init(&item, G_VARIANT_TYPE_VARDICT);
        g_variant_builder_add(&item, "{sv}", "name", g_variant_new_string(it->name));
        g_variant_builder_add(&item, "{sv}", "status",
                              g_variant_new_string(sbx_probe_status_to_string(it->status)));
        g_variant_builder_add(&item, "{sv}", "value", g_variant_new_string(it->value ? it->value : ""));
        g_variant_builder_add(&item, "{sv}", "message",
                              g_variant_new_string(it->message ? it->message : ""));
        g_variant_builder_add(&item, "{sv}", "fix", g_variant_new_string(it->fix ? it->fix : ""));
        g_variant_builder_add(&items, "@a{sv}", g_variant_builder_end(&item));
    }
    g_variant_builder_init(&b, G_VARIANT_TYPE_VARDICT);
    g_variant_builder_add(&b, "{sv}", "accel", g_variant_new_string(sbx_manager_get_accel(self->manager)));
    g_variant_builder_add(&b, "{sv}", "items", g_variant_builder_end(&items));
    sbx_dbus_scheduler1_complete_doctor(skeleton, invocation, g_variant_builder_end(&b));
    return TRUE;
}

/* ---- sessions ----------------------------------------------------------- */

typedef struct {
    SbxDBusAdapter *self;     /* borrowed: the adapter frees its exports */
    SbxSession *session;      /* ref */
    SbxDBusScheduler1Session *skeleton;
    char *path;
    char *owner;              /* unique bus name of the creator */
    guint32 owner_uid;
    GCancellable *owner_gone; /* the creator's Watch cancellable (ref); NULL once closed */
    gulong owner_gone_id;
    gulong closed_id;
    guint tombstone_id;
} SessionExport;

static void
session_export_free(SessionExport *e)
{
    if (e->tombstone_id)
        g_source_remove(e->tombstone_id);
    if (e->closed_id)
        g_signal_handler_disconnect(e->session, e->closed_id);
    if (e->owner_gone) {
        g_signal_handler_disconnect(e->owner_gone, e->owner_gone_id);
        g_clear_object(&e->owner_gone);
        unwatch_sender(e->self, e->owner);
    }
    /* the adapter goes away (shutdown): the manager closes what is still open */
    if (g_dbus_interface_skeleton_get_connection(G_DBUS_INTERFACE_SKELETON(e->skeleton)))
        g_dbus_interface_skeleton_unexport(G_DBUS_INTERFACE_SKELETON(e->skeleton));
    g_signal_handlers_disconnect_by_data(e->skeleton, e);
    g_object_unref(e->skeleton);
    g_object_unref(e->session);
    g_free(e->path);
    g_free(e->owner);
    g_free(e);
}

static gboolean
tombstone_cb(gpointer user_data)
{
    SessionExport *e = user_data;
    e->tombstone_id = 0;
    g_hash_table_remove(e->self->sessions, e->path);
    return G_SOURCE_REMOVE;
}

static void
session_closed_cb(SbxSession *session, const char *reason, gpointer user_data)
{
    SessionExport *e = user_data;
    sbx_dbus_scheduler1_session_emit_closed(e->skeleton, reason);
    if (e->owner_gone) {
        g_signal_handler_disconnect(e->owner_gone, e->owner_gone_id);
        g_clear_object(&e->owner_gone);
        unwatch_sender(e->self, e->owner);
    }
    e->tombstone_id = g_timeout_add_seconds(SBX_DBUS_TOMBSTONE_S, tombstone_cb, e);
    update_properties(e->self);
}

static void
owner_gone_cb(GCancellable *cancellable, gpointer user_data)
{
    SessionExport *e = user_data;
    g_info("session %s: its creator %s left the bus", sbx_session_get_id(e->session), e->owner);
    sbx_session_close(e->session, SBX_SESSION_CLOSED_OWNER_LEFT);
}

/* What a session call needs once the caller is authorized. */
typedef enum { OP_EXEC, OP_WRITE, OP_READ, OP_LIST, OP_CLOSE } SessionOp;

typedef struct {
    SbxDBusAdapter *self; /* ref */
    GDBusMethodInvocation *invocation;
    char *path;           /* the session's object path (looked up again later) */
    SessionOp op;
    GObject *stream;      /* the passed fd's stream, kept until the call is over */
} SessionCall;

static void
session_call_free(SessionCall *c)
{
    c->self->n_calls--;
    g_clear_object(&c->stream);
    g_object_unref(c->self);
    g_free(c->path);
    g_free(c);
}

static int
fd_from_handle(GDBusMethodInvocation *invocation, GVariant *handle, GError **error)
{
    GUnixFDList *fds = g_dbus_message_get_unix_fd_list(g_dbus_method_invocation_get_message(invocation));
    gint32 index = g_variant_get_handle(handle);
    if (fds == NULL || index < 0 || index >= g_unix_fd_list_get_length(fds)) {
        g_set_error(error, SBX_ERROR, SBX_ERROR_INVALID_INPUT,
                    "handle %d does not name a passed file descriptor", index);
        return -1;
    }
    return g_unix_fd_list_get(fds, index, error);
}

static void
call_return_error(SessionCall *c, GError *error)
{
    g_dbus_method_invocation_return_gerror(c->invocation, error);
    g_error_free(error);
    session_call_free(c);
}

static void
exec_done_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    SessionCall *c = user_data;
    GError *error = NULL;
    g_autoptr(SbxRunResult) r = sbx_session_exec_finish(SBX_SESSION(source), res, &error);
    if (r == NULL) {
        call_return_error(c, error);
        return;
    }
    g_dbus_method_invocation_return_value(c->invocation,
                                          g_variant_new("(@a{sv})", sbx_run_result_to_variant(r)));
    session_call_free(c);
}

static void
file_done_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    SessionCall *c = user_data;
    GError *error = NULL;
    gboolean ok = c->op == OP_WRITE
                      ? sbx_session_write_file_finish(SBX_SESSION(source), res, NULL, &error)
                      : sbx_session_read_file_finish(SBX_SESSION(source), res, NULL, &error);
    if (!ok) {
        call_return_error(c, error);
        return;
    }
    g_dbus_method_invocation_return_value(c->invocation, NULL);
    session_call_free(c);
}

static void
list_done_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    SessionCall *c = user_data;
    GError *error = NULL;
    g_autoptr(GPtrArray) entries = sbx_session_list_files_finish(SBX_SESSION(source), res, &error);
    if (entries == NULL) {
        call_return_error(c, error);
        return;
    }
    GVariantBuilder b;
    g_variant_builder_init(&b, G_VARIANT_TYPE("a(sbt)"));
    for (guint i = 0; i < entries->len; i++) {
        const SbxGuestFileInfo *fi = g_ptr_array_index(entries, i);
        g_variant_builder_add(&b, "(sbt)", fi->name, fi->type == SBX_GUEST_FILE_DIRECTORY,
                              fi->size);
    }
    g_dbus_method_invocation_return_value(c->invocation, g_variant_new("(a(sbt))", &b));
    session_call_free(c);
}

static void
close_done_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    SessionCall *c = user_data;
    GError *error = NULL;
    if (!sbx_session_close_finish(SBX_SESSION(source), res, &error)) {
        call_return_error(c, error);
        return;
    }
    g_dbus_method_invocation_return_value(c->invocation, NULL);
    session_call_free(c);
}

static gboolean
parse_write_options(GVariant *options, guint *out_mode, GError **error)
{
    GVariantIter it;
    const char *key;
    GVariant *value;
    guint mode = 0644;
    g_variant_iter_init(&it, options);
    while (g_variant_iter_next(&it, "{&sv}", &key, &value)) {
        g_autoptr(GVariant) v = value;
        if (g_strcmp0(key, "mode") == 0 && g_variant_is_of_type(v, G_VARIANT_TYPE_UINT32) &&
            g_variant_get_uint32(v) <= 07777) {
            mode = g_variant_get_uint32(v);
        } else {
            g_set_error(error, SBX_ERROR, SBX_ERROR_INVALID_INPUT,
                        "unknown, ill-typed or out-of-range option '%s' (type %s) for WriteFile; "
                        "known: \"mode\" u (permission bits, <= 07777)",
                        key, g_variant_get_type_string(v));
            return FALSE;
        }
    }
    *out_mode = mode;
    return TRUE;
}

/* The caller may use the session: run the operation. */
static void
session_call_run(SessionCall *c, SessionExport *e)
{
    GVariant *params = g_dbus_method_invocation_get_parameters(c->invocation);
    GError *error = NULL;

    switch (c->op) {
    case OP_EXEC: {
        g_autoptr(GVariant) spec_v = g_variant_get_child_value(params, 0);
        g_autoptr(GVariant) out_h = g_variant_get_child_value(params, 1);
        g_autoptr(GVariant) err_h = g_variant_get_child_value(params, 2);
        g_autoptr(SbxRunSpec) spec = sbx_run_spec_new(sbx_manager_get_config(c->self->manager));
        spec->language = sbx_session_get_language(e->session);
        if (!sbx_run_spec_from_variant(spec, spec_v, &error)) {
            call_return_error(c, error);
            return;
        }
        g_autoptr(GOutputStream) out = fd_stream(c->invocation, out_h, &error);
        g_autoptr(GOutputStream) err = out ? fd_stream(c->invocation, err_h, &error) : NULL;
        if (err == NULL) {
            call_return_error(c, error);
            return;
        }
        sbx_session_exec_async(e->session, spec, out, err, exec_done_cb, c);
        return;
    }
    case OP_WRITE:
    case OP_READ: {
        const char *path = NULL;
        g_autoptr(GVariant) h = g_variant_get_child_value(params, 1);
        g_variant_get_child(params, 0, "&s", &path);
        guint mode = 0644;
        if (c->op == OP_WRITE) {
            g_autoptr(GVariant) options = g_variant_get_child_value(params, 2);
            if (!parse_write_options(options, &mode, &error)) {
                call_return_error(c, error);
                return;
            }
        }
        int fd = fd_from_handle(c->invocation, h, &error);
        if (fd < 0) {
            call_return_error(c, error);
            return;
        }
        if (c->op == OP_WRITE) {
            c->stream = G_OBJECT(g_unix_input_stream_new(fd, TRUE));
            sbx_session_write_file_async(e->session, path, G_INPUT_STREAM(c->stream), mode,
                                         file_done_cb, c);
        } else {
            c->stream = G_OBJECT(g_unix_output_stream_new(fd, TRUE));
            sbx_session_read_file_async(e->session, path, G_OUTPUT_STREAM(c->stream),
                                        file_done_cb, c);
        }
        return;
    }
    case OP_LIST: {
        const char *path = NULL;
        g_variant_get_child(params, 0, "&s", &path);
        sbx_session_list_files_async(e->session, path, list_done_cb, c);
        return;
    }
    case OP_CLOSE:
        sbx_session_close_async(e->session, SBX_SESSION_CLOSED_BY_CALLER, close_done_cb, c);
        return;
    }
}

static void
caller_uid_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    SessionCall *c = user_data;
    GError *error = NULL;
    g_autoptr(GVariant) reply = g_dbus_connection_call_finish(G_DBUS_CONNECTION(source), res, &error);
    if (reply == NULL) {
        g_prefix_error(&error, "cannot tell the caller's uid: ");
        call_return_error(c, error);
        return;
    }
    guint32 uid = 0;
    g_variant_get(reply, "(u)", &uid);
    SessionExport *e = g_hash_table_lookup(c->self->sessions, c->path);
    if (e == NULL) {
        call_return_error(c, g_error_new(SBX_ERROR, SBX_ERROR_NOT_FOUND, "no session at %s",
                                         c->path));
        return;
    }
    if (uid != e->owner_uid && uid != 0) {
        call_return_error(c, g_error_new(SBX_ERROR, SBX_ERROR_ACCESS_DENIED,
                                         "session %s belongs to uid %u; only that uid or root "
                                         "may use it (you are uid %u)",
                                         sbx_session_get_id(e->session), e->owner_uid, uid));
        return;
    }
    session_call_run(c, e);
}

/* Every Session method: the creator's connection is let through at once,
 * other connections after a uid check. */
static gboolean
session_call_begin(SessionExport *e, GDBusMethodInvocation *invocation, SessionOp op)
{
    SessionCall *c = g_new0(SessionCall, 1);
    c->self = g_object_ref(e->self);
    c->invocation = invocation;
    c->path = g_strdup(e->path);
    c->op = op;
    e->self->n_calls++;
    const char *sender = g_dbus_method_invocation_get_sender(invocation);
    if (g_strcmp0(sender, e->owner) == 0) {
        session_call_run(c, e);
        return TRUE;
    }
    g_dbus_connection_call(e->self->connection, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                           "org.freedesktop.DBus", "GetConnectionUnixUser",
                           g_variant_new("(s)", sender ? sender : ""), G_VARIANT_TYPE("(u)"),
                           G_DBUS_CALL_FLAGS_NONE, -1, NULL, caller_uid_cb, c);
    return TRUE;
}

static gboolean
handle_session_exec(SbxDBusScheduler1Session *skeleton, GDBusMethodInvocation *invocation,
                    GVariant *arg_spec, GVariant *arg_stdout, GVariant *arg_stderr,
                    gpointer user_data)
{
    return session_call_begin(user_data, invocation, OP_EXEC);
}

static gboolean
handle_session_write_file(SbxDBusScheduler1Session *skeleton, GDBusMethodInvocation *invocation,
                          const char *arg_path, GVariant *arg_fd, GVariant *arg_options,
                          gpointer user_data)
{
    return session_call_begin(user_data, invocation, OP_WRITE);
}

static gboolean
handle_session_read_file(SbxDBusScheduler1Session *skeleton, GDBusMethodInvocation *invocation,
                         const char *arg_path, GVariant *arg_fd, gpointer user_data)
{
    return session_call_begin(user_data, invocation, OP_READ);
}

static gboolean
handle_session_list_files(SbxDBusScheduler1Session *skeleton, GDBusMethodInvocation *invocation,
                          const char *arg_path, gpointer user_data)
{
    return session_call_begin(user_data, invocation, OP_LIST);
}

static gboolean
handle_session_close(SbxDBusScheduler1Session *skeleton, GDBusMethodInvocation *invocation,
                     gpointer user_data)
{
    return session_call_begin(user_data, invocation, OP_CLOSE);
}

typedef struct {
    SbxDBusAdapter *self; /* ref */
    GDBusMethodInvocation *invocation;
    char *sender;
    guint32 uid;
    SbxRunSpec *spec;
    guint idle_timeout_s;
    gboolean detach;           /* not closed when the creator leaves */
    GCancellable *cancellable; /* the creator's Watch */
} CreateCall;

static void
create_call_free(CreateCall *c)
{
    c->self->n_calls--;
    g_clear_object(&c->cancellable);
    g_clear_pointer(&c->spec, sbx_run_spec_free);
    g_object_unref(c->self);
    g_free(c->sender);
    g_free(c);
}

static void
session_created_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    CreateCall *c = user_data;
    SbxDBusAdapter *self = c->self;
    g_autoptr(GError) error = NULL;
    g_autoptr(SbxSession) session =
        sbx_manager_create_session_finish(SBX_MANAGER(source), res, &error);
    if (session == NULL) {
        unwatch_sender(self, c->sender);
        g_dbus_method_invocation_return_gerror(c->invocation, error);
        create_call_free(c);
        update_properties(self);
        return;
    }
    SessionExport *e = g_new0(SessionExport, 1);
    e->self = self;
    e->session = g_object_ref(session);
    e->path = g_strdup_printf("%s/session/%s", SBX_DBUS_PATH, sbx_session_get_id(session));
    e->owner = g_strdup(c->sender);
    e->owner_uid = c->uid;
    e->skeleton = sbx_dbus_scheduler1_session_skeleton_new();
    g_signal_connect(e->skeleton, "handle-exec", G_CALLBACK(handle_session_exec), e);
    g_signal_connect(e->skeleton, "handle-write-file", G_CALLBACK(handle_session_write_file), e);
    g_signal_connect(e->skeleton, "handle-read-file", G_CALLBACK(handle_session_read_file), e);
    g_signal_connect(e->skeleton, "handle-list-files", G_CALLBACK(handle_session_list_files), e);
    g_signal_connect(e->skeleton, "handle-close", G_CALLBACK(handle_session_close), e);
    const SbxTimings *t = sbx_session_get_start_timings(session);
    GVariantBuilder tb;
    g_variant_builder_init(&tb, G_VARIANT_TYPE("a{st}"));
    g_variant_builder_add(&tb, "{st}", "admission_ms", (guint64)t->admission_ms);
    g_variant_builder_add(&tb, "{st}", "setup_ms", (guint64)t->setup_ms);
    g_variant_builder_add(&tb, "{st}", "boot_ms", (guint64)t->boot_ms);
    g_variant_builder_add(&tb, "{st}", "restore_ms", (guint64)t->restore_ms);
    sbx_dbus_scheduler1_session_set_start_timing(e->skeleton, g_variant_builder_end(&tb));
    sbx_dbus_scheduler1_session_set_id(e->skeleton, sbx_session_get_id(session));
    if (c->detach) {
        unwatch_sender(self, c->sender);
    } else {
        e->owner_gone = g_steal_pointer(&c->cancellable); /* the watch ref is now the export's */
        e->owner_gone_id =
            g_signal_connect(e->owner_gone, "cancelled", G_CALLBACK(owner_gone_cb), e);
    }
    e->closed_id = g_signal_connect(session, "closed", G_CALLBACK(session_closed_cb), e);
    g_hash_table_insert(self->sessions, e->path, e);
    if (!g_dbus_interface_skeleton_export(G_DBUS_INTERFACE_SKELETON(e->skeleton),
                                          self->connection, e->path, &error)) {
        sbx_session_close(session, SBX_SESSION_CLOSED_SHUTDOWN);
        g_prefix_error(&error, "cannot export the session: ");
        g_dbus_method_invocation_return_gerror(c->invocation, error);
    } else {
        g_info("session %s created for %s (uid %u)", sbx_session_get_id(session), e->owner,
               e->owner_uid);
        sbx_dbus_scheduler1_complete_create_session(self->skeleton, c->invocation, e->path);
        if (e->owner_gone && g_cancellable_is_cancelled(e->owner_gone)) /* left while it booted */
            sbx_session_close(session, SBX_SESSION_CLOSED_OWNER_LEFT);
    }
    create_call_free(c);
    update_properties(self);
}

static void
creator_uid_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    CreateCall *c = user_data;
    SbxDBusAdapter *self = c->self;
    g_autoptr(GError) error = NULL;
    g_autoptr(GVariant) reply = g_dbus_connection_call_finish(G_DBUS_CONNECTION(source), res, &error);
    if (reply == NULL) {
        g_prefix_error(&error, "cannot tell the caller's uid: ");
        g_dbus_method_invocation_return_gerror(c->invocation, error);
        create_call_free(c);
        return;
    }
    g_variant_get(reply, "(u)", &c->uid);
    c->cancellable = watch_sender(self, c->sender);
    sbx_manager_create_session_async(self->manager, c->spec, c->idle_timeout_s, c->cancellable,
                                     session_created_cb, c);
    update_properties(self);
}

static gboolean
handle_create_session(SbxDBusScheduler1 *skeleton, GDBusMethodInvocation *invocation,
                      GVariant *arg_spec, gpointer user_data)
{
    SbxDBusAdapter *self = user_data;
    g_autoptr(GError) error = NULL;
    g_autoptr(SbxRunSpec) spec = sbx_run_spec_new(sbx_manager_get_config(self->manager));
    const char *sender = g_dbus_method_invocation_get_sender(invocation);
    guint32 idle = 0;
    gboolean detach = FALSE;

    /* "idle_timeout" and "detach" are the keys CreateSession has beyond Run's */
    GVariantBuilder rest;
    GVariantIter it;
    const char *key;
    GVariant *value;
    g_variant_builder_init(&rest, G_VARIANT_TYPE_VARDICT);
    g_variant_iter_init(&it, arg_spec);
    while (g_variant_iter_next(&it, "{&sv}", &key, &value)) {
        g_autoptr(GVariant) v = value;
        if (g_strcmp0(key, "idle_timeout") == 0) {
            if (!g_variant_is_of_type(v, G_VARIANT_TYPE_UINT32) || g_variant_get_uint32(v) < 1 ||
                g_variant_get_uint32(v) > 86400) {
                g_variant_builder_clear(&rest);
                g_dbus_method_invocation_return_error(
                    invocation, SBX_ERROR, SBX_ERROR_INVALID_INPUT,
                    "\"idle_timeout\" must be a u of 1..86400 seconds (got %s)",
                    g_variant_get_type_string(v));
                return TRUE;
            }
            idle = g_variant_get_uint32(v);
        } else if (g_strcmp0(key, "detach") == 0 && g_variant_is_of_type(v, G_VARIANT_TYPE_BOOLEAN)) {
            detach = g_variant_get_boolean(v);
        } else if (g_strcmp0(key, "code") != 0) {
            g_variant_builder_add(&rest, "{sv}", key, v);
        }
    }
    g_autoptr(GVariant) rest_v = g_variant_ref_sink(g_variant_builder_end(&rest));
    if (!sbx_run_spec_from_variant(spec, rest_v, &error) ||
        !sbx_run_spec_validate(spec, sbx_manager_get_config(self->manager), FALSE, &error)) {
        g_dbus_method_invocation_return_gerror(invocation, error);
        return TRUE;
    }
    if (sender == NULL) {
        g_dbus_method_invocation_return_error_literal(
            invocation, SBX_ERROR, SBX_ERROR_ACCESS_DENIED,
            "sessions need a message bus connection (the owner is identified by its uid)");
        return TRUE;
    }
    CreateCall *c = g_new0(CreateCall, 1);
    c->self = g_object_ref(self);
    c->invocation = invocation;
    c->sender = g_strdup(sender);
    c->spec = g_steal_pointer(&spec);
    c->idle_timeout_s = idle;
    c->detach = detach;
    self->n_calls++;
    g_dbus_connection_call(self->connection, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                           "org.freedesktop.DBus", "GetConnectionUnixUser",
                           g_variant_new("(s)", sender), G_VARIANT_TYPE("(u)"),
                           G_DBUS_CALL_FLAGS_NONE, -1, NULL, creator_uid_cb, c);
    return TRUE;
}

SbxDBusAdapter *
sbx_dbus_adapter_new(SbxManager *manager)
{
    SbxDBusAdapter *self = g_object_new(SBX_TYPE_DBUS_ADAPTER, NULL);
    self->manager = g_object_ref(manager);
    self->skeleton = sbx_dbus_scheduler1_skeleton_new();
    g_signal_connect(self->skeleton, "handle-run", G_CALLBACK(handle_run), self);
    g_signal_connect(self->skeleton, "handle-status", G_CALLBACK(handle_status), self);
    g_signal_connect(self->skeleton, "handle-doctor", G_CALLBACK(handle_doctor), self);
    g_signal_connect(self->skeleton, "handle-create-session", G_CALLBACK(handle_create_session),
                     self);
    return self;
}

gboolean
sbx_dbus_adapter_export(SbxDBusAdapter *self, GDBusConnection *connection, GError **error)
{
    sbx_error_register_dbus();
    self->connection = g_object_ref(connection);
    update_properties(self);
    return g_dbus_interface_skeleton_export(G_DBUS_INTERFACE_SKELETON(self->skeleton), connection,
                                            SBX_DBUS_PATH, error);
}

void
sbx_dbus_adapter_unexport(SbxDBusAdapter *self)
{
    if (self->connection)
        g_dbus_interface_skeleton_unexport(G_DBUS_INTERFACE_SKELETON(self->skeleton));
}

guint
sbx_dbus_adapter_get_n_calls(SbxDBusAdapter *self)
{
    return self->n_calls;
}

static void
sbx_dbus_adapter_dispose(GObject *object)
{
    SbxDBusAdapter *self = SBX_DBUS_ADAPTER(object);
    g_hash_table_remove_all(self->sessions); /* before the watches they hold */
    g_hash_table_remove_all(self->watches);
    if (self->skeleton)
        g_signal_handlers_disconnect_by_data(self->skeleton, self);
    g_clear_object(&self->skeleton);
    g_clear_object(&self->manager);
    g_clear_object(&self->connection);
    G_OBJECT_CLASS(sbx_dbus_adapter_parent_class)->dispose(object);
}

static void
sbx_dbus_adapter_finalize(GObject *object)
{
    SbxDBusAdapter *self = SBX_DBUS_ADAPTER(object);
    g_hash_table_unref(self->sessions);
    g_hash_table_unref(self->watches);
    G_OBJECT_CLASS(sbx_dbus_adapter_parent_class)->finalize(object);
}

static void
sbx_dbus_adapter_init(SbxDBusAdapter *self)
{
    self->watches = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)watch_free);
    self->sessions =
        g_hash_table_new_full(g_str_hash, g_str_equal, NULL, (GDestroyNotify)session_export_free);
}

static void
sbx_dbus_adapter_class_init(SbxDBusAdapterClass *klass)
{
    GObjectClass *oc = G_OBJECT_CLASS(klass);
    oc->dispose = sbx_dbus_adapter_dispose;
    oc->finalize = sbx_dbus_adapter_finalize;
}
