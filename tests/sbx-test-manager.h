/* SPDX-License-Identifier: MIT
 *
 * Helpers for the tests and benchmarks that drive an in-process SbxManager
 * from a plain main(): read a Status counter, wait for one, and run code to
 * its result with the output collected. Tests may block; daemon code never.
 */
#pragma once

#include <stdio.h>
#include <string.h>

#include <gio/gio.h>

#include "scheduler/sbx-manager.h"
#include "tests/sbx-test-loop.h"

/* Status[@key] as an integer (u32 or u64), or G_MAXUINT64 when it is absent or
 * not one. */
static inline guint64
sbx_test_status_u64(SbxManager *mgr, const char *key)
{
    g_autoptr(GVariant) st = sbx_manager_get_status(mgr);
    g_autoptr(GVariant) v = g_variant_lookup_value(st, key, NULL);
    if (v && g_variant_is_of_type(v, G_VARIANT_TYPE_UINT32))
        return g_variant_get_uint32(v);
    if (v && g_variant_is_of_type(v, G_VARIANT_TYPE_UINT64))
        return g_variant_get_uint64(v);
    return G_MAXUINT64;
}

/* Let the main loop run until Status[@key] >= @want (present) or @limit_s pass. */
static inline gboolean
sbx_test_wait_status(SbxManager *mgr, const char *key, guint64 want, guint limit_s)
{
    gint64 end = g_get_monotonic_time() + (gint64)limit_s * G_USEC_PER_SEC;
    for (;;) {
        guint64 v = sbx_test_status_u64(mgr, key);
        if (v != G_MAXUINT64 && v >= want)
            return TRUE;
        if (g_get_monotonic_time() >= end)
            return FALSE;
        sbx_test_spin_ms(200);
    }
}

/* One run's outcome: the result (NULL on error), its stdout, the error message. */
typedef struct {
    SbxRunResult *result;
    char *out;
    char *error;
} SbxTestRun;

static inline void
sbx_test_run_clear(SbxTestRun *r)
{
    g_clear_pointer(&r->result, sbx_run_result_free);
    g_clear_pointer(&r->out, g_free);
    g_clear_pointer(&r->error, g_free);
}

/* Run @code in @language to its result; @memory_mb / @timeout_s 0: the config's
 * defaults. Prints the outcome and timings as a TAP comment. */
static inline void
sbx_test_run(SbxManager *mgr, SbxLanguage language, guint memory_mb, guint timeout_s,
             const char *code, SbxTestRun *r)
{
    g_autoptr(SbxRunSpec) spec = sbx_run_spec_new(sbx_manager_get_config(mgr));
    spec->language = language;
    if (memory_mb)
        spec->memory_mb = memory_mb;
    if (timeout_s)
        spec->timeout_s = timeout_s;
    g_bytes_unref(spec->code);
    spec->code = g_bytes_new(code, strlen(code));
    g_autoptr(GOutputStream) out = g_memory_output_stream_new_resizable();
    g_autoptr(GAsyncResult) res = NULL;
    g_autoptr(GError) error = NULL;
    sbx_manager_run_async(mgr, spec, out, NULL, NULL, NULL, NULL, sbx_test_store_result, &res);
    r->result = sbx_manager_run_finish(mgr, sbx_test_wait_result(&res), &error);
    g_output_stream_close(out, NULL, NULL);
    GMemoryOutputStream *m = G_MEMORY_OUTPUT_STREAM(out);
    r->out = g_strndup(g_memory_output_stream_get_data(m), g_memory_output_stream_get_data_size(m));
    r->error = error ? g_strdup(error->message) : NULL;
    g_autofree char *first = g_strndup(code, strcspn(code, "\n"));
    if (r->result)
        printf("# %s %u MiB `%s` -> exit %d l1_hit=%d warm_pool_hit=%d boot_ms=%" G_GINT64_FORMAT
               " restore_ms=%" G_GINT64_FORMAT " exec_ms=%" G_GINT64_FORMAT
               " total_ms=%" G_GINT64_FORMAT "\n",
               sbx_language_to_string(language), spec->memory_mb, first, r->result->exit_code,
               r->result->l1_hit, r->result->warm_pool_hit, r->result->timing.boot_ms,
               r->result->timing.restore_ms, r->result->timing.exec_ms,
               r->result->timing.total_ms);
    else
        printf("# %s `%s` -> error: %s\n", sbx_language_to_string(language), first, r->error);
}
