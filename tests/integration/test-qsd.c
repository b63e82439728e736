/* SPDX-License-Identifier: MIT
 *
 * Integration tests of qsd/ against the real qemu-storage-daemon: qcow2
 * overlays through blockdev-create, the pre-created pool and its refill, a
 * daemon killed with SIGKILL and restarted on the next request, and the
 * reflink fast path on an XFS (reflink=1) loop mount.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qsd/qsd-daemon.h"
#include "qsd/qsd-overlay-pool.h"

typedef struct {
    char *dir;
    char *seed;
} Fixture;

static gboolean
run_ok(const char *cmd)
{
    int status = 0;
    g_autoptr(GError) error = NULL;
    if (!g_spawn_command_line_sync(cmd, NULL, NULL, &status, &error))
        return FALSE;
    return g_spawn_check_wait_status(status, NULL);
}

static int
setup(void **state)
{
    Fixture *f = g_new0(Fixture, 1);
    f->dir = g_dir_make_tmp("sbx-qsd-XXXXXX", NULL);
    f->seed = g_build_filename(f->dir, "seed.raw", NULL);
    FILE *fp = fopen(f->seed, "w");
    assert_non_null(fp);
    assert_int_equal(ftruncate(fileno(fp), 64 * 1024 * 1024), 0);
    fclose(fp);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    Fixture *f = *state;
    g_autofree char *cmd = g_strdup_printf("rm -rf %s", f->dir);
    (void)run_ok(cmd);
    g_free(f->dir);
    g_free(f->seed);
    g_free(f);
    return 0;
}

typedef struct {
    gboolean done;
    gboolean ok;
    GError *error;
} Wait;

static void
overlay_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    Wait *w = data;
    w->ok = qsd_daemon_create_overlay_finish(QSD_DAEMON(src), res, &w->error);
    w->done = TRUE;
}

static void
take_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    Wait *w = data;
    w->ok = qsd_overlay_pool_take_finish(QSD_OVERLAY_POOL(src), res, &w->error);
    w->done = TRUE;
}

static void
stop_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    Wait *w = data;
    w->ok = qsd_daemon_stop_finish(QSD_DAEMON(src), res, &w->error);
    w->done = TRUE;
}

static void
spin(Wait *w)
{
    while (!w->done)
        g_main_context_iteration(NULL, TRUE);
    if (w->error)
        print_message("# %s\n", w->error->message);
}

/* A qcow2 header names its backing file: check magic and the name. */
static void
assert_qcow2_over(const char *path, const char *backing)
{
    g_autofree char *data = NULL;
    gsize len = 0;
    assert_true(g_file_get_contents(path, &data, &len, NULL));
    assert_true(len > 512);
    assert_memory_equal(data, "QFI\xfb", 4);
    assert_non_null(memmem(data, MIN(len, 65536), backing, strlen(backing)));
}

static void
stop_daemon(QsdDaemon *qsd)
{
    Wait w = {0};
    qsd_daemon_stop_async(qsd, 2000, NULL, stop_cb, &w);
    spin(&w);
    assert_true(w.ok);
    assert_false(qsd_daemon_is_running(qsd));
}

static void
test_overlay_create(void **state)
{
    Fixture *f = *state;
    g_autoptr(QsdDaemon) qsd = qsd_daemon_new("qemu-storage-daemon", NULL);
    g_autofree char *path = g_build_filename(f->dir, "one.qcow2", NULL);
    Wait w = {0};
    qsd_daemon_create_overlay_async(qsd, path, f->seed, "raw", 64 * 1024 * 1024, NULL, overlay_cb,
                                    &w);
    spin(&w);
    assert_true(w.ok);
    assert_true(qsd_daemon_is_running(qsd));
    assert_qcow2_over(path, f->seed);
    /* the node was deleted again: QEMU can take the write lock */
    g_autofree char *cmd = g_strdup_printf("qemu-img info -U %s", path);
    assert_true(run_ok(cmd));
    g_autofree char *check = g_strdup_printf("qemu-img check -q %s", path);
    assert_true(run_ok(check));
    stop_daemon(qsd);
}

static void
test_overlay_bad_backing_fails_cleanly(void **state)
{
    Fixture *f = *state;
    g_autoptr(QsdDaemon) qsd = qsd_daemon_new("qemu-storage-daemon", NULL);
    g_autofree char *path = g_build_filename(f->dir, "sub/missing-dir/x.qcow2", NULL);
    Wait w = {0};
    qsd_daemon_create_overlay_async(qsd, path, f->seed, "raw", 1 << 20, NULL, overlay_cb, &w);
    spin(&w);
    assert_false(w.ok);
    assert_non_null(w.error);
    g_clear_error(&w.error);
    assert_false(g_file_test(path, G_FILE_TEST_EXISTS));
    /* the daemon survives a failed request */
    assert_true(qsd_daemon_is_running(qsd));
    stop_daemon(qsd);
}

static void
test_restart_after_kill(void **state)
{
    Fixture *f = *state;
    g_autoptr(QsdDaemon) qsd = qsd_daemon_new("qemu-storage-daemon", NULL);
    g_autofree char *p1 = g_build_filename(f->dir, "a.qcow2", NULL);
    g_autofree char *p2 = g_build_filename(f->dir, "b.qcow2", NULL);
    Wait w = {0};
    qsd_daemon_create_overlay_async(qsd, p1, f->seed, "raw", 1 << 20, NULL, overlay_cb, &w);
    spin(&w);
    assert_true(w.ok);
    GPid pid = qsd_daemon_get_pid(qsd);
    assert_true(pid > 0);
    assert_int_equal(kill(pid, SIGKILL), 0);
    /* the death is noticed through the child watch and the QMP hang-up */
    while (qsd_daemon_is_running(qsd))
        g_main_context_iteration(NULL, TRUE);
    Wait w2 = {0};
    qsd_daemon_create_overlay_async(qsd, p2, f->seed, "raw", 1 << 20, NULL, overlay_cb, &w2);
    spin(&w2);
    assert_true(w2.ok);
    assert_int_equal(qsd_daemon_get_restarts(qsd), 1);
    assert_true(qsd_daemon_get_pid(qsd) != pid);
    assert_qcow2_over(p2, f->seed);
    stop_daemon(qsd);
}

static guint
count_pool_files(const char *dir)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *name;
    guint n = 0;
    while (d && (name = g_dir_read_name(d)) != NULL)
        n += g_str_has_prefix(name, "pool-");
    return n;
}

static void
fill_pool(QsdOverlayPool *pool, guint n)
{
    while (qsd_overlay_pool_get_ready(pool) < n)
        g_main_context_iteration(NULL, TRUE);
}

static void
test_pool_prefill_take_refill(void **state)
{
    Fixture *f = *state;
    g_autoptr(QsdDaemon) qsd = qsd_daemon_new("qemu-storage-daemon", NULL);
    g_autofree char *pooldir = g_build_filename(f->dir, "pool", NULL);
    g_autoptr(GError) error = NULL;
    g_autoptr(QsdOverlayPool) pool = qsd_overlay_pool_new(qsd, f->seed, pooldir, 3, &error);
    assert_non_null(pool);
    assert_string_equal(qsd_overlay_pool_get_format(pool), "qcow2"); /* ext4: no reflink */
    fill_pool(pool, 3);
    assert_int_equal(count_pool_files(pooldir), 3);

    g_autofree char *dest = g_build_filename(pooldir, "vm-1.qcow2", NULL);
    Wait w = {0};
    qsd_overlay_pool_take_async(pool, dest, NULL, take_cb, &w);
    spin(&w);
    assert_true(w.ok);
    assert_qcow2_over(dest, f->seed);
    assert_int_equal(qsd_overlay_pool_get_misses(pool), 0);
    fill_pool(pool, 3); /* refilled in the background */
    assert_int_equal(count_pool_files(pooldir), 3);

    /* empty pool: take still works (created on demand) and counts a miss */
    qsd_overlay_pool_set_target(pool, 0);
    assert_int_equal(qsd_overlay_pool_get_ready(pool), 0);
    g_autofree char *dest2 = g_build_filename(pooldir, "vm-2.qcow2", NULL);
    Wait w2 = {0};
    qsd_overlay_pool_take_async(pool, dest2, NULL, take_cb, &w2);
    spin(&w2);
    assert_true(w2.ok);
    assert_int_equal(qsd_overlay_pool_get_misses(pool), 1);
    assert_qcow2_over(dest2, f->seed);
    qsd_overlay_pool_drain(pool);
    assert_int_equal(count_pool_files(pooldir), 0);
    stop_daemon(qsd);
}

static void
test_pool_reflink_on_xfs(void **state)
{
    Fixture *f = *state;
    g_autofree char *img = g_build_filename(f->dir, "xfs.img", NULL);
    g_autofree char *mnt = g_build_filename(f->dir, "xfs", NULL);
    g_autofree char *mk = g_strdup_printf("sh -c 'truncate -s 300M %s && mkfs.xfs -q -m reflink=1 %s'",
                                          img, img);
    assert_true(run_ok(mk));
    assert_int_equal(g_mkdir_with_parents(mnt, 0700), 0);
    g_autofree char *mount_cmd = g_strdup_printf("mount -o loop %s %s", img, mnt);
    assert_true(run_ok(mount_cmd));

    g_autofree char *seed = g_build_filename(mnt, "seed.raw", NULL);
    g_autofree char *cp = g_strdup_printf("cp --sparse=always %s %s", f->seed, seed);
    assert_true(run_ok(cp));
    g_autoptr(QsdDaemon) qsd = qsd_daemon_new("qemu-storage-daemon", NULL);
    g_autofree char *pooldir = g_build_filename(mnt, "pool", NULL);
    g_autoptr(GError) error = NULL;
    QsdOverlayPool *pool = qsd_overlay_pool_new(qsd, seed, pooldir, 2, &error);
    assert_non_null(pool);
    assert_true(qsd_overlay_pool_uses_reflink(pool));
    assert_string_equal(qsd_overlay_pool_get_format(pool), "raw");
    assert_int_equal(qsd_overlay_pool_get_ready(pool), 2); /* clones are made inline */
    g_autofree char *dest = g_build_filename(pooldir, "vm.raw", NULL);
    Wait w = {0};
    qsd_overlay_pool_take_async(pool, dest, NULL, take_cb, &w);
    spin(&w);
    assert_true(w.ok);
    struct stat st;
    assert_int_equal(stat(dest, &st), 0);
    assert_int_equal(st.st_size, 64 * 1024 * 1024);
    /* no storage daemon was needed */
    assert_false(qsd_daemon_is_running(qsd));
    g_object_unref(pool);
    g_autofree char *umount_cmd = g_strdup_printf("umount %s", mnt);
    assert_true(run_ok(umount_cmd));
}

int
main(void)
{
    if (!g_find_program_in_path("qemu-storage-daemon")) {
        /* TAP: a skip is a plan of 0 with a reason, and exit 0 */
        printf("1..0 # SKIP qemu-storage-daemon not installed (ci/deps.sh installs it)\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_overlay_create, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overlay_bad_backing_fails_cleanly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_after_kill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_prefill_take_refill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_reflink_on_xfs, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
