/* SPDX-License-Identifier: MIT
 *
 * Typed wrappers over qmp_client_execute_async(), one pair per QMP command
 * the project uses. Each uses the client's default timeout; replies of the
 * wrong shape fail with QMP_ERROR_PROTOCOL, QEMU errors with
 * QMP_ERROR_COMMAND (class via qmp_error_get_class()).
 */
#pragma once

#include "qmp/qmp-client.h"

G_BEGIN_DECLS

#define QMP_DECLARE_VOID_FINISH(name)                                                              \
    gboolean name##_finish(QmpClient *client, GAsyncResult *result, GError **error)

/* query-status: the run state ("prelaunch", "running", "paused", ...). */
void qmp_query_status_async(QmpClient *client, GCancellable *cancellable,
                            GAsyncReadyCallback callback, gpointer user_data);
char *qmp_query_status_finish(QmpClient *client, GAsyncResult *result, gboolean *out_running,
                              GError **error);

void qmp_cont_async(QmpClient *client, GCancellable *cancellable, GAsyncReadyCallback callback,
                    gpointer user_data);
QMP_DECLARE_VOID_FINISH(qmp_cont);
void qmp_stop_async(QmpClient *client, GCancellable *cancellable, GAsyncReadyCallback callback,
                    gpointer user_data);
QMP_DECLARE_VOID_FINISH(qmp_stop);
void qmp_quit_async(QmpClient *client, GCancellable *cancellable, GAsyncReadyCallback callback,
                    gpointer user_data);
QMP_DECLARE_VOID_FINISH(qmp_quit);
void qmp_system_powerdown_async(QmpClient *client, GCancellable *cancellable,
                                GAsyncReadyCallback callback, gpointer user_data);
QMP_DECLARE_VOID_FINISH(qmp_system_powerdown);

/* query-migrate: the status ("none" when no migration ran); the whole reply in *out_info. */
void qmp_query_migrate_async(QmpClient *client, GCancellable *cancellable,
                             GAsyncReadyCallback callback, gpointer user_data);
char *qmp_query_migrate_finish(QmpClient *client, GAsyncResult *result, JsonObject **out_info,
                               GError **error);
/* migrate-set-capabilities: set every capability in @names to @state. */
void qmp_migrate_set_capabilities_async(QmpClient *client, const char *const *names, gboolean state,
                                        GCancellable *cancellable, GAsyncReadyCallback callback,
                                        gpointer user_data);
QMP_DECLARE_VOID_FINISH(qmp_migrate_set_capabilities);
void qmp_migrate_async(QmpClient *client, const char *uri, GCancellable *cancellable,
                       GAsyncReadyCallback callback, gpointer user_data);
QMP_DECLARE_VOID_FINISH(qmp_migrate);
void qmp_migrate_incoming_async(QmpClient *client, const char *uri, GCancellable *cancellable,
                                GAsyncReadyCallback callback, gpointer user_data);
QMP_DECLARE_VOID_FINISH(qmp_migrate_incoming);

/* getfd: pass @fd (borrowed) with SCM_RIGHTS, name it @fdname in QEMU. */
void qmp_getfd_async(QmpClient *client, int fd, const char *fdname, GCancellable *cancellable,
                     GAsyncReadyCallback callback, gpointer user_data);
QMP_DECLARE_VOID_FINISH(qmp_getfd);
void qmp_closefd_async(QmpClient *client, const char *fdname, GCancellable *cancellable,
                       GAsyncReadyCallback callback, gpointer user_data);
QMP_DECLARE_VOID_FINISH(qmp_closefd);
/* add-fd: pass @fd into fd set @fdset_id (< 0: a new set); @opaque may be NULL. */
void qmp_add_fd_async(QmpClient *client, int fd, gint64 fdset_id, const char *opaque,
                      GCancellable *cancellable, GAsyncReadyCallback callback, gpointer user_data);
gboolean qmp_add_fd_finish(QmpClient *client, GAsyncResult *result, gint64 *out_fdset_id,
                           gint64 *out_fd, GError **error);

/* blockdev-create: starts job @job_id (see qmp_blockdev_create_run_async). */
void qmp_blockdev_create_async(QmpClient *client, const char *job_id, JsonObject *options,
                               GCancellable *cancellable, GAsyncReadyCallback callback,
                               gpointer user_data);
QMP_DECLARE_VOID_FINISH(qmp_blockdev_create);
/* blockdev-add: @options are the BlockdevOptions ("driver", "node-name", ...). */
void qmp_blockdev_add_async(QmpClient *client, JsonObject *options, GCancellable *cancellable,
                            GAsyncReadyCallback callback, gpointer user_data);
QMP_DECLARE_VOID_FINISH(qmp_blockdev_add);
void qmp_blockdev_del_async(QmpClient *client, const char *node_name, GCancellable *cancellable,
                            GAsyncReadyCallback callback, gpointer user_data);
QMP_DECLARE_VOID_FINISH(qmp_blockdev_del);
/* query-jobs: the array of JobInfo objects (owned). */
void qmp_query_jobs_async(QmpClient *client, GCancellable *cancellable,
                          GAsyncReadyCallback callback, gpointer user_data);
JsonArray *qmp_query_jobs_finish(QmpClient *client, GAsyncResult *result, GError **error);
void qmp_job_dismiss_async(QmpClient *client, const char *job_id, GCancellable *cancellable,
                           GAsyncReadyCallback callback, gpointer user_data);
QMP_DECLARE_VOID_FINISH(qmp_job_dismiss);

void qmp_query_version_async(QmpClient *client, GCancellable *cancellable,
                             GAsyncReadyCallback callback, gpointer user_data);
gboolean qmp_query_version_finish(QmpClient *client, GAsyncResult *result, QmpVersion *out_version,
                                  GError **error);
/* balloon: target guest memory size in bytes. */
void qmp_balloon_async(QmpClient *client, gint64 bytes, GCancellable *cancellable,
                       GAsyncReadyCallback callback, gpointer user_data);
QMP_DECLARE_VOID_FINISH(qmp_balloon);
void qmp_query_balloon_async(QmpClient *client, GCancellable *cancellable,
                             GAsyncReadyCallback callback, gpointer user_data);
gboolean qmp_query_balloon_finish(QmpClient *client, GAsyncResult *result, gint64 *out_actual,
                                  GError **error);

/* Run blockdev-create as a whole: start job @job_id, wait for its
 * JOB_STATUS_CHANGE "concluded", read its result with query-jobs, dismiss it.
 * Fails with QMP_ERROR_JOB (the job's error text) if the job failed, with
 * QMP_ERROR_TIMEOUT after @timeout_ms (QMP_TIMEOUT_DEFAULT: the client's). */
void qmp_blockdev_create_run_async(QmpClient *client, const char *job_id, JsonObject *options,
                                   int timeout_ms, GCancellable *cancellable,
                                   GAsyncReadyCallback callback, gpointer user_data);
gboolean qmp_blockdev_create_run_finish(QmpClient *client, GAsyncResult *result, GError **error);

G_END_DECLS
