/* SPDX-License-Identifier: MIT
 *
 * Shared helpers of the qmp/ integration tests (qmp-real-qemu.c,
 * qmp-real-qsd.c, qmp-dump.c): start a real QEMU binary through sbx-spawn
 * with its QMP monitor on one end of a socketpair passed as fd 3, connect a
 * QmpClient to the other end, drive the main loop until an async call is
 * done, and stop the child.
 */
#pragma once

#include "common/sbx-spawn.h"
#include "qmp/qmp-client.h"

G_BEGIN_DECLS

typedef struct {
    GAsyncResult *res;
    guint count;
} ItWait;

void it_wait_cb(GObject *source, GAsyncResult *res, gpointer data);
/* Iterate the default context until @w completed (fails the test after 60 s: a hang guard). */
void it_run_wait(ItWait *w);
void it_wait_clear(ItWait *w);
void it_run_until_flag(const gboolean *flag);

/* Full path of @name in PATH, or NULL. */
char *it_find_program(const char *name);

/* Spawn @spec (argv already set, without the monitor) with a QMP monitor on fd
 * 3: @monitor_args are appended with "%d" replaced by 3 ("-chardev",
 * "socket,id=qmp,fd=3", ...). Returns the child and a connected client. */
SbxChild *it_spawn_with_qmp(SbxSpawnSpec *spec, QmpClient **out_client, GError **error);

/* The QEMU monitor arguments for fd @fd with chardev id @id. */
void it_add_qemu_monitor(SbxSpawnSpec *spec, const char *id, int fd);
void it_add_qsd_monitor(SbxSpawnSpec *spec, const char *id, int fd);

/* Connect (handshake) synchronously from the test's point of view. */
gboolean it_connect(QmpClient *client, GError **error);
/* Execute and wait; returns the "return" node. */
JsonNode *it_execute(QmpClient *client, const char *command, JsonObject *args, GError **error);

/* Kill (SIGKILL) if still running and wait for the exit. */
void it_child_stop(SbxChild *child);
/* Wait for the child's exit (it must exit by itself). */
void it_child_wait(SbxChild *child);

G_END_DECLS
