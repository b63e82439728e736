/* SPDX-License-Identifier: MIT
 *
 * /proc scan and directory counts shared by the tests and benchmarks that count
 * or measure what their own runtime dir holds: its QEMU processes and files.
 */
#pragma once

#include <glib.h>
#include <string.h>

/* The /proc entry names (pids, g_free'd by the array) of the processes whose
 * command line (arguments joined by spaces) mentions "qemu-system" and @needle. */
static inline GPtrArray *
sbx_test_qemu_procs(const char *needle)
{
    GPtrArray *found = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GDir) d = g_dir_open("/proc", 0, NULL);
    for (const char *n; d && (n = g_dir_read_name(d));) {
        if (!g_ascii_isdigit(n[0]))
            continue;
        g_autofree char *p = g_strdup_printf("/proc/%s/cmdline", n);
        g_autofree char *cmd = NULL;
        gsize len = 0;
        if (!g_file_get_contents(p, &cmd, &len, NULL))
            continue;
        for (gsize i = 0; i + 1 < len; i++)
            if (cmd[i] == '\0')
                cmd[i] = ' ';
        if (strstr(cmd, "qemu-system") && strstr(cmd, needle))
            g_ptr_array_add(found, g_strdup(n));
    }
    return found;
}

/* How many QEMU processes mention @needle (sbx_test_qemu_procs). */
static inline guint
sbx_test_count_qemus(const char *needle)
{
    g_autoptr(GPtrArray) procs = sbx_test_qemu_procs(needle);
    return procs->len;
}

/* Entries of @dir whose name starts with @prefix and ends with @suffix (NULL:
 * any); 0 when @dir does not exist. */
static inline guint
sbx_test_count_files(const char *dir, const char *prefix, const char *suffix)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    guint c = 0;
    for (const char *n; d && (n = g_dir_read_name(d));)
        if ((prefix == NULL || g_str_has_prefix(n, prefix)) &&
            (suffix == NULL || g_str_has_suffix(n, suffix)))
            c++;
    return c;
}
