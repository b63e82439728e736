/* SPDX-License-Identifier: MIT
 *
 * Host capacity and memory-pressure readers (see sbx-hostinfo.h). Used by
 * sbx-admission (budgets, PSI and available-memory gates) and sbx-probe
 * (cgroup pids.max). Only small procfs/cgroupfs reads: they never block, so
 * they are safe on the main loop.
 */
#define G_LOG_DOMAIN "sbx-hostinfo"

#include "scheduler/sbx-hostinfo.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* v1 reports "no limit" as a page-rounded LONG_MAX; anything this big is unlimited. */
#define UNLIMITED_THRESHOLD (G_GUINT64_CONSTANT(1) << 60)

char *
sbx_host_path(const char *root, const char *def, const char *rel)
{
    return g_build_filename(root ? root : def, rel, NULL);
}

static char *
cgroup_root(const SbxHostRoots *roots)
{
    if (roots && roots->cgroup_root)
        return g_strdup(roots->cgroup_root);
    return sbx_host_path(roots ? roots->sys_root : NULL, "/sys", "fs/cgroup");
}

static const char *
proc_root(const SbxHostRoots *roots)
{
    return roots && roots->proc_root ? roots->proc_root : "/proc";
}

static const char *
sys_root(const SbxHostRoots *roots)
{
    return roots && roots->sys_root ? roots->sys_root : "/sys";
}

char *
sbx_host_read_small(const char *path)
{
    g_autofree char *contents = NULL;

    if (!g_file_get_contents(path, &contents, NULL, NULL))
        return NULL;
    return g_strdup(g_strstrip(contents));
}

/* Parse an unsigned decimal; FALSE for anything else (including "max"). */
static gboolean
parse_u64(const char *s, guint64 *out)
{
    char *end = NULL;
    guint64 v;

    if (!s || !g_ascii_isdigit(*s))
        return FALSE;
    errno = 0;
    v = g_ascii_strtoull(s, &end, 10);
    if (errno != 0 || end == s)
        return FALSE;
    while (*end == ' ' || *end == '\n')
        end++;
    if (*end != '\0')
        return FALSE;
    *out = v;
    return TRUE;
}

/* "Key:   1234 kB" from meminfo, in bytes. */
static gboolean
meminfo_field(const char *meminfo, const char *key, guint64 *out)
{
    g_auto(GStrv) lines = g_strsplit(meminfo, "\n", -1);
    size_t klen = strlen(key);

    for (guint i = 0; lines[i]; i++) {
        if (strncmp(lines[i], key, klen) == 0 && lines[i][klen] == ':') {
            char *end = NULL;
            guint64 kb = g_ascii_strtoull(lines[i] + klen + 1, &end, 10);
            if (end == lines[i] + klen + 1)
                return FALSE;
            *out = kb * 1024;
            return TRUE;
        }
    }
    return FALSE;
}

guint
sbx_host_parse_cpu_list(const char *list)
{
    g_auto(GStrv) parts = NULL;
    guint n = 0;

    if (!list || !*list)
        return 0;
    parts = g_strsplit(list, ",", -1);
    for (guint i = 0; parts[i]; i++) {
        char *p = g_strstrip(parts[i]);
        char *end = NULL;
        guint64 lo, hi;

        if (!*p)
            continue;
        lo = g_ascii_strtoull(p, &end, 10);
        if (end == p)
            return 0;
        if (*end == '-') {
            char *s = end + 1;
            hi = g_ascii_strtoull(s, &end, 10);
            if (end == s || hi < lo)
                return 0;
        } else {
            hi = lo;
        }
        if (*end != '\0')
            return 0;
        n += (guint)(hi - lo + 1);
    }
    return n;
}

char *
sbx_host_self_cgroup_path(const SbxHostRoots *roots, const char *controller)
{
    g_autofree char *path = g_build_filename(proc_root(roots), "self/cgroup", NULL);
    g_autofree char *contents = NULL;
    g_auto(GStrv) lines = NULL;

    if (!g_file_get_contents(path, &contents, NULL, NULL))
        return NULL;
    lines = g_strsplit(contents, "\n", -1);
    for (guint i = 0; lines[i]; i++) {
        g_auto(GStrv) f = g_strsplit(lines[i], ":", 3);
        if (g_strv_length(f) != 3)
            continue;
        if (*controller == '\0') {
            if (strcmp(f[0], "0") == 0 && f[1][0] == '\0')
                return g_strdup(f[2]);
            continue;
        }
        {
            g_auto(GStrv) ctrls = g_strsplit(f[1], ",", -1);
            if (g_strv_contains((const char *const *)ctrls, controller))
                return g_strdup(f[2]);
        }
    }
    return NULL;
}

char *
sbx_host_cgroup2_mount(const SbxHostRoots *roots)
{
    g_autofree char *root = cgroup_root(roots);
    g_autofree char *pure = g_build_filename(root, "cgroup.controllers", NULL);
    g_autofree char *hybrid = g_build_filename(root, "unified", "cgroup.controllers", NULL);

    if (g_file_test(pure, G_FILE_TEST_EXISTS))
        return g_strdup(root);
    if (g_file_test(hybrid, G_FILE_TEST_EXISTS))
        return g_build_filename(root, "unified", NULL);
    return NULL;
}

char *
sbx_host_cgroup1_mount(const SbxHostRoots *roots, const char *controller)
{
    g_autofree char *root = cgroup_root(roots);
    g_autofree char *direct = g_build_filename(root, controller, NULL);
    g_autoptr(GDir) dir = NULL;
    const char *name;

    if (g_file_test(direct, G_FILE_TEST_IS_DIR))
        return g_steal_pointer(&direct);
    dir = g_dir_open(root, 0, NULL);
    if (!dir)
        return NULL;
    while ((name = g_dir_read_name(dir))) {
        g_auto(GStrv) ctrls = g_strsplit(name, ",", -1);
        if (g_strv_contains((const char *const *)ctrls, controller))
            return g_build_filename(root, name, NULL);
    }
    return NULL;
}

/* Callback over the group directory and its ancestors up to the mount. */
typedef gboolean (*LevelFn)(const char *dir, gpointer data);

static void
walk_up(const char *mount, const char *rel, LevelFn fn, gpointer data)
{
    g_autofree char *dir = g_build_filename(mount, rel ? rel : "", NULL);
    size_t mlen = strlen(mount);

    while (strlen(dir) > mlen && g_str_has_suffix(dir, "/"))
        dir[strlen(dir) - 1] = '\0';

    for (;;) {
        char *slash;
        if (!fn(dir, data))
            return;
        if (strlen(dir) <= mlen)
            return;
        slash = strrchr(dir, '/');
        if (!slash || (size_t)(slash - dir) < mlen)
            return;
        *slash = '\0';
        if (strlen(dir) < mlen)
            return;
    }
}

typedef struct {
    const char *file;
    guint64 best; /* smallest limit seen */
    char *best_dir;
    guint64 period_best; /* cpu: quota*1000/period */
} LimitWalk;

static gboolean
mem_limit_level(const char *dir, gpointer data)
{
    LimitWalk *w = data;
    g_autofree char *p = g_build_filename(dir, w->file, NULL);
    g_autofree char *s = sbx_host_read_small(p);
    guint64 v;

    if (s && parse_u64(s, &v) && v < UNLIMITED_THRESHOLD && v < w->best) {
        w->best = v;
        g_free(w->best_dir);
        w->best_dir = g_strdup(dir);
    }
    return TRUE;
}

static gboolean
cpu2_limit_level(const char *dir, gpointer data)
{
    LimitWalk *w = data;
    g_autofree char *p = g_build_filename(dir, "cpu.max", NULL);
    g_autofree char *s = sbx_host_read_small(p);
    g_auto(GStrv) f = NULL;
    guint64 quota, period;

    if (!s)
        return TRUE;
    f = g_strsplit(s, " ", -1);
    if (g_strv_length(f) == 2 && parse_u64(f[0], &quota) && parse_u64(f[1], &period) &&
        period > 0) {
        guint64 millis = quota * 1000 / period;
        if (millis < w->best) {
            w->best = millis;
            g_free(w->best_dir);
            w->best_dir = g_strdup(dir);
        }
    }
    return TRUE;
}

static gboolean
cpu1_limit_level(const char *dir, gpointer data)
{
    LimitWalk *w = data;
    g_autofree char *qp = g_build_filename(dir, "cpu.cfs_quota_us", NULL);
    g_autofree char *pp = g_build_filename(dir, "cpu.cfs_period_us", NULL);
    g_autofree char *qs = sbx_host_read_small(qp);
    g_autofree char *ps = sbx_host_read_small(pp);
    guint64 quota, period;

    /* "-1" fails parse_u64: unlimited at this level. */
    if (qs && ps && parse_u64(qs, &quota) && parse_u64(ps, &period) && period > 0) {
        guint64 millis = quota * 1000 / period;
        if (millis < w->best) {
            w->best = millis;
            g_free(w->best_dir);
            w->best_dir = g_strdup(dir);
        }
    }
    return TRUE;
}

void
sbx_host_capacity_clear(SbxHostCapacity *cap)
{
    g_clear_pointer(&cap->memory_source, g_free);
    g_clear_pointer(&cap->cpu_source, g_free);
    g_clear_pointer(&cap->memory_usage_file, g_free);
    cap->memory_bytes = 0;
    cap->cpu_millis = 0;
}

static void
apply_mem_limit(SbxHostCapacity *cap, const char *mount, const char *rel, const char *limit_file,
                const char *usage_file, const char *kind)
{
    LimitWalk w = {.file = limit_file, .best = cap->memory_bytes};

    walk_up(mount, rel, mem_limit_level, &w);
    if (w.best_dir && w.best < cap->memory_bytes) {
        cap->memory_bytes = w.best;
        g_free(cap->memory_source);
        cap->memory_source = g_strdup_printf("%s:%s", kind, w.best_dir);
        g_free(cap->memory_usage_file);
        cap->memory_usage_file = g_build_filename(w.best_dir, usage_file, NULL);
    }
    g_free(w.best_dir);
}

static void
apply_cpu_limit(SbxHostCapacity *cap, const char *mount, const char *rel, LevelFn fn,
                const char *kind)
{
    LimitWalk w = {.best = cap->cpu_millis};

    walk_up(mount, rel, fn, &w);
    if (w.best_dir && w.best < cap->cpu_millis) {
        cap->cpu_millis = w.best;
        g_free(cap->cpu_source);
        cap->cpu_source = g_strdup_printf("%s:%s", kind, w.best_dir);
    }
    g_free(w.best_dir);
}

static void
apply_cpuset(SbxHostCapacity *cap, const char *dir, const char *file, const char *kind)
{
    g_autofree char *p = g_build_filename(dir, file, NULL);
    g_autofree char *s = sbx_host_read_small(p);
    guint n = sbx_host_parse_cpu_list(s);

    if (n > 0 && (guint64)n * 1000 < cap->cpu_millis) {
        cap->cpu_millis = (guint64)n * 1000;
        g_free(cap->cpu_source);
        cap->cpu_source = g_strdup_printf("%s-cpuset:%s", kind, dir);
    }
}

gboolean
sbx_host_capacity_read(const SbxHostRoots *roots, SbxHostCapacity *out_cap, GError **error)
{
    g_auto(SbxHostCapacity) cap = {0};
    g_autofree char *meminfo_path = g_build_filename(proc_root(roots), "meminfo", NULL);
    g_autofree char *online_path =
        g_build_filename(sys_root(roots), "devices/system/cpu/online", NULL);
    g_autofree char *meminfo = NULL;
    g_autofree char *online = NULL;
    g_autofree char *v2 = NULL;
    guint ncpu;

    if (!g_file_get_contents(meminfo_path, &meminfo, NULL, error))
        return FALSE;
    if (!meminfo_field(meminfo, "MemTotal", &cap.memory_bytes)) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "%s has no MemTotal", meminfo_path);
        return FALSE;
    }
    online = sbx_host_read_small(online_path);
    ncpu = sbx_host_parse_cpu_list(online);
    if (ncpu == 0) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "cannot read the CPU list from %s",
                    online_path);
        return FALSE;
    }
    cap.cpu_millis = (guint64)ncpu * 1000;
    cap.memory_source = g_strdup("machine");
    cap.cpu_source = g_strdup("machine");

    /* cgroup v2 (pure, or the "unified" hierarchy of a hybrid host: there it
     * usually has no controllers and so no limit files, which is fine). */
    v2 = sbx_host_cgroup2_mount(roots);
    if (v2) {
        g_autofree char *rel = sbx_host_self_cgroup_path(roots, "");
        if (rel) {
            g_autofree char *leaf = g_build_filename(v2, rel, NULL);
            apply_mem_limit(&cap, v2, rel, "memory.max", "memory.current", "cgroup-v2");
            apply_cpu_limit(&cap, v2, rel, cpu2_limit_level, "cgroup-v2");
            apply_cpuset(&cap, leaf, "cpuset.cpus.effective", "cgroup-v2");
        }
    }
    /* cgroup v1 controllers. */
    {
        g_autofree char *mnt = sbx_host_cgroup1_mount(roots, "memory");
        g_autofree char *rel = sbx_host_self_cgroup_path(roots, "memory");
        if (mnt && rel)
            apply_mem_limit(&cap, mnt, rel, "memory.limit_in_bytes", "memory.usage_in_bytes",
                            "cgroup-v1");
    }
    {
        g_autofree char *mnt = sbx_host_cgroup1_mount(roots, "cpu");
        g_autofree char *rel = sbx_host_self_cgroup_path(roots, "cpu");
        if (mnt && rel)
            apply_cpu_limit(&cap, mnt, rel, cpu1_limit_level, "cgroup-v1");
    }
    {
        g_autofree char *mnt = sbx_host_cgroup1_mount(roots, "cpuset");
        g_autofree char *rel = sbx_host_self_cgroup_path(roots, "cpuset");
        if (mnt && rel) {
            g_autofree char *leaf = g_build_filename(mnt, rel, NULL);
            apply_cpuset(&cap, leaf, "cpuset.effective_cpus", "cgroup-v1");
        }
    }

    *out_cap = cap;
    memset(&cap, 0, sizeof cap);
    return TRUE;
}

double
sbx_host_parse_psi_full_avg10(const char *contents)
{
    g_auto(GStrv) lines = NULL;

    if (!contents)
        return -1;
    lines = g_strsplit(contents, "\n", -1);
    for (guint i = 0; lines[i]; i++) {
        const char *p;
        char *end = NULL;
        double v;

        if (!g_str_has_prefix(lines[i], "full "))
            continue;
        p = strstr(lines[i], "avg10=");
        if (!p)
            return -1;
        p += strlen("avg10=");
        v = g_ascii_strtod(p, &end);
        if (end == p || v < 0)
            return -1;
        return v;
    }
    return -1;
}

void
sbx_host_pressure_read(const SbxHostRoots *roots, const SbxHostCapacity *cap, SbxHostPressure *out)
{
    g_autofree char *psi_path = g_build_filename(proc_root(roots), "pressure/memory", NULL);
    g_autofree char *meminfo_path = g_build_filename(proc_root(roots), "meminfo", NULL);
    g_autofree char *psi = NULL;
    g_autofree char *meminfo = NULL;
    guint64 avail;

    out->psi_memory_full_avg10 = -1;
    out->memory_available_bytes = -1;
    if (g_file_get_contents(psi_path, &psi, NULL, NULL))
        out->psi_memory_full_avg10 = sbx_host_parse_psi_full_avg10(psi);
    if (g_file_get_contents(meminfo_path, &meminfo, NULL, NULL) &&
        meminfo_field(meminfo, "MemAvailable", &avail))
        out->memory_available_bytes = (gint64)MIN(avail, (guint64)G_MAXINT64);
    if (cap && cap->memory_usage_file) {
        g_autofree char *s = sbx_host_read_small(cap->memory_usage_file);
        guint64 usage;
        if (s && parse_u64(s, &usage)) {
            gint64 left = usage >= cap->memory_bytes ? 0 : (gint64)(cap->memory_bytes - usage);
            if (out->memory_available_bytes < 0 || left < out->memory_available_bytes)
                out->memory_available_bytes = left;
        }
    }
}
