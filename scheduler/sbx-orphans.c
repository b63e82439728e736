/* SPDX-License-Identifier: MIT
 *
 * sbx-orphans: pid records in run directories and the reaper that a restarted
 * scheduler runs once at startup (before it serves anything). Used by sbx-vm
 * (records) and sbx-manager (reap at start).
 */
#define G_LOG_DOMAIN "sbx-orphans"

#include "scheduler/sbx-orphans.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

guint64
sbx_orphans_pid_start_time(GPid pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/stat", (int)pid);
    g_autofree char *stat = NULL;
    if (!g_file_get_contents(path, &stat, NULL, NULL))
        return 0;
    const char *p = strrchr(stat, ')');
    if (p == NULL)
        return 0;
    /* fields after the command: state(3) ... starttime(22) */
    g_auto(GStrv) fields = g_strsplit(p + 2, " ", 0);
    if (g_strv_length(fields) < 20)
        return 0;
    return g_ascii_strtoull(fields[19], NULL, 10);
}

gboolean
sbx_orphans_record(const char *run_dir, const char *name, GPid pid, GError **error)
{
    g_autofree char *path = g_strdup_printf("%s/%s.pid", run_dir, name);
    g_autofree char *text =
        g_strdup_printf("%d %" G_GUINT64_FORMAT "\n", (int)pid, sbx_orphans_pid_start_time(pid));
    if (!g_file_set_contents(path, text, -1, error)) {
        g_prefix_error(error, "recording %s: ", name);
        return FALSE;
    }
    return TRUE;
}

void
sbx_orphans_forget(const char *run_dir)
{
    g_autoptr(GDir) d = g_dir_open(run_dir, 0, NULL);
    const char *name;
    while (d && (name = g_dir_read_name(d)) != NULL) {
        if (g_str_has_suffix(name, ".pid")) {
            g_autofree char *p = g_build_filename(run_dir, name, NULL);
            (void)unlink(p);
        }
    }
}

static void
remove_tree(const char *dir)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *name;
    while (d && (name = g_dir_read_name(d)) != NULL) {
        g_autofree char *p = g_build_filename(dir, name, NULL);
        if (g_file_test(p, G_FILE_TEST_IS_DIR) && !g_file_test(p, G_FILE_TEST_IS_SYMLINK))
            remove_tree(p);
        else
            (void)unlink(p);
    }
    (void)rmdir(dir);
}

static void
reap_dir(const char *dir, const char *label, GPtrArray *out)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *name;
    gboolean killed_any = FALSE;
    while (d && (name = g_dir_read_name(d)) != NULL) {
        if (!g_str_has_suffix(name, ".pid"))
            continue;
        g_autofree char *p = g_build_filename(dir, name, NULL);
        g_autofree char *text = NULL;
        long pid = 0;
        unsigned long long start = 0;
        if (!g_file_get_contents(p, &text, NULL, NULL) ||
            sscanf(text, "%ld %llu", &pid, &start) != 2 || pid <= 1)
            continue;
        if (start != 0 && sbx_orphans_pid_start_time((GPid)pid) == start) {
            /* the child leads its own process group */
            if (kill(-(pid_t)pid, SIGKILL) != 0)
                (void)kill((pid_t)pid, SIGKILL);
            g_ptr_array_add(out, g_strdup_printf("%s: killed %.*s[%ld]", label,
                                                 (int)(strlen(name) - 4), name, pid));
            killed_any = TRUE;
        }
    }
    if (!killed_any)
        g_ptr_array_add(out, g_strdup_printf("%s: removed stale files", label));
    remove_tree(dir);
}

GPtrArray *
sbx_orphans_reap(const char *parent_dir)
{
    GPtrArray *out = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GDir) d = g_dir_open(parent_dir, 0, NULL);
    const char *name;
    while (d && (name = g_dir_read_name(d)) != NULL) {
        g_autofree char *p = g_build_filename(parent_dir, name, NULL);
        if (g_file_test(p, G_FILE_TEST_IS_DIR) && !g_file_test(p, G_FILE_TEST_IS_SYMLINK))
            reap_dir(p, name, out);
    }
    return out;
}

/* "vm-<pid>-<serial>" -> pid, 0 when @name is not of that form. */
static pid_t
owner_pid(const char *name)
{
    if (!g_str_has_prefix(name, "vm-"))
        return 0;
    char *end = NULL;
    guint64 pid = g_ascii_strtoull(name + 3, &end, 10);
    if (end == name + 3 || *end != '-' || pid <= 1 || pid > G_MAXINT32)
        return 0;
    return (pid_t)pid;
}

GPtrArray *
sbx_orphans_dead_owner_prefixes(GPtrArray *base_dirs)
{
    GPtrArray *out = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GHashTable) seen = g_hash_table_new(g_direct_hash, g_direct_equal);
    for (guint i = 0; base_dirs && i < base_dirs->len; i++) {
        g_autoptr(GDir) d = g_dir_open(g_ptr_array_index(base_dirs, i), 0, NULL);
        const char *name;
        while (d && (name = g_dir_read_name(d)) != NULL) {
            pid_t pid = owner_pid(name);
            if (pid == 0 || pid == getpid() ||
                g_hash_table_contains(seen, GINT_TO_POINTER(pid)))
                continue;
            g_hash_table_add(seen, GINT_TO_POINTER(pid));
            /* alive (or not ours to signal): its owner still manages it */
            if (kill(pid, 0) == 0 || errno != ESRCH)
                continue;
            g_ptr_array_add(out, g_strdup_printf("vm-%d-", (int)pid));
        }
    }
    return out;
}
