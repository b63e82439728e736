/* SPDX-License-Identifier: MIT
 *
 * Component tests of common/sbx-spawn: a real /bin/sh child with an fd passed at
 * a fixed number, its own process group, the console ring, exit status and
 * process-group kill. Waits run the GLib main context; nothing sleeps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "common/sbx-fd.h"
#include "common/sbx-spawn.h"

static void
wait_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    gboolean *done = data;
    g_autoptr(GError) error = NULL;
    assert_true(sbx_child_wait_finish(SBX_CHILD(src), res, &error));
    *done = TRUE;
}

static void
wait_child(SbxChild *child)
{
    gboolean done = FALSE;
    sbx_child_wait_async(child, NULL, wait_cb, &done);
    while (!done)
        g_main_context_iteration(NULL, TRUE);
    /* let the console drain finish reading the last bytes */
    while (g_main_context_iteration(NULL, FALSE))
        ;
}

static void
test_exit_status_and_console(void **state)
{
    g_autoptr(SbxSpawnSpec) spec = sbx_spawn_spec_new();
    g_autoptr(GError) error = NULL;
    sbx_spawn_spec_add_args(spec, "/bin/sh", "-c", "echo out; echo err >&2; exit 3", NULL);
    g_autoptr(SbxChild) child = sbx_child_spawn(spec, &error);
    assert_non_null(child);
    assert_null(error);
    wait_child(child);
    assert_true(sbx_child_has_exited(child));
    assert_true(WIFEXITED(sbx_child_get_status(child)));
    assert_int_equal(WEXITSTATUS(sbx_child_get_status(child)), 3);
    g_autofree char *console = sbx_child_dup_console(child);
    assert_non_null(strstr(console, "out\n"));
    assert_non_null(strstr(console, "err\n"));
    g_autofree char *desc = sbx_child_describe_exit(child);
    assert_string_equal(desc, "exited with status 3");
}

static void
test_fd_passing_and_pgroup(void **state)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    g_auto(SbxFd) ours = sv[0];
    g_autoptr(SbxSpawnSpec) spec = sbx_spawn_spec_new();
    g_autoptr(GError) error = NULL;
    /* The child writes its pid and process group id to fd 5. */
    sbx_spawn_spec_add_args(spec, "/bin/sh", "-c", "echo \"$$ $(ps -o pgid= -p $$)\" >&5", NULL);
    sbx_spawn_spec_take_fd(spec, sv[1], 5);
    g_autoptr(SbxChild) child = sbx_child_spawn(spec, &error);
    assert_non_null(child);
    wait_child(child);
    char buf[128] = {0};
    ssize_t n = read(ours, buf, sizeof buf - 1);
    assert_true(n > 0);
    long pid = 0, pgid = 0;
    assert_int_equal(sscanf(buf, "%ld %ld", &pid, &pgid), 2);
    assert_int_equal(pid, sbx_child_get_pid(child));
    assert_int_equal(pgid, pid); /* leads its own process group */
    assert_int_equal(WEXITSTATUS(sbx_child_get_status(child)), 0);
}

static int
count_live_in_pgroup(pid_t pgid)
{
    g_autoptr(GDir) dir = g_dir_open("/proc", 0, NULL);
    const char *name;
    int live = 0;
    while ((name = g_dir_read_name(dir)) != NULL) {
        if (!g_ascii_isdigit(name[0]))
            continue;
        g_autofree char *path = g_strdup_printf("/proc/%s/stat", name);
        g_autofree char *stat = NULL;
        if (!g_file_get_contents(path, &stat, NULL, NULL))
            continue;
        const char *rp = strrchr(stat, ')');
        char st = 0;
        long ppid = 0, pgrp = 0;
        if (rp == NULL || sscanf(rp + 1, " %c %ld %ld", &st, &ppid, &pgrp) != 3)
            continue;
        if (pgrp == pgid && st != 'Z' && st != 'X')
            live++;
    }
    return live;
}

static void
test_kill_process_group(void **state)
{
    g_autoptr(SbxSpawnSpec) spec = sbx_spawn_spec_new();
    g_autoptr(GError) error = NULL;
    /* A grandchild in the same group must die with the group. */
    sbx_spawn_spec_add_args(spec, "/bin/sh", "-c", "sleep 600 & echo started; wait", NULL);
    g_autoptr(SbxChild) child = sbx_child_spawn(spec, &error);
    assert_non_null(child);
    /* wait for "started" on the console, then kill the group */
    for (;;) {
        g_autofree char *c = sbx_child_dup_console(child);
        if (strstr(c, "started"))
            break;
        g_main_context_iteration(NULL, TRUE);
    }
    sbx_child_kill(child, SIGKILL);
    wait_child(child);
    assert_true(WIFSIGNALED(sbx_child_get_status(child)));
    assert_int_equal(WTERMSIG(sbx_child_get_status(child)), SIGKILL);
    /* no live member of the group is left (orphans may linger as zombies
     * until the system's init reaps them; they no longer run) */
    /* SIGKILL is queued, not synchronous: give the grandchild up to 5 s to die */
    for (int i = 0; i < 500 && count_live_in_pgroup(sbx_child_get_pid(child)) > 0; i++)
        g_usleep(10 * 1000);
    assert_int_equal(count_live_in_pgroup(sbx_child_get_pid(child)), 0);
}

static void
test_exec_failure(void **state)
{
    g_autoptr(SbxSpawnSpec) spec = sbx_spawn_spec_new();
    g_autoptr(GError) error = NULL;
    sbx_spawn_spec_add_arg(spec, "/nonexistent/binary");
    g_autoptr(SbxChild) child = sbx_child_spawn(spec, &error);
    assert_null(child);
    assert_non_null(error);
    assert_non_null(strstr(error->message, "/nonexistent/binary"));
}

static void
test_console_ring_bounded(void **state)
{
    g_autoptr(SbxSpawnSpec) spec = sbx_spawn_spec_new();
    g_autoptr(GError) error = NULL;
    sbx_spawn_spec_set_console_size(spec, 64);
    sbx_spawn_spec_add_args(spec, "/bin/sh", "-c",
                            "i=0; while [ $i -lt 200 ]; do echo line$i; i=$((i+1)); done", NULL);
    g_autoptr(SbxChild) child = sbx_child_spawn(spec, &error);
    assert_non_null(child);
    wait_child(child);
    g_autofree char *c = sbx_child_dup_console(child);
    assert_int_equal(strlen(c), 64);
    assert_non_null(strstr(c, "line199\n"));
    g_autofree char *tail = sbx_child_dup_console_tail(child, 2);
    assert_string_equal(tail, "line198\nline199");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exit_status_and_console),
        cmocka_unit_test(test_fd_passing_and_pgroup),
        cmocka_unit_test(test_kill_process_group),
        cmocka_unit_test(test_exec_failure),
        cmocka_unit_test(test_console_ring_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
