/* SPDX-License-Identifier: MIT
 *
 * Unit tests of the L1 template cache (scheduler/sbx-template.c) without a VM:
 * the cache key changes with every input that changes the device model or the
 * guest's contents and with nothing else; a committed entry (files + metadata
 * written here the way a build commits them) is found, and rejected and
 * removed when a file's size or identity changed; an entry without metadata
 * (a crash mid-commit) is a miss; a malformed metadata file is rejected;
 * prune removes other keys only; keys parse back to language and memory;
 * evict_lru removes least recently used whole entries (a hit marks one used),
 * never the one to keep nor one whose build lock is held, and an entry evicted
 * by another process is a miss, not an error.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "scheduler/sbx-template.h"
#include "tests/sbx-test-proc.h"

typedef struct {
    char *dir;
    char *guest;
    char *cache_dir;
} Fixture;

static int
setup(void **state)
{
    Fixture *f = g_new0(Fixture, 1);
    f->dir = g_dir_make_tmp("sbx-l1-cache-XXXXXX", NULL);
    f->guest = g_build_filename(f->dir, "guest", NULL);
    f->cache_dir = g_build_filename(f->dir, "l1", NULL);
    g_mkdir(f->guest, 0700);
    g_autofree char *m = g_build_filename(f->guest, "manifest.json", NULL);
    g_file_set_contents(m, "{\"files\":{\"vmlinux\":{\"sha256\":\"aa\"}}}", -1, NULL);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    Fixture *f = *state;
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    g_free(f->dir);
    g_free(f->guest);
    g_free(f->cache_dir);
    g_free(f);
    return 0;
}

static SbxTemplateKeyInput
base_input(Fixture *f)
{
    SbxTemplateKeyInput in = {
        .language = SBX_LANGUAGE_PYTHON,
        .memory_mb = 512,
        .vcpus = 1,
        .accel = SBX_ACCEL_TCG,
        .qemu = "sh", /* any binary in PATH: its identity is hashed */
        .guest_dir = f->guest,
        .cmdline = "console=ttyS0",
        .mem_merge = TRUE,
        .disk_format = "qcow2",
    };
    return in;
}

static char *
key_of(const SbxTemplateKeyInput *in)
{
    g_autoptr(GError) error = NULL;
    char *k = sbx_template_compute_key(in, &error);
    assert_null(error);
    assert_non_null(k);
    return k;
}

static void
test_key_inputs(void **state)
{
    Fixture *f = *state;
    SbxTemplateKeyInput in = base_input(f);
    g_autofree char *k0 = key_of(&in);
    g_autofree char *k0b = key_of(&in);
    assert_string_equal(k0, k0b); /* deterministic */
    assert_true(g_str_has_prefix(k0, "l1-python-512m-"));

    g_autoptr(GPtrArray) keys = g_ptr_array_new_with_free_func(g_free);
    SbxTemplateKeyInput v;
    v = in; v.language = SBX_LANGUAGE_JAVASCRIPT; g_ptr_array_add(keys, key_of(&v));
    v = in; v.memory_mb = 1024; g_ptr_array_add(keys, key_of(&v));
    v = in; v.vcpus = 2; g_ptr_array_add(keys, key_of(&v));
    v = in; v.accel = SBX_ACCEL_KVM; g_ptr_array_add(keys, key_of(&v));
    v = in; v.cmdline = "console=ttyS0 quiet"; g_ptr_array_add(keys, key_of(&v));
    v = in; v.mem_merge = FALSE; g_ptr_array_add(keys, key_of(&v));
    v = in; v.disk_format = "raw"; g_ptr_array_add(keys, key_of(&v));
    v = in; v.qemu = "true"; g_ptr_array_add(keys, key_of(&v));
    for (guint i = 0; i < keys->len; i++) {
        assert_string_not_equal(k0, g_ptr_array_index(keys, i));
        for (guint j = i + 1; j < keys->len; j++)
            assert_string_not_equal(g_ptr_array_index(keys, i), g_ptr_array_index(keys, j));
    }
    /* the image: a changed manifest (any image file hash) is a new key */
    g_autofree char *m = g_build_filename(f->guest, "manifest.json", NULL);
    g_file_set_contents(m, "{\"files\":{\"vmlinux\":{\"sha256\":\"bb\"}}}", -1, NULL);
    g_autofree char *k1 = key_of(&in);
    assert_string_not_equal(k0, k1);
    /* no manifest: no key */
    g_unlink(m);
    g_autoptr(GError) error = NULL;
    assert_null(sbx_template_compute_key(&in, &error));
    assert_non_null(error);
}

static void
put(const char *dir, const char *key, const char *sfx, gsize size)
{
    g_autofree char *p = g_strdup_printf("%s/%s.%s", dir, key, sfx);
    g_autofree char *data = g_malloc0(size);
    assert_true(g_file_set_contents(p, data, (gssize)size, NULL));
}

static void
id_json(GString *s, const char *dir, const char *key, const char *sfx)
{
    g_autofree char *p = g_strdup_printf("%s/%s.%s", dir, key, sfx);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    g_string_append_printf(
        s, "\"%s\":{\"size\":%" G_GINT64_FORMAT ",\"dev\":%" G_GINT64_FORMAT ",\"ino\":%" G_GINT64_FORMAT
           ",\"mtime_ns\":%" G_GINT64_FORMAT "}",
        sfx, (gint64)st.st_size, (gint64)st.st_dev, (gint64)st.st_ino,
        (gint64)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec);
}

/* A committed entry as a build leaves it. */
static void
commit_entry(const char *dir, const char *key, gboolean with_meta)
{
    put(dir, key, "ram", 8192);
    put(dir, key, "state", 100);
    put(dir, key, "disk", 4096);
    if (!with_meta)
        return;
    g_autoptr(GString) s = g_string_new(NULL);
    g_string_append_printf(s, "{\"format\":%d,\"key\":\"%s\",\"memory_mb\":512,"
                              "\"disk_format\":\"qcow2\",\"disk_size\":4096,\"hot_pages\":[0,2],"
                              "\"files\":{",
                           SBX_TEMPLATE_FORMAT, key);
    id_json(s, dir, key, "ram");
    g_string_append_c(s, ',');
    id_json(s, dir, key, "state");
    g_string_append_c(s, ',');
    id_json(s, dir, key, "disk");
    g_string_append(s, "}}");
    g_autofree char *p = g_strdup_printf("%s/%s.json", dir, key);
    assert_true(g_file_set_contents(p, s->str, -1, NULL));
}

static gboolean
exists(const char *dir, const char *key, const char *sfx)
{
    g_autofree char *p = g_strdup_printf("%s/%s.%s", dir, key, sfx);
    return g_file_test(p, G_FILE_TEST_EXISTS);
}

static void
test_lookup_identity(void **state)
{
    Fixture *f = *state;
    g_autoptr(GError) error = NULL;
    g_autoptr(SbxTemplateCache) cache = sbx_template_cache_new(f->cache_dir, &error);
    assert_non_null(cache);
    const char *key = "l1-python-512m-0123456789abcdef";

    /* nothing yet: a miss, no error */
    assert_null(sbx_template_cache_lookup(cache, key, &error));
    assert_null(error);

    /* files without metadata (crash before the commit point): still a miss */
    commit_entry(f->cache_dir, key, FALSE);
    assert_null(sbx_template_cache_lookup(cache, key, &error));
    assert_null(error);

    commit_entry(f->cache_dir, key, TRUE);
    g_autoptr(SbxTemplate) t = sbx_template_cache_lookup(cache, key, &error);
    assert_null(error);
    assert_non_null(t);
    assert_int_equal(sbx_template_get_memory_mb(t), 512);
    assert_int_equal(sbx_template_get_disk_size(t), 4096);
    assert_int_equal(sbx_template_get_hot_bytes(t), 2 * sysconf(_SC_PAGESIZE));
    assert_string_equal(sbx_template_get_disk_format(t), "qcow2");
    int fd = sbx_template_open_state(t, &error);
    assert_true(fd >= 0);
    close(fd);

    /* a changed state file (same size, new mtime) is rejected and the entry removed */
    g_usleep(10000);
    put(f->cache_dir, key, "state", 100);
    g_autoptr(SbxTemplate) t2 = sbx_template_cache_lookup(cache, key, &error);
    assert_null(t2);
    assert_non_null(error);
    g_clear_error(&error);
    assert_false(exists(f->cache_dir, key, "json"));
    assert_false(exists(f->cache_dir, key, "ram"));
    assert_false(exists(f->cache_dir, key, "state"));
    assert_false(exists(f->cache_dir, key, "disk"));

    /* a truncated RAM file too */
    commit_entry(f->cache_dir, key, TRUE);
    g_autoptr(SbxTemplateCache) cache2 = sbx_template_cache_new(f->cache_dir, &error);
    g_autofree char *ram = g_strdup_printf("%s/%s.ram", f->cache_dir, key);
    assert_int_equal(truncate(ram, 4096), 0);
    assert_null(sbx_template_cache_lookup(cache2, key, &error));
    assert_non_null(error);
    g_clear_error(&error);
    assert_false(exists(f->cache_dir, key, "json"));

    /* malformed metadata is rejected */
    commit_entry(f->cache_dir, key, FALSE);
    g_autofree char *meta = g_strdup_printf("%s/%s.json", f->cache_dir, key);
    g_file_set_contents(meta, "{\"format\":1,\"key\":\"other\"}", -1, NULL);
    assert_null(sbx_template_cache_lookup(cache2, key, &error));
    assert_non_null(error);
    g_clear_error(&error);
}

static void
test_prune(void **state)
{
    Fixture *f = *state;
    g_autoptr(GError) error = NULL;
    g_autoptr(SbxTemplateCache) cache = sbx_template_cache_new(f->cache_dir, &error);
    const char *keep = "l1-python-512m-1111111111111111";
    const char *old = "l1-python-512m-2222222222222222";
    commit_entry(f->cache_dir, keep, TRUE);
    commit_entry(f->cache_dir, old, TRUE);
    put(f->cache_dir, old, "ram.tmp", 10);
    put(f->cache_dir, "unrelated", "txt", 1);
    const char *const keeps[] = {keep, NULL};
    assert_int_equal(sbx_template_cache_prune(cache, keeps), 1);
    assert_true(exists(f->cache_dir, keep, "json"));
    assert_true(exists(f->cache_dir, keep, "ram"));
    assert_false(exists(f->cache_dir, old, "json"));
    assert_false(exists(f->cache_dir, old, "ram"));
    assert_false(exists(f->cache_dir, old, "ram.tmp"));
    assert_true(exists(f->cache_dir, "unrelated", "txt"));
    g_autoptr(SbxTemplate) t = sbx_template_cache_lookup(cache, keep, &error);
    assert_non_null(t);
}

static void
test_key_parse(void **state)
{
    Fixture *f = *state;
    SbxTemplateKeyInput in = base_input(f);
    in.language = SBX_LANGUAGE_JAVASCRIPT;
    in.memory_mb = 1536;
    g_autofree char *k = key_of(&in);
    SbxLanguage language = SBX_LANGUAGE_PYTHON;
    guint mem = 0;
    assert_true(sbx_template_key_parse(k, &language, &mem));
    assert_int_equal(language, SBX_LANGUAGE_JAVASCRIPT);
    assert_int_equal(mem, 1536);
    const char *bad[] = {"l1-python-512-0123456789abcdef", "l1-ruby-512m-0123456789abcdef",
                         "l1-python-512m-0123", "x1-python-512m-0123456789abcdef",
                         "l1-python-m-0123456789abcdef", "l1-python-0m-0123456789abcdef", ""};
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++)
        assert_false(sbx_template_key_parse(bad[i], &language, &mem));
}

static void
set_used(const char *dir, const char *key, time_t when)
{
    g_autofree char *p = g_strdup_printf("%s/%s.json", dir, key);
    struct timespec ts[2] = {{when, 0}, {when, 0}};
    assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
}

/* Least recently used whole entries go first; a hit marks an entry used; the
 * entry to keep and one whose build lock another process holds stay. */
static void
test_evict_lru(void **state)
{
    Fixture *f = *state;
    g_autoptr(GError) error = NULL;
    g_autoptr(SbxTemplateCache) cache = sbx_template_cache_new(f->cache_dir, &error);
    const char *a = "l1-python-512m-aaaaaaaaaaaaaaaa";
    const char *b = "l1-python-384m-bbbbbbbbbbbbbbbb";
    const char *c = "l1-raw-512m-cccccccccccccccc";
    const char *d = "l1-javascript-1024m-dddddddddddddddd";
    commit_entry(f->cache_dir, a, TRUE);
    commit_entry(f->cache_dir, b, TRUE);
    commit_entry(f->cache_dir, c, TRUE);
    commit_entry(f->cache_dir, d, FALSE); /* no metadata: not an entry, not counted */
    put(f->cache_dir, a, "lock", 0);
    time_t now = time(NULL);
    set_used(f->cache_dir, a, now - 300); /* oldest */
    set_used(f->cache_dir, b, now - 200);
    set_used(f->cache_dir, c, now - 100);
    assert_int_equal(sbx_template_cache_count(cache), 3);
    g_auto(GStrv) keys = sbx_template_cache_list_keys(cache);
    assert_int_equal(g_strv_length(keys), 4);

    /* a hit makes a the most recently used */
    g_autoptr(SbxTemplate) ta = sbx_template_cache_lookup(cache, a, &error);
    assert_non_null(ta);
    g_auto(GStrv) none = sbx_template_cache_evict_lru(cache, 3, NULL);
    assert_int_equal(g_strv_length(none), 0);
    g_auto(GStrv) gone = sbx_template_cache_evict_lru(cache, 2, NULL);
    assert_int_equal(g_strv_length(gone), 1);
    assert_string_equal(gone[0], b);
    assert_int_equal(sbx_test_count_files(f->cache_dir, b, NULL),
                     0); /* whole: ram, state, disk, json */
    assert_int_equal(sbx_test_count_files(f->cache_dir, a, NULL), 5); /* + its lock */
    assert_int_equal(sbx_template_cache_count(cache), 2);
    assert_null(sbx_template_cache_lookup(cache, b, &error));
    assert_null(error);

    /* @keep stays even when it is the least recently used */
    set_used(f->cache_dir, c, now - 1000);
    g_auto(GStrv) gone2 = sbx_template_cache_evict_lru(cache, 1, c);
    assert_int_equal(g_strv_length(gone2), 1);
    assert_string_equal(gone2[0], a);
    assert_int_equal(sbx_test_count_files(f->cache_dir, a, NULL), 0);
    /* a was looked up here before: its next lookup is a miss, not an error */
    assert_null(sbx_template_cache_lookup(cache, a, &error));
    assert_null(error);

    /* an entry whose lock another process holds (a rebuild) is left alone */
    commit_entry(f->cache_dir, b, TRUE);
    set_used(f->cache_dir, b, now - 5000);
    g_autofree char *lock_path = g_strdup_printf("%s/%s.lock", f->cache_dir, b);
    int lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    assert_true(lock >= 0);
    assert_int_equal(flock(lock, LOCK_EX | LOCK_NB), 0);
    g_auto(GStrv) gone3 = sbx_template_cache_evict_lru(cache, 1, NULL);
    assert_int_equal(g_strv_length(gone3), 1);
    assert_string_equal(gone3[0], c);
    assert_true(exists(f->cache_dir, b, "json"));
    close(lock);
    g_auto(GStrv) gone4 = sbx_template_cache_evict_lru(cache, 1, NULL);
    assert_int_equal(g_strv_length(gone4), 0); /* one left: nothing to do */
    assert_true(exists(f->cache_dir, b, "json"));

    /* another process evicting an entry this one has cached: a miss, no error */
    g_autoptr(SbxTemplateCache) other = sbx_template_cache_new(f->cache_dir, &error);
    g_autoptr(SbxTemplate) tb = sbx_template_cache_lookup(cache, b, &error);
    assert_non_null(tb);
    commit_entry(f->cache_dir, c, TRUE);
    g_auto(GStrv) gone5 = sbx_template_cache_evict_lru(other, 1, c);
    assert_int_equal(g_strv_length(gone5), 1);
    assert_null(sbx_template_cache_lookup(cache, b, &error));
    assert_null(error);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_key_inputs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lookup_identity, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prune, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_parse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_evict_lru, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
