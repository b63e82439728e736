/* SPDX-License-Identifier: MIT
 *
 * Per-VM cgroups written directly to cgroupfs (no systemd D-Bus): detection of
 * the host layout (cgroup v2, v1, or hybrid: v1 controllers plus a v2 tree for
 * process tracking), a delegated base group for the daemon, one group per VM
 * with memory / cpu / pids limits, stats, non-blocking teardown and an orphan
 * sweep. Where cgroups cannot be used the manager runs in NONE mode: groups are
 * inert, and get_reason() says why (log it once at startup).
 * See docs/cgroups.md.
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

typedef enum {
    SBX_CGROUP_MODE_NONE,   /* no usable cgroups: VMs run unconfined */
    SBX_CGROUP_MODE_V2,     /* every controller on the unified hierarchy */
    SBX_CGROUP_MODE_V1,     /* controllers on v1 hierarchies, no v2 tree used */
    SBX_CGROUP_MODE_HYBRID, /* controllers on v1 (or split), v2 tree also used */
} SbxCgroupMode;

typedef struct {
    /* Prefix for /proc/self/{mountinfo,cgroup} and every mount point; NULL = "/".
     * Unit tests point this at a fake tree. */
    const char *fs_root;
    /* Name of the daemon's base group under its own cgroup; NULL = "schedulerd". */
    const char *base_name;
    /* Use this cgroup path (relative to each hierarchy's root, e.g. "/schedulerd.slice")
     * instead of the daemon's own cgroup from /proc/self/cgroup. */
    const char *root_path;
    /* Do not use cgroups at all (mode NONE, reason "disabled by configuration"). */
    gboolean disable;
    /* Treat fs_root as a plain directory tree (tests): interface files are created
     * on write and removed before rmdir. Never set this on a real cgroupfs. */
    gboolean plain_fs;
    /* How long destroy keeps retrying before it fails with G_IO_ERROR_BUSY; 0 = 5000. */
    guint destroy_timeout_ms;
} SbxCgroupConfig;

typedef struct {
    guint64 mem_max;          /* bytes; 0 = no limit (memory.max / memory.limit_in_bytes) */
    guint64 mem_high;         /* bytes; 0 = none (memory.high / memory.soft_limit_in_bytes) */
    guint32 cpu_quota_millis; /* 1000 = one core; 0 = no limit (cpu.max / cfs_quota_us) */
    guint32 pids_max;         /* 0 = no limit (pids.max) */
} SbxCgroupLimits;

typedef struct {
    guint64 cpu_usage_ns;      /* cpuacct.usage (v1) or cpu.stat usage_usec (v2) */
    guint64 memory_peak_bytes; /* memory.max_usage_in_bytes / memory.peak, else the
                                  highest memory.current seen by read_stats */
    guint64 memory_current_bytes;
    guint64 nr_throttled;  /* cpu.stat nr_throttled */
    guint64 oom_kills;     /* memory.oom_control / memory.events oom_kill */
    guint64 pids_current;  /* pids.current */
    guint64 pids_max_hits; /* pids.events "max": forks refused by pids.max */
} SbxCgroupStats;

/* Controller bits for sbx_cgroup_manager_get_controllers(). */
#define SBX_CGROUP_CONTROLLER_MEMORY  (1u << 0)
#define SBX_CGROUP_CONTROLLER_CPU     (1u << 1)
#define SBX_CGROUP_CONTROLLER_CPUACCT (1u << 2) /* v1 only; v2 accounts cpu in cpu.stat */
#define SBX_CGROUP_CONTROLLER_PIDS    (1u << 3)

#define SBX_TYPE_CGROUP_MANAGER (sbx_cgroup_manager_get_type())
G_DECLARE_FINAL_TYPE(SbxCgroupManager, sbx_cgroup_manager, SBX, CGROUP_MANAGER, GObject)

#define SBX_TYPE_CGROUP (sbx_cgroup_get_type())
G_DECLARE_FINAL_TYPE(SbxCgroup, sbx_cgroup, SBX, CGROUP, GObject)

/* Detect the layout and create the base group(s). Unusable cgroups are not an error
 * (mode NONE + reason); only a bad explicit configuration (root_path) fails. */
SbxCgroupManager *sbx_cgroup_manager_new(const SbxCgroupConfig *cfg, GError **error);
SbxCgroupMode sbx_cgroup_manager_get_mode(SbxCgroupManager *self);
/* One line for the startup log: what is used where, or why nothing is. */
const char *sbx_cgroup_manager_get_reason(SbxCgroupManager *self);
/* SBX_CGROUP_CONTROLLER_* bits that limits are actually applied through. */
guint sbx_cgroup_manager_get_controllers(SbxCgroupManager *self);
/* The base directory in each hierarchy used (owned; empty in NONE mode). */
GPtrArray *sbx_cgroup_manager_dup_base_dirs(SbxCgroupManager *self);
const char *sbx_cgroup_mode_to_string(SbxCgroupMode mode);

/* Create `<base>/<name>` in every hierarchy and write @limits (NULL = none).
 * In NONE mode this returns an inert group (no procs files, no limits). */
SbxCgroup *sbx_cgroup_manager_create(SbxCgroupManager *self, const char *name,
                                     const SbxCgroupLimits *limits, GError **error);
/* The same in a worker thread (mkdir on cgroupfs can stall for milliseconds under
 * load): use this from the main loop. */
void sbx_cgroup_manager_create_async(SbxCgroupManager *self, const char *name,
                                     const SbxCgroupLimits *limits, GCancellable *cancellable,
                                     GAsyncReadyCallback callback, gpointer user_data);
SbxCgroup *sbx_cgroup_manager_create_finish(SbxCgroupManager *self, GAsyncResult *result,
                                            GError **error);

const char *sbx_cgroup_get_name(SbxCgroup *self);
/* The cgroup.procs path in EACH hierarchy (borrowed array of strings; empty in NONE
 * mode): pass every one to sbx_spawn_spec_add_cgroup() so the child joins them all
 * before exec. */
GPtrArray *sbx_cgroup_get_procs_files(SbxCgroup *self);
/* The group's directory in the hierarchy holding @controller (one SBX_CGROUP_CONTROLLER_*
 * bit), or NULL. Borrowed. */
const char *sbx_cgroup_get_dir(SbxCgroup *self, guint controller);
/* G_IO_ERROR_NOT_SUPPORTED in NONE mode. */
gboolean sbx_cgroup_read_stats(SbxCgroup *self, SbxCgroupStats *out, GError **error);
/* Only the two numbers a run's result carries (cpu_usage_ns, memory_peak_bytes
 * as in SbxCgroupStats): two file reads instead of read_stats' seven, on the
 * path between a run's end and its result. */
gboolean sbx_cgroup_read_usage(SbxCgroup *self, guint64 *out_cpu_ns,
                               guint64 *out_memory_peak_bytes, GError **error);

/* One non-blocking attempt: kill every process (cgroup.kill on v2, else SIGKILL each
 * pid of cgroup.procs) and remove the directories. G_IO_ERROR_BUSY while processes
 * remain: retry later (or use destroy_async). Idempotent once it has succeeded. */
gboolean sbx_cgroup_try_destroy(SbxCgroup *self, GError **error);
/* Run try_destroy in a worker thread, retried on a main-context timer until empty
 * (never sleeps); fails with G_IO_ERROR_BUSY after the configured timeout,
 * G_IO_ERROR_CANCELLED if cancelled. Do not call try_destroy while this runs. */
void sbx_cgroup_destroy_async(SbxCgroup *self, GCancellable *cancellable,
                              GAsyncReadyCallback callback, gpointer user_data);
gboolean sbx_cgroup_destroy_finish(SbxCgroup *self, GAsyncResult *result, GError **error);

/* Remove every per-VM group (`vm-*`, or every child when @prefix is "") left under the
 * base by a crashed predecessor, killing their processes first. Groups created by this
 * manager and still alive are skipped. Returns the names removed (owned, may be empty);
 * fails if any could not be removed (they stay for the next sweep). */
void sbx_cgroup_manager_sweep_orphans_async(SbxCgroupManager *self, const char *prefix,
                                            GCancellable *cancellable, GAsyncReadyCallback callback,
                                            gpointer user_data);
GPtrArray *sbx_cgroup_manager_sweep_orphans_finish(SbxCgroupManager *self, GAsyncResult *result,
                                                   GError **error);

G_END_DECLS
