/* SPDX-License-Identifier: MIT
 *
 * QsdDaemon: the one qemu-storage-daemon of a scheduler, started with a
 * socket-activated QMP fd (a socketpair end handed over before exec) and used
 * to create per-VM qcow2 overlays with blockdev-create instead of forking
 * qemu-img per VM. If the daemon dies it is restarted on next use, and the
 * restart is counted (and logged at warning by the caller that sees the error).
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

#define QSD_ERROR (qsd_error_quark())
GQuark qsd_error_quark(void);

typedef enum {
    QSD_ERROR_FAILED,   /* the daemon could not be started or answered an error */
    QSD_ERROR_DIED,     /* the daemon died while serving the request */
} QsdError;

#define QSD_TYPE_DAEMON (qsd_daemon_get_type())
G_DECLARE_FINAL_TYPE(QsdDaemon, qsd_daemon, QSD, DAEMON, GObject)

/* @binary: "qemu-storage-daemon" or a path. @cgroup_procs: cgroup.procs files the
 * daemon joins before exec (NULL-terminated, may be NULL). Nothing starts yet. */
QsdDaemon *qsd_daemon_new(const char *binary, const char *const *cgroup_procs);

/* Start (or restart after a death). Completes when QMP is negotiated. */
void qsd_daemon_start_async(QsdDaemon *self, GCancellable *cancellable,
                            GAsyncReadyCallback callback, gpointer user_data);
gboolean qsd_daemon_start_finish(QsdDaemon *self, GAsyncResult *result, GError **error);

gboolean qsd_daemon_is_running(QsdDaemon *self);
/* pid of the running daemon, 0 when none. */
GPid qsd_daemon_get_pid(QsdDaemon *self);
/* Times the daemon was found dead and started again. */
guint qsd_daemon_get_restarts(QsdDaemon *self);

/* Create @path as a qcow2 overlay over @backing (absolute path, format
 * @backing_format, virtual size = @size bytes). The node is removed from the
 * daemon again, so the file is free for QEMU to open. (Re)starts the daemon
 * when needed. */
void qsd_daemon_create_overlay_async(QsdDaemon *self, const char *path, const char *backing,
                                     const char *backing_format, guint64 size,
                                     GCancellable *cancellable, GAsyncReadyCallback callback,
                                     gpointer user_data);
gboolean qsd_daemon_create_overlay_finish(QsdDaemon *self, GAsyncResult *result, GError **error);

/* Ask the daemon to quit, SIGKILL it if it has not exited within @timeout_ms. */
void qsd_daemon_stop_async(QsdDaemon *self, guint timeout_ms, GCancellable *cancellable,
                           GAsyncReadyCallback callback, gpointer user_data);
gboolean qsd_daemon_stop_finish(QsdDaemon *self, GAsyncResult *result, GError **error);

G_END_DECLS
