/* SPDX-License-Identifier: MIT
 *
 * Unit tests of scheduler/sbx-admission: budget formulas, strict FIFO under
 * 1000 waiters with one wakeup per release, the bounded-bypass policy with
 * heterogeneous sizes (checked against a mirror model after every step),
 * cancellation and timeout at every queue position, stop, no barging, the
 * PSI and available-memory gates, admission_ms. Deterministic: a fake clock,
 * fake gates, manual ticks, and the main context iterated without blocking.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "scheduler/sbx-admission.h"

#define MiB (G_GUINT64_CONSTANT(1024) * 1024)
#define GiB (MiB * 1024)

/* ---- fixtures ----------------------------------------------------------- */

static gint64 fake_now_us;
static SbxHostPressure fake_gates;
static gboolean fake_gates_available;
static guint completion_seq;

static gint64
fake_clock(gpointer data)
{
    return fake_now_us;
}

static gboolean
fake_sample(gpointer data, SbxHostPressure *out)
{
    *out = fake_gates;
    return fake_gates_available;
}

typedef struct {
    guint index; /* position in the test's own array */
    gboolean done;
    guint seq; /* completion order */
    SbxReservation *res;
    GError *error;
    guint64 mem;
    guint64 cpu;
} Req;

static void
req_clear(Req *r)
{
    g_clear_pointer(&r->res, sbx_reservation_free);
    g_clear_error(&r->error);
}

static void
acquired_cb(GObject *source, GAsyncResult *result, gpointer data)
{
    Req *r = data;

    r->res = sbx_admission_acquire_finish(SBX_ADMISSION(source), result, &r->error);
    r->done = TRUE;
    r->seq = ++completion_seq;
}

static void
run_pending(void)
{
    while (g_main_context_iteration(NULL, FALSE))
        ;
}

/* An admission object whose budget is exactly @mem_units MiB and
 * @cpu_units CPUs (ratios 1, no reserves). */
static SbxAdmission *
make_adm(guint mem_units, guint cpu_units, guint bypass_limit, guint lookahead, gboolean gates)
{
    SbxAdmissionConfig cfg;
    SbxHostCapacity host = {
        .memory_bytes = mem_units * MiB,
        .cpu_millis = cpu_units * 1000,
        .memory_source = (char *)"test",
        .cpu_source = (char *)"test",
    };
    SbxAdmissionHooks hooks = {
        .now_us = fake_clock,
        .sample_gates = gates ? fake_sample : NULL,
        .manual_ticks = TRUE,
    };

    sbx_admission_config_init(&cfg);
    cfg.memory_overcommit_ratio = 1.0;
    cfg.cpu_overcommit_ratio = 1.0;
    cfg.memory_reserve_ratio = 0;
    cfg.cpu_reserve_cores = 0;
    cfg.bypass_limit = bypass_limit;
    cfg.lookahead = lookahead;
    fake_now_us = 1000000;
    fake_gates = (SbxHostPressure){.psi_memory_full_avg10 = 0, .memory_available_bytes = 100 * GiB};
    fake_gates_available = TRUE;
    completion_seq = 0;
    return sbx_admission_new(&cfg, &host, &hooks);
}

static void
acquire(SbxAdmission *adm, Req *r, guint64 mem_mib, guint64 cpus, guint timeout_ms, GCancellable *c)
{
    r->mem = mem_mib * MiB;
    r->cpu = cpus * 1000;
    sbx_admission_acquire_async(adm, r->mem, r->cpu, timeout_ms, c, acquired_cb, r);
}

static SbxAdmissionStats
stats(SbxAdmission *adm)
{
    SbxAdmissionStats s;
    sbx_admission_get_stats(adm, &s);
    return s;
}

/* ---- budgets ------------------------------------------------------------ */

static void
test_budget_formula(void **state)
{
    SbxAdmissionConfig cfg;
    SbxHostCapacity host = {.memory_bytes = 24 * GiB, .cpu_millis = 2000};
    guint64 mem, cpu;

    sbx_admission_config_init(&cfg);
    assert_true(cfg.cpu_overcommit_ratio == 2.0 && cfg.memory_overcommit_ratio == 5.0);
    sbx_admission_compute_budgets(&cfg, &host, &mem, &cpu);
    /* 24 GiB x 0.92 x 5 */
    assert_int_equal(mem, (guint64)(24.0 * GiB * 0.92 * 5.0));
    /* (2 - 0.5) x 2 */
    assert_int_equal(cpu, 3000);

    /* overrides win over the host */
    cfg.host_memory_bytes = 1 * GiB;
    cfg.host_cpu_millis = 16000;
    cfg.memory_overcommit_ratio = 1.0;
    cfg.memory_reserve_ratio = 0.5;
    sbx_admission_compute_budgets(&cfg, &host, &mem, &cpu);
    assert_int_equal(mem, 512 * MiB);
    assert_int_equal(cpu, 31000);

    /* reserve larger than the host: no budget, never negative */
    cfg.host_cpu_millis = 0;
    host.cpu_millis = 400;
    sbx_admission_compute_budgets(&cfg, &host, &mem, &cpu);
    assert_int_equal(cpu, 0);

    /* per-VM cost: guest + overhead (+ TB cache under TCG), vcpus + overhead */
    sbx_admission_config_init(&cfg);
    sbx_admission_config_vm_cost(&cfg, 512 * MiB, 1, TRUE, &mem, &cpu);
    assert_int_equal(mem, (512 + 80 + 128) * MiB);
    assert_int_equal(cpu, 1250);
    sbx_admission_config_vm_cost(&cfg, 512 * MiB, 2, FALSE, &mem, &cpu);
    assert_int_equal(mem, (512 + 80) * MiB);
    assert_int_equal(cpu, 2250);
}

static void
test_max_slots(void **state)
{
    g_autoptr(SbxAdmission) adm = make_adm(1000, 10, 8, 64, FALSE);

    assert_int_equal(sbx_admission_max_slots(adm, 100 * MiB, 1000), 10);
    assert_int_equal(sbx_admission_max_slots(adm, 300 * MiB, 1000), 3);
    assert_int_equal(sbx_admission_max_slots(adm, 10 * MiB, 4000), 2);
}

/* ---- FIFO under 1000 waiters ---------------------------------------------- */

#define N_FIFO 1000
#define SLOTS  10

static void
test_fifo_1000_one_wakeup_per_release(void **state)
{
    g_autoptr(SbxAdmission) adm = make_adm(SLOTS * 100, 100, 8, 64, FALSE);
    Req *held = g_new0(Req, SLOTS);
    Req *w = g_new0(Req, N_FIFO);
    GQueue holders = G_QUEUE_INIT; /* Req* holding a reservation, oldest first */
    guint64 releases_with_waiters = 0;

    for (guint i = 0; i < SLOTS; i++) {
        acquire(adm, &held[i], 100, 1, 0, NULL);
        g_queue_push_tail(&holders, &held[i]);
    }
    run_pending();
    for (guint i = 0; i < SLOTS; i++)
        assert_non_null(held[i].res);
    assert_int_equal(stats(adm).immediate_grants, SLOTS);

    for (guint i = 0; i < N_FIFO; i++) {
        w[i].index = i;
        acquire(adm, &w[i], 100, 1, 0, NULL);
    }
    run_pending();
    assert_int_equal(stats(adm).queue_length, N_FIFO);
    assert_int_equal(stats(adm).wakeups, 0);

    completion_seq = 0;
    for (guint step = 0; step < N_FIFO + SLOTS; step++) {
        Req *r = g_queue_pop_head(&holders);
        guint64 before = stats(adm).wakeups;
        gboolean waiters = stats(adm).queue_length > 0;

        sbx_reservation_release(r->res);
        run_pending();
        if (waiters) {
            releases_with_waiters++;
            /* exactly one waiter woken, and it is the oldest */
            assert_int_equal(stats(adm).wakeups - before, 1);
            assert_true(w[step].done);
            assert_non_null(w[step].res);
            assert_int_equal(w[step].seq, step + 1);
            if (step + 1 < N_FIFO)
                assert_false(w[step + 1].done);
            g_queue_push_tail(&holders, &w[step]);
        } else {
            assert_int_equal(stats(adm).wakeups, before);
        }
    }
    assert_int_equal(stats(adm).wakeups, N_FIFO);
    assert_int_equal(releases_with_waiters, N_FIFO);
    assert_int_equal(stats(adm).bypass_grants, 0);
    assert_int_equal(stats(adm).reservations, 0);
    assert_int_equal(stats(adm).memory_in_use_bytes, 0);
    assert_int_equal(stats(adm).cpu_in_use_millis, 0);
    /* tickets are in arrival order */
    for (guint i = 1; i < N_FIFO; i++)
        assert_true(sbx_reservation_get_ticket(w[i].res) >
                    sbx_reservation_get_ticket(w[i - 1].res));

    for (guint i = 0; i < SLOTS; i++)
        req_clear(&held[i]);
    for (guint i = 0; i < N_FIFO; i++)
        req_clear(&w[i]);
    g_free(held);
    g_free(w);
}

/* ---- heterogeneous sizes: the policy, step by step --------------------- */

typedef struct {
    Req *r;
    guint bypassed;
} Mirror;

/* Mirror of the queue: apply completions in grant order, then check that no
 * waiter that fits is left asleep beyond the policy. */
static void
check_policy(SbxAdmission *adm, GQueue *mirror, Req *reqs, guint n, guint *seq_seen, guint K,
             guint lookahead, guint64 mem_budget, guint64 cpu_budget, GQueue *holders)
{
    SbxAdmissionStats s = stats(adm);

    /* completions in grant order */
    for (;;) {
        Req *next = NULL;
        for (guint i = 0; i < n; i++)
            if (reqs[i].done && reqs[i].seq == *seq_seen + 1)
                next = &reqs[i];
        if (!next)
            break;
        (*seq_seen)++;
        assert_non_null(next->res);
        g_queue_push_tail(holders, next);
        {
            Mirror *head = g_queue_peek_head(mirror);
            assert_non_null(head);
            if (head->r == next) {
                g_free(g_queue_pop_head(mirror));
            } else {
                /* granted past the head: must be within the bypass budget */
                head->bypassed++;
                assert_true(head->bypassed <= K);
                for (GList *l = mirror->head; l; l = l->next)
                    if (((Mirror *)l->data)->r == next) {
                        g_free(l->data);
                        g_queue_delete_link(mirror, l);
                        break;
                    }
            }
        }
    }
    assert_int_equal(s.queue_length, mirror->length);
    if (mirror->length == 0)
        return;
    {
        Mirror *head = g_queue_peek_head(mirror);
        guint64 free_mem = mem_budget - s.memory_in_use_bytes;
        guint64 free_cpu = cpu_budget - s.cpu_in_use_millis;
        guint looked = 0;

        /* a fitting head is never asleep */
        assert_false(head->r->mem <= free_mem && head->r->cpu <= free_cpu);
        if (head->bypassed >= K)
            return; /* policy: head-of-line blocking */
        for (GList *l = mirror->head->next; l && looked < lookahead; l = l->next, looked++) {
            Mirror *m = l->data;
            /* bypass budget left and it fits: it must have been admitted */
            assert_false(m->r->mem <= free_mem && m->r->cpu <= free_cpu);
        }
    }
}

static void
run_heterogeneous(guint K, guint lookahead, guint32 seed)
{
    enum { N = 400 };
    const guint64 mem_budget_units = 1000, cpu_units = 16;
    g_autoptr(SbxAdmission) adm = make_adm(mem_budget_units, cpu_units, K, lookahead, FALSE);
    g_autoptr(GRand) rnd = g_rand_new_with_seed(seed);
    Req *reqs = g_new0(Req, N);
    GQueue mirror = G_QUEUE_INIT;
    GQueue holders = G_QUEUE_INIT;
    guint seq_seen = 0, issued = 0;
    guint step = 0;

    while (seq_seen < N) {
        /* either issue a request or release a random holder */
        gboolean issue = issued < N && (holders.length == 0 || g_rand_int_range(rnd, 0, 100) < 55);
        if (issue) {
            Req *r = &reqs[issued];
            Mirror *m = g_new0(Mirror, 1);
            /* mostly small, some big (up to the whole budget) */
            guint64 mem = g_rand_int_range(rnd, 0, 10) == 0 ? g_rand_int_range(rnd, 400, 1001)
                                                            : g_rand_int_range(rnd, 20, 200);
            guint64 cpu = g_rand_int_range(rnd, 1, 5);
            r->index = issued;
            m->r = r;
            acquire(adm, r, mem, cpu, 0, NULL);
            /* an immediate grant happens only on an empty queue, where the
             * mirror sees it as the head's own completion */
            g_queue_push_tail(&mirror, m);
            run_pending();
            issued++;
        } else {
            guint pick = g_rand_int_range(rnd, 0, holders.length);
            Req *h = g_queue_pop_nth(&holders, pick);
            sbx_reservation_release(h->res);
            run_pending();
        }
        step++;
        check_policy(adm, &mirror, reqs, N, &seq_seen, K, lookahead, mem_budget_units * MiB,
                     cpu_units * 1000, &holders);
        assert_true(step < 100000); /* no starvation: everything completes */
    }
    assert_int_equal(stats(adm).wakeups + stats(adm).immediate_grants, N);
    assert_true(stats(adm).bypass_grants <= stats(adm).wakeups);
    if (K == 0)
        assert_int_equal(stats(adm).bypass_grants, 0);
    else
        assert_true(stats(adm).bypass_grants > 0); /* the scenario does exercise bypass */
    while (holders.length)
        sbx_reservation_release(((Req *)g_queue_pop_head(&holders))->res);
    for (guint i = 0; i < N; i++)
        req_clear(&reqs[i]);
    g_free(reqs);
}

static void
test_heterogeneous_policy(void **state)
{
    run_heterogeneous(8, 64, 1);
    run_heterogeneous(8, 64, 2);
    run_heterogeneous(2, 4, 3);
    run_heterogeneous(0, 64, 4);
    run_heterogeneous(1000, 1000, 5);
}

/* Big request at the head, small ones behind: bounded bypass, then
 * head-of-line blocking until the head fits; no lost wakeup. */
static void
test_big_head_bounded_bypass(void **state)
{
    g_autoptr(SbxAdmission) adm = make_adm(10, 100, 2, 64, FALSE);
    Req a = {0}, b = {0}, c = {0}, d = {0}, e = {0};

    acquire(adm, &a, 6, 1, 0, NULL);
    run_pending();
    assert_non_null(a.res);
    acquire(adm, &b, 7, 1, 0, NULL); /* blocked head: 4 free */
    acquire(adm, &c, 2, 1, 0, NULL); /* bypass 1 */
    acquire(adm, &d, 2, 1, 0, NULL); /* bypass 2 */
    run_pending();
    assert_false(b.done);
    assert_non_null(c.res);
    assert_non_null(d.res);
    assert_int_equal(stats(adm).bypass_grants, 2);
    acquire(adm, &e, 1, 1, 0, NULL);
    sbx_reservation_release(c.res);
    run_pending();
    /* 2 MiB free and E fits, but the bypass budget of B is spent */
    assert_false(e.done);
    assert_false(b.done);
    sbx_reservation_release(a.res);
    run_pending();
    /* one release admits exactly the waiters that now fit, in order: B then E */
    assert_non_null(b.res);
    assert_non_null(e.res);
    assert_true(b.seq < e.seq);
    assert_int_equal(stats(adm).queue_length, 0);
    assert_int_equal(stats(adm).wakeups, 4);
    req_clear(&a);
    req_clear(&b);
    req_clear(&c);
    req_clear(&d);
    req_clear(&e);
}

/* New arrivals never take capacity ahead of the queue (bypass_limit 0). */
static void
test_no_barging(void **state)
{
    g_autoptr(SbxAdmission) adm = make_adm(10, 100, 0, 64, FALSE);
    Req a = {0}, w = {0}, n = {0};

    acquire(adm, &a, 9, 1, 0, NULL);
    run_pending();
    acquire(adm, &w, 2, 1, 0, NULL);
    run_pending();
    assert_false(w.done);
    acquire(adm, &n, 1, 1, 0, NULL); /* would fit in the free 1 MiB */
    run_pending();
    assert_false(n.done);
    assert_int_equal(stats(adm).queue_length, 2);
    sbx_reservation_release(a.res);
    run_pending();
    assert_true(w.done && n.done);
    assert_true(w.seq < n.seq);
    req_clear(&a);
    req_clear(&w);
    req_clear(&n);
}

/* ---- cancellation and timeout at every position ------------------------- */

#define NQ 6

static void
test_cancel_every_position(void **state)
{
    for (guint pos = 0; pos < NQ; pos++) {
        g_autoptr(SbxAdmission) adm = make_adm(10, 100, 0, 64, FALSE);
        Req hold = {0}, w[NQ] = {0};
        GCancellable *c[NQ];

        acquire(adm, &hold, 10, 1, 0, NULL);
        for (guint i = 0; i < NQ; i++) {
            c[i] = g_cancellable_new();
            acquire(adm, &w[i], 2, 1, 0, c[i]);
        }
        run_pending();
        g_cancellable_cancel(c[pos]);
        run_pending();
        for (guint i = 0; i < NQ; i++) {
            if (i == pos) {
                assert_true(w[i].done);
                assert_null(w[i].res);
                assert_true(g_error_matches(w[i].error, G_IO_ERROR, G_IO_ERROR_CANCELLED));
            } else {
                assert_false(w[i].done);
            }
        }
        assert_int_equal(stats(adm).queue_length, NQ - 1);
        assert_int_equal(stats(adm).cancellations, 1);
        sbx_reservation_release(hold.res);
        run_pending();
        /* 10 MiB free: the five others (2 MiB each) are admitted in order */
        {
            guint last = 0;
            for (guint i = 0; i < NQ; i++) {
                if (i == pos)
                    continue;
                assert_non_null(w[i].res);
                assert_true(w[i].seq > last);
                last = w[i].seq;
            }
        }
        /* cancelling after the grant changes nothing */
        g_cancellable_cancel(c[(pos + 1) % NQ]);
        run_pending();
        assert_int_equal(stats(adm).cancellations, 1);
        assert_int_equal(stats(adm).reservations, NQ - 1);
        req_clear(&hold);
        for (guint i = 0; i < NQ; i++) {
            req_clear(&w[i]);
            g_object_unref(c[i]);
        }
        assert_int_equal(stats(adm).reservations, 0);
    }
}

/* Cancelling a blocked big head lets the smaller request behind it in. */
static void
test_cancel_head_unblocks(void **state)
{
    g_autoptr(SbxAdmission) adm = make_adm(10, 100, 0, 64, FALSE);
    g_autoptr(GCancellable) cb = g_cancellable_new();
    Req a = {0}, big = {0}, small = {0};

    acquire(adm, &a, 5, 1, 0, NULL);
    acquire(adm, &big, 8, 1, 0, cb);
    acquire(adm, &small, 3, 1, 0, NULL);
    run_pending();
    assert_false(big.done || small.done);
    g_cancellable_cancel(cb);
    run_pending();
    assert_true(g_error_matches(big.error, G_IO_ERROR, G_IO_ERROR_CANCELLED));
    assert_non_null(small.res);
    req_clear(&a);
    req_clear(&big);
    req_clear(&small);
}

static void
test_already_cancelled(void **state)
{
    g_autoptr(SbxAdmission) adm = make_adm(10, 100, 0, 64, FALSE);
    g_autoptr(GCancellable) c = g_cancellable_new();
    Req r = {0};

    g_cancellable_cancel(c);
    acquire(adm, &r, 1, 1, 0, c);
    run_pending();
    assert_true(g_error_matches(r.error, G_IO_ERROR, G_IO_ERROR_CANCELLED));
    assert_int_equal(stats(adm).reservations, 0);
    assert_int_equal(stats(adm).queue_length, 0);
}

/* Cancelled between admission and callback: the caller sees CANCELLED and
 * the reservation goes back. */
static void
test_cancel_after_grant_before_callback(void **state)
{
    g_autoptr(SbxAdmission) adm = make_adm(10, 100, 0, 64, FALSE);
    g_autoptr(GCancellable) c = g_cancellable_new();
    Req hold = {0}, w = {0};

    acquire(adm, &hold, 10, 1, 0, NULL);
    acquire(adm, &w, 5, 1, 0, c);
    run_pending();
    sbx_reservation_release(hold.res); /* admits w; its callback is pending */
    assert_int_equal(stats(adm).reservations, 1);
    g_cancellable_cancel(c);
    run_pending();
    assert_true(g_error_matches(w.error, G_IO_ERROR, G_IO_ERROR_CANCELLED));
    assert_null(w.res);
    assert_int_equal(stats(adm).reservations, 0);
    assert_int_equal(stats(adm).memory_in_use_bytes, 0);
    req_clear(&hold);
}

static void
test_timeout_every_position(void **state)
{
    for (guint pos = 0; pos < NQ; pos++) {
        g_autoptr(SbxAdmission) adm = make_adm(10, 100, 0, 64, FALSE);
        Req hold = {0}, w[NQ] = {0};

        acquire(adm, &hold, 10, 1, 0, NULL);
        for (guint i = 0; i < NQ; i++)
            acquire(adm, &w[i], 2, 1, i == pos ? 500 : 5000, NULL);
        run_pending();
        fake_now_us += 499 * 1000;
        sbx_admission_tick(adm);
        run_pending();
        for (guint i = 0; i < NQ; i++)
            assert_false(w[i].done);
        fake_now_us += 1000;
        sbx_admission_tick(adm);
        run_pending();
        for (guint i = 0; i < NQ; i++) {
            if (i == pos) {
                assert_true(
                    g_error_matches(w[i].error, SBX_ADMISSION_ERROR, SBX_ADMISSION_ERROR_TIMEOUT));
                assert_non_null(strstr(w[i].error->message, "requested 2.0 MiB"));
                assert_non_null(strstr(w[i].error->message, "queue position"));
            } else {
                assert_false(w[i].done);
            }
        }
        assert_int_equal(stats(adm).timeouts, 1);
        assert_int_equal(stats(adm).queue_length, NQ - 1);
        fake_now_us += 1000;
        sbx_reservation_release(hold.res);
        run_pending();
        for (guint i = 0; i < NQ; i++)
            if (i != pos) {
                assert_non_null(w[i].res);
                /* queue wait only: 501 ms on the fake clock */
                assert_int_equal(sbx_reservation_get_admission_ms(w[i].res), 501);
            }
        req_clear(&hold);
        for (guint i = 0; i < NQ; i++)
            req_clear(&w[i]);
    }
}

/* ---- stop, no capacity, release ------------------------------------------- */

static void
test_stop_fails_all_waiters(void **state)
{
    g_autoptr(SbxAdmission) adm = make_adm(10, 100, 8, 64, FALSE);
    Req hold = {0}, w[NQ] = {0}, late = {0};

    acquire(adm, &hold, 10, 1, 0, NULL);
    for (guint i = 0; i < NQ; i++)
        acquire(adm, &w[i], 1 + i, 1, 0, NULL);
    run_pending();
    sbx_admission_stop(adm);
    sbx_admission_stop(adm); /* idempotent */
    run_pending();
    for (guint i = 0; i < NQ; i++)
        assert_true(g_error_matches(w[i].error, SBX_ADMISSION_ERROR, SBX_ADMISSION_ERROR_STOPPED));
    acquire(adm, &late, 1, 1, 0, NULL);
    run_pending();
    assert_true(g_error_matches(late.error, SBX_ADMISSION_ERROR, SBX_ADMISSION_ERROR_STOPPED));
    /* a held reservation still releases */
    assert_int_equal(stats(adm).reservations, 1);
    sbx_reservation_release(hold.res);
    assert_int_equal(stats(adm).reservations, 0);
    req_clear(&hold);
    req_clear(&late);
    for (guint i = 0; i < NQ; i++)
        req_clear(&w[i]);
}

static void
test_no_capacity_message(void **state)
{
    g_autoptr(SbxAdmission) adm = make_adm(1024, 4, 8, 64, FALSE);
    Req hold = {0}, big = {0}, cpu = {0};

    acquire(adm, &hold, 100, 1, 0, NULL);
    acquire(adm, &big, 2048, 1, 0, NULL);
    acquire(adm, &cpu, 1, 5, 0, NULL);
    run_pending();
    assert_true(g_error_matches(big.error, SBX_ADMISSION_ERROR, SBX_ADMISSION_ERROR_NO_CAPACITY));
    assert_non_null(strstr(big.error->message, "requested 2.0 GiB"));
    assert_non_null(strstr(big.error->message, "in use 100.0 MiB"));
    assert_non_null(strstr(big.error->message, "budget 1.0 GiB"));
    assert_non_null(strstr(big.error->message, "memory_overcommit_ratio"));
    assert_true(g_error_matches(cpu.error, SBX_ADMISSION_ERROR, SBX_ADMISSION_ERROR_NO_CAPACITY));
    assert_non_null(strstr(cpu.error->message, "cpu_overcommit_ratio"));
    assert_int_equal(stats(adm).queue_length, 0);
    req_clear(&hold);
    req_clear(&big);
    req_clear(&cpu);
}

static void
test_release_idempotent(void **state)
{
    g_autoptr(SbxAdmission) adm = make_adm(10, 100, 8, 64, FALSE);
    Req a = {0}, b = {0};

    acquire(adm, &a, 4, 2, 0, NULL);
    acquire(adm, &b, 3, 1, 0, NULL);
    run_pending();
    assert_int_equal(sbx_reservation_get_admission_ms(a.res), 0);
    assert_int_equal(sbx_reservation_get_memory_bytes(a.res), 4 * MiB);
    assert_int_equal(sbx_reservation_get_cpu_millis(a.res), 2000);
    sbx_reservation_release(a.res);
    sbx_reservation_release(a.res);
    assert_int_equal(stats(adm).memory_in_use_bytes, 3 * MiB);
    assert_int_equal(stats(adm).cpu_in_use_millis, 1000);
    assert_int_equal(stats(adm).releases, 1);
    req_clear(&a); /* free after release: no second release */
    assert_int_equal(stats(adm).releases, 1);
    req_clear(&b); /* free without release: releases */
    assert_int_equal(stats(adm).releases, 2);
    assert_int_equal(stats(adm).memory_in_use_bytes, 0);
}

/* ---- gates -------------------------------------------------------------- */

static void
test_psi_gate(void **state)
{
    g_autoptr(SbxAdmission) adm = make_adm(100, 100, 8, 64, TRUE);
    Req a = {0}, b = {0};

    fake_gates.psi_memory_full_avg10 = 25.0; /* threshold 10 */
    acquire(adm, &a, 1, 1, 0, NULL);
    acquire(adm, &b, 1, 1, 0, NULL);
    run_pending();
    assert_false(a.done || b.done);
    assert_true(stats(adm).gate_blocks > 0);
    /* pressure is gone, but nothing changes until the gates are re-checked */
    fake_gates.psi_memory_full_avg10 = 3.0;
    run_pending();
    assert_false(a.done);
    fake_now_us += 1000 * 1000;
    sbx_admission_tick(adm);
    run_pending();
    assert_true(a.done && b.done);
    assert_true(a.seq < b.seq);
    assert_int_equal(sbx_reservation_get_admission_ms(a.res), 1000);
    /* PSI unavailable: the gate is skipped */
    fake_gates.psi_memory_full_avg10 = -1;
    req_clear(&a);
    acquire(adm, &a, 1, 1, 0, NULL);
    run_pending();
    assert_non_null(a.res);
    req_clear(&a);
    req_clear(&b);
}

static void
test_available_memory_floor(void **state)
{
    SbxAdmissionConfig cfg;
    SbxHostCapacity host = {.memory_bytes = 8 * GiB, .cpu_millis = 4000};
    SbxAdmissionHooks hooks = {
        .now_us = fake_clock, .sample_gates = fake_sample, .manual_ticks = TRUE};
    g_autoptr(SbxAdmission) adm = NULL;
    Req a = {0}, b = {0};

    sbx_admission_config_init(&cfg);
    cfg.available_memory_floor_bytes = 512 * MiB;
    fake_gates_available = TRUE;
    fake_gates.psi_memory_full_avg10 = 0;
    fake_gates.memory_available_bytes = 1 * GiB;
    adm = sbx_admission_new(&cfg, &host, &hooks);
    /* 1 GiB available - 400 MiB >= 512 MiB floor: admitted, and the pass
     * counts it against the available memory */
    sbx_admission_acquire_async(adm, 400 * MiB, 1000, 0, NULL, acquired_cb, &a);
    run_pending();
    assert_non_null(a.res);
    /* the host now reports 600 MiB available: 600 - 400 < 512 */
    fake_gates.memory_available_bytes = 600 * MiB;
    sbx_admission_acquire_async(adm, 400 * MiB, 1000, 1000, NULL, acquired_cb, &b);
    run_pending();
    assert_false(b.done);
    fake_gates.memory_available_bytes = 2 * GiB; /* external recovery */
    sbx_admission_tick(adm);
    run_pending();
    assert_non_null(b.res);
    req_clear(&a);
    req_clear(&b);
}

/* ---- the real timers (no fake clock, no manual ticks) ----------------------
 * Only outcomes are asserted, never durations: the loop blocks until the
 * GLib timers fire. */

static SbxAdmission *
make_real_timers(guint gate_recheck_ms)
{
    SbxAdmissionConfig cfg;
    SbxHostCapacity host = {.memory_bytes = 10 * MiB, .cpu_millis = 100000};
    SbxAdmissionHooks hooks = {.sample_gates = fake_sample};

    sbx_admission_config_init(&cfg);
    cfg.memory_overcommit_ratio = 1.0;
    cfg.cpu_overcommit_ratio = 1.0;
    cfg.memory_reserve_ratio = 0;
    cfg.cpu_reserve_cores = 0;
    cfg.gate_recheck_ms = gate_recheck_ms;
    fake_gates = (SbxHostPressure){.psi_memory_full_avg10 = 0, .memory_available_bytes = 100 * GiB};
    fake_gates_available = TRUE;
    return sbx_admission_new(&cfg, &host, &hooks);
}

static void
test_real_timeout_timer(void **state)
{
    g_autoptr(SbxAdmission) adm = make_real_timers(1000);
    Req hold = {0}, a = {0}, b = {0};

    acquire(adm, &hold, 10, 1, 0, NULL);
    acquire(adm, &a, 1, 1, 5, NULL); /* times out */
    acquire(adm, &b, 1, 1, 0, NULL); /* waits forever */
    while (!a.done)
        g_main_context_iteration(NULL, TRUE);
    assert_true(g_error_matches(a.error, SBX_ADMISSION_ERROR, SBX_ADMISSION_ERROR_TIMEOUT));
    assert_false(b.done);
    sbx_reservation_release(hold.res);
    while (!b.done)
        g_main_context_iteration(NULL, TRUE);
    assert_non_null(b.res);
    req_clear(&hold);
    req_clear(&a);
    req_clear(&b);
}

/* External recovery admits a gate-blocked waiter through the re-check timer. */
static void
test_real_gate_recheck_timer(void **state)
{
    g_autoptr(SbxAdmission) adm = make_real_timers(10);
    Req a = {0};

    fake_gates.psi_memory_full_avg10 = 50.0;
    acquire(adm, &a, 1, 1, 0, NULL);
    run_pending();
    assert_false(a.done);
    fake_gates.psi_memory_full_avg10 = 0.0;
    while (!a.done)
        g_main_context_iteration(NULL, TRUE);
    assert_non_null(a.res);
    assert_true(stats(adm).gate_blocks >= 1);
    req_clear(&a);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget_formula),
        cmocka_unit_test(test_max_slots),
        cmocka_unit_test(test_fifo_1000_one_wakeup_per_release),
        cmocka_unit_test(test_heterogeneous_policy),
        cmocka_unit_test(test_big_head_bounded_bypass),
        cmocka_unit_test(test_no_barging),
        cmocka_unit_test(test_cancel_every_position),
        cmocka_unit_test(test_cancel_head_unblocks),
        cmocka_unit_test(test_already_cancelled),
        cmocka_unit_test(test_cancel_after_grant_before_callback),
        cmocka_unit_test(test_timeout_every_position),
        cmocka_unit_test(test_stop_fails_all_waiters),
        cmocka_unit_test(test_no_capacity_message),
        cmocka_unit_test(test_release_idempotent),
        cmocka_unit_test(test_psi_gate),
        cmocka_unit_test(test_available_memory_floor),
        cmocka_unit_test(test_real_timeout_timer),
        cmocka_unit_test(test_real_gate_recheck_timer),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
