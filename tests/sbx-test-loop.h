/* SPDX-License-Identifier: MIT
 *
 * Main-loop helpers shared by the tests and benchmarks that drive async APIs
 * from a plain main(): store an async result, iterate the default context
 * until it arrives, or for a given time. Tests may block; daemon code never.
 */
#pragma once

#include <gio/gio.h>

/* GAsyncReadyCallback: stores a ref of @res in the GAsyncResult* @data points to. */
static inline void
sbx_test_store_result(GObject *src, GAsyncResult *res, gpointer data)
{
    (void)src;
    *(GAsyncResult **)data = g_object_ref(res);
}

/* Iterate the default main context until *@slot is set; returns it (owned by the slot). */
static inline GAsyncResult *
sbx_test_wait_result(GAsyncResult **slot)
{
    while (!*slot)
        g_main_context_iteration(NULL, TRUE);
    return *slot;
}

static inline gboolean
sbx_test_flag_cb(gpointer data)
{
    *(gboolean *)data = TRUE;
    return G_SOURCE_REMOVE;
}

/* Iterate the default main context for @ms milliseconds. */
static inline void
sbx_test_spin_ms(guint ms)
{
    gboolean fired = FALSE;
    g_timeout_add(ms, sbx_test_flag_cb, &fired);
    while (!fired)
        g_main_context_iteration(NULL, TRUE);
}
