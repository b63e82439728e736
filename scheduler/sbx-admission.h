/* SPDX-License-Identifier: MIT
 *
 * Admission control: memory and CPU budgets with overcommit ratios, a strict
 * FIFO queue of differently sized requests, PSI / available-memory gates.
 *
 * Queue policy (docs/admission.md): waiters are served in ticket order. When
 * the head does not fit, up to `bypass_limit` later waiters (looked at in
 * order, at most `lookahead` of them per pass) that do fit may be admitted
 * past it; after that the queue blocks on the head until it fits. A release
 * wakes exactly the waiters it admits (one completion per admitted waiter),
 * so total wakeups <= number of queued requests.
 *
 * Single-threaded: every call happens on the thread that owns the GMainContext
 * the object was created in.
 */
#pragma once

#include <gio/gio.h>

#include "scheduler/sbx-hostinfo.h"

G_BEGIN_DECLS

#define SBX_ADMISSION_ERROR (sbx_admission_error_quark())
GQuark sbx_admission_error_quark(void);

typedef enum {
    SBX_ADMISSION_ERROR_NO_CAPACITY, /* request larger than the whole budget */
    SBX_ADMISSION_ERROR_TIMEOUT,     /* waited timeout_ms without being admitted */
    SBX_ADMISSION_ERROR_STOPPED,     /* sbx_admission_stop() */
} SbxAdmissionError;
/* Cancellation reports G_IO_ERROR_CANCELLED. */

/* Configuration. The names after each field are the keys of the [admission]
 * group of the daemon's key file (scheduler/sbx-config maps them here). */
typedef struct {
    double memory_overcommit_ratio;       /* memory_overcommit_ratio, default 5.0 */
    double cpu_overcommit_ratio;          /* cpu_overcommit_ratio, default 2.0 */
    double memory_reserve_ratio;          /* memory_reserve_ratio, default 0.08 */
    double cpu_reserve_cores;             /* cpu_reserve_cores, default 0.5 */
    guint64 vm_memory_overhead_bytes;     /* vm_overhead_mb, default 80 MiB */
    guint64 tcg_tb_cache_bytes;           /* tcg_cache_mb, default 128 MiB */
    guint32 vm_cpu_overhead_millis;       /* vm_cpu_overhead_millis, default 250 */
    double psi_full_avg10_threshold;      /* psi_full_avg10_threshold, default 10.0; <= 0 off */
    guint64 available_memory_floor_bytes; /* available_memory_floor_mb, default 0 (off) */
    guint bypass_limit;                   /* bypass_limit, default 8; 0 = pure head-of-line */
    guint lookahead;                      /* lookahead, default 64 */
    guint gate_recheck_ms;                /* gate_recheck_ms, default 1000 */
    guint64 host_memory_bytes;            /* host_memory_mb override, 0 = detect */
    guint64 host_cpu_millis;              /* host_cpus override (x1000), 0 = detect */
} SbxAdmissionConfig;

void sbx_admission_config_init(SbxAdmissionConfig *cfg);
/* What one VM reserves: guest memory + overhead (+ TB cache under TCG) and
 * vcpus + CPU overhead. */
void sbx_admission_config_vm_cost(const SbxAdmissionConfig *cfg, guint64 guest_memory_bytes,
                                  guint vcpus, gboolean tcg, guint64 *out_mem_bytes,
                                  guint64 *out_cpu_millis);
/* Budgets from the formulas in the file comment; pure. */
void sbx_admission_compute_budgets(const SbxAdmissionConfig *cfg, const SbxHostCapacity *host,
                                   guint64 *out_mem_bytes, guint64 *out_cpu_millis);

/* Injectable inputs. All optional. */
typedef struct {
    /* Monotonic clock in microseconds (default g_get_monotonic_time). */
    gint64 (*now_us)(gpointer user_data);
    /* Gate inputs (default: no gates). Return FALSE when unavailable. */
    gboolean (*sample_gates)(gpointer user_data, SbxHostPressure *out);
    gpointer user_data;
    /* TRUE: arm no timers (timeouts, gate re-check); the owner calls
     * sbx_admission_tick(). Tests use this with a fake clock. */
    gboolean manual_ticks;
} SbxAdmissionHooks;

typedef struct _SbxReservation SbxReservation;

#define SBX_TYPE_ADMISSION (sbx_admission_get_type())
G_DECLARE_FINAL_TYPE(SbxAdmission, sbx_admission, SBX, ADMISSION, GObject)

SbxAdmission *sbx_admission_new(const SbxAdmissionConfig *cfg, const SbxHostCapacity *host,
                                const SbxAdmissionHooks *hooks);
/* The daemon's constructor: capacity from sbx_host_capacity_read(@roots),
 * gates from /proc/pressure/memory and /proc/meminfo (cached 100 ms),
 * re-checked every gate_recheck_ms while requests wait. */
SbxAdmission *sbx_admission_new_for_host(const SbxAdmissionConfig *cfg, const SbxHostRoots *roots,
                                         GError **error);

/* timeout_ms 0 = no timeout. Completes with an SbxReservation. */
void sbx_admission_acquire_async(SbxAdmission *self, guint64 mem_bytes, guint64 cpu_millis,
                                 guint timeout_ms, GCancellable *cancellable,
                                 GAsyncReadyCallback callback, gpointer user_data);
SbxReservation *sbx_admission_acquire_finish(SbxAdmission *self, GAsyncResult *result,
                                             GError **error);

/* Fails every waiter with STOPPED and refuses new requests; held
 * reservations stay valid and can be released. Idempotent. */
void sbx_admission_stop(SbxAdmission *self);
/* Expire timed-out waiters, re-sample gates, admit what fits. Called by the
 * internal timers; tests call it after moving their clock. */
void sbx_admission_tick(SbxAdmission *self);

typedef struct {
    guint64 memory_budget_bytes;
    guint64 cpu_budget_millis;
    guint64 memory_in_use_bytes;
    guint64 cpu_in_use_millis;
    guint reservations; /* held now */
    guint queue_length;
    guint64 wakeups;          /* queued waiters completed with a reservation */
    guint64 immediate_grants; /* admitted without waiting */
    guint64 bypass_grants;    /* admitted past a blocked head (subset of wakeups) */
    guint64 releases;
    guint64 timeouts;
    guint64 cancellations;
    guint64 gate_blocks; /* dispatch passes where a gate held the head */
} SbxAdmissionStats;

void sbx_admission_get_stats(SbxAdmission *self, SbxAdmissionStats *out);
/* How many VMs of the given cost fit in the budget (for the overlay pool size). */
guint sbx_admission_max_slots(SbxAdmission *self, guint64 mem_bytes, guint64 cpu_millis);

/* Reservations. */
guint64 sbx_reservation_get_memory_bytes(const SbxReservation *res);
guint64 sbx_reservation_get_cpu_millis(const SbxReservation *res);
/* Time spent in the queue (0 for an immediate grant). */
guint64 sbx_reservation_get_admission_ms(const SbxReservation *res);
guint64 sbx_reservation_get_ticket(const SbxReservation *res);
/* Returns the capacity; idempotent. */
void sbx_reservation_release(SbxReservation *res);
/* Releases if still held, then frees. */
void sbx_reservation_free(SbxReservation *res);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SbxReservation, sbx_reservation_free)

G_END_DECLS
