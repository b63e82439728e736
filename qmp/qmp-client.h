/* SPDX-License-Identifier: MIT
 *
 * QmpClient: an asynchronous QMP client on a connected UNIX stream socket
 * (QEMU or qemu-storage-daemon). States GREETING -> NEGOTIATING -> RUNNING
 * -> CLOSED; commands carry integer ids and complete by id (any number in
 * flight, bounded); events are the detailed "event" signal; "closed" is
 * emitted exactly once. No auto-reconnect. Everything runs in the
 * GMainContext that was thread-default when the client was created.
 */
#pragma once

#include <gio/gio.h>
#include <json-glib/json-glib.h>

#include "qmp/qmp-error.h"

G_BEGIN_DECLS

#define QMP_TYPE_CLIENT (qmp_client_get_type())
G_DECLARE_FINAL_TYPE(QmpClient, qmp_client, QMP, CLIENT, GObject)

typedef enum {
    QMP_CLIENT_STATE_GREETING,    /* waiting for {"QMP": ...} */
    QMP_CLIENT_STATE_NEGOTIATING, /* qmp_capabilities sent */
    QMP_CLIENT_STATE_RUNNING,     /* commands allowed, events delivered */
    QMP_CLIENT_STATE_CLOSED,      /* final */
} QmpClientState;

typedef struct {
    gint64 major;
    gint64 minor;
    gint64 micro;
} QmpVersion;

/* timeout_ms arguments: a positive number of milliseconds, QMP_TIMEOUT_NONE,
 * or QMP_TIMEOUT_DEFAULT (the client's default, see set_default_timeout). */
#define QMP_TIMEOUT_DEFAULT            (-1)
#define QMP_TIMEOUT_NONE               0
#define QMP_CLIENT_DEFAULT_TIMEOUT_MS  30000
#define QMP_CLIENT_DEFAULT_MAX_PENDING 64

/* Wrap a connected stream socket (a GUnixConnection for fd passing). */
QmpClient *qmp_client_new(GSocketConnection *connection);
/* Take ownership of a connected UNIX stream socket fd (closed on failure too). */
QmpClient *qmp_client_new_for_fd(int fd, GError **error);

/* Timeout used for QMP_TIMEOUT_DEFAULT (0: none). */
void qmp_client_set_default_timeout(QmpClient *self, guint timeout_ms);
guint qmp_client_get_default_timeout(QmpClient *self);
/* Commands in flight (including timed-out/cancelled ones whose reply is still owed). */
void qmp_client_set_max_pending(QmpClient *self, guint max_pending);
guint qmp_client_get_n_pending(QmpClient *self);
QmpClientState qmp_client_get_state(QmpClient *self);
/* Valid once the greeting arrived (NULL before). */
const QmpVersion *qmp_client_get_version(QmpClient *self);
const char *qmp_client_get_package(QmpClient *self);

/* Read the greeting, negotiate capabilities; completes when RUNNING. A
 * timeout, cancellation or failure closes the client. */
void qmp_client_connect_async(QmpClient *self, int timeout_ms, GCancellable *cancellable,
                              GAsyncReadyCallback callback, gpointer user_data);
gboolean qmp_client_connect_finish(QmpClient *self, GAsyncResult *result, QmpVersion *out_version,
                                   GError **error);

/* Run @command with optional @arguments (the object is referenced, not
 * copied: do not modify it afterwards). On timeout or cancellation the task
 * fails (QMP_ERROR_TIMEOUT / G_IO_ERROR_CANCELLED) and the late reply is
 * swallowed. */
void qmp_client_execute_async(QmpClient *self, const char *command, JsonObject *arguments,
                              int timeout_ms, GCancellable *cancellable,
                              GAsyncReadyCallback callback, gpointer user_data);
/* Same, passing @fd (borrowed; duplicated) with SCM_RIGHTS in the same
 * sendmsg() as the command bytes (for getfd / add-fd). */
void qmp_client_execute_with_fd_async(QmpClient *self, const char *command, JsonObject *arguments,
                                      int fd, int timeout_ms, GCancellable *cancellable,
                                      GAsyncReadyCallback callback, gpointer user_data);
/* The "return" member (owned), or NULL with an error. */
JsonNode *qmp_client_execute_finish(QmpClient *self, GAsyncResult *result, GError **error);

/* Close now: pending commands fail with QMP_ERROR_DISCONNECTED, "closed" is
 * emitted (once). Idempotent. */
void qmp_client_close(QmpClient *self);

/* Signals:
 *   "event" (detailed by event name, e.g. "event::SHUTDOWN"):
 *       void (QmpClient *, const char *name, JsonObject *data, gint64 timestamp_us)
 *       data is never NULL (empty object when the event has none).
 *   "closed": void (QmpClient *, const GError *reason)   reason NULL on qmp_client_close()
 *       Emitted once, when the connection ends (EOF, I/O or protocol error, timeout of
 *       the handshake, qmp_client_close()); not when the last reference is dropped
 *       without a close (the socket is closed silently then).
 *
 * Lifetime: every pending command's GTask holds a reference to the client, so
 * it lives until its commands completed; qmp_client_close() ends them early.
 */

G_END_DECLS
