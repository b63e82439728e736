/* SPDX-License-Identifier: MIT
 *
 * Typed QMP command wrappers (see qmp-commands.h): each builds its
 * arguments with json-glib, calls qmp_client_execute_async() and checks the
 * reply's shape in _finish. The blockdev-create job runner at the end is
 * what qsd/ uses to create qcow2 overlays without forking qemu-img.
 */
#include "qmp/qmp-commands.h"
#include "qmp/qmp-parser.h"

static void
run(QmpClient *client, const char *command, JsonObject *args, GCancellable *cancellable,
    GAsyncReadyCallback callback, gpointer user_data)
{
    qmp_client_execute_async(client, command, args, QMP_TIMEOUT_DEFAULT, cancellable, callback,
                             user_data);
}

static gboolean
finish_void(QmpClient *client, GAsyncResult *result, GError **error)
{
    g_autoptr(JsonNode) ret = qmp_client_execute_finish(client, result, error);
    return ret != NULL;
}

/* The "return" object, or NULL with QMP_ERROR_PROTOCOL if it is not one. */
static JsonObject *
finish_object(QmpClient *client, GAsyncResult *result, const char *command, GError **error)
{
    g_autoptr(JsonNode) ret = qmp_client_execute_finish(client, result, error);
    if (ret == NULL)
        return NULL;
    if (!JSON_NODE_HOLDS_OBJECT(ret)) {
        g_set_error(error, QMP_ERROR, QMP_ERROR_PROTOCOL, "%s: reply is not an object", command);
        return NULL;
    }
    return json_node_dup_object(ret);
}

static gboolean
malformed(GError **error, const char *command)
{
    g_set_error(error, QMP_ERROR, QMP_ERROR_PROTOCOL, "%s: malformed reply", command);
    return FALSE;
}

#define VOID_COMMAND(fn, name)                                                                     \
    void fn##_async(QmpClient *client, GCancellable *cancellable, GAsyncReadyCallback callback,    \
                    gpointer user_data)                                                            \
    {                                                                                              \
        run(client, name, NULL, cancellable, callback, user_data);                                 \
    }                                                                                              \
    gboolean fn##_finish(QmpClient *client, GAsyncResult *result, GError **error)                  \
    {                                                                                              \
        return finish_void(client, result, error);                                                 \
    }

VOID_COMMAND(qmp_cont, "cont")
VOID_COMMAND(qmp_stop, "stop")
VOID_COMMAND(qmp_quit, "quit")
VOID_COMMAND(qmp_system_powerdown, "system_powerdown")

/* ---- query-status ---- */

void
qmp_query_status_async(QmpClient *client, GCancellable *cancellable, GAsyncReadyCallback callback,
                       gpointer user_data)
{
    run(client, "query-status", NULL, cancellable, callback, user_data);
}

char *
qmp_query_status_finish(QmpClient *client, GAsyncResult *result, gboolean *out_running,
                        GError **error)
{
    g_autoptr(JsonObject) ret = finish_object(client, result, "query-status", error);
    const char *status = ret ? qmp_json_peek_string(ret, "status") : NULL;
    gboolean running = FALSE;

    if (ret == NULL)
        return NULL;
    if (status == NULL || !qmp_json_get_bool(ret, "running", &running)) {
        malformed(error, "query-status");
        return NULL;
    }
    if (out_running)
        *out_running = running;
    return g_strdup(status);
}

/* ---- migration ---- */

void
qmp_query_migrate_async(QmpClient *client, GCancellable *cancellable, GAsyncReadyCallback callback,
                        gpointer user_data)
{
    run(client, "query-migrate", NULL, cancellable, callback, user_data);
}

char *
qmp_query_migrate_finish(QmpClient *client, GAsyncResult *result, JsonObject **out_info,
                         GError **error)
{
    g_autoptr(JsonObject) ret = finish_object(client, result, "query-migrate", error);
    const char *status;

    if (ret == NULL)
        return NULL;
    status = qmp_json_peek_string(ret, "status");
    if (status == NULL && json_object_has_member(ret, "status")) {
        malformed(error, "query-migrate");
        return NULL;
    }
    g_autofree char *copy = g_strdup(status ? status : "none");
    if (out_info)
        *out_info = g_steal_pointer(&ret);
    return g_steal_pointer(&copy);
}

void
qmp_migrate_set_capabilities_async(QmpClient *client, const char *const *names, gboolean state,
                                   GCancellable *cancellable, GAsyncReadyCallback callback,
                                   gpointer user_data)
{
    g_autoptr(JsonObject) args = json_object_new();
    JsonArray *caps = json_array_new();

    for (gsize i = 0; names && names[i]; i++) {
        JsonObject *cap = json_object_new();
        json_object_set_string_member(cap, "capability", names[i]);
        json_object_set_boolean_member(cap, "state", state);
        json_array_add_object_element(caps, cap);
    }
    json_object_set_array_member(args, "capabilities", caps);
    run(client, "migrate-set-capabilities", args, cancellable, callback, user_data);
}

gboolean
qmp_migrate_set_capabilities_finish(QmpClient *client, GAsyncResult *result, GError **error)
{
    return finish_void(client, result, error);
}

static void
run_with_string(QmpClient *client, const char *command, const char *member, const char *value,
                GCancellable *cancellable, GAsyncReadyCallback callback, gpointer user_data)
{
    g_autoptr(JsonObject) args = json_object_new();
    json_object_set_string_member(args, member, value);
    run(client, command, args, cancellable, callback, user_data);
}

void
qmp_migrate_async(QmpClient *client, const char *uri, GCancellable *cancellable,
                  GAsyncReadyCallback callback, gpointer user_data)
{
    run_with_string(client, "migrate", "uri", uri, cancellable, callback, user_data);
}

gboolean
qmp_migrate_finish(QmpClient *client, GAsyncResult *result, GError **error)
{
    return finish_void(client, result, error);
}

void
qmp_migrate_incoming_async(QmpClient *client, const char *uri, GCancellable *cancellable,
                           GAsyncReadyCallback callback, gpointer user_data)
{
    run_with_string(client, "migrate-incoming", "uri", uri, cancellable, callback, user_data);
}

gboolean
qmp_migrate_incoming_finish(QmpClient *client, GAsyncResult *result, GError **error)
{
    return finish_void(client, result, error);
}

/* ---- fd passing ---- */

void
qmp_getfd_async(QmpClient *client, int fd, const char *fdname, GCancellable *cancellable,
                GAsyncReadyCallback callback, gpointer user_data)
{
    g_autoptr(JsonObject) args = json_object_new();
    json_object_set_string_member(args, "fdname", fdname);
    qmp_client_execute_with_fd_async(client, "getfd", args, fd, QMP_TIMEOUT_DEFAULT, cancellable,
                                     callback, user_data);
}

gboolean
qmp_getfd_finish(QmpClient *client, GAsyncResult *result, GError **error)
{
    return finish_void(client, result, error);
}

void
qmp_closefd_async(QmpClient *client, const char *fdname, GCancellable *cancellable,
                  GAsyncReadyCallback callback, gpointer user_data)
{
    run_with_string(client, "closefd", "fdname", fdname, cancellable, callback, user_data);
}

gboolean
qmp_closefd_finish(QmpClient *client, GAsyncResult *result, GError **error)
{
    return finish_void(client, result, error);
}

void
qmp_add_fd_async(QmpClient *client, int fd, gint64 fdset_id, const char *opaque,
                 GCancellable *cancellable, GAsyncReadyCallback callback, gpointer user_data)
{
    g_autoptr(JsonObject) args = json_object_new();
    if (fdset_id >= 0)
        json_object_set_int_member(args, "fdset-id", fdset_id);
    if (opaque)
        json_object_set_string_member(args, "opaque", opaque);
    qmp_client_execute_with_fd_async(client, "add-fd", args, fd, QMP_TIMEOUT_DEFAULT, cancellable,
                                     callback, user_data);
}

gboolean
qmp_add_fd_finish(QmpClient *client, GAsyncResult *result, gint64 *out_fdset_id, gint64 *out_fd,
                  GError **error)
{
    g_autoptr(JsonObject) ret = finish_object(client, result, "add-fd", error);
    gint64 set, fd;

    if (ret == NULL)
        return FALSE;
    if (!qmp_json_get_int(ret, "fdset-id", &set) || !qmp_json_get_int(ret, "fd", &fd))
        return malformed(error, "add-fd");
    if (out_fdset_id)
        *out_fdset_id = set;
    if (out_fd)
        *out_fd = fd;
    return TRUE;
}

/* ---- block layer and jobs ---- */

void
qmp_blockdev_create_async(QmpClient *client, const char *job_id, JsonObject *options,
                          GCancellable *cancellable, GAsyncReadyCallback callback,
                          gpointer user_data)
{
    g_autoptr(JsonObject) args = json_object_new();
    json_object_set_string_member(args, "job-id", job_id);
    json_object_set_object_member(args, "options", json_object_ref(options));
    run(client, "blockdev-create", args, cancellable, callback, user_data);
}

gboolean
qmp_blockdev_create_finish(QmpClient *client, GAsyncResult *result, GError **error)
{
    return finish_void(client, result, error);
}

void
qmp_blockdev_add_async(QmpClient *client, JsonObject *options, GCancellable *cancellable,
                       GAsyncReadyCallback callback, gpointer user_data)
{
    run(client, "blockdev-add", options, cancellable, callback, user_data);
}

gboolean
qmp_blockdev_add_finish(QmpClient *client, GAsyncResult *result, GError **error)
{
    return finish_void(client, result, error);
}

void
qmp_blockdev_del_async(QmpClient *client, const char *node_name, GCancellable *cancellable,
                       GAsyncReadyCallback callback, gpointer user_data)
{
    run_with_string(client, "blockdev-del", "node-name", node_name, cancellable, callback,
                    user_data);
}

gboolean
qmp_blockdev_del_finish(QmpClient *client, GAsyncResult *result, GError **error)
{
    return finish_void(client, result, error);
}

void
qmp_query_jobs_async(QmpClient *client, GCancellable *cancellable, GAsyncReadyCallback callback,
                     gpointer user_data)
{
    run(client, "query-jobs", NULL, cancellable, callback, user_data);
}

JsonArray *
qmp_query_jobs_finish(QmpClient *client, GAsyncResult *result, GError **error)
{
    g_autoptr(JsonNode) ret = qmp_client_execute_finish(client, result, error);
    if (ret == NULL)
        return NULL;
    if (!JSON_NODE_HOLDS_ARRAY(ret)) {
        malformed(error, "query-jobs");
        return NULL;
    }
    return json_node_dup_array(ret);
}

void
qmp_job_dismiss_async(QmpClient *client, const char *job_id, GCancellable *cancellable,
                      GAsyncReadyCallback callback, gpointer user_data)
{
    run_with_string(client, "job-dismiss", "id", job_id, cancellable, callback, user_data);
}

gboolean
qmp_job_dismiss_finish(QmpClient *client, GAsyncResult *result, GError **error)
{
    return finish_void(client, result, error);
}

/* ---- misc ---- */

void
qmp_query_version_async(QmpClient *client, GCancellable *cancellable, GAsyncReadyCallback callback,
                        gpointer user_data)
{
    run(client, "query-version", NULL, cancellable, callback, user_data);
}

gboolean
qmp_query_version_finish(QmpClient *client, GAsyncResult *result, QmpVersion *out_version,
                         GError **error)
{
    g_autoptr(JsonObject) ret = finish_object(client, result, "query-version", error);
    JsonObject *qemu = ret ? qmp_json_peek_object(ret, "qemu") : NULL;
    QmpVersion v;

    if (ret == NULL)
        return FALSE;
    if (qemu == NULL || !qmp_json_get_int(qemu, "major", &v.major) ||
        !qmp_json_get_int(qemu, "minor", &v.minor) || !qmp_json_get_int(qemu, "micro", &v.micro))
        return malformed(error, "query-version");
    if (out_version)
        *out_version = v;
    return TRUE;
}

void
qmp_balloon_async(QmpClient *client, gint64 bytes, GCancellable *cancellable,
                  GAsyncReadyCallback callback, gpointer user_data)
{
    g_autoptr(JsonObject) args = json_object_new();
    json_object_set_int_member(args, "value", bytes);
    run(client, "balloon", args, cancellable, callback, user_data);
}

gboolean
qmp_balloon_finish(QmpClient *client, GAsyncResult *result, GError **error)
{
    return finish_void(client, result, error);
}

void
qmp_query_balloon_async(QmpClient *client, GCancellable *cancellable, GAsyncReadyCallback callback,
                        gpointer user_data)
{
    run(client, "query-balloon", NULL, cancellable, callback, user_data);
}

gboolean
qmp_query_balloon_finish(QmpClient *client, GAsyncResult *result, gint64 *out_actual,
                         GError **error)
{
    g_autoptr(JsonObject) ret = finish_object(client, result, "query-balloon", error);
    gint64 actual;

    if (ret == NULL)
        return FALSE;
    if (!qmp_json_get_int(ret, "actual", &actual))
        return malformed(error, "query-balloon");
    if (out_actual)
        *out_actual = actual;
    return TRUE;
}

/* ---- blockdev-create job runner ----
 *
 * The job may conclude before or after blockdev-create's own reply, so both
 * are waited for; the handlers are connected before the command is sent.
 * Every exit goes through job_run_done(), which disconnects everything once. */

typedef struct {
    QmpClient *client; /* borrowed: the task holds the reference */
    char *job_id;
    gulong event_handler;
    gulong closed_handler;
    GSource *timeout_source;
    GSource *cancel_source;
    gboolean started;   /* blockdev-create returned */
    gboolean concluded; /* JOB_STATUS_CHANGE concluded seen */
    gboolean querying;
    gboolean done;
    char *job_error; /* the job's "error" from query-jobs */
} JobRun;

static void
job_run_free(JobRun *job)
{
    g_free(job->job_id);
    g_free(job->job_error);
    g_free(job);
}

static void
job_run_done(GTask *task, GError *error)
{
    JobRun *job = g_task_get_task_data(task);

    if (job->done) {
        g_clear_error(&error);
        return;
    }
    job->done = TRUE;
    g_clear_signal_handler(&job->event_handler, job->client);
    g_clear_signal_handler(&job->closed_handler, job->client);
    if (job->timeout_source) {
        g_source_destroy(job->timeout_source);
        g_clear_pointer(&job->timeout_source, g_source_unref);
    }
    if (job->cancel_source) {
        g_source_destroy(job->cancel_source);
        g_clear_pointer(&job->cancel_source, g_source_unref);
    }
    if (error)
        g_task_return_error(task, error);
    else
        g_task_return_boolean(task, TRUE);
    g_object_unref(task); /* the operation's own reference */
}

static void
job_dismissed_cb(GObject *source, GAsyncResult *res, gpointer data)
{
    g_autoptr(GTask) task = data;
    JobRun *job = g_task_get_task_data(task);
    GError *error = NULL;

    if (!qmp_job_dismiss_finish(job->client, res, &error)) {
        job_run_done(task, error);
        return;
    }
    if (job->job_error)
        job_run_done(task,
                     g_error_new(QMP_ERROR, QMP_ERROR_JOB, "blockdev-create job %s failed: %s",
                                 job->job_id, job->job_error));
    else
        job_run_done(task, NULL);
}

static void
job_queried_cb(GObject *source, GAsyncResult *res, gpointer data)
{
    g_autoptr(GTask) task = data;
    JobRun *job = g_task_get_task_data(task);
    GError *error = NULL;
    g_autoptr(JsonArray) jobs = qmp_query_jobs_finish(job->client, res, &error);
    JsonObject *info = NULL;

    if (job->done) {
        g_clear_error(&error);
        return;
    }
    if (jobs == NULL) {
        job_run_done(task, error);
        return;
    }
    for (guint i = 0; i < json_array_get_length(jobs) && info == NULL; i++) {
        JsonNode *node = json_array_get_element(jobs, i);
        JsonObject *obj = JSON_NODE_HOLDS_OBJECT(node) ? json_node_get_object(node) : NULL;
        const char *id = obj ? qmp_json_peek_string(obj, "id") : NULL;
        if (id && g_str_equal(id, job->job_id))
            info = obj;
    }
    if (info == NULL) {
        job_run_done(task,
                     g_error_new(QMP_ERROR, QMP_ERROR_PROTOCOL,
                                 "job %s concluded but query-jobs does not list it", job->job_id));
        return;
    }
    if (json_object_has_member(info, "error")) {
        const char *text = qmp_json_peek_string(info, "error");
        job->job_error = g_strdup(text ? text : "(no description)");
    }
    qmp_job_dismiss_async(job->client, job->job_id, NULL, job_dismissed_cb, g_object_ref(task));
}

static void
job_maybe_query(GTask *task)
{
    JobRun *job = g_task_get_task_data(task);

    if (job->done || job->querying || !job->started || !job->concluded)
        return;
    job->querying = TRUE;
    qmp_query_jobs_async(job->client, NULL, job_queried_cb, g_object_ref(task));
}

static void
job_event_cb(QmpClient *client, const char *name, JsonObject *data, gint64 ts, gpointer user_data)
{
    GTask *task = user_data;
    JobRun *job = g_task_get_task_data(task);
    const char *id = qmp_json_peek_string(data, "id");
    const char *status = qmp_json_peek_string(data, "status");

    if (id && status && g_str_equal(id, job->job_id) && g_str_equal(status, "concluded")) {
        job->concluded = TRUE;
        job_maybe_query(task);
    }
}

static void
job_closed_cb(QmpClient *client, const GError *reason, gpointer user_data)
{
    GTask *task = user_data;
    JobRun *job = g_task_get_task_data(task);
    job_run_done(task, g_error_new(QMP_ERROR, QMP_ERROR_DISCONNECTED,
                                   "blockdev-create job %s: QMP connection closed", job->job_id));
}

static gboolean
job_timeout_cb(gpointer user_data)
{
    GTask *task = user_data;
    JobRun *job = g_task_get_task_data(task);
    job_run_done(task, g_error_new(QMP_ERROR, QMP_ERROR_TIMEOUT,
                                   "blockdev-create job %s did not conclude in time", job->job_id));
    return G_SOURCE_REMOVE;
}

static gboolean
job_cancel_cb(GCancellable *cancellable, gpointer user_data)
{
    GTask *task = user_data;
    job_run_done(task, g_error_new(G_IO_ERROR, G_IO_ERROR_CANCELLED, "blockdev-create cancelled"));
    return G_SOURCE_REMOVE;
}

static void
job_created_cb(GObject *source, GAsyncResult *res, gpointer data)
{
    g_autoptr(GTask) task = data;
    JobRun *job = g_task_get_task_data(task);
    GError *error = NULL;

    if (!qmp_blockdev_create_finish(job->client, res, &error) || job->done) {
        job_run_done(task, error);
        return;
    }
    job->started = TRUE;
    job_maybe_query(task);
}

void
qmp_blockdev_create_run_async(QmpClient *client, const char *job_id, JsonObject *options,
                              int timeout_ms, GCancellable *cancellable,
                              GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = g_task_new(client, cancellable, callback, user_data); /* owned until done */
    JobRun *job = g_new0(JobRun, 1);
    guint timeout = timeout_ms < 0 ? qmp_client_get_default_timeout(client) : (guint)timeout_ms;

    g_task_set_source_tag(task, qmp_blockdev_create_run_async);
    g_task_set_task_data(task, job, (GDestroyNotify)job_run_free);
    job->client = client;
    job->job_id = g_strdup(job_id);
    if (qmp_client_get_state(client) != QMP_CLIENT_STATE_RUNNING) {
        job_run_done(task, g_error_new(QMP_ERROR, QMP_ERROR_DISCONNECTED,
                                       "blockdev-create: QMP connection is not running"));
        return;
    }
    job->event_handler =
        g_signal_connect(client, "event::JOB_STATUS_CHANGE", G_CALLBACK(job_event_cb), task);
    job->closed_handler = g_signal_connect(client, "closed", G_CALLBACK(job_closed_cb), task);
    if (timeout > 0) {
        job->timeout_source = g_timeout_source_new(timeout);
        g_source_set_callback(job->timeout_source, job_timeout_cb, task, NULL);
        g_source_attach(job->timeout_source, g_task_get_context(task));
    }
    if (cancellable) {
        job->cancel_source = g_cancellable_source_new(cancellable);
        g_source_set_callback(job->cancel_source, (GSourceFunc)(void (*)(void))job_cancel_cb, task,
                              NULL);
        g_source_attach(job->cancel_source, g_task_get_context(task));
    }
    qmp_blockdev_create_async(client, job_id, options, NULL, job_created_cb, g_object_ref(task));
}

gboolean
qmp_blockdev_create_run_finish(QmpClient *client, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, client), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}
