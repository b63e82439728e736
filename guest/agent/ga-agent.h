/* SPDX-License-Identifier: MIT
 *
 * Internal interface of the guest agent (sbx-agent): the GaAgent context that
 * ga-main.c (transport, dispatch) owns and that ga-exec.c (REPLs, exec) and
 * ga-files.c (file transfer) use to send frames. Not a public API.
 */
#pragma once

#include <sys/types.h>
#include <glib.h>
#include <json-glib/json-glib.h>

#include "common/sbx-frame.h"
#include "common/sbx-validate.h"

G_BEGIN_DECLS

#define GA_PORT_NAME "org.schedulerd.agent.0"
#define GA_USER_UID 1000
#define GA_USER_GID 1000
/* Stop producing file data while this much output is queued. */
#define GA_OUTQ_HIGH (1024 * 1024)

/* Error codes in `error` frames (docs/guest-protocol.md). */
#define GA_ERR_INVALID_INPUT "invalid_input"
#define GA_ERR_NOT_FOUND "not_found"
#define GA_ERR_IO "io"
#define GA_ERR_BUSY "busy"
#define GA_ERR_TOO_LARGE "too_large"
#define GA_ERR_UNSUPPORTED "unsupported"
#define GA_ERR_PROTOCOL "protocol"
#define GA_ERR_UNAVAILABLE "unavailable"
#define GA_ERR_CANCELLED "cancelled"

typedef struct _GaExec GaExec;
typedef struct _GaFiles GaFiles;

typedef struct {
    GMainLoop *loop;
    /* transport */
    int fd;
    gboolean virtio;       /* HUP means "host not connected", not "gone" */
    gboolean connected;
    guint in_watch;
    guint out_watch;
    guint probe_timer;
    guint probe_backoff_ms;
    SbxFrameDecoder *dec;
    GByteArray *outq;
    gsize outq_off;
    int exit_status;
    /* configuration */
    char *home;
    gboolean no_setuid;
    uid_t uid;
    gid_t gid;
    char *python;  /* NULL when not installed */
    char *node;
    char *shell;
    /* boot timeline (CLOCK_BOOTTIME ns, 0 = unknown): init's stages from SBX_BOOT_NS
     * (start, modules loaded, switch_root done, execve), main() entry, first hello */
    gint64 boot_init_ns[4];
    gint64 boot_main_ns;
    gint64 boot_hello_ns;
    gint64 last_read_us;   /* when the channel read that completed the frames being dispatched returned */
    /* modules */
    GaExec *exec;
    GaFiles *files;
} GaAgent;

/* Queue one frame to the host (dropped while disconnected). Consumes @header. */
void ga_send(GaAgent *a, JsonObject *header, const void *payload, gsize len);
void ga_send_error(GaAgent *a, gint64 id, const char *code, const char *fmt, ...) G_GNUC_PRINTF(4, 5);
/* Map a GError (validation, GIO, errno) to an error frame. */
void ga_send_gerror(GaAgent *a, gint64 id, const GError *error);
void ga_send_ok(GaAgent *a, gint64 id);
gsize ga_outq_pending(GaAgent *a);

/* ga-exec.c */
GaExec *ga_exec_new(GaAgent *a);
void ga_exec_free(GaExec *e);
void ga_exec_handle(GaExec *e, SbxFrame *frame, gint64 recv_us); /* exec; recv_us: when it was read */
void ga_exec_warm(GaExec *e, SbxFrame *frame);     /* warm */
void ga_exec_cancel(GaExec *e, gint64 target);     /* cancel: kill that exec if running */
/* After the CRNG reseed: give running REPLs whose PRNGs cannot be reseeded in
 * place (node's Math.random) fresh entropy, ahead of any further exec. */
void ga_exec_reseed(GaExec *e);

/* ga-files.c */
GaFiles *ga_files_new(GaAgent *a);
void ga_files_free(GaFiles *f);
void ga_files_handle(GaFiles *f, SbxFrame *frame); /* write_file, file_chunk, file_end, read_file, file_ack, list_files */
void ga_files_resume(GaFiles *f);                  /* output queue drained */
void ga_files_reset(GaFiles *f);                   /* host disconnected: abort transfers */
void ga_files_cancel(GaFiles *f, gint64 target);   /* cancel: drop one transfer */

G_END_DECLS
