/* SPDX-License-Identifier: MIT
 *
 * The one spawn helper for every child process (QEMU, qemu-storage-daemon,
 * network helpers, qemu-img). The caller creates sockets *before* the spawn
 * and hands them over as inherited fds at fixed numbers; the child is put in
 * its own process group and into the given cgroups before exec (so its first
 * allocations and threads are accounted); stdout+stderr are drained into a
 * bounded ring kept for diagnostics; death is observed through GLib's child
 * watch (no SIGCHLD handler, no waitpid(-1)).
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

#define SBX_SPAWN_ERROR (sbx_spawn_error_quark())
GQuark sbx_spawn_error_quark(void);

typedef enum {
    SBX_SPAWN_ERROR_FAILED,  /* exec or setup failed */
    SBX_SPAWN_ERROR_EXITED,  /* the child exited before the caller expected */
} SbxSpawnError;

typedef struct _SbxSpawnSpec SbxSpawnSpec;

SbxSpawnSpec *sbx_spawn_spec_new(void);
void sbx_spawn_spec_free(SbxSpawnSpec *spec);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SbxSpawnSpec, sbx_spawn_spec_free)

/* Append one argv element (printf-style for convenience). */
void sbx_spawn_spec_add_arg(SbxSpawnSpec *spec, const char *arg);
void sbx_spawn_spec_add_argf(SbxSpawnSpec *spec, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
void sbx_spawn_spec_add_args(SbxSpawnSpec *spec, const char *first, ...) G_GNUC_NULL_TERMINATED;
/* Takes ownership of @source_fd; the child sees it as @target_fd (>= 3). */
void sbx_spawn_spec_take_fd(SbxSpawnSpec *spec, int source_fd, int target_fd);
/* Join this cgroup (path to a `cgroup.procs` or `tasks` file) before exec. */
void sbx_spawn_spec_add_cgroup(SbxSpawnSpec *spec, const char *procs_file);
void sbx_spawn_spec_setenv(SbxSpawnSpec *spec, const char *name, const char *value);
/* Bytes of console output kept (stdout+stderr merged); 0 discards. Default 64 KiB. */
void sbx_spawn_spec_set_console_size(SbxSpawnSpec *spec, gsize bytes);
/* Kill the child with SIGKILL if this process dies (default TRUE). */
void sbx_spawn_spec_set_die_with_parent(SbxSpawnSpec *spec, gboolean die);
const char *const *sbx_spawn_spec_get_argv(SbxSpawnSpec *spec);

#define SBX_TYPE_CHILD (sbx_child_get_type())
G_DECLARE_FINAL_TYPE(SbxChild, sbx_child, SBX, CHILD, GObject)

/* Spawn. The spec's fds are consumed whether or not this succeeds. */
SbxChild *sbx_child_spawn(SbxSpawnSpec *spec, GError **error);

GPid sbx_child_get_pid(SbxChild *self);
const char *sbx_child_get_name(SbxChild *self);
gboolean sbx_child_has_exited(SbxChild *self);
/* Wait status as from waitpid(); valid after exit. */
int sbx_child_get_status(SbxChild *self);
/* Human text for the exit ("exited with status 1", "killed by signal 9"). */
char *sbx_child_describe_exit(SbxChild *self);

/* Signal the child's whole process group. No-op after exit. */
void sbx_child_kill(SbxChild *self, int signo);

/* Complete when the child has exited and been reaped. */
void sbx_child_wait_async(SbxChild *self, GCancellable *cancellable,
                          GAsyncReadyCallback callback, gpointer user_data);
gboolean sbx_child_wait_finish(SbxChild *self, GAsyncResult *result, GError **error);

/* The last console bytes (stdout+stderr), NUL-terminated copy. */
char *sbx_child_dup_console(SbxChild *self);
/* The last @n lines of the console. */
char *sbx_child_dup_console_tail(SbxChild *self, guint n);

G_END_DECLS
