/* SPDX-License-Identifier: MIT
 *
 * The thin D-Bus adapter of schedulerd: exports org.schedulerd.Scheduler1 on a
 * connection, validates and converts each call, hands it to SbxManager and
 * replies. Output fds passed by the caller are written to directly. A caller
 * that leaves the bus while its run is in flight gets its VM torn down.
 */
#pragma once

#include <gio/gio.h>

#include "scheduler/sbx-manager.h"

G_BEGIN_DECLS

#define SBX_TYPE_DBUS_ADAPTER (sbx_dbus_adapter_get_type())
G_DECLARE_FINAL_TYPE(SbxDBusAdapter, sbx_dbus_adapter, SBX, DBUS_ADAPTER, GObject)

SbxDBusAdapter *sbx_dbus_adapter_new(SbxManager *manager);
gboolean sbx_dbus_adapter_export(SbxDBusAdapter *self, GDBusConnection *connection, GError **error);
void sbx_dbus_adapter_unexport(SbxDBusAdapter *self);
/* Calls being served now (for the drain at SIGTERM). */
guint sbx_dbus_adapter_get_n_calls(SbxDBusAdapter *self);

G_END_DECLS
