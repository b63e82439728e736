/* SPDX-License-Identifier: MIT
 *
 * Exec in the guest agent: persistent REPLs for python and javascript (a
 * small driver script, ga-driver.py / ga-driver.js, embedded at build time,
 * reads length-prefixed code on fd 3 and reports completion on fd 4) and a
 * fresh `/bin/sh -c` per exec for raw. User code runs as uid/gid 1000 with
 * no_new_privs and rlimits, in its own process group, with a clean
 * environment plus the validated user environment. Output is streamed as
 * stdout/stderr frames (coalesced for at most 10 ms), capped at the contract
 * limits; timeouts SIGTERM then SIGKILL the process group and the next exec
 * gets a fresh REPL. Children are watched with pidfds and reaped with wait4
 * (for their rusage). Used by ga-main.c.
 */
#define G_LOG_DOMAIN "sbx-agent"
#include "guest/agent/ga-agent.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <glib-unix.h>

#include "common/sbx-fd.h"
#include "guest/agent/ga-drivers.h"

#define FLUSH_DELAY_MS 10
#define FLUSH_BYTES (64 * 1024)
#define TERM_GRACE_MS 2000
#define RAW_ARGV_MAX (96 * 1024)     /* larger raw code goes through fd 3 */
#define USER_NPROC 1024
#define USER_NOFILE 4096
#define USER_FSIZE (1024ULL * 1024 * 1024)
#define RESEED_BYTES 32                /* entropy for the javascript driver */

typedef struct _GaProc GaProc;
typedef struct _GaRun GaRun;

struct _GaProc {
    GaExec *owner;
    SbxLanguage lang;
    GPid pid;
    int pidfd;
    guint pid_watch;
    int ctl_w;          /* code to the driver (or raw script), -1 when none */
    guint ctl_watch;
    GByteArray *ctl_buf;
    gsize ctl_off;
    gboolean ctl_close_when_done; /* raw script: EOF after the code */
    int status_r;
    guint status_watch;
    GString *status_line;
    int out_r, err_r;
    guint out_watch, err_watch;
    gboolean ready;
    GArray *warm_waiters; /* gint64 request ids */
    guint64 last_user_us, last_sys_us;
    gboolean dead;
};

struct _GaRun {
    gint64 id;
    GaProc *proc;
    gint64 start_us;
    gint64 recv_us;     /* when the exec request was read from the channel */
    guint timeout_src, kill_src, flush_src;
    gsize out_total, err_total;
    gboolean out_trunc, err_trunc;
    gboolean timed_out, cancelled;
    GByteArray *outb, *errb;
};

struct _GaExec {
    GaAgent *a;
    GaProc *repl[SBX_N_LANGUAGES];
    GaRun *run;
    SbxFrame *queued;  /* exec that arrived while the run was being killed */
    gint64 queued_recv_us;
    guint queued_idle;
};

static void proc_free(GaProc *p);
static gboolean start_queued(gpointer data);
static void run_finish(GaExec *e, int exit_code, guint64 user_us, guint64 sys_us, gint64 maxrss_kb);

/* ---- child setup (runs in the forked child, async-signal-safe only) ------ */

static void
child_setup(gpointer data)
{
    GaAgent *a = data;
    struct rlimit r;

    (void)setpgid(0, 0);
    (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
    r.rlim_cur = r.rlim_max = 0;
    (void)setrlimit(RLIMIT_CORE, &r);
    r.rlim_cur = r.rlim_max = USER_NOFILE;
    (void)setrlimit(RLIMIT_NOFILE, &r);
    r.rlim_cur = r.rlim_max = USER_FSIZE;
    (void)setrlimit(RLIMIT_FSIZE, &r);
    if (!a->no_setuid) {
        /* The agent runs at oom_score_adj -1000; user code must be the OOM victim. */
        int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
        if (oom >= 0) {
            (void)!write(oom, "500", 3);
            close(oom);
        }
        /* Let the user's driver reopen its control pipes close-on-exec via /proc. */
        (void)fchown(3, a->uid, a->gid);
        (void)fchown(4, a->uid, a->gid);
        /* RLIMIT_NPROC counts per uid: only meaningful for the dedicated user. */
        r.rlim_cur = r.rlim_max = USER_NPROC;
        (void)setrlimit(RLIMIT_NPROC, &r);
        if (setgroups(0, NULL) != 0 || setgid(a->gid) != 0 || setuid(a->uid) != 0)
            _exit(126);
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        _exit(126);
}

static char **
base_env(GaAgent *a, GHashTable *user_env)
{
    GPtrArray *env = g_ptr_array_new();
    GHashTableIter it;
    gpointer k, v;

    g_ptr_array_add(env, g_strdup("PATH=/usr/local/bin:/usr/bin:/bin"));
    g_ptr_array_add(env, g_strdup_printf("HOME=%s", a->home));
    g_ptr_array_add(env, g_strdup("USER=user"));
    g_ptr_array_add(env, g_strdup("LOGNAME=user"));
    g_ptr_array_add(env, g_strdup("LANG=C.UTF-8"));
    g_ptr_array_add(env, g_strdup("TMPDIR=/tmp"));
    g_ptr_array_add(env, g_strdup("PYTHONDONTWRITEBYTECODE=1"));
    if (user_env) {
        g_hash_table_iter_init(&it, user_env);
        while (g_hash_table_iter_next(&it, &k, &v))
            g_ptr_array_add(env, g_strdup_printf("%s=%s", (char *)k, (char *)v));
    }
    g_ptr_array_add(env, NULL);
    return (char **)g_ptr_array_free(env, FALSE);
}

static gboolean
make_pipe(int fds[2], gboolean nonblock_read, gboolean nonblock_write, GError **error)
{
    if (pipe2(fds, O_CLOEXEC) != 0) {
        int err = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(err), "pipe: %s", g_strerror(err));
        return FALSE;
    }
    if (nonblock_read)
        (void)fcntl(fds[0], F_SETFL, O_NONBLOCK);
    if (nonblock_write)
        (void)fcntl(fds[1], F_SETFL, O_NONBLOCK);
    return TRUE;
}

/* ---- output ------------------------------------------------------------- */

static void
run_flush(GaExec *e)
{
    GaRun *r = e->run;

    g_clear_handle_id(&r->flush_src, g_source_remove);
    if (r->outb->len) {
        ga_send(e->a, sbx_frame_header_new("stdout", r->id), r->outb->data, r->outb->len);
        g_byte_array_set_size(r->outb, 0);
    }
    if (r->errb->len) {
        ga_send(e->a, sbx_frame_header_new("stderr", r->id), r->errb->data, r->errb->len);
        g_byte_array_set_size(r->errb, 0);
    }
}

static gboolean
on_flush_timer(gpointer data)
{
    GaExec *e = data;
    e->run->flush_src = 0;
    run_flush(e);
    return G_SOURCE_REMOVE;
}

static void
deliver(GaExec *e, GaProc *p, gboolean is_err, const guint8 *data, gsize n)
{
    GaRun *r = e->run;
    gsize limit = is_err ? SBX_MAX_STDERR_BYTES : SBX_MAX_STDOUT_BYTES;
    gsize *total, take;

    if (!r || r->proc != p)
        return; /* output of a background task between execs: dropped */
    total = is_err ? &r->err_total : &r->out_total;
    take = *total >= limit ? 0 : MIN(n, limit - *total);
    if (take < n) {
        if (is_err)
            r->err_trunc = TRUE;
        else
            r->out_trunc = TRUE;
    }
    if (take == 0)
        return;
    g_byte_array_append(is_err ? r->errb : r->outb, data, (guint)take);
    *total += take;
    if (r->outb->len + r->errb->len >= FLUSH_BYTES)
        run_flush(e);
    else if (!r->flush_src)
        r->flush_src = g_timeout_add(FLUSH_DELAY_MS, on_flush_timer, e);
}

/* Read what the pipe holds now. Returns FALSE at EOF. */
static gboolean
drain_pipe(GaProc *p, int fd, gboolean is_err)
{
    guint8 buf[64 * 1024];

    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0) {
            deliver(p->owner, p, is_err, buf, (gsize)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 && errno == EAGAIN;
    }
}

static gboolean
on_out(int fd, GIOCondition cond, gpointer data)
{
    GaProc *p = data;
    if (!drain_pipe(p, fd, FALSE)) {
        p->out_watch = 0;
        return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
}

static gboolean
on_err(int fd, GIOCondition cond, gpointer data)
{
    GaProc *p = data;
    if (!drain_pipe(p, fd, TRUE)) {
        p->err_watch = 0;
        return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
}

static void
drain_outputs(GaProc *p)
{
    if (p->out_watch && !drain_pipe(p, p->out_r, FALSE))
        g_clear_handle_id(&p->out_watch, g_source_remove);
    if (p->err_watch && !drain_pipe(p, p->err_r, TRUE))
        g_clear_handle_id(&p->err_watch, g_source_remove);
}

/* ---- control channel to the driver -------------------------------------- */

static gboolean
on_ctl_writable(int fd, GIOCondition cond, gpointer data)
{
    GaProc *p = data;

    while (p->ctl_off < p->ctl_buf->len) {
        ssize_t n = write(p->ctl_w, p->ctl_buf->data + p->ctl_off, p->ctl_buf->len - p->ctl_off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return G_SOURCE_CONTINUE;
        if (n < 0) {
            /* The driver is gone; its pidfd reports the death. */
            p->ctl_off = p->ctl_buf->len;
            break;
        }
        p->ctl_off += (gsize)n;
    }
    g_byte_array_set_size(p->ctl_buf, 0);
    p->ctl_off = 0;
    p->ctl_watch = 0;
    if (p->ctl_close_when_done)
        sbx_fd_close(&p->ctl_w);
    return G_SOURCE_REMOVE;
}

static void
ctl_write(GaProc *p, const void *data, gsize len)
{
    g_byte_array_append(p->ctl_buf, data, (guint)len);
    if (!p->ctl_watch)
        p->ctl_watch = g_unix_fd_add(p->ctl_w, G_IO_OUT, on_ctl_writable, p);
}

static void
answer_warm_waiters(GaProc *p, const char *error_msg)
{
    GaAgent *a = p->owner->a;

    for (guint i = 0; i < p->warm_waiters->len; i++) {
        gint64 id = g_array_index(p->warm_waiters, gint64, i);
        if (error_msg)
            ga_send_error(a, id, GA_ERR_UNAVAILABLE, "%s", error_msg);
        else
            ga_send_ok(a, id);
    }
    g_array_set_size(p->warm_waiters, 0);
}

static void
handle_status_line(GaProc *p, const char *line)
{
    GaExec *e = p->owner;
    int rc;
    guint64 user_us, sys_us;
    gint64 maxrss;

    if (g_str_equal(line, "ready")) {
        p->ready = TRUE;
        answer_warm_waiters(p, NULL);
        return;
    }
    if (sscanf(line, "done %d %" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT " %" G_GINT64_FORMAT,
               &rc, &user_us, &sys_us, &maxrss) != 4)
        return;
    if (!e->run || e->run->proc != p || e->run->timed_out || e->run->cancelled)
        return; /* the run is being torn down; its end is reported at death */
    drain_outputs(p);
    run_finish(e, rc, user_us - MIN(user_us, p->last_user_us), sys_us - MIN(sys_us, p->last_sys_us),
               maxrss);
    p->last_user_us = user_us;
    p->last_sys_us = sys_us;
}

static gboolean
on_status(int fd, GIOCondition cond, gpointer data)
{
    GaProc *p = data;
    char buf[512];

    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return G_SOURCE_CONTINUE;
        if (n <= 0) {
            p->status_watch = 0;
            return G_SOURCE_REMOVE; /* death is reported through the pidfd */
        }
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] != '\n') {
                if (p->status_line->len < 256)
                    g_string_append_c(p->status_line, buf[i]);
                continue;
            }
            g_autofree char *line = g_strdup(p->status_line->str);
            g_string_truncate(p->status_line, 0);
            handle_status_line(p, line);
            if (p->dead)
                return G_SOURCE_REMOVE;
        }
    }
}

/* ---- process life ------------------------------------------------------- */

static gboolean
on_proc_exit(int fd, GIOCondition cond, gpointer data)
{
    GaProc *p = data;
    GaExec *e = p->owner;
    int status = 0;
    struct rusage ru = { 0 };
    pid_t got;
    int code;

    do
        got = wait4(p->pid, &status, WNOHANG, &ru);
    while (got < 0 && errno == EINTR);
    if (got == 0)
        return G_SOURCE_CONTINUE;
    p->pid_watch = 0;
    p->dead = TRUE;
    /* Whatever is left in the group (background children) goes with it. */
    (void)kill(-p->pid, SIGKILL);
    drain_outputs(p);
    if (got < 0)
        code = 255;
    else if (WIFEXITED(status))
        code = WEXITSTATUS(status);
    else if (WIFSIGNALED(status))
        code = 128 + WTERMSIG(status);
    else
        code = 255;
    g_debug("%s pid %d exited with code %d", sbx_language_to_string(p->lang), p->pid, code);
    if (p->lang != SBX_LANGUAGE_RAW && e->repl[p->lang] == p)
        e->repl[p->lang] = NULL;
    answer_warm_waiters(p, "the interpreter exited while starting");
    if (e->run && e->run->proc == p) {
        guint64 user_us = (guint64)ru.ru_utime.tv_sec * 1000000 + (guint64)ru.ru_utime.tv_usec;
        guint64 sys_us = (guint64)ru.ru_stime.tv_sec * 1000000 + (guint64)ru.ru_stime.tv_usec;
        run_finish(e, code, user_us - MIN(user_us, p->last_user_us),
                   sys_us - MIN(sys_us, p->last_sys_us), ru.ru_maxrss);
    }
    proc_free(p);
    return G_SOURCE_REMOVE;
}

static void
proc_free(GaProc *p)
{
    if (!p)
        return;
    if (!p->dead && p->pid > 0) {
        (void)kill(-p->pid, SIGKILL);
        (void)kill(p->pid, SIGKILL);
        (void)waitpid(p->pid, NULL, 0);
    }
    g_clear_handle_id(&p->pid_watch, g_source_remove);
    g_clear_handle_id(&p->ctl_watch, g_source_remove);
    g_clear_handle_id(&p->status_watch, g_source_remove);
    g_clear_handle_id(&p->out_watch, g_source_remove);
    g_clear_handle_id(&p->err_watch, g_source_remove);
    sbx_fd_close(&p->pidfd);
    sbx_fd_close(&p->ctl_w);
    sbx_fd_close(&p->status_r);
    sbx_fd_close(&p->out_r);
    sbx_fd_close(&p->err_r);
    g_byte_array_unref(p->ctl_buf);
    g_string_free(p->status_line, TRUE);
    g_array_unref(p->warm_waiters);
    g_free(p);
}

/* Spawn a REPL driver (python/javascript) or a raw shell running @code. */
static GaProc *
proc_spawn(GaExec *e, SbxLanguage lang, const char *code, gsize code_len, GHashTable *env,
           GError **error)
{
    GaAgent *a = e->a;
    g_autofree GaProc *p = g_new0(GaProc, 1);
    g_auto(SbxFd) out_w = -1, err_w = -1, ctl_r = -1, status_w = -1;
    int outp[2], errp[2], ctlp[2] = { -1, -1 }, statp[2] = { -1, -1 };
    g_autoptr(GPtrArray) argv = g_ptr_array_new();
    g_auto(GStrv) envp = NULL;
    int src[2], dst[2];
    gsize nfds = 0;
    gboolean raw_via_fd = FALSE;

    p->owner = e;
    p->lang = lang;
    p->pidfd = p->ctl_w = p->status_r = p->out_r = p->err_r = -1;
    p->ctl_buf = g_byte_array_new();
    p->status_line = g_string_new(NULL);
    p->warm_waiters = g_array_new(FALSE, FALSE, sizeof(gint64));

    switch (lang) {
    case SBX_LANGUAGE_PYTHON:
        g_ptr_array_add(argv, a->python);
        g_ptr_array_add(argv, (char *)"-u");
        g_ptr_array_add(argv, (char *)"-s");
        g_ptr_array_add(argv, (char *)"-c");
        g_ptr_array_add(argv, (char *)ga_driver_py);
        break;
    case SBX_LANGUAGE_JAVASCRIPT:
        g_ptr_array_add(argv, a->node);
        g_ptr_array_add(argv, (char *)"-e");
        g_ptr_array_add(argv, (char *)ga_driver_js);
        break;
    case SBX_LANGUAGE_RAW:
        raw_via_fd = code_len > RAW_ARGV_MAX;
        g_ptr_array_add(argv, a->shell);
        if (raw_via_fd) {
            g_ptr_array_add(argv, (char *)"/dev/fd/3");
        } else {
            g_ptr_array_add(argv, (char *)"-c");
            g_ptr_array_add(argv, (char *)code);
        }
        break;
    }
    g_ptr_array_add(argv, NULL);
    envp = base_env(a, lang == SBX_LANGUAGE_RAW ? env : NULL);

    if (!make_pipe(outp, TRUE, FALSE, error)) {
        proc_free(g_steal_pointer(&p));
        return NULL;
    }
    p->out_r = outp[0];
    out_w = outp[1];
    if (!make_pipe(errp, TRUE, FALSE, error)) {
        proc_free(g_steal_pointer(&p));
        return NULL;
    }
    p->err_r = errp[0];
    err_w = errp[1];
    if (lang != SBX_LANGUAGE_RAW || raw_via_fd) {
        if (!make_pipe(ctlp, FALSE, TRUE, error)) {
            proc_free(g_steal_pointer(&p));
            return NULL;
        }
        ctl_r = ctlp[0];
        p->ctl_w = ctlp[1];
        src[nfds] = ctl_r;
        dst[nfds++] = 3;
    }
    if (lang != SBX_LANGUAGE_RAW) {
        if (!make_pipe(statp, TRUE, FALSE, error)) {
            proc_free(g_steal_pointer(&p));
            return NULL;
        }
        p->status_r = statp[0];
        status_w = statp[1];
        src[nfds] = status_w;
        dst[nfds++] = 4;
    }

    if (!g_spawn_async_with_pipes_and_fds(a->home, (const char *const *)argv->pdata,
                                          (const char *const *)envp,
                                          G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_STDIN_FROM_DEV_NULL,
                                          child_setup, a, -1, out_w, err_w, src, dst, nfds,
                                          &p->pid, NULL, NULL, NULL, error)) {
        proc_free(g_steal_pointer(&p));
        return NULL;
    }
    (void)setpgid(p->pid, p->pid);
    p->pidfd = pidfd_open(p->pid, 0);
    if (p->pidfd < 0) {
        int err = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(err), "pidfd_open: %s", g_strerror(err));
        proc_free(g_steal_pointer(&p));
        return NULL;
    }
    p->pid_watch = g_unix_fd_add(p->pidfd, G_IO_IN, on_proc_exit, p);
    p->out_watch = g_unix_fd_add(p->out_r, G_IO_IN | G_IO_HUP, on_out, p);
    p->err_watch = g_unix_fd_add(p->err_r, G_IO_IN | G_IO_HUP, on_err, p);
    if (p->status_r >= 0)
        p->status_watch = g_unix_fd_add(p->status_r, G_IO_IN | G_IO_HUP, on_status, p);
    if (raw_via_fd) {
        p->ctl_close_when_done = TRUE;
        ctl_write(p, code, code_len);
    }
    g_debug("spawned %s as pid %d", sbx_language_to_string(lang), p->pid);
    return g_steal_pointer(&p);
}

/* ---- runs --------------------------------------------------------------- */

static void
run_free(GaRun *r)
{
    g_clear_handle_id(&r->timeout_src, g_source_remove);
    g_clear_handle_id(&r->kill_src, g_source_remove);
    g_clear_handle_id(&r->flush_src, g_source_remove);
    g_byte_array_unref(r->outb);
    g_byte_array_unref(r->errb);
    g_free(r);
}

static void
run_finish(GaExec *e, int exit_code, guint64 user_us, guint64 sys_us, gint64 maxrss_kb)
{
    GaRun *r = e->run;
    JsonObject *h;
    gboolean killed = r->timed_out || r->cancelled;

    run_flush(e);
    h = sbx_frame_header_new("exit", r->id);
    json_object_set_int_member(h, "exit_code", killed ? -1 : exit_code);
    json_object_set_boolean_member(h, "timed_out", r->timed_out);
    json_object_set_boolean_member(h, "cancelled", r->cancelled);
    json_object_set_boolean_member(h, "stdout_truncated", r->out_trunc);
    json_object_set_boolean_member(h, "stderr_truncated", r->err_trunc);
    /* SIGKILL we did not send (OOM killer, user kill -9) or exit(137): retire the VM. */
    json_object_set_boolean_member(h, "retire", !killed && exit_code == 137);
    json_object_set_int_member(h, "stdout_bytes", (gint64)r->out_total);
    json_object_set_int_member(h, "stderr_bytes", (gint64)r->err_total);
    json_object_set_int_member(h, "duration_us", g_get_monotonic_time() - r->start_us);
    json_object_set_int_member(h, "accept_us", MAX(r->start_us - r->recv_us, 0));
    json_object_set_int_member(h, "cpu_user_us", (gint64)user_us);
    json_object_set_int_member(h, "cpu_sys_us", (gint64)sys_us);
    json_object_set_int_member(h, "max_rss_kb", maxrss_kb);
    ga_send(e->a, h, NULL, 0);
    e->run = NULL;
    run_free(r);
    if (e->queued && !e->queued_idle)
        e->queued_idle = g_idle_add(start_queued, e);
}

static gboolean
on_kill_timer(gpointer data)
{
    GaExec *e = data;
    e->run->kill_src = 0;
    (void)kill(-e->run->proc->pid, SIGKILL);
    return G_SOURCE_REMOVE;
}

/* Stop the run's process group: SIGTERM, grace, SIGKILL (or SIGKILL now).
 * The REPL is detached so the next exec starts a fresh one; the run ends
 * when the process is reaped. */
static void
run_stop(GaExec *e, gboolean now)
{
    GaRun *r = e->run;
    GaProc *p = r->proc;

    if (p->lang != SBX_LANGUAGE_RAW && e->repl[p->lang] == p)
        e->repl[p->lang] = NULL;
    if (now) {
        g_clear_handle_id(&r->kill_src, g_source_remove);
        (void)kill(-p->pid, SIGKILL);
        return;
    }
    (void)kill(-p->pid, SIGTERM);
    if (!r->kill_src)
        r->kill_src = g_timeout_add(TERM_GRACE_MS, on_kill_timer, e);
}

static gboolean
on_timeout(gpointer data)
{
    GaExec *e = data;
    e->run->timeout_src = 0;
    e->run->timed_out = TRUE;
    run_stop(e, FALSE);
    return G_SOURCE_REMOVE;
}

static GaProc *
get_repl(GaExec *e, SbxLanguage lang, GError **error)
{
    if (!e->repl[lang])
        e->repl[lang] = proc_spawn(e, lang, NULL, 0, NULL, error);
    return e->repl[lang];
}

static const char *
interpreter_for(GaAgent *a, SbxLanguage lang)
{
    switch (lang) {
    case SBX_LANGUAGE_PYTHON: return a->python;
    case SBX_LANGUAGE_JAVASCRIPT: return a->node;
    case SBX_LANGUAGE_RAW: return a->shell;
    }
    return NULL;
}

static gboolean
parse_env(SbxFrame *frame, GHashTable **out_env, GError **error)
{
    JsonNode *n = json_object_get_member(frame->header, "env");
    g_autoptr(GHashTable) env = g_hash_table_new(g_str_hash, g_str_equal);
    JsonObject *o;
    GList *members;

    if (!n || JSON_NODE_HOLDS_NULL(n)) {
        *out_env = g_steal_pointer(&env);
        return TRUE;
    }
    if (!JSON_NODE_HOLDS_OBJECT(n)) {
        g_set_error_literal(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_ENV,
                            "\"env\" must be an object of strings");
        return FALSE;
    }
    o = json_node_get_object(n);
    members = json_object_get_members(o);
    for (GList *l = members; l; l = l->next) {
        JsonNode *v = json_object_get_member(o, l->data);
        if (json_node_get_value_type(v) != G_TYPE_STRING) {
            g_set_error(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_ENV,
                        "value of environment variable %s must be a string", (char *)l->data);
            g_list_free(members);
            return FALSE;
        }
        g_hash_table_insert(env, l->data, (gpointer)json_node_get_string(v));
    }
    g_list_free(members);
    if (!sbx_validate_env(env, error))
        return FALSE;
    *out_env = g_steal_pointer(&env);
    return TRUE;
}

void
ga_exec_handle(GaExec *e, SbxFrame *frame, gint64 recv_us)
{
    GaAgent *a = e->a;
    g_autoptr(GError) error = NULL;
    g_autoptr(GHashTable) env = NULL;
    SbxLanguage lang;
    gsize code_len = 0;
    const char *code = g_bytes_get_data(frame->payload, &code_len);
    gint64 timeout_s = sbx_frame_get_int(frame, "timeout_s", 30);
    GaProc *p;
    GaRun *r;

    if (!sbx_validate_language(sbx_frame_get_string(frame, "language", NULL), &lang, &error) ||
        !sbx_validate_code(code, code_len, &error) || !sbx_validate_timeout(timeout_s, &error) ||
        !parse_env(frame, &env, &error)) {
        ga_send_gerror(a, frame->id, error);
        return;
    }
    if (e->run && (e->run->timed_out || e->run->cancelled) && !e->queued) {
        /* The previous exec is being killed: start this one when it is reaped. */
        e->queued = g_new0(SbxFrame, 1);
        e->queued->header = json_object_ref(frame->header);
        e->queued->type = frame->type;
        e->queued->id = frame->id;
        e->queued->payload = g_bytes_ref(frame->payload);
        e->queued_recv_us = recv_us;
        return;
    }
    if (e->run) {
        ga_send_error(a, frame->id, GA_ERR_BUSY,
                      "another exec (id %" G_GINT64_FORMAT ") is still running", e->run->id);
        return;
    }
    if (!interpreter_for(a, lang)) {
        ga_send_error(a, frame->id, GA_ERR_UNAVAILABLE, "%s is not installed in this guest",
                      sbx_language_to_string(lang));
        return;
    }
    if (lang == SBX_LANGUAGE_RAW) {
        /* NUL-terminated copy for argv. */
        g_autofree char *c = g_strndup(code, code_len);
        p = proc_spawn(e, lang, c, code_len, env, &error);
    } else {
        p = get_repl(e, lang, &error);
    }
    if (!p) {
        ga_send_error(a, frame->id, GA_ERR_UNAVAILABLE, "cannot start %s: %s",
                      sbx_language_to_string(lang), error->message);
        return;
    }
    r = g_new0(GaRun, 1);
    r->id = frame->id;
    r->proc = p;
    r->start_us = g_get_monotonic_time();
    r->recv_us = recv_us;
    r->outb = g_byte_array_new();
    r->errb = g_byte_array_new();
    r->timeout_src = g_timeout_add((guint)timeout_s * 1000, on_timeout, e);
    e->run = r;
    if (lang != SBX_LANGUAGE_RAW) {
        g_autoptr(GByteArray) envb = g_byte_array_new();
        GHashTableIter it;
        gpointer k, v;
        guint8 hdr[8];
        g_hash_table_iter_init(&it, env);
        while (g_hash_table_iter_next(&it, &k, &v)) {
            g_byte_array_append(envb, k, (guint)strlen(k));
            g_byte_array_append(envb, (const guint8 *)"=", 1);
            g_byte_array_append(envb, v, (guint)strlen(v) + 1);
        }
        hdr[0] = (guint8)(code_len >> 24);
        hdr[1] = (guint8)(code_len >> 16);
        hdr[2] = (guint8)(code_len >> 8);
        hdr[3] = (guint8)code_len;
        hdr[4] = (guint8)(envb->len >> 24);
        hdr[5] = (guint8)(envb->len >> 16);
        hdr[6] = (guint8)(envb->len >> 8);
        hdr[7] = (guint8)envb->len;
        ctl_write(p, hdr, sizeof hdr);
        ctl_write(p, envb->data, envb->len);
        ctl_write(p, code, code_len);
    }
}

static gboolean
start_queued(gpointer data)
{
    GaExec *e = data;
    g_autoptr(SbxFrame) frame = g_steal_pointer(&e->queued);

    e->queued_idle = 0;
    if (frame)
        ga_exec_handle(e, frame, e->queued_recv_us);
    return G_SOURCE_REMOVE;
}

void
ga_exec_warm(GaExec *e, SbxFrame *frame)
{
    g_autoptr(GError) error = NULL;
    SbxLanguage lang;
    GaProc *p;

    if (!sbx_validate_language(sbx_frame_get_string(frame, "language", NULL), &lang, &error)) {
        ga_send_gerror(e->a, frame->id, error);
        return;
    }
    if (!interpreter_for(e->a, lang)) {
        ga_send_error(e->a, frame->id, GA_ERR_UNAVAILABLE, "%s is not installed in this guest",
                      sbx_language_to_string(lang));
        return;
    }
    if (lang == SBX_LANGUAGE_RAW) {
        ga_send_ok(e->a, frame->id);
        return;
    }
    p = get_repl(e, lang, &error);
    if (!p) {
        ga_send_error(e->a, frame->id, GA_ERR_UNAVAILABLE, "cannot start %s: %s",
                      sbx_language_to_string(lang), error->message);
        return;
    }
    if (p->ready)
        ga_send_ok(e->a, frame->id);
    else
        g_array_append_val(p->warm_waiters, frame->id);
}

void
ga_exec_cancel(GaExec *e, gint64 target)
{
    if (e->queued && e->queued->id == target) {
        g_clear_pointer(&e->queued, sbx_frame_free);
        return;
    }
    if (e->run && e->run->id == target && !e->run->cancelled) {
        e->run->cancelled = TRUE;
        run_stop(e, TRUE);
    }
}

void
ga_exec_reseed(GaExec *e)
{
    GaProc *p = e->repl[SBX_LANGUAGE_JAVASCRIPT];
    guint8 msg[8 + RESEED_BYTES] = { 0xff, 0xff, 0xff, 0xff, 0, 0, 0, RESEED_BYTES };

    /* A header with code_len 0xffffffff carries entropy instead of code
     * (ga-driver.js); the pipe orders it before the next exec. */
    if (!p || p->dead)
        return;
    if (getrandom(msg + 8, RESEED_BYTES, 0) != RESEED_BYTES) {
        /* not after the CRNG reseed; a fresh REPL (reaped as usual) is the safe side */
        g_warning("getrandom: %s; killing the javascript REPL", g_strerror(errno));
        e->repl[SBX_LANGUAGE_JAVASCRIPT] = NULL;
        (void)kill(-p->pid, SIGKILL);
        return;
    }
    ctl_write(p, msg, sizeof msg);
}

GaExec *
ga_exec_new(GaAgent *a)
{
    GaExec *e = g_new0(GaExec, 1);
    e->a = a;
    return e;
}

void
ga_exec_free(GaExec *e)
{
    if (!e)
        return;
    g_clear_handle_id(&e->queued_idle, g_source_remove);
    g_clear_pointer(&e->queued, sbx_frame_free);
    if (e->run) {
        GaProc *p = e->run->proc;
        run_free(e->run);
        e->run = NULL;
        if (p->lang == SBX_LANGUAGE_RAW || e->repl[p->lang] != p)
            proc_free(p);
    }
    for (int i = 0; i < SBX_N_LANGUAGES; i++)
        g_clear_pointer(&e->repl[i], proc_free);
    g_free(e);
}
