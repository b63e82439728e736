/* SPDX-License-Identifier: MIT
 *
 * Startup system probe: raises RLIMIT_NOFILE / RLIMIT_NPROC soft limits to
 * their hard limits, checks the host settings that decide whether bursts of
 * QEMU processes survive (vm.overcommit_memory, vm.max_map_count,
 * kernel.threads-max, the daemon cgroup's pids.max, KSM, PSI) and decides the
 * accelerator with a real KVM test (a tiny real-mode guest run with KVM_RUN,
 * plus the PVM / VMX-SVM check), falling back to TCG with the reason.
 *
 * The result is a structured report (JSON through json-glib) that the daemon
 * logs, D-Bus exposes and `schedulerctl doctor` prints. Every warning carries
 * the exact command that fixes it.
 *
 * The probe never sets RLIMIT_NPROC on children: it is per-UID, so it would
 * cap all VMs of the user together and abort QEMU under burst.
 */
#pragma once

#include <gio/gio.h>
#include <json-glib/json-glib.h>

#include "scheduler/sbx-hostinfo.h"
#include "scheduler/sbx-qemu.h"

G_BEGIN_DECLS

typedef enum {
    SBX_PROBE_OK,
    SBX_PROBE_WARN,
    SBX_PROBE_ERROR,
} SbxProbeStatus;

const char *sbx_probe_status_to_string(SbxProbeStatus status);

typedef struct {
    char *name; /* "rlimit_nofile", "vm.overcommit_memory", "accel", ... */
    SbxProbeStatus status;
    char *value;   /* what was observed */
    char *message; /* one sentence: why it matters */
    char *fix;     /* exact command, or NULL */
} SbxProbeItem;

typedef struct {
    GPtrArray *items;   /* of SbxProbeItem, in check order */
    SbxAccel accel;     /* what VMs should use */
    char *accel_reason; /* why */
} SbxProbeReport;

typedef struct {
    SbxHostRoots roots;    /* injectable /proc, /sys, cgroup root */
    const char *dev_kvm;   /* NULL: "/dev/kvm" */
    guint planned_slots;   /* VMs the daemon may run at once; 0: 64 */
    guint threads_per_vm;  /* QEMU threads per VM (plus helpers); 0: 32 */
    gboolean raise_limits; /* setrlimit() this process (the daemon: TRUE) */
    gboolean test_kvm;     /* run the KVM guest test (FALSE: tcg unless forced) */
} SbxProbeOptions;

/* Runs every check. Blocks for the KVM test (a few ms; bounded), so the
 * daemon calls the _async variant. */
SbxProbeReport *sbx_probe_run(const SbxProbeOptions *opts);
void sbx_probe_run_async(const SbxProbeOptions *opts, GCancellable *cancellable,
                         GAsyncReadyCallback callback, gpointer user_data);
SbxProbeReport *sbx_probe_run_finish(GAsyncResult *result, GError **error);

/* The real accelerator test alone. @sys_root/@proc_root for the PVM and
 * cpu-flag checks (NULL: real). Returns KVM only when /dev/kvm opens, a test
 * guest runs to its final hlt, and the CPU has VMX/SVM without kvm_pvm. */
SbxAccel sbx_probe_kvm(const char *dev_kvm, const SbxHostRoots *roots, char **out_reason);

const SbxProbeItem *sbx_probe_report_find(const SbxProbeReport *report, const char *name);
guint sbx_probe_report_count(const SbxProbeReport *report, SbxProbeStatus status);
/* {"accel": "...", "accel_reason": "...", "warnings": n, "errors": n,
 *  "items": [{"name", "status", "value", "message", "fix"}]} */
JsonNode *sbx_probe_report_to_json(const SbxProbeReport *report);
char *sbx_probe_report_to_string(const SbxProbeReport *report, gboolean pretty);
void sbx_probe_report_free(SbxProbeReport *report);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SbxProbeReport, sbx_probe_report_free)

G_END_DECLS
