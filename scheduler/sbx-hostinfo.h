/* SPDX-License-Identifier: MIT
 *
 * Host capacity and memory-pressure readers for admission control and the
 * startup probe. Every reader takes injectable roots (/proc, /sys, the cgroup
 * mount) so tests run against fake trees in a temporary directory.
 *
 * Capacity: the daemon's own cgroup limits when it is confined (v2 memory.max /
 * cpu.max / cpuset.cpus.effective, or on hybrid hosts the v1 memory.limit_in_bytes
 * / cpu.cfs_quota_us / cpuset.effective_cpus of the groups named in
 * /proc/self/cgroup, taking the smallest limit over the group and its
 * ancestors), else the machine (MemTotal, sys/devices/system/cpu/online).
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

typedef struct {
    const char *proc_root;   /* NULL: "/proc" */
    const char *sys_root;    /* NULL: "/sys" */
    const char *cgroup_root; /* NULL: "<sys_root>/fs/cgroup" */
} SbxHostRoots;

typedef struct {
    guint64 memory_bytes; /* usable host memory (machine or cgroup limit) */
    guint64 cpu_millis;   /* usable CPUs x 1000 (machine, cpuset or quota) */
    char *memory_source;  /* "machine", "cgroup-v2:<dir>", "cgroup-v1:<dir>", "override" */
    char *cpu_source;
    char *memory_usage_file; /* usage file of the limiting cgroup, or NULL */
} SbxHostCapacity;

void sbx_host_capacity_clear(SbxHostCapacity *cap);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(SbxHostCapacity, sbx_host_capacity_clear)

/* Reads the capacity. Fails only when the machine values themselves are
 * unreadable (no MemTotal, no CPU list). */
gboolean sbx_host_capacity_read(const SbxHostRoots *roots, SbxHostCapacity *out_cap,
                                GError **error);

/* A sample of the admission gates. Negative fields mean "unknown": the gate
 * that needs it is skipped. */
typedef struct {
    double psi_memory_full_avg10;  /* /proc/pressure/memory "full avg10", percent */
    gint64 memory_available_bytes; /* min(MemAvailable, cgroup limit - usage) */
} SbxHostPressure;

/* Parse the "full avg10=" value of a pressure file's contents; -1 when absent. */
double sbx_host_parse_psi_full_avg10(const char *contents);

/* Read /proc/pressure/memory and /proc/meminfo (and @cap's cgroup usage file
 * when the memory limit came from a cgroup). Never fails: unknown -> -1. */
void sbx_host_pressure_read(const SbxHostRoots *roots, const SbxHostCapacity *cap,
                            SbxHostPressure *out);

/* Helpers shared with the probe. */
char *sbx_host_path(const char *root, const char *def, const char *rel);
/* The path of @controller ("memory", "cpu", "pids", "" for v2) in
 * <proc>/self/cgroup, or NULL. */
char *sbx_host_self_cgroup_path(const SbxHostRoots *roots, const char *controller);
/* Directory of the v2 hierarchy under the cgroup root ("" or "unified"), or NULL. */
char *sbx_host_cgroup2_mount(const SbxHostRoots *roots);
/* Directory of a v1 controller's hierarchy, or NULL. */
char *sbx_host_cgroup1_mount(const SbxHostRoots *roots, const char *controller);
/* Count the CPUs of a list such as "0-3,8,10-11"; 0 when unparsable. */
guint sbx_host_parse_cpu_list(const char *list);
/* Read a whole small file, stripped; NULL when unreadable. */
char *sbx_host_read_small(const char *path);

G_END_DECLS
