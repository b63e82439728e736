/* SPDX-License-Identifier: MIT
 *
 * The QMP_ERROR domain shared by the parser, the client and the typed
 * wrappers. QMP_ERROR_COMMAND errors (QEMU answered {"error": ...}) carry the
 * QMP error class as extended error data: branch on qmp_error_get_class(),
 * never on the message text.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

G_BEGIN_DECLS

#define QMP_ERROR (qmp_error_quark())
GQuark qmp_error_quark(void);

typedef enum {
    QMP_ERROR_FAILED,       /* generic local failure (bad argument, fd passing impossible) */
    QMP_ERROR_DISCONNECTED, /* the connection closed before the reply arrived */
    QMP_ERROR_PROTOCOL,     /* the peer broke the protocol; the connection was closed */
    QMP_ERROR_TIMEOUT,      /* no reply within the command's timeout */
    QMP_ERROR_COMMAND,      /* QEMU returned {"error": ...}; see qmp_error_get_class() */
    QMP_ERROR_BUSY,         /* too many commands pending */
    QMP_ERROR_STATE,        /* the client is not in a state that allows this call */
    QMP_ERROR_JOB,          /* a block job concluded with an error */
} QmpError;

/* The "class" member of a QMP error reply (qapi/error.json). */
typedef enum {
    QMP_ERROR_CLASS_NONE, /* not a QMP_ERROR_COMMAND error */
    QMP_ERROR_CLASS_GENERIC_ERROR,
    QMP_ERROR_CLASS_COMMAND_NOT_FOUND,
    QMP_ERROR_CLASS_DEVICE_NOT_ACTIVE,
    QMP_ERROR_CLASS_DEVICE_NOT_FOUND,
    QMP_ERROR_CLASS_KVM_MISSING_CAP,
    QMP_ERROR_CLASS_UNKNOWN, /* a class this client does not know */
} QmpErrorClass;

/* The class of a QMP_ERROR_COMMAND error; QMP_ERROR_CLASS_NONE for any other error. */
QmpErrorClass qmp_error_get_class(const GError *error);
/* The class exactly as QEMU sent it ("GenericError"), or NULL. Borrowed from @error. */
const char *qmp_error_get_class_name(const GError *error);

/* Build a QMP_ERROR_COMMAND error from the object under "error" of a reply. */
GError *qmp_error_new_from_reply(JsonObject *error_obj, const char *command);

G_END_DECLS
