/* SPDX-License-Identifier: MIT
 *
 * Integration test of the [pool] config keys and of L1 templates for a
 * non-default memory size (docs/snapshots.md), with the real scheduler core
 * in-process (SbxManager), real QEMU under TCG and the real guest image
 * ($SBX_GUEST_DIR). The config is a key file loaded with sbx_config_load_file:
 *  - Status shows its values as the effective ones; SCHEDULERD_WARM_POOL still
 *    overrides them at run time;
 *  - warm_pool_python=0 leaves python without pooled VMs after python ran,
 *    warm_pool_raw=2 fills two raw VMs;
 *  - a run with memory_mb=384 (default 512) boots cold and schedules a template
 *    build for (python, 384); the next such run restores from it (l1_hit) and
 *    the guest sees 384 MiB (MemTotal the same as in the cold-booted guest);
 *  - l1_max_templates=2: the third template evicts the least recently used
 *    entry whole (no file of it left) and its next run boots cold again;
 *  - after shutdown no QEMU, run dir or temp file is left.
 * Prints TAP; times are printed as comments, never asserted.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <gio/gio.h>
#include <glib/gstdio.h>

#include "scheduler/sbx-manager.h"
#include "tests/sbx-test-loop.h"
#include "tests/sbx-test-manager.h"
#include "tests/sbx-test-proc.h"
#include "tests/sbx-test-tap.h"

#define ODD_MB 384

static GVariant *
status_value(SbxManager *mgr, const char *key)
{
    g_autoptr(GVariant) st = sbx_manager_get_status(mgr);
    return g_variant_lookup_value(st, key, NULL);
}

static gboolean
status_bool(SbxManager *mgr, const char *key, gboolean want)
{
    g_autoptr(GVariant) v = status_value(mgr, key);
    return v && g_variant_is_of_type(v, G_VARIANT_TYPE_BOOLEAN) &&
           g_variant_get_boolean(v) == want;
}

/* The guest's MemTotal in MiB and 2+3, e.g. "353 5\n". */
static const char meminfo_code[] =
    "t = [l for l in open('/proc/meminfo') if l.startswith('MemTotal:')][0]\n"
    "print(int(t.split()[1]) // 1024, 2 + 3)\n";

static guint
memtotal_of(const SbxTestRun *r)
{
    guint mb = 0, five = 0;
    if (r->out == NULL || sscanf(r->out, "%u %u", &mb, &five) != 2 || five != 5)
        return 0;
    return mb;
}

int
main(void)
{
    const char *guest = g_getenv("SBX_GUEST_DIR");
    g_autofree char *vmlinux = guest ? g_build_filename(guest, "vmlinux", NULL) : NULL;
    if (vmlinux == NULL || !g_file_test(vmlinux, G_FILE_TEST_EXISTS)) {
        printf("Bail out! no guest image in SBX_GUEST_DIR (make guest-image)\n");
        return 99;
    }
    g_autofree char *rt = g_dir_make_tmp("sbx-pool-conf-XXXXXX", NULL);
    g_autofree char *l1_dir = g_build_filename(rt, "l1", NULL);
    g_autofree char *vms_dir = g_build_filename(rt, "vms", NULL);
    g_autofree char *conf = g_build_filename(rt, "schedulerd.conf", NULL);
    g_autofree char *conf_text = g_strdup_printf(
        "[scheduler]\nguest_dir=%s\nruntime_dir=%s\naccel=tcg\n"
        "[pool]\nwarm_pool_python=0\nwarm_pool_javascript=0\nwarm_pool_raw=2\n"
        "l1_prestart=0\nl1_build_drain_s=0\nl1_max_templates=2\n",
        guest, rt);
    g_file_set_contents(conf, conf_text, -1, NULL);
    /* the config file is under test: no environment override */
    g_unsetenv("SCHEDULERD_WARM_POOL");
    g_unsetenv("SCHEDULERD_L1");
    g_unsetenv("SCHEDULERD_L1_PREFETCH");
    g_unsetenv("SCHEDULERD_L1_PRESTART");
    g_unsetenv("SCHEDULERD_L1_BUILD_DRAIN_S");

    printf("1..16\n");
    SbxConfig *cfg = sbx_config_new_default();
    g_autoptr(GError) error = NULL;
    gboolean loaded = sbx_config_load_file(cfg, conf, &error);
    OK(loaded, "the config file with a [pool] section loads (%s)", error ? error->message : "ok");
    if (!loaded)
        return 1;
    g_autoptr(SbxManager) mgr = sbx_manager_new(cfg);
    g_autoptr(GAsyncResult) started = NULL;
    sbx_manager_start_async(mgr, NULL, sbx_test_store_result, &started);
    gboolean up = sbx_manager_start_finish(mgr, sbx_test_wait_result(&started), &error);
    OK(up, "the manager starts (%s)", error ? error->message : "tcg");
    if (!up)
        return 1;

    /* 3: the config's values are the effective ones in Status */
    OK(sbx_test_status_u64(mgr, "warm_pool_target_python") == 0 &&
           sbx_test_status_u64(mgr, "warm_pool_target_javascript") == 0 &&
           sbx_test_status_u64(mgr, "warm_pool_target_raw") == 2 &&
           sbx_test_status_u64(mgr, "l1_prestart_target") == 0 &&
           sbx_test_status_u64(mgr, "l1_build_drain_s") == 0 &&
           sbx_test_status_u64(mgr, "l1_max_templates") == 2 &&
           status_bool(mgr, "l1_enabled", TRUE) && status_bool(mgr, "l1_prefetch", TRUE),
       "Status shows the [pool] values of the config file as the effective ones");

    /* 4-5: a non-default memory size boots cold and schedules its own template */
    SbxTestRun a = {0};
    sbx_test_run(mgr, SBX_LANGUAGE_PYTHON, ODD_MB, 0, meminfo_code, &a);
    guint cold_mb = memtotal_of(&a);
    OK(a.result && !a.result->l1_hit && a.result->timing.boot_ms > 0 && cold_mb > ODD_MB * 3 / 4 &&
           cold_mb <= ODD_MB,
       "a %u MiB run boots cold (l1_hit false) and its guest has MemTotal %u MiB", ODD_MB,
       cold_mb);
    sbx_test_run_clear(&a);
    gboolean built = sbx_test_wait_status(mgr, "l1_builds", 1, 900);
    g_autofree char *odd_prefix = g_strdup_printf("l1-python-%um-", ODD_MB);
    OK(built && sbx_test_count_files(l1_dir, odd_prefix, ".json") == 1,
       "a template for (python, %u MiB) is built in the background", ODD_MB);

    /* 6: the next run of that size restores from it and sees its memory size */
    sbx_test_run(mgr, SBX_LANGUAGE_PYTHON, ODD_MB, 0, meminfo_code, &a);
    guint l1_mb = memtotal_of(&a);
    OK(a.result && a.result->l1_hit && a.result->timing.restore_ms > 0 && l1_mb == cold_mb,
       "the next %u MiB run restores from its template (l1_hit) and runs correctly with "
       "MemTotal %u MiB (cold: %u)",
       ODD_MB, l1_mb, cold_mb);
    sbx_test_run_clear(&a);

    /* 7-8: default-memory python and raw runs: python's pool stays empty
     * (warm_pool_python=0), raw's fills to two (warm_pool_raw=2); their
     * templates are the second and third entries */
    sbx_test_run(mgr, SBX_LANGUAGE_PYTHON, 0, 0, "print(7)", &a);
    OK(a.result && g_strcmp0(a.out, "7\n") == 0 && !a.result->warm_pool_hit,
       "a default python run (no pooled VM to take)");
    sbx_test_run_clear(&a);
    sbx_test_run(mgr, SBX_LANGUAGE_RAW, 0, 0, "echo r", &a);
    OK(a.result && g_strcmp0(a.out, "r\n") == 0, "a default raw run");
    sbx_test_run_clear(&a);

    /* 9: two raw VMs (the config's size) */
    gboolean filled = sbx_test_wait_status(mgr, "warm_pool_raw", 2, 900);
    OK(filled && sbx_test_status_u64(mgr, "warm_pool_raw") == 2,
       "warm_pool_raw=2 in the config: two pooled raw VMs (Status warm_pool_raw=%" G_GUINT64_FORMAT
       ")",
       sbx_test_status_u64(mgr, "warm_pool_raw"));

    /* 10: three templates built, the least recently used one evicted */
    gboolean three = sbx_test_wait_status(mgr, "l1_builds", 3, 900);
    OK(three && sbx_test_status_u64(mgr, "l1_evictions") == 1 &&
           sbx_test_status_u64(mgr, "l1_templates") == 2 &&
           sbx_test_count_files(l1_dir, NULL, ".json") == 2,
       "l1_max_templates=2: after the third build two entries are left (%" G_GUINT64_FORMAT
       " evicted)",
       sbx_test_status_u64(mgr, "l1_evictions"));

    /* 11: the evicted one is the (python, 384) template, used before the other two
     * were built; none of its files is left */
    OK(sbx_test_count_files(l1_dir, odd_prefix, NULL) == 0,
       "the least recently used (python, %u MiB) entry was removed whole (%u files left)", ODD_MB,
       sbx_test_count_files(l1_dir, odd_prefix, NULL));

    /* 12: python's pool stayed empty although python ran at its default size */
    sbx_test_spin_ms(2000);
    OK(sbx_test_status_u64(mgr, "warm_pool_python") == 0,
       "warm_pool_python=0 in the config: no pooled python VM after python runs");

    /* 13: a pooled raw VM serves a default raw run */
    sbx_test_run(mgr, SBX_LANGUAGE_RAW, 0, 0, "echo w", &a);
    OK(a.result && a.result->warm_pool_hit && g_strcmp0(a.out, "w\n") == 0,
       "a default raw run is served by the warm pool");
    sbx_test_run_clear(&a);

    /* 14: after the eviction that size boots cold again */
    sbx_test_run(mgr, SBX_LANGUAGE_PYTHON, ODD_MB, 0, meminfo_code, &a);
    OK(a.result && !a.result->l1_hit && memtotal_of(&a) == cold_mb,
       "after its eviction a %u MiB run boots cold again (l1_hit false)", ODD_MB);
    sbx_test_run_clear(&a);

    /* 15: the environment still overrides the config at run time */
    g_setenv("SCHEDULERD_WARM_POOL", "0", TRUE);
    g_setenv("SCHEDULERD_L1_PREFETCH", "0", TRUE);
    OK(sbx_test_status_u64(mgr, "warm_pool_target_raw") == 0 &&
           sbx_test_status_u64(mgr, "warm_pool_target_python") == 0 &&
           status_bool(mgr, "l1_prefetch", FALSE),
       "SCHEDULERD_WARM_POOL=0 and SCHEDULERD_L1_PREFETCH=0 override the config at run time");
    g_unsetenv("SCHEDULERD_L1_PREFETCH");

    /* 16: shutdown (l1_build_drain_s=0 cancels a rebuild in flight) leaves nothing behind */
    g_autoptr(GAsyncResult) down = NULL;
    sbx_manager_shutdown_async(mgr, sbx_test_store_result, &down);
    gboolean stopped = sbx_manager_shutdown_finish(mgr, sbx_test_wait_result(&down), NULL);
    OK(stopped && sbx_test_count_qemus(rt) == 0 && sbx_test_count_files(vms_dir, NULL, NULL) == 0 &&
           sbx_test_count_files(l1_dir, NULL, ".tmp") == 0,
       "after shutdown: no QEMU, no VM run dir, no temp file (%u run dirs left)",
       sbx_test_count_files(vms_dir, NULL, NULL));

    g_clear_object(&mgr);
    g_unsetenv("SCHEDULERD_WARM_POOL");
    g_autofree char *rm = g_strdup_printf("rm -rf '%s'", rt);
    if (system(rm) != 0)
        printf("# could not remove %s\n", rt);
    return failures ? 1 : 0;
}
