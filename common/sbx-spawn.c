/* SPDX-License-Identifier: MIT
 *
 * sbx-spawn: the one spawn helper for every child process. Builds on
 * g_spawn_async_with_pipes_and_fds: fds are remapped to fixed numbers, a
 * child-setup hook puts the child in its own process group and its cgroups
 * before exec, and the merged stdout/stderr pipe is drained asynchronously
 * into a bounded ring. Reaping goes through GLib's child watch (no SIGCHLD
 * handler of ours, no waitpid(-1)).
 * Used by qsd/, gvproxy-glue/ and scheduler/; depends on nothing else here.
 */
#define G_LOG_DOMAIN "sbx-spawn"

#include "common/sbx-spawn.h"
#include "common/sbx-fd.h"

#include <fcntl.h>
#include <glib-unix.h>
#include <gio/gunixinputstream.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define SBX_SPAWN_MAX_CGROUPS 8

G_DEFINE_QUARK(sbx-spawn-error-quark, sbx_spawn_error)

typedef struct {
    int source;
    int target;
} SbxFdMap;

struct _SbxSpawnSpec {
    GPtrArray *argv;  /* NULL-terminated */
    GArray *fds;      /* SbxFdMap, owned sources */
    GPtrArray *cgroups;
    GPtrArray *env;   /* name=value */
    gsize console_size;
    gboolean die_with_parent;
};

SbxSpawnSpec *
sbx_spawn_spec_new(void)
{
    SbxSpawnSpec *spec = g_new0(SbxSpawnSpec, 1);
    spec->argv = g_ptr_array_new_with_free_func(g_free);
    g_ptr_array_add(spec->argv, NULL);
    spec->fds = g_array_new(FALSE, FALSE, sizeof(SbxFdMap));
    spec->cgroups = g_ptr_array_new_with_free_func(g_free);
    spec->env = g_ptr_array_new_with_free_func(g_free);
    spec->console_size = 64 * 1024;
    spec->die_with_parent = TRUE;
    return spec;
}

static void
spec_close_fds(SbxSpawnSpec *spec)
{
    for (guint i = 0; i < spec->fds->len; i++) {
        SbxFdMap *m = &g_array_index(spec->fds, SbxFdMap, i);
        sbx_fd_close(&m->source);
    }
    g_array_set_size(spec->fds, 0);
}

void
sbx_spawn_spec_free(SbxSpawnSpec *spec)
{
    if (spec == NULL)
        return;
    spec_close_fds(spec);
    g_array_unref(spec->fds);
    g_ptr_array_unref(spec->argv);
    g_ptr_array_unref(spec->cgroups);
    g_ptr_array_unref(spec->env);
    g_free(spec);
}

void
sbx_spawn_spec_add_arg(SbxSpawnSpec *spec, const char *arg)
{
    g_ptr_array_insert(spec->argv, (int)spec->argv->len - 1, g_strdup(arg));
}

void
sbx_spawn_spec_add_argf(SbxSpawnSpec *spec, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_ptr_array_insert(spec->argv, (int)spec->argv->len - 1, g_strdup_vprintf(fmt, ap));
    va_end(ap);
}

void
sbx_spawn_spec_add_args(SbxSpawnSpec *spec, const char *first, ...)
{
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a != NULL; a = va_arg(ap, const char *))
        sbx_spawn_spec_add_arg(spec, a);
    va_end(ap);
}

void
sbx_spawn_spec_take_fd(SbxSpawnSpec *spec, int source_fd, int target_fd)
{
    g_return_if_fail(target_fd >= 3);
    SbxFdMap m = {source_fd, target_fd};
    g_array_append_val(spec->fds, m);
}

void
sbx_spawn_spec_add_cgroup(SbxSpawnSpec *spec, const char *procs_file)
{
    g_return_if_fail(spec->cgroups->len < SBX_SPAWN_MAX_CGROUPS);
    g_ptr_array_add(spec->cgroups, g_strdup(procs_file));
}

void
sbx_spawn_spec_setenv(SbxSpawnSpec *spec, const char *name, const char *value)
{
    g_ptr_array_add(spec->env, g_strdup_printf("%s=%s", name, value));
}

void
sbx_spawn_spec_set_console_size(SbxSpawnSpec *spec, gsize bytes)
{
    spec->console_size = bytes;
}

void
sbx_spawn_spec_set_die_with_parent(SbxSpawnSpec *spec, gboolean die)
{
    spec->die_with_parent = die;
}

const char *const *
sbx_spawn_spec_get_argv(SbxSpawnSpec *spec)
{
    return (const char *const *)spec->argv->pdata;
}

/* ---- child ------------------------------------------------------------- */

struct _SbxChild {
    GObject parent_instance;
    GInputStream *out;  /* merged stdout+stderr pipe */
    guint watch_id;     /* child watch until reaped */
    GPid pid;
    char *name;
    GCancellable *cancellable;
    /* console ring */
    guint8 *ring;
    gsize ring_size;
    gsize ring_len;  /* bytes stored (<= ring_size) */
    gsize ring_head; /* next write position */
    guint8 read_buf[4096];
    gboolean exited;
    int status;
    GQueue waiters; /* GTask */
};

G_DEFINE_FINAL_TYPE(SbxChild, sbx_child, G_TYPE_OBJECT)

typedef struct {
    char *cgroups[SBX_SPAWN_MAX_CGROUPS];
    guint n_cgroups;
    gboolean die_with_parent;
    pid_t parent;
} ChildSetup;

/* Runs in the child between fork and exec: async-signal-safe calls only. */
static void
child_setup(gpointer data)
{
    ChildSetup *cs = data;

    (void)setpgid(0, 0);
    if (cs->die_with_parent) {
        (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != cs->parent)
            _exit(127);
    }
    /* Fail closed: a child that cannot join its cgroup must not run unlimited. */
    for (guint i = 0; i < cs->n_cgroups; i++) {
        int fd = open(cs->cgroups[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, "0", 1) != 1) {
            static const char msg[] = "sbx-spawn: cannot join cgroup ";
            (void)!write(2, msg, sizeof msg - 1);
            (void)!write(2, cs->cgroups[i], strlen(cs->cgroups[i]));
            (void)!write(2, "\n", 1);
            _exit(127);
        }
        (void)close(fd);
    }
    /* Signals ignored or blocked by the parent must not leak into the child. */
    sigset_t all;
    sigemptyset(&all);
    (void)sigprocmask(SIG_SETMASK, &all, NULL);
    (void)signal(SIGPIPE, SIG_DFL);
}

static void
ring_append(SbxChild *self, const guint8 *data, gsize len)
{
    if (self->ring_size == 0)
        return;
    if (len >= self->ring_size) {
        data += len - self->ring_size;
        len = self->ring_size;
    }
    gsize first = MIN(len, self->ring_size - self->ring_head);
    memcpy(self->ring + self->ring_head, data, first);
    memcpy(self->ring, data + first, len - first);
    self->ring_head = (self->ring_head + len) % self->ring_size;
    self->ring_len = MIN(self->ring_size, self->ring_len + len);
}

static void start_drain(SbxChild *self, GInputStream *stream);

static void
drain_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(SbxChild) self = user_data;
    g_autoptr(GError) error = NULL;
    gssize n = g_input_stream_read_finish(G_INPUT_STREAM(source), res, &error);

    if (n <= 0)
        return;
    ring_append(self, self->read_buf, (gsize)n);
    g_debug("%s: %.*s", self->name, (int)n, (const char *)self->read_buf);
    start_drain(self, G_INPUT_STREAM(source));
}

static void
start_drain(SbxChild *self, GInputStream *stream)
{
    g_input_stream_read_async(stream, self->read_buf, sizeof self->read_buf, G_PRIORITY_DEFAULT,
                              self->cancellable, drain_cb, g_object_ref(self));
}

static void
child_watch_cb(GPid pid, int status, gpointer user_data)
{
    SbxChild *self = user_data;
    self->watch_id = 0;
    self->exited = TRUE;
    self->status = status;
    g_spawn_close_pid(pid);
    g_debug("%s[%d] %s", self->name, (int)pid, WIFEXITED(status) ? "exited" : "was killed");
    GTask *task;
    while ((task = g_queue_pop_head(&self->waiters)) != NULL) {
        g_task_return_boolean(task, TRUE);
        g_object_unref(task);
    }
}

/* argv[0] resolved and the environment: ours plus the spec's overrides. */
static GStrv
child_environ(SbxSpawnSpec *spec)
{
    GStrv envp = g_get_environ();
    for (guint i = 0; i < spec->env->len; i++) {
        g_auto(GStrv) kv = g_strsplit(g_ptr_array_index(spec->env, i), "=", 2);
        envp = g_environ_setenv(envp, kv[0], kv[1] ? kv[1] : "", TRUE);
    }
    return envp;
}

SbxChild *
sbx_child_spawn(SbxSpawnSpec *spec, GError **error)
{
    g_autoptr(SbxChild) self = NULL;
    const char *const *argv = sbx_spawn_spec_get_argv(spec);
    g_auto(GStrv) envp = child_environ(spec);
    g_auto(SbxFd) out_r = -1;
    g_auto(SbxFd) out_w = -1;
    g_autofree int *sources = g_new0(int, spec->fds->len + 1);
    g_autofree int *targets = g_new0(int, spec->fds->len + 1);
    ChildSetup cs = {0};
    GPid pid = 0;
    gboolean ok;

    g_return_val_if_fail(argv[0] != NULL, NULL);

    /* stdout and stderr share one pipe drained into the console ring; without a
     * ring they go to /dev/null. stdin is always /dev/null: QEMU's -serial stdio
     * must never read the caller's terminal. */
    if (spec->console_size > 0) {
        int p[2];
        if (!g_unix_open_pipe(p, FD_CLOEXEC, error))
            return NULL;
        out_r = p[0];
        out_w = p[1];
    } else {
        out_w = open("/dev/null", O_WRONLY | O_CLOEXEC);
    }
    for (guint i = 0; i < spec->fds->len; i++) {
        SbxFdMap *m = &g_array_index(spec->fds, SbxFdMap, i);
        sources[i] = m->source;
        targets[i] = m->target;
    }
    for (guint i = 0; i < spec->cgroups->len && i < SBX_SPAWN_MAX_CGROUPS; i++)
        cs.cgroups[cs.n_cgroups++] = g_ptr_array_index(spec->cgroups, i);
    cs.die_with_parent = spec->die_with_parent;
    cs.parent = getpid();

    /* g_spawn (not GSubprocess): it returns the pid itself, where GSubprocess's
     * identifier is already gone when a fast child has been reaped. */
    ok = g_spawn_async_with_pipes_and_fds(NULL, argv, (const char *const *)envp,
                                          G_SPAWN_SEARCH_PATH | G_SPAWN_DO_NOT_REAP_CHILD,
                                          child_setup, &cs, -1, out_w, out_w, sources, targets,
                                          spec->fds->len, &pid, NULL, NULL, NULL, error);
    spec_close_fds(spec); /* the child has its copies; ours were only for the spawn */
    sbx_fd_close(&out_w);
    if (!ok) {
        g_prefix_error(error, "cannot start %s: ", argv[0]);
        return NULL;
    }
    self = g_object_new(SBX_TYPE_CHILD, NULL);
    self->name = g_path_get_basename(argv[0]);
    self->pid = pid;
    self->ring_size = spec->console_size;
    self->ring = self->ring_size ? g_malloc(self->ring_size) : NULL;
    if (out_r >= 0) {
        self->out = g_unix_input_stream_new(sbx_steal_fd(&out_r), TRUE);
        start_drain(self, self->out);
    }
    self->watch_id = g_child_watch_add_full(G_PRIORITY_DEFAULT, pid, child_watch_cb,
                                            g_object_ref(self), g_object_unref);
    return g_steal_pointer(&self);
}

GPid
sbx_child_get_pid(SbxChild *self)
{
    return self->pid;
}

const char *
sbx_child_get_name(SbxChild *self)
{
    return self->name;
}

gboolean
sbx_child_has_exited(SbxChild *self)
{
    return self->exited;
}

int
sbx_child_get_status(SbxChild *self)
{
    return self->status;
}

char *
sbx_child_describe_exit(SbxChild *self)
{
    if (!self->exited)
        return g_strdup("still running");
    if (WIFEXITED(self->status))
        return g_strdup_printf("exited with status %d", WEXITSTATUS(self->status));
    if (WIFSIGNALED(self->status))
        return g_strdup_printf("killed by signal %d (%s)", WTERMSIG(self->status),
                               g_strsignal(WTERMSIG(self->status)));
    return g_strdup_printf("ended with wait status 0x%x", (unsigned)self->status);
}

void
sbx_child_kill(SbxChild *self, int signo)
{
    if (self->exited || self->pid <= 0)
        return;
    /* The child leads its own process group; fall back to the pid alone if the
     * group does not exist yet (signal raced the setpgid in the child). */
    if (kill(-self->pid, signo) != 0)
        (void)kill(self->pid, signo);
}

void
sbx_child_wait_async(SbxChild *self, GCancellable *cancellable, GAsyncReadyCallback callback,
                     gpointer user_data)
{
    GTask *task = g_task_new(self, cancellable, callback, user_data);
    g_task_set_source_tag(task, sbx_child_wait_async);
    if (self->exited) {
        g_task_return_boolean(task, TRUE);
        g_object_unref(task);
        return;
    }
    g_queue_push_tail(&self->waiters, task);
}

gboolean
sbx_child_wait_finish(SbxChild *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

char *
sbx_child_dup_console(SbxChild *self)
{
    GString *s = g_string_sized_new(self->ring_len + 1);
    gsize start = (self->ring_head + self->ring_size - self->ring_len) % MAX(self->ring_size, 1);
    for (gsize i = 0; i < self->ring_len; i++)
        g_string_append_c(s, (char)self->ring[(start + i) % self->ring_size]);
    return g_string_free(s, FALSE);
}

char *
sbx_child_dup_console_tail(SbxChild *self, guint n)
{
    g_autofree char *all = sbx_child_dup_console(self);
    gsize len = strlen(all);
    while (len > 0 && all[len - 1] == '\n')
        all[--len] = '\0';
    const char *p = all + len;
    guint lines = 0;
    while (p > all) {
        if (p[-1] == '\n' && ++lines == n)
            break;
        p--;
    }
    return g_strdup(p);
}

static void
sbx_child_dispose(GObject *object)
{
    SbxChild *self = SBX_CHILD(object);
    GTask *task;

    g_cancellable_cancel(self->cancellable);
    while ((task = g_queue_pop_head(&self->waiters)) != NULL) {
        g_task_return_new_error(task, G_IO_ERROR, G_IO_ERROR_CANCELLED, "child object disposed");
        g_object_unref(task);
    }
    G_OBJECT_CLASS(sbx_child_parent_class)->dispose(object);
}

static void
sbx_child_finalize(GObject *object)
{
    SbxChild *self = SBX_CHILD(object);
    g_clear_object(&self->out);
    g_clear_object(&self->cancellable);
    g_free(self->ring);
    g_free(self->name);
    G_OBJECT_CLASS(sbx_child_parent_class)->finalize(object);
}

static void
sbx_child_init(SbxChild *self)
{
    self->cancellable = g_cancellable_new();
    g_queue_init(&self->waiters);
}

static void
sbx_child_class_init(SbxChildClass *klass)
{
    GObjectClass *oc = G_OBJECT_CLASS(klass);
    oc->dispose = sbx_child_dispose;
    oc->finalize = sbx_child_finalize;
}
