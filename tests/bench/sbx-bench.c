/* SPDX-License-Identifier: MIT
 *
 * sbx-bench: the benchmarks behind `make bench` (docs/benchmarks.md). Not a
 * test: nothing is asserted, numbers are printed. It drives the scheduler core
 * in-process (SbxManager, the same object schedulerd and schedulerctl's
 * embedded mode run) and compares it, in one run, with a raw-QEMU floor: the
 * same guest image and QEMU argv (sbx_qemu_build_argv) started by a minimal
 * launcher (sbx-spawn, a socketpair for the agent port, common/sbx-frame for
 * the hello + exec frames), no scheduler. Subcommands:
 *
 *   create     latency per path (host python, bwrap, raw-QEMU floor, cold boot,
 *              L1 restore, L1 into a pre-started QEMU, warm-pool hit)
 *   burst      N runs submitted at once, mixed python / javascript / shell
 *   optimizer  the burst over a grid of CPU x MEM overcommit ratios
 *
 * Each prints Markdown tables, writes JSON (--json) and a gnuplot data file
 * (--dat: label min p50 p95 max per row), and ends with one summary line.
 */
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gio/gio.h>
#include <glib-unix.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>

#include "common/sbx-fd.h"
#include "common/sbx-frame.h"
#include "common/sbx-spawn.h"
#include "scheduler/sbx-error.h"
#include "scheduler/sbx-manager.h"
#include "scheduler/sbx-qemu.h"
#include "tests/sbx-test-loop.h"
#include "tests/sbx-test-manager.h"

/* ---- main-loop helpers ------------------------------------------------------ */

static double
now_ms(void)
{
    return (double)g_get_monotonic_time() / 1000.0;
}

/* ---- statistics ------------------------------------------------------------- */

typedef struct {
    guint n;
    double min, p50, p95, max;
} Stats;

static int
cmp_double(gconstpointer a, gconstpointer b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentiles of @a (ms). n = 0: every field NAN. */
static Stats
stats_of(GArray *a)
{
    Stats s = {0, NAN, NAN, NAN, NAN};
    if (a == NULL || a->len == 0)
        return s;
    g_autoptr(GArray) c = g_array_sized_new(FALSE, FALSE, sizeof(double), a->len);
    g_array_append_vals(c, a->data, a->len);
    g_array_sort(c, cmp_double);
    guint n = c->len;
    s.n = n;
    s.min = g_array_index(c, double, 0);
    s.max = g_array_index(c, double, n - 1);
    s.p50 = g_array_index(c, double, (guint)MAX(ceil(0.50 * n), 1) - 1);
    s.p95 = g_array_index(c, double, (guint)MAX(ceil(0.95 * n), 1) - 1);
    return s;
}

static GArray *
series_new(void)
{
    return g_array_new(FALSE, FALSE, sizeof(double));
}

static void
series_add(GArray *a, double v)
{
    g_array_append_val(a, v);
}

/* "12.3" or "n/a" into a static ring of buffers (for printf). */
static const char *
fmt_ms(double v)
{
    static char buf[16][32];
    static guint i;
    char *b = buf[i++ % 16];
    if (isnan(v))
        g_strlcpy(b, "n/a", 32);
    else if (v >= 100)
        g_snprintf(b, 32, "%.0f", v);
    else
        g_snprintf(b, 32, "%.1f", v);
    return b;
}

/* @v with @prec decimals and @suffix, or "n/a" for NAN, into the same ring. */
static const char *
fmt_num(double v, int prec, const char *suffix)
{
    static char buf[16][32];
    static guint i;
    char *b = buf[i++ % 16];
    if (isnan(v))
        g_strlcpy(b, "n/a", 32);
    else
        g_snprintf(b, 32, "%.*f%s", prec, v, suffix);
    return b;
}

static void
json_add_num(JsonBuilder *b, const char *name, double v)
{
    json_builder_set_member_name(b, name);
    if (isnan(v))
        json_builder_add_null_value(b);
    else
        json_builder_add_double_value(b, round(v * 100) / 100);
}

static void
json_add_stats(JsonBuilder *b, const char *name, GArray *a)
{
    Stats s = stats_of(a);
    json_builder_set_member_name(b, name);
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "n");
    json_builder_add_int_value(b, s.n);
    json_add_num(b, "min", s.min);
    json_add_num(b, "p50", s.p50);
    json_add_num(b, "p95", s.p95);
    json_add_num(b, "max", s.max);
    json_builder_end_object(b);
}

/* ---- host facts -------------------------------------------------------------- */

static guint64
host_mem_kb(void)
{
    g_autofree char *t = NULL;
    if (!g_file_get_contents("/proc/meminfo", &t, NULL, NULL))
        return 0;
    const char *p = strstr(t, "MemTotal:");
    return p ? g_ascii_strtoull(p + 9, NULL, 10) : 0;
}

static char *
host_cpu_model(void)
{
    g_autofree char *t = NULL;
    if (!g_file_get_contents("/proc/cpuinfo", &t, NULL, NULL))
        return g_strdup("?");
    const char *p = strstr(t, "model name");
    if (p == NULL || (p = strchr(p, ':')) == NULL)
        return g_strdup("?");
    const char *e = strchr(p, '\n');
    g_autofree char *m = g_strndup(p + 1, e ? (gsize)(e - p - 1) : strlen(p + 1));
    return g_strdup(g_strstrip(m));
}

/* Sum of the RSS of every qemu-system process whose command line mentions
 * @needle (our runtime dir), in KiB. */
static guint64
qemu_rss_kb(const char *needle, guint *out_n)
{
    g_autoptr(GDir) d = g_dir_open("/proc", 0, NULL);
    guint64 sum = 0;
    guint n = 0;
    long page_kb = sysconf(_SC_PAGESIZE) / 1024;
    for (const char *e; d && (e = g_dir_read_name(d));) {
        if (!g_ascii_isdigit(e[0]))
            continue;
        g_autofree char *p = g_strdup_printf("/proc/%s/cmdline", e);
        g_autofree char *cmd = NULL;
        gsize len = 0;
        if (!g_file_get_contents(p, &cmd, &len, NULL) || len == 0)
            continue;
        if (strstr(cmd, "qemu-system") == NULL) /* argv[0] */
            continue;
        for (gsize i = 0; i + 1 < len; i++)
            if (cmd[i] == '\0')
                cmd[i] = ' ';
        if (strstr(cmd, needle) == NULL)
            continue;
        g_autofree char *sp = g_strdup_printf("/proc/%s/statm", e);
        g_autofree char *sm = NULL;
        if (!g_file_get_contents(sp, &sm, NULL, NULL))
            continue;
        char *end = NULL;
        (void)g_ascii_strtoull(sm, &end, 10); /* size */
        sum += g_ascii_strtoull(end, NULL, 10) * (guint64)page_kb;
        n++;
    }
    if (out_n)
        *out_n = n;
    return sum;
}

/* ---- options / context -------------------------------------------------------- */

typedef struct {
    const char *guest_dir;
    char *rt;          /* runtime dir of this invocation */
    char *json_path;
    char *dat_path;
    guint runs;
    char *paths;       /* create: comma list */
    double cpu_ratio, mem_ratio;
    char *cpu_grid, *mem_grid;
    guint admission_timeout_s;
    char *accel;       /* as used by the manager */
} Bench;

static SbxConfig *
bench_config(Bench *b, double cpu_ratio, double mem_ratio)
{
    SbxConfig *cfg = sbx_config_new_default();
    g_autoptr(GError) error = NULL;
    if (!sbx_config_apply_env(cfg, &error))
        g_printerr("sbx-bench: ignoring environment: %s\n", error->message);
    g_free(cfg->guest_dir);
    cfg->guest_dir = g_strdup(b->guest_dir);
    g_free(cfg->runtime_dir);
    cfg->runtime_dir = g_strdup(b->rt);
    if (cpu_ratio > 0)
        cfg->cpu_overcommit_ratio = cpu_ratio;
    if (mem_ratio > 0)
        cfg->memory_overcommit_ratio = mem_ratio;
    if (b->admission_timeout_s > 0)
        cfg->admission_timeout_s = b->admission_timeout_s;
    return cfg;
}

static SbxManager *
manager_start(Bench *b, SbxConfig *cfg, GError **error)
{
    g_autoptr(SbxManager) mgr = sbx_manager_new(cfg);
    g_autoptr(GAsyncResult) res = NULL;
    sbx_manager_start_async(mgr, NULL, sbx_test_store_result, &res);
    if (!sbx_manager_start_finish(mgr, sbx_test_wait_result(&res), error))
        return NULL;
    g_free(b->accel);
    b->accel = g_strdup(sbx_manager_get_accel(mgr));
    return g_steal_pointer(&mgr);
}

static void
manager_stop(SbxManager *mgr)
{
    g_autoptr(GAsyncResult) res = NULL;
    sbx_manager_shutdown_async(mgr, sbx_test_store_result, &res);
    (void)sbx_manager_shutdown_finish(mgr, sbx_test_wait_result(&res), NULL);
}

/* ---- first-output sink ---------------------------------------------------------- */

/* A GOutputStream that keeps nothing and records when the first byte came. */
#define BENCH_TYPE_SINK (bench_sink_get_type())
G_DECLARE_FINAL_TYPE(BenchSink, bench_sink, BENCH, SINK, GOutputStream)

struct _BenchSink {
    GOutputStream parent;
    GMutex lock;     /* written from GIO's worker thread */
    gint64 first_us; /* 0: nothing written yet */
    gint64 bytes;
};

G_DEFINE_FINAL_TYPE(BenchSink, bench_sink, G_TYPE_OUTPUT_STREAM)

static gssize
bench_sink_write(GOutputStream *stream, const void *buffer, gsize count,
                 GCancellable *cancellable, GError **error)
{
    (void)buffer;
    (void)cancellable;
    (void)error;
    BenchSink *self = BENCH_SINK(stream);
    gint64 now = g_get_monotonic_time();
    g_mutex_lock(&self->lock);
    if (count > 0 && self->first_us == 0)
        self->first_us = now;
    self->bytes += (gint64)count;
    g_mutex_unlock(&self->lock);
    return (gssize)count;
}

static void
bench_sink_finalize(GObject *object)
{
    g_mutex_clear(&BENCH_SINK(object)->lock);
    G_OBJECT_CLASS(bench_sink_parent_class)->finalize(object);
}

static void
bench_sink_class_init(BenchSinkClass *klass)
{
    G_OBJECT_CLASS(klass)->finalize = bench_sink_finalize;
    G_OUTPUT_STREAM_CLASS(klass)->write_fn = bench_sink_write;
}

static void
bench_sink_init(BenchSink *self)
{
    g_mutex_init(&self->lock);
}

/* ---- one scheduler run -------------------------------------------------------------- */

typedef struct {
    SbxRunResult *result; /* NULL: failed, see error */
    GError *error;
    double submit_ms, first_ms, done_ms; /* first_ms NAN: no output */
    gint64 out_bytes;
    BenchSink *sink;
    guint *pending;
} RunRec;

static void
run_rec_clear(RunRec *r)
{
    g_clear_pointer(&r->result, sbx_run_result_free);
    g_clear_error(&r->error);
    g_clear_object(&r->sink);
}

static void
run_rec_done(GObject *src, GAsyncResult *res, gpointer data)
{
    RunRec *r = data;
    r->done_ms = now_ms();
    r->result = sbx_manager_run_finish(SBX_MANAGER(src), res, &r->error);
    g_mutex_lock(&r->sink->lock);
    gint64 first = r->sink->first_us;
    r->out_bytes = r->sink->bytes;
    g_mutex_unlock(&r->sink->lock);
    r->first_ms = first ? (double)first / 1000.0 : NAN;
    (*r->pending)--;
}

static void
run_submit(SbxManager *mgr, SbxLanguage lang, const char *code, RunRec *r)
{
    g_autoptr(SbxRunSpec) spec = sbx_run_spec_new(sbx_manager_get_config(mgr));
    spec->language = lang;
    spec->code = g_bytes_new(code, strlen(code));
    r->sink = g_object_new(BENCH_TYPE_SINK, NULL);
    r->first_ms = NAN;
    r->submit_ms = now_ms();
    (*r->pending)++;
    sbx_manager_run_async(mgr, spec, G_OUTPUT_STREAM(r->sink), NULL, NULL, NULL, NULL,
                          run_rec_done, r);
}

static void
run_one(SbxManager *mgr, const char *code, RunRec *r)
{
    guint pending = 0;
    r->pending = &pending;
    run_submit(mgr, SBX_LANGUAGE_PYTHON, code, r);
    while (pending > 0)
        g_main_context_iteration(NULL, TRUE);
}

static gboolean
run_ok(const RunRec *r)
{
    return r->result && r->result->exit_code == 0 && r->out_bytes > 0;
}

/* ---- per-path series ------------------------------------------------------------------ */

enum { ST_ADMISSION, ST_SETUP, ST_BOOT, ST_EXEC, ST_TEARDOWN, ST_N };
static const char *const stage_names[ST_N] = {"admission", "setup", "boot_or_restore", "exec",
                                              "teardown"};

typedef struct {
    const char *key;
    const char *label;
    gboolean scheduler; /* has a stage breakdown */
    char *na;           /* not measured: why */
    GArray *total;      /* end to end, ms (host anchors: process lifetime) */
    GArray *first;      /* submit -> first stdout byte (floor: -> first stdout frame) */
    GArray *hello;      /* floor only: spawn -> agent hello */
    GArray *stage[ST_N];
    GArray *guest_exec; /* guest-measured exec duration */
    GArray *overhead;   /* end to end - guest exec */
    GArray *accept;     /* guest-measured: request read -> exec start (agent parse, dispatch) */
    GArray *outside;    /* end to end - (guest accept + guest exec): host + virtio-serial */
    guint failures, l1_hits, warm_hits;
    char *last_error;
} Path;

static Path *
path_new(const char *key, const char *label, gboolean scheduler)
{
    Path *p = g_new0(Path, 1);
    p->key = key;
    p->label = label;
    p->scheduler = scheduler;
    p->total = series_new();
    p->first = series_new();
    p->hello = series_new();
    for (guint i = 0; i < ST_N; i++)
        p->stage[i] = series_new();
    p->guest_exec = series_new();
    p->overhead = series_new();
    p->accept = series_new();
    p->outside = series_new();
    return p;
}

static void
path_free(Path *p)
{
    g_free(p->na);
    g_array_unref(p->total);
    g_array_unref(p->first);
    g_array_unref(p->hello);
    for (guint i = 0; i < ST_N; i++)
        g_array_unref(p->stage[i]);
    g_array_unref(p->guest_exec);
    g_array_unref(p->overhead);
    g_array_unref(p->accept);
    g_array_unref(p->outside);
    g_free(p->last_error);
    g_free(p);
}

static void
path_fail(Path *p, const char *what)
{
    p->failures++;
    g_free(p->last_error);
    p->last_error = g_strdup(what);
    g_printerr("sbx-bench: %s: %s\n", p->key, what);
}

static void
path_add_run(Path *p, RunRec *r)
{
    if (!run_ok(r)) {
        path_fail(p, r->error ? r->error->message : "exit code != 0 or no output");
        return;
    }
    const SbxTimings *t = &r->result->timing;
    series_add(p->total, r->done_ms - r->submit_ms);
    if (!isnan(r->first_ms))
        series_add(p->first, r->first_ms - r->submit_ms);
    series_add(p->stage[ST_ADMISSION], (double)t->admission_ms);
    series_add(p->stage[ST_SETUP], (double)t->setup_ms);
    series_add(p->stage[ST_BOOT], (double)(t->boot_ms + t->restore_ms));
    series_add(p->stage[ST_EXEC], (double)t->exec_ms);
    series_add(p->stage[ST_TEARDOWN], (double)t->teardown_ms);
    double g = (double)r->result->guest_exec_us / 1000.0;
    series_add(p->guest_exec, g);
    series_add(p->overhead, r->done_ms - r->submit_ms - g);
    if (r->result->guest_accept_us >= 0) {
        double a = (double)r->result->guest_accept_us / 1000.0;
        series_add(p->accept, a);
        series_add(p->outside, r->done_ms - r->submit_ms - g - a);
    }
    p->l1_hits += r->result->l1_hit;
    p->warm_hits += r->result->warm_pool_hit;
}

/* ---- host anchors -------------------------------------------------------------------- */

static gboolean
spawn_wait(const char *const *argv, double *out_ms, GError **error)
{
    g_autoptr(SbxSpawnSpec) spec = sbx_spawn_spec_new();
    for (guint i = 0; argv[i]; i++)
        sbx_spawn_spec_add_arg(spec, argv[i]);
    double t0 = now_ms();
    g_autoptr(SbxChild) child = sbx_child_spawn(spec, error);
    if (child == NULL)
        return FALSE;
    g_autoptr(GAsyncResult) res = NULL;
    sbx_child_wait_async(child, NULL, sbx_test_store_result, &res);
    if (!sbx_child_wait_finish(child, sbx_test_wait_result(&res), error))
        return FALSE;
    double t1 = now_ms();
    int st = sbx_child_get_status(child);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        g_autofree char *why = sbx_child_describe_exit(child);
        g_autofree char *con = sbx_child_dup_console_tail(child, 3);
        g_set_error(error, SBX_SPAWN_ERROR, SBX_SPAWN_ERROR_EXITED, "%s %s: %s", argv[0], why,
                    con);
        return FALSE;
    }
    if (out_ms)
        *out_ms = t1 - t0;
    return TRUE;
}

static void
anchor_series(Path *p, const char *const *argv, guint n)
{
    for (guint i = 0; i < n; i++) {
        g_autoptr(GError) error = NULL;
        double ms = 0;
        if (!spawn_wait(argv, &ms, &error)) {
            path_fail(p, error->message);
            if (i == 0) {
                p->na = g_strdup_printf("failed: %s", error->message);
                return;
            }
            continue;
        }
        series_add(p->total, ms);
        series_add(p->first, ms);
    }
}

/* ---- raw-QEMU floor ------------------------------------------------------------------- */

typedef struct {
    SbxFrameDecoder *dec;
    int fd;
    double hello_ms, first_ms;
    gboolean done;
    GError *error;
    guint watch, timeout; /* 0 once removed */
} FloorConn;

static gboolean
floor_end(FloorConn *c)
{
    c->done = TRUE;
    c->watch = 0;
    return G_SOURCE_REMOVE;
}

static gboolean
send_frame(int fd, JsonObject *h, const char *payload, GError **error)
{
    g_autoptr(GByteArray) out = g_byte_array_new();
    if (!sbx_frame_encode(out, h, payload, payload ? strlen(payload) : 0, error))
        return FALSE;
    gsize off = 0;
    while (off < out->len) {
        ssize_t w = write(fd, out->data + off, out->len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            g_main_context_iteration(NULL, FALSE);
            continue;
        }
        if (w < 0) {
            g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "agent write: %s",
                        g_strerror(errno));
            return FALSE;
        }
        off += (gsize)w;
    }
    return TRUE;
}

static gboolean
floor_readable(gint fd, GIOCondition cond, gpointer data)
{
    (void)cond;
    FloorConn *c = data;
    guint8 buf[65536];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return G_SOURCE_CONTINUE;
    if (n <= 0) {
        g_set_error(&c->error, G_IO_ERROR, G_IO_ERROR_CLOSED, "agent channel closed");
        return floor_end(c);
    }
    if (!sbx_frame_decoder_feed(c->dec, buf, (gsize)n, &c->error)) {
        return floor_end(c);
    }
    for (;;) {
        g_autoptr(SbxFrame) f = sbx_frame_decoder_pop(c->dec, &c->error);
        if (f == NULL) {
            if (c->error) {
                return floor_end(c);
            }
            break;
        }
        if (g_str_equal(f->type, "hello") && isnan(c->hello_ms)) {
            c->hello_ms = now_ms();
            JsonObject *h = sbx_frame_header_new("exec", 1);
            json_object_set_string_member(h, "language", "python");
            json_object_set_int_member(h, "timeout_s", 30);
            gboolean ok = send_frame(c->fd, h, "print(1)", &c->error);
            json_object_unref(h);
            if (!ok) {
                return floor_end(c);
            }
        } else if (f->id == 1 && g_str_equal(f->type, "stdout")) {
            c->first_ms = now_ms();
            return floor_end(c);
        } else if (f->id == 1) {
            g_set_error(&c->error, G_IO_ERROR, G_IO_ERROR_FAILED, "agent answered %s", f->type);
            return floor_end(c);
        }
    }
    return G_SOURCE_CONTINUE;
}

static gboolean
floor_timeout(gpointer data)
{
    FloorConn *c = data;
    g_set_error(&c->error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT, "no hello/output in 120 s");
    c->done = TRUE;
    c->timeout = 0;
    return G_SOURCE_REMOVE;
}

typedef struct {
    const SbxConfig *cfg;
    const char *accel;
    char *kernel, *initrd, *rootfs, *seed, *cmdline;
    guint tsc_khz;
    guint serial;
    char *cgroup; /* cpu cgroup of the floor's QEMU, NULL: none */
} Floor;

/* The scheduler runs each VM in its own cpu cgroup under <root>/schedulerd;
 * on a busy host a process in a group competes as a group, not as one task.
 * The floor's QEMU gets a sibling group there (default weight, no quota), so
 * it competes for CPU with everything else on the host exactly like the
 * scheduler's VMs do and the comparison is of the launch path, not of CPU
 * shares. Without the scheduler's group: a top-level group. */
static char *
floor_cgroup_create(void)
{
    static const char *const roots[] = {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup"};
    for (guint i = 0; i < G_N_ELEMENTS(roots); i++) {
        g_autofree char *probe = g_build_filename(roots[i], "cgroup.procs", NULL);
        g_autofree char *ctl = g_build_filename(roots[i], i == 0 ? "cpu.shares" : "cgroup.controllers",
                                                NULL);
        if (!g_file_test(probe, G_FILE_TEST_EXISTS) || !g_file_test(ctl, G_FILE_TEST_EXISTS))
            continue;
        g_autofree char *base = g_build_filename(roots[i], "schedulerd", NULL);
        const char *parent = g_file_test(base, G_FILE_TEST_IS_DIR) ? base : roots[i];
        g_autofree char *dir = g_strdup_printf("%s/sbx-bench-floor-%d", parent, (int)getpid());
        if (g_mkdir(dir, 0755) != 0 && errno != EEXIST)
            return NULL;
        return g_steal_pointer(&dir);
    }
    return NULL;
}

static gboolean
floor_init(Floor *fl, const SbxConfig *cfg, const char *accel, GError **error)
{
    fl->cfg = cfg;
    fl->accel = accel;
    fl->kernel = g_build_filename(cfg->guest_dir, "vmlinux", NULL);
    fl->initrd = g_build_filename(cfg->guest_dir, "initramfs.cpio", NULL);
    fl->rootfs = g_build_filename(cfg->guest_dir, "rootfs.erofs", NULL);
    fl->seed = g_build_filename(cfg->guest_dir, "work-seed.ext4", NULL);
    g_autofree char *cl = g_build_filename(cfg->guest_dir, "cmdline", NULL);
    if (!g_file_get_contents(cl, &fl->cmdline, NULL, error))
        return FALSE;
    g_strstrip(fl->cmdline);
    fl->tsc_khz = sbx_qemu_read_tsc_khz("/proc/cpuinfo");
    fl->cgroup = floor_cgroup_create();
    return TRUE;
}

static void
floor_clear(Floor *fl)
{
    g_free(fl->kernel);
    g_free(fl->initrd);
    g_free(fl->rootfs);
    g_free(fl->seed);
    g_free(fl->cmdline);
    if (fl->cgroup)
        (void)rmdir(fl->cgroup);
    g_free(fl->cgroup);
}

/* One floor boot: a qcow2 work disk over the seed (made before the clock
 * starts, like the scheduler's pre-created overlay pool), QEMU with the
 * scheduler's argv, host hello, time to the agent's hello and to the first
 * stdout frame of print(1); then SIGKILL. */
static gboolean
floor_once(Bench *b, Floor *fl, double *out_hello, double *out_first, GError **error)
{
    const SbxConfig *cfg = fl->cfg;
    gboolean kvm = g_str_equal(fl->accel, "kvm");
    g_autofree char *disk = g_strdup_printf("%s/floor-%u.qcow2", b->rt, ++fl->serial);
    const char *img[] = {cfg->qemu_img, "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                         fl->seed, disk, NULL};
    if (!spawn_wait(img, NULL, error))
        return FALSE;

    SbxQemuConfig qc = {
        .vm_id = NULL,
        .accel = kvm ? SBX_ACCEL_KVM : SBX_ACCEL_TCG,
        .memory_mb = cfg->default_memory_mb,
        .vcpus = cfg->vcpus,
        .tb_size_mb = kvm ? 0 : cfg->tb_size_mb,
        .kernel = fl->kernel,
        .initrd = fl->initrd,
        .cmdline = fl->cmdline,
        .tsc_khz = kvm ? 0 : fl->tsc_khz,
        .rootfs = fl->rootfs,
        .work_disk = disk,
        .work_format = "qcow2",
        .sandbox = FALSE,
        .mem_merge = cfg->ksm,
        /* like the scheduler's cold boots (sbx_pool_fill_vm_params) */
        .balloon = g_strcmp0(g_getenv("SCHEDULERD_BALLOON"), "0") != 0,
    };
    g_auto(GStrv) argv = sbx_qemu_build_argv(cfg->qemu, &qc);
    int qmp[2], agent[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, qmp) != 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "socketpair: %s",
                    g_strerror(errno));
        (void)unlink(disk);
        return FALSE;
    }
    g_auto(SbxFd) qmp_host = qmp[0];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, agent) != 0) {
        close(qmp[1]);
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "socketpair: %s",
                    g_strerror(errno));
        (void)unlink(disk);
        return FALSE;
    }
    g_auto(SbxFd) agent_host = agent[0];
    g_autoptr(SbxSpawnSpec) spec = sbx_spawn_spec_new();
    for (guint i = 0; argv[i]; i++)
        sbx_spawn_spec_add_arg(spec, argv[i]);
    /* a name our RSS sampler and orphan hunters can recognise */
    sbx_spawn_spec_add_args(spec, "-name", "bench-floor", NULL);
    sbx_spawn_spec_take_fd(spec, qmp[1], SBX_QEMU_FD_QMP);
    sbx_spawn_spec_take_fd(spec, agent[1], SBX_QEMU_FD_AGENT);
    if (fl->cgroup) {
        g_autofree char *procs = g_build_filename(fl->cgroup, "cgroup.procs", NULL);
        sbx_spawn_spec_add_cgroup(spec, procs);
    }

    double t0 = now_ms();
    g_autoptr(SbxChild) child = sbx_child_spawn(spec, error);
    if (child == NULL) {
        (void)unlink(disk);
        return FALSE;
    }
    g_unix_set_fd_nonblocking(agent_host, TRUE, NULL);
    g_autoptr(SbxFrameDecoder) dec = sbx_frame_decoder_new();
    FloorConn c = {.dec = dec, .fd = agent_host, .hello_ms = NAN, .first_ms = NAN};
    JsonObject *hello = sbx_frame_header_new("hello", 0);
    gboolean sent = send_frame(agent_host, hello, NULL, &c.error);
    json_object_unref(hello);
    if (sent) {
        c.watch = g_unix_fd_add(agent_host, G_IO_IN | G_IO_HUP | G_IO_ERR, floor_readable, &c);
        c.timeout = g_timeout_add_seconds(120, floor_timeout, &c);
        while (!c.done)
            g_main_context_iteration(NULL, TRUE);
        if (c.watch)
            g_source_remove(c.watch);
        if (c.timeout)
            g_source_remove(c.timeout);
    }
    sbx_child_kill(child, SIGKILL);
    g_autoptr(GAsyncResult) res = NULL;
    sbx_child_wait_async(child, NULL, sbx_test_store_result, &res);
    (void)sbx_child_wait_finish(child, sbx_test_wait_result(&res), NULL);
    (void)unlink(disk);
    if (c.error) {
        g_autofree char *tail = sbx_child_dup_console_tail(child, 3);
        g_propagate_prefixed_error(error, c.error, "floor (console: %s): ", tail);
        return FALSE;
    }
    *out_hello = c.hello_ms - t0;
    *out_first = c.first_ms - t0;
    return TRUE;
}

/* ---- markdown / json / dat output ----------------------------------------------------- */

static void
print_md_header(const char *title)
{
    printf("\n### %s\n\n", title);
}

static void
dat_row(GString *dat, const char *label, GArray *a)
{
    Stats s = stats_of(a);
    if (s.n == 0)
        return;
    g_string_append_printf(dat, "\"%s\" %.2f %.2f %.2f %.2f\n", label, s.min, s.p50, s.p95,
                           s.max);
}

static gboolean
write_json(Bench *b, JsonBuilder *jb)
{
    if (b->json_path == NULL)
        return TRUE;
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autoptr(JsonNode) root = json_builder_get_root(jb);
    json_generator_set_root(gen, root);
    json_generator_set_pretty(gen, TRUE);
    g_autoptr(GError) error = NULL;
    if (!json_generator_to_file(gen, b->json_path, &error)) {
        g_printerr("sbx-bench: %s\n", error->message);
        return FALSE;
    }
    return TRUE;
}

static gboolean
write_dat(Bench *b, GString *dat)
{
    if (b->dat_path == NULL)
        return TRUE;
    g_autoptr(GError) error = NULL;
    if (!g_file_set_contents(b->dat_path, dat->str, (gssize)dat->len, &error)) {
        g_printerr("sbx-bench: %s\n", error->message);
        return FALSE;
    }
    return TRUE;
}

static void
json_machine(Bench *b, JsonBuilder *jb)
{
    g_autofree char *model = host_cpu_model();
    json_builder_set_member_name(jb, "machine");
    json_builder_begin_object(jb);
    json_builder_set_member_name(jb, "cpus");
    json_builder_add_int_value(jb, g_get_num_processors());
    json_builder_set_member_name(jb, "cpu_model");
    json_builder_add_string_value(jb, model);
    json_builder_set_member_name(jb, "mem_mib");
    json_builder_add_int_value(jb, (gint64)(host_mem_kb() / 1024));
    json_builder_set_member_name(jb, "accel");
    json_builder_add_string_value(jb, b->accel ? b->accel : "?");
    json_builder_end_object(jb);
    g_autoptr(GDateTime) dt = g_date_time_new_now_utc();
    g_autofree char *iso = g_date_time_format_iso8601(dt);
    json_builder_set_member_name(jb, "date");
    json_builder_add_string_value(jb, iso);
}

/* ---- create ------------------------------------------------------------------------------ */

static gboolean
want_path(Bench *b, const char *key)
{
    if (b->paths == NULL || *b->paths == '\0')
        return TRUE;
    g_auto(GStrv) v = g_strsplit(b->paths, ",", -1);
    return g_strv_contains((const char *const *)v, key);
}

static void
series_sched(Bench *b, SbxManager *mgr, Path *p, void (*before)(SbxManager *))
{
    g_printerr("sbx-bench: %s: %u runs\n", p->key, b->runs);
    for (guint i = 0; i < b->runs; i++) {
        if (before)
            before(mgr);
        RunRec r = {0};
        run_one(mgr, "print(1)", &r);
        path_add_run(p, &r);
        run_rec_clear(&r);
    }
}

static void
before_prestarted(SbxManager *mgr)
{
    (void)sbx_test_wait_status(mgr, "l1_prestarted", 1, 120);
    sbx_test_spin_ms(300);
}

static void
before_warm(SbxManager *mgr)
{
    (void)sbx_test_wait_status(mgr, "warm_pool_python", 1, 300);
    sbx_test_spin_ms(300);
}

static int
cmd_create(Bench *b)
{
    g_autoptr(GError) error = NULL;
    /* Every pool path off until its series: a run takes exactly the path measured. */
    g_setenv("SCHEDULERD_WARM_POOL", "0", TRUE);
    g_setenv("SCHEDULERD_L1_PRESTART", "0", TRUE);
    g_setenv("SCHEDULERD_L1", "0", TRUE);
    g_autoptr(SbxManager) mgr = manager_start(b, bench_config(b, 0, 0), &error);
    if (mgr == NULL) {
        g_printerr("sbx-bench: scheduler start failed: %s\n", error->message);
        return 1;
    }
    const SbxConfig *cfg = sbx_manager_get_config(mgr);

    Path *host = path_new("host", "host `python3 -c 'print(1)'`", FALSE);
    Path *bwrap = path_new("bwrap", "bwrap `python3 -c 'print(1)'`", FALSE);
    Path *flr = path_new("floor", "raw QEMU floor (no scheduler)", FALSE);
    Path *cold = path_new("cold", "cold boot (scheduler)", TRUE);
    Path *l1 = path_new("l1", "L1 restore, fresh QEMU", TRUE);
    Path *l1p = path_new("l1_prestarted", "L1 restore, pre-started QEMU", TRUE);
    Path *warm = path_new("warm", "warm-pool hit", TRUE);
    Path *all[] = {host, bwrap, flr, cold, l1, l1p, warm};

    g_autofree char *py = g_find_program_in_path("python3");
    g_autofree char *bw = g_find_program_in_path("bwrap");
    if (want_path(b, "host")) {
        if (py == NULL) {
            host->na = g_strdup("python3 not installed");
        } else {
            const char *argv[] = {py, "-c", "print(1)", NULL};
            anchor_series(host, argv, b->runs);
        }
    }
    if (want_path(b, "bwrap")) {
        if (bw == NULL || py == NULL) {
            bwrap->na = g_strdup("bwrap (bubblewrap) not installed");
        } else {
            const char *argv[] = {bw, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                                  "--tmpfs", "/tmp", "--unshare-all", "--die-with-parent",
                                  "--new-session", py, "-c", "print(1)", NULL};
            anchor_series(bwrap, argv, b->runs);
        }
    }

    /* floor and cold boot interleaved, so drift on a shared host hits both alike */
    Floor fl = {0};
    gboolean floor_ok = want_path(b, "floor") && floor_init(&fl, cfg, b->accel, &error);
    if (want_path(b, "floor") && !floor_ok) {
        flr->na = g_strdup_printf("failed: %s", error->message);
        g_clear_error(&error);
    }
    g_printerr("sbx-bench: floor + cold, alternating: %u runs each\n", b->runs);
    for (guint i = 0; i < b->runs; i++) {
        if (floor_ok) {
            double h = 0, f = 0;
            if (floor_once(b, &fl, &h, &f, &error)) {
                series_add(flr->hello, h);
                series_add(flr->first, f);
                series_add(flr->total, f);
            } else {
                path_fail(flr, error->message);
                g_clear_error(&error);
            }
        }
        if (want_path(b, "cold")) {
            RunRec r = {0};
            run_one(mgr, "print(1)", &r);
            path_add_run(cold, &r);
            if (r.result && r.result->l1_hit)
                path_fail(cold, "took the L1 path with SCHEDULERD_L1=0");
            run_rec_clear(&r);
        }
    }
    floor_clear(&fl);

    gboolean want_l1 = want_path(b, "l1") || want_path(b, "l1_prestarted");
    gboolean have_tpl = FALSE;
    if (want_l1) {
        g_printerr("sbx-bench: L1 template (built in the background when absent)\n");
        g_unsetenv("SCHEDULERD_L1");
        RunRec r = {0};
        run_one(mgr, "print(1)", &r); /* schedules the template build */
        have_tpl = r.result && r.result->l1_hit;
        run_rec_clear(&r);
        if (!have_tpl) {
            have_tpl = sbx_test_wait_status(mgr, "l1_builds", 1, 600);
            if (!have_tpl) {
                l1->na = g_strdup("no L1 template was built within 600 s");
                l1p->na = g_strdup(l1->na);
            }
        }
    }
    if (have_tpl && want_path(b, "l1")) {
        series_sched(b, mgr, l1, NULL);
        if (l1->l1_hits == 0 && l1->na == NULL)
            l1->na = g_strdup("no run was served by an L1 restore");
    }
    if (have_tpl && want_path(b, "l1_prestarted")) {
        g_setenv("SCHEDULERD_L1_PRESTART", "1", TRUE);
        RunRec r = {0};
        run_one(mgr, "print(1)", &r); /* learns which template to pre-start */
        run_rec_clear(&r);
        series_sched(b, mgr, l1p, before_prestarted);
        g_setenv("SCHEDULERD_L1_PRESTART", "0", TRUE);
        if (l1p->l1_hits == 0 && l1p->na == NULL)
            l1p->na = g_strdup("no run was served by an L1 restore");
    }
    if (want_path(b, "warm")) {
        g_setenv("SCHEDULERD_WARM_POOL", "1", TRUE);
        RunRec r = {0};
        run_one(mgr, "print(1)", &r); /* marks python as used */
        run_rec_clear(&r);
        series_sched(b, mgr, warm, before_warm);
        g_setenv("SCHEDULERD_WARM_POOL", "0", TRUE);
        if (warm->warm_hits == 0 && warm->na == NULL)
            warm->na = g_strdup("no run was served by the warm pool");
    }
    manager_stop(mgr);

    /* ---- report ---- */
    Stats sf = stats_of(flr->first);
    Stats sfh = stats_of(flr->hello);
    printf("\n## bench-create: `print(1)` latency per path (ms; %u runs each; accel %s)\n",
           b->runs, b->accel);
    print_md_header("End to end");
    printf("| path | n | min | p50 | p95 | max | first output p50 | ratio to floor (p50 first "
           "output) | fails |\n|---|---|---|---|---|---|---|---|---|\n");
    GString *dat = g_string_new("# label min p50 p95 max (ms, end to end)\n");
    for (guint i = 0; i < G_N_ELEMENTS(all); i++) {
        Path *p = all[i];
        if (!want_path(b, p->key))
            continue;
        Stats s = stats_of(p->total);
        Stats f = stats_of(p->first);
        if (p->na || s.n == 0) {
            printf("| %s | 0 | n/a | n/a | n/a | n/a | n/a | n/a | %u |\n", p->label, p->failures);
            continue;
        }
        double ratio = p == flr ? 1.0 : f.p50 / sf.p50;
        printf("| %s | %u | %s | %s | %s | %s | %s | %s | %u |\n", p->label, s.n, fmt_ms(s.min),
               fmt_ms(s.p50), fmt_ms(s.p95), fmt_ms(s.max), fmt_ms(f.p50),
               fmt_num(ratio, 2, "x"), p->failures);
        dat_row(dat, p->key, p->total);
    }
    for (guint i = 0; i < G_N_ELEMENTS(all); i++)
        if (want_path(b, all[i]->key) && all[i]->na)
            printf("\n- %s: n/a (%s)", all[i]->label, all[i]->na);
    if (sfh.n > 0)
        printf("\n- raw QEMU floor to the agent's hello: min %s p50 %s p95 %s max %s ms",
               fmt_ms(sfh.min), fmt_ms(sfh.p50), fmt_ms(sfh.p95), fmt_ms(sfh.max));
    printf("\n");

    print_md_header("Stage breakdown through the scheduler (p50 / p95, ms)");
    printf("| path | admission | setup | boot or restore | exec | teardown | guest exec | "
           "end to end - guest exec | guest accept | end to end - guest accept - guest exec |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n");
    for (guint i = 0; i < G_N_ELEMENTS(all); i++) {
        Path *p = all[i];
        if (!p->scheduler || !want_path(b, p->key) || p->total->len == 0 || p->na)
            continue;
        printf("| %s |", p->label);
        for (guint s = 0; s < ST_N; s++) {
            Stats st = stats_of(p->stage[s]);
            printf(" %s / %s |", fmt_ms(st.p50), fmt_ms(st.p95));
        }
        Stats g = stats_of(p->guest_exec), o = stats_of(p->overhead);
        Stats a = stats_of(p->accept), x = stats_of(p->outside);
        printf(" %s / %s | %s / %s | %s / %s | %s / %s |\n", fmt_ms(g.p50), fmt_ms(g.p95),
               fmt_ms(o.p50), fmt_ms(o.p95), fmt_ms(a.p50), fmt_ms(a.p95), fmt_ms(x.p50),
               fmt_ms(x.p95));
    }

    /* ---- json ---- */
    g_autoptr(JsonBuilder) jb = json_builder_new();
    json_builder_begin_object(jb);
    json_builder_set_member_name(jb, "benchmark");
    json_builder_add_string_value(jb, "create");
    json_machine(b, jb);
    json_builder_set_member_name(jb, "runs");
    json_builder_add_int_value(jb, b->runs);
    json_builder_set_member_name(jb, "paths");
    json_builder_begin_object(jb);
    for (guint i = 0; i < G_N_ELEMENTS(all); i++) {
        Path *p = all[i];
        if (!want_path(b, p->key))
            continue;
        json_builder_set_member_name(jb, p->key);
        json_builder_begin_object(jb);
        json_builder_set_member_name(jb, "label");
        json_builder_add_string_value(jb, p->label);
        if (p->na) {
            json_builder_set_member_name(jb, "not_available");
            json_builder_add_string_value(jb, p->na);
        }
        json_builder_set_member_name(jb, "failures");
        json_builder_add_int_value(jb, p->failures);
        if (p->last_error) {
            json_builder_set_member_name(jb, "last_error");
            json_builder_add_string_value(jb, p->last_error);
        }
        json_add_stats(jb, "end_to_end_ms", p->total);
        json_add_stats(jb, "first_output_ms", p->first);
        if (p == flr)
            json_add_stats(jb, "hello_ms", p->hello);
        if (p->scheduler) {
            for (guint s = 0; s < ST_N; s++) {
                g_autofree char *k = g_strdup_printf("%s_ms", stage_names[s]);
                json_add_stats(jb, k, p->stage[s]);
            }
            json_add_stats(jb, "guest_exec_ms", p->guest_exec);
            json_add_stats(jb, "overhead_ms", p->overhead);
            json_add_stats(jb, "guest_accept_ms", p->accept);
            json_add_stats(jb, "outside_guest_ms", p->outside);
            json_builder_set_member_name(jb, "l1_hits");
            json_builder_add_int_value(jb, p->l1_hits);
            json_builder_set_member_name(jb, "warm_hits");
            json_builder_add_int_value(jb, p->warm_hits);
        }
        json_builder_end_object(jb);
    }
    json_builder_end_object(jb);

    /* ---- summary ---- */
    Stats sc = stats_of(cold->first), sct = stats_of(cold->total);
    Stats sl = stats_of(l1->na ? NULL : l1->first);
    Stats slp = stats_of(l1p->na ? NULL : l1p->first);
    Stats sw = stats_of(warm->na ? NULL : warm->total);
    Stats swo = stats_of(warm->na ? NULL : warm->overhead);
    Stats swx = stats_of(warm->na ? NULL : warm->outside);
    double cold_ratio = sc.p50 / sf.p50;
    double l1_speedup = sc.p50 / sl.p50;
    json_add_num(jb, "floor_hello_ms", sfh.p50);
    json_add_num(jb, "floor_ms", sf.p50);
    json_add_num(jb, "cold_ms", sc.p50);
    json_add_num(jb, "cold_ratio", cold_ratio);
    json_add_num(jb, "l1_ms", sl.p50);
    json_add_num(jb, "l1_speedup", l1_speedup);
    json_add_num(jb, "warm_overhead_ms", swo.p50);
    json_add_num(jb, "warm_outside_guest_ms", swx.p50);
    json_builder_end_object(jb);
    gboolean ok = write_json(b, jb) && write_dat(b, dat);
    g_string_free(dat, TRUE);

    printf("\nTargets: cold boot <= 1.15x floor: %s; warm-pool overhead beyond guest exec < 2 ms: "
           "%s\n",
           isnan(cold_ratio) ? "n/a" : cold_ratio <= 1.15 ? "met" : "NOT met",
           isnan(swo.p50) ? "n/a" : swo.p50 < 2.0 ? "met" : "NOT met");
    printf("bench-create: accel=%s n=%u floor_hello_ms=%s floor_ms=%s cold_ms=%s "
           "cold_total_ms=%s cold_ratio=%s l1_ms=%s l1_speedup=%s l1_prestarted_ms=%s "
           "warm_ms=%s warm_overhead_ms=%s warm_outside_guest_ms=%s\n",
           b->accel, b->runs, fmt_ms(sfh.p50), fmt_ms(sf.p50), fmt_ms(sc.p50), fmt_ms(sct.p50),
           fmt_num(cold_ratio, 2, ""), fmt_ms(sl.p50),
           fmt_num(l1_speedup, 2, ""), fmt_ms(slp.p50),
           fmt_ms(sw.p50), fmt_ms(swo.p50), fmt_ms(swx.p50));
    for (guint i = 0; i < G_N_ELEMENTS(all); i++)
        path_free(all[i]);
    return ok ? 0 : 1;
}

/* ---- burst ----------------------------------------------------------------------------- */

static const struct {
    SbxLanguage lang;
    const char *code;
} workload[] = {
    {SBX_LANGUAGE_PYTHON, "import math\nprint(sum(math.isqrt(i) for i in range(20000)))"},
    {SBX_LANGUAGE_JAVASCRIPT, "let s = 0; for (let i = 0; i < 20000; i++) s += i % 7; "
                              "console.log(s)"},
    {SBX_LANGUAGE_RAW, "echo hello; seq 1 2000 | sort -n | tail -n 1"},
};

typedef struct {
    double cpu_ratio, mem_ratio;
    guint n, ok, failed, resource_failures, l1_hits, warm_hits, cold;
    double wall_s, vms_per_s, peak_rss_mib, peak_rss_pct, efficiency;
    guint peak_vms;
    GArray *admission, *setup, *exec, *total;
    GArray *lang_exec[SBX_N_LANGUAGES]; /* exec_ms per language */
    GHashTable *errors; /* "domain:code" -> count (GUINT_TO_POINTER) */
    char *first_error;
} BurstRes;

static void
burst_res_free(BurstRes *r)
{
    g_array_unref(r->admission);
    g_array_unref(r->setup);
    g_array_unref(r->exec);
    g_array_unref(r->total);
    for (guint l = 0; l < SBX_N_LANGUAGES; l++)
        g_array_unref(r->lang_exec[l]);
    g_hash_table_unref(r->errors);
    g_free(r->first_error);
    g_free(r);
}

typedef struct {
    const char *needle;
    guint64 peak_kb;
    guint peak_n;
} Sampler;

static gboolean
sample_cb(gpointer data)
{
    Sampler *s = data;
    guint n = 0;
    guint64 kb = qemu_rss_kb(s->needle, &n);
    s->peak_kb = MAX(s->peak_kb, kb);
    s->peak_n = MAX(s->peak_n, n);
    return G_SOURCE_CONTINUE;
}

/* Resource exhaustion on the host side (fds, threads, pids, memory maps): the
 * failures the burst target says must not happen. */
static gboolean
is_resource_failure(const GError *e)
{
    if (e == NULL)
        return FALSE;
    if (g_error_matches(e, G_IO_ERROR, G_IO_ERROR_TOO_MANY_OPEN_FILES))
        return TRUE;
    static const char *const needles[] = {"Too many open files", "Resource temporarily unavailable",
                                          "Cannot allocate memory", "fork", "pthread_create"};
    for (guint i = 0; i < G_N_ELEMENTS(needles); i++)
        if (strstr(e->message, needles[i]))
            return TRUE;
    return FALSE;
}

/* Build the L1 templates (one per language) before the clock starts, so every
 * grid point sees the same cache; bounded. */
static void
burst_warmup(SbxManager *mgr)
{
    double t0 = now_ms();
    guint round = 0;
    gboolean all = FALSE;
    for (; round < 20; round++) {
        all = TRUE;
        for (guint i = 0; i < G_N_ELEMENTS(workload); i++) {
            RunRec r = {0};
            guint pending = 0;
            r.pending = &pending;
            run_submit(mgr, workload[i].lang, workload[i].code, &r);
            while (pending > 0)
                g_main_context_iteration(NULL, TRUE);
            all = all && r.result && (r.result->l1_hit || r.result->warm_pool_hit);
            run_rec_clear(&r);
        }
        if (all || g_strcmp0(g_getenv("SCHEDULERD_L1"), "0") == 0)
            break;
        sbx_test_spin_ms(5000);
    }
    sbx_test_spin_ms(2000); /* let the warm pool refill */
    g_printerr("sbx-bench: warm-up (one run per language until none is a cold boot): "
               "%u round(s), %.0f s%s\n",
               MIN(round + 1, 20), (now_ms() - t0) / 1000.0,
               all ? "" : "; some language still cold-boots (no L1 template)");
}

static BurstRes *
burst_once(Bench *b, double cpu_ratio, double mem_ratio, guint n, GError **error)
{
    SbxConfig *cfg = bench_config(b, cpu_ratio, mem_ratio);
    g_autoptr(SbxManager) mgr = manager_start(b, cfg, error);
    if (mgr == NULL)
        return NULL;
    const SbxConfig *c = sbx_manager_get_config(mgr);
    burst_warmup(mgr);

    BurstRes *br = g_new0(BurstRes, 1);
    br->cpu_ratio = c->cpu_overcommit_ratio;
    br->mem_ratio = c->memory_overcommit_ratio;
    br->n = n;
    br->admission = series_new();
    br->setup = series_new();
    br->exec = series_new();
    br->total = series_new();
    for (guint l = 0; l < SBX_N_LANGUAGES; l++)
        br->lang_exec[l] = series_new();
    br->errors = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);

    g_autofree char *needle = g_build_filename(b->rt, "vms", NULL);
    Sampler smp = {.needle = needle};
    sample_cb(&smp);
    guint sampler = g_timeout_add(100, sample_cb, &smp);

    RunRec *recs = g_new0(RunRec, n);
    guint pending = 0;
    double t0 = now_ms();
    for (guint i = 0; i < n; i++) {
        recs[i].pending = &pending;
        run_submit(mgr, workload[i % G_N_ELEMENTS(workload)].lang,
                   workload[i % G_N_ELEMENTS(workload)].code, &recs[i]);
    }
    while (pending > 0)
        g_main_context_iteration(NULL, TRUE);
    double t1 = t0;
    for (guint i = 0; i < n; i++)
        t1 = MAX(t1, recs[i].done_ms);
    g_source_remove(sampler);
    manager_stop(mgr);

    for (guint i = 0; i < n; i++) {
        RunRec *r = &recs[i];
        if (run_ok(r)) {
            br->ok++;
            const SbxTimings *t = &r->result->timing;
            series_add(br->admission, (double)t->admission_ms);
            series_add(br->setup, (double)t->setup_ms);
            series_add(br->exec, (double)t->exec_ms);
            series_add(br->lang_exec[workload[i % G_N_ELEMENTS(workload)].lang],
                       (double)t->exec_ms);
            series_add(br->total, r->done_ms - r->submit_ms);
            br->l1_hits += r->result->l1_hit;
            br->warm_hits += r->result->warm_pool_hit;
            br->cold += !r->result->l1_hit && !r->result->warm_pool_hit;
        } else {
            br->failed++;
            g_autofree char *k =
                r->error ? g_strdup_printf("%s:%d", g_quark_to_string(r->error->domain),
                                           r->error->code)
                         : g_strdup_printf("exit_code=%d", r->result ? r->result->exit_code : -1);
            guint cnt = GPOINTER_TO_UINT(g_hash_table_lookup(br->errors, k));
            g_hash_table_insert(br->errors, g_steal_pointer(&k), GUINT_TO_POINTER(cnt + 1));
            br->resource_failures += is_resource_failure(r->error);
            if (br->first_error == NULL)
                br->first_error = g_strdup(r->error ? r->error->message : "bad exit/no output");
        }
        run_rec_clear(r);
    }
    g_free(recs);
    guint64 mem_kb = host_mem_kb();
    br->wall_s = (t1 - t0) / 1000.0;
    br->vms_per_s = br->wall_s > 0 ? br->ok / br->wall_s : 0;
    br->peak_rss_mib = (double)smp.peak_kb / 1024.0;
    br->peak_rss_pct = mem_kb ? 100.0 * (double)smp.peak_kb / (double)mem_kb : NAN;
    br->peak_vms = smp.peak_n;
    double cpus = g_get_num_processors();
    /* VMs completed per core-second, discounted by the failure rate and by the
     * share of host memory the QEMU processes held at peak (docs/benchmarks.md). */
    br->efficiency = br->vms_per_s / cpus * ((double)br->ok / n) *
                     (1.0 - (isnan(br->peak_rss_pct) ? 0 : br->peak_rss_pct / 100.0));
    return br;
}

static void
burst_row(const BurstRes *r)
{
    Stats a = stats_of(r->admission), s = stats_of(r->setup), e = stats_of(r->exec),
          t = stats_of(r->total);
    printf("| %.1f | %.1f | %u/%u | %.2f | %s / %s | %s / %s | %s / %s | %s / %s | %.0f (%.1f%%) "
           "| %u | %u/%u/%u | %.3f |\n",
           r->cpu_ratio, r->mem_ratio, r->ok, r->n, r->vms_per_s, fmt_ms(a.p50), fmt_ms(a.p95),
           fmt_ms(s.p50), fmt_ms(s.p95), fmt_ms(e.p50), fmt_ms(e.p95), fmt_ms(t.p50),
           fmt_ms(t.p95), r->peak_rss_mib, r->peak_rss_pct, r->peak_vms, r->cold, r->l1_hits,
           r->warm_hits, r->efficiency);
}

static void
burst_table_header(void)
{
    printf("| cpu ratio | mem ratio | ok | VMs/s | admission p50/p95 | setup p50/p95 | exec "
           "p50/p95 | total p50/p95 | peak QEMU RSS MiB (%% host) | peak VMs | cold/L1/warm | "
           "efficiency |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
}

static void
burst_json(JsonBuilder *jb, const BurstRes *r)
{
    json_builder_begin_object(jb);
    json_add_num(jb, "cpu_ratio", r->cpu_ratio);
    json_add_num(jb, "mem_ratio", r->mem_ratio);
    json_builder_set_member_name(jb, "n");
    json_builder_add_int_value(jb, r->n);
    json_builder_set_member_name(jb, "ok");
    json_builder_add_int_value(jb, r->ok);
    json_builder_set_member_name(jb, "resource_failures");
    json_builder_add_int_value(jb, r->resource_failures);
    json_add_num(jb, "wall_s", r->wall_s);
    json_add_num(jb, "vms_per_s", r->vms_per_s);
    json_add_stats(jb, "admission_ms", r->admission);
    json_add_stats(jb, "setup_ms", r->setup);
    json_add_stats(jb, "exec_ms", r->exec);
    json_add_stats(jb, "total_ms", r->total);
    json_builder_set_member_name(jb, "exec_ms_by_language");
    json_builder_begin_object(jb);
    for (guint l = 0; l < SBX_N_LANGUAGES; l++)
        json_add_stats(jb, sbx_language_to_string(l), r->lang_exec[l]);
    json_builder_end_object(jb);
    json_add_num(jb, "peak_rss_mib", r->peak_rss_mib);
    json_add_num(jb, "peak_rss_pct", r->peak_rss_pct);
    json_builder_set_member_name(jb, "peak_vms");
    json_builder_add_int_value(jb, r->peak_vms);
    json_builder_set_member_name(jb, "paths");
    json_builder_begin_object(jb);
    json_builder_set_member_name(jb, "cold");
    json_builder_add_int_value(jb, r->cold);
    json_builder_set_member_name(jb, "l1");
    json_builder_add_int_value(jb, r->l1_hits);
    json_builder_set_member_name(jb, "warm");
    json_builder_add_int_value(jb, r->warm_hits);
    json_builder_end_object(jb);
    json_add_num(jb, "efficiency", r->efficiency);
    json_builder_set_member_name(jb, "errors");
    json_builder_begin_object(jb);
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, r->errors);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        json_builder_set_member_name(jb, k);
        json_builder_add_int_value(jb, GPOINTER_TO_UINT(v));
    }
    json_builder_end_object(jb);
    if (r->first_error) {
        json_builder_set_member_name(jb, "first_error");
        json_builder_add_string_value(jb, r->first_error);
    }
    json_builder_end_object(jb);
}

static void
burst_lang_line(const BurstRes *r)
{
    printf("- cpu %.1f mem %.1f: exec p50 / p95 by language (ms):", r->cpu_ratio, r->mem_ratio);
    for (guint l = 0; l < SBX_N_LANGUAGES; l++) {
        Stats st = stats_of(r->lang_exec[l]);
        printf(" %s %s / %s%s", l == SBX_LANGUAGE_RAW ? "shell" : sbx_language_to_string(l),
               fmt_ms(st.p50), fmt_ms(st.p95), l + 1 < SBX_N_LANGUAGES ? "," : "\n");
    }
}

static void
burst_errors(const BurstRes *r)
{
    if (r->failed == 0)
        return;
    printf("\n- cpu %.1f mem %.1f: %u failed (", r->cpu_ratio, r->mem_ratio, r->failed);
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, r->errors);
    while (g_hash_table_iter_next(&it, &k, &v))
        printf("%s x%u ", (const char *)k, GPOINTER_TO_UINT(v));
    printf("); first: %s; resource exhaustion: %u\n", r->first_error, r->resource_failures);
}

static void
burst_summary(Bench *b, const BurstRes *r)
{
    Stats t = stats_of(r->total);
    printf("bench-burst: accel=%s n=%u ok=%u cpu_ratio=%.1f mem_ratio=%.1f vms_per_s=%.2f "
           "total_p50_ms=%s total_p95_ms=%s peak_rss_mib=%.0f peak_rss_pct=%.1f "
           "resource_failures=%u efficiency=%.3f\n",
           b->accel, r->n, r->ok, r->cpu_ratio, r->mem_ratio, r->vms_per_s, fmt_ms(t.p50),
           fmt_ms(t.p95), r->peak_rss_mib, r->peak_rss_pct, r->resource_failures, r->efficiency);
}

static int
cmd_burst(Bench *b)
{
    g_autoptr(GError) error = NULL;
    BurstRes *r = burst_once(b, b->cpu_ratio, b->mem_ratio, b->runs, &error);
    if (r == NULL) {
        g_printerr("sbx-bench: scheduler start failed: %s\n", error->message);
        return 1;
    }
    printf("\n## bench-burst: %u runs submitted at once (python / javascript / shell; accel %s; "
           "%d host CPUs)\n\n",
           b->runs, b->accel, g_get_num_processors());
    burst_table_header();
    burst_row(r);
    printf("\n");
    burst_lang_line(r);
    burst_errors(r);
    printf("\nTarget: 100%% success, no failure for lack of fds/threads/pids: %s\n",
           r->ok == r->n && r->resource_failures == 0 ? "met" : "NOT met");

    g_autoptr(JsonBuilder) jb = json_builder_new();
    json_builder_begin_object(jb);
    json_builder_set_member_name(jb, "benchmark");
    json_builder_add_string_value(jb, "burst");
    json_machine(b, jb);
    json_builder_set_member_name(jb, "result");
    burst_json(jb, r);
    json_builder_end_object(jb);
    GString *dat = g_string_new("# label min p50 p95 max (ms, submit to result)\n");
    g_autofree char *label = g_strdup_printf("cpu %.1f mem %.1f", r->cpu_ratio, r->mem_ratio);
    dat_row(dat, label, r->total);
    gboolean ok = write_json(b, jb) && write_dat(b, dat);
    g_string_free(dat, TRUE);
    burst_summary(b, r);
    burst_res_free(r);
    return ok ? 0 : 1;
}

static GArray *
parse_grid(const char *text)
{
    GArray *a = g_array_new(FALSE, FALSE, sizeof(double));
    g_auto(GStrv) v = g_strsplit(text, ",", -1);
    for (guint i = 0; v[i]; i++) {
        double d = g_ascii_strtod(v[i], NULL);
        if (d > 0)
            g_array_append_val(a, d);
    }
    return a;
}

static int
cmd_optimizer(Bench *b)
{
    g_autoptr(GArray) cpus = parse_grid(b->cpu_grid);
    g_autoptr(GArray) mems = parse_grid(b->mem_grid);
    g_autoptr(GPtrArray) res = g_ptr_array_new_with_free_func((GDestroyNotify)burst_res_free);
    for (guint i = 0; i < cpus->len; i++) {
        for (guint j = 0; j < mems->len; j++) {
            g_autoptr(GError) error = NULL;
            double c = g_array_index(cpus, double, i), m = g_array_index(mems, double, j);
            g_printerr("sbx-bench: optimizer: cpu %.1f mem %.1f, %u runs\n", c, m, b->runs);
            BurstRes *r = burst_once(b, c, m, b->runs, &error);
            if (r == NULL) {
                g_printerr("sbx-bench: cpu %.1f mem %.1f: %s\n", c, m, error->message);
                continue;
            }
            g_ptr_array_add(res, r);
        }
    }
    if (res->len == 0)
        return 1;
    /* Recommendation (docs/benchmarks.md): among the configs with every run
     * successful and no resource failure, the highest efficiency; within 5% of
     * it, the least overcommit (lowest cpu, then mem ratio). */
    const BurstRes *best = NULL;
    double best_eff = 0;
    for (guint i = 0; i < res->len; i++) {
        const BurstRes *r = g_ptr_array_index(res, i);
        if (r->ok == r->n && r->resource_failures == 0)
            best_eff = MAX(best_eff, r->efficiency);
    }
    for (guint i = 0; i < res->len; i++) {
        const BurstRes *r = g_ptr_array_index(res, i);
        if (r->ok != r->n || r->resource_failures != 0 || r->efficiency < 0.95 * best_eff)
            continue;
        if (best == NULL || r->cpu_ratio < best->cpu_ratio ||
            (r->cpu_ratio == best->cpu_ratio && r->mem_ratio < best->mem_ratio))
            best = r;
    }
    printf("\n## bench-optimizer: burst of %u over CPU x MEM overcommit ratios (accel %s; %d host "
           "CPUs)\n\n",
           b->runs, b->accel, g_get_num_processors());
    burst_table_header();
    GString *dat = g_string_new("# label min p50 p95 max (ms, submit to result)\n");
    for (guint i = 0; i < res->len; i++) {
        const BurstRes *r = g_ptr_array_index(res, i);
        burst_row(r);
        g_autofree char *label = g_strdup_printf("cpu %.1f mem %.1f", r->cpu_ratio, r->mem_ratio);
        dat_row(dat, label, r->total);
    }
    printf("\n");
    for (guint i = 0; i < res->len; i++)
        burst_lang_line(g_ptr_array_index(res, i));
    for (guint i = 0; i < res->len; i++)
        burst_errors(g_ptr_array_index(res, i));
    if (best)
        printf("\nRecommended for this host: cpu_overcommit_ratio = %.1f, "
               "memory_overcommit_ratio = %.1f (efficiency %.3f; highest efficiency with 100%% "
               "success, ties within 5%% go to less overcommit)\n",
               best->cpu_ratio, best->mem_ratio, best->efficiency);
    else
        printf("\nNo config had 100%% success: no recommendation.\n");

    g_autoptr(JsonBuilder) jb = json_builder_new();
    json_builder_begin_object(jb);
    json_builder_set_member_name(jb, "benchmark");
    json_builder_add_string_value(jb, "optimizer");
    json_machine(b, jb);
    json_builder_set_member_name(jb, "results");
    json_builder_begin_array(jb);
    for (guint i = 0; i < res->len; i++)
        burst_json(jb, g_ptr_array_index(res, i));
    json_builder_end_array(jb);
    json_builder_set_member_name(jb, "recommended");
    if (best) {
        json_builder_begin_object(jb);
        json_add_num(jb, "cpu_ratio", best->cpu_ratio);
        json_add_num(jb, "mem_ratio", best->mem_ratio);
        json_builder_end_object(jb);
    } else {
        json_builder_add_null_value(jb);
    }
    json_builder_end_object(jb);
    gboolean ok = write_json(b, jb) && write_dat(b, dat);
    g_string_free(dat, TRUE);
    printf("bench-optimizer: accel=%s n=%u configs=%u best_cpu_ratio=%s best_mem_ratio=%s "
           "best_efficiency=%s\n",
           b->accel, b->runs, res->len,
           fmt_num(best ? best->cpu_ratio : NAN, 1, ""),
           fmt_num(best ? best->mem_ratio : NAN, 1, ""),
           fmt_num(best ? best->efficiency : NAN, 3, ""));
    return ok ? 0 : 1;
}

/* ---- main ------------------------------------------------------------------------------- */

static void
rm_rf(const char *path)
{
    g_autoptr(GFile) f = g_file_new_for_path(path);
    g_autoptr(GFileEnumerator) e =
        g_file_enumerate_children(f, G_FILE_ATTRIBUTE_STANDARD_NAME "," G_FILE_ATTRIBUTE_STANDARD_TYPE,
                                  G_FILE_QUERY_INFO_NOFOLLOW_SYMLINKS, NULL, NULL);
    for (GFileInfo *info; e && (info = g_file_enumerator_next_file(e, NULL, NULL));) {
        g_autoptr(GFileInfo) owned = info;
        g_autofree char *child = g_build_filename(path, g_file_info_get_name(info), NULL);
        if (g_file_info_get_file_type(info) == G_FILE_TYPE_DIRECTORY)
            rm_rf(child);
        else
            (void)unlink(child);
    }
    (void)rmdir(path);
}

int
main(int argc, char **argv)
{
    Bench b = {0};
    gint runs = -1;
    gchar *cpu = NULL, *mem = NULL, *rt = NULL;
    gint adm_to = 0;
    gboolean keep = FALSE;
    GOptionEntry entries[] = {
        {"runs", 'n', 0, G_OPTION_ARG_INT, &runs,
         "create: runs per path (20); burst/optimizer: VMs per burst (100 / 12)", "N"},
        {"json", 0, 0, G_OPTION_ARG_FILENAME, &b.json_path, "write JSON results here", "FILE"},
        {"dat", 0, 0, G_OPTION_ARG_FILENAME, &b.dat_path,
         "write gnuplot data (label min p50 p95 max) here", "FILE"},
        {"paths", 0, 0, G_OPTION_ARG_STRING, &b.paths,
         "create: comma list of host,bwrap,floor,cold,l1,l1_prestarted,warm (all)", "LIST"},
        {"cpu-ratio", 0, 0, G_OPTION_ARG_STRING, &cpu, "burst: cpu_overcommit_ratio (config)", "R"},
        {"mem-ratio", 0, 0, G_OPTION_ARG_STRING, &mem, "burst: memory_overcommit_ratio (config)",
         "R"},
        {"cpu-grid", 0, 0, G_OPTION_ARG_STRING, &b.cpu_grid, "optimizer: cpu ratios (1,2,3)", "LIST"},
        {"mem-grid", 0, 0, G_OPTION_ARG_STRING, &b.mem_grid, "optimizer: mem ratios (1,5)", "LIST"},
        {"admission-timeout", 0, 0, G_OPTION_ARG_INT, &adm_to,
         "queue timeout in s (config default)", "S"},
        {"runtime-dir", 0, 0, G_OPTION_ARG_FILENAME, &rt, "runtime dir (a fresh temp dir)", "DIR"},
        {"keep", 0, 0, G_OPTION_ARG_NONE, &keep, "keep the runtime dir", NULL},
        {NULL, 0, 0, 0, NULL, NULL, NULL},
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("create|burst|optimizer");
    g_option_context_set_summary(ctx, "schedulerd benchmarks (docs/benchmarks.md). Needs "
                                      "SBX_GUEST_DIR (make guest-image).");
    g_option_context_add_main_entries(ctx, entries, NULL);
    g_autoptr(GError) error = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &error) || argc != 2) {
        g_printerr("sbx-bench: %s\n", error ? error->message : "one command: create|burst|optimizer");
        return 2;
    }
    const char *cmd = argv[1];
    b.guest_dir = g_getenv("SBX_GUEST_DIR");
    if (b.guest_dir == NULL || !g_file_test(b.guest_dir, G_FILE_TEST_IS_DIR)) {
        g_printerr("sbx-bench: set SBX_GUEST_DIR to a guest image (make guest-image)\n");
        return 77;
    }
    gboolean is_create = g_str_equal(cmd, "create");
    b.runs = runs > 0 ? (guint)runs : is_create ? 20 : g_str_equal(cmd, "burst") ? 100 : 12;
    b.cpu_ratio = cpu ? g_ascii_strtod(cpu, NULL) : 0;
    b.mem_ratio = mem ? g_ascii_strtod(mem, NULL) : 0;
    if (b.cpu_grid == NULL)
        b.cpu_grid = g_strdup("1,2,3");
    if (b.mem_grid == NULL)
        b.mem_grid = g_strdup("1,5");
    b.admission_timeout_s = adm_to > 0 ? (guint)adm_to : 0;
    b.rt = rt ? g_strdup(rt) : g_dir_make_tmp("sbx-bench-XXXXXX", &error);
    if (b.rt == NULL) {
        g_printerr("sbx-bench: %s\n", error->message);
        return 1;
    }
    int rc;
    if (is_create)
        rc = cmd_create(&b);
    else if (g_str_equal(cmd, "burst"))
        rc = cmd_burst(&b);
    else if (g_str_equal(cmd, "optimizer"))
        rc = cmd_optimizer(&b);
    else {
        g_printerr("sbx-bench: unknown command %s (create|burst|optimizer)\n", cmd);
        rc = 2;
    }
    if (!keep && rt == NULL)
        rm_rf(b.rt);
    g_free(b.rt);
    g_free(b.accel);
    g_free(b.json_path);
    g_free(b.dat_path);
    g_free(b.paths);
    g_free(b.cpu_grid);
    g_free(b.mem_grid);
    g_free(cpu);
    g_free(mem);
    g_free(rt);
    return rc;
}
