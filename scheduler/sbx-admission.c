/* SPDX-License-Identifier: MIT
 *
 * Admission control (see sbx-admission.h and docs/admission.md). The VM
 * manager acquires an SbxReservation of memory + CPU before it starts a VM
 * and releases it at teardown; Status reads the stats. Host capacity comes
 * from sbx-hostinfo; gates come from an injectable provider (the real one
 * reads /proc/pressure/memory and /proc/meminfo through sbx-hostinfo).
 *
 * All bookkeeping happens synchronously in dispatch(); the callbacks of
 * admitted or failed waiters run afterwards from one idle source that drains a
 * completion queue, so user callbacks never run inside dispatch() and a
 * release from a callback cannot recurse.
 */
#define G_LOG_DOMAIN "sbx-admission"

#include "scheduler/sbx-admission.h"

#define MiB (G_GUINT64_CONSTANT(1024) * 1024)

G_DEFINE_QUARK(sbx - admission - error - quark, sbx_admission_error)

struct _SbxReservation {
    SbxAdmission *owner; /* strong ref */
    guint64 mem;
    guint64 cpu;
    guint64 ticket;
    guint64 admission_ms;
    gboolean released;
};

typedef struct {
    SbxAdmission *self;
    guint64 ticket;
    guint64 mem;
    guint64 cpu;
    gint64 enqueued_us;
    gint64 deadline_us; /* 0: none */
    guint timeout_ms;
    guint bypassed; /* admissions past this waiter while it was the head */
    GTask *task;    /* owned */
    GSource *timeout_source;
    GSource *cancel_source;
    GList link; /* node in self->queue, data = this */
} Waiter;

typedef struct {
    GTask *task;         /* owned */
    SbxReservation *res; /* owned, or NULL */
    GError *error;       /* owned, or NULL */
} Completion;

struct _SbxAdmission {
    GObject parent_instance;

    SbxAdmissionConfig cfg;
    SbxAdmissionHooks hooks;
    GMainContext *context;
    char *memory_source;
    char *cpu_source;

    guint64 mem_budget;
    guint64 cpu_budget;
    guint64 mem_in_use;
    guint64 cpu_in_use;
    guint reservations;
    guint64 next_ticket;
    gboolean stopped;

    GQueue queue;       /* of Waiter, FIFO by ticket */
    GQueue completions; /* of Completion */
    GSource *complete_source;
    GSource *recheck_source;

    /* last gate sample, for error messages */
    SbxHostPressure last_gates;
    gboolean last_gates_valid;

    SbxAdmissionStats stats;

    struct HostGates *host_gates; /* owned; set by sbx_admission_new_for_host */
};

G_DEFINE_TYPE(SbxAdmission, sbx_admission, G_TYPE_OBJECT)

static void host_gates_free(struct HostGates *hg);

/* ---- configuration ------------------------------------------------------ */

void
sbx_admission_config_init(SbxAdmissionConfig *cfg)
{
    *cfg = (SbxAdmissionConfig){
        .memory_overcommit_ratio = 5.0,
        .cpu_overcommit_ratio = 2.0,
        .memory_reserve_ratio = 0.08,
        .cpu_reserve_cores = 0.5,
        .vm_memory_overhead_bytes = 80 * MiB,
        .tcg_tb_cache_bytes = 128 * MiB,
        .vm_cpu_overhead_millis = 250,
        .psi_full_avg10_threshold = 10.0,
        .available_memory_floor_bytes = 0,
        .bypass_limit = 8,
        .lookahead = 64,
        .gate_recheck_ms = 1000,
    };
}

void
sbx_admission_config_vm_cost(const SbxAdmissionConfig *cfg, guint64 guest_memory_bytes, guint vcpus,
                             gboolean tcg, guint64 *out_mem_bytes, guint64 *out_cpu_millis)
{
    *out_mem_bytes =
        guest_memory_bytes + cfg->vm_memory_overhead_bytes + (tcg ? cfg->tcg_tb_cache_bytes : 0);
    *out_cpu_millis = (guint64)vcpus * 1000 + cfg->vm_cpu_overhead_millis;
}

void
sbx_admission_compute_budgets(const SbxAdmissionConfig *cfg, const SbxHostCapacity *host,
                              guint64 *out_mem_bytes, guint64 *out_cpu_millis)
{
    double host_mem =
        (double)(cfg->host_memory_bytes ? cfg->host_memory_bytes : host->memory_bytes);
    double host_cpu =
        (double)(cfg->host_cpu_millis ? cfg->host_cpu_millis : host->cpu_millis) / 1000.0;
    double mem = host_mem * (1.0 - cfg->memory_reserve_ratio) * cfg->memory_overcommit_ratio;
    double cpu = MAX(0.0, host_cpu - cfg->cpu_reserve_cores) * cfg->cpu_overcommit_ratio;

    *out_mem_bytes = mem <= 0 ? 0 : (guint64)mem; /* truncates: floor */
    *out_cpu_millis = cpu <= 0 ? 0 : (guint64)(cpu * 1000.0 + 0.5);
}

/* ---- helpers ------------------------------------------------------------ */

static gint64
now_us(SbxAdmission *self)
{
    return self->hooks.now_us ? self->hooks.now_us(self->hooks.user_data) : g_get_monotonic_time();
}

/* Plain ASCII (g_format_size puts a no-break space before the unit). */
static char *
fmt_bytes(guint64 b)
{
    if (b >= 1024 * MiB)
        return g_strdup_printf("%.1f GiB", (double)b / (1024.0 * MiB));
    if (b >= MiB)
        return g_strdup_printf("%.1f MiB", (double)b / MiB);
    return g_strdup_printf("%" G_GUINT64_FORMAT " bytes", b);
}

/* "requested X memory / Y CPUs; in use A / B by N reservations; budget C / D" */
static char *
describe_state(SbxAdmission *self, guint64 mem, guint64 cpu)
{
    g_autofree char *req_m = fmt_bytes(mem);
    g_autofree char *use_m = fmt_bytes(self->mem_in_use);
    g_autofree char *bud_m = fmt_bytes(self->mem_budget);

    return g_strdup_printf(
        "requested %s memory and %.2f CPUs; in use %s and %.2f CPUs by %u reservation(s), "
        "%u waiting; budget %s memory (%s x (1 - memory_reserve_ratio %.2f) x "
        "memory_overcommit_ratio %.2f) and %.2f CPUs ((%s - cpu_reserve_cores %.2f) x "
        "cpu_overcommit_ratio %.2f)",
        req_m, cpu / 1000.0, use_m, self->cpu_in_use / 1000.0, self->reservations,
        self->queue.length, bud_m, self->memory_source, self->cfg.memory_reserve_ratio,
        self->cfg.memory_overcommit_ratio, self->cpu_budget / 1000.0, self->cpu_source,
        self->cfg.cpu_reserve_cores, self->cfg.cpu_overcommit_ratio);
}

/* ---- completions ---------------------------------------------------------- */

static gboolean
drain_completions(gpointer data)
{
    SbxAdmission *self = data;
    Completion *c;

    g_clear_pointer(&self->complete_source, g_source_unref);
    g_object_ref(self);
    while ((c = g_queue_pop_head(&self->completions))) {
        if (c->res)
            g_task_return_pointer(c->task, c->res, (GDestroyNotify)sbx_reservation_free);
        else
            g_task_return_error(c->task, c->error);
        g_object_unref(c->task);
        g_free(c);
    }
    g_object_unref(self);
    return G_SOURCE_REMOVE;
}

static void
push_completion(SbxAdmission *self, GTask *task, SbxReservation *res, GError *error)
{
    Completion *c = g_new0(Completion, 1);

    c->task = task;
    c->res = res;
    c->error = error;
    g_queue_push_tail(&self->completions, c);
    if (!self->complete_source) {
        self->complete_source = g_idle_source_new();
        g_source_set_priority(self->complete_source, G_PRIORITY_DEFAULT);
        g_source_set_name(self->complete_source, "[sbx] admission completions");
        g_source_set_callback(self->complete_source, drain_completions, self, NULL);
        g_source_attach(self->complete_source, self->context);
    }
}

static SbxReservation *
reservation_new(SbxAdmission *self, guint64 ticket, guint64 mem, guint64 cpu, guint64 admission_ms)
{
    SbxReservation *res = g_new0(SbxReservation, 1);

    res->owner = g_object_ref(self);
    res->ticket = ticket;
    res->mem = mem;
    res->cpu = cpu;
    res->admission_ms = admission_ms;
    self->mem_in_use += mem;
    self->cpu_in_use += cpu;
    self->reservations++;
    return res;
}

/* ---- waiters ------------------------------------------------------------ */

static void
waiter_detach_sources(Waiter *w)
{
    if (w->timeout_source) {
        g_source_destroy(w->timeout_source);
        g_clear_pointer(&w->timeout_source, g_source_unref);
    }
    if (w->cancel_source) {
        g_source_destroy(w->cancel_source);
        g_clear_pointer(&w->cancel_source, g_source_unref);
    }
}

/* Unlink @w, queue its completion and free it. */
static void
waiter_finish(SbxAdmission *self, Waiter *w, SbxReservation *res, GError *error)
{
    g_queue_unlink(&self->queue, &w->link);
    waiter_detach_sources(w);
    push_completion(self, g_steal_pointer(&w->task), res, error);
    g_free(w);
}

typedef struct {
    gboolean sampled;
    gboolean have;
    SbxHostPressure gates;
    gboolean gate_blocked;
} Pass;

static void
pass_sample(SbxAdmission *self, Pass *pass)
{
    if (pass->sampled)
        return;
    pass->sampled = TRUE;
    if (!self->hooks.sample_gates)
        return;
    pass->have = self->hooks.sample_gates(self->hooks.user_data, &pass->gates);
    self->last_gates = pass->gates;
    self->last_gates_valid = pass->have;
}

static gboolean
fits(SbxAdmission *self, guint64 mem, guint64 cpu, Pass *pass)
{
    if (self->mem_in_use + mem > self->mem_budget || self->cpu_in_use + cpu > self->cpu_budget)
        return FALSE;
    pass_sample(self, pass);
    if (!pass->have)
        return TRUE;
    if (self->cfg.psi_full_avg10_threshold > 0 && pass->gates.psi_memory_full_avg10 >= 0 &&
        pass->gates.psi_memory_full_avg10 >= self->cfg.psi_full_avg10_threshold) {
        pass->gate_blocked = TRUE;
        return FALSE;
    }
    if (self->cfg.available_memory_floor_bytes > 0 && pass->gates.memory_available_bytes >= 0 &&
        (guint64)pass->gates.memory_available_bytes <
            mem + self->cfg.available_memory_floor_bytes) {
        pass->gate_blocked = TRUE;
        return FALSE;
    }
    return TRUE;
}

static void
grant(SbxAdmission *self, Waiter *w, Pass *pass, gint64 now)
{
    gint64 waited = MAX(0, now - w->enqueued_us);
    SbxReservation *res =
        reservation_new(self, w->ticket, w->mem, w->cpu, (guint64)(waited / 1000));

    if (pass->have && pass->gates.memory_available_bytes >= 0)
        pass->gates.memory_available_bytes =
            MAX(0, pass->gates.memory_available_bytes - (gint64)w->mem);
    self->stats.wakeups++;
    waiter_finish(self, w, res, NULL);
}

static gboolean recheck_cb(gpointer data);

static void
update_recheck_timer(SbxAdmission *self)
{
    gboolean want = !self->stopped && !self->hooks.manual_ticks && self->hooks.sample_gates &&
                    self->queue.length > 0;

    if (want && !self->recheck_source) {
        self->recheck_source = g_timeout_source_new(self->cfg.gate_recheck_ms);
        g_source_set_name(self->recheck_source, "[sbx] admission gate re-check");
        g_source_set_callback(self->recheck_source, recheck_cb, self, NULL);
        g_source_attach(self->recheck_source, self->context);
    } else if (!want && self->recheck_source) {
        g_source_destroy(self->recheck_source);
        g_clear_pointer(&self->recheck_source, g_source_unref);
    }
}

/* Admit, in ticket order, every waiter the policy allows. */
static void
dispatch(SbxAdmission *self)
{
    Pass pass = {0};
    gint64 now;
    Waiter *head;
    GList *l;
    guint scanned = 0;

    if (self->stopped || self->queue.length == 0) {
        update_recheck_timer(self);
        return;
    }
    now = now_us(self);
    /* 1. The head and whoever follows it while each fits in turn. */
    while ((head = g_queue_peek_head(&self->queue)) && fits(self, head->mem, head->cpu, &pass))
        grant(self, head, &pass, now);
    if (!head) {
        update_recheck_timer(self);
        return;
    }
    if (pass.gate_blocked)
        self->stats.gate_blocks++;
    /* 2. The head is blocked: bounded bypass, in ticket order. */
    l = head->link.next;
    while (l && head->bypassed < self->cfg.bypass_limit && scanned < self->cfg.lookahead &&
           self->mem_in_use < self->mem_budget && self->cpu_in_use < self->cpu_budget) {
        Waiter *w = l->data;
        l = l->next;
        if (fits(self, w->mem, w->cpu, &pass)) {
            head->bypassed++;
            self->stats.bypass_grants++;
            grant(self, w, &pass, now);
        } else {
            scanned++; /* the window is the first `lookahead` waiters left behind the head */
        }
    }
    update_recheck_timer(self);
}

static void
fail_waiter(SbxAdmission *self, Waiter *w, GError *error)
{
    waiter_finish(self, w, NULL, error);
    dispatch(self); /* the head may have changed */
}

static GError *
timeout_error(SbxAdmission *self, Waiter *w)
{
    g_autofree char *state = describe_state(self, w->mem, w->cpu);
    g_autofree char *gates = NULL;

    if (self->last_gates_valid)
        gates = g_strdup_printf(
            "; memory PSI full avg10 %.2f (threshold psi_full_avg10_threshold %.2f), "
            "available %" G_GINT64_FORMAT " MiB (floor available_memory_floor_mb %" G_GUINT64_FORMAT
            ")",
            self->last_gates.psi_memory_full_avg10, self->cfg.psi_full_avg10_threshold,
            self->last_gates.memory_available_bytes < 0
                ? (gint64)-1
                : self->last_gates.memory_available_bytes / (gint64)MiB,
            self->cfg.available_memory_floor_bytes / MiB);
    return g_error_new(SBX_ADMISSION_ERROR, SBX_ADMISSION_ERROR_TIMEOUT,
                       "admission timed out after %u ms at queue position %u: %s%s; raise the "
                       "overcommit ratios in "
                       "[admission] or the request timeout",
                       w->timeout_ms, g_queue_link_index(&self->queue, &w->link) + 1, state,
                       gates ? gates : "");
}

static gboolean
waiter_timeout_cb(gpointer data)
{
    Waiter *w = data;
    SbxAdmission *self = w->self;

    self->stats.timeouts++;
    fail_waiter(self, w, timeout_error(self, w));
    return G_SOURCE_REMOVE;
}

static gboolean
waiter_cancelled_cb(GCancellable *cancellable, gpointer data)
{
    Waiter *w = data;
    SbxAdmission *self = w->self;

    self->stats.cancellations++;
    fail_waiter(self, w,
                g_error_new_literal(G_IO_ERROR, G_IO_ERROR_CANCELLED, "admission was cancelled"));
    return G_SOURCE_REMOVE;
}

static gboolean
recheck_cb(gpointer data)
{
    SbxAdmission *self = data;

    /* tick() may destroy this source through update_recheck_timer(). */
    g_clear_pointer(&self->recheck_source, g_source_unref);
    sbx_admission_tick(self);
    return G_SOURCE_REMOVE;
}

/* ---- public --------------------------------------------------------------- */

SbxAdmission *
sbx_admission_new(const SbxAdmissionConfig *cfg, const SbxHostCapacity *host,
                  const SbxAdmissionHooks *hooks)
{
    SbxAdmission *self = g_object_new(SBX_TYPE_ADMISSION, NULL);

    self->cfg = *cfg;
    if (self->cfg.lookahead == 0)
        self->cfg.lookahead = 1;
    if (self->cfg.gate_recheck_ms == 0)
        self->cfg.gate_recheck_ms = 1000;
    if (hooks)
        self->hooks = *hooks;
    sbx_admission_compute_budgets(&self->cfg, host, &self->mem_budget, &self->cpu_budget);
    self->memory_source =
        cfg->host_memory_bytes
            ? g_strdup_printf("host_memory_mb %" G_GUINT64_FORMAT, cfg->host_memory_bytes / MiB)
            : g_strdup_printf("host %" G_GUINT64_FORMAT " MiB from %s", host->memory_bytes / MiB,
                              host->memory_source ? host->memory_source : "?");
    self->cpu_source = cfg->host_cpu_millis
                           ? g_strdup_printf("host_cpus %.2f", cfg->host_cpu_millis / 1000.0)
                           : g_strdup_printf("host %.2f CPUs from %s", host->cpu_millis / 1000.0,
                                             host->cpu_source ? host->cpu_source : "?");
    return self;
}

void
sbx_admission_acquire_async(SbxAdmission *self, guint64 mem_bytes, guint64 cpu_millis,
                            guint timeout_ms, GCancellable *cancellable,
                            GAsyncReadyCallback callback, gpointer user_data)
{
    g_autoptr(GTask) task = NULL;
    Waiter *w;
    guint64 ticket;

    g_return_if_fail(SBX_IS_ADMISSION(self));
    g_return_if_fail(mem_bytes > 0 && cpu_millis > 0);
    task = g_task_new(self, cancellable, callback, user_data);
    g_task_set_source_tag(task, sbx_admission_acquire_async);
    ticket = ++self->next_ticket;

    if (g_task_return_error_if_cancelled(task))
        return;
    if (self->stopped) {
        g_task_return_new_error(task, SBX_ADMISSION_ERROR, SBX_ADMISSION_ERROR_STOPPED,
                                "admission is stopped (the scheduler is shutting down)");
        return;
    }
    if (mem_bytes > self->mem_budget || cpu_millis > self->cpu_budget) {
        g_autofree char *state = describe_state(self, mem_bytes, cpu_millis);
        g_task_return_new_error(
            task, SBX_ADMISSION_ERROR, SBX_ADMISSION_ERROR_NO_CAPACITY,
            "request is larger than the whole admission budget: %s; to admit it raise [admission] "
            "%s in the scheduler configuration",
            state,
            mem_bytes > self->mem_budget ? "memory_overcommit_ratio (or lower memory_reserve_ratio)"
                                         : "cpu_overcommit_ratio (or lower cpu_reserve_cores)");
        return;
    }
    /* No barging: a request may skip the queue only when the queue is empty. */
    if (self->queue.length == 0) {
        Pass pass = {0};
        if (fits(self, mem_bytes, cpu_millis, &pass)) {
            self->stats.immediate_grants++;
            g_task_return_pointer(task, reservation_new(self, ticket, mem_bytes, cpu_millis, 0),
                                  (GDestroyNotify)sbx_reservation_free);
            return;
        }
        if (pass.gate_blocked)
            self->stats.gate_blocks++;
    }

    w = g_new0(Waiter, 1);
    w->self = self;
    w->ticket = ticket;
    w->mem = mem_bytes;
    w->cpu = cpu_millis;
    w->enqueued_us = now_us(self);
    w->timeout_ms = timeout_ms;
    w->deadline_us = timeout_ms ? w->enqueued_us + (gint64)timeout_ms * 1000 : 0;
    w->task = g_steal_pointer(&task);
    w->link.data = w;
    g_queue_push_tail_link(&self->queue, &w->link);

    if (timeout_ms && !self->hooks.manual_ticks) {
        w->timeout_source = g_timeout_source_new(timeout_ms);
        g_source_set_name(w->timeout_source, "[sbx] admission timeout");
        g_source_set_callback(w->timeout_source, waiter_timeout_cb, w, NULL);
        g_source_attach(w->timeout_source, self->context);
    }
    if (cancellable) {
        w->cancel_source = g_cancellable_source_new(cancellable);
        g_source_set_callback(w->cancel_source, G_SOURCE_FUNC(waiter_cancelled_cb), w, NULL);
        g_source_attach(w->cancel_source, self->context);
    }
    /* Normally a no-op (the queue was non-empty, so its head is blocked),
     * but a new tail may be admitted past a blocked head within the bypass
     * budget, and it arms the gate re-check timer. */
    dispatch(self);
}

SbxReservation *
sbx_admission_acquire_finish(SbxAdmission *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), NULL);
    return g_task_propagate_pointer(G_TASK(result), error);
}

void
sbx_admission_stop(SbxAdmission *self)
{
    Waiter *w;

    g_return_if_fail(SBX_IS_ADMISSION(self));
    if (self->stopped)
        return;
    self->stopped = TRUE;
    while ((w = g_queue_peek_head(&self->queue)))
        waiter_finish(self, w, NULL,
                      g_error_new_literal(SBX_ADMISSION_ERROR, SBX_ADMISSION_ERROR_STOPPED,
                                          "admission was stopped while the request was waiting"));
    update_recheck_timer(self);
}

void
sbx_admission_tick(SbxAdmission *self)
{
    gint64 now = now_us(self);
    GList *l;

    g_return_if_fail(SBX_IS_ADMISSION(self));
    g_object_ref(self);
    l = self->queue.head;
    while (l) {
        Waiter *w = l->data;
        l = l->next;
        if (w->deadline_us && w->deadline_us <= now) {
            self->stats.timeouts++;
            waiter_finish(self, w, NULL, timeout_error(self, w));
        }
    }
    dispatch(self);
    g_object_unref(self);
}

void
sbx_admission_get_stats(SbxAdmission *self, SbxAdmissionStats *out)
{
    g_return_if_fail(SBX_IS_ADMISSION(self));
    *out = self->stats;
    out->memory_budget_bytes = self->mem_budget;
    out->cpu_budget_millis = self->cpu_budget;
    out->memory_in_use_bytes = self->mem_in_use;
    out->cpu_in_use_millis = self->cpu_in_use;
    out->reservations = self->reservations;
    out->queue_length = self->queue.length;
}

guint
sbx_admission_max_slots(SbxAdmission *self, guint64 mem_bytes, guint64 cpu_millis)
{
    guint64 by_mem, by_cpu;

    g_return_val_if_fail(SBX_IS_ADMISSION(self), 0);
    by_mem = mem_bytes ? self->mem_budget / mem_bytes : G_MAXUINT;
    by_cpu = cpu_millis ? self->cpu_budget / cpu_millis : G_MAXUINT;
    return (guint)MIN(MIN(by_mem, by_cpu), (guint64)G_MAXUINT);
}

guint64
sbx_reservation_get_memory_bytes(const SbxReservation *res)
{
    return res->mem;
}

guint64
sbx_reservation_get_cpu_millis(const SbxReservation *res)
{
    return res->cpu;
}

guint64
sbx_reservation_get_admission_ms(const SbxReservation *res)
{
    return res->admission_ms;
}

guint64
sbx_reservation_get_ticket(const SbxReservation *res)
{
    return res->ticket;
}

void
sbx_reservation_release(SbxReservation *res)
{
    SbxAdmission *self;

    g_return_if_fail(res != NULL);
    if (res->released)
        return;
    res->released = TRUE;
    self = res->owner;
    g_assert(self->mem_in_use >= res->mem && self->cpu_in_use >= res->cpu &&
             self->reservations > 0);
    self->mem_in_use -= res->mem;
    self->cpu_in_use -= res->cpu;
    self->reservations--;
    self->stats.releases++;
    dispatch(self);
}

void
sbx_reservation_free(SbxReservation *res)
{
    if (!res)
        return;
    sbx_reservation_release(res);
    g_object_unref(res->owner);
    g_free(res);
}

/* ---- the real host ------------------------------------------------------- */

/* Real gate provider: PSI + MemAvailable (+ cgroup headroom), cached for
 * HOST_GATES_TTL_US so a burst of releases reads procfs at most once. */
#define HOST_GATES_TTL_US (100 * 1000)

struct HostGates {
    char *proc_root;
    char *sys_root;
    char *cgroup_root;
    SbxHostCapacity cap;
    gint64 sampled_at;
    SbxHostPressure cached;
};

static void
host_gates_free(struct HostGates *hg)
{
    g_free(hg->proc_root);
    g_free(hg->sys_root);
    g_free(hg->cgroup_root);
    sbx_host_capacity_clear(&hg->cap);
    g_free(hg);
}

static gboolean
host_gates_sample(gpointer data, SbxHostPressure *out)
{
    struct HostGates *hg = data;
    gint64 now = g_get_monotonic_time();

    if (hg->sampled_at == 0 || now - hg->sampled_at >= HOST_GATES_TTL_US) {
        SbxHostRoots roots = {hg->proc_root, hg->sys_root, hg->cgroup_root};
        sbx_host_pressure_read(&roots, &hg->cap, &hg->cached);
        hg->sampled_at = now;
    }
    *out = hg->cached;
    return out->psi_memory_full_avg10 >= 0 || out->memory_available_bytes >= 0;
}

SbxAdmission *
sbx_admission_new_for_host(const SbxAdmissionConfig *cfg, const SbxHostRoots *roots, GError **error)
{
    g_auto(SbxHostCapacity) cap = {0};
    struct HostGates *hg;
    SbxAdmissionHooks hooks = {0};
    SbxAdmission *self;

    if (!sbx_host_capacity_read(roots, &cap, error)) {
        g_prefix_error(error, "cannot read the host capacity: ");
        return NULL;
    }
    hg = g_new0(struct HostGates, 1);
    if (roots) {
        hg->proc_root = g_strdup(roots->proc_root);
        hg->sys_root = g_strdup(roots->sys_root);
        hg->cgroup_root = g_strdup(roots->cgroup_root);
    }
    hg->cap = cap;
    hg->cap.memory_source = g_strdup(cap.memory_source);
    hg->cap.cpu_source = g_strdup(cap.cpu_source);
    hg->cap.memory_usage_file = g_strdup(cap.memory_usage_file);
    hooks.sample_gates = host_gates_sample;
    hooks.user_data = hg;
    self = sbx_admission_new(cfg, &cap, &hooks);
    self->host_gates = hg;
    g_info("admission budget: %.1f GiB memory (%s), %.2f CPUs (%s)",
           self->mem_budget / (1024.0 * MiB), self->memory_source, self->cpu_budget / 1000.0,
           self->cpu_source);
    return self;
}

/* ---- GObject -------------------------------------------------------------- */

static void
sbx_admission_dispose(GObject *object)
{
    SbxAdmission *self = SBX_ADMISSION(object);

    /* Waiters hold a ref through their GTask, so the queue is empty here
     * unless stop() ran; stop() anyway for safety. */
    sbx_admission_stop(self);
    if (self->complete_source) {
        g_source_destroy(self->complete_source);
        g_clear_pointer(&self->complete_source, g_source_unref);
        drain_completions(self);
    }
    G_OBJECT_CLASS(sbx_admission_parent_class)->dispose(object);
}

static void
sbx_admission_finalize(GObject *object)
{
    SbxAdmission *self = SBX_ADMISSION(object);

    g_free(self->memory_source);
    g_free(self->cpu_source);
    if (self->host_gates)
        host_gates_free(self->host_gates);
    g_main_context_unref(self->context);
    G_OBJECT_CLASS(sbx_admission_parent_class)->finalize(object);
}

static void
sbx_admission_init(SbxAdmission *self)
{
    g_queue_init(&self->queue);
    g_queue_init(&self->completions);
    self->context = g_main_context_ref_thread_default();
}

static void
sbx_admission_class_init(SbxAdmissionClass *klass)
{
    GObjectClass *object_class = G_OBJECT_CLASS(klass);

    object_class->dispose = sbx_admission_dispose;
    object_class->finalize = sbx_admission_finalize;
}
