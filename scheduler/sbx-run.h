/* SPDX-License-Identifier: MIT
 *
 * The request and result of one sandboxed run (or one session exec), shared by
 * the manager, the D-Bus adapter and schedulerctl. Conversions to and from
 * a{sv} (D-Bus) and JSON (schedulerctl --json) live here so every front end
 * speaks the same contract (design.md "What the user sees").
 */
#pragma once

#include <gio/gio.h>
#include <json-glib/json-glib.h>

#include "common/sbx-validate.h"
#include "gvproxy-glue/gvp-policy.h"
#include "scheduler/sbx-config.h"

G_BEGIN_DECLS

typedef struct {
    SbxLanguage language;
    GBytes *code;
    guint timeout_s;
    guint memory_mb;
    GHashTable *env; /* char* -> char*, owned; may be empty, never NULL */
    /* network (docs/networking.md): mode, allow-list (mode ALLOW), exposed TCP ports */
    GvpMode network;
    char **allow_domains; /* NULL-terminated, owned; NULL: none */
    gboolean allow_http;  /* mode ALLOW: plain HTTP by Host header as well */
    GArray *expose;       /* GvpPort, owned; never NULL */
} SbxRunSpec;

SbxRunSpec *sbx_run_spec_new(const SbxConfig *cfg);
void sbx_run_spec_free(SbxRunSpec *spec);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SbxRunSpec, sbx_run_spec_free)

/* Validate everything before any VM is touched (SBX_ERROR_INVALID_INPUT with a
 * message naming the field and the limit). */
gboolean sbx_run_spec_validate(const SbxRunSpec *spec, const SbxConfig *cfg, gboolean need_code,
                               GError **error);

/* Fill @spec from a D-Bus a{sv} (keys documented in data/org.schedulerd.Scheduler1.xml). */
gboolean sbx_run_spec_from_variant(SbxRunSpec *spec, GVariant *dict, GError **error);
GVariant *sbx_run_spec_to_variant(const SbxRunSpec *spec);

typedef struct {
    gint64 admission_ms;
    gint64 setup_ms;
    gint64 boot_ms;
    gint64 restore_ms;
    gint64 exec_ms;
    gint64 teardown_ms;
    gint64 total_ms;
    gint64 network_ms; /* network helper start-up (part of setup; 0 without network) */
} SbxTimings;

typedef struct {
    int exit_code;        /* 0 / n / 128+signal / -1 timeout */
    gboolean timed_out;
    char *output_limit;   /* "" | "stdout" | "stderr" */
    SbxTimings timing;
    gboolean warm_pool_hit;
    gboolean l1_hit;
    char *accel;
    guint64 cpu_ms;
    guint64 memory_peak_mb;
    guint64 guest_exec_us; /* guest-measured duration of the exec (agent's exit frame) */
    gint64 guest_accept_us; /* guest-measured, request read to exec start (-1: not reported) */
    GArray *exposed_ports; /* GvpPort with the bound external port; never NULL */
} SbxRunResult;

SbxRunResult *sbx_run_result_new(void);
void sbx_run_result_free(SbxRunResult *result);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SbxRunResult, sbx_run_result_free)

GVariant *sbx_run_result_to_variant(const SbxRunResult *result);
gboolean sbx_run_result_from_variant(SbxRunResult *result, GVariant *dict, GError **error);
/* Adds exit_code, timing, warm_pool_hit, ... members to @builder's open object. */
void sbx_run_result_add_json(const SbxRunResult *result, JsonBuilder *builder);

G_END_DECLS
