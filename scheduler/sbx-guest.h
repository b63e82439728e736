/* SPDX-License-Identifier: MIT
 *
 * SbxGuest: the host side of the guest channel (docs/guest-protocol.md). One
 * object per VM, over the connected stream fd whose other end QEMU serves as
 * the virtio-serial port org.schedulerd.agent.0 (or, in tests, the agent's
 * --channel-fd). Requests are id-routed async operations; streamed output is
 * delivered through a callback; file data is streamed with bounded buffers.
 * When the channel dies, every pending request fails exactly once with
 * SBX_GUEST_ERROR_DISCONNECTED and "closed" is emitted once. No reconnect.
 */
#pragma once

#include <gio/gio.h>

#include "common/sbx-validate.h"

G_BEGIN_DECLS

#define SBX_GUEST_ERROR (sbx_guest_error_quark())
GQuark sbx_guest_error_quark(void);

typedef enum {
    SBX_GUEST_ERROR_DISCONNECTED,  /* channel closed; a request in flight has an unknown outcome */
    SBX_GUEST_ERROR_PROTOCOL,      /* malformed or unexpected frame; the channel was closed */
    SBX_GUEST_ERROR_TIMEOUT,       /* no hello within the timeout */
    SBX_GUEST_ERROR_INVALID_INPUT, /* the agent refused the input (nothing ran) */
    SBX_GUEST_ERROR_NOT_FOUND,     /* file or directory does not exist */
    SBX_GUEST_ERROR_TOO_LARGE,     /* over a size limit (file 500 MiB, ...) */
    SBX_GUEST_ERROR_BUSY,          /* another exec is running / too many transfers */
    SBX_GUEST_ERROR_UNAVAILABLE,   /* language not installed or interpreter failed to start */
    SBX_GUEST_ERROR_IO,            /* I/O error inside the guest */
    SBX_GUEST_ERROR_TOO_MANY,      /* too many requests in flight on this channel */
    SBX_GUEST_ERROR_FAILED,        /* any other agent error */
} SbxGuestError;

typedef enum {
    SBX_GUEST_STDOUT = 1,
    SBX_GUEST_STDERR = 2,
} SbxGuestStream;

/* Called on the main context for every output chunk, in order. */
typedef void (*SbxGuestOutputFunc)(SbxGuestStream stream, const guint8 *data, gsize len,
                                   gpointer user_data);

typedef struct {
    int exit_code;              /* n for exit(n), 128+N for signal N, -1 on timeout */
    gboolean timed_out;
    gboolean stdout_truncated;  /* output limit reached (1 MiB); the rest was dropped */
    gboolean stderr_truncated;  /* (100 KiB) */
    gboolean retire;            /* 137 seen (SIGKILL/OOM): retire this VM after the reply */
    guint64 stdout_bytes;
    guint64 stderr_bytes;
    guint64 duration_us;        /* guest-measured, code sent to exit observed */
    gint64 accept_us;           /* guest-measured, request read to code sent (-1: not reported) */
    guint64 cpu_user_us;
    guint64 cpu_sys_us;
    gint64 max_rss_kb;          /* peak RSS of the interpreter process */
} SbxGuestExecResult;

typedef enum {
    SBX_GUEST_FILE_REGULAR,
    SBX_GUEST_FILE_DIRECTORY,
    SBX_GUEST_FILE_SYMLINK,
    SBX_GUEST_FILE_OTHER,
} SbxGuestFileType;

typedef struct {
    char *name;
    SbxGuestFileType type;
    guint64 size;
    guint mode;
} SbxGuestFileInfo;

void sbx_guest_file_info_free(SbxGuestFileInfo *info);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SbxGuestFileInfo, sbx_guest_file_info_free)

#define SBX_TYPE_GUEST (sbx_guest_get_type())
G_DECLARE_FINAL_TYPE(SbxGuest, sbx_guest, SBX, GUEST, GObject)

/* Takes ownership of @fd (a connected stream socket). Reading starts at once. */
SbxGuest *sbx_guest_new(int fd);
/* Close the channel now: pending requests fail with DISCONNECTED. Idempotent. */
void sbx_guest_close(SbxGuest *self);
gboolean sbx_guest_is_closed(SbxGuest *self);

/* Complete when the agent's hello has arrived (at once if it already has). */
void sbx_guest_wait_hello_async(SbxGuest *self, guint timeout_ms, GCancellable *cancellable,
                                GAsyncReadyCallback callback, gpointer user_data);
gboolean sbx_guest_wait_hello_finish(SbxGuest *self, GAsyncResult *result, GError **error);
/* From the hello (0 / NULL / FALSE before it). */
guint sbx_guest_get_protocol_version(SbxGuest *self);
const char *sbx_guest_get_agent_version(SbxGuest *self);
gboolean sbx_guest_has_language(SbxGuest *self, SbxLanguage language);

void sbx_guest_ping_async(SbxGuest *self, GCancellable *cancellable,
                          GAsyncReadyCallback callback, gpointer user_data);
gboolean sbx_guest_ping_finish(SbxGuest *self, GAsyncResult *result, GError **error);

/* Mix host entropy into the guest CRNG and reseed it (do it after every
 * snapshot restore, before the first exec). @entropy NULL: 64 bytes from
 * getrandom(). */
void sbx_guest_reseed_async(SbxGuest *self, GBytes *entropy, GCancellable *cancellable,
                            GAsyncReadyCallback callback, gpointer user_data);
/* The same with 64 bytes of getrandom() and the guest's wall clock set to
 * @realtime_ns (ns since the epoch); fails unless the agent set the clock.
 * Finish with sbx_guest_reseed_finish(). */
void sbx_guest_reseed_clock_async(SbxGuest *self, gint64 realtime_ns, GCancellable *cancellable,
                                  GAsyncReadyCallback callback, gpointer user_data);
gboolean sbx_guest_reseed_finish(SbxGuest *self, GAsyncResult *result, GError **error);

/* Idle VM: the guest drops its clean page cache and compacts its free memory, so
 * that free page reporting (virtio-balloon, sbx_qemu_has_balloon) hands whole
 * 2 MiB blocks back to the host. Only useful with the balloon device. */
void sbx_guest_reclaim_async(SbxGuest *self, GCancellable *cancellable,
                             GAsyncReadyCallback callback, gpointer user_data);
gboolean sbx_guest_reclaim_finish(SbxGuest *self, GAsyncResult *result, GError **error);

/* Start the language's REPL now so the first exec does not pay for it. */
void sbx_guest_warm_async(SbxGuest *self, SbxLanguage language, GCancellable *cancellable,
                          GAsyncReadyCallback callback, gpointer user_data);
gboolean sbx_guest_warm_finish(SbxGuest *self, GAsyncResult *result, GError **error);

/* Run @code. Input is validated here first (SBX_VALIDATE_ERROR: nothing was
 * sent). @env (char* -> char*) may be NULL. @output receives stdout/stderr
 * chunks as they arrive; @output_destroy is called on @output_data when the
 * request is over. Cancelling kills the code in the guest (the next exec in
 * that language starts a fresh REPL) and fails with G_IO_ERROR_CANCELLED. */
void sbx_guest_exec_async(SbxGuest *self, SbxLanguage language, GBytes *code, guint timeout_s,
                          GHashTable *env, SbxGuestOutputFunc output, gpointer output_data,
                          GDestroyNotify output_destroy, GCancellable *cancellable,
                          GAsyncReadyCallback callback, gpointer user_data);
gboolean sbx_guest_exec_finish(SbxGuest *self, GAsyncResult *result,
                               SbxGuestExecResult *out_result, GError **error);

/* Stream @source into @path (relative to /home/user; parents are created),
 * replacing it atomically, with permission bits @mode. */
void sbx_guest_write_file_async(SbxGuest *self, const char *path, GInputStream *source, guint mode,
                                GCancellable *cancellable, GAsyncReadyCallback callback,
                                gpointer user_data);
gboolean sbx_guest_write_file_finish(SbxGuest *self, GAsyncResult *result, guint64 *out_size,
                                     GError **error);

/* Stream @path from the guest into @dest (not closed). */
void sbx_guest_read_file_async(SbxGuest *self, const char *path, GOutputStream *dest,
                               GCancellable *cancellable, GAsyncReadyCallback callback,
                               gpointer user_data);
gboolean sbx_guest_read_file_finish(SbxGuest *self, GAsyncResult *result, guint64 *out_size,
                                    GError **error);

/* List a directory ("" = /home/user). Returns SbxGuestFileInfo elements sorted by name. */
void sbx_guest_list_files_async(SbxGuest *self, const char *path, GCancellable *cancellable,
                                GAsyncReadyCallback callback, gpointer user_data);
GPtrArray *sbx_guest_list_files_finish(SbxGuest *self, GAsyncResult *result,
                                       gboolean *out_truncated, GError **error);

G_END_DECLS
