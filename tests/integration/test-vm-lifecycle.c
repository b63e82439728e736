/* SPDX-License-Identifier: MIT
 *
 * Integration tests of the VM lifecycle (issue 9) through the in-process API
 * (SbxManager) against the real qemu-system-x86_64 (TCG forced), the real
 * qemu-storage-daemon and the real guest image ($SBX_GUEST_DIR): python,
 * javascript and raw runs end to end; 20 runs that must leave no process,
 * socket, disk, cgroup or fd behind; QEMU and the storage daemon killed with
 * SIGKILL; boot timeout / crash / QMP garbage through tests/fake/fake-qemu.sh;
 * orphan reaping after a scheduler (schedulerctl --embedded) is killed.
 * Counts are taken from /proc and the runtime directory, never from the
 * scheduler's own bookkeeping.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "scheduler/sbx-cgroup.h"
#include "scheduler/sbx-error.h"
#include "scheduler/sbx-manager.h"

/* A hang guard, not a timing assertion: a wedged test fails instead of
 * blocking `make check` forever. */
#define GUARD_S 240

static const char *guest_dir;
static const char *top_srcdir;
static const char *top_builddir;
static GPtrArray *log_lines; /* messages containing "orphan cleanup" */
static char *work_dir;       /* made in main(), before any thread exists */
static char *fake_mode_file; /* $FAKE_QEMU_MODE_FILE of tests/fake/fake-qemu.sh */

/* ---- helpers ------------------------------------------------------------ */

static gboolean
guard_cb(gpointer data)
{
    *(gboolean *)data = TRUE;
    return G_SOURCE_REMOVE;
}

static gboolean
tick_cb(gpointer data)
{
    return G_SOURCE_CONTINUE;
}

/* Iterate the default context until @pred(@data) holds. @poll_ms > 0 also
 * wakes up periodically, for conditions outside the loop (/proc, cgroupfs). */
static void
spin_until(gboolean (*pred)(gpointer), gpointer data, guint poll_ms, const char *what)
{
    gboolean expired = FALSE;
    guint guard = g_timeout_add_seconds(GUARD_S, guard_cb, &expired);
    guint tick = poll_ms ? g_timeout_add(poll_ms, tick_cb, NULL) : 0;
    while (!pred(data) && !expired)
        g_main_context_iteration(NULL, TRUE);
    if (tick)
        g_source_remove(tick);
    if (!expired)
        g_source_remove(guard);
    if (expired)
        fail_msg("hung for %d s waiting for %s", GUARD_S, what);
}

static gboolean
flag_set(gpointer data)
{
    return *(gboolean *)data;
}

typedef struct {
    gboolean done;
    gboolean ok;
    SbxRunResult *result;
    GError *error;
} Wait;

static void
started_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    Wait *w = data;
    w->ok = sbx_manager_start_finish(SBX_MANAGER(src), res, &w->error);
    w->done = TRUE;
}

static void
shut_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    Wait *w = data;
    w->ok = sbx_manager_shutdown_finish(SBX_MANAGER(src), res, &w->error);
    w->done = TRUE;
}

static void
ran_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    Wait *w = data;
    w->result = sbx_manager_run_finish(SBX_MANAGER(src), res, &w->error);
    w->ok = w->result != NULL;
    w->done = TRUE;
}

static void
wait_clear(Wait *w)
{
    g_clear_pointer(&w->result, sbx_run_result_free);
    g_clear_error(&w->error);
}

static SbxConfig *
make_config(const char *runtime_dir)
{
    SbxConfig *cfg = sbx_config_new_default();
    g_free(cfg->guest_dir);
    cfg->guest_dir = g_strdup(guest_dir);
    g_free(cfg->runtime_dir);
    cfg->runtime_dir = g_strdup(runtime_dir);
    cfg->accel = SBX_ACCEL_MODE_TCG; /* forced: the probe must not decide */
    return cfg;
}

static SbxManager *
start_manager(SbxConfig *cfg)
{
    SbxManager *mgr = sbx_manager_new(cfg);
    Wait w = {0};
    sbx_manager_start_async(mgr, NULL, started_cb, &w);
    spin_until(flag_set, &w.done, 0, "manager start");
    if (!w.ok)
        fail_msg("manager start: %s", w.error->message);
    assert_string_equal(sbx_manager_get_accel(mgr), "tcg");
    return mgr;
}

static void
stop_manager(SbxManager *mgr)
{
    Wait w = {0};
    sbx_manager_shutdown_async(mgr, shut_cb, &w);
    spin_until(flag_set, &w.done, 0, "manager shutdown");
    if (!w.ok)
        fail_msg("manager shutdown: %s", w.error->message);
    g_object_unref(mgr);
}

typedef struct {
    Wait w;
    GOutputStream *out, *err;
    SbxRunSpec *spec;
} Run;

static Run *
run_start(SbxManager *mgr, SbxLanguage lang, const char *code)
{
    Run *r = g_new0(Run, 1);
    r->spec = sbx_run_spec_new(sbx_manager_get_config(mgr));
    r->spec->language = lang;
    g_bytes_unref(r->spec->code);
    r->spec->code = g_bytes_new(code, strlen(code));
    r->out = g_memory_output_stream_new_resizable();
    r->err = g_memory_output_stream_new_resizable();
    sbx_manager_run_async(mgr, r->spec, r->out, r->err, NULL, NULL, NULL, ran_cb, &r->w);
    return r;
}

static void
run_free(Run *r)
{
    wait_clear(&r->w);
    g_object_unref(r->out);
    g_object_unref(r->err);
    sbx_run_spec_free(r->spec);
    g_free(r);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Run, run_free)

/* The bytes written so far, NUL-terminated (owned). */
static char *
stream_text(GOutputStream *s)
{
    GMemoryOutputStream *m = G_MEMORY_OUTPUT_STREAM(s);
    gsize n = g_memory_output_stream_get_data_size(m);
    return n ? g_strndup(g_memory_output_stream_get_data(m), n) : g_strdup("");
}

static Run *
run_sync(SbxManager *mgr, SbxLanguage lang, const char *code)
{
    Run *r = run_start(mgr, lang, code);
    spin_until(flag_set, &r->w.done, 0, "a run");
    if (r->w.error)
        print_message("# run failed: %s\n", r->w.error->message);
    return r;
}

static void
assert_timings(const SbxRunResult *res)
{
    const SbxTimings *t = &res->timing;
    print_message("# timings: admission %" G_GINT64_FORMAT " setup %" G_GINT64_FORMAT
                  " boot %" G_GINT64_FORMAT " exec %" G_GINT64_FORMAT " teardown %" G_GINT64_FORMAT
                  " total %" G_GINT64_FORMAT " ms\n",
                  t->admission_ms, t->setup_ms, t->boot_ms, t->exec_ms, t->teardown_ms,
                  t->total_ms);
    assert_true(t->admission_ms >= 0);
    assert_true(t->setup_ms > 0);
    assert_true(t->boot_ms > 0);
    assert_true(t->exec_ms > 0);
    assert_true(t->teardown_ms > 0);
    assert_true(t->total_ms > 0);
    assert_true(t->total_ms >= t->boot_ms);
}

/* ---- counting what is left behind --------------------------------------- */

/* The open fds of this process, and what they are ("3:socket:[123] ..."). */
static guint
count_fds(char **out_list)
{
    g_autoptr(GDir) d = g_dir_open("/proc/self/fd", 0, NULL);
    g_autoptr(GString) list = g_string_new(NULL);
    const char *name;
    guint n = 0;
    while (d && (name = g_dir_read_name(d)) != NULL) {
        g_autofree char *p = g_build_filename("/proc/self/fd", name, NULL);
        g_autofree char *target = g_file_read_link(p, NULL);
        if (target && g_str_has_prefix(target, "/proc/") && g_str_has_suffix(target, "/fd"))
            continue; /* the directory's own fd */
        g_string_append_printf(list, "%s%s:%s", n ? " " : "", name, target ? target : "?");
        n++;
    }
    if (out_list)
        *out_list = g_string_free(g_steal_pointer(&list), FALSE);
    return n;
}

static char *
proc_cmdline(const char *pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%s/cmdline", pid);
    char *text = NULL;
    gsize len = 0;
    if (!g_file_get_contents(path, &text, &len, NULL))
        return NULL;
    for (gsize i = 0; i + 1 < len; i++)
        if (text[i] == '\0')
            text[i] = ' ';
    return text;
}

static int
proc_ppid(const char *pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%s/stat", pid);
    g_autofree char *stat = NULL;
    if (!g_file_get_contents(path, &stat, NULL, NULL))
        return -1;
    const char *p = strrchr(stat, ')');
    char state = 0;
    int ppid = -1;
    if (p == NULL || sscanf(p + 2, "%c %d", &state, &ppid) != 2 || state == 'Z')
        return -1; /* a zombie is dead already */
    return ppid;
}

static gboolean
pid_alive(GPid pid)
{
    g_autofree char *s = g_strdup_printf("%d", (int)pid);
    return proc_ppid(s) >= 0;
}

/* QEMU processes (not zombies) whose command line names @dir. */
static guint
count_qemu_naming(const char *dir)
{
    g_autoptr(GDir) d = g_dir_open("/proc", 0, NULL);
    const char *name;
    guint n = 0;
    while ((name = g_dir_read_name(d)) != NULL) {
        if (!g_ascii_isdigit(name[0]))
            continue;
        g_autofree char *cmd = proc_cmdline(name);
        if (cmd && strstr(cmd, "qemu-system") && strstr(cmd, dir) && proc_ppid(name) >= 0)
            n++;
    }
    return n;
}

/* This process's live children, as "comm" names sorted (qsd shows as
 * "qemu-storage-d"). With @pid_of set, the pid of the one child whose comm
 * starts with it. */
static char *
children(const char *pid_of, GPid *out_pid)
{
    g_autoptr(GDir) d = g_dir_open("/proc", 0, NULL);
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    const char *name;
    while ((name = g_dir_read_name(d)) != NULL) {
        if (!g_ascii_isdigit(name[0]) || proc_ppid(name) != getpid())
            continue;
        g_autofree char *path = g_strdup_printf("/proc/%s/comm", name);
        g_autofree char *comm = NULL;
        if (!g_file_get_contents(path, &comm, NULL, NULL))
            continue;
        g_strstrip(comm);
        if (pid_of && out_pid && g_str_has_prefix(comm, pid_of))
            *out_pid = (GPid)atoi(name);
        g_ptr_array_add(names, g_steal_pointer(&comm));
    }
    g_ptr_array_sort(names, (GCompareFunc)g_strcmp0);
    g_ptr_array_add(names, NULL);
    return g_strjoinv(",", (char **)names->pdata);
}

/* Entries under @dir (recursively, the directories themselves included). */
static guint
count_tree(const char *dir)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *name;
    guint n = 0;
    while (d && (name = g_dir_read_name(d)) != NULL) {
        g_autofree char *p = g_build_filename(dir, name, NULL);
        n++;
        if (g_file_test(p, G_FILE_TEST_IS_DIR) && !g_file_test(p, G_FILE_TEST_IS_SYMLINK))
            n += count_tree(p);
    }
    return n;
}

/* Files under disks/: pool-* (capacity) and anything else (a leak). */
static void
count_disks(const char *runtime, guint *out_pool, guint *out_other)
{
    g_autofree char *dir = g_build_filename(runtime, "disks", NULL);
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *name;
    *out_pool = *out_other = 0;
    while (d && (name = g_dir_read_name(d)) != NULL) {
        if (g_str_has_prefix(name, "pool-"))
            (*out_pool)++;
        else
            (*out_other)++;
    }
}

/* Per-VM cgroups "vm-<owner>-*" in every hierarchy of the cgroup base. */
static guint
count_vm_cgroups(GPid owner)
{
    SbxCgroupConfig ccfg = {0};
    g_autoptr(GError) error = NULL;
    g_autoptr(SbxCgroupManager) cm = sbx_cgroup_manager_new(&ccfg, &error);
    assert_non_null(cm);
    g_autoptr(GPtrArray) bases = sbx_cgroup_manager_dup_base_dirs(cm);
    g_autofree char *prefix = g_strdup_printf("vm-%d-", (int)owner);
    guint n = 0;
    for (guint i = 0; i < bases->len; i++) {
        g_autoptr(GDir) d = g_dir_open(g_ptr_array_index(bases, i), 0, NULL);
        const char *name;
        while (d && (name = g_dir_read_name(d)) != NULL)
            if (g_str_has_prefix(name, prefix))
                n++;
    }
    return n;
}

static gboolean
cgroups_enabled(void)
{
    SbxCgroupConfig ccfg = {0};
    g_autoptr(SbxCgroupManager) cm = sbx_cgroup_manager_new(&ccfg, NULL);
    return cm && sbx_cgroup_manager_get_mode(cm) != SBX_CGROUP_MODE_NONE;
}

static guint
status_u32(SbxManager *mgr, const char *key)
{
    g_autoptr(GVariant) st = sbx_manager_get_status(mgr);
    guint32 v = 0;
    assert_true(g_variant_lookup(st, key, "u", &v));
    return v;
}

static guint
pool_value(SbxManager *mgr, const char *key)
{
    g_autoptr(GVariant) st = sbx_manager_get_status(mgr);
    g_autoptr(GVariant) pool = g_variant_lookup_value(st, "pool", G_VARIANT_TYPE("a{su}"));
    guint32 v = 0;
    assert_non_null(pool);
    assert_true(g_variant_lookup(pool, key, "u", &v));
    return v;
}

static gboolean
pool_full(gpointer data)
{
    SbxManager *mgr = data;
    return pool_value(mgr, "work_disks") == pool_value(mgr, "work_disks_target");
}

static gboolean
pool_short(gpointer data)
{
    SbxManager *mgr = data;
    return pool_value(mgr, "work_disks") < pool_value(mgr, "work_disks_target");
}

typedef struct {
    guint fds;
    char *fd_list;
    char *children;
    guint qemu;
    guint vms_entries;
    guint pool, other_disks;
    guint cgroups;
} Snapshot;

static void
cleanups_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    Wait *w = data;
    w->ok = sbx_manager_wait_cleanups_finish(SBX_MANAGER(src), res, &w->error);
    w->done = TRUE;
}

/* A run's result comes before its VM's background cleanup ends: wait for it. */
static void
wait_cleanups(SbxManager *mgr)
{
    Wait w = {0};
    sbx_manager_wait_cleanups_async(mgr, cleanups_cb, &w);
    spin_until(flag_set, &w.done, 0, "the background cleanups");
    assert_true(w.ok);
    assert_int_equal(sbx_manager_get_n_cleanups(mgr), 0);
}

static void
snapshot_take(Snapshot *s, const char *runtime, SbxManager *mgr)
{
    if (mgr) {
        wait_cleanups(mgr);
        /* the pool refills in the background: count it when it is full */
        spin_until(pool_full, mgr, 20, "the work-disk pool to refill");
    }
    g_autofree char *vms = g_build_filename(runtime, "vms", NULL);
    g_free(s->fd_list);
    s->fds = count_fds(&s->fd_list);
    g_free(s->children);
    s->children = children(NULL, NULL);
    s->qemu = count_qemu_naming(runtime);
    s->vms_entries = count_tree(vms);
    count_disks(runtime, &s->pool, &s->other_disks);
    s->cgroups = count_vm_cgroups(getpid());
    print_message("# fds %u, children [%s], qemu %u, vms/ entries %u, pool disks %u, other disks "
                  "%u, vm cgroups %u\n",
                  s->fds, s->children, s->qemu, s->vms_entries, s->pool, s->other_disks,
                  s->cgroups);
}

static void
snapshot_clear(Snapshot *s)
{
    g_clear_pointer(&s->children, g_free);
    g_clear_pointer(&s->fd_list, g_free);
}

/* Nothing of a finished VM may remain; @before is the state before it ran. */
static void
assert_clean(const Snapshot *before, const char *runtime, SbxManager *mgr)
{
    Snapshot now = {0};
    snapshot_take(&now, runtime, mgr);
    if (now.fds != before->fds)
        print_message("# fds before: %s\n# fds after:  %s\n", before->fd_list, now.fd_list);
    assert_int_equal(now.fds, before->fds);
    assert_string_equal(now.children, before->children);
    assert_int_equal(now.qemu, 0);
    assert_int_equal(now.vms_entries, 0);
    assert_int_equal(now.other_disks, 0);
    if (mgr)
        assert_int_equal(now.pool, pool_value(mgr, "work_disks_target"));
    assert_int_equal(now.cgroups, 0);
    snapshot_clear(&now);
}

/* ---- fixture: one real manager (TCG forced) on a private runtime dir ---- */

typedef struct {
    char *dir;
    char *runtime;
    SbxManager *mgr;
    Snapshot base; /* before the manager started */
} Fixture;

static int
group_setup(void **state)
{
    Fixture *f = g_new0(Fixture, 1);
    f->dir = g_strdup(work_dir);
    f->runtime = g_build_filename(f->dir, "run", NULL);
    /* GLib's process-lifetime fds (the default context's and the worker
     * context's wakeup eventfds, made on first use) exist before the base
     * count: wait for one child through a child watch and iterate once. */
    GSubprocess *p = g_subprocess_new(G_SUBPROCESS_FLAGS_NONE, NULL, "true", NULL);
    assert_non_null(p);
    assert_true(g_subprocess_wait(p, NULL, NULL));
    g_object_unref(p);
    g_main_context_iteration(NULL, FALSE);
    snapshot_take(&f->base, f->runtime, NULL);
    f->mgr = start_manager(make_config(f->runtime));
    *state = f;
    return 0;
}

static int
group_teardown(void **state)
{
    Fixture *f = *state;
    if (f->mgr)
        stop_manager(f->mgr);
    g_autofree char *cmd = g_strdup_printf("rm -rf %s", f->dir);
    (void)system(cmd);
    snapshot_clear(&f->base);
    g_free(f->dir);
    g_free(f->runtime);
    g_free(f);
    return 0;
}

/* ---- tests -------------------------------------------------------------- */

static void
test_languages(void **state)
{
    Fixture *f = *state;
    static const struct {
        SbxLanguage lang;
        const char *name;
        const char *code;
        const char *out, *err;
        int exit_code;
    } cases[] = {
        {SBX_LANGUAGE_PYTHON, "python",
         "import sys\nprint('py-out', 6 * 7)\nprint('py-err', file=sys.stderr)\nsys.exit(3)\n",
         "py-out 42\n", "py-err\n", 3},
        {SBX_LANGUAGE_JAVASCRIPT, "javascript",
         "console.log('js-out', 6 * 7); console.error('js-err'); process.exit(4);",
         "js-out 42\n", "js-err\n", 4},
        {SBX_LANGUAGE_RAW, "raw", "echo raw-out $((6 * 7)); echo raw-err >&2; exit 5",
         "raw-out 42\n", "raw-err\n", 5},
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        print_message("# %s\n", cases[i].name);
        g_autoptr(Run) r = run_sync(f->mgr, cases[i].lang, cases[i].code);
        assert_true(r->w.ok);
        g_autofree char *out = stream_text(r->out);
        g_autofree char *err = stream_text(r->err);
        assert_string_equal(out, cases[i].out);
        assert_string_equal(err, cases[i].err);
        assert_int_equal(r->w.result->exit_code, cases[i].exit_code);
        assert_false(r->w.result->timed_out);
        assert_string_equal(r->w.result->accel, "tcg");
        assert_timings(r->w.result);
    }
}

static void
test_twenty_runs_leave_nothing(void **state)
{
    Fixture *f = *state;
    enum { N = 20, PARALLEL = 3 };
    Snapshot before = {0};
    snapshot_take(&before, f->runtime, f->mgr);
    assert_int_equal(before.qemu, 0);

    Run *runs[N] = {0};
    guint started = 0, finished = 0;
    gboolean any_queued = FALSE;
    while (finished < N) {
        while (started < N && started - finished < PARALLEL) {
            g_autofree char *code =
                started % 2 ? g_strdup_printf("print('run', %u)", started)
                            : g_strdup_printf("echo run %u", started);
            runs[started] = run_start(f->mgr, started % 2 ? SBX_LANGUAGE_PYTHON : SBX_LANGUAGE_RAW,
                                      code);
            started++;
        }
        /* wait for the oldest in flight */
        spin_until(flag_set, &runs[finished]->w.done, 0, "a run of the 20");
        for (; finished < started && runs[finished]->w.done; finished++) {
            Run *r = runs[finished];
            if (r->w.error)
                fail_msg("run %u: %s", finished, r->w.error->message);
            g_autofree char *out = stream_text(r->out);
            g_autofree char *want = g_strdup_printf("run %u\n", finished);
            assert_string_equal(out, want);
            assert_int_equal(r->w.result->exit_code, 0);
            assert_timings(r->w.result);
            if (r->w.result->timing.admission_ms > 0)
                any_queued = TRUE;
        }
    }
    /* the runs really overlapped: at most the slots ran at once, the rest queued */
    print_message("# some run waited in the admission queue: %s\n", any_queued ? "yes" : "no");
    for (guint i = 0; i < N; i++)
        run_free(runs[i]);
    assert_int_equal(status_u32(f->mgr, "runs_in_flight"), 0);
    assert_clean(&before, f->runtime, f->mgr); /* waits for the background cleanups */
    assert_int_equal(status_u32(f->mgr, "cleanups_in_flight"), 0);
    assert_int_equal(status_u32(f->mgr, "slots_used"), 0);
    snapshot_clear(&before);
}

/* Output sink that tells when the code has started. */
static gboolean
stdout_has_marker(gpointer data)
{
    Run *r = data;
    g_autofree char *out = stream_text(r->out);
    return r->w.done || strstr(out, "started") != NULL;
}

/* The single vms/<id>/qemu.pid record: its pid. */
static GPid
read_qemu_record(const char *runtime, char **out_id)
{
    g_autofree char *vms = g_build_filename(runtime, "vms", NULL);
    g_autoptr(GDir) d = g_dir_open(vms, 0, NULL);
    assert_non_null(d);
    const char *id = g_dir_read_name(d);
    assert_non_null(id);
    assert_null(g_dir_read_name(d)); /* exactly one VM */
    g_autofree char *rec = g_build_filename(vms, id, "qemu.pid", NULL);
    g_autofree char *text = NULL;
    assert_true(g_file_get_contents(rec, &text, NULL, NULL));
    long pid = 0;
    unsigned long long start = 0;
    assert_int_equal(sscanf(text, "%ld %llu", &pid, &start), 2);
    assert_true(pid > 1);
    assert_true(start > 0);
    if (out_id)
        *out_id = g_strdup(id);
    return (GPid)pid;
}

static void
test_kill_qemu_mid_exec(void **state)
{
    Fixture *f = *state;
    Snapshot before = {0};
    snapshot_take(&before, f->runtime, f->mgr);

    g_autoptr(Run) r = run_start(f->mgr, SBX_LANGUAGE_PYTHON,
                                 "import time\nprint('started', flush=True)\ntime.sleep(30)\n");
    spin_until(stdout_has_marker, r, 0, "the code to start");
    assert_false(r->w.done);
    g_autofree char *id = NULL;
    GPid qemu = read_qemu_record(f->runtime, &id);
    assert_true(pid_alive(qemu));
    g_autofree char *cmd = g_strdup_printf("%d", (int)qemu);
    g_autofree char *cmdline = proc_cmdline(cmd);
    assert_non_null(strstr(cmdline, id)); /* the record names that VM's QEMU */
    assert_int_equal(kill(qemu, SIGKILL), 0);

    spin_until(flag_set, &r->w.done, 0, "the run to fail");
    assert_null(r->w.result);
    assert_non_null(r->w.error);
    print_message("# %s\n", r->w.error->message);
    assert_true(g_error_matches(r->w.error, SBX_ERROR, SBX_ERROR_OUTCOME_UNKNOWN));
    assert_false(pid_alive(qemu));
    assert_clean(&before, f->runtime, f->mgr);
    snapshot_clear(&before);
}

/* ---- the result comes before the background cleanup --------------------- */

static guint64
status_u64(SbxManager *mgr, const char *key)
{
    g_autoptr(GVariant) st = sbx_manager_get_status(mgr);
    guint64 v = 0;
    assert_true(g_variant_lookup(st, key, "t", &v));
    return v;
}

/* The pid in the single vms/<id>/qemu.pid record, or 0 (no assertions: used
 * inside a callback). */
static GPid
qemu_record_pid(const char *runtime)
{
    g_autofree char *vms = g_build_filename(runtime, "vms", NULL);
    g_autoptr(GDir) d = g_dir_open(vms, 0, NULL);
    const char *id = d ? g_dir_read_name(d) : NULL;
    if (id == NULL)
        return 0;
    g_autofree char *rec = g_build_filename(vms, id, "qemu.pid", NULL);
    g_autofree char *text = NULL;
    long pid = 0;
    if (g_dir_read_name(d) != NULL || !g_file_get_contents(rec, &text, NULL, NULL) ||
        sscanf(text, "%ld", &pid) != 1)
        return 0;
    return (GPid)pid;
}

/* No code can run in @pid any more: it is gone, a zombie, exiting
 * (PF_EXITING), or SIGKILL is pending for it. */
static gboolean
process_killed(GPid pid)
{
    g_autofree char *stat_path = g_strdup_printf("/proc/%d/stat", (int)pid);
    g_autofree char *stat = NULL;
    if (!g_file_get_contents(stat_path, &stat, NULL, NULL))
        return TRUE;
    const char *p = strrchr(stat, ')');
    char state = 0;
    unsigned long flags = 0;
    /* after comm: state ppid pgrp session tty_nr tpgid flags */
    if (p == NULL || sscanf(p + 2, "%c %*d %*d %*d %*d %*d %lu", &state, &flags) != 2)
        return FALSE;
    if (state == 'Z' || state == 'X' || (flags & 0x4 /* PF_EXITING */))
        return TRUE;
    g_autofree char *status_path = g_strdup_printf("/proc/%d/status", (int)pid);
    g_autofree char *status = NULL;
    if (!g_file_get_contents(status_path, &status, NULL, NULL))
        return TRUE;
    g_auto(GStrv) lines = g_strsplit(status, "\n", -1);
    for (guint i = 0; lines[i]; i++)
        if (g_str_has_prefix(lines[i], "ShdPnd:") || g_str_has_prefix(lines[i], "SigPnd:"))
            if (g_ascii_strtoull(lines[i] + 7, NULL, 16) & (G_GUINT64_CONSTANT(1) << (SIGKILL - 1)))
                return TRUE;
    return FALSE;
}

typedef struct {
    Wait w;
    SbxManager *mgr;
    const char *runtime;
    GPid qemu;       /* from the VM's record, read in the result callback */
    gboolean killed; /* process_killed(qemu) then */
    guint32 cleanups, slots; /* Status then */
} EarlyRun;

static void
early_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    EarlyRun *e = data;
    /* first, before anything else can run: the state when the caller got the result */
    e->qemu = qemu_record_pid(e->runtime);
    e->killed = e->qemu > 0 && process_killed(e->qemu);
    g_autoptr(GVariant) st = sbx_manager_get_status(e->mgr);
    (void)g_variant_lookup(st, "cleanups_in_flight", "u", &e->cleanups);
    (void)g_variant_lookup(st, "slots_used", "u", &e->slots);
    ran_cb(src, res, &e->w);
}

static void
test_result_before_cleanup(void **state)
{
    Fixture *f = *state;
    Snapshot before = {0};
    snapshot_take(&before, f->runtime, f->mgr);
    guint64 total0 = status_u64(f->mgr, "cleanups_total");

    g_autoptr(SbxRunSpec) spec = sbx_run_spec_new(sbx_manager_get_config(f->mgr));
    spec->language = SBX_LANGUAGE_PYTHON;
    g_bytes_unref(spec->code);
    spec->code = g_bytes_new_static("print('early')", 14);
    g_autoptr(GOutputStream) out = g_memory_output_stream_new_resizable();
    EarlyRun e = {.mgr = f->mgr, .runtime = f->runtime};
    sbx_manager_run_async(f->mgr, spec, out, NULL, NULL, NULL, NULL, early_cb, &e);
    spin_until(flag_set, &e.w.done, 0, "the run");
    if (e.w.error)
        fail_msg("run failed: %s", e.w.error->message);
    g_autofree char *text = stream_text(out);
    assert_string_equal(text, "early\n");
    print_message("# at the result: QEMU [%d] killed: %s; cleanups in flight %u, slots used %u; "
                  "teardown_ms %" G_GINT64_FORMAT ", cpu_ms %" G_GINT64_FORMAT ", memory_peak_mb %"
                  G_GINT64_FORMAT "\n",
                  (int)e.qemu, e.killed ? "yes" : "NO", e.cleanups, e.slots,
                  e.w.result->timing.teardown_ms, (gint64)e.w.result->cpu_ms,
                  (gint64)e.w.result->memory_peak_mb);
    /* the VM's record was still there (its cleanup had not run), yet its QEMU
     * could run nothing any more */
    assert_true(e.qemu > 0);
    assert_true(e.killed);
    /* still being released, and still counted by admission */
    assert_int_equal(e.cleanups, 1);
    assert_int_equal(e.slots, 1);
    assert_true(e.w.result->timing.teardown_ms >= 1);
    if (cgroups_enabled()) { /* read from the cgroup before the result */
        assert_true(e.w.result->cpu_ms > 0);
        assert_true(e.w.result->memory_peak_mb > 0);
    }

    /* then everything goes: process, files, cgroup, fds, reservation */
    assert_clean(&before, f->runtime, f->mgr); /* waits for the cleanup */
    assert_false(pid_alive(e.qemu));
    assert_int_equal(status_u32(f->mgr, "cleanups_in_flight"), 0);
    assert_int_equal(status_u64(f->mgr, "cleanups_total"), total0 + 1);
    assert_true(status_u64(f->mgr, "cleanup_ms_last") >= 1);
    assert_int_equal(status_u32(f->mgr, "slots_used"), 0);
    wait_clear(&e.w);
    snapshot_clear(&before);
}

static void
test_kill_storage_daemon(void **state)
{
    Fixture *f = *state;
    spin_until(pool_full, f->mgr, 20, "the work-disk pool");
    guint restarts = status_u32(f->mgr, "storage_daemon_restarts");
    GPid qsd = 0;
    g_autofree char *kids = children("qemu-storage", &qsd);
    assert_true(qsd > 0);

    /* kill it while the refill after the first run's take is in flight: the
     * refill's blockdev-create fails inside the monitor's close */
    g_autoptr(Run) r1 = run_start(f->mgr, SBX_LANGUAGE_RAW, "echo one");
    spin_until(pool_short, f->mgr, 1, "the first run to take a work disk");
    print_message("# killing qemu-storage-daemon [%d] during a refill; %u restarts so far\n",
                  (int)qsd, restarts);
    assert_int_equal(kill(qsd, SIGKILL), 0);
    spin_until(flag_set, &r1->w.done, 0, "the first run");
    if (r1->w.error)
        print_message("# run failed: %s\n", r1->w.error->message);
    assert_true(r1->w.ok);
    g_autofree char *o1 = stream_text(r1->out);
    assert_string_equal(o1, "one\n");
    spin_until(pool_full, f->mgr, 20, "the work-disk pool after the daemon died");
    assert_true(status_u32(f->mgr, "storage_daemon_restarts") > restarts);
    GPid qsd2 = 0;
    g_autofree char *kids2 = children("qemu-storage", &qsd2);
    assert_true(qsd2 > 0);
    assert_int_not_equal(qsd2, qsd);
    assert_false(pid_alive(qsd));

    /* and a second run on disks made by the new daemon */
    Snapshot before = {0};
    snapshot_take(&before, f->runtime, f->mgr);
    g_autoptr(Run) r2 = run_sync(f->mgr, SBX_LANGUAGE_PYTHON, "print('two')");
    assert_true(r2->w.ok);
    g_autofree char *o2 = stream_text(r2->out);
    assert_string_equal(o2, "two\n");
    assert_clean(&before, f->runtime, f->mgr);
    snapshot_clear(&before);
}

/* ---- fake qemu ---------------------------------------------------------- */

static void
fake_run(SbxManager *mgr, const char *mode, GError **out_error)
{
    /* the environment is fixed before threads start: the mode goes in a file */
    assert_true(g_file_set_contents(fake_mode_file, mode, -1, NULL));
    g_autoptr(Run) r = run_sync(mgr, SBX_LANGUAGE_PYTHON, "print(1)");
    assert_null(r->w.result);
    assert_non_null(r->w.error);
    print_message("# %s: %s\n", mode, r->w.error->message);
    *out_error = g_steal_pointer(&r->w.error);
}

static void
test_fake_qemu(void **state)
{
    Fixture *f = *state;
    g_autofree char *runtime = g_build_filename(f->dir, "fake", NULL);
    g_autoptr(SbxConfig) cfg = make_config(runtime);
    g_free(cfg->qemu);
    cfg->qemu = g_build_filename(top_srcdir, "tests", "fake", "fake-qemu.sh", NULL);
    cfg->boot_timeout_s = 1;
    SbxManager *mgr = start_manager(g_steal_pointer(&cfg));
    Snapshot before = {0};
    snapshot_take(&before, runtime, mgr);

    g_autoptr(GError) hang = NULL;
    fake_run(mgr, "hang", &hang);
    assert_true(g_error_matches(hang, SBX_ERROR, SBX_ERROR_TRANSIENT));
    assert_non_null(strstr(hang->message, "boot timeout"));
    assert_non_null(strstr(hang->message, "fake-qemu: console line one"));
    assert_non_null(strstr(hang->message, "fake-qemu: console line two"));
    assert_clean(&before, runtime, mgr);

    g_autoptr(GError) crash = NULL;
    fake_run(mgr, "crash", &crash);
    assert_true(g_error_matches(crash, SBX_ERROR, SBX_ERROR_TRANSIENT));
    assert_non_null(strstr(crash->message, "cannot allocate guest RAM (simulated)"));
    assert_non_null(strstr(crash->message, "exited with status 1"));
    assert_clean(&before, runtime, mgr);

    g_autoptr(GError) garbage = NULL;
    fake_run(mgr, "garbage", &garbage);
    assert_true(g_error_matches(garbage, SBX_ERROR, SBX_ERROR_TRANSIENT));
    assert_non_null(strstr(garbage->message, "QMP"));
    assert_clean(&before, runtime, mgr);

    snapshot_clear(&before);
    stop_manager(mgr);
}

/* ---- orphans of a killed scheduler -------------------------------------- */

static GLogWriterOutput
log_writer(GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer data)
{
    for (gsize i = 0; i < n_fields; i++)
        if (g_str_equal(fields[i].key, "MESSAGE") && fields[i].length < 0 &&
            strstr(fields[i].value, "orphan cleanup"))
            g_ptr_array_add(log_lines, g_strdup(fields[i].value));
    return g_log_writer_default(level, fields, n_fields, data);
}

typedef struct {
    gboolean done;
    char *line;
    GError *error;
} LineWait;

static void
line_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    LineWait *w = data;
    w->line = g_data_input_stream_read_line_finish_utf8(G_DATA_INPUT_STREAM(src), res, NULL,
                                                        &w->error);
    w->done = TRUE;
}

static void
wait_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    (void)g_subprocess_wait_finish(G_SUBPROCESS(src), res, NULL);
    *(gboolean *)data = TRUE;
}

/* The live children of @parent (pids). */
static GArray *
children_of(GPid parent)
{
    GArray *out = g_array_new(FALSE, FALSE, sizeof(GPid));
    g_autoptr(GDir) d = g_dir_open("/proc", 0, NULL);
    const char *name;
    while ((name = g_dir_read_name(d)) != NULL) {
        if (g_ascii_isdigit(name[0]) && proc_ppid(name) == parent) {
            GPid p = atoi(name);
            g_array_append_val(out, p);
        }
    }
    return out;
}

static gboolean
all_dead(gpointer data)
{
    GArray *pids = data;
    for (guint i = 0; i < pids->len; i++)
        if (pid_alive(g_array_index(pids, GPid, i)))
            return FALSE;
    return TRUE;
}

typedef struct {
    GPid owner;
} Owner;

static gboolean
cgroups_gone(gpointer data)
{
    return count_vm_cgroups(((Owner *)data)->owner) == 0;
}

static void
test_orphans_after_scheduler_crash(void **state)
{
    Fixture *f = *state;
    g_autofree char *runtime = g_build_filename(f->dir, "crash", NULL);
    g_autofree char *conf = g_build_filename(f->dir, "crash.conf", NULL);
    g_autofree char *conf_text = g_strdup_printf("[scheduler]\nguest_dir=%s\nruntime_dir=%s\n"
                                                 "accel=tcg\n",
                                                 guest_dir, runtime);
    assert_true(g_file_set_contents(conf, conf_text, -1, NULL));
    g_autofree char *ctl = g_build_filename(top_builddir, "schedulerctl", NULL);
    g_autoptr(GError) error = NULL;
    g_autoptr(GSubprocess) sched = g_subprocess_new(
        G_SUBPROCESS_FLAGS_STDOUT_PIPE, &error, ctl, "run", "--embedded", "-q", "--config", conf,
        "import time\nprint('up', flush=True)\ntime.sleep(60)\n", NULL);
    if (sched == NULL)
        fail_msg("%s: %s", ctl, error->message);
    GPid sched_pid = (GPid)atoi(g_subprocess_get_identifier(sched));

    /* the code runs: the VM is booted and exec has been dispatched */
    g_autoptr(GDataInputStream) lines = g_data_input_stream_new(g_subprocess_get_stdout_pipe(sched));
    LineWait lw = {0};
    g_data_input_stream_read_line_async(lines, G_PRIORITY_DEFAULT, NULL, line_cb, &lw);
    spin_until(flag_set, &lw.done, 0, "the crashing scheduler's code to start");
    if (lw.line == NULL)
        fail_msg("the scheduler printed nothing: %s", lw.error ? lw.error->message : "EOF");
    assert_string_equal(lw.line, "up");
    g_free(lw.line);

    g_autofree char *id = NULL;
    GPid qemu = read_qemu_record(runtime, &id);
    g_autofree char *want_prefix = g_strdup_printf("vm-%d-", (int)sched_pid);
    assert_true(g_str_has_prefix(id, want_prefix));
    g_autoptr(GArray) helpers = children_of(sched_pid); /* QEMU + qemu-storage-daemon */
    print_message("# scheduler [%d] runs %s (QEMU [%d]) with %u children\n", (int)sched_pid, id,
                  (int)qemu, helpers->len);
    assert_true(helpers->len >= 2);
    if (cgroups_enabled())
        assert_true(count_vm_cgroups(sched_pid) > 0);

    /* the crash */
    gboolean reaped = FALSE;
    g_subprocess_wait_async(sched, NULL, wait_cb, &reaped);
    g_subprocess_force_exit(sched);
    spin_until(flag_set, &reaped, 0, "the scheduler to die");
    assert_true(g_subprocess_get_if_signaled(sched));
    assert_int_equal(g_subprocess_get_term_sig(sched), SIGKILL);

    /* what the dead scheduler left: its records and disks stay until a restart */
    g_autofree char *vmdir = g_build_filename(runtime, "vms", id, NULL);
    assert_true(g_file_test(vmdir, G_FILE_TEST_IS_DIR));

    /* a new scheduler on the same runtime dir */
    g_ptr_array_set_size(log_lines, 0);
    SbxManager *mgr = start_manager(make_config(runtime));
    gboolean reported = FALSE;
    for (guint i = 0; i < log_lines->len; i++) {
        print_message("# log: %s\n", (const char *)g_ptr_array_index(log_lines, i));
        if (strstr(g_ptr_array_index(log_lines, i), id))
            reported = TRUE;
    }
    assert_true(reported);
    assert_false(g_file_test(vmdir, G_FILE_TEST_EXISTS));
    /* QEMU and the storage daemon of the dead scheduler are gone (PDEATHSIG or
     * the reaper); none names the runtime dir */
    spin_until(all_dead, helpers, 20, "the dead scheduler's children to go");
    assert_false(pid_alive(qemu));
    /* the per-VM cgroup goes with the startup sweep (asynchronous) */
    Owner o = {sched_pid};
    spin_until(cgroups_gone, &o, 20, "the dead scheduler's cgroups to be swept");

    Snapshot after = {0};
    snapshot_take(&after, runtime, mgr);
    assert_int_equal(after.qemu, 0);
    assert_int_equal(after.vms_entries, 0);
    assert_int_equal(after.other_disks, 0);
    /* the dead scheduler's pool disks were removed, the new pool is full */
    assert_int_equal(after.pool, pool_value(mgr, "work_disks_target"));
    {
        g_autofree char *disks = g_build_filename(runtime, "disks", NULL);
        g_autoptr(GDir) dd = g_dir_open(disks, 0, NULL);
        g_autofree char *dead_pool = g_strdup_printf("pool-%d-", (int)sched_pid);
        const char *name;
        while ((name = g_dir_read_name(dd)) != NULL)
            assert_false(g_str_has_prefix(name, dead_pool));
    }
    snapshot_take(&after, runtime, mgr); /* without that directory's fd */

    /* and it runs code */
    g_autoptr(Run) r = run_sync(mgr, SBX_LANGUAGE_RAW, "echo after-crash");
    assert_true(r->w.ok);
    g_autofree char *out = stream_text(r->out);
    assert_string_equal(out, "after-crash\n");
    assert_clean(&after, runtime, mgr);
    snapshot_clear(&after);
    stop_manager(mgr);
}

/* The reaper itself, for children that outlived their scheduler (no
 * PDEATHSIG: another pid namespace, a helper that changed it): a record whose
 * pid and start time match is killed, a record of a recycled pid (same pid,
 * other start time) is not; both run dirs go. The cgroup sweep removes the
 * groups of dead owners only: a live scheduler's vm-<pid>-* groups stay. */
static GSubprocess *
spawn_sleeper(GPid *out_pid)
{
    GSubprocess *p = g_subprocess_new(G_SUBPROCESS_FLAGS_NONE, NULL, "sleep", "600", NULL);
    assert_non_null(p);
    *out_pid = (GPid)atoi(g_subprocess_get_identifier(p));
    return p;
}

static void
write_record(const char *runtime, const char *vm, GPid pid, guint64 start)
{
    g_autofree char *dir = g_build_filename(runtime, "vms", vm, NULL);
    assert_int_equal(g_mkdir_with_parents(dir, 0700), 0);
    g_autofree char *rec = g_build_filename(dir, "qemu.pid", NULL);
    g_autofree char *text = g_strdup_printf("%d %" G_GUINT64_FORMAT "\n", (int)pid, start);
    assert_true(g_file_set_contents(rec, text, -1, NULL));
    g_autofree char *disk = g_build_filename(dir, "work.qcow2", NULL);
    assert_true(g_file_set_contents(disk, "", 0, NULL));
}

static guint64
start_time(GPid pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/stat", (int)pid);
    g_autofree char *stat = NULL;
    assert_true(g_file_get_contents(path, &stat, NULL, NULL));
    g_auto(GStrv) f = g_strsplit(strrchr(stat, ')') + 2, " ", 0);
    return g_ascii_strtoull(f[19], NULL, 10);
}

static gboolean
cgroup_exists(GPtrArray *bases, const char *name)
{
    for (guint i = 0; i < bases->len; i++) {
        g_autofree char *p = g_build_filename(g_ptr_array_index(bases, i), name, NULL);
        if (g_file_test(p, G_FILE_TEST_IS_DIR))
            return TRUE;
    }
    return FALSE;
}

typedef struct {
    GPtrArray *bases;
    const char *name;
} CgWait;

static gboolean
cgroup_gone(gpointer data)
{
    CgWait *w = data;
    return !cgroup_exists(w->bases, w->name);
}

static void
test_orphan_records_and_cgroups(void **state)
{
    Fixture *f = *state;
    g_autofree char *runtime = g_build_filename(f->dir, "records", NULL);
    GPid orphan = 0, bystander = 0;
    g_autoptr(GSubprocess) orphan_p = spawn_sleeper(&orphan);
    g_autoptr(GSubprocess) bystander_p = spawn_sleeper(&bystander);
    write_record(runtime, "vm-orphan", orphan, start_time(orphan));
    write_record(runtime, "vm-recycled", bystander, start_time(bystander) + 1);

    /* cgroups: one of a dead owner, one of a live owner that is not us */
    gboolean cg = cgroups_enabled();
    SbxCgroupConfig ccfg = {0};
    g_autoptr(SbxCgroupManager) cm = sbx_cgroup_manager_new(&ccfg, NULL);
    assert_non_null(cm);
    g_autoptr(GPtrArray) bases = sbx_cgroup_manager_dup_base_dirs(cm);
    g_autoptr(SbxCgroup) dead_cg = NULL, live_cg = NULL;
    g_autofree char *dead_name = NULL;
    g_autofree char *live_name = g_strdup_printf("vm-%d-1", (int)bystander);
    if (cg) {
        g_autofree char *out = NULL; /* a pid that has exited */
        assert_true(g_spawn_command_line_sync("sh -c 'echo $$'", &out, NULL, NULL, NULL));
        GPid gone = (GPid)atoi(out);
        assert_true(gone > 1);
        dead_name = g_strdup_printf("vm-%d-1", (int)gone);
        dead_cg = sbx_cgroup_manager_create(cm, dead_name, NULL, NULL);
        live_cg = sbx_cgroup_manager_create(cm, live_name, NULL, NULL);
        assert_non_null(dead_cg);
        assert_non_null(live_cg);
        assert_true(cgroup_exists(bases, dead_name));
    } else {
        print_message("# cgroups unusable here: the sweep part is not checked\n");
    }

    g_ptr_array_set_size(log_lines, 0);
    SbxManager *mgr = start_manager(make_config(runtime));
    gboolean killed = FALSE, stale = FALSE;
    for (guint i = 0; i < log_lines->len; i++) {
        const char *l = g_ptr_array_index(log_lines, i);
        print_message("# log: %s\n", l);
        g_autofree char *k = g_strdup_printf("vm-orphan: killed qemu[%d]", (int)orphan);
        killed |= strstr(l, k) != NULL;
        stale |= strstr(l, "vm-recycled: removed stale files") != NULL;
    }
    assert_true(killed);
    assert_true(stale);
    g_autofree char *vms = g_build_filename(runtime, "vms", NULL);
    assert_int_equal(count_tree(vms), 0);

    gboolean orphan_reaped = FALSE;
    g_subprocess_wait_async(orphan_p, NULL, wait_cb, &orphan_reaped);
    spin_until(flag_set, &orphan_reaped, 0, "the orphan to die");
    assert_true(g_subprocess_get_if_signaled(orphan_p));
    assert_int_equal(g_subprocess_get_term_sig(orphan_p), SIGKILL);
    assert_true(pid_alive(bystander)); /* the recycled pid was left alone */

    if (cg) {
        CgWait w = {bases, dead_name};
        spin_until(cgroup_gone, &w, 20, "the dead owner's cgroup to be swept");
        /* the sweep ran (the dead one is gone) and left the live one */
        assert_true(cgroup_exists(bases, live_name));
        assert_true(sbx_cgroup_try_destroy(live_cg, NULL));
    }
    g_subprocess_force_exit(bystander_p);
    stop_manager(mgr);
}

/* Last: the fixture's manager shut down leaves what was there before it. */
static void
test_shutdown_releases_everything(void **state)
{
    Fixture *f = *state;
    stop_manager(f->mgr);
    f->mgr = NULL;
    Snapshot now = {0};
    snapshot_take(&now, f->runtime, NULL);
    if (now.fds != f->base.fds)
        print_message("# fds before: %s\n# fds after:  %s\n", f->base.fd_list, now.fd_list);
    /* no fd left behind; the baseline may hold a transient fd of GLib's (a pidfd or
     * eventfd still open from the previous test) that is gone by now */
    assert_true(now.fds <= f->base.fds);
    assert_string_equal(now.children, f->base.children); /* the storage daemon too */
    assert_int_equal(now.qemu, 0);
    assert_int_equal(now.vms_entries, 0);
    assert_int_equal(now.pool, 0); /* drained */
    assert_int_equal(now.other_disks, 0);
    assert_int_equal(now.cgroups, 0);
    snapshot_clear(&now);
}

int
main(void)
{
    guest_dir = g_getenv("SBX_GUEST_DIR");
    top_srcdir = g_getenv("top_srcdir");
    top_builddir = g_getenv("top_builddir");
    if (top_srcdir == NULL)
        top_srcdir = "..";
    if (top_builddir == NULL)
        top_builddir = ".";
    g_autofree char *vmlinux = guest_dir ? g_build_filename(guest_dir, "vmlinux", NULL) : NULL;
    if (vmlinux == NULL || !g_file_test(vmlinux, G_FILE_TEST_IS_REGULAR)) {
        printf("1..0 # SKIP no guest image: set SBX_GUEST_DIR (make guest-image)\n");
        return 77;
    }
    static const char *const bins[] = {"qemu-system-x86_64", "qemu-storage-daemon"};
    for (guint i = 0; i < G_N_ELEMENTS(bins); i++) {
        g_autofree char *p = g_find_program_in_path(bins[i]);
        if (p == NULL) {
            printf("1..0 # SKIP %s not installed (ci/deps.sh)\n", bins[i]);
            return 77;
        }
    }
    /* The cold path (admission -> disk + cgroup -> boot -> exec -> teardown)
     * is under test: no L1 template builds or warm-pool VMs in the background
     * (tests/integration/test-l1 covers those). Set before any thread starts;
     * the schedulerctl child inherits it. */
    g_setenv("SCHEDULERD_L1", "0", TRUE);
    g_setenv("SCHEDULERD_WARM_POOL", "0", TRUE);
    log_lines = g_ptr_array_new_with_free_func(g_free);
    work_dir = g_dir_make_tmp("sbx-lifecycle-XXXXXX", NULL);
    fake_mode_file = g_build_filename(work_dir, "fake-qemu.mode", NULL);
    g_setenv("FAKE_QEMU_MODE_FILE", fake_mode_file, TRUE);
    g_log_set_writer_func(log_writer, NULL, NULL);

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_languages),
        cmocka_unit_test(test_twenty_runs_leave_nothing),
        cmocka_unit_test(test_kill_qemu_mid_exec),
        cmocka_unit_test(test_result_before_cleanup),
        cmocka_unit_test(test_kill_storage_daemon),
        cmocka_unit_test(test_fake_qemu),
        cmocka_unit_test(test_orphans_after_scheduler_crash),
        cmocka_unit_test(test_orphan_records_and_cgroups),
        cmocka_unit_test(test_shutdown_releases_everything),
    };
    if (g_getenv("SBX_TEST_FILTER")) /* e.g. "*fake*" while debugging */
        cmocka_set_test_filter(g_getenv("SBX_TEST_FILTER"));
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
