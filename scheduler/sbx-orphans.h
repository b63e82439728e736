/* SPDX-License-Identifier: MIT
 *
 * Crash safety: every live child (QEMU, qemu-storage-daemon, network helper)
 * is recorded as "<name>.pid" (pid + kernel start time, so a recycled pid is
 * never killed) in its run directory. A scheduler that starts after a crash
 * calls sbx_orphans_reap() on the runtime directory: it kills what its
 * predecessor left running and removes the files.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

gboolean sbx_orphans_record(const char *run_dir, const char *name, GPid pid, GError **error);
/* Remove the records of @run_dir (the children are known dead). */
void sbx_orphans_forget(const char *run_dir);
/* The kernel start time of @pid (clock ticks since boot), 0 if it is gone. */
guint64 sbx_orphans_pid_start_time(GPid pid);

/* Reap @parent_dir: every subdirectory (one per VM or helper) whose records
 * name processes still alive gets those killed (SIGKILL to the process group)
 * and is removed with its files. Returns one line per thing cleaned (owned). */
GPtrArray *sbx_orphans_reap(const char *parent_dir);

/* Per-VM names are "vm-<owner pid>-<serial>". Scan the cgroup @base_dirs for
 * such groups whose owner process is gone (and is not this process) and
 * return the distinct prefixes "vm-<pid>-" to sweep (owned strings). Groups of
 * a live scheduler -- another schedulerd, an embedded schedulerctl, a test --
 * sharing the same cgroup base are never included. */
GPtrArray *sbx_orphans_dead_owner_prefixes(GPtrArray *base_dirs);

G_END_DECLS
