/* SPDX-License-Identifier: MIT
 *
 * The scheduler's public error domain: what a caller of Run/Exec can act on.
 * Every failure that leaves the manager is mapped to one of these codes, and
 * each code says whether the user's code ran. Registered on D-Bus as
 * org.schedulerd.Scheduler1.Error.<Name>.
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

#define SBX_ERROR (sbx_error_quark())
GQuark sbx_error_quark(void);

typedef enum {
    SBX_ERROR_INVALID_INPUT,   /* refused before anything ran */
    SBX_ERROR_NO_CAPACITY,     /* host full: nothing ran */
    SBX_ERROR_TRANSIENT,       /* failed before dispatch: safe to retry */
    SBX_ERROR_OUTCOME_UNKNOWN, /* failed after dispatch: the code may have run */
    SBX_ERROR_SESSION_CLOSED,
    SBX_ERROR_OUTPUT_LIMIT,
    SBX_ERROR_NOT_FOUND,
    SBX_ERROR_ACCESS_DENIED,
    SBX_ERROR_CANCELLED,
} SbxErrorCode;

#define SBX_ERROR_N_CODES (SBX_ERROR_CANCELLED + 1)

/* Short name, e.g. "InvalidInput" (the D-Bus error suffix, the CLI's JSON "name"). */
const char *sbx_error_code_to_name(SbxErrorCode code);

/* Register the D-Bus error names (idempotent). */
void sbx_error_register_dbus(void);

/* Whether the user's code may have run for an error of this code. */
gboolean sbx_error_code_ran(SbxErrorCode code);

G_END_DECLS
