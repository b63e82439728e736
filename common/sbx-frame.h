/* SPDX-License-Identifier: MIT
 *
 * The host <-> guest wire codec (docs/guest-protocol.md). One implementation,
 * linked by the host client (scheduler/sbx-guest.c) and the guest agent
 * (guest/agent/). A frame is
 *
 *     u32be header_len | u32be payload_len | JSON object (UTF-8) | raw payload
 *
 * The JSON object always has "type" (string) and "id" (integer >= 0). The
 * payload is opaque bytes (program output, file data, code) and is never
 * escaped. Limits are part of the protocol: the decoder refuses a frame whose
 * declared sizes exceed them before buffering a byte of it.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

G_BEGIN_DECLS

#define SBX_PROTOCOL_VERSION 1

#define SBX_FRAME_PREFIX_SIZE 8
#define SBX_FRAME_MAX_HEADER (1024 * 1024)   /* JSON header bytes */
#define SBX_FRAME_MAX_PAYLOAD (1024 * 1024)  /* raw payload bytes per frame */
#define SBX_FRAME_FILE_CHUNK (256 * 1024)    /* file data per chunk frame (senders) */

#define SBX_FRAME_ERROR (sbx_frame_error_quark())
GQuark sbx_frame_error_quark(void);

typedef enum {
    SBX_FRAME_ERROR_TOO_LARGE,   /* declared header or payload size over the limit */
    SBX_FRAME_ERROR_BAD_UTF8,    /* header is not valid UTF-8 (or contains NUL) */
    SBX_FRAME_ERROR_BAD_JSON,    /* header does not parse, or is not an object */
    SBX_FRAME_ERROR_BAD_HEADER,  /* empty header, missing/ill-typed "type" or "id" */
} SbxFrameError;

/* One decoded frame. Owned by whoever received it from the decoder. */
typedef struct {
    JsonObject *header;  /* owned ref; contains "type" and "id" */
    const char *type;    /* borrowed from header */
    gint64 id;
    GBytes *payload;     /* never NULL; may be empty */
} SbxFrame;

void sbx_frame_free(SbxFrame *frame);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SbxFrame, sbx_frame_free)

/* Small typed getters over frame->header (defaults when absent/ill-typed). */
const char *sbx_frame_get_string(const SbxFrame *frame, const char *member, const char *def);
gint64 sbx_frame_get_int(const SbxFrame *frame, const char *member, gint64 def);
gboolean sbx_frame_get_bool(const SbxFrame *frame, const char *member, gboolean def);

/* Incremental decoder: feed any number of bytes, pop complete frames. After an
 * error the decoder is poisoned (every later call fails with the same error):
 * the stream has lost framing and the channel must be closed. */
typedef struct _SbxFrameDecoder SbxFrameDecoder;

SbxFrameDecoder *sbx_frame_decoder_new(void);
void sbx_frame_decoder_free(SbxFrameDecoder *dec);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SbxFrameDecoder, sbx_frame_decoder_free)
/* Forget buffered bytes and any error (new connection on the same port). */
void sbx_frame_decoder_reset(SbxFrameDecoder *dec);
/* Append bytes. Fails early when a declared size is over the limit. */
gboolean sbx_frame_decoder_feed(SbxFrameDecoder *dec, const void *data, gsize len, GError **error);
/* Next complete frame, or NULL with *error unset when more bytes are needed,
 * or NULL with *error set on a malformed frame. */
SbxFrame *sbx_frame_decoder_pop(SbxFrameDecoder *dec, GError **error);
/* Bytes buffered and not yet returned as a frame. */
gsize sbx_frame_decoder_get_buffered(SbxFrameDecoder *dec);

/* Encoder: append one complete frame to @out. @header must contain "type"
 * and "id" (use sbx_frame_header_new). Fails only on a limit violation. */
gboolean sbx_frame_encode(GByteArray *out, JsonObject *header,
                          const void *payload, gsize payload_len, GError **error);
/* A new header object {"type": @type, "id": @id}. */
JsonObject *sbx_frame_header_new(const char *type, gint64 id);

G_END_DECLS
