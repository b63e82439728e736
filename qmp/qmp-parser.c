/* SPDX-License-Identifier: MIT
 *
 * QMP framing: QEMU sends one JSON object per line ("\r\n" terminated). The
 * parser owns one growable buffer that the client reads into directly
 * (qmp_parser_reserve/commit), scans each byte for "\n" once, and hands out
 * complete lines parsed by one reused JsonParser. Lines are capped, checked
 * for UTF-8 and nesting depth (json-glib recurses per level and would
 * overflow the stack on a deep document) before JSON parsing.
 * Used by qmp-client.c; tested by tests/unit/test-qmp-parser.c and
 * tests/fuzz/fuzz-qmp-parser.c.
 */
#include <string.h>

#include "qmp/qmp-parser.h"

#define MIN_CAPACITY ((gsize)64 * 1024)
/* After a big message, give the memory back once the buffer is empty. */
#define SHRINK_CAPACITY ((gsize)1024 * 1024)

struct _QmpParser {
    char *buf;
    gsize cap;
    gsize start; /* first byte not yet consumed */
    gsize len;   /* end of valid data */
    gsize scan;  /* where the next "\n" search resumes (start <= scan <= len) */
    gsize max_line;
    JsonParser *json;
    GError *error; /* sticky protocol error */
};

QmpParser *
qmp_parser_new(gsize max_line)
{
    QmpParser *self = g_new0(QmpParser, 1);
    self->max_line = max_line ? max_line : QMP_PARSER_DEFAULT_MAX_LINE;
    self->json = json_parser_new();
    return self;
}

void
qmp_parser_free(QmpParser *self)
{
    if (self == NULL)
        return;
    g_free(self->buf);
    g_clear_object(&self->json);
    g_clear_error(&self->error);
    g_free(self);
}

char *
qmp_parser_reserve(QmpParser *self, gsize min, gsize *out_len)
{
    if (min == 0)
        min = 1;
    if (self->cap - self->len < min && self->start > 0) {
        /* Move the partial line to the front; whole lines are already gone. */
        gsize keep = self->len - self->start;
        memmove(self->buf, self->buf + self->start, keep);
        self->scan -= self->start;
        self->len = keep;
        self->start = 0;
    }
    if (self->cap - self->len < min) {
        gsize cap = MAX(self->cap, MIN_CAPACITY);
        while (cap - self->len < min)
            cap *= 2;
        self->buf = g_realloc(self->buf, cap);
        self->cap = cap;
    }
    if (out_len)
        *out_len = self->cap - self->len;
    return self->buf + self->len;
}

void
qmp_parser_commit(QmpParser *self, gsize n)
{
    g_return_if_fail(n <= self->cap - self->len);
    self->len += n;
}

void
qmp_parser_feed(QmpParser *self, const void *data, gsize len)
{
    if (len == 0)
        return;
    memcpy(qmp_parser_reserve(self, len, NULL), data, len);
    qmp_parser_commit(self, len);
}

gsize
qmp_parser_get_buffered(QmpParser *self)
{
    return self->len - self->start;
}

static gboolean fail(QmpParser *self, GError **error, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

static gboolean
fail(QmpParser *self, GError **error, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    self->error = g_error_new_literal(QMP_ERROR, QMP_ERROR_PROTOCOL, msg);
    /* Drop the buffered bytes: nothing after a framing error can be trusted. */
    self->start = self->len = self->scan = 0;
    g_propagate_error(error, g_error_copy(self->error));
    return FALSE;
}

/* Shape check before json-glib sees the line: it must be one object (first
 * non-blank byte "{", nothing but blanks after its closing "}") nested at most
 * QMP_PARSER_MAX_DEPTH deep (json-glib recurses per level and would overflow
 * the stack; it also accepts several root values or "var x = ..." that QMP
 * never sends). Brackets inside strings do not count. */
static const char *
check_shape(const char *p, gsize n)
{
    guint depth = 0;
    gboolean in_string = FALSE, closed = FALSE;
    gsize i = 0;

    while (i < n && g_ascii_isspace(p[i]))
        i++;
    if (i == n || p[i] != '{')
        return "QMP message is not a JSON object";
    for (; i < n; i++) {
        char c = p[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = FALSE;
        } else if (closed) {
            if (!g_ascii_isspace(c))
                return "trailing data after the QMP message";
        } else if (c == '"') {
            in_string = TRUE;
        } else if (c == '[' || c == '{') {
            if (++depth > QMP_PARSER_MAX_DEPTH)
                return "QMP message nested too deeply";
        } else if (c == ']' || c == '}') {
            if (depth == 0 || --depth == 0)
                closed = TRUE;
        }
    }
    return NULL; /* unbalanced input is left to json-glib to reject */
}

gboolean
qmp_parser_next(QmpParser *self, JsonObject **out_msg, GError **error)
{
    g_return_val_if_fail(out_msg != NULL && *out_msg == NULL, FALSE);

    if (self->error) {
        g_propagate_error(error, g_error_copy(self->error));
        return FALSE;
    }
    for (;;) {
        char *nl = self->scan < self->len
                       ? memchr(self->buf + self->scan, '\n', self->len - self->scan)
                       : NULL;
        if (nl == NULL) {
            self->scan = self->len;
            if (self->start == self->len) {
                self->start = self->len = self->scan = 0; /* empty: no memmove later */
                if (self->cap > SHRINK_CAPACITY) {
                    g_clear_pointer(&self->buf, g_free);
                    self->cap = 0;
                }
                return FALSE;
            }
            /* +1: a line of exactly max_line bytes may still be waiting for "\r\n". */
            if (self->len - self->start > self->max_line + 1)
                return fail(self, error, "QMP line longer than %" G_GSIZE_FORMAT " bytes",
                            self->max_line);
            return FALSE;
        }

        const char *line = self->buf + self->start;
        gsize n = (gsize)(nl - line);
        self->start = self->scan = (gsize)(nl - self->buf) + 1;
        if (n > 0 && line[n - 1] == '\r')
            n--;
        if (n == 0)
            continue;
        if (n > self->max_line)
            return fail(self, error, "QMP line longer than %" G_GSIZE_FORMAT " bytes",
                        self->max_line);
        if (!g_utf8_validate_len(line, n, NULL))
            return fail(self, error, "QMP message is not valid UTF-8");
        const char *bad_shape = check_shape(line, n);
        if (bad_shape != NULL)
            return fail(self, error, "%s", bad_shape);

        g_autoptr(GError) local = NULL;
        if (!json_parser_load_from_data(self->json, line, (gssize)n, &local))
            return fail(self, error, "QMP message is not valid JSON: %s", local->message);
        g_autoptr(JsonNode) root = json_parser_steal_root(self->json);
        if (root == NULL || !JSON_NODE_HOLDS_OBJECT(root))
            return fail(self, error, "QMP message is not a JSON object");
        *out_msg = json_node_dup_object(root);
        return TRUE;
    }
}

/* ---- classification and checked accessors ---- */

static JsonNode *
member_value(JsonObject *obj, const char *member, GType type)
{
    JsonNode *node = json_object_get_member(obj, member);
    if (node == NULL || !JSON_NODE_HOLDS_VALUE(node) || json_node_get_value_type(node) != type)
        return NULL;
    return node;
}

const char *
qmp_json_peek_string(JsonObject *obj, const char *member)
{
    JsonNode *node = member_value(obj, member, G_TYPE_STRING);
    return node ? json_node_get_string(node) : NULL;
}

JsonObject *
qmp_json_peek_object(JsonObject *obj, const char *member)
{
    JsonNode *node = json_object_get_member(obj, member);
    return node && JSON_NODE_HOLDS_OBJECT(node) ? json_node_get_object(node) : NULL;
}

JsonArray *
qmp_json_peek_array(JsonObject *obj, const char *member)
{
    JsonNode *node = json_object_get_member(obj, member);
    return node && JSON_NODE_HOLDS_ARRAY(node) ? json_node_get_array(node) : NULL;
}

gboolean
qmp_json_get_int(JsonObject *obj, const char *member, gint64 *out_value)
{
    JsonNode *node = member_value(obj, member, G_TYPE_INT64);
    if (node == NULL)
        return FALSE;
    *out_value = json_node_get_int(node);
    return TRUE;
}

gboolean
qmp_json_get_bool(JsonObject *obj, const char *member, gboolean *out_value)
{
    JsonNode *node = member_value(obj, member, G_TYPE_BOOLEAN);
    if (node == NULL)
        return FALSE;
    *out_value = json_node_get_boolean(node);
    return TRUE;
}

static gboolean
protocol_error(GError **error, const char *what)
{
    g_set_error(error, QMP_ERROR, QMP_ERROR_PROTOCOL, "QMP protocol error: %s", what);
    return FALSE;
}

gboolean
qmp_message_classify(JsonObject *msg, QmpMessageKind *out_kind, gint64 *out_id, GError **error)
{
    gint64 id = -1;
    gboolean has_id = json_object_has_member(msg, "id");

    if (has_id && (!qmp_json_get_int(msg, "id", &id) || id < 0))
        return protocol_error(error, "reply id is not a non-negative integer");

    if (json_object_has_member(msg, "return")) {
        if (!has_id)
            return protocol_error(error, "reply without an id");
        *out_kind = QMP_MESSAGE_RETURN;
    } else if (json_object_has_member(msg, "error")) {
        JsonObject *err = qmp_json_peek_object(msg, "error");
        if (!has_id)
            return protocol_error(error, "error reply without an id");
        if (err == NULL || !qmp_json_peek_string(err, "class") ||
            !qmp_json_peek_string(err, "desc"))
            return protocol_error(error, "malformed error reply");
        *out_kind = QMP_MESSAGE_ERROR;
    } else if (json_object_has_member(msg, "event")) {
        if (qmp_json_peek_string(msg, "event") == NULL)
            return protocol_error(error, "event name is not a string");
        if (json_object_has_member(msg, "data") && qmp_json_peek_object(msg, "data") == NULL)
            return protocol_error(error, "event data is not an object");
        *out_kind = QMP_MESSAGE_EVENT;
        id = -1;
    } else if (qmp_json_peek_object(msg, "QMP") != NULL) {
        *out_kind = QMP_MESSAGE_GREETING;
        id = -1;
    } else {
        return protocol_error(error, "message of unknown shape");
    }
    if (out_id)
        *out_id = id;
    return TRUE;
}

gint64
qmp_message_get_timestamp(JsonObject *event)
{
    JsonObject *ts = qmp_json_peek_object(event, "timestamp");
    gint64 s = 0, us = 0;

    if (ts == NULL || !qmp_json_get_int(ts, "seconds", &s) ||
        !qmp_json_get_int(ts, "microseconds", &us))
        return 0;
    if (s < 0 || s > G_MAXINT64 / G_USEC_PER_SEC - 1 || us < 0 || us >= G_USEC_PER_SEC)
        return 0;
    return s * G_USEC_PER_SEC + us;
}
