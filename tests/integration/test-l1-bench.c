/* SPDX-License-Identifier: MIT
 *
 * Benchmark of the L1 / warm-pool paths (docs/snapshots.md records its output):
 * end-to-end print(1) through SbxManager in-process, median of N runs, for a
 * cold boot (SCHEDULERD_L1=0), an L1 restore into a freshly spawned QEMU, an
 * L1 restore into a pre-started -incoming defer QEMU, a warm-pool hit; the
 * restore with the template's RAM file evicted from the page cache, with and
 * without the hot-page prefetch; and host memory (RSS, PSS from smaps_rollup)
 * of N idle sessions' VMs: cold-booted without the balloon, cold-booted with
 * idle give-back (free page reporting + agent reclaim), L1-restored, and
 * L1-restored with host KSM on (the previous KSM settings are put back); the
 * cold boot with and without the balloon device, alternated (phase b); and a
 * non-default memory size ($SBX_BENCH_MEMORY_MB, default 1024), cold boot and
 * L1 restore from that size's own template alternated run by run (phase m).
 * Not a test: nothing is asserted; it prints "# key value" lines. Usage:
 *   SBX_GUEST_DIR=... test-l1-bench [runs] [idle-vms] [phases: cltwpkbm]
 * (make bench-memory runs phases "bk").
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <gio/gio.h>

#include "scheduler/sbx-manager.h"
#include "scheduler/sbx-session.h"
#include "tests/sbx-test-loop.h"
#include "tests/sbx-test-manager.h"
#include "tests/sbx-test-proc.h"

static guint run_memory_mb; /* 0: the default size */

static SbxRunResult *
run1(SbxManager *mgr, const char *code)
{
    g_autoptr(SbxRunSpec) spec = sbx_run_spec_new(sbx_manager_get_config(mgr));
    if (run_memory_mb)
        spec->memory_mb = run_memory_mb;
    g_autoptr(GAsyncResult) res = NULL;
    g_autoptr(GError) error = NULL;
    spec->code = g_bytes_new(code, strlen(code));
    sbx_manager_run_async(mgr, spec, NULL, NULL, NULL, NULL, NULL, sbx_test_store_result, &res);
    SbxRunResult *r = sbx_manager_run_finish(mgr, sbx_test_wait_result(&res), &error);
    if (r == NULL)
        printf("# run failed: %s\n", error->message);
    return r;
}

static int
cmp_i64(const void *a, const void *b)
{
    gint64 x = *(const gint64 *)a, y = *(const gint64 *)b;
    return x < y ? -1 : x > y;
}

static gint64
median(GArray *a)
{
    if (a->len == 0)
        return -1;
    g_array_sort(a, cmp_i64);
    return g_array_index(a, gint64, a->len / 2);
}

static char *l1_dir;

static void
evict_ram_files(void)
{
    g_autoptr(GDir) d = g_dir_open(l1_dir, 0, NULL);
    for (const char *n; d && (n = g_dir_read_name(d));) {
        if (!g_str_has_suffix(n, ".ram"))
            continue;
        g_autofree char *p = g_build_filename(l1_dir, n, NULL);
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
            close(fd);
        }
    }
}

typedef void (*BeforeFunc)(SbxManager *mgr);

/* @n runs of print(1); prints the medians of total / boot / restore / exec. */
static void
series(SbxManager *mgr, const char *label, guint n, BeforeFunc before)
{
    g_autoptr(GArray) total = g_array_new(FALSE, FALSE, sizeof(gint64));
    g_autoptr(GArray) boot = g_array_new(FALSE, FALSE, sizeof(gint64));
    g_autoptr(GArray) restore = g_array_new(FALSE, FALSE, sizeof(gint64));
    g_autoptr(GArray) exec = g_array_new(FALSE, FALSE, sizeof(gint64));
    guint l1 = 0, warm = 0;
    for (guint i = 0; i < n; i++) {
        if (before)
            before(mgr);
        g_autoptr(SbxRunResult) r = run1(mgr, "print(1)");
        if (r == NULL)
            continue;
        g_array_append_val(total, r->timing.total_ms);
        g_array_append_val(boot, r->timing.boot_ms);
        g_array_append_val(restore, r->timing.restore_ms);
        g_array_append_val(exec, r->timing.exec_ms);
        l1 += r->l1_hit;
        warm += r->warm_pool_hit;
        printf("#   %s run %u: total %" G_GINT64_FORMAT " boot %" G_GINT64_FORMAT
               " restore %" G_GINT64_FORMAT " exec %" G_GINT64_FORMAT " l1=%d warm=%d\n",
               label, i, r->timing.total_ms, r->timing.boot_ms, r->timing.restore_ms,
               r->timing.exec_ms, r->l1_hit, r->warm_pool_hit);
        fflush(stdout);
    }
    printf("# %s: n=%u l1_hits=%u warm_hits=%u median total_ms=%" G_GINT64_FORMAT
           " boot_ms=%" G_GINT64_FORMAT " restore_ms=%" G_GINT64_FORMAT " exec_ms=%" G_GINT64_FORMAT
           "\n",
           label, total->len, l1, warm, median(total), median(boot), median(restore),
           median(exec));
    fflush(stdout);
}

static void
before_prestarted(SbxManager *mgr)
{
    sbx_test_wait_status(mgr, "l1_prestarted", 1, 120);
    sbx_test_spin_ms(500); /* let the pre-started QEMU settle */
}

static void
before_warm(SbxManager *mgr)
{
    sbx_test_wait_status(mgr, "warm_pool_python", 1, 300);
    sbx_test_spin_ms(500);
}

static void
before_evict(SbxManager *mgr)
{
    sbx_test_spin_ms(300);
    evict_ram_files();
}

/* ---- memory of idle VMs ---------------------------------------------------- */

/* Pss (KiB) of the guest RAM mapping in /proc/<pid>/smaps: the largest mapping
 * (512 MiB of guest RAM; QEMU's other mappings are smaller). */
static guint64
guest_ram_pss_kb(const char *pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%s/smaps", pid);
    g_autofree char *text = NULL;
    if (!g_file_get_contents(path, &text, NULL, NULL))
        return 0;
    guint64 best_size = 0, best_pss = 0, size = 0;
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    for (guint i = 0; lines[i]; i++) {
        if (g_str_has_prefix(lines[i], "Size:"))
            size = g_ascii_strtoull(lines[i] + 5, NULL, 10);
        else if (g_str_has_prefix(lines[i], "Pss:") && size > best_size) {
            best_size = size;
            best_pss = g_ascii_strtoull(lines[i] + 4, NULL, 10);
        }
    }
    return best_pss;
}

static guint64 last_guest_pss_kb; /* of the last qemu_mem() */

static void
qemu_mem(const char *needle, guint *out_n, guint64 *out_rss_kb, guint64 *out_pss_kb)
{
    g_autoptr(GPtrArray) procs = sbx_test_qemu_procs(needle);
    *out_n = 0;
    *out_rss_kb = *out_pss_kb = 0;
    last_guest_pss_kb = 0;
    for (guint i = 0; i < procs->len; i++) {
        const char *n = procs->pdata[i];
        g_autofree char *sp = g_strdup_printf("/proc/%s/smaps_rollup", n);
        g_autofree char *sm = NULL;
        if (!g_file_get_contents(sp, &sm, NULL, NULL))
            continue;
        const char *r = strstr(sm, "\nRss:");
        const char *s = strstr(sm, "\nPss:");
        if (r)
            *out_rss_kb += g_ascii_strtoull(r + 5, NULL, 10);
        if (s)
            *out_pss_kb += g_ascii_strtoull(s + 5, NULL, 10);
        last_guest_pss_kb += guest_ram_pss_kb(n);
        (*out_n)++;
    }
}

static char *
read_sys(const char *path)
{
    char *v = NULL;
    if (g_file_get_contents(path, &v, NULL, NULL))
        g_strstrip(v);
    return v;
}

static void
write_sys(const char *path, const char *v)
{
    /* sysfs: a plain write (g_file_set_contents would rename a temp file) */
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, v, strlen(v)) < 0)
        printf("# could not write %s to %s\n", v, path);
    if (fd >= 0)
        close(fd);
}

static guint64
mem_available_kb(void)
{
    g_autofree char *mi = NULL;
    const char *p;
    if (!g_file_get_contents("/proc/meminfo", &mi, NULL, NULL) || !(p = strstr(mi, "MemAvailable:")))
        return 0;
    return g_ascii_strtoull(p + 13, NULL, 10);
}

/* @settle_ms after the last VM is up (cold VMs with the balloon: their sessions'
 * reclaim fires after 5 s idle, page reporting ~2 s later). */
static const char idle_code[] = "print(1)";
/* a session that once needed memory: 256 MiB written, then freed */
static const char workload_code[] = "keep = b'x' * (256 << 20)\ndel keep\nprint(1)";

static void
idle_vms(SbxManager *mgr, const char *label, guint n, const char *needle, gboolean ksm,
         guint settle_ms, const char *code)
{
    g_autoptr(GPtrArray) sessions = g_ptr_array_new_with_free_func(g_object_unref);
    guint64 avail0 = mem_available_kb();
    gint64 t0 = g_get_monotonic_time();
    for (guint i = 0; i < n; i++) {
        g_autoptr(SbxRunSpec) spec = sbx_run_spec_new(sbx_manager_get_config(mgr));
        g_autoptr(GAsyncResult) res = NULL;
        g_autoptr(GError) error = NULL;
        /* idle timeout far above the time 30 cold boots take under TCG */
        sbx_manager_create_session_async(mgr, spec, 7200, NULL, sbx_test_store_result, &res);
        SbxSession *s = sbx_manager_create_session_finish(mgr, sbx_test_wait_result(&res), &error);
        if (s == NULL) {
            printf("# %s: session %u failed: %s\n", label, i, error->message);
            break;
        }
        /* one exec each, so cold VMs have a warm REPL like restored ones */
        g_autoptr(SbxRunSpec) ex = sbx_run_spec_new(sbx_manager_get_config(mgr));
        ex->code = g_bytes_new_static(code, strlen(code));
        g_autoptr(GAsyncResult) er = NULL;
        sbx_session_exec_async(s, ex, NULL, NULL, sbx_test_store_result, &er);
        g_autoptr(SbxRunResult) rr = sbx_session_exec_finish(s, sbx_test_wait_result(&er), NULL);
        g_ptr_array_add(sessions, s);
    }
    printf("#   %s: %u VMs up in %" G_GINT64_FORMAT " ms\n", label, sessions->len,
           (g_get_monotonic_time() - t0) / 1000);
    g_autofree char *run0 = NULL, *scan0 = NULL, *sleep0 = NULL;
    if (ksm) {
        run0 = read_sys("/sys/kernel/mm/ksm/run");
        scan0 = read_sys("/sys/kernel/mm/ksm/pages_to_scan");
        sleep0 = read_sys("/sys/kernel/mm/ksm/sleep_millisecs");
        write_sys("/sys/kernel/mm/ksm/pages_to_scan", "20000");
        write_sys("/sys/kernel/mm/ksm/sleep_millisecs", "10");
        write_sys("/sys/kernel/mm/ksm/run", "1");
        sbx_test_spin_ms(40000);
    } else {
        sbx_test_spin_ms(settle_ms);
    }
    guint vms;
    guint64 rss, pss;
    qemu_mem(needle, &vms, &rss, &pss);
    guint64 avail1 = mem_available_kb();
    gint64 used_kb = (gint64)avail0 - (gint64)avail1;
    g_autofree char *shared = read_sys("/sys/kernel/mm/ksm/pages_sharing");
    printf("# %s: vms=%u rss_total_mb=%" G_GUINT64_FORMAT " pss_total_mb=%" G_GUINT64_FORMAT
           " rss_per_vm_mb=%" G_GUINT64_FORMAT " pss_per_vm_mb=%" G_GUINT64_FORMAT
           " guest_ram_pss_per_vm_mb=%" G_GUINT64_FORMAT
           " memavailable_delta_mb=%" G_GINT64_FORMAT " memavailable_per_vm_mb=%" G_GINT64_FORMAT
           " ksm_pages_sharing=%s\n",
           label, vms, rss >> 10, pss >> 10, vms ? (rss / vms) >> 10 : 0,
           vms ? (pss / vms) >> 10 : 0, vms ? (last_guest_pss_kb / vms) >> 10 : 0,
           used_kb / 1024, vms ? used_kb / 1024 / (gint64)vms : 0,
           shared ? shared : "?");
    fflush(stdout);
    if (ksm) {
        write_sys("/sys/kernel/mm/ksm/run", run0 ? run0 : "0");
        if (scan0)
            write_sys("/sys/kernel/mm/ksm/pages_to_scan", scan0);
        if (sleep0)
            write_sys("/sys/kernel/mm/ksm/sleep_millisecs", sleep0);
    }
    for (guint i = 0; i < sessions->len; i++)
        sbx_session_close(g_ptr_array_index(sessions, i), SBX_SESSION_CLOSED_BY_CALLER);
    g_ptr_array_set_size(sessions, 0);
    while (sbx_manager_get_n_vms(mgr) > 0)
        sbx_test_spin_ms(100);
}

/* Cold boots with and without the balloon device, alternated (A/B in one run). */
static void
balloon_boot_ab(SbxManager *mgr, guint n)
{
    g_autoptr(GArray) with = g_array_new(FALSE, FALSE, sizeof(gint64));
    g_autoptr(GArray) without = g_array_new(FALSE, FALSE, sizeof(gint64));
    g_setenv("SCHEDULERD_L1", "0", TRUE);
    for (guint i = 0; i < 2 * n; i++) {
        gboolean on = i % 2 == 1;
        g_setenv("SCHEDULERD_BALLOON", on ? "1" : "0", TRUE);
        g_autoptr(SbxRunResult) r = run1(mgr, "print(1)");
        if (r == NULL)
            continue;
        g_array_append_val(on ? with : without, r->timing.boot_ms);
        printf("#   boot %s balloon: boot %" G_GINT64_FORMAT " total %" G_GINT64_FORMAT "\n",
               on ? "with" : "without", r->timing.boot_ms, r->timing.total_ms);
        fflush(stdout);
    }
    g_unsetenv("SCHEDULERD_BALLOON");
    g_unsetenv("SCHEDULERD_L1");
    printf("# cold boot without balloon: n=%u median boot_ms=%" G_GINT64_FORMAT "\n", without->len,
           median(without));
    printf("# cold boot with balloon: n=%u median boot_ms=%" G_GINT64_FORMAT "\n", with->len,
           median(with));
    fflush(stdout);
}

/* Phase m: runs of @memory_mb, cold (SCHEDULERD_L1=0) and L1 alternated. */
static void
memory_ab(SbxManager *mgr, guint n, guint memory_mb)
{
    run_memory_mb = memory_mb;
    guint64 builds0 = sbx_test_status_u64(mgr, "l1_builds");
    g_autoptr(SbxRunResult) first = run1(mgr, "print(1)"); /* schedules that size's build */
    if (first && !first->l1_hit)
        sbx_test_wait_status(mgr, "l1_builds", builds0 + 1, 900);
    g_autoptr(GArray) cold = g_array_new(FALSE, FALSE, sizeof(gint64));
    g_autoptr(GArray) cold_boot = g_array_new(FALSE, FALSE, sizeof(gint64));
    g_autoptr(GArray) l1 = g_array_new(FALSE, FALSE, sizeof(gint64));
    g_autoptr(GArray) l1_restore = g_array_new(FALSE, FALSE, sizeof(gint64));
    guint hits = 0;
    for (guint i = 0; i < n; i++) {
        g_setenv("SCHEDULERD_L1", "0", TRUE);
        g_autoptr(SbxRunResult) c = run1(mgr, "print(1)");
        g_unsetenv("SCHEDULERD_L1");
        g_autoptr(SbxRunResult) r = run1(mgr, "print(1)");
        if (c == NULL || r == NULL)
            continue;
        g_array_append_val(cold, c->timing.total_ms);
        g_array_append_val(cold_boot, c->timing.boot_ms);
        g_array_append_val(l1, r->timing.total_ms);
        g_array_append_val(l1_restore, r->timing.restore_ms);
        hits += r->l1_hit;
        printf("#   %u MiB pair %u: cold total %" G_GINT64_FORMAT " boot %" G_GINT64_FORMAT
               " | l1=%d total %" G_GINT64_FORMAT " restore %" G_GINT64_FORMAT "\n",
               memory_mb, i, c->timing.total_ms, c->timing.boot_ms, r->l1_hit,
               r->timing.total_ms, r->timing.restore_ms);
        fflush(stdout);
    }
    printf("# %u MiB: pairs=%u l1_hits=%u median cold total_ms=%" G_GINT64_FORMAT
           " boot_ms=%" G_GINT64_FORMAT " | l1 total_ms=%" G_GINT64_FORMAT
           " restore_ms=%" G_GINT64_FORMAT "\n",
           memory_mb, cold->len, hits, median(cold), median(cold_boot), median(l1),
           median(l1_restore));
    fflush(stdout);
    run_memory_mb = 0;
}

int
main(int argc, char **argv)
{
    guint n = argc > 1 ? (guint)atoi(argv[1]) : 5;
    guint idle = argc > 2 ? (guint)atoi(argv[2]) : 10;
    const char *phases = argc > 3 ? argv[3] : "cltwpkm";
    const char *guest = g_getenv("SBX_GUEST_DIR");
    if (guest == NULL) {
        printf("1..0 # SKIP set SBX_GUEST_DIR\n");
        return 77;
    }
    const char *rt_env = g_getenv("SBX_BENCH_RUNTIME_DIR");
    g_autofree char *rt = rt_env ? g_strdup(rt_env) : g_dir_make_tmp("sbx-l1-bench-XXXXXX", NULL);
    l1_dir = g_build_filename(rt, "l1", NULL);
    g_autofree char *vms = g_build_filename(rt, "vms", NULL);
    SbxConfig *cfg = sbx_config_new_default();
    g_free(cfg->guest_dir);
    cfg->guest_dir = g_strdup(guest);
    g_free(cfg->runtime_dir);
    cfg->runtime_dir = g_strdup(rt);
    cfg->accel = SBX_ACCEL_MODE_TCG;
    cfg->cpu_overcommit_ratio = 40.0; /* room for the idle-VM memory phase */
    g_autoptr(SbxManager) mgr = sbx_manager_new(cfg);
    g_autoptr(GAsyncResult) started = NULL;
    g_autoptr(GError) error = NULL;
    sbx_manager_start_async(mgr, NULL, sbx_test_store_result, &started);
    if (!sbx_manager_start_finish(mgr, sbx_test_wait_result(&started), &error)) {
        printf("# start failed: %s\n", error->message);
        return 1;
    }
    printf("# accel %s, runtime dir %s, %u runs per series\n", sbx_manager_get_accel(mgr), rt, n);

    g_setenv("SCHEDULERD_WARM_POOL", "0", TRUE);
    g_setenv("SCHEDULERD_L1_PRESTART", "0", TRUE);
    if (strchr(phases, 'b'))
        balloon_boot_ab(mgr, n);
    if (strchr(phases, 'c')) {
        g_setenv("SCHEDULERD_L1", "0", TRUE);
        series(mgr, "cold", n, NULL);
    }
    g_unsetenv("SCHEDULERD_L1");
    if (strpbrk(phases, "ltpwk")) {
        g_autoptr(SbxRunResult) first = run1(mgr, "print(1)"); /* schedules the build if needed */
        if (sbx_test_status_u64(mgr, "l1_builds") == 0 && first && !first->l1_hit)
            sbx_test_wait_status(mgr, "l1_builds", 1, 600);
    }
    if (strchr(phases, 'l'))
        series(mgr, "l1 (fresh QEMU)", n, NULL);
    if (strchr(phases, 't')) {
        g_setenv("SCHEDULERD_L1_PRESTART", "1", TRUE);
        g_autoptr(SbxRunResult) r = run1(mgr, "print(1)"); /* learns the template */
        series(mgr, "l1 (pre-started QEMU)", n, before_prestarted);
        g_setenv("SCHEDULERD_L1_PRESTART", "0", TRUE);
    }
    if (strchr(phases, 'p')) {
        g_setenv("SCHEDULERD_L1_PREFETCH", "0", TRUE);
        series(mgr, "l1 evicted, no prefetch", n, before_evict);
        g_unsetenv("SCHEDULERD_L1_PREFETCH");
        series(mgr, "l1 evicted, prefetch", n, before_evict);
    }
    if (strchr(phases, 'w')) {
        g_setenv("SCHEDULERD_WARM_POOL", "1", TRUE);
        g_autoptr(SbxRunResult) r = run1(mgr, "print(1)"); /* marks python used */
        series(mgr, "warm pool", n, before_warm);
        g_setenv("SCHEDULERD_WARM_POOL", "0", TRUE);
        sbx_test_spin_ms(1000);
    }
    if (strchr(phases, 'k')) {
        g_autofree char *needle = g_build_filename(vms, "vm-", NULL);
        /* SBX_BENCH_IDLE_MODES: a subset of "cwgxlk" (default all): cold, cold after
         * 256 MiB, give-back, give-back after 256 MiB, L1, L1 + KSM */
        const char *modes = g_getenv("SBX_BENCH_IDLE_MODES");
        if (modes == NULL || *modes == '\0')
            modes = "cwgxlk";
        g_setenv("SCHEDULERD_L1", "0", TRUE);
        g_setenv("SCHEDULERD_BALLOON", "0", TRUE);
        if (strchr(modes, 'c'))
            idle_vms(mgr, "idle cold-booted", idle, needle, FALSE, 15000, idle_code);
        /* at most 10 here: without give-back each keeps ~0.5 GiB */
        if (strchr(modes, 'w'))
            idle_vms(mgr, "idle cold-booted after 256 MiB", MIN(idle, 10), needle, FALSE, 15000,
                     workload_code);
        g_unsetenv("SCHEDULERD_BALLOON");
        if (strchr(modes, 'g'))
            idle_vms(mgr, "idle cold-booted + give-back", idle, needle, FALSE, 15000, idle_code);
        if (strchr(modes, 'x'))
            idle_vms(mgr, "idle cold-booted after 256 MiB + give-back", MIN(idle, 10), needle,
                     FALSE, 15000, workload_code);
        g_unsetenv("SCHEDULERD_L1");
        if (strchr(modes, 'l'))
            idle_vms(mgr, "idle L1-restored", idle, needle, FALSE, 15000, idle_code);
        if (strchr(modes, 'k'))
            idle_vms(mgr, "idle L1-restored + KSM", idle, needle, TRUE, 0, idle_code);
    }
    if (strchr(phases, 'm')) {
        const char *m = g_getenv("SBX_BENCH_MEMORY_MB");
        memory_ab(mgr, n, m && *m ? (guint)atoi(m) : 1024);
    }
    g_autoptr(GAsyncResult) down = NULL;
    sbx_manager_shutdown_async(mgr, sbx_test_store_result, &down);
    (void)sbx_manager_shutdown_finish(mgr, sbx_test_wait_result(&down), NULL);
    return 0;
}
