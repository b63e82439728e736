/* SPDX-License-Identifier: MIT
 *
 * qsd-daemon: lifecycle of the scheduler's qemu-storage-daemon and qcow2
 * overlay creation through QMP blockdev-create. The daemon is spawned with
 * common/sbx-spawn (QMP on an inherited socketpair end, no socket path to poll)
 * and spoken to with qmp/ (QmpClient + typed wrappers). Used by the overlay
 * pool (qsd-overlay-pool.c).
 */
#include "qsd/qsd-daemon.h"

#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/sbx-fd.h"
#include "common/sbx-spawn.h"
#include "qmp/qmp-client.h"
#include "qmp/qmp-commands.h"

#define QSD_QMP_FD 3
#define QSD_CONNECT_TIMEOUT_MS 10000
#define QSD_JOB_TIMEOUT_MS 10000

G_DEFINE_QUARK(qsd-error-quark, qsd_error)

struct _QsdDaemon {
    GObject parent_instance;
    char *binary;
    GStrv cgroup_procs;
    SbxChild *child;
    QmpClient *qmp;
    gboolean running;
    gboolean starting;
    gboolean ever_started;
    gboolean stopping;
    guint restarts;
    guint64 next_node;
    GQueue start_waiters; /* GTask */
    GCancellable *cancellable;
};

G_DEFINE_FINAL_TYPE(QsdDaemon, qsd_daemon, G_TYPE_OBJECT)

QsdDaemon *
qsd_daemon_new(const char *binary, const char *const *cgroup_procs)
{
    QsdDaemon *self = g_object_new(QSD_TYPE_DAEMON, NULL);
    self->binary = g_strdup(binary);
    self->cgroup_procs = g_strdupv((char **)cgroup_procs);
    return self;
}

/* The QMP client fails its pending commands before it emits "closed", so a
 * command's error callback can run while self->running is still TRUE: the
 * monitor's own state is the truth. */
static gboolean
monitor_up(QsdDaemon *self)
{
    return self->running && self->qmp &&
           qmp_client_get_state(self->qmp) != QMP_CLIENT_STATE_CLOSED;
}

gboolean
qsd_daemon_is_running(QsdDaemon *self)
{
    return monitor_up(self);
}

GPid
qsd_daemon_get_pid(QsdDaemon *self)
{
    return self->child && !sbx_child_has_exited(self->child) ? sbx_child_get_pid(self->child) : 0;
}

guint
qsd_daemon_get_restarts(QsdDaemon *self)
{
    return self->restarts;
}

static void
finish_start_waiters(QsdDaemon *self, const GError *error)
{
    GTask *task;
    self->starting = FALSE;
    while ((task = g_queue_pop_head(&self->start_waiters)) != NULL) {
        if (error)
            g_task_return_error(task, g_error_copy(error));
        else
            g_task_return_boolean(task, TRUE);
        g_object_unref(task);
    }
}

/* Reentrant: closing the monitor fails its pending commands synchronously,
 * and their callbacks may start a new daemon (a pool refill retried) before
 * this returns. So the old monitor and child are detached from self first and
 * only then closed and killed: the new ones are never touched. */
static void
drop_process(QsdDaemon *self)
{
    g_autoptr(QmpClient) qmp = g_steal_pointer(&self->qmp);
    g_autoptr(SbxChild) child = g_steal_pointer(&self->child);
    self->running = FALSE;
    if (qmp) {
        g_signal_handlers_disconnect_by_data(qmp, self);
        qmp_client_close(qmp);
    }
    if (child)
        sbx_child_kill(child, SIGKILL);
}

static void
child_exited_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(QsdDaemon) self = user_data;
    SbxChild *child = SBX_CHILD(source);

    if (!sbx_child_wait_finish(child, res, NULL) || child != self->child)
        return; /* disposed, or an older process */
    g_autofree char *how = sbx_child_describe_exit(child);
    g_autofree char *tail = sbx_child_dup_console_tail(child, 5);
    g_debug("qemu-storage-daemon[%d] %s: %s", (int)sbx_child_get_pid(child), how, tail);
    if (self->starting) {
        g_autoptr(GError) error = g_error_new(QSD_ERROR, QSD_ERROR_FAILED,
                                              "qemu-storage-daemon %s while starting: %s", how, tail);
        drop_process(self);
        finish_start_waiters(self, error);
        return;
    }
    drop_process(self);
}

static void
qmp_closed_cb(QmpClient *qmp, const GError *reason, gpointer user_data)
{
    QsdDaemon *self = user_data;
    /* A monitor that went away means the daemon is unusable: kill it so the
     * next request starts a fresh one (unless it is quitting on request). */
    if (self->child && !self->stopping)
        sbx_child_kill(self->child, SIGKILL);
    self->running = FALSE;
}

static void
connect_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(QsdDaemon) self = user_data;
    g_autoptr(GError) error = NULL;

    if (!qmp_client_connect_finish(QMP_CLIENT(source), res, NULL, &error)) {
        if (QMP_CLIENT(source) != self->qmp)
            return;
        g_prefix_error(&error, "qemu-storage-daemon QMP handshake: ");
        drop_process(self);
        finish_start_waiters(self, error);
        return;
    }
    self->running = TRUE;
    if (self->ever_started)
        self->restarts++;
    self->ever_started = TRUE;
    finish_start_waiters(self, NULL);
}

static gboolean
spawn_daemon(QsdDaemon *self, GError **error)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "socketpair: %s", g_strerror(e));
        return FALSE;
    }
    g_auto(SbxFd) ours = sv[0];
    g_autoptr(SbxSpawnSpec) spec = sbx_spawn_spec_new();
    sbx_spawn_spec_add_args(spec, self->binary, "--chardev", NULL);
    sbx_spawn_spec_add_argf(spec, "socket,id=qmp,fd=%d", QSD_QMP_FD);
    sbx_spawn_spec_add_args(spec, "--monitor", "chardev=qmp", NULL);
    sbx_spawn_spec_take_fd(spec, sv[1], QSD_QMP_FD);
    for (guint i = 0; self->cgroup_procs && self->cgroup_procs[i]; i++)
        sbx_spawn_spec_add_cgroup(spec, self->cgroup_procs[i]);

    self->child = sbx_child_spawn(spec, error);
    if (self->child == NULL)
        return FALSE;
    sbx_child_wait_async(self->child, self->cancellable, child_exited_cb, g_object_ref(self));
    self->qmp = qmp_client_new_for_fd(sbx_steal_fd(&ours), error);
    if (self->qmp == NULL) {
        drop_process(self);
        return FALSE;
    }
    g_signal_connect(self->qmp, "closed", G_CALLBACK(qmp_closed_cb), self);
    qmp_client_connect_async(self->qmp, QSD_CONNECT_TIMEOUT_MS, self->cancellable, connect_cb,
                             g_object_ref(self));
    return TRUE;
}

void
qsd_daemon_start_async(QsdDaemon *self, GCancellable *cancellable, GAsyncReadyCallback callback,
                       gpointer user_data)
{
    g_autoptr(GTask) task = g_task_new(self, cancellable, callback, user_data);
    g_autoptr(GError) error = NULL;
    g_task_set_source_tag(task, qsd_daemon_start_async);

    if (monitor_up(self)) {
        g_task_return_boolean(task, TRUE);
        return;
    }
    g_debug("qemu-storage-daemon: start (%s)", self->starting ? "already starting" : "spawning");
    g_queue_push_tail(&self->start_waiters, g_object_ref(task));
    if (self->starting)
        return;
    self->starting = TRUE;
    self->stopping = FALSE;
    drop_process(self);
    if (!spawn_daemon(self, &error))
        finish_start_waiters(self, error);
}

gboolean
qsd_daemon_start_finish(QsdDaemon *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

/* ---- overlay creation -------------------------------------------------- */

typedef enum {
    OV_START,
    OV_CREATE_FILE,
    OV_ADD_FILE,
    OV_CREATE_QCOW2,
    OV_DEL_FILE,
} OverlayStep;

typedef struct {
    char *path;
    char *backing;
    char *backing_format;
    guint64 size;
    char *node;
    OverlayStep step;
    gboolean node_added;
    GError *error; /* first failure, kept while the node is removed again */
} OverlayData;

static void
overlay_data_free(OverlayData *d)
{
    g_free(d->path);
    g_free(d->backing);
    g_free(d->backing_format);
    g_free(d->node);
    g_clear_error(&d->error);
    g_free(d);
}

static void overlay_next(GTask *task);

static void
overlay_fail(GTask *task, GError *error)
{
    OverlayData *d = g_task_get_task_data(task);
    QsdDaemon *self = g_task_get_source_object(task);
    if (d->error == NULL) {
        d->error = error;
        if (!monitor_up(self))
            g_prefix_error(&d->error, "qemu-storage-daemon died: ");
    } else {
        g_error_free(error);
    }
    if (d->node_added && monitor_up(self) && d->step != OV_DEL_FILE) {
        d->step = OV_ADD_FILE; /* next: OV_DEL_FILE */
        d->node_added = FALSE;
        overlay_next(task);
        return;
    }
    (void)unlink(d->path);
    g_task_return_error(task, g_steal_pointer(&d->error));
    g_object_unref(task);
}

static void
overlay_step_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GTask *task = user_data;
    OverlayData *d = g_task_get_task_data(task);
    QmpClient *qmp = QMP_CLIENT(source);
    GError *error = NULL;
    gboolean ok = FALSE;

    switch (d->step) {
    case OV_START:
        break;
    case OV_CREATE_FILE:
    case OV_CREATE_QCOW2:
        ok = qmp_blockdev_create_run_finish(qmp, res, &error);
        break;
    case OV_ADD_FILE:
        ok = qmp_blockdev_add_finish(qmp, res, &error);
        d->node_added = ok;
        break;
    case OV_DEL_FILE:
        ok = qmp_blockdev_del_finish(qmp, res, &error);
        break;
    }
    if (!ok) {
        overlay_fail(task, error);
        return;
    }
    if (d->step == OV_DEL_FILE && d->error) {
        (void)unlink(d->path);
        g_task_return_error(task, g_steal_pointer(&d->error));
        g_object_unref(task);
        return;
    }
    overlay_next(task);
}

static void
overlay_next(GTask *task)
{
    QsdDaemon *self = g_task_get_source_object(task);
    OverlayData *d = g_task_get_task_data(task);
    GCancellable *cancellable = g_task_get_cancellable(task);
    g_autoptr(JsonObject) opts = json_object_new();
    g_autofree char *job = NULL;

    if (!monitor_up(self)) {
        overlay_fail(task, g_error_new(QSD_ERROR, QSD_ERROR_DIED,
                                       "qemu-storage-daemon is not running"));
        return;
    }
    switch (d->step) {
    case OV_START:
        d->step = OV_CREATE_FILE;
        job = g_strdup_printf("%s-file", d->node);
        json_object_set_string_member(opts, "driver", "file");
        json_object_set_string_member(opts, "filename", d->path);
        json_object_set_int_member(opts, "size", 0);
        qmp_blockdev_create_run_async(self->qmp, job, opts, QSD_JOB_TIMEOUT_MS, cancellable,
                                      overlay_step_cb, task);
        return;
    case OV_CREATE_FILE:
        d->step = OV_ADD_FILE;
        json_object_set_string_member(opts, "driver", "file");
        json_object_set_string_member(opts, "node-name", d->node);
        json_object_set_string_member(opts, "filename", d->path);
        qmp_blockdev_add_async(self->qmp, opts, cancellable, overlay_step_cb, task);
        return;
    case OV_ADD_FILE:
        if (d->error == NULL) {
            d->step = OV_CREATE_QCOW2;
            job = g_strdup_printf("%s-qcow2", d->node);
            json_object_set_string_member(opts, "driver", "qcow2");
            json_object_set_string_member(opts, "file", d->node);
            json_object_set_int_member(opts, "size", (gint64)d->size);
            json_object_set_string_member(opts, "backing-file", d->backing);
            json_object_set_string_member(opts, "backing-fmt", d->backing_format);
            json_object_set_boolean_member(opts, "lazy-refcounts", TRUE);
            qmp_blockdev_create_run_async(self->qmp, job, opts, QSD_JOB_TIMEOUT_MS, cancellable,
                                      overlay_step_cb, task);
            return;
        }
        G_GNUC_FALLTHROUGH;
    case OV_CREATE_QCOW2:
        d->step = OV_DEL_FILE;
        /* cleanup must run even if the caller cancelled */
        qmp_blockdev_del_async(self->qmp, d->node, NULL, overlay_step_cb, task);
        d->node_added = FALSE;
        return;
    case OV_DEL_FILE:
        g_task_return_boolean(task, TRUE);
        g_object_unref(task);
        return;
    }
}

static void
overlay_started_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GTask *task = user_data;
    GError *error = NULL;
    if (!qsd_daemon_start_finish(QSD_DAEMON(source), res, &error)) {
        OverlayData *d = g_task_get_task_data(task);
        (void)d;
        g_task_return_error(task, error);
        g_object_unref(task);
        return;
    }
    overlay_next(task);
}

void
qsd_daemon_create_overlay_async(QsdDaemon *self, const char *path, const char *backing,
                                const char *backing_format, guint64 size, GCancellable *cancellable,
                                GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = g_task_new(self, cancellable, callback, user_data);
    OverlayData *d = g_new0(OverlayData, 1);
    g_task_set_source_tag(task, qsd_daemon_create_overlay_async);
    d->path = g_strdup(path);
    d->backing = g_strdup(backing);
    d->backing_format = g_strdup(backing_format);
    d->size = size;
    d->node = g_strdup_printf("ovl%" G_GUINT64_FORMAT, ++self->next_node);
    d->step = OV_START;
    g_task_set_task_data(task, d, (GDestroyNotify)overlay_data_free);
    qsd_daemon_start_async(self, cancellable, overlay_started_cb, task);
}

gboolean
qsd_daemon_create_overlay_finish(QsdDaemon *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

/* ---- stop -------------------------------------------------------------- */

typedef struct {
    guint timer;
    SbxChild *child;
} StopData;

static void
stop_data_free(StopData *d)
{
    if (d->timer)
        g_source_remove(d->timer);
    g_clear_object(&d->child);
    g_free(d);
}

static gboolean
stop_timeout_cb(gpointer user_data)
{
    StopData *d = user_data;
    d->timer = 0;
    sbx_child_kill(d->child, SIGKILL);
    return G_SOURCE_REMOVE;
}

static void
stop_exited_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GTask) task = user_data;
    GError *error = NULL;
    if (!sbx_child_wait_finish(SBX_CHILD(source), res, &error)) {
        g_task_return_error(task, error);
        return;
    }
    g_task_return_boolean(task, TRUE);
}

static void
stop_quit_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    /* The reply may be lost when the daemon exits first: only its death counts. */
    (void)qmp_quit_finish(QMP_CLIENT(source), res, NULL);
}

void
qsd_daemon_stop_async(QsdDaemon *self, guint timeout_ms, GCancellable *cancellable,
                      GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = g_task_new(self, cancellable, callback, user_data);
    g_task_set_source_tag(task, qsd_daemon_stop_async);
    if (self->child == NULL || sbx_child_has_exited(self->child)) {
        drop_process(self);
        g_task_return_boolean(task, TRUE);
        g_object_unref(task);
        return;
    }
    StopData *d = g_new0(StopData, 1);
    d->child = g_object_ref(self->child);
    self->stopping = TRUE;
    g_task_set_task_data(task, d, (GDestroyNotify)stop_data_free);
    if (monitor_up(self))
        qmp_quit_async(self->qmp, NULL, stop_quit_cb, NULL);
    else
        sbx_child_kill(d->child, SIGKILL);
    d->timer = g_timeout_add(timeout_ms, stop_timeout_cb, d);
    self->running = FALSE;
    sbx_child_wait_async(d->child, NULL, stop_exited_cb, task);
}

gboolean
qsd_daemon_stop_finish(QsdDaemon *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    gboolean ok = g_task_propagate_boolean(G_TASK(result), error);
    drop_process(self);
    return ok;
}

static void
qsd_daemon_dispose(GObject *object)
{
    QsdDaemon *self = QSD_DAEMON(object);
    g_cancellable_cancel(self->cancellable);
    if (!g_queue_is_empty(&self->start_waiters)) {
        g_autoptr(GError) error =
            g_error_new_literal(G_IO_ERROR, G_IO_ERROR_CANCELLED, "storage daemon disposed");
        finish_start_waiters(self, error);
    }
    drop_process(self);
    G_OBJECT_CLASS(qsd_daemon_parent_class)->dispose(object);
}

static void
qsd_daemon_finalize(GObject *object)
{
    QsdDaemon *self = QSD_DAEMON(object);
    g_free(self->binary);
    g_strfreev(self->cgroup_procs);
    g_clear_object(&self->cancellable);
    G_OBJECT_CLASS(qsd_daemon_parent_class)->finalize(object);
}

static void
qsd_daemon_init(QsdDaemon *self)
{
    g_queue_init(&self->start_waiters);
    self->cancellable = g_cancellable_new();
}

static void
qsd_daemon_class_init(QsdDaemonClass *klass)
{
    GObjectClass *oc = G_OBJECT_CLASS(klass);
    oc->dispose = qsd_daemon_dispose;
    oc->finalize = qsd_daemon_finalize;
}
