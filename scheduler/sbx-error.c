/* SPDX-License-Identifier: MIT
 *
 * sbx-error: the scheduler error domain, its names and their D-Bus mapping.
 * Used by the manager, the D-Bus adapter and schedulerctl.
 */
#define G_LOG_DOMAIN "sbx-error"

#include "scheduler/sbx-error.h"

G_DEFINE_QUARK(sbx-error-quark, sbx_error)

static const char *const names[SBX_ERROR_N_CODES] = {
    [SBX_ERROR_INVALID_INPUT] = "InvalidInput",
    [SBX_ERROR_NO_CAPACITY] = "NoCapacity",
    [SBX_ERROR_TRANSIENT] = "Transient",
    [SBX_ERROR_OUTCOME_UNKNOWN] = "OutcomeUnknown",
    [SBX_ERROR_SESSION_CLOSED] = "SessionClosed",
    [SBX_ERROR_OUTPUT_LIMIT] = "OutputLimit",
    [SBX_ERROR_NOT_FOUND] = "NotFound",
    [SBX_ERROR_ACCESS_DENIED] = "AccessDenied",
    [SBX_ERROR_CANCELLED] = "Cancelled",
};

const char *
sbx_error_code_to_name(SbxErrorCode code)
{
    if ((guint)code >= SBX_ERROR_N_CODES)
        return "Failed";
    return names[code];
}

gboolean
sbx_error_code_ran(SbxErrorCode code)
{
    return code == SBX_ERROR_OUTCOME_UNKNOWN || code == SBX_ERROR_OUTPUT_LIMIT;
}

void
sbx_error_register_dbus(void)
{
    static gsize once = 0;
    if (g_once_init_enter(&once)) {
        for (guint i = 0; i < SBX_ERROR_N_CODES; i++) {
            g_autofree char *dbus_name =
                g_strdup_printf("org.schedulerd.Scheduler1.Error.%s", names[i]);
            g_dbus_error_register_error(SBX_ERROR, (gint)i, dbus_name);
        }
        g_once_init_leave(&once, 1);
    }
}
