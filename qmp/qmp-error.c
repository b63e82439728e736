/* SPDX-License-Identifier: MIT
 *
 * QMP_ERROR: an extended GError domain (GLib 2.68+) so that a command error
 * carries QEMU's error class next to the human text. Used by qmp-parser.c,
 * qmp-client.c and qmp-commands.c.
 */
#include "qmp/qmp-error.h"
#include "qmp/qmp-parser.h"

typedef struct {
    QmpErrorClass klass;
    char *class_name;
} QmpErrorPrivate;

static void
qmp_error_private_init(QmpErrorPrivate *priv)
{
    if (priv == NULL)
        return;
    priv->klass = QMP_ERROR_CLASS_NONE;
    priv->class_name = NULL;
}

static void
qmp_error_private_copy(const QmpErrorPrivate *src, QmpErrorPrivate *dest)
{
    if (src == NULL || dest == NULL) /* cannot happen; keeps -Wnull-dereference quiet */
        return;
    dest->klass = src->klass;
    dest->class_name = g_strdup(src->class_name);
}

static void
qmp_error_private_clear(QmpErrorPrivate *priv)
{
    if (priv != NULL)
        g_clear_pointer(&priv->class_name, g_free);
}

G_DEFINE_EXTENDED_ERROR(QmpError, qmp_error)

static const struct {
    const char *name;
    QmpErrorClass klass;
} class_table[] = {
    {"GenericError", QMP_ERROR_CLASS_GENERIC_ERROR},
    {"CommandNotFound", QMP_ERROR_CLASS_COMMAND_NOT_FOUND},
    {"DeviceNotActive", QMP_ERROR_CLASS_DEVICE_NOT_ACTIVE},
    {"DeviceNotFound", QMP_ERROR_CLASS_DEVICE_NOT_FOUND},
    {"KVMMissingCap", QMP_ERROR_CLASS_KVM_MISSING_CAP},
};

QmpErrorClass
qmp_error_get_class(const GError *error)
{
    if (error == NULL || error->domain != QMP_ERROR)
        return QMP_ERROR_CLASS_NONE;
    QmpErrorPrivate *priv = qmp_error_get_private(error);
    return priv ? priv->klass : QMP_ERROR_CLASS_NONE;
}

const char *
qmp_error_get_class_name(const GError *error)
{
    if (error == NULL || error->domain != QMP_ERROR)
        return NULL;
    QmpErrorPrivate *priv = qmp_error_get_private(error);
    return priv ? priv->class_name : NULL;
}

GError *
qmp_error_new_from_reply(JsonObject *error_obj, const char *command)
{
    const char *klass = error_obj ? qmp_json_peek_string(error_obj, "class") : NULL;
    const char *desc = error_obj ? qmp_json_peek_string(error_obj, "desc") : NULL;
    GError *error = g_error_new(QMP_ERROR, QMP_ERROR_COMMAND, "%s: %s", command ? command : "QMP",
                                desc && *desc ? desc : "(no description)");
    QmpErrorPrivate *priv = qmp_error_get_private(error);

    if (priv == NULL)
        return error;
    priv->klass = QMP_ERROR_CLASS_UNKNOWN;
    for (gsize i = 0; i < G_N_ELEMENTS(class_table); i++) {
        if (klass && g_str_equal(klass, class_table[i].name)) {
            priv->klass = class_table[i].klass;
            break;
        }
    }
    priv->class_name = g_strdup(klass ? klass : "");
    return error;
}
