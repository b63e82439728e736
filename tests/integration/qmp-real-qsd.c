/* SPDX-License-Identifier: MIT
 *
 * Integration test of qmp/ against the real qemu-storage-daemon, started
 * through sbx-spawn with its QMP monitor on an inherited socketpair fd:
 * handshake, creation of a qcow2 overlay with blockdev-create jobs (file, then
 * qcow2 with a backing file made by qemu-img) run to completion by
 * qmp_blockdev_create_run_async, blockdev-add / blockdev-del, a failing job
 * (QMP_ERROR_JOB, still dismissed), and quit.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "qmp/qmp-commands.h"
#include "qmp/qmp-parser.h"
#include "tests/integration/qmp-itest.h"

typedef struct {
    SbxChild *child;
    QmpClient *client;
    char *dir;
    char *base;
    char *overlay;
    guint n_closed;
} Qsd;

static char *qsd_path, *qemu_img_path;

static void
on_closed(QmpClient *client, const GError *reason, gpointer data)
{
    ((Qsd *)data)->n_closed++;
}

static void
run_qemu_img(const char *const *args)
{
    g_autoptr(SbxSpawnSpec) spec = sbx_spawn_spec_new();
    g_autoptr(GError) error = NULL;

    sbx_spawn_spec_add_arg(spec, qemu_img_path);
    for (gsize i = 0; args[i]; i++)
        sbx_spawn_spec_add_arg(spec, args[i]);
    g_autoptr(SbxChild) child = sbx_child_spawn(spec, &error);
    assert_non_null(child);
    it_child_wait(child);
    if (!WIFEXITED(sbx_child_get_status(child)) || WEXITSTATUS(sbx_child_get_status(child)) != 0) {
        g_autofree char *console = sbx_child_dup_console(child);
        fail_msg("qemu-img failed: %s", console);
    }
}

static int
group_setup(void **state)
{
    g_autoptr(SbxSpawnSpec) spec = sbx_spawn_spec_new();
    g_autoptr(GError) error = NULL;
    Qsd *q = g_new0(Qsd, 1);

    q->dir = g_dir_make_tmp("qmp-qsd-XXXXXX", &error);
    assert_non_null(q->dir);
    q->base = g_build_filename(q->dir, "base.qcow2", NULL);
    q->overlay = g_build_filename(q->dir, "overlay.qcow2", NULL);
    const char *args[] = {"create", "-q", "-f", "qcow2", q->base, "64M", NULL};
    run_qemu_img(args);

    sbx_spawn_spec_add_arg(spec, qsd_path);
    it_add_qsd_monitor(spec, "qmp", 3);
    q->child = it_spawn_with_qmp(spec, &q->client, &error);
    assert_non_null(q->child);
    g_signal_connect(q->client, "closed", G_CALLBACK(on_closed), q);
    *state = q;
    return 0;
}

static int
group_teardown(void **state)
{
    Qsd *q = *state;
    g_clear_object(&q->client);
    it_child_stop(q->child);
    g_clear_object(&q->child);
    (void)unlink(q->overlay);
    (void)unlink(q->base);
    (void)rmdir(q->dir);
    g_free(q->overlay);
    g_free(q->base);
    g_free(q->dir);
    g_free(q);
    return 0;
}

static gboolean
create_run(Qsd *q, const char *job_id, JsonObject *options, GError **error)
{
    ItWait w = {0};
    gboolean ok;

    qmp_blockdev_create_run_async(q->client, job_id, options, 60000, NULL, it_wait_cb, &w);
    it_run_wait(&w);
    ok = qmp_blockdev_create_run_finish(q->client, w.res, error);
    it_wait_clear(&w);
    return ok;
}

static void
blockdev_add(Qsd *q, JsonObject *options)
{
    ItWait w = {0};
    g_autoptr(GError) error = NULL;

    qmp_blockdev_add_async(q->client, options, NULL, it_wait_cb, &w);
    it_run_wait(&w);
    if (!qmp_blockdev_add_finish(q->client, w.res, &error))
        fail_msg("blockdev-add: %s", error->message);
    it_wait_clear(&w);
}

static void
blockdev_del(Qsd *q, const char *node)
{
    ItWait w = {0};
    g_autoptr(GError) error = NULL;

    qmp_blockdev_del_async(q->client, node, NULL, it_wait_cb, &w);
    it_run_wait(&w);
    if (!qmp_blockdev_del_finish(q->client, w.res, &error))
        fail_msg("blockdev-del %s: %s", node, error->message);
    it_wait_clear(&w);
}

static void
test_handshake(void **state)
{
    Qsd *q = *state;
    g_autoptr(GError) error = NULL;

    if (!it_connect(q->client, &error))
        fail_msg("connect: %s", error->message);
    assert_true(qmp_client_get_version(q->client)->major >= 7);
    assert_int_equal(qmp_client_get_state(q->client), QMP_CLIENT_STATE_RUNNING);
}

/* The backing file name recorded in a qcow2 header (big-endian fields). */
static char *
qcow2_backing_name(const char *path)
{
    g_autofree char *data = NULL;
    gsize len = 0;
    const guint8 *h;

    assert_true(g_file_get_contents(path, &data, &len, NULL));
    assert_true(len >= 20);
    h = (const guint8 *)data;
    assert_memory_equal(h, "QFI\xfb", 4);
    guint64 off = 0;
    for (int i = 0; i < 8; i++)
        off = off << 8 | h[8 + i];
    guint32 size = (guint32)h[16] << 24 | (guint32)h[17] << 16 | (guint32)h[18] << 8 | h[19];
    assert_true(off + size <= len);
    return g_strndup(data + off, size);
}

static void
test_create_qcow2_overlay(void **state)
{
    Qsd *q = *state;
    g_autoptr(GError) error = NULL;

    /* 1. the file itself */
    g_autoptr(JsonObject) file_opts = json_object_new();
    json_object_set_string_member(file_opts, "driver", "file");
    json_object_set_string_member(file_opts, "filename", q->overlay);
    json_object_set_int_member(file_opts, "size", 0);
    if (!create_run(q, "mkfile", file_opts, &error))
        fail_msg("create file: %s", error->message);
    assert_true(g_file_test(q->overlay, G_FILE_TEST_IS_REGULAR));

    g_autoptr(JsonObject) file_node = json_object_new();
    json_object_set_string_member(file_node, "driver", "file");
    json_object_set_string_member(file_node, "node-name", "ovl-file");
    json_object_set_string_member(file_node, "filename", q->overlay);
    blockdev_add(q, file_node);

    /* 2. qcow2 on it, backed by the qemu-img base */
    g_autoptr(JsonObject) qcow_opts = json_object_new();
    json_object_set_string_member(qcow_opts, "driver", "qcow2");
    json_object_set_string_member(qcow_opts, "file", "ovl-file");
    json_object_set_int_member(qcow_opts, "size", 64 * 1024 * 1024);
    json_object_set_string_member(qcow_opts, "backing-file", q->base);
    json_object_set_string_member(qcow_opts, "backing-fmt", "qcow2");
    if (!create_run(q, "mkqcow2", qcow_opts, &error))
        fail_msg("create qcow2: %s", error->message);

    g_autoptr(JsonObject) qcow_node = json_object_new();
    json_object_set_string_member(qcow_node, "driver", "qcow2");
    json_object_set_string_member(qcow_node, "node-name", "ovl");
    json_object_set_string_member(qcow_node, "file", "ovl-file");
    blockdev_add(q, qcow_node);

    /* The daemon sees a qcow2 node backed by the base ... */
    g_autoptr(JsonNode) nodes = it_execute(q->client, "query-named-block-nodes", NULL, &error);
    assert_non_null(nodes);
    assert_true(JSON_NODE_HOLDS_ARRAY(nodes));
    JsonArray *arr = json_node_get_array(nodes);
    gboolean found = FALSE;
    for (guint i = 0; i < json_array_get_length(arr); i++) {
        JsonObject *n = json_array_get_object_element(arr, i);
        const char *name = qmp_json_peek_string(n, "node-name");
        if (name && g_str_equal(name, "ovl")) {
            found = TRUE;
            assert_string_equal(qmp_json_peek_string(n, "drv"), "qcow2");
            assert_string_equal(qmp_json_peek_string(n, "backing_file"), q->base);
        }
    }
    assert_true(found);
    /* ... and the file on disk says so too. */
    g_autofree char *backing = qcow2_backing_name(q->overlay);
    assert_string_equal(backing, q->base);

    /* No job left behind. */
    g_autoptr(JsonNode) jobs = it_execute(q->client, "query-jobs", NULL, &error);
    assert_int_equal(json_array_get_length(json_node_get_array(jobs)), 0);

    blockdev_del(q, "ovl");
    blockdev_del(q, "ovl-file");
}

static void
test_failing_job(void **state)
{
    Qsd *q = *state;
    g_autoptr(GError) error = NULL;
    g_autofree char *bad = g_build_filename(q->dir, "no", "such", "dir", "x.qcow2", NULL);

    /* The job starts, then fails: QMP_ERROR_JOB, and it is dismissed anyway. */
    g_autoptr(JsonObject) opts = json_object_new();
    json_object_set_string_member(opts, "driver", "file");
    json_object_set_string_member(opts, "filename", bad);
    json_object_set_int_member(opts, "size", 0);
    assert_false(create_run(q, "badfile", opts, &error));
    assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_JOB));
    g_clear_error(&error);
    g_autoptr(JsonNode) jobs = it_execute(q->client, "query-jobs", NULL, &error);
    assert_int_equal(json_array_get_length(json_node_get_array(jobs)), 0);

    /* A missing node is found only when the job runs: also QMP_ERROR_JOB. */
    g_autoptr(JsonObject) opts2 = json_object_new();
    json_object_set_string_member(opts2, "driver", "qcow2");
    json_object_set_string_member(opts2, "file", "no-such-node");
    json_object_set_int_member(opts2, "size", 1048576);
    assert_false(create_run(q, "badnode", opts2, &error));
    assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_JOB));
    g_clear_error(&error);

    /* The command itself is refused (bad enum value): QMP_ERROR_COMMAND with its class. */
    g_autoptr(JsonObject) opts3 = json_object_new();
    json_object_set_string_member(opts3, "driver", "no-such-driver");
    assert_false(create_run(q, "baddriver", opts3, &error));
    assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_COMMAND));
    assert_int_equal(qmp_error_get_class(error), QMP_ERROR_CLASS_GENERIC_ERROR);
    g_clear_error(&error);
    g_autoptr(JsonNode) jobs2 = it_execute(q->client, "query-jobs", NULL, &error);
    assert_int_equal(json_array_get_length(json_node_get_array(jobs2)), 0);
}

static void
test_quit(void **state)
{
    Qsd *q = *state;
    ItWait w = {0};
    g_autoptr(GError) error = NULL;

    qmp_quit_async(q->client, NULL, it_wait_cb, &w);
    it_run_wait(&w);
    if (!qmp_quit_finish(q->client, w.res, &error))
        fail_msg("quit: %s", error->message);
    it_wait_clear(&w);
    it_child_wait(q->child);
    assert_true(WIFEXITED(sbx_child_get_status(q->child)));
    assert_int_equal(WEXITSTATUS(sbx_child_get_status(q->child)), 0);
    while (q->n_closed == 0)
        g_main_context_iteration(NULL, TRUE);
    assert_int_equal(q->n_closed, 1);
}

int
main(void)
{
    qsd_path = it_find_program("qemu-storage-daemon");
    qemu_img_path = it_find_program("qemu-img");
    if (qsd_path == NULL || qemu_img_path == NULL) {
        printf("1..0 # SKIP qemu-storage-daemon or qemu-img not found (Debian: qemu-system-common, "
               "qemu-utils)\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake),
        cmocka_unit_test(test_create_qcow2_overlay),
        cmocka_unit_test(test_failing_job),
        cmocka_unit_test(test_quit),
    };
    int rc = cmocka_run_group_tests_name("qmp-real-qsd", tests, group_setup, group_teardown);
    g_free(qsd_path);
    g_free(qemu_img_path);
    return rc;
}
