/* SPDX-License-Identifier: MIT
 *
 * sbx-manager: the request path of design.md — validate, admit, prepare the
 * work disk and cgroup concurrently, boot, exec with streamed output,
 * tear down — plus start-up (probe, orphan reaping, cgroups, storage daemon,
 * work-disk pool) and a draining shutdown. Talks to sbx-admission, sbx-probe,
 * sbx-cgroup, qsd/ (QsdDaemon, QsdOverlayPool), sbx-vm and sbx-guest. Both
 * front ends (the D-Bus adapter in schedulerd and schedulerctl --embedded)
 * drive this object; it knows nothing about D-Bus.
 */
#define G_LOG_DOMAIN "sbx-manager"

#include "scheduler/sbx-manager.h"

#include <string.h>
#include <unistd.h>

#include "qsd/qsd-daemon.h"
#include "qsd/qsd-overlay-pool.h"
#include "scheduler/sbx-admission.h"
#include "scheduler/sbx-cgroup.h"
#include "scheduler/sbx-error.h"
#include "scheduler/sbx-orphans.h"
#include "scheduler/sbx-pool.h"
#include "scheduler/sbx-session.h"
#include "scheduler/sbx-network.h"
#include "scheduler/sbx-vm.h"

#define SBX_OUTPUT_QUEUE_MAX (4 * 1024 * 1024)

struct _SbxManager {
    GObject parent_instance;
    SbxConfig *cfg;
    gboolean started;
    gboolean shutting_down;
    SbxProbeReport *probe;
    SbxAccel accel;
    guint tsc_khz;
    char *cmdline;
    char *kernel, *initrd, *rootfs, *seed;
    char *vms_dir;
    SbxCgroupManager *cgroups;
    SbxAdmission *admission;
    QsdDaemon *qsd;
    QsdOverlayPool *disks;
    GvpContext *net;   /* network helpers (sbx-network.c) */
    SbxPool *pool;     /* L1 templates + warm pool (sbx-pool.c) */
    gboolean pool_stopping;
    GHashTable *runs;  /* RunData* set: in flight, and the VMs sessions hold */
    GHashTable *cleanups; /* RunData* set: result delivered, VM still being released */
    GQueue idle_waiters;  /* GTask* of sbx_manager_wait_cleanups_async */
    guint64 cleanups_total;
    guint64 cleanup_failures;
    gint64 cleanup_ms_last;
    GHashTable *sessions; /* id -> SbxSession* (ref): open sessions */
    guint64 serial;
    guint64 runs_total;
    guint64 runs_failed;
    GCancellable *cancellable;
    GTask *shutdown_task;
};

G_DEFINE_FINAL_TYPE(SbxManager, sbx_manager, G_TYPE_OBJECT)

static void complete_idle_waiters(SbxManager *self);

SbxManager *
sbx_manager_new(SbxConfig *cfg)
{
    SbxManager *self = g_object_new(SBX_TYPE_MANAGER, NULL);
    self->cfg = cfg;
    return self;
}

const SbxConfig *
sbx_manager_get_config(SbxManager *self)
{
    return self->cfg;
}

const SbxProbeReport *
sbx_manager_get_probe(SbxManager *self)
{
    return self->probe;
}

const char *
sbx_manager_get_accel(SbxManager *self)
{
    return sbx_accel_to_string(self->accel);
}

guint
sbx_manager_get_n_vms(SbxManager *self)
{
    return g_hash_table_size(self->runs) + g_hash_table_size(self->cleanups);
}

guint
sbx_manager_get_n_cleanups(SbxManager *self)
{
    return g_hash_table_size(self->cleanups);
}

void
sbx_manager_wait_cleanups_async(SbxManager *self, GAsyncReadyCallback callback,
                                gpointer user_data)
{
    GTask *task = g_task_new(self, NULL, callback, user_data);
    g_task_set_source_tag(task, sbx_manager_wait_cleanups_async);
    g_queue_push_tail(&self->idle_waiters, task);
    complete_idle_waiters(self);
}

gboolean
sbx_manager_wait_cleanups_finish(SbxManager *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

/* What one VM costs the admission budget. */
static void
vm_cost(SbxManager *self, guint memory_mb, SbxAdmissionConfig *acfg, guint64 *mem, guint64 *cpu)
{
    sbx_admission_config_vm_cost(acfg, (guint64)memory_mb << 20, self->cfg->vcpus,
                                 self->accel == SBX_ACCEL_TCG, mem, cpu);
}

static void
admission_config_from(const SbxConfig *cfg, SbxAdmissionConfig *acfg)
{
    sbx_admission_config_init(acfg);
    acfg->memory_overcommit_ratio = cfg->memory_overcommit_ratio;
    acfg->cpu_overcommit_ratio = cfg->cpu_overcommit_ratio;
    acfg->memory_reserve_ratio = cfg->memory_reserve_ratio;
    acfg->cpu_reserve_cores = cfg->cpu_reserve_cores;
    acfg->vm_memory_overhead_bytes = (guint64)cfg->vm_overhead_mb << 20;
    acfg->tcg_tb_cache_bytes = (guint64)cfg->tcg_cache_mb << 20;
    acfg->vm_cpu_overhead_millis = cfg->vm_cpu_overhead_millis;
    acfg->psi_full_avg10_threshold = cfg->psi_full_avg10_threshold;
    acfg->available_memory_floor_bytes = (guint64)cfg->available_memory_floor_mb << 20;
    acfg->bypass_limit = cfg->bypass_limit;
    acfg->lookahead = cfg->lookahead;
}

/* ---- start -------------------------------------------------------------- */

/* VMs of the default size the budget allows (TCG costing, the larger one), so the
 * probe checks threads-max and pids.max against this host's real plan. */
static guint
planned_slots(SbxManager *self)
{
    SbxAdmissionConfig acfg;
    g_auto(SbxHostCapacity) cap = {0};
    SbxHostRoots roots = {0};
    guint64 mem_budget, cpu_budget, mem, cpu;

    if (!sbx_host_capacity_read(&roots, &cap, NULL))
        return 0; /* the probe's own default */
    admission_config_from(self->cfg, &acfg);
    sbx_admission_compute_budgets(&acfg, &cap, &mem_budget, &cpu_budget);
    sbx_admission_config_vm_cost(&acfg, (guint64)self->cfg->default_memory_mb << 20,
                                 self->cfg->vcpus, TRUE, &mem, &cpu);
    return (guint)MAX(MIN(mem_budget / MAX(mem, 1), cpu_budget / MAX(cpu, 1)), 1);
}

static gboolean
find_image(SbxManager *self, GError **error)
{
    static const char *const files[] = {"vmlinux", "initramfs.cpio", "rootfs.erofs",
                                        "work-seed.ext4", "cmdline"};
    for (guint i = 0; i < G_N_ELEMENTS(files); i++) {
        g_autofree char *p = g_build_filename(self->cfg->guest_dir, files[i], NULL);
        if (!g_file_test(p, G_FILE_TEST_IS_REGULAR)) {
            g_set_error(error, SBX_ERROR, SBX_ERROR_TRANSIENT,
                        "guest image incomplete: %s is missing (build it with `make guest-image` "
                        "and point [scheduler] guest_dir or SBX_GUEST_DIR at it)",
                        p);
            return FALSE;
        }
    }
    self->kernel = g_build_filename(self->cfg->guest_dir, "vmlinux", NULL);
    self->initrd = g_build_filename(self->cfg->guest_dir, "initramfs.cpio", NULL);
    self->rootfs = g_build_filename(self->cfg->guest_dir, "rootfs.erofs", NULL);
    self->seed = g_build_filename(self->cfg->guest_dir, "work-seed.ext4", NULL);
    g_autofree char *cmdline_path = g_build_filename(self->cfg->guest_dir, "cmdline", NULL);
    if (!g_file_get_contents(cmdline_path, &self->cmdline, NULL, error))
        return FALSE;
    g_strstrip(self->cmdline);
    return TRUE;
}

static void
sweep_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GError) error = NULL;
    g_autoptr(GPtrArray) removed =
        sbx_cgroup_manager_sweep_orphans_finish(SBX_CGROUP_MANAGER(source), res, &error);
    if (removed)
        for (guint i = 0; i < removed->len; i++)
            g_info("removed orphaned cgroup %s", (const char *)g_ptr_array_index(removed, i));
    if (error)
        g_warning("orphaned cgroups left behind: %s", error->message);
}

static void
probe_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GTask) task = user_data;
    SbxManager *self = g_task_get_source_object(task);
    GError *error = NULL;

    self->probe = sbx_probe_run_finish(res, &error);
    if (self->probe == NULL) {
        g_task_return_error(task, error);
        return;
    }
    switch (self->cfg->accel) {
    case SBX_ACCEL_MODE_AUTO:
        self->accel = self->probe->accel;
        g_info("accelerator: %s (%s)", sbx_accel_to_string(self->accel), self->probe->accel_reason);
        break;
    case SBX_ACCEL_MODE_TCG:
        self->accel = SBX_ACCEL_TCG;
        g_info("accelerator: tcg (forced)");
        break;
    case SBX_ACCEL_MODE_KVM:
        self->accel = SBX_ACCEL_KVM;
        g_info("accelerator: kvm (forced; probe said: %s)", self->probe->accel_reason);
        break;
    }
    for (guint i = 0; i < self->probe->items->len; i++) {
        const SbxProbeItem *it = g_ptr_array_index(self->probe->items, i);
        if (it->status != SBX_PROBE_OK)
            g_warning("%s = %s: %s%s%s", it->name, it->value ? it->value : "?", it->message,
                      it->fix ? " Fix: " : "", it->fix ? it->fix : "");
    }

    /* cgroups: a host without usable cgroups runs unconfined, said once */
    SbxCgroupConfig ccfg = {0};
    self->cgroups = sbx_cgroup_manager_new(&ccfg, &error);
    if (self->cgroups == NULL) {
        g_task_return_error(task, error);
        return;
    }
    g_info("cgroups: %s", sbx_cgroup_manager_get_reason(self->cgroups));
    /* only the groups of dead schedulers: the base is shared with live ones */
    g_autoptr(GPtrArray) bases = sbx_cgroup_manager_dup_base_dirs(self->cgroups);
    g_autoptr(GPtrArray) dead = sbx_orphans_dead_owner_prefixes(bases);
    for (guint i = 0; i < dead->len; i++)
        sbx_cgroup_manager_sweep_orphans_async(self->cgroups, g_ptr_array_index(dead, i), NULL,
                                               sweep_cb, NULL);

    SbxAdmissionConfig acfg;
    admission_config_from(self->cfg, &acfg);
    SbxHostRoots roots = {0};
    self->admission = sbx_admission_new_for_host(&acfg, &roots, &error);
    if (self->admission == NULL) {
        g_task_return_error(task, error);
        return;
    }
    guint64 mem, cpu;
    vm_cost(self, self->cfg->default_memory_mb, &acfg, &mem, &cpu);
    guint slots = sbx_admission_max_slots(self->admission, mem, cpu);

    self->qsd = qsd_daemon_new(self->cfg->qsd, NULL);
    g_autofree char *disks_dir = g_build_filename(self->cfg->runtime_dir, "disks", NULL);
    /* the pool is pre-created to 100% of the admission slots */
    self->disks = qsd_overlay_pool_new(self->qsd, self->seed, disks_dir, MAX(slots, 1), &error);
    if (self->disks == NULL) {
        g_task_return_error(task, error);
        return;
    }
    g_autofree char *l1_dir = g_build_filename(self->cfg->runtime_dir, "l1", NULL);
    SbxPoolDeps pdeps = {.cfg = self->cfg, .accel = self->accel, .tsc_khz = self->tsc_khz,
                         .kernel = self->kernel, .initrd = self->initrd, .rootfs = self->rootfs,
                         .cmdline = self->cmdline, .seed = self->seed, .vms_dir = self->vms_dir,
                         .l1_dir = l1_dir, .qsd = self->qsd, .disks = self->disks,
                         .cgroups = self->cgroups, .admission = self->admission,
                         .vm_mem_cost = mem, .vm_cpu_cost = cpu, .acfg = acfg};
    self->pool = sbx_pool_new(&pdeps, &error);
    if (self->pool == NULL) {
        g_task_return_error(task, error);
        return;
    }
    g_info("ready: %u slots of %u MiB, work disks as %s", slots, self->cfg->default_memory_mb,
           qsd_overlay_pool_get_format(self->disks));
    self->started = TRUE;
    g_task_return_boolean(task, TRUE);
}

void
sbx_manager_start_async(SbxManager *self, GCancellable *cancellable, GAsyncReadyCallback callback,
                        gpointer user_data)
{
    GTask *task = g_task_new(self, cancellable, callback, user_data);
    GError *error = NULL;
    g_task_set_source_tag(task, sbx_manager_start_async);

    if (!find_image(self, &error)) {
        g_task_return_error(task, error);
        g_object_unref(task);
        return;
    }
    self->vms_dir = g_build_filename(self->cfg->runtime_dir, "vms", NULL);
    if (g_mkdir_with_parents(self->vms_dir, 0700) != 0) {
        int e = errno;
        g_task_return_new_error(task, G_IO_ERROR, g_io_error_from_errno(e), "%s: %s",
                                self->vms_dir, g_strerror(e));
        g_object_unref(task);
        return;
    }
    /* A crashed predecessor's VMs: kill and remove before anything new runs. */
    g_autoptr(GPtrArray) reaped = sbx_orphans_reap(self->vms_dir);
    for (guint i = 0; i < reaped->len; i++)
        g_info("orphan cleanup: %s", (const char *)g_ptr_array_index(reaped, i));

    self->net = gvp_context_new(g_getenv("SBX_NET_RESOLVE"), &error);
    if (self->net == NULL) {
        g_prefix_error(&error, "SBX_NET_RESOLVE: ");
        g_task_return_error(task, error);
        g_object_unref(task);
        return;
    }
    g_info("network: %s", gvp_context_describe(self->net));
    self->tsc_khz = sbx_qemu_read_tsc_khz("/proc/cpuinfo");
    SbxProbeOptions opts = {0};
    opts.raise_limits = TRUE;
    opts.test_kvm = self->cfg->accel != SBX_ACCEL_MODE_TCG;
    opts.planned_slots = planned_slots(self);
    sbx_probe_run_async(&opts, cancellable, probe_cb, task);
}

gboolean
sbx_manager_start_finish(SbxManager *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

/* ---- one run ------------------------------------------------------------ */

/* Ordered, bounded writer of one output stream to the caller's stream. */
typedef struct _RunData RunData;

typedef struct {
    RunData *run;
    GOutputStream *stream; /* NULL: discard */
    GQueue chunks;         /* GBytes */
    gsize queued;
    gboolean writing;
    gboolean broken;       /* the reader went away: drop the rest */
} Sink;

/* One RunData drives every path that uses a VM, so they share one
 * admission / work disk / cgroup / boot / teardown sequence:
 *   RUN           boot a fresh VM, exec, destroy it (Run)
 *   SESSION_VM    boot a VM and hand it to an SbxSession; destroyed when the
 *                 session releases it (the RunData is then its SbxVmLease)
 *   SESSION_EXEC  exec in a session's booted VM; nothing booted or destroyed */
typedef enum {
    RUN_KIND_RUN,
    RUN_KIND_SESSION_VM,
    RUN_KIND_SESSION_EXEC,
} RunKind;

struct _RunData {
    SbxManager *mgr;
    RunKind kind;
    GTask *task;
    SbxLanguage language;
    GBytes *code;
    GHashTable *env;
    guint timeout_s;
    guint memory_mb;
    SbxRunProgressFunc progress;
    gpointer progress_data;
    Sink sink[2];
    SbxReservation *reservation;
    SbxCgroup *cgroup;
    SbxVm *vm;
    SbxRunNet *net;         /* NULL: no NIC */
    SbxTemplate *l1;        /* restoring from this L1 template (sbx-pool.c) */
    char *vm_id;
    char *run_dir;
    char *work_disk;
    SbxRunResult *result;
    GError *error;
    guint setup_pending;
    guint exec_deadline_id; /* host-side hard deadline of a dispatched exec */
    GError *lost_error;     /* the channel closed mid-exec: waiting for QEMU's exit */
    guint lost_timer_id;
    gulong lost_died_id;
    gboolean exec_done;
    gboolean dispatched;
    gboolean retire;        /* the guest asked for the VM to be retired (exit 137) */
    gboolean teardown_started;
    gboolean net_stopping;  /* sbx_run_net_stop_async in flight */
    gboolean cleanup;       /* result delivered; in mgr->cleanups until released */
    gint64 t_cleanup;
    gint64 t_exec;          /* exec queued (debug timeline) */
    guint idle_timeout_s;   /* SESSION_VM */
    gint64 t0, t_stage;
    GCancellable *cancellable;
    gulong cancel_id;
};

static void run_finish(RunData *d);
static void run_teardown(RunData *d);
static void setup_done(RunData *d);
static void run_net_stopped_cb(GObject *source, GAsyncResult *res, gpointer user_data);
static void shutdown_continue(SbxManager *self);

static void
run_data_free(RunData *d)
{
    g_clear_handle_id(&d->exec_deadline_id, g_source_remove);
    g_clear_handle_id(&d->lost_timer_id, g_source_remove);
    if (d->vm)
        g_clear_signal_handler(&d->lost_died_id, d->vm);
    g_clear_error(&d->lost_error);
    for (int i = 0; i < 2; i++) {
        g_queue_clear_full(&d->sink[i].chunks, (GDestroyNotify)g_bytes_unref);
        g_clear_object(&d->sink[i].stream);
    }
    g_clear_pointer(&d->code, g_bytes_unref);
    g_clear_pointer(&d->env, g_hash_table_unref);
    g_clear_pointer(&d->reservation, sbx_reservation_free);
    g_clear_object(&d->cgroup);
    g_clear_object(&d->vm);
    g_clear_pointer(&d->l1, sbx_template_unref);
    g_free(d->vm_id);
    g_free(d->run_dir);
    g_free(d->work_disk);
    g_clear_pointer(&d->result, sbx_run_result_free);
    g_clear_pointer(&d->net, sbx_run_net_free);
    g_clear_error(&d->error);
    g_clear_object(&d->cancellable);
    g_free(d);
}

/* Debug timeline of one run (G_MESSAGES_DEBUG=sbx-manager): microseconds
 * since the request arrived at each step. Costs one check when debug is off. */
static void
run_trace(RunData *d, const char *step)
{
    if (g_log_writer_default_would_drop(G_LOG_LEVEL_DEBUG, G_LOG_DOMAIN))
        return;
    g_debug("%s: +%" G_GINT64_FORMAT " us %s", d->vm_id ? d->vm_id : "run",
            g_get_monotonic_time() - d->t0, step);
}

static gint64
stage_ms(RunData *d)
{
    gint64 now = g_get_monotonic_time();
    gint64 ms = (now - d->t_stage + 500) / 1000;
    d->t_stage = now;
    return MAX(ms, 1); /* a stage that happened is never reported as 0 */
}

static void
progress(RunData *d, SbxRunStage stage)
{
    if (d->progress)
        d->progress(stage, d->progress_data);
}

/* First error wins; later ones are dropped. */
static void
run_set_error(RunData *d, GError *error)
{
    if (d->error == NULL)
        d->error = error;
    else
        g_error_free(error);
}

static GError *
map_error(RunData *d, const GError *e)
{
    SbxErrorCode code;
    if (e->domain == SBX_ERROR)
        return g_error_copy(e);
    if (g_error_matches(e, G_IO_ERROR, G_IO_ERROR_CANCELLED))
        code = d->dispatched ? SBX_ERROR_OUTCOME_UNKNOWN : SBX_ERROR_CANCELLED;
    else if (e->domain == SBX_VALIDATE_ERROR ||
             g_error_matches(e, SBX_GUEST_ERROR, SBX_GUEST_ERROR_INVALID_INPUT))
        code = SBX_ERROR_INVALID_INPUT;
    else if (e->domain == SBX_ADMISSION_ERROR)
        code = e->code == SBX_ADMISSION_ERROR_STOPPED ? SBX_ERROR_TRANSIENT : SBX_ERROR_NO_CAPACITY;
    else if (g_error_matches(e, SBX_GUEST_ERROR, SBX_GUEST_ERROR_BUSY) ||
             g_error_matches(e, SBX_GUEST_ERROR, SBX_GUEST_ERROR_TOO_MANY)) {
        /* the agent refused before running anything (a session's second Exec) */
        return g_error_new(SBX_ERROR, SBX_ERROR_TRANSIENT,
                           "%s: one Exec at a time per session; retry when it is done",
                           e->message);
    } else
        code = d->dispatched ? SBX_ERROR_OUTCOME_UNKNOWN : SBX_ERROR_TRANSIENT;
    return g_error_new(SBX_ERROR, code, "%s", e->message);
}

static void sink_pump(RunData *d, Sink *s);

static void
sink_written_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Sink *s = user_data;
    if (!g_output_stream_write_all_finish(G_OUTPUT_STREAM(source), res, NULL, NULL))
        s->broken = TRUE; /* the reader went away; the run goes on */
    GBytes *done = g_queue_pop_head(&s->chunks);
    s->queued -= g_bytes_get_size(done);
    g_bytes_unref(done);
    s->writing = FALSE;
    sink_pump(s->run, s);
}

static void
sink_pump(RunData *d, Sink *s)
{
    if (s->writing)
        return;
    if (s->broken) {
        g_queue_clear_full(&s->chunks, (GDestroyNotify)g_bytes_unref);
        s->queued = 0;
    }
    GBytes *next = g_queue_peek_head(&s->chunks);
    if (next == NULL) {
        if (d->exec_done && !d->sink[0].writing && !d->sink[1].writing &&
            g_queue_is_empty(&d->sink[0].chunks) && g_queue_is_empty(&d->sink[1].chunks))
            run_teardown(d);
        return;
    }
    s->writing = TRUE;
    gsize len = 0;
    const void *data = g_bytes_get_data(next, &len);
    g_output_stream_write_all_async(s->stream, data, len, G_PRIORITY_DEFAULT, NULL,
                                    sink_written_cb, s);
}

static void
output_cb(SbxGuestStream stream, const guint8 *data, gsize len, gpointer user_data)
{
    RunData *d = user_data;
    Sink *s = &d->sink[stream == SBX_GUEST_STDERR ? 1 : 0];
    if (s->stream == NULL || s->broken || s->queued + len > SBX_OUTPUT_QUEUE_MAX)
        return;
    g_queue_push_tail(&s->chunks, g_bytes_new(data, len));
    s->queued += len;
    sink_pump(d, s);
}

static void
vm_destroyed_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    RunData *d = user_data;
    g_autoptr(GError) error = NULL;
    if (!sbx_vm_destroy_finish(SBX_VM(source), res, &error)) {
        g_warning("VM %s: teardown incomplete: %s", d->vm_id, error->message);
        d->mgr->cleanup_failures++;
    }
    run_trace(d, "VM destroyed");
    run_finish(d);
}

/* Give the caller its result (or error) now; the rest of the teardown goes on
 * in the background and run_finish ends it. Only once the VM's QEMU (and its
 * network helper) have been sent SIGKILL and its cgroup's counters are read. */
static void
run_deliver(RunData *d)
{
    SbxManager *self = d->mgr;
    g_autoptr(GTask) task = g_steal_pointer(&d->task);

    if (d->cancel_id) {
        g_cancellable_disconnect(g_task_get_cancellable(task), d->cancel_id);
        d->cancel_id = 0;
    }
    self->runs_total++;
    /* the output is complete (teardown starts when the sinks are drained):
     * let go of the caller's streams now, so a reader sees EOF with the result */
    for (int i = 0; i < 2; i++) {
        g_warn_if_fail(!d->sink[i].writing);
        g_queue_clear_full(&d->sink[i].chunks, (GDestroyNotify)g_bytes_unref);
        d->sink[i].queued = 0;
        g_clear_object(&d->sink[i].stream);
    }
    /* background cleanup from here: the manager lives until it is done */
    d->cleanup = TRUE;
    d->t_cleanup = g_get_monotonic_time();
    g_object_ref(self);
    g_hash_table_remove(self->runs, d);
    g_hash_table_add(self->cleanups, d);
    if (d->error) {
        self->runs_failed++;
        g_task_return_error(task, map_error(d, d->error));
    } else {
        d->result->timing.teardown_ms = stage_ms(d);
        d->result->timing.total_ms = MAX((g_get_monotonic_time() - d->t0 + 500) / 1000, 1);
        g_task_set_task_data(task, GINT_TO_POINTER(d->retire), NULL);
        run_trace(d, "result returned");
        g_task_return_pointer(task, g_steal_pointer(&d->result),
                              (GDestroyNotify)sbx_run_result_free);
    }
}

static void
run_teardown(RunData *d)
{
    if (!d->teardown_started) {
        d->teardown_started = TRUE;
        if (d->result)
            d->result->timing.exec_ms = stage_ms(d);
        run_trace(d, "output drained, teardown starts");
        progress(d, SBX_RUN_STAGE_TEARDOWN);
        if (d->kind == RUN_KIND_SESSION_EXEC) {
            g_clear_object(&d->vm); /* borrowed from the session: it stays up */
            run_finish(d);
            return;
        }
        if (d->vm) {
            /* 1. no guest code runs after this (docs/vm-lifecycle.md) */
            sbx_vm_kill(d->vm);
            if (d->net && !sbx_run_net_is_stopped(d->net)) {
                d->net_stopping = TRUE; /* SIGKILLs the helper now */
                sbx_run_net_stop_async(d->net, run_net_stopped_cb, d);
            }
            /* 2. the host's counters of the VM, final now */
            SbxCgroup *cg = sbx_vm_get_cgroup(d->vm);
            guint64 cpu_ns, peak;
            if (d->result && cg && sbx_cgroup_read_usage(cg, &cpu_ns, &peak, NULL)) {
                d->result->cpu_ms = cpu_ns / 1000000;
                d->result->memory_peak_mb = (peak + (1 << 20) - 1) >> 20;
            }
            run_trace(d, "QEMU killed, cgroup stats read");
            /* 3. a run's caller has its result; a session's VM is released
             * (lease_release) only when everything is gone */
            if (d->kind == RUN_KIND_RUN)
                run_deliver(d);
            if (d->net_stopping)
                return; /* run_net_stopped_cb continues */
        }
    }
    /* 4. in the reverse order of setup: network helper, QEMU's death, files,
     * cgroup; the reservation last (run_finish) */
    if (d->net && !sbx_run_net_is_stopped(d->net)) {
        if (!d->net_stopping) {
            d->net_stopping = TRUE;
            sbx_run_net_stop_async(d->net, run_net_stopped_cb, d);
        }
        return;
    }
    if (d->vm) {
        sbx_vm_destroy_async(d->vm, vm_destroyed_cb, d);
        return;
    }
    if (d->cgroup) {
        /* the VM never took it over */
        (void)sbx_cgroup_try_destroy(d->cgroup, NULL);
    }
    if (d->work_disk)
        (void)unlink(d->work_disk);
    if (d->run_dir)
        (void)rmdir(d->run_dir);
    run_finish(d);
}

static void
complete_idle_waiters(SbxManager *self)
{
    GTask *task;
    if (g_hash_table_size(self->cleanups) > 0)
        return;
    while ((task = g_queue_pop_head(&self->idle_waiters)) != NULL) {
        g_task_return_boolean(task, TRUE);
        g_object_unref(task);
    }
}

/* The end of a run: everything is released; the admission reservation last. */
static void
run_finish(RunData *d)
{
    SbxManager *self = d->mgr;
    gboolean cleanup = d->cleanup;

    g_clear_pointer(&d->reservation, sbx_reservation_free); /* admission released last */
    if (cleanup) {
        /* the result went out in run_deliver */
        gint64 ms = MAX((g_get_monotonic_time() - d->t_cleanup + 500) / 1000, 1);
        self->cleanup_ms_last = ms;
        self->cleanups_total++;
        g_info("VM %s: released in the background %" G_GINT64_FORMAT " ms after its result", d->vm_id,
               ms);
        run_trace(d, "cleanup done, reservation released");
        g_hash_table_remove(self->cleanups, d);
        run_data_free(d);
        complete_idle_waiters(self);
    } else {
        g_autoptr(GTask) task = g_steal_pointer(&d->task);
        if (d->result && d->kind != RUN_KIND_SESSION_EXEC)
            d->result->timing.teardown_ms = stage_ms(d);
        g_hash_table_remove(self->runs, d);
        if (d->cancel_id)
            g_cancellable_disconnect(g_task_get_cancellable(task), d->cancel_id);
        if (d->kind != RUN_KIND_SESSION_VM)
            self->runs_total++;
        if (d->error) {
            self->runs_failed++;
            g_task_return_error(task, map_error(d, d->error));
        } else if (d->kind == RUN_KIND_SESSION_VM) {
            g_task_return_boolean(task, TRUE); /* a session's VM released */
        } else {
            g_task_set_task_data(task, GINT_TO_POINTER(d->retire), NULL);
            d->result->timing.total_ms = MAX((g_get_monotonic_time() - d->t0 + 500) / 1000, 1);
            run_trace(d, "result returned");
            g_task_return_pointer(task, g_steal_pointer(&d->result),
                                  (GDestroyNotify)sbx_run_result_free);
        }
        run_data_free(d);
    }
    if (self->pool)
        sbx_pool_kick(self->pool); /* refill while idle */
    shutdown_continue(self); /* a draining shutdown waits for the last run and cleanup */
    if (cleanup)
        g_object_unref(self); /* taken in run_deliver; may be the last ref */
}

#define SBX_EXEC_LOST_WAIT_MS 250

static void
exec_lost_done(RunData *d)
{
    g_clear_handle_id(&d->lost_timer_id, g_source_remove);
    g_clear_signal_handler(&d->lost_died_id, d->vm);
    g_autofree char *how = sbx_vm_dup_exit_description(d->vm);
    g_autofree char *tail = sbx_vm_dup_console_tail(d->vm, 5);
    GError *error = g_steal_pointer(&d->lost_error);
    if (how)
        g_prefix_error(&error, "the VM stopped while the code ran: QEMU %s; last console lines:\n%s\n",
                       how, tail);
    else
        g_prefix_error(&error, "the VM stopped answering while the code ran; last console lines:\n%s\n",
                       tail);
    run_set_error(d, error);
    d->exec_done = TRUE;
    sink_pump(d, &d->sink[0]);
}

static gboolean
exec_lost_timeout_cb(gpointer user_data)
{
    RunData *d = user_data;
    d->lost_timer_id = 0;
    exec_lost_done(d);
    return G_SOURCE_REMOVE;
}

static void
exec_lost_died_cb(SbxVm *vm, const char *how, gpointer user_data)
{
    exec_lost_done(user_data);
}

static void
exec_lost_wait(RunData *d, GError *error)
{
    d->lost_error = error;
    if (sbx_vm_get_state(d->vm) != SBX_VM_STATE_READY) {
        exec_lost_done(d);
        return;
    }
    d->lost_died_id = g_signal_connect(d->vm, "died", G_CALLBACK(exec_lost_died_cb), d);
    d->lost_timer_id = g_timeout_add(SBX_EXEC_LOST_WAIT_MS, exec_lost_timeout_cb, d);
}

static void
exec_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    RunData *d = user_data;
    SbxGuestExecResult r = {0};
    GError *error = NULL;

    g_clear_handle_id(&d->exec_deadline_id, g_source_remove);
    run_trace(d, "exec reply (exit frame)");
    if (!sbx_guest_exec_finish(SBX_GUEST(source), res, &r, &error)) {
        if (g_error_matches(error, SBX_GUEST_ERROR, SBX_GUEST_ERROR_DISCONNECTED) && d->vm &&
            d->kind != RUN_KIND_SESSION_EXEC) {
            /* The channel usually closes just before QEMU's exit is reaped: wait
             * a moment for it, so the error can say how the VM ended. */
            exec_lost_wait(d, error);
            return;
        }
        run_set_error(d, error);
    } else {
        d->result->exit_code = r.exit_code;
        d->result->timed_out = r.timed_out;
        d->result->guest_exec_us = r.duration_us;
        d->result->guest_accept_us = r.accept_us;
        if (!g_log_writer_default_would_drop(G_LOG_LEVEL_DEBUG, G_LOG_DOMAIN))
            g_debug("%s: guest exec %" G_GUINT64_FORMAT " us: %" G_GINT64_FORMAT
                    " us around it since the exec was queued",
                    d->vm_id, r.duration_us,
                    g_get_monotonic_time() - d->t_exec - (gint64)r.duration_us);
        d->retire = r.retire;
        g_free(d->result->output_limit);
        d->result->output_limit =
            g_strdup(r.stdout_truncated ? "stdout" : r.stderr_truncated ? "stderr" : "");
    }
    d->exec_done = TRUE;
    sink_pump(d, &d->sink[0]);
}

/* The agent enforces the timeout; this catches a guest that stopped answering. */
#define SBX_EXEC_DEADLINE_MARGIN_S 15

static gboolean
exec_deadline_cb(gpointer user_data)
{
    RunData *d = user_data;
    d->exec_deadline_id = 0;
    run_set_error(d, g_error_new(SBX_ERROR, SBX_ERROR_OUTCOME_UNKNOWN,
                                 "the guest did not report the end of the code within %u s "
                                 "(its timeout + %d s); the VM was destroyed",
                                 d->timeout_s + SBX_EXEC_DEADLINE_MARGIN_S,
                                 SBX_EXEC_DEADLINE_MARGIN_S));
    g_cancellable_cancel(d->cancellable);
    return G_SOURCE_REMOVE;
}

/* Send the code of @d to its booted VM; output streams to the sinks. */
static void
run_exec(RunData *d)
{
    progress(d, SBX_RUN_STAGE_EXEC);
    run_trace(d, "exec request queued");
    d->t_exec = g_get_monotonic_time();
    d->dispatched = TRUE;
    d->exec_deadline_id =
        g_timeout_add_seconds(d->timeout_s + SBX_EXEC_DEADLINE_MARGIN_S, exec_deadline_cb, d);
    sbx_guest_exec_async(sbx_vm_get_guest(d->vm), d->language, d->code, d->timeout_s, d->env,
                         output_cb, d, NULL, d->cancellable, exec_cb, d);
}

static void session_booted(RunData *d);

static void
boot_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    RunData *d = user_data;
    GError *error = NULL;
    if (!sbx_vm_boot_finish(SBX_VM(source), res, &error)) {
        run_set_error(d, error);
        run_teardown(d);
        return;
    }
    d->result->timing.boot_ms = stage_ms(d);
    sbx_pool_note_cold_boot(d->mgr->pool, d->language, d->memory_mb);
    if (d->kind == RUN_KIND_SESSION_VM) {
        session_booted(d);
        return;
    }
    run_exec(d);
}

static void run_setup(RunData *d);

static void
restore_failed_destroyed_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    RunData *d = user_data;
    (void)sbx_vm_destroy_finish(SBX_VM(source), res, NULL);
    g_clear_object(&d->vm);
    run_setup(d); /* the same request, cold */
}

static void
restore_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    RunData *d = user_data;
    SbxPool *pool = d->mgr->pool;
    GError *error = NULL;
    if (!sbx_pool_l1_restore_finish(pool, res, &error)) {
        sbx_pool_l1_restore_failed(pool, d->l1, error);
        g_clear_pointer(&d->l1, sbx_template_unref);
        if (g_cancellable_is_cancelled(d->cancellable)) {
            run_set_error(d, error);
            run_teardown(d);
            return;
        }
        g_error_free(error); /* tear the failed VM down completely, then boot */
        sbx_vm_destroy_async(d->vm, restore_failed_destroyed_cb, d);
        return;
    }
    sbx_pool_l1_hit(pool);
    d->result->l1_hit = TRUE;
    d->result->timing.restore_ms = stage_ms(d);
    if (d->kind == RUN_KIND_SESSION_VM) {
        session_booted(d);
        return;
    }
    run_exec(d);
}

/* network hooks (sbx-network.c): the helper starts in the VM's cgroup before
 * QEMU, its death fails the run, and it stops before the cgroup is removed */
static void
run_net_started_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    RunData *d = user_data;
    GError *error = NULL;
    if (!sbx_run_net_start_finish(d->net, res, &error))
        run_set_error(d, error);
    d->setup_pending = 1;
    setup_done(d);
}

static void
run_net_died(GError *error, gpointer user_data)
{
    RunData *d = user_data;
    run_set_error(d, error);
    g_cancellable_cancel(d->cancellable);
}

static void
run_net_stopped_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    RunData *d = user_data;
    sbx_run_net_stop_finish(d->net, res);
    d->net_stopping = FALSE;
    run_teardown(d);
}

static void
setup_done(RunData *d)
{
    SbxManager *self = d->mgr;
    if (--d->setup_pending > 0)
        return;
    if (d->error || g_cancellable_is_cancelled(d->cancellable)) {
        if (d->error == NULL)
            run_set_error(d, g_error_new_literal(G_IO_ERROR, G_IO_ERROR_CANCELLED, "cancelled"));
        run_teardown(d);
        return;
    }
    if (d->net && !sbx_run_net_is_started(d->net)) {
        sbx_run_net_start_async(d->net, d->vm_id, d->run_dir, d->cgroup, run_net_died, d,
                                d->cancellable, run_net_started_cb, d);
        return;
    }
    d->result->timing.setup_ms = stage_ms(d);
    progress(d, SBX_RUN_STAGE_BOOT);

    SbxVmParams p;
    sbx_pool_fill_vm_params(self->pool, d->memory_mb, &p);
    p.run_dir = d->run_dir;
    p.work_disk = d->work_disk;
    p.cgroup = d->cgroup;
    if (d->net)
        sbx_run_net_apply(d->net, &p, d->result);
    d->vm = sbx_vm_new(d->vm_id);
    if (d->l1) { /* 4. L1 restore (a failure falls back to a cold boot: restore_cb) */
        sbx_pool_l1_vm_params(self->pool, d->l1, &p);
        sbx_pool_l1_restore_async(self->pool, d->l1, d->vm, &p, d->cancellable, restore_cb, d);
    } else {
        sbx_vm_boot_async(d->vm, &p, d->cancellable, boot_cb, d);
    }
    /* the VM owns the disk and the cgroup now */
    g_clear_pointer(&d->work_disk, g_free);
    g_clear_object(&d->cgroup);
}

static void
disk_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    RunData *d = user_data;
    GError *error = NULL;
    if (!sbx_pool_take_disk_finish(SBX_POOL(source), res, &error)) {
        g_clear_pointer(&d->work_disk, g_free);
        run_set_error(d, error);
    }
    setup_done(d);
}

static void
cgroup_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    RunData *d = user_data;
    GError *error = NULL;
    d->cgroup = sbx_cgroup_manager_create_finish(SBX_CGROUP_MANAGER(source), res, &error);
    if (d->cgroup == NULL)
        run_set_error(d, error);
    setup_done(d);
}

static void
admitted_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    RunData *d = user_data;
    SbxManager *self = d->mgr;
    GError *error = NULL;

    d->reservation = sbx_admission_acquire_finish(SBX_ADMISSION(source), res, &error);
    if (d->reservation == NULL) {
        run_set_error(d, error);
        run_teardown(d);
        return;
    }
    d->result->timing.admission_ms = (gint64)sbx_reservation_get_admission_ms(d->reservation);
    (void)stage_ms(d);
    run_trace(d, "admitted");
    d->l1 = d->net ? NULL : sbx_pool_l1_lookup(self->pool, d->language, d->memory_mb);
    /* a pre-started -incoming defer QEMU: disk + cgroup ready, restore at once */
    if (d->l1 && (d->vm = sbx_pool_take_prestarted(self->pool, d->l1, d->language)) != NULL) {
        d->vm_id = g_strdup(sbx_vm_get_id(d->vm));
        d->result->timing.setup_ms = stage_ms(d);
        progress(d, SBX_RUN_STAGE_BOOT);
        sbx_pool_l1_restore_async(self->pool, d->l1, d->vm, NULL, d->cancellable, restore_cb, d);
        return;
    }
    run_setup(d);
}

/* Work disk (from the pool, or an overlay over the L1 template's disk) and
 * cgroup, concurrently; then setup_done. Also the cold-boot retry after a
 * failed restore. */
static void
run_setup(RunData *d)
{
    SbxManager *self = d->mgr;
    g_free(d->vm_id);
    g_free(d->run_dir);
    d->vm_id = g_strdup_printf("vm-%d-%" G_GUINT64_FORMAT, (int)getpid(), ++self->serial);
    d->run_dir = g_build_filename(self->vms_dir, d->vm_id, NULL);
    if (g_mkdir_with_parents(d->run_dir, 0700) != 0) {
        int e = errno;
        run_set_error(d, g_error_new(G_IO_ERROR, g_io_error_from_errno(e), "%s: %s", d->run_dir,
                                     g_strerror(e)));
        run_teardown(d);
        return;
    }
    d->work_disk = g_strdup_printf("%s/work.%s", d->run_dir,
                                   d->l1 ? "qcow2" : qsd_overlay_pool_get_format(self->disks));
    guint64 guest_bytes = (guint64)d->memory_mb << 20;
    SbxCgroupLimits limits = {
        .mem_max = sbx_reservation_get_memory_bytes(d->reservation),
        .mem_high = guest_bytes + ((guint64)self->cfg->vm_overhead_mb << 20),
        .cpu_quota_millis = self->cfg->vcpus * 1000,
        .pids_max = 256,
    };
    if (limits.mem_high > limits.mem_max)
        limits.mem_high = 0;
    d->setup_pending = 2;
    sbx_pool_take_disk_async(self->pool, d->l1, d->work_disk, d->cancellable, disk_cb, d);
    sbx_cgroup_manager_create_async(self->cgroups, d->vm_id, &limits, d->cancellable, cgroup_cb, d);
}

static void
run_cancelled_cb(GCancellable *cancellable, gpointer user_data)
{
    RunData *d = user_data;
    g_cancellable_cancel(d->cancellable);
}

static RunData *
run_data_new(SbxManager *self, RunKind kind, GTask *task, const SbxRunSpec *spec,
             GOutputStream *out, GOutputStream *err, GCancellable *cancellable)
{
    RunData *d = g_new0(RunData, 1);
    d->mgr = self;
    d->kind = kind;
    d->task = task;
    d->language = spec->language;
    d->code = spec->code ? g_bytes_ref(spec->code) : NULL;
    d->env = g_hash_table_ref(spec->env);
    d->timeout_s = spec->timeout_s;
    d->memory_mb = spec->memory_mb;
    d->sink[0].run = d->sink[1].run = d;
    d->sink[0].stream = out ? g_object_ref(out) : NULL;
    d->sink[1].stream = err ? g_object_ref(err) : NULL;
    d->result = sbx_run_result_new();
    g_free(d->result->accel);
    d->result->accel = g_strdup(sbx_accel_to_string(self->accel));
    d->cancellable = g_cancellable_new();
    if (cancellable)
        d->cancel_id = g_cancellable_connect(cancellable, G_CALLBACK(run_cancelled_cb), d, NULL);
    d->t0 = d->t_stage = g_get_monotonic_time();
    if (d->kind != RUN_KIND_SESSION_EXEC) /* a session exec uses its VM's network */
        d->net = sbx_run_net_new(self->net, spec);
    return d;
}

/* 2. admission, then work disk + cgroup, then boot (admitted_cb ... boot_cb). */
static void
run_admit(RunData *d)
{
    SbxManager *self = d->mgr;
    g_hash_table_add(self->runs, d);
    progress(d, SBX_RUN_STAGE_ADMISSION);
    SbxAdmissionConfig acfg;
    admission_config_from(self->cfg, &acfg);
    guint64 mem, cpu;
    vm_cost(self, d->memory_mb, &acfg, &mem, &cpu);
    (void)sbx_pool_make_room(self->pool, d->language, mem, cpu); /* evict an idle pooled VM */
    sbx_admission_acquire_async(self->admission, mem, cpu, self->cfg->admission_timeout_s * 1000,
                                d->cancellable, admitted_cb, d);
}

/* Why a new request is refused before it is queued, or TRUE. */
static gboolean
check_accepting(SbxManager *self, GError **error)
{
    if (!self->started || self->shutting_down) {
        g_set_error_literal(error, SBX_ERROR, SBX_ERROR_TRANSIENT,
                            self->shutting_down ? "the scheduler is shutting down"
                                                : "the scheduler has not started");
        return FALSE;
    }
    return TRUE;
}

void
sbx_manager_run_async(SbxManager *self, const SbxRunSpec *spec, GOutputStream *out,
                      GOutputStream *err, SbxRunProgressFunc progress_func, gpointer progress_data,
                      GCancellable *cancellable, GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = g_task_new(self, cancellable, callback, user_data);
    GError *error = NULL;
    g_task_set_source_tag(task, sbx_manager_run_async);

    /* 1. validate before any VM is touched */
    if (!sbx_run_spec_validate(spec, self->cfg, TRUE, &error)) {
        g_task_return_error(task, error);
        g_object_unref(task);
        return;
    }
    if (!check_accepting(self, &error)) {
        g_task_return_error(task, error);
        g_object_unref(task);
        return;
    }
    RunData *d = run_data_new(self, RUN_KIND_RUN, task, spec, out, err, cancellable);
    d->progress = progress_func;
    d->progress_data = progress_data;
    /* 2. warm pool hit? the pooled VM comes with its reservation: exec now */
    if (spec->network == GVP_MODE_NONE && /* pooled VMs have no NIC */
        (d->vm = sbx_pool_take_warm(self->pool, spec, &d->reservation)) != NULL) {
        g_hash_table_add(self->runs, d);
        d->vm_id = g_strdup(sbx_vm_get_id(d->vm));
        d->result->warm_pool_hit = TRUE;
        run_trace(d, "warm pool checkout");
        run_exec(d);
        return;
    }
    run_admit(d);
}

SbxRunResult *
sbx_manager_run_finish(SbxManager *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), NULL);
    return g_task_propagate_pointer(G_TASK(result), error);
}

/* ---- sessions ----------------------------------------------------------- */

static void
session_closed_cb(SbxSession *session, const char *reason, gpointer user_data)
{
    SbxManager *self = user_data;
    g_signal_handlers_disconnect_by_data(session, self);
    g_hash_table_remove(self->sessions, sbx_session_get_id(session));
}

/* The VM of a SESSION_VM is up: from now on the RunData is the session's lease. */
static void
session_booted(RunData *d)
{
    SbxManager *self = d->mgr;
    if (g_cancellable_is_cancelled(d->cancellable) || self->shutting_down) {
        run_set_error(d, g_error_new_literal(G_IO_ERROR, G_IO_ERROR_CANCELLED,
                                             "cancelled while the session's VM booted"));
        run_teardown(d);
        return;
    }
    g_autoptr(GTask) task = g_steal_pointer(&d->task);
    if (d->cancel_id) {
        g_cancellable_disconnect(g_task_get_cancellable(task), d->cancel_id);
        d->cancel_id = 0;
    }
    SbxSession *session = sbx_session_new(self, (SbxVmLease *)d, d->language, d->idle_timeout_s);
    g_hash_table_insert(self->sessions, g_strdup(sbx_session_get_id(session)),
                        g_object_ref(session));
    g_signal_connect(session, "closed", G_CALLBACK(session_closed_cb), self);
    g_info("session %s: VM %s up (admission %" G_GINT64_FORMAT " ms, setup %" G_GINT64_FORMAT
           " ms, %s %" G_GINT64_FORMAT " ms)",
           sbx_session_get_id(session), d->vm_id, d->result->timing.admission_ms,
           d->result->timing.setup_ms, d->result->l1_hit ? "L1 restore" : "boot",
           d->result->l1_hit ? d->result->timing.restore_ms : d->result->timing.boot_ms);
    g_task_return_pointer(task, session, g_object_unref);
}

void
sbx_manager_create_session_async(SbxManager *self, const SbxRunSpec *spec, guint idle_timeout_s,
                                 GCancellable *cancellable, GAsyncReadyCallback callback,
                                 gpointer user_data)
{
    GTask *task = g_task_new(self, cancellable, callback, user_data);
    GError *error = NULL;
    g_task_set_source_tag(task, sbx_manager_create_session_async);

    if (!sbx_run_spec_validate(spec, self->cfg, FALSE, &error) ||
        !check_accepting(self, &error)) {
        g_task_return_error(task, error);
        g_object_unref(task);
        return;
    }
    RunData *d = run_data_new(self, RUN_KIND_SESSION_VM, task, spec, NULL, NULL, cancellable);
    d->idle_timeout_s = idle_timeout_s ? idle_timeout_s : self->cfg->session_idle_timeout_s;
    run_admit(d);
}

SbxSession *
sbx_manager_create_session_finish(SbxManager *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), NULL);
    return g_task_propagate_pointer(G_TASK(result), error);
}

SbxSession *
sbx_manager_lookup_session(SbxManager *self, const char *id)
{
    return g_hash_table_lookup(self->sessions, id);
}

guint
sbx_manager_get_n_sessions(SbxManager *self)
{
    return g_hash_table_size(self->sessions);
}

SbxVm *
sbx_vm_lease_get_vm(SbxVmLease *lease)
{
    return ((RunData *)lease)->vm;
}

const SbxTimings *
sbx_vm_lease_get_timings(SbxVmLease *lease)
{
    return &((RunData *)lease)->result->timing;
}

void
sbx_manager_lease_exec_async(SbxManager *self, SbxVmLease *lease, const SbxRunSpec *spec,
                             GOutputStream *out, GOutputStream *err, GCancellable *cancellable,
                             GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = g_task_new(self, cancellable, callback, user_data);
    GError *error = NULL;
    RunData *vmd = (RunData *)lease;
    g_task_set_source_tag(task, sbx_manager_lease_exec_async);

    if (!sbx_run_spec_validate(spec, self->cfg, TRUE, &error)) {
        g_task_return_error(task, error);
        g_object_unref(task);
        return;
    }
    if (vmd->vm == NULL || sbx_vm_get_state(vmd->vm) != SBX_VM_STATE_READY) {
        g_task_return_new_error(task, SBX_ERROR, SBX_ERROR_SESSION_CLOSED,
                                "the session's VM is no longer running");
        g_object_unref(task);
        return;
    }
    RunData *d = run_data_new(self, RUN_KIND_SESSION_EXEC, task, spec, out, err, cancellable);
    d->vm = g_object_ref(vmd->vm);
    d->vm_id = g_strdup(vmd->vm_id);
    run_exec(d);
}

SbxRunResult *
sbx_manager_lease_exec_finish(SbxManager *self, GAsyncResult *result, gboolean *out_retire,
                              GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), NULL);
    SbxRunResult *r = g_task_propagate_pointer(G_TASK(result), error);
    if (r && out_retire)
        *out_retire = GPOINTER_TO_INT(g_task_get_task_data(G_TASK(result)));
    return r;
}

void
sbx_manager_lease_release_async(SbxManager *self, SbxVmLease *lease,
                                GAsyncReadyCallback callback, gpointer user_data)
{
    RunData *d = (RunData *)lease;
    g_return_if_fail(d->kind == RUN_KIND_SESSION_VM && d->task == NULL);
    d->task = g_task_new(self, NULL, callback, user_data);
    g_task_set_source_tag(d->task, sbx_manager_lease_release_async);
    run_teardown(d);
}

gboolean
sbx_manager_lease_release_finish(SbxManager *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

/* ---- status ------------------------------------------------------------- */

GVariant *
sbx_manager_get_status(SbxManager *self)
{
    GVariantBuilder b, pool;
    SbxAdmissionStats st = {0};
    if (self->admission)
        sbx_admission_get_stats(self->admission, &st);
    g_variant_builder_init(&b, G_VARIANT_TYPE_VARDICT);
    g_variant_builder_add(&b, "{sv}", "accel", g_variant_new_string(sbx_accel_to_string(self->accel)));
    g_variant_builder_add(&b, "{sv}", "version", g_variant_new_string(PACKAGE_VERSION));
    g_variant_builder_add(&b, "{sv}", "slots_used", g_variant_new_uint32(st.reservations));
    g_variant_builder_add(&b, "{sv}", "queue_length", g_variant_new_uint32(st.queue_length));
    g_variant_builder_add(&b, "{sv}", "memory_budget_mb",
                          g_variant_new_uint64(st.memory_budget_bytes >> 20));
    g_variant_builder_add(&b, "{sv}", "memory_used_mb",
                          g_variant_new_uint64(st.memory_in_use_bytes >> 20));
    g_variant_builder_add(&b, "{sv}", "cpu_budget_millis", g_variant_new_uint64(st.cpu_budget_millis));
    g_variant_builder_add(&b, "{sv}", "cpu_used_millis", g_variant_new_uint64(st.cpu_in_use_millis));
    g_variant_builder_add(&b, "{sv}", "runs_in_flight",
                          g_variant_new_uint32(g_hash_table_size(self->runs)));
    g_variant_builder_add(&b, "{sv}", "sessions",
                          g_variant_new_uint32(g_hash_table_size(self->sessions)));
    g_variant_builder_add(&b, "{sv}", "cleanups_in_flight",
                          g_variant_new_uint32(g_hash_table_size(self->cleanups)));
    g_variant_builder_add(&b, "{sv}", "cleanups_total", g_variant_new_uint64(self->cleanups_total));
    g_variant_builder_add(&b, "{sv}", "cleanup_failures",
                          g_variant_new_uint64(self->cleanup_failures));
    g_variant_builder_add(&b, "{sv}", "cleanup_ms_last", g_variant_new_uint64((guint64)self->cleanup_ms_last));
    g_variant_builder_add(&b, "{sv}", "runs_total", g_variant_new_uint64(self->runs_total));
    g_variant_builder_add(&b, "{sv}", "runs_failed", g_variant_new_uint64(self->runs_failed));
    g_variant_builder_add(&b, "{sv}", "cgroups",
                          g_variant_new_string(self->cgroups ? sbx_cgroup_mode_to_string(
                                                                   sbx_cgroup_manager_get_mode(self->cgroups))
                                                             : "none"));
    g_variant_builder_init(&pool, G_VARIANT_TYPE("a{su}"));
    g_variant_builder_add(&pool, "{su}", "work_disks",
                          self->disks ? qsd_overlay_pool_get_ready(self->disks) : 0);
    g_variant_builder_add(&pool, "{su}", "work_disks_target",
                          self->disks ? qsd_overlay_pool_get_target(self->disks) : 0);
    g_variant_builder_add(&b, "{sv}", "pool", g_variant_builder_end(&pool));
    if (self->pool)
        sbx_pool_add_status(self->pool, &b);
    g_variant_builder_add(&b, "{sv}", "storage_daemon_restarts",
                          g_variant_new_uint32(self->qsd ? qsd_daemon_get_restarts(self->qsd) : 0));
    return g_variant_builder_end(&b);
}

/* ---- shutdown ----------------------------------------------------------- */

static void
qsd_stopped_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GTask) task = user_data;
    GError *error = NULL;
    if (!qsd_daemon_stop_finish(QSD_DAEMON(source), res, &error)) {
        g_task_return_error(task, error);
        return;
    }
    g_task_return_boolean(task, TRUE);
}

static void
pool_stopped_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    SbxManager *self = user_data;
    (void)sbx_pool_shutdown_finish(SBX_POOL(source), res, NULL);
    self->pool_stopping = FALSE;
    shutdown_continue(self);
}

static void
shutdown_continue(SbxManager *self)
{
    GTask *task = self->shutdown_task;
    if (task == NULL || g_hash_table_size(self->runs) > 0 ||
        g_hash_table_size(self->cleanups) > 0 || self->pool_stopping)
        return;
    self->shutdown_task = NULL;
    if (self->disks)
        qsd_overlay_pool_drain(self->disks);
    if (self->qsd) {
        qsd_daemon_stop_async(self->qsd, 1000, NULL, qsd_stopped_cb, task);
        return;
    }
    g_task_return_boolean(task, TRUE);
    g_object_unref(task);
}

void
sbx_manager_shutdown_async(SbxManager *self, GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = g_task_new(self, NULL, callback, user_data);
    g_task_set_source_tag(task, sbx_manager_shutdown_async);
    if (self->shutdown_task) {
        g_task_return_new_error(task, G_IO_ERROR, G_IO_ERROR_PENDING, "already shutting down");
        g_object_unref(task);
        return;
    }
    self->shutting_down = TRUE;
    self->shutdown_task = task;
    if (self->pool) { /* pooled VMs give their reservations back first */
        self->pool_stopping = TRUE;
        sbx_pool_shutdown_async(self->pool, pool_stopped_cb, self);
    }
    if (self->admission)
        sbx_admission_stop(self->admission);
    /* cancelling may complete a run synchronously: never while iterating */
    g_autoptr(GPtrArray) cancels = g_ptr_array_new_with_free_func(g_object_unref);
    GHashTableIter it;
    gpointer key;
    g_hash_table_iter_init(&it, self->runs);
    while (g_hash_table_iter_next(&it, &key, NULL))
        g_ptr_array_add(cancels, g_object_ref(((RunData *)key)->cancellable));
    for (guint i = 0; i < cancels->len; i++)
        g_cancellable_cancel(g_ptr_array_index(cancels, i));
    /* open sessions release their VMs (their leases are in self->runs) */
    g_autoptr(GPtrArray) sessions = g_ptr_array_new_with_free_func(g_object_unref);
    gpointer value;
    g_hash_table_iter_init(&it, self->sessions);
    while (g_hash_table_iter_next(&it, NULL, &value))
        g_ptr_array_add(sessions, g_object_ref(value));
    for (guint i = 0; i < sessions->len; i++)
        sbx_session_close(g_ptr_array_index(sessions, i), SBX_SESSION_CLOSED_SHUTDOWN);
    shutdown_continue(self);
}

gboolean
sbx_manager_shutdown_finish(SbxManager *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

static void
sbx_manager_dispose(GObject *object)
{
    SbxManager *self = SBX_MANAGER(object);
    g_cancellable_cancel(self->cancellable);
    g_clear_object(&self->pool);
    g_clear_object(&self->disks);
    g_clear_object(&self->qsd);
    g_clear_object(&self->admission);
    g_clear_object(&self->cgroups);
    g_clear_object(&self->net);
    G_OBJECT_CLASS(sbx_manager_parent_class)->dispose(object);
}

static void
sbx_manager_finalize(GObject *object)
{
    SbxManager *self = SBX_MANAGER(object);
    g_clear_pointer(&self->probe, sbx_probe_report_free);
    g_clear_pointer(&self->cfg, sbx_config_free);
    g_hash_table_unref(self->runs);
    g_hash_table_unref(self->cleanups);
    g_hash_table_unref(self->sessions);
    g_free(self->cmdline);
    g_free(self->kernel);
    g_free(self->initrd);
    g_free(self->rootfs);
    g_free(self->seed);
    g_free(self->vms_dir);
    g_clear_object(&self->cancellable);
    G_OBJECT_CLASS(sbx_manager_parent_class)->finalize(object);
}

static void
sbx_manager_init(SbxManager *self)
{
    self->runs = g_hash_table_new(g_direct_hash, g_direct_equal);
    self->cleanups = g_hash_table_new(g_direct_hash, g_direct_equal);
    g_queue_init(&self->idle_waiters);
    self->sessions = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_object_unref);
    self->cancellable = g_cancellable_new();
    self->accel = SBX_ACCEL_TCG;
}

static void
sbx_manager_class_init(SbxManagerClass *klass)
{
    GObjectClass *oc = G_OBJECT_CLASS(klass);
    oc->dispose = sbx_manager_dispose;
    oc->finalize = sbx_manager_finalize;
}
