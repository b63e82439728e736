/* SPDX-License-Identifier: MIT
 *
 * sbx-dbus: D-Bus adapter between the generated skeleton (data/, namespace
 * SbxDBus) and SbxManager. No scheduling logic lives here: validate, call the
 * manager's _async, reply; errors leave as registered names (sbx-error.c).
 */
#include "scheduler/sbx-dbus.h"

#include <gio/gunixfdlist.h>
#include <gio/gunixoutputstream.h>

#include "data/sbx-dbus-generated.h"
#include "scheduler/sbx-error.h"

#define SBX_DBUS_PATH "/org/schedulerd/Scheduler1"

struct _SbxDBusAdapter {
    GObject parent_instance;
    SbxManager *manager;
    SbxDBusScheduler1 *skeleton;
    GDBusConnection *connection;
    GHashTable *watches; /* sender -> Watch* */
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

static gboolean
handle_create_session(SbxDBusScheduler1 *skeleton, GDBusMethodInvocation *invocation,
                      GVariant *arg_spec, gpointer user_data)
{
    g_dbus_method_invocation_return_error_literal(
        invocation, G_DBUS_ERROR, G_DBUS_ERROR_NOT_SUPPORTED,
        "sessions are not available in this version of schedulerd; use Run");
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
    g_hash_table_unref(self->watches);
    G_OBJECT_CLASS(sbx_dbus_adapter_parent_class)->finalize(object);
}

static void
sbx_dbus_adapter_init(SbxDBusAdapter *self)
{
    self->watches = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)watch_free);
}

static void
sbx_dbus_adapter_class_init(SbxDBusAdapterClass *klass)
{
    GObjectClass *oc = G_OBJECT_CLASS(klass);
    oc->dispose = sbx_dbus_adapter_dispose;
    oc->finalize = sbx_dbus_adapter_finalize;
}
