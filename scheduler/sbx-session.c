/* SPDX-License-Identifier: MIT
 *
 * sbx-session: a VM kept across several Exec calls. Holds the SbxVmLease the
 * manager hands over after booting (sbx-manager.c: same admission / work disk
 * / cgroup / boot path as a run), runs execs through the manager's streamed
 * exec path (sbx_manager_lease_exec_async), moves files with the guest agent
 * client (sbx-guest.h), and closes itself on its idle timeout, an exec that
 * ended with 137 (`retire`), or VM death (SbxVm "died"). Closing cancels every
 * call in flight and releases the lease (VM destroyed, admission released);
 * "closed" is emitted once after that. Knows nothing about D-Bus.
 */
#define G_LOG_DOMAIN "sbx-session"

#include "scheduler/sbx-session.h"

#include <string.h>

#include "scheduler/sbx-error.h"

struct _SbxSession {
    GObject parent_instance;
    SbxManager *mgr;   /* ref */
    SbxVmLease *lease; /* NULL once released */
    SbxVm *vm;         /* ref, for "died" and the guest client */
    SbxTimings start;
    char *id;
    SbxLanguage language;
    guint idle_timeout_s;
    guint idle_id;
    guint reclaim_id;          /* SBX_SESSION_RECLAIM_IDLE_S after the last call */
    guint busy;                /* calls in flight */
    char *close_reason;        /* non-NULL once closing */
    gboolean closed;           /* VM released, "closed" emitted */
    GCancellable *cancellable; /* cancelled when closing: ends calls in flight */
    gulong died_id;
    GQueue close_waiters; /* GTask */
};

enum { SIGNAL_CLOSED, N_SIGNALS };
static guint signals[N_SIGNALS];

G_DEFINE_FINAL_TYPE(SbxSession, sbx_session, G_TYPE_OBJECT)

const char *
sbx_session_describe_reason(const char *reason)
{
    if (g_strcmp0(reason, SBX_SESSION_CLOSED_BY_CALLER) == 0)
        return "it was closed (Close)";
    if (g_strcmp0(reason, SBX_SESSION_CLOSED_IDLE) == 0)
        return "it was idle for longer than its idle timeout";
    if (g_strcmp0(reason, SBX_SESSION_CLOSED_VM_DIED) == 0)
        return "its VM died";
    if (g_strcmp0(reason, SBX_SESSION_CLOSED_EXIT_137) == 0)
        return "code in it was killed with SIGKILL (exit 137: out of memory or kill -9), "
               "which retires the VM";
    if (g_strcmp0(reason, SBX_SESSION_CLOSED_OWNER_LEFT) == 0)
        return "the client that created it left the bus";
    if (g_strcmp0(reason, SBX_SESSION_CLOSED_SHUTDOWN) == 0)
        return "schedulerd is shutting down";
    return reason ? reason : "unknown reason";
}

static GError *
closed_error(SbxSession *self)
{
    return g_error_new(SBX_ERROR, SBX_ERROR_SESSION_CLOSED,
                       "session %s is closed: %s; create a new session", self->id,
                       sbx_session_describe_reason(self->close_reason));
}

/* ---- idle timer --------------------------------------------------------- */

/* After this long without a call the VM gives its spare memory back
 * (sbx_vm_give_back_memory: only VMs with the balloon, i.e. cold-booted). Not at
 * once after each exec: a quick next exec would re-read the dropped page cache. */
#define SBX_SESSION_RECLAIM_IDLE_S 5

static gboolean
reclaim_cb(gpointer user_data)
{
    SbxSession *self = user_data;
    self->reclaim_id = 0;
    sbx_vm_give_back_memory(self->vm);
    return G_SOURCE_REMOVE;
}

static gboolean
idle_cb(gpointer user_data)
{
    SbxSession *self = user_data;
    self->idle_id = 0;
    g_info("session %s: idle for %u s, closing", self->id, self->idle_timeout_s);
    sbx_session_close(self, SBX_SESSION_CLOSED_IDLE);
    return G_SOURCE_REMOVE;
}

static void
idle_stop(SbxSession *self)
{
    if (self->idle_id) {
        g_source_remove(self->idle_id);
        self->idle_id = 0;
    }
    g_clear_handle_id(&self->reclaim_id, g_source_remove);
}

static void
idle_restart(SbxSession *self)
{
    idle_stop(self);
    if (self->close_reason == NULL && self->busy == 0 && self->idle_timeout_s > 0)
        self->idle_id = g_timeout_add_seconds(self->idle_timeout_s, idle_cb, self);
    if (self->close_reason == NULL && self->busy == 0 && sbx_vm_has_balloon(self->vm))
        self->reclaim_id = g_timeout_add_seconds(SBX_SESSION_RECLAIM_IDLE_S, reclaim_cb, self);
}

/* A call starts: refused once closing; no idle timeout while calls run. */
static gboolean
call_begin(SbxSession *self, GTask *task)
{
    if (self->close_reason) {
        g_task_return_error(task, closed_error(self));
        g_object_unref(task);
        return FALSE;
    }
    self->busy++;
    idle_stop(self);
    return TRUE;
}

static void
call_end(SbxSession *self)
{
    g_assert(self->busy > 0);
    self->busy--;
    idle_restart(self);
}

/* Guest-side failures as the scheduler's public errors. */
static GError *
map_error(SbxSession *self, GError *error, const char *path)
{
    SbxErrorCode code;
    g_autoptr(GError) e = error;
    if (e->domain == SBX_ERROR)
        return g_steal_pointer(&e);
    if (self->close_reason && (g_error_matches(e, G_IO_ERROR, G_IO_ERROR_CANCELLED) ||
                               g_error_matches(e, SBX_GUEST_ERROR, SBX_GUEST_ERROR_DISCONNECTED)))
        return closed_error(self);
    if (e->domain == SBX_VALIDATE_ERROR)
        code = SBX_ERROR_INVALID_INPUT;
    else if (e->domain == SBX_GUEST_ERROR) {
        switch ((SbxGuestError)e->code) {
        case SBX_GUEST_ERROR_INVALID_INPUT:
        case SBX_GUEST_ERROR_TOO_LARGE:
            code = SBX_ERROR_INVALID_INPUT;
            break;
        case SBX_GUEST_ERROR_NOT_FOUND:
            code = SBX_ERROR_NOT_FOUND;
            break;
        case SBX_GUEST_ERROR_DISCONNECTED:
            code = SBX_ERROR_OUTCOME_UNKNOWN;
            break;
        default:
            code = SBX_ERROR_TRANSIENT;
            break;
        }
    } else
        code = SBX_ERROR_TRANSIENT;
    if (path)
        return g_error_new(SBX_ERROR, code, "%s: %s", *path ? path : "(home directory)",
                           e->message);
    return g_error_new(SBX_ERROR, code, "%s", e->message);
}

static gboolean
check_path(const char *path, gboolean allow_root, GError **error)
{
    g_autoptr(GError) cause = NULL;
    if (!sbx_validate_path(path, strlen(path), allow_root, &cause)) {
        g_set_error(error, SBX_ERROR, SBX_ERROR_INVALID_INPUT, "bad guest path '%s': %s", path,
                    cause->message);
        return FALSE;
    }
    return TRUE;
}

/* ---- life cycle --------------------------------------------------------- */

static void
vm_died_cb(SbxVm *vm, const char *how, gpointer user_data)
{
    SbxSession *self = user_data;
    g_warning("session %s: VM %s died (%s)", self->id, sbx_vm_get_id(vm), how ? how : "?");
    sbx_session_close(self, SBX_SESSION_CLOSED_VM_DIED);
}

static void
warmed_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(SbxSession) self = user_data;
    g_autoptr(GError) error = NULL;
    /* only a head start for the first Exec: it starts the REPL itself if needed */
    if (!sbx_guest_warm_finish(SBX_GUEST(source), res, &error) && self->close_reason == NULL)
        g_debug("session %s: warming the %s REPL: %s", self->id,
                sbx_language_to_string(self->language), error->message);
}

SbxSession *
sbx_session_new(SbxManager *manager, SbxVmLease *lease, SbxLanguage language, guint idle_timeout_s)
{
    SbxSession *self = g_object_new(SBX_TYPE_SESSION, NULL);
    g_autofree char *uuid = g_uuid_string_random();
    GString *id = g_string_new(NULL);
    for (const char *p = uuid; *p; p++)
        if (*p != '-')
            g_string_append_c(id, *p);
    self->id = g_string_free(id, FALSE);
    self->mgr = g_object_ref(manager);
    self->lease = lease;
    self->vm = g_object_ref(sbx_vm_lease_get_vm(lease));
    self->start = *sbx_vm_lease_get_timings(lease);
    self->language = language;
    self->idle_timeout_s = idle_timeout_s;
    self->died_id = g_signal_connect(self->vm, "died", G_CALLBACK(vm_died_cb), self);
    idle_restart(self);
    /* start the session's interpreter while the caller uploads or types */
    if (language != SBX_LANGUAGE_RAW)
        sbx_guest_warm_async(sbx_vm_get_guest(self->vm), language, self->cancellable, warmed_cb,
                             g_object_ref(self));
    return self;
}

const char *
sbx_session_get_id(SbxSession *self)
{
    return self->id;
}

SbxLanguage
sbx_session_get_language(SbxSession *self)
{
    return self->language;
}

guint
sbx_session_get_idle_timeout_s(SbxSession *self)
{
    return self->idle_timeout_s;
}

const SbxTimings *
sbx_session_get_start_timings(SbxSession *self)
{
    return &self->start;
}

gboolean
sbx_session_is_closed(SbxSession *self)
{
    return self->close_reason != NULL;
}

const char *
sbx_session_get_close_reason(SbxSession *self)
{
    return self->close_reason;
}

static void
released_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(SbxSession) self = user_data;
    g_autoptr(GError) error = NULL;
    if (!sbx_manager_lease_release_finish(SBX_MANAGER(source), res, &error))
        g_warning("session %s: VM teardown incomplete: %s", self->id, error->message);
    self->closed = TRUE;
    g_info("session %s closed (%s)", self->id, self->close_reason);
    g_signal_emit(self, signals[SIGNAL_CLOSED], 0, self->close_reason);
    GTask *task;
    while ((task = g_queue_pop_head(&self->close_waiters)) != NULL) {
        g_task_return_boolean(task, TRUE);
        g_object_unref(task);
    }
}

void
sbx_session_close(SbxSession *self, const char *reason)
{
    if (self->close_reason)
        return;
    self->close_reason = g_strdup(reason);
    g_info("session %s: closing (%s)", self->id, reason);
    idle_stop(self);
    if (self->died_id) {
        g_signal_handler_disconnect(self->vm, self->died_id);
        self->died_id = 0;
    }
    g_cancellable_cancel(self->cancellable); /* calls in flight end */
    SbxVmLease *lease = g_steal_pointer(&self->lease);
    sbx_manager_lease_release_async(self->mgr, lease, released_cb, g_object_ref(self));
}

void
sbx_session_close_async(SbxSession *self, const char *reason, GAsyncReadyCallback callback,
                        gpointer user_data)
{
    GTask *task = g_task_new(self, NULL, callback, user_data);
    g_task_set_source_tag(task, sbx_session_close_async);
    if (self->close_reason) {
        g_task_return_error(task, closed_error(self));
        g_object_unref(task);
        return;
    }
    g_queue_push_tail(&self->close_waiters, task);
    sbx_session_close(self, reason);
}

gboolean
sbx_session_close_finish(SbxSession *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

/* ---- exec --------------------------------------------------------------- */

static void
exec_done_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GTask) task = user_data;
    SbxSession *self = g_task_get_source_object(task);
    GError *error = NULL;
    gboolean retire = FALSE;
    SbxRunResult *r = sbx_manager_lease_exec_finish(SBX_MANAGER(source), res, &retire, &error);

    call_end(self);
    if (r == NULL) {
        g_task_return_error(task, map_error(self, error, NULL));
        return;
    }
    g_task_return_pointer(task, r, (GDestroyNotify)sbx_run_result_free);
    if (retire) /* after the reply: the caller sees the 137 first */
        sbx_session_close(self, SBX_SESSION_CLOSED_EXIT_137);
}

void
sbx_session_exec_async(SbxSession *self, const SbxRunSpec *spec, GOutputStream *out,
                       GOutputStream *err, GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = g_task_new(self, NULL, callback, user_data);
    g_task_set_source_tag(task, sbx_session_exec_async);
    if (!call_begin(self, task))
        return;
    sbx_manager_lease_exec_async(self->mgr, self->lease, spec, out, err, self->cancellable,
                                 exec_done_cb, task);
}

SbxRunResult *
sbx_session_exec_finish(SbxSession *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), NULL);
    return g_task_propagate_pointer(G_TASK(result), error);
}

/* ---- files -------------------------------------------------------------- */

static void
file_done(GTask *task, gboolean ok, guint64 size, GError *error)
{
    SbxSession *self = g_task_get_source_object(task);
    call_end(self);
    if (!ok) {
        g_task_return_error(task, map_error(self, error, g_task_get_task_data(task)));
        return;
    }
    guint64 *boxed = g_new(guint64, 1);
    *boxed = size;
    g_task_return_pointer(task, boxed, g_free);
}

static gboolean
file_finish(SbxSession *self, GAsyncResult *result, guint64 *out_size, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    g_autofree guint64 *size = g_task_propagate_pointer(G_TASK(result), error);
    if (size == NULL)
        return FALSE;
    if (out_size)
        *out_size = *size;
    return TRUE;
}

/* Common start of a file call: task with the path as data, path check, call_begin. */
static GTask *
file_begin(SbxSession *self, const char *path, gboolean allow_root, gpointer tag,
           GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = g_task_new(self, NULL, callback, user_data);
    GError *error = NULL;
    g_task_set_source_tag(task, tag);
    g_task_set_task_data(task, g_strdup(path), g_free);
    if (!check_path(path, allow_root, &error)) {
        g_task_return_error(task, error);
        g_object_unref(task);
        return NULL;
    }
    if (!call_begin(self, task))
        return NULL;
    return task;
}

static void
wrote_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GTask) task = user_data;
    GError *error = NULL;
    guint64 size = 0;
    gboolean ok = sbx_guest_write_file_finish(SBX_GUEST(source), res, &size, &error);
    file_done(task, ok, size, error);
}

void
sbx_session_write_file_async(SbxSession *self, const char *path, GInputStream *source, guint mode,
                             GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = file_begin(self, path, FALSE, sbx_session_write_file_async, callback, user_data);
    if (task)
        sbx_guest_write_file_async(sbx_vm_get_guest(self->vm), path, source, mode,
                                   self->cancellable, wrote_cb, task);
}

gboolean
sbx_session_write_file_finish(SbxSession *self, GAsyncResult *result, guint64 *out_size,
                              GError **error)
{
    return file_finish(self, result, out_size, error);
}

static void
read_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GTask) task = user_data;
    GError *error = NULL;
    guint64 size = 0;
    gboolean ok = sbx_guest_read_file_finish(SBX_GUEST(source), res, &size, &error);
    file_done(task, ok, size, error);
}

void
sbx_session_read_file_async(SbxSession *self, const char *path, GOutputStream *dest,
                            GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = file_begin(self, path, FALSE, sbx_session_read_file_async, callback, user_data);
    if (task)
        sbx_guest_read_file_async(sbx_vm_get_guest(self->vm), path, dest, self->cancellable,
                                  read_cb, task);
}

gboolean
sbx_session_read_file_finish(SbxSession *self, GAsyncResult *result, guint64 *out_size,
                             GError **error)
{
    return file_finish(self, result, out_size, error);
}

static void
listed_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GTask) task = user_data;
    SbxSession *self = g_task_get_source_object(task);
    GError *error = NULL;
    GPtrArray *entries = sbx_guest_list_files_finish(SBX_GUEST(source), res, NULL, &error);
    call_end(self);
    if (entries == NULL) {
        g_task_return_error(task, map_error(self, error, g_task_get_task_data(task)));
        return;
    }
    g_task_return_pointer(task, entries, (GDestroyNotify)g_ptr_array_unref);
}

void
sbx_session_list_files_async(SbxSession *self, const char *path, GAsyncReadyCallback callback,
                             gpointer user_data)
{
    GTask *task = file_begin(self, path, TRUE, sbx_session_list_files_async, callback, user_data);
    if (task)
        sbx_guest_list_files_async(sbx_vm_get_guest(self->vm), path, self->cancellable, listed_cb,
                                   task);
}

GPtrArray *
sbx_session_list_files_finish(SbxSession *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), NULL);
    return g_task_propagate_pointer(G_TASK(result), error);
}

/* ---- GObject ------------------------------------------------------------ */

static void
sbx_session_dispose(GObject *object)
{
    SbxSession *self = SBX_SESSION(object);
    /* A session is disposed only after release (released_cb holds a ref
     * until then); a lease still held here would leak a VM. */
    g_warn_if_fail(self->lease == NULL);
    idle_stop(self);
    if (self->died_id) {
        g_signal_handler_disconnect(self->vm, self->died_id);
        self->died_id = 0;
    }
    g_cancellable_cancel(self->cancellable);
    g_clear_object(&self->vm);
    g_clear_object(&self->mgr);
    G_OBJECT_CLASS(sbx_session_parent_class)->dispose(object);
}

static void
sbx_session_finalize(GObject *object)
{
    SbxSession *self = SBX_SESSION(object);
    g_free(self->id);
    g_free(self->close_reason);
    g_clear_object(&self->cancellable);
    G_OBJECT_CLASS(sbx_session_parent_class)->finalize(object);
}

static void
sbx_session_init(SbxSession *self)
{
    self->cancellable = g_cancellable_new();
    g_queue_init(&self->close_waiters);
}

static void
sbx_session_class_init(SbxSessionClass *klass)
{
    GObjectClass *oc = G_OBJECT_CLASS(klass);
    oc->dispose = sbx_session_dispose;
    oc->finalize = sbx_session_finalize;
    signals[SIGNAL_CLOSED] = g_signal_new("closed", G_TYPE_FROM_CLASS(klass), G_SIGNAL_RUN_LAST, 0,
                                          NULL, NULL, NULL, G_TYPE_NONE, 1, G_TYPE_STRING);
}
