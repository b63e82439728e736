/* SPDX-License-Identifier: MIT
 *
 * qmp-dump: test helper for tests/integration/qmp-crosscheck.py. Starts
 * qemu-system-x86_64 (microvm, TCG, -S) through sbx-spawn with two QMP
 * monitors: one on a socketpair of its own (fd 3, served by QmpClient) and
 * one on the fd the caller passes with --extra-monitor-fd (fd 4 in QEMU,
 * served by the Python reference client). Prints, one JSON object per line,
 * the greeting version and the reply to every command named on the command
 * line; then waits for "quit" on stdin, quits QEMU and prints the SHUTDOWN
 * event it received.
 *
 *   qmp-dump --extra-monitor-fd N CMD...
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "qmp/qmp-commands.h"
#include "tests/integration/qmp-itest.h"

static void
print_object(JsonObject *obj)
{
    g_autoptr(JsonNode) node = json_node_init_object(json_node_alloc(), obj);
    g_autofree char *text = json_to_string(node, FALSE);
    printf("%s\n", text);
    fflush(stdout);
}

static void
on_shutdown(QmpClient *client, const char *name, JsonObject *data, gint64 ts, gpointer user)
{
    g_autoptr(JsonObject) out = json_object_new();
    json_object_set_string_member(out, "event", name);
    json_object_set_object_member(out, "data", json_object_ref(data));
    print_object(out);
    *(gboolean *)user = TRUE;
}

int
main(int argc, char **argv)
{
    g_autoptr(SbxSpawnSpec) spec = sbx_spawn_spec_new();
    g_autoptr(GError) error = NULL;
    g_autoptr(QmpClient) client = NULL;
    g_autoptr(SbxChild) child = NULL;
    g_autofree char *qemu = g_find_program_in_path("qemu-system-x86_64");
    gboolean shutdown_seen = FALSE;
    int extra_fd;

    if (argc < 3 || strcmp(argv[1], "--extra-monitor-fd") != 0) {
        fprintf(stderr, "usage: %s --extra-monitor-fd N CMD...\n", argv[0]);
        return 2;
    }
    if (qemu == NULL) {
        fprintf(stderr, "qemu-system-x86_64 not found\n");
        return 77;
    }
    extra_fd = atoi(argv[2]);
    sbx_spawn_spec_add_args(spec, qemu, "-M", "microvm", "-accel", "tcg", "-S", "-nodefaults",
                            "-no-user-config", "-display", "none", "-m", "64", NULL);
    it_add_qemu_monitor(spec, "qmp", 3);
    it_add_qemu_monitor(spec, "qmp2", 4);
    sbx_spawn_spec_take_fd(spec, extra_fd, 4);
    child = it_spawn_with_qmp(spec, &client, &error);
    if (child == NULL || !it_connect(client, &error)) {
        fprintf(stderr, "qmp-dump: %s\n", error->message);
        if (child)
            it_child_stop(child);
        return 1;
    }
    g_signal_connect(client, "event::SHUTDOWN", G_CALLBACK(on_shutdown), &shutdown_seen);

    const QmpVersion *v = qmp_client_get_version(client);
    g_autoptr(JsonObject) greeting = json_object_new();
    g_autoptr(JsonObject) ver = json_object_new();
    json_object_set_int_member(ver, "major", v->major);
    json_object_set_int_member(ver, "minor", v->minor);
    json_object_set_int_member(ver, "micro", v->micro);
    json_object_set_object_member(greeting, "greeting", g_steal_pointer(&ver));
    print_object(greeting);

    for (int i = 3; i < argc; i++) {
        g_autoptr(GError) cmd_error = NULL;
        g_autoptr(JsonNode) ret = it_execute(client, argv[i], NULL, &cmd_error);
        g_autoptr(JsonObject) out = json_object_new();
        json_object_set_string_member(out, "command", argv[i]);
        if (ret)
            json_object_set_member(out, "return", g_steal_pointer(&ret));
        else
            json_object_set_string_member(out, "error-class",
                                          qmp_error_get_class_name(cmd_error)
                                              ? qmp_error_get_class_name(cmd_error)
                                              : cmd_error->message);
        print_object(out);
    }

    /* A test tool: blocking on stdin is fine here (nothing else to serve). */
    char line[64];
    if (fgets(line, sizeof line, stdin) == NULL || strncmp(line, "quit", 4) != 0) {
        it_child_stop(child);
        return 1;
    }
    g_autoptr(JsonNode) bye = it_execute(client, "quit", NULL, &error);
    if (bye == NULL)
        fprintf(stderr, "qmp-dump: quit: %s\n", error->message);
    it_child_wait(child);
    while (g_main_context_iteration(NULL, FALSE))
        ;
    return bye != NULL && shutdown_seen && WIFEXITED(sbx_child_get_status(child)) &&
                   WEXITSTATUS(sbx_child_get_status(child)) == 0
               ? 0
               : 1;
}
