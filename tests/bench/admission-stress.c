/* SPDX-License-Identifier: MIT
 *
 * Admission stress benchmark (`make bench-admission`): a burst of 10,000
 * acquire/release pairs against a budget of 24 VM slots, uniform and mixed
 * sizes. Each admitted request holds its reservation until the next main-loop
 * turn and then releases it. Reports wakeups per release (the queue wakes only
 * the waiters it admits, so this is 1.0 for uniform sizes), what a broadcast
 * (notify_all) queue would have woken instead, bypass admissions and the
 * CPU time per pair. Uses scheduler/sbx-admission with the real clock, no gates.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/sbx-admission.h"

#define MiB (G_GUINT64_CONSTANT(1024) * 1024)

typedef struct {
    SbxAdmission *adm;
    guint outstanding;
    guint64 failures;
    guint64 releases_with_waiters;
    guint64 broadcast_wakeups; /* sum of queue lengths at each release */
    guint64 admission_ms_max;
    GPtrArray *held; /* reservations to release on the next turn */
    GSource *release_source;
} Bench;

static gboolean
release_batch(gpointer data)
{
    Bench *b = data;
    g_autoptr(GPtrArray) batch = b->held;

    b->held = g_ptr_array_new();
    g_clear_pointer(&b->release_source, g_source_unref);
    for (guint i = 0; i < batch->len; i++) {
        SbxAdmissionStats st;
        sbx_admission_get_stats(b->adm, &st);
        if (st.queue_length > 0) {
            b->releases_with_waiters++;
            b->broadcast_wakeups += st.queue_length;
        }
        sbx_reservation_free(g_ptr_array_index(batch, i));
    }
    return G_SOURCE_REMOVE;
}

static void
acquired(GObject *source, GAsyncResult *result, gpointer data)
{
    Bench *b = data;
    g_autoptr(GError) error = NULL;
    SbxReservation *res = sbx_admission_acquire_finish(SBX_ADMISSION(source), result, &error);

    b->outstanding--;
    if (!res) {
        b->failures++;
        g_printerr("acquire failed: %s\n", error->message);
        return;
    }
    b->admission_ms_max = MAX(b->admission_ms_max, sbx_reservation_get_admission_ms(res));
    g_ptr_array_add(b->held, res);
    if (!b->release_source) {
        b->release_source = g_idle_source_new();
        g_source_set_callback(b->release_source, release_batch, b, NULL);
        g_source_attach(b->release_source, NULL);
    }
}

static int
run(const char *name, guint n, gboolean mixed, guint bypass_limit)
{
    SbxAdmissionConfig cfg;
    /* 16 CPUs, 32 GiB: (16 - 0.5) x 2 = 31 CPUs -> 24 slots of 1.25 CPUs */
    SbxHostCapacity host = {.memory_bytes = 32 * 1024 * MiB,
                            .cpu_millis = 16000,
                            .memory_source = (char *)"bench",
                            .cpu_source = (char *)"bench"};
    Bench b = {0};
    SbxAdmissionStats st;
    g_autoptr(GRand) rnd = g_rand_new_with_seed(42);
    gint64 t0, t1;
    double cpu0, cpu1;
    guint64 vm_mem, vm_cpu;

    sbx_admission_config_init(&cfg);
    cfg.bypass_limit = bypass_limit;
    b.adm = sbx_admission_new(&cfg, &host, NULL);
    b.held = g_ptr_array_new();
    sbx_admission_config_vm_cost(&cfg, 512 * MiB, 1, TRUE, &vm_mem, &vm_cpu);

    t0 = g_get_monotonic_time();
    cpu0 = (double)clock() / CLOCKS_PER_SEC;
    for (guint i = 0; i < n; i++) {
        guint64 mem = vm_mem, cpu = vm_cpu;
        if (mixed) {
            /* 1, 2 or 4 vCPUs and 256 MiB .. 2 GiB guests */
            guint vcpus = 1u << g_rand_int_range(rnd, 0, 3);
            sbx_admission_config_vm_cost(&cfg, (guint64)g_rand_int_range(rnd, 1, 9) * 256 * MiB,
                                         vcpus, TRUE, &mem, &cpu);
        }
        b.outstanding++;
        sbx_admission_acquire_async(b.adm, mem, cpu, 0, NULL, acquired, &b);
    }
    while (b.outstanding > 0 || b.release_source)
        g_main_context_iteration(NULL, TRUE);
    t1 = g_get_monotonic_time();
    cpu1 = (double)clock() / CLOCKS_PER_SEC;

    sbx_admission_get_stats(b.adm, &st);
    printf("%-8s pairs=%u slots=%u bypass_limit=%u wakeups=%" G_GUINT64_FORMAT
           " immediate=%" G_GUINT64_FORMAT " releases=%" G_GUINT64_FORMAT
           " releases_with_waiters=%" G_GUINT64_FORMAT
           " wakeups_per_release=%.3f broadcast_would_wake=%" G_GUINT64_FORMAT " (%.1f per release)"
           " bypass=%" G_GUINT64_FORMAT " failures=%" G_GUINT64_FORMAT
           " wall_ms=%.1f cpu_us_per_pair=%.2f\n",
           name, n, sbx_admission_max_slots(b.adm, vm_mem, vm_cpu), bypass_limit, st.wakeups,
           st.immediate_grants, st.releases, b.releases_with_waiters,
           b.releases_with_waiters ? (double)st.wakeups / (double)b.releases_with_waiters : 0.0,
           b.broadcast_wakeups,
           b.releases_with_waiters ? (double)b.broadcast_wakeups / (double)b.releases_with_waiters
                                   : 0.0,
           st.bypass_grants, b.failures, (t1 - t0) / 1000.0, (cpu1 - cpu0) * 1e6 / n);
    if (st.reservations != 0 || st.queue_length != 0 || b.failures != 0 || st.releases != n)
        return 1;
    /* uniform sizes: exactly one wakeup per release that had waiters */
    if (!mixed && st.wakeups != b.releases_with_waiters)
        return 1;
    g_ptr_array_unref(b.held);
    g_object_unref(b.adm);
    return 0;
}

int
main(int argc, char **argv)
{
    guint n = argc > 1 ? (guint)strtoul(argv[1], NULL, 10) : 10000;
    int rc = 0;

    rc |= run("uniform", n, FALSE, 8);
    rc |= run("mixed", n, TRUE, 8);
    rc |= run("mixed", n, TRUE, 0);
    return rc;
}
