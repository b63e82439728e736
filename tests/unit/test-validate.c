/* SPDX-License-Identifier: MIT
 *
 * Table-driven unit tests for the input validators (common/sbx-validate.c):
 * code, language, timeout, environment and guest paths, including the
 * boundaries of every limit and the error codes the scheduler maps to
 * InvalidInput.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "common/sbx-validate.h"

static void
expect(gboolean ok, GError *error, gboolean want_ok, int want_code, const char *what)
{
    if (want_ok && !ok)
        fail_msg("%s: unexpected error: %s", what, error ? error->message : "(none)");
    if (!want_ok) {
        if (ok)
            fail_msg("%s: accepted, expected error code %d", what, want_code);
        if (!error || error->domain != SBX_VALIDATE_ERROR || error->code != want_code)
            fail_msg("%s: wrong error %s", what, error ? error->message : "(none)");
        assert_true(strlen(error->message) > 5);
    }
}

static void
test_code(void **state)
{
    struct { const char *code; gssize len; gboolean ok; } cases[] = {
        { "print(1)", -1, TRUE },
        { "x", -1, TRUE },
        { "  \n\t x", -1, TRUE },
        { "", -1, FALSE },
        { "   \n\t\r ", -1, FALSE },
        { "a\0b", 3, FALSE },
        { "caf\xc3\xa9", -1, TRUE },
        { "bad \xff utf8", -1, FALSE },
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(GError) error = NULL;
        gsize len = cases[i].len < 0 ? strlen(cases[i].code) : (gsize)cases[i].len;
        gboolean ok = sbx_validate_code(cases[i].code, len, &error);
        expect(ok, error, cases[i].ok, SBX_VALIDATE_ERROR_CODE, cases[i].code);
    }
    g_autofree char *big = g_malloc(SBX_MAX_CODE_BYTES + 1);
    memset(big, 'x', SBX_MAX_CODE_BYTES + 1);
    g_autoptr(GError) e1 = NULL;
    assert_true(sbx_validate_code(big, SBX_MAX_CODE_BYTES, &e1));
    assert_false(sbx_validate_code(big, SBX_MAX_CODE_BYTES + 1, &e1));
    assert_true(g_error_matches(e1, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_CODE));
    assert_non_null(strstr(e1->message, "1 MiB"));
}

static void
test_language(void **state)
{
    struct { const char *name; gboolean ok; SbxLanguage lang; } cases[] = {
        { "python", TRUE, SBX_LANGUAGE_PYTHON },
        { "javascript", TRUE, SBX_LANGUAGE_JAVASCRIPT },
        { "raw", TRUE, SBX_LANGUAGE_RAW },
        { "Python", FALSE, 0 },
        { "ruby", FALSE, 0 },
        { "", FALSE, 0 },
        { NULL, FALSE, 0 },
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(GError) error = NULL;
        SbxLanguage l = 99;
        gboolean ok = sbx_validate_language(cases[i].name, &l, &error);
        expect(ok, error, cases[i].ok, SBX_VALIDATE_ERROR_LANGUAGE, cases[i].name ? cases[i].name : "NULL");
        if (ok) {
            assert_int_equal(l, cases[i].lang);
            assert_string_equal(sbx_language_to_string(l), cases[i].name);
        } else {
            assert_int_equal(l, 99); /* untouched on failure */
        }
    }
}

static void
test_timeout(void **state)
{
    struct { gint64 t; gboolean ok; } cases[] = {
        { 0, FALSE }, { 1, TRUE }, { 30, TRUE }, { 300, TRUE }, { 301, FALSE }, { -5, FALSE },
        { G_MAXINT64, FALSE },
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(GError) error = NULL;
        gboolean ok = sbx_validate_timeout(cases[i].t, &error);
        expect(ok, error, cases[i].ok, SBX_VALIDATE_ERROR_TIMEOUT, "timeout");
    }
}

static void
test_env_vars(void **state)
{
    g_autofree char *long_name = g_strnfill(SBX_MAX_ENV_NAME_BYTES + 1, 'A');
    g_autofree char *max_name = g_strnfill(SBX_MAX_ENV_NAME_BYTES, 'A');
    g_autofree char *long_val = g_strnfill(SBX_MAX_ENV_VALUE_BYTES + 1, 'v');
    g_autofree char *max_val = g_strnfill(SBX_MAX_ENV_VALUE_BYTES, 'v');
    struct { const char *name; const char *value; gboolean ok; } cases[] = {
        { "FOO", "bar", TRUE },
        { "_x9", "", TRUE },
        { "MY_VAR", "tab\there", TRUE },
        { "UNICODE", "h\xc3\xa9", TRUE },
        { max_name, "v", TRUE },
        { "V", max_val, TRUE },
        { "", "v", FALSE },
        { "9LIVES", "v", FALSE },
        { "A-B", "v", FALSE },
        { "A B", "v", FALSE },
        { "A=B", "v", FALSE },
        { long_name, "v", FALSE },
        { "V", long_val, FALSE },
        { "V", "new\nline", FALSE },
        { "V", "del\x7f", FALSE },
        { "V", "bad\xff", FALSE },
        { "LD_PRELOAD", "/x.so", FALSE },
        { "ld_library_path", "/x", FALSE },
        { "LD_AUDIT", "x", FALSE },
        { "PYTHONPATH", "x", FALSE },
        { "PYTHONSTARTUP", "x", FALSE },
        { "NODE_OPTIONS", "--require x", FALSE },
        { "NODE_PATH", "x", FALSE },
        { "BASH_ENV", "x", FALSE },
        { "ENV", "x", FALSE },
        { "PATH", "/tmp", FALSE },
        { "IFS", "x", FALSE },
        { "HOME", "/", FALSE },
        { "GLIBC_TUNABLES", "x", FALSE },
        { "MALLOC_ARENA_MAX", "1", FALSE },
        { "BASH_FUNC_ls%%", "() { :; }", FALSE },
        { "NODE_ENV", "production", TRUE },
        { "PYTHON", "x", FALSE },
        { "MYPATH", "x", TRUE },
        { "ENVIRONMENT", "x", TRUE },
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(GError) error = NULL;
        gboolean ok = sbx_validate_env_var(cases[i].name, cases[i].value, strlen(cases[i].value), &error);
        expect(ok, error, cases[i].ok, SBX_VALIDATE_ERROR_ENV, cases[i].name);
    }
    /* NUL inside a value given with an explicit length. */
    g_autoptr(GError) error = NULL;
    assert_false(sbx_validate_env_var("V", "a\0b", 3, &error));
    assert_true(g_error_matches(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_ENV));
}

static void
test_env_table(void **state)
{
    g_autoptr(GHashTable) env = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    g_autoptr(GError) error = NULL;

    assert_true(sbx_validate_env(NULL, &error));
    for (int i = 0; i < SBX_MAX_ENV_VARS; i++)
        g_hash_table_insert(env, g_strdup_printf("V%d", i), g_strdup("x"));
    assert_true(sbx_validate_env(env, &error));
    g_hash_table_insert(env, g_strdup("ONE_MORE"), g_strdup("x"));
    assert_false(sbx_validate_env(env, &error));
    assert_true(g_error_matches(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_ENV));
    assert_non_null(strstr(error->message, "100"));
    g_clear_error(&error);
    g_hash_table_remove_all(env);
    g_hash_table_insert(env, g_strdup("LD_PRELOAD"), g_strdup("x"));
    assert_false(sbx_validate_env(env, &error));
    assert_non_null(strstr(error->message, "LD_PRELOAD"));
}

static void
test_paths(void **state)
{
    g_autofree char *comp255 = g_strnfill(255, 'c');
    g_autofree char *comp256 = g_strnfill(256, 'c');
    g_autoptr(GString) p4096 = g_string_new(NULL);
    g_autoptr(GString) p4097 = g_string_new(NULL);
    while (p4096->len + 101 <= 4096)
        g_string_append(p4096, "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd/");
    g_string_append(p4096, "f");
    while (p4096->len < 4096)
        g_string_append_c(p4096, 'f');
    g_string_assign(p4097, p4096->str);
    g_string_append_c(p4097, 'f');
    assert_int_equal(p4096->len, 4096);

    struct { const char *path; gssize len; gboolean allow_root; gboolean ok; } cases[] = {
        { "a.txt", -1, FALSE, TRUE },
        { "dir/sub/file.bin", -1, FALSE, TRUE },
        { ".hidden", -1, FALSE, TRUE },
        { "a..b", -1, FALSE, TRUE },
        { "...", -1, FALSE, TRUE },
        { "caf\xc3\xa9", -1, FALSE, TRUE },
        { comp255, -1, FALSE, TRUE },
        { p4096->str, -1, FALSE, TRUE },
        { "", -1, TRUE, TRUE },
        { ".", -1, TRUE, TRUE },
        { "", -1, FALSE, FALSE },
        { ".", -1, FALSE, FALSE },
        { "/etc/passwd", -1, FALSE, FALSE },
        { "../x", -1, FALSE, FALSE },
        { "a/../../x", -1, FALSE, FALSE },
        { "a/..", -1, FALSE, FALSE },
        { "a/./b", -1, FALSE, FALSE },
        { "a//b", -1, FALSE, FALSE },
        { "a/", -1, FALSE, FALSE },
        { "a\0b", 3, FALSE, FALSE },
        { "bad\xff", -1, FALSE, FALSE },
        { comp256, -1, FALSE, FALSE },
        { p4097->str, -1, FALSE, FALSE },
        { "/", -1, TRUE, FALSE },
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(GError) error = NULL;
        gsize len = cases[i].len < 0 ? strlen(cases[i].path) : (gsize)cases[i].len;
        gboolean ok = sbx_validate_path(cases[i].path, len, cases[i].allow_root, &error);
        g_autofree char *what = g_strdup_printf("path case %zu", i);
        expect(ok, error, cases[i].ok, SBX_VALIDATE_ERROR_PATH, what);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_code),
        cmocka_unit_test(test_language),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_env_vars),
        cmocka_unit_test(test_env_table),
        cmocka_unit_test(test_paths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
