/* SPDX-License-Identifier: MIT
 *
 * Helpers shared by the qmp/ integration tests; see qmp-itest.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <signal.h>

#include "common/sbx-fd.h"
#include "tests/integration/qmp-itest.h"

void
it_wait_cb(GObject *source, GAsyncResult *res, gpointer data)
{
    ItWait *w = data;
    w->count++;
    g_clear_object(&w->res);
    w->res = g_object_ref(res);
}

void
it_wait_clear(ItWait *w)
{
    g_clear_object(&w->res);
    w->count = 0;
}

static gboolean
guard_cb(gpointer data)
{
    g_printerr("# hang guard: giving up after 60 s\n");
    abort();
    return G_SOURCE_REMOVE;
}

void
it_run_until_flag(const gboolean *flag)
{
    guint guard = g_timeout_add_seconds(60, guard_cb, NULL);
    while (!*flag)
        g_main_context_iteration(NULL, TRUE);
    g_source_remove(guard);
}

void
it_run_wait(ItWait *w)
{
    guint guard = g_timeout_add_seconds(60, guard_cb, NULL);
    while (w->count == 0)
        g_main_context_iteration(NULL, TRUE);
    g_source_remove(guard);
}

char *
it_find_program(const char *name)
{
    return g_find_program_in_path(name);
}

void
it_add_qemu_monitor(SbxSpawnSpec *spec, const char *id, int fd)
{
    sbx_spawn_spec_add_arg(spec, "-chardev");
    sbx_spawn_spec_add_argf(spec, "socket,id=%s,fd=%d", id, fd);
    sbx_spawn_spec_add_arg(spec, "-mon");
    sbx_spawn_spec_add_argf(spec, "chardev=%s,mode=control", id);
}

void
it_add_qsd_monitor(SbxSpawnSpec *spec, const char *id, int fd)
{
    sbx_spawn_spec_add_arg(spec, "--chardev");
    sbx_spawn_spec_add_argf(spec, "socket,id=%s,fd=%d", id, fd);
    sbx_spawn_spec_add_arg(spec, "--monitor");
    sbx_spawn_spec_add_argf(spec, "chardev=%s", id);
}

SbxChild *
it_spawn_with_qmp(SbxSpawnSpec *spec, QmpClient **out_client, GError **error)
{
    int sv[2];
    g_auto(SbxFd) ours = -1;
    g_autoptr(SbxChild) child = NULL;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "socketpair: %s",
                    g_strerror(errno));
        return NULL;
    }
    ours = sv[0];
    sbx_spawn_spec_take_fd(spec, sv[1], 3);
    child = sbx_child_spawn(spec, error);
    if (child == NULL)
        return NULL;
    *out_client = qmp_client_new_for_fd(sbx_steal_fd(&ours), error);
    if (*out_client == NULL) {
        it_child_stop(child);
        return NULL;
    }
    return g_steal_pointer(&child);
}

gboolean
it_connect(QmpClient *client, GError **error)
{
    ItWait w = {0};
    gboolean ok;

    qmp_client_connect_async(client, 30000, NULL, it_wait_cb, &w);
    it_run_wait(&w);
    ok = qmp_client_connect_finish(client, w.res, NULL, error);
    it_wait_clear(&w);
    return ok;
}

JsonNode *
it_execute(QmpClient *client, const char *command, JsonObject *args, GError **error)
{
    ItWait w = {0};
    JsonNode *ret;

    qmp_client_execute_async(client, command, args, 30000, NULL, it_wait_cb, &w);
    it_run_wait(&w);
    ret = qmp_client_execute_finish(client, w.res, error);
    it_wait_clear(&w);
    return ret;
}

void
it_child_wait(SbxChild *child)
{
    ItWait w = {0};

    sbx_child_wait_async(child, NULL, it_wait_cb, &w);
    it_run_wait(&w);
    (void)sbx_child_wait_finish(child, w.res, NULL);
    it_wait_clear(&w);
}

void
it_child_stop(SbxChild *child)
{
    if (child == NULL)
        return;
    if (!sbx_child_has_exited(child))
        sbx_child_kill(child, SIGKILL);
    it_child_wait(child);
}
