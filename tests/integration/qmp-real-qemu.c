/* SPDX-License-Identifier: MIT
 *
 * Integration test of qmp/ against the real qemu-system-x86_64 (microvm,
 * TCG, -S, no devices), started through sbx-spawn with its QMP monitor on
 * an inherited socketpair fd: handshake and version, query-status through
 * prelaunch/running/paused, error classes from real QEMU, getfd/closefd and
 * add-fd with SCM_RIGHTS (QEMU really holds, then really closes, our pipe),
 * quit with its SHUTDOWN event, and QEMU killed under a pending command.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/sbx-fd.h"
#include "qmp/qmp-commands.h"
#include "qmp/qmp-parser.h"
#include "tests/integration/qmp-itest.h"

typedef struct {
    SbxChild *child;
    QmpClient *client;
    guint n_closed;
    guint n_shutdown;
    char *shutdown_reason;
} Vm;

static char *qemu_path;

static void
on_closed(QmpClient *client, const GError *reason, gpointer data)
{
    ((Vm *)data)->n_closed++;
}

static void
on_shutdown(QmpClient *client, const char *name, JsonObject *data, gint64 ts, gpointer user)
{
    Vm *vm = user;
    vm->n_shutdown++;
    g_free(vm->shutdown_reason);
    vm->shutdown_reason = g_strdup(qmp_json_peek_string(data, "reason"));
    assert_true(ts > 0);
}

static Vm *
vm_start(gboolean incoming_defer)
{
    g_autoptr(SbxSpawnSpec) spec = sbx_spawn_spec_new();
    g_autoptr(GError) error = NULL;
    Vm *vm = g_new0(Vm, 1);

    sbx_spawn_spec_add_args(spec, qemu_path, "-M", "microvm", "-accel", "tcg", "-S", "-nodefaults",
                            "-no-user-config", "-display", "none", "-m", "64", NULL);
    if (incoming_defer)
        sbx_spawn_spec_add_args(spec, "-incoming", "defer", NULL);
    it_add_qemu_monitor(spec, "qmp", 3);
    vm->child = it_spawn_with_qmp(spec, &vm->client, &error);
    if (vm->child == NULL)
        fail_msg("spawn: %s", error->message);
    g_signal_connect(vm->client, "closed", G_CALLBACK(on_closed), vm);
    g_signal_connect(vm->client, "event::SHUTDOWN", G_CALLBACK(on_shutdown), vm);
    if (!it_connect(vm->client, &error)) {
        g_autofree char *console = sbx_child_dup_console_tail(vm->child, 10);
        fail_msg("connect: %s (console: %s)", error->message, console);
    }
    return vm;
}

static void
vm_free(Vm *vm)
{
    if (vm == NULL)
        return;
    g_clear_object(&vm->client);
    it_child_stop(vm->child);
    g_clear_object(&vm->child);
    g_free(vm->shutdown_reason);
    g_free(vm);
}

static int
setup(void **state)
{
    *state = vm_start(FALSE);
    return 0;
}

static int
teardown(void **state)
{
    vm_free(*state);
    return 0;
}

static char *
status_of(QmpClient *client, gboolean *out_running)
{
    ItWait w = {0};
    g_autoptr(GError) error = NULL;
    char *status;

    qmp_query_status_async(client, NULL, it_wait_cb, &w);
    it_run_wait(&w);
    status = qmp_query_status_finish(client, w.res, out_running, &error);
    assert_null(error);
    it_wait_clear(&w);
    return status;
}

#define RUN_VOID(call, finish)                                                                     \
    do {                                                                                           \
        ItWait w_ = {0};                                                                           \
        g_autoptr(GError) e_ = NULL;                                                               \
        call;                                                                                      \
        it_run_wait(&w_);                                                                          \
        if (!finish(vm->client, w_.res, &e_))                                                      \
            fail_msg("%s: %s", #finish, e_->message);                                              \
        it_wait_clear(&w_);                                                                        \
    } while (0)

static void
test_status_cont_stop_quit(void **state)
{
    Vm *vm = *state;
    gboolean running = TRUE;
    g_autofree char *s1 = NULL, *s2 = NULL, *s3 = NULL;
    ItWait w = {0};
    g_autoptr(GError) error = NULL;
    QmpVersion v = {0};

    /* The greeting's version is the one query-version reports. */
    const QmpVersion *greeting = qmp_client_get_version(vm->client);
    assert_non_null(greeting);
    assert_true(greeting->major >= 7);
    qmp_query_version_async(vm->client, NULL, it_wait_cb, &w);
    it_run_wait(&w);
    assert_true(qmp_query_version_finish(vm->client, w.res, &v, &error));
    assert_int_equal(v.major, greeting->major);
    assert_int_equal(v.minor, greeting->minor);
    assert_int_equal(v.micro, greeting->micro);
    it_wait_clear(&w);

    s1 = status_of(vm->client, &running);
    assert_string_equal(s1, "prelaunch");
    assert_false(running);
    RUN_VOID(qmp_cont_async(vm->client, NULL, it_wait_cb, &w_), qmp_cont_finish);
    s2 = status_of(vm->client, &running);
    assert_string_equal(s2, "running");
    assert_true(running);
    RUN_VOID(qmp_stop_async(vm->client, NULL, it_wait_cb, &w_), qmp_stop_finish);
    s3 = status_of(vm->client, &running);
    assert_string_equal(s3, "paused");

    RUN_VOID(qmp_quit_async(vm->client, NULL, it_wait_cb, &w_), qmp_quit_finish);
    it_child_wait(vm->child);
    assert_true(WIFEXITED(sbx_child_get_status(vm->child)));
    assert_int_equal(WEXITSTATUS(sbx_child_get_status(vm->child)), 0);
    /* QEMU hangs up after quit: the client notices, once. */
    while (vm->n_closed == 0)
        g_main_context_iteration(NULL, TRUE);
    assert_int_equal(vm->n_closed, 1);
    assert_int_equal(vm->n_shutdown, 1);
    assert_string_equal(vm->shutdown_reason, "host-qmp-quit");
    assert_int_equal(qmp_client_get_state(vm->client), QMP_CLIENT_STATE_CLOSED);
}

static void
test_error_classes(void **state)
{
    Vm *vm = *state;
    g_autoptr(GError) error = NULL;
    g_autoptr(JsonNode) ret = it_execute(vm->client, "no-such-command", NULL, &error);
    ItWait w = {0};

    assert_null(ret);
    assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_COMMAND));
    assert_int_equal(qmp_error_get_class(error), QMP_ERROR_CLASS_COMMAND_NOT_FOUND);
    g_clear_error(&error);

    /* No balloon device in this VM. */
    qmp_query_balloon_async(vm->client, NULL, it_wait_cb, &w);
    it_run_wait(&w);
    assert_false(qmp_query_balloon_finish(vm->client, w.res, NULL, &error));
    assert_int_equal(qmp_error_get_class(error), QMP_ERROR_CLASS_DEVICE_NOT_ACTIVE);
    g_clear_error(&error);
    it_wait_clear(&w);

    /* Bad arguments are a GenericError, and the connection stays usable. */
    g_autoptr(JsonObject) args = json_object_new();
    json_object_set_int_member(args, "fdname", 5);
    g_autoptr(JsonNode) ret2 = it_execute(vm->client, "closefd", args, &error);
    assert_int_equal(qmp_error_get_class(error), QMP_ERROR_CLASS_GENERIC_ERROR);
    g_autofree char *status = status_of(vm->client, NULL);
    assert_string_equal(status, "prelaunch");
}

static void
test_getfd_closefd_add_fd(void **state)
{
    Vm *vm = *state;
    int p[2];
    g_auto(SbxFd) rd = -1, wr = -1;
    char c;
    ItWait w = {0};
    g_autoptr(GError) error = NULL;

    assert_int_equal(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
    rd = p[0];
    wr = p[1];
    RUN_VOID(qmp_getfd_async(vm->client, wr, "pipe1", NULL, it_wait_cb, &w_), qmp_getfd_finish);
    sbx_fd_close(&wr);
    /* QEMU now holds the only write end: no EOF yet. */
    assert_int_equal(read(rd, &c, 1), -1);
    assert_int_equal(errno, EAGAIN);
    RUN_VOID(qmp_closefd_async(vm->client, "pipe1", NULL, it_wait_cb, &w_), qmp_closefd_finish);
    /* ... and closefd really closed it. */
    assert_int_equal(read(rd, &c, 1), 0);
    /* Closing it twice is QEMU's GenericError. */
    qmp_closefd_async(vm->client, "pipe1", NULL, it_wait_cb, &w);
    it_run_wait(&w);
    assert_false(qmp_closefd_finish(vm->client, w.res, &error));
    assert_int_equal(qmp_error_get_class(error), QMP_ERROR_CLASS_GENERIC_ERROR);
    g_clear_error(&error);
    it_wait_clear(&w);

    /* add-fd: a new fd set; QEMU reports the set and its own fd number. */
    int q[2];
    assert_int_equal(pipe2(q, O_CLOEXEC), 0);
    g_auto(SbxFd) q0 = q[0], q1 = q[1];
    gint64 set = -1, fd = -1;
    qmp_add_fd_async(vm->client, q1, -1, "test", NULL, it_wait_cb, &w);
    it_run_wait(&w);
    assert_true(qmp_add_fd_finish(vm->client, w.res, &set, &fd, &error));
    assert_true(set >= 0);
    assert_true(fd >= 0);
    it_wait_clear(&w);
    g_autoptr(JsonNode) sets = it_execute(vm->client, "query-fdsets", NULL, &error);
    assert_non_null(sets);
    g_autofree char *text = json_to_string(sets, FALSE);
    assert_non_null(strstr(text, "\"opaque\":\"test\""));
    (void)q0;
}

static void
test_killed_under_pending_command(void **state)
{
    Vm *vm = *state;
    ItWait w = {0};
    g_autoptr(GError) error = NULL;

    sbx_child_kill(vm->child, SIGKILL);
    it_child_wait(vm->child);
    /* QEMU is gone; the command cannot be answered. */
    qmp_client_execute_async(vm->client, "query-status", NULL, QMP_TIMEOUT_NONE, NULL, it_wait_cb,
                             &w);
    it_run_wait(&w);
    g_autoptr(JsonNode) ret = qmp_client_execute_finish(vm->client, w.res, &error);
    assert_null(ret);
    assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_DISCONNECTED));
    while (g_main_context_iteration(NULL, FALSE))
        ;
    assert_int_equal(vm->n_closed, 1);
    assert_int_equal(w.count, 1);
    it_wait_clear(&w);
}

typedef struct {
    char *status; /* final MIGRATION status seen */
} MigLog;

static void
on_migration(QmpClient *client, const char *name, JsonObject *data, gint64 ts, gpointer user)
{
    MigLog *m = user;
    const char *status = qmp_json_peek_string(data, "status");
    if (status && (g_str_equal(status, "completed") || g_str_equal(status, "failed"))) {
        g_free(m->status);
        m->status = g_strdup(status);
    }
}

static void
enable_migration_events(Vm *vm)
{
    const char *caps[] = {"events", NULL};
    RUN_VOID(qmp_migrate_set_capabilities_async(vm->client, caps, TRUE, NULL, it_wait_cb, &w_),
             qmp_migrate_set_capabilities_finish);
}

static void
wait_migration(MigLog *m)
{
    while (m->status == NULL)
        g_main_context_iteration(NULL, TRUE);
}

static char *
migrate_status(Vm *vm)
{
    ItWait w = {0};
    g_autoptr(GError) error = NULL;
    char *status;

    qmp_query_migrate_async(vm->client, NULL, it_wait_cb, &w);
    it_run_wait(&w);
    status = qmp_query_migrate_finish(vm->client, w.res, NULL, &error);
    assert_non_null(status);
    it_wait_clear(&w);
    return status;
}

/* Save the paused VM to a file with migrate + exec:, restore it into a
 * second QEMU started with -incoming defer through migrate-incoming; the
 * MIGRATION events (capability "events") tell when each side is done. */
static void
test_migrate_roundtrip(void **state)
{
    Vm *vm = *state;
    g_autoptr(GError) error = NULL;
    g_autofree char *path = NULL;
    MigLog src_log = {0}, dst_log = {0};
    int fd = g_file_open_tmp("qmp-mig-XXXXXX", &path, &error);

    assert_true(fd >= 0);
    close(fd);
    g_autofree char *before = migrate_status(vm);
    assert_string_equal(before, "none");
    /* Run, then pause: the saved run state travels with the migration stream. */
    RUN_VOID(qmp_cont_async(vm->client, NULL, it_wait_cb, &w_), qmp_cont_finish);
    RUN_VOID(qmp_stop_async(vm->client, NULL, it_wait_cb, &w_), qmp_stop_finish);
    enable_migration_events(vm);
    g_signal_connect(vm->client, "event::MIGRATION", G_CALLBACK(on_migration), &src_log);
    g_autofree char *out_uri = g_strdup_printf("exec:cat > '%s'", path);
    RUN_VOID(qmp_migrate_async(vm->client, out_uri, NULL, it_wait_cb, &w_), qmp_migrate_finish);
    wait_migration(&src_log);
    assert_string_equal(src_log.status, "completed");
    g_autofree char *after = migrate_status(vm);
    assert_string_equal(after, "completed");
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(st.st_size > 0);

    Vm *dst = vm_start(TRUE);
    g_autofree char *inmigrate = status_of(dst->client, NULL);
    assert_string_equal(inmigrate, "inmigrate");
    Vm *saved = vm;
    vm = dst; /* RUN_VOID uses vm */
    enable_migration_events(dst);
    g_signal_connect(dst->client, "event::MIGRATION", G_CALLBACK(on_migration), &dst_log);
    g_autofree char *in_uri = g_strdup_printf("exec:cat '%s'", path);
    RUN_VOID(qmp_migrate_incoming_async(dst->client, in_uri, NULL, it_wait_cb, &w_),
             qmp_migrate_incoming_finish);
    wait_migration(&dst_log);
    assert_string_equal(dst_log.status, "completed");
    g_autofree char *restored = status_of(dst->client, NULL);
    assert_string_equal(restored, "paused");
    RUN_VOID(qmp_cont_async(dst->client, NULL, it_wait_cb, &w_), qmp_cont_finish);
    g_autofree char *running = status_of(dst->client, NULL);
    assert_string_equal(running, "running");
    vm = saved;
    vm_free(dst);
    (void)unlink(path);
    g_free(src_log.status);
    g_free(dst_log.status);
}

int
main(void)
{
    qemu_path = it_find_program("qemu-system-x86_64");
    if (qemu_path == NULL) {
        printf("1..0 # SKIP qemu-system-x86_64 not found (Debian: qemu-system-x86)\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_status_cont_stop_quit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_classes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_getfd_closefd_add_fd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_killed_under_pending_command, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_roundtrip, setup, teardown),
    };
    int rc = cmocka_run_group_tests_name("qmp-real-qemu", tests, NULL, NULL);
    g_free(qemu_path);
    return rc;
}
