/* SPDX-License-Identifier: MIT
 *
 * SbxSession: one microVM kept across several Exec calls, with file transfer.
 * Created by sbx_manager_create_session_async (same admission, work disk,
 * cgroup and boot path as a run); interpreter state persists between execs.
 * A session survives user-code errors; it closes on Close, its idle timeout,
 * an exec that ends with 137 (the guest's `retire`), VM death, its owner
 * leaving (D-Bus adapter) or shutdown. Once closing, every call fails with
 * SBX_ERROR_SESSION_CLOSED; "closed" is emitted once, after the VM is gone.
 */
#pragma once

#include <gio/gio.h>

#include "scheduler/sbx-manager.h"

G_BEGIN_DECLS

/* Close reasons: the "closed" signal's argument and the D-Bus Closed signal's. */
#define SBX_SESSION_CLOSED_BY_CALLER  "closed"
#define SBX_SESSION_CLOSED_IDLE       "idle"
#define SBX_SESSION_CLOSED_VM_DIED    "vm-died"
#define SBX_SESSION_CLOSED_EXIT_137   "exit-137"
#define SBX_SESSION_CLOSED_OWNER_LEFT "owner-left"
#define SBX_SESSION_CLOSED_SHUTDOWN   "shutdown"

#define SBX_TYPE_SESSION (sbx_session_get_type())
G_DECLARE_FINAL_TYPE(SbxSession, sbx_session, SBX, SESSION, GObject)

/* For sbx-manager.c: wrap a booted VM's lease (taken over; released on close). */
SbxSession *sbx_session_new(SbxManager *manager, SbxVmLease *lease, SbxLanguage language,
                            guint idle_timeout_s);

/* 32 hex digits, unguessable; usable as a D-Bus object path element. */
const char *sbx_session_get_id(SbxSession *self);
SbxLanguage sbx_session_get_language(SbxSession *self);
guint sbx_session_get_idle_timeout_s(SbxSession *self);
/* Timings of the session's start (admission_ms, setup_ms, boot_ms). */
const SbxTimings *sbx_session_get_start_timings(SbxSession *self);
/* TRUE once closing started (calls fail from then on). */
gboolean sbx_session_is_closed(SbxSession *self);
/* NULL while open. */
const char *sbx_session_get_close_reason(SbxSession *self);
/* A sentence for a person: why the session is closed ("its VM died", ...). */
const char *sbx_session_describe_reason(const char *reason);

/* Run @spec (language, code, timeout, env; memory is the session's) in the
 * session's VM; output streams to @out / @err (NULL: discarded). Every session
 * operation is cancelled by closing the session. */
void sbx_session_exec_async(SbxSession *self, const SbxRunSpec *spec, GOutputStream *out,
                            GOutputStream *err, GAsyncReadyCallback callback, gpointer user_data);
SbxRunResult *sbx_session_exec_finish(SbxSession *self, GAsyncResult *result, GError **error);

/* Store @source (read to EOF) at @path (relative to /home/user) with @mode. */
void sbx_session_write_file_async(SbxSession *self, const char *path, GInputStream *source,
                                  guint mode, GAsyncReadyCallback callback, gpointer user_data);
gboolean sbx_session_write_file_finish(SbxSession *self, GAsyncResult *result, guint64 *out_size,
                                       GError **error);

/* Write the guest file @path to @dest (not closed). */
void sbx_session_read_file_async(SbxSession *self, const char *path, GOutputStream *dest,
                                 GAsyncReadyCallback callback, gpointer user_data);
gboolean sbx_session_read_file_finish(SbxSession *self, GAsyncResult *result, guint64 *out_size,
                                      GError **error);

/* Entries (SbxGuestFileInfo) of the guest directory @path ("" = home). */
void sbx_session_list_files_async(SbxSession *self, const char *path, GAsyncReadyCallback callback,
                                  gpointer user_data);
GPtrArray *sbx_session_list_files_finish(SbxSession *self, GAsyncResult *result, GError **error);

/* Start closing (idempotent: the first reason wins). */
void sbx_session_close(SbxSession *self, const char *reason);
/* Close and complete when the VM is destroyed. SBX_ERROR_SESSION_CLOSED when
 * the session was already closing for another reason. */
void sbx_session_close_async(SbxSession *self, const char *reason, GAsyncReadyCallback callback,
                             gpointer user_data);
gboolean sbx_session_close_finish(SbxSession *self, GAsyncResult *result, GError **error);

/* Signal "closed" (SbxSession *, const char *reason): emitted once, when the
 * VM has been destroyed. */

G_END_DECLS
