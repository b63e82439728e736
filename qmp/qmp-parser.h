/* SPDX-License-Identifier: MIT
 *
 * QMP framing and message classification, free of any I/O: bytes go in (in
 * any split), complete messages come out as JSON objects, or a protocol
 * error. Used by qmp-client.c, the unit tests and the libFuzzer target.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

#include "qmp/qmp-error.h"

G_BEGIN_DECLS

/* Longest accepted line (without its "\n" / "\r\n"). */
#define QMP_PARSER_DEFAULT_MAX_LINE ((gsize)10 * 1024 * 1024)
/* Deepest accepted nesting of arrays/objects (json-glib recurses per level). */
#define QMP_PARSER_MAX_DEPTH 128

typedef struct _QmpParser QmpParser;

QmpParser *qmp_parser_new(gsize max_line);
void qmp_parser_free(QmpParser *self);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(QmpParser, qmp_parser_free)

/* Zero-copy input: a writable region of at least @min bytes at the end of
 * the buffer (its real size in *out_len); then commit the bytes written. */
char *qmp_parser_reserve(QmpParser *self, gsize min, gsize *out_len);
void qmp_parser_commit(QmpParser *self, gsize n);
/* Copying input: reserve + memcpy + commit. */
void qmp_parser_feed(QmpParser *self, const void *data, gsize len);

/* The next complete message. TRUE: *out_msg is set (owned). FALSE without
 * error: more bytes are needed. FALSE with QMP_ERROR_PROTOCOL: the stream is
 * broken (over-long line, invalid UTF-8 / JSON, not an object); the error is
 * sticky. Empty lines are skipped. */
gboolean qmp_parser_next(QmpParser *self, JsonObject **out_msg, GError **error);
/* Bytes buffered but not yet returned as messages. */
gsize qmp_parser_get_buffered(QmpParser *self);

typedef enum {
    QMP_MESSAGE_GREETING, /* {"QMP": {...}} */
    QMP_MESSAGE_EVENT,    /* {"event": "NAME", "data": {...}, "timestamp": {...}} */
    QMP_MESSAGE_RETURN,   /* {"return": ..., "id": N} */
    QMP_MESSAGE_ERROR,    /* {"error": {"class": ..., "desc": ...}, "id": N} */
} QmpMessageKind;

/* Classify a message. Replies must carry a non-negative integer id (this
 * client always sends one): an id-less return or error, a malformed error
 * object or an unknown shape is QMP_ERROR_PROTOCOL. *out_id is -1 for
 * greetings and events. */
gboolean qmp_message_classify(JsonObject *msg, QmpMessageKind *out_kind, gint64 *out_id,
                              GError **error);
/* An event's timestamp in microseconds since the epoch (0 if absent/bad). */
gint64 qmp_message_get_timestamp(JsonObject *event);

/* Type-checked accessors for untrusted JSON (NULL / FALSE on absence or
 * wrong type, never a critical). Borrowed results. */
const char *qmp_json_peek_string(JsonObject *obj, const char *member);
JsonObject *qmp_json_peek_object(JsonObject *obj, const char *member);
JsonArray *qmp_json_peek_array(JsonObject *obj, const char *member);
gboolean qmp_json_get_int(JsonObject *obj, const char *member, gint64 *out_value);
gboolean qmp_json_get_bool(JsonObject *obj, const char *member, gboolean *out_value);

G_END_DECLS
