/* SPDX-License-Identifier: MIT
 *
 * Unit tests of scheduler/sbx-config and scheduler/sbx-run: the documented
 * default config parses to the built-in defaults, values and ranges are
 * applied, unknown keys are refused, [pool] errors name the key and the allowed
 * range; run specs validate and survive the a{sv}
 * round trip; results map to a{sv} and back.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <string.h>
#include <unistd.h>

#include "scheduler/sbx-config.h"
#include "scheduler/sbx-error.h"
#include "scheduler/sbx-run.h"

static char *
write_tmp(const char *text)
{
    char *path = NULL;
    int fd = g_file_open_tmp("sbx-conf-XXXXXX", &path, NULL);
    assert_true(fd >= 0);
    close(fd);
    assert_true(g_file_set_contents(path, text, -1, NULL));
    return path;
}

static void
test_documented_defaults(void **state)
{
    g_autofree char *path = g_build_filename(g_getenv("top_srcdir"), "data", "schedulerd.conf", NULL);
    g_autoptr(SbxConfig) cfg = sbx_config_new_default();
    g_autoptr(GError) error = NULL;
    assert_true(sbx_config_load_file(cfg, path, &error));
    assert_int_equal(cfg->default_memory_mb, 512);
    assert_int_equal(cfg->max_timeout_s, 300);
    assert_true(cfg->memory_overcommit_ratio == 5.0);
    assert_true(cfg->cpu_overcommit_ratio == 2.0);
    assert_int_equal(cfg->accel, SBX_ACCEL_MODE_AUTO);
    /* [pool]: what data/schedulerd.conf documents is what sbx_config_new_default sets */
    g_autoptr(SbxConfig) def = sbx_config_new_default();
    assert_int_equal(cfg->warm_pool_python, 1);
    assert_int_equal(cfg->warm_pool_javascript, 1);
    assert_int_equal(cfg->warm_pool_raw, 1);
    assert_true(cfg->l1);
    assert_true(cfg->l1_prefetch);
    assert_int_equal(cfg->l1_prestart, 1);
    assert_int_equal(cfg->l1_build_drain_s, 20);
    assert_int_equal(cfg->l1_max_templates, 8);
    assert_int_equal(def->warm_pool_python, cfg->warm_pool_python);
    assert_int_equal(def->l1_max_templates, cfg->l1_max_templates);
    /* the translation cache admission counts holds what QEMU may fill */
    assert_int_equal(cfg->tb_size_mb, 128);
    assert_int_equal(cfg->tcg_cache_mb, 128);
    assert_int_equal(def->tb_size_mb, cfg->tb_size_mb);
    assert_int_equal(def->tcg_cache_mb, cfg->tcg_cache_mb);
}

/* The documented file with every commented-out "#key=value" of [pool] made
 * active parses to the same values (the comments are the defaults). */
static void
test_documented_pool_keys_active(void **state)
{
    g_autofree char *path = g_build_filename(g_getenv("top_srcdir"), "data", "schedulerd.conf", NULL);
    g_autofree char *text = NULL;
    assert_true(g_file_get_contents(path, &text, NULL, NULL));
    char *pool = strstr(text, "\n[pool]\n");
    assert_non_null(pool);
    g_auto(GStrv) lines = g_strsplit(pool, "\n", -1);
    g_autoptr(GString) active = g_string_new(NULL);
    guint keys = 0;
    for (guint i = 0; lines[i]; i++) {
        const char *l = lines[i];
        if (l[0] == '#' && l[1] != ' ' && l[1] != '\0' && strchr(l, '=')) {
            g_string_append_printf(active, "%s\n", l + 1);
            keys++;
        } else {
            g_string_append_printf(active, "%s\n", l);
        }
    }
    assert_int_equal(keys, 8);
    g_autofree char *p = write_tmp(active->str);
    g_autoptr(SbxConfig) cfg = sbx_config_new_default();
    g_autoptr(GError) error = NULL;
    assert_true(sbx_config_load_file(cfg, p, &error));
    assert_int_equal(cfg->warm_pool_raw, 1);
    assert_int_equal(cfg->l1_build_drain_s, 20);
    unlink(p);
}

static void
test_pool_keys(void **state)
{
    g_autofree char *good = write_tmp("[pool]\nwarm_pool_python=0\nwarm_pool_javascript=3\n"
                                      "warm_pool_raw=16\nl1=false\nl1_prefetch=off\n"
                                      "l1_prestart=0\nl1_build_drain_s=600\nl1_max_templates=1\n");
    g_autoptr(SbxConfig) cfg = sbx_config_new_default();
    g_autoptr(GError) error = NULL;
    /* GKeyFile booleans are true/false (also 1/0); "off" is not one */
    assert_false(sbx_config_load_file(cfg, good, &error));
    assert_non_null(strstr(error->message, "[pool] l1_prefetch = off is not one of true, false"));
    g_clear_error(&error);
    unlink(good);
    g_autofree char *good2 = write_tmp("[pool]\nwarm_pool_python=0\nwarm_pool_javascript=3\n"
                                       "warm_pool_raw=16\nl1=false\nl1_prefetch=0\n"
                                       "l1_prestart=0\nl1_build_drain_s=600\n"
                                       "l1_max_templates=1\n");
    g_autoptr(SbxConfig) c2 = sbx_config_new_default();
    assert_true(sbx_config_load_file(c2, good2, &error));
    assert_int_equal(c2->warm_pool_python, 0);
    assert_int_equal(c2->warm_pool_javascript, 3);
    assert_int_equal(c2->warm_pool_raw, 16);
    assert_false(c2->l1);
    assert_false(c2->l1_prefetch);
    assert_int_equal(c2->l1_prestart, 0);
    assert_int_equal(c2->l1_build_drain_s, 600);
    assert_int_equal(c2->l1_max_templates, 1);
    unlink(good2);

    /* out of range: the error names the key and the allowed range */
    struct {
        const char *text, *message;
    } bad[] = {
        {"[pool]\nwarm_pool_python=17\n", "[pool] warm_pool_python = 17 is outside 0..16"},
        {"[pool]\nwarm_pool_javascript=100\n", "[pool] warm_pool_javascript = 100 is outside 0..16"},
        {"[pool]\nwarm_pool_raw=-1\n", "[pool] warm_pool_raw = -1 is outside 0..16"},
        {"[pool]\nl1_prestart=9\n", "[pool] l1_prestart = 9 is outside 0..8"},
        {"[pool]\nl1_build_drain_s=601\n", "[pool] l1_build_drain_s = 601 is outside 0..600"},
        {"[pool]\nl1_max_templates=0\n", "[pool] l1_max_templates = 0 is outside 1..256"},
        {"[pool]\nl1_max_templates=257\n", "[pool] l1_max_templates = 257 is outside 1..256"},
        {"[pool]\nl1=maybe\n", "[pool] l1 = maybe is not one of true, false"},
        {"[pool]\nwarm_pool_python=two\n", "[pool] warm_pool_python = two is outside 0..16"},
        {"[pool]\nwarm_pool=1\n", "unknown key [pool] warm_pool"},
    };
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autofree char *p = write_tmp(bad[i].text);
        g_autoptr(SbxConfig) c = sbx_config_new_default();
        g_autoptr(GError) e = NULL;
        assert_false(sbx_config_load_file(c, p, &e));
        assert_non_null(e);
        if (strstr(e->message, bad[i].message) == NULL)
            fail_msg("%s: got \"%s\"", bad[i].text, e->message);
        assert_non_null(strstr(e->message, p)); /* says which file */
        assert_int_equal(c->warm_pool_python, 1); /* a refused value is not applied */
        unlink(p);
    }
}

static void
test_values_and_errors(void **state)
{
    g_autofree char *good = write_tmp("[scheduler]\naccel=tcg\nvcpus=2\nguest_dir=/x\n"
                                      "[admission]\ncpu_overcommit_ratio=3.5\nbypass_limit=0\n"
                                      "psi_full_avg10_threshold=0\n");
    g_autoptr(SbxConfig) cfg = sbx_config_new_default();
    g_autoptr(GError) error = NULL;
    assert_true(sbx_config_load_file(cfg, good, &error));
    assert_int_equal(cfg->accel, SBX_ACCEL_MODE_TCG);
    assert_int_equal(cfg->vcpus, 2);
    assert_string_equal(cfg->guest_dir, "/x");
    assert_true(cfg->cpu_overcommit_ratio == 3.5);
    assert_int_equal(cfg->bypass_limit, 0);    /* strict FIFO */
    assert_true(cfg->psi_full_avg10_threshold == 0); /* PSI gate off */
    assert_int_equal(cfg->lookahead, 64);      /* untouched default */
    unlink(good);

    const char *bad[] = {
        "[scheduler]\nacel=tcg\n",             /* unknown key */
        "[scheduler]\naccel=fast\n",           /* bad enum */
        "[scheduler]\nvcpus=0\n",              /* out of range */
        "[limits]\ndefault_timeout_s=400\n",   /* above max_timeout_s */
        "[admission]\nmemory_reserve_ratio=x\n",
        "[scheduler]\ntb_size_mb=256\n",     /* above the default tcg_cache_mb */
    };
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autofree char *p = write_tmp(bad[i]);
        g_autoptr(SbxConfig) c = sbx_config_new_default();
        g_autoptr(GError) e = NULL;
        assert_false(sbx_config_load_file(c, p, &e));
        assert_non_null(e);
        assert_non_null(strstr(e->message, p)); /* says which file */
        unlink(p);
    }

    /* a larger translation cache loads once admission counts it */
    g_autofree char *tb = write_tmp("[scheduler]\ntb_size_mb=256\n[admission]\ntcg_cache_mb=256\n");
    g_autoptr(SbxConfig) tbc = sbx_config_new_default();
    g_autoptr(GError) tbe = NULL;
    assert_true(sbx_config_load_file(tbc, tb, &tbe));
    assert_int_equal(tbc->tb_size_mb, 256);
    unlink(tb);
    g_autofree char *tb_low = write_tmp("[scheduler]\ntb_size_mb=256\n");
    g_autoptr(SbxConfig) tbc_low = sbx_config_new_default();
    assert_false(sbx_config_load_file(tbc_low, tb_low, &tbe));
    assert_non_null(strstr(tbe->message, "tcg_cache_mb = 128 is below [scheduler] tb_size_mb = 256"));
    unlink(tb_low);
}

static void
test_env_override(void **state)
{
    g_autoptr(SbxConfig) cfg = sbx_config_new_default();
    g_autoptr(GError) error = NULL;
    g_setenv("SCHEDULERD_ACCEL", "kvm", TRUE);
    g_setenv("SBX_GUEST_DIR", "/img", TRUE);
    assert_true(sbx_config_apply_env(cfg, &error));
    assert_int_equal(cfg->accel, SBX_ACCEL_MODE_KVM);
    assert_string_equal(cfg->guest_dir, "/img");
    g_setenv("SCHEDULERD_ACCEL", "hvf", TRUE);
    assert_false(sbx_config_apply_env(cfg, &error));
    g_unsetenv("SCHEDULERD_ACCEL");
    g_unsetenv("SBX_GUEST_DIR");
}

static void
test_run_spec_validation(void **state)
{
    g_autoptr(SbxConfig) cfg = sbx_config_new_default();
    struct {
        const char *code;
        gsize len;
        guint timeout, memory;
        gboolean ok;
    } cases[] = {
        {"print(1)", 8, 30, 512, TRUE},
        {"", 0, 30, 512, FALSE},        /* empty */
        {"  \n\t", 4, 30, 512, FALSE},  /* blank */
        {"a\0b", 3, 30, 512, FALSE},    /* NUL */
        {"print(1)", 8, 0, 512, FALSE}, /* timeout 0 */
        {"print(1)", 8, 301, 512, FALSE},
        {"print(1)", 8, 30, 64, FALSE}, /* memory below 128 */
        {"print(1)", 8, 300, 128, TRUE},
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(SbxRunSpec) spec = sbx_run_spec_new(cfg);
        g_autoptr(GError) error = NULL;
        spec->code = g_bytes_new(cases[i].code, cases[i].len);
        spec->timeout_s = cases[i].timeout;
        spec->memory_mb = cases[i].memory;
        gboolean ok = sbx_run_spec_validate(spec, cfg, TRUE, &error);
        assert_int_equal(ok, cases[i].ok);
        if (!ok)
            assert_true(g_error_matches(error, SBX_ERROR, SBX_ERROR_INVALID_INPUT));
    }
    /* 2 MiB of code */
    g_autoptr(SbxRunSpec) big = sbx_run_spec_new(cfg);
    g_autoptr(GError) error = NULL;
    gsize n = 2 * 1024 * 1024;
    char *data = g_malloc(n);
    memset(data, 'x', n);
    big->code = g_bytes_new_take(data, n);
    assert_false(sbx_run_spec_validate(big, cfg, TRUE, &error));
    /* refused environment */
    g_autoptr(SbxRunSpec) env = sbx_run_spec_new(cfg);
    g_autoptr(GError) error2 = NULL;
    env->code = g_bytes_new_static("1", 1);
    g_hash_table_insert(env->env, g_strdup("LD_PRELOAD"), g_strdup("/x.so"));
    assert_false(sbx_run_spec_validate(env, cfg, TRUE, &error2));
    assert_non_null(strstr(error2->message, "LD_PRELOAD"));
}

static void
test_variant_round_trips(void **state)
{
    g_autoptr(SbxConfig) cfg = sbx_config_new_default();
    g_autoptr(SbxRunSpec) spec = sbx_run_spec_new(cfg);
    spec->language = SBX_LANGUAGE_JAVASCRIPT;
    spec->code = g_bytes_new_static("console.log(1)", 14);
    spec->timeout_s = 7;
    spec->memory_mb = 256;
    g_hash_table_insert(spec->env, g_strdup("A"), g_strdup("b"));
    g_autoptr(GVariant) v = g_variant_ref_sink(sbx_run_spec_to_variant(spec));
    g_autoptr(SbxRunSpec) back = sbx_run_spec_new(cfg);
    g_autoptr(GError) error = NULL;
    assert_true(sbx_run_spec_from_variant(back, v, &error));
    assert_int_equal(back->language, SBX_LANGUAGE_JAVASCRIPT);
    assert_true(g_bytes_equal(back->code, spec->code));
    assert_int_equal(back->timeout_s, 7);
    assert_int_equal(back->memory_mb, 256);
    assert_string_equal(g_hash_table_lookup(back->env, "A"), "b");

    /* unknown keys and unavailable network modes are refused, not ignored */
    g_autoptr(GVariant) bad = g_variant_ref_sink(g_variant_new_parsed("{'colour': <'red'>}"));
    g_autoptr(GError) e1 = NULL;
    assert_false(sbx_run_spec_from_variant(back, bad, &e1));
    assert_true(g_error_matches(e1, SBX_ERROR, SBX_ERROR_INVALID_INPUT));

    g_autoptr(SbxRunResult) r = sbx_run_result_new();
    r->exit_code = 137;
    r->timing.boot_ms = 1500;
    r->timing.total_ms = 2000;
    r->memory_peak_mb = 99;
    g_autoptr(GVariant) rv = g_variant_ref_sink(sbx_run_result_to_variant(r));
    g_autoptr(SbxRunResult) r2 = sbx_run_result_new();
    assert_true(sbx_run_result_from_variant(r2, rv, &error));
    assert_int_equal(r2->exit_code, 137);
    assert_int_equal(r2->timing.boot_ms, 1500);
    assert_int_equal(r2->timing.total_ms, 2000);
    assert_int_equal(r2->memory_peak_mb, 99);
}

static void
test_error_names(void **state)
{
    assert_string_equal(sbx_error_code_to_name(SBX_ERROR_INVALID_INPUT), "InvalidInput");
    assert_string_equal(sbx_error_code_to_name(SBX_ERROR_OUTCOME_UNKNOWN), "OutcomeUnknown");
    sbx_error_register_dbus();
    g_autoptr(GError) e = g_error_new_literal(SBX_ERROR, SBX_ERROR_NO_CAPACITY, "full");
    g_autofree char *name = g_dbus_error_encode_gerror(e);
    assert_string_equal(name, "org.schedulerd.Scheduler1.Error.NoCapacity");
    assert_true(sbx_error_code_ran(SBX_ERROR_OUTCOME_UNKNOWN));
    assert_false(sbx_error_code_ran(SBX_ERROR_TRANSIENT));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_documented_defaults),
        cmocka_unit_test(test_documented_pool_keys_active),
        cmocka_unit_test(test_pool_keys),
        cmocka_unit_test(test_values_and_errors),
        cmocka_unit_test(test_env_override),
        cmocka_unit_test(test_run_spec_validation),
        cmocka_unit_test(test_variant_round_trips),
        cmocka_unit_test(test_error_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
