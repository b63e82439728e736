/* SPDX-License-Identifier: MIT
 *
 * sbx-frame: the host <-> guest wire codec (see sbx-frame.h and
 * docs/guest-protocol.md). The decoder keeps one growing buffer with a read
 * offset and one reusable JsonParser, so steady-state decoding allocates the
 * frame, its JSON object and its payload GBytes and nothing else. The
 * encoder appends prefix + JSON + payload to the caller's output buffer.
 * Used by scheduler/sbx-guest.c (host) and guest/agent/ (guest).
 */
#include "common/sbx-frame.h"

#include <string.h>

G_DEFINE_QUARK(sbx-frame-error-quark, sbx_frame_error)

struct _SbxFrameDecoder {
    GByteArray *buf;
    gsize start;        /* first unconsumed byte in buf */
    JsonParser *parser; /* reused for every header */
    GError *poison;     /* sticky error once framing is lost */
};

void
sbx_frame_free(SbxFrame *frame)
{
    if (!frame)
        return;
    g_clear_pointer(&frame->header, json_object_unref);
    g_clear_pointer(&frame->payload, g_bytes_unref);
    g_free(frame);
}

const char *
sbx_frame_get_string(const SbxFrame *frame, const char *member, const char *def)
{
    JsonNode *n = json_object_get_member(frame->header, member);
    if (!n || json_node_get_value_type(n) != G_TYPE_STRING)
        return def;
    return json_node_get_string(n);
}

gint64
sbx_frame_get_int(const SbxFrame *frame, const char *member, gint64 def)
{
    JsonNode *n = json_object_get_member(frame->header, member);
    if (!n || json_node_get_value_type(n) != G_TYPE_INT64)
        return def;
    return json_node_get_int(n);
}

gboolean
sbx_frame_get_bool(const SbxFrame *frame, const char *member, gboolean def)
{
    JsonNode *n = json_object_get_member(frame->header, member);
    if (!n || json_node_get_value_type(n) != G_TYPE_BOOLEAN)
        return def;
    return json_node_get_boolean(n);
}

SbxFrameDecoder *
sbx_frame_decoder_new(void)
{
    SbxFrameDecoder *dec = g_new0(SbxFrameDecoder, 1);
    dec->buf = g_byte_array_sized_new(64 * 1024);
    dec->parser = json_parser_new_immutable();
    return dec;
}

void
sbx_frame_decoder_free(SbxFrameDecoder *dec)
{
    if (!dec)
        return;
    g_byte_array_unref(dec->buf);
    g_object_unref(dec->parser);
    g_clear_error(&dec->poison);
    g_free(dec);
}

void
sbx_frame_decoder_reset(SbxFrameDecoder *dec)
{
    g_byte_array_set_size(dec->buf, 0);
    dec->start = 0;
    g_clear_error(&dec->poison);
}

gsize
sbx_frame_decoder_get_buffered(SbxFrameDecoder *dec)
{
    return dec->buf->len - dec->start;
}

static guint32
read_be32(const guint8 *p)
{
    return ((guint32)p[0] << 24) | ((guint32)p[1] << 16) | ((guint32)p[2] << 8) | (guint32)p[3];
}

static void
write_be32(guint8 *p, guint32 v)
{
    p[0] = (guint8)(v >> 24);
    p[1] = (guint8)(v >> 16);
    p[2] = (guint8)(v >> 8);
    p[3] = (guint8)v;
}

static gboolean
fail(SbxFrameDecoder *dec, GError **error, SbxFrameError code, const char *fmt, ...) G_GNUC_PRINTF(4, 5);

static gboolean
fail(SbxFrameDecoder *dec, GError **error, SbxFrameError code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (!dec->poison)
        dec->poison = g_error_new_literal(SBX_FRAME_ERROR, (int)code, msg);
    g_propagate_error(error, g_error_copy(dec->poison));
    return FALSE;
}

/* Check the prefix of the frame at dec->start, if complete. */
static gboolean
check_prefix(SbxFrameDecoder *dec, guint32 *out_hlen, guint32 *out_plen, GError **error)
{
    const guint8 *p = dec->buf->data + dec->start;
    guint32 hlen = read_be32(p);
    guint32 plen = read_be32(p + 4);

    if (hlen == 0)
        return fail(dec, error, SBX_FRAME_ERROR_BAD_HEADER, "frame header is empty");
    if (hlen > SBX_FRAME_MAX_HEADER)
        return fail(dec, error, SBX_FRAME_ERROR_TOO_LARGE,
                    "frame header of %u bytes exceeds the %u byte limit", hlen, SBX_FRAME_MAX_HEADER);
    if (plen > SBX_FRAME_MAX_PAYLOAD)
        return fail(dec, error, SBX_FRAME_ERROR_TOO_LARGE,
                    "frame payload of %u bytes exceeds the %u byte limit", plen, SBX_FRAME_MAX_PAYLOAD);
    *out_hlen = hlen;
    *out_plen = plen;
    return TRUE;
}

gboolean
sbx_frame_decoder_feed(SbxFrameDecoder *dec, const void *data, gsize len, GError **error)
{
    guint32 hlen, plen;

    if (dec->poison) {
        g_propagate_error(error, g_error_copy(dec->poison));
        return FALSE;
    }
    /* Compact before growing: drop consumed bytes once they dominate. */
    if (dec->start > 0 && (dec->start == dec->buf->len || dec->start >= dec->buf->len / 2)) {
        g_byte_array_remove_range(dec->buf, 0, (guint)dec->start);
        dec->start = 0;
    }
    if (len > 0)
        g_byte_array_append(dec->buf, data, (guint)len);
    if (sbx_frame_decoder_get_buffered(dec) >= SBX_FRAME_PREFIX_SIZE)
        return check_prefix(dec, &hlen, &plen, error);
    return TRUE;
}

SbxFrame *
sbx_frame_decoder_pop(SbxFrameDecoder *dec, GError **error)
{
    guint32 hlen, plen;
    const guint8 *p;
    JsonNode *root, *n;
    g_autoptr(GError) local = NULL;
    g_autoptr(SbxFrame) frame = NULL;

    if (dec->poison) {
        g_propagate_error(error, g_error_copy(dec->poison));
        return NULL;
    }
    if (sbx_frame_decoder_get_buffered(dec) < SBX_FRAME_PREFIX_SIZE)
        return NULL;
    if (!check_prefix(dec, &hlen, &plen, error))
        return NULL;
    if (sbx_frame_decoder_get_buffered(dec) < (gsize)SBX_FRAME_PREFIX_SIZE + hlen + plen)
        return NULL;

    p = dec->buf->data + dec->start + SBX_FRAME_PREFIX_SIZE;
    if (!g_utf8_validate((const char *)p, hlen, NULL)) {
        fail(dec, error, SBX_FRAME_ERROR_BAD_UTF8, "frame header is not valid UTF-8");
        return NULL;
    }
    if (!json_parser_load_from_data(dec->parser, (const char *)p, hlen, &local)) {
        fail(dec, error, SBX_FRAME_ERROR_BAD_JSON, "frame header is not JSON: %s", local->message);
        return NULL;
    }
    root = json_parser_get_root(dec->parser);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        fail(dec, error, SBX_FRAME_ERROR_BAD_JSON, "frame header is not a JSON object");
        return NULL;
    }
    frame = g_new0(SbxFrame, 1);
    frame->header = json_node_dup_object(root);
    n = json_object_get_member(frame->header, "type");
    if (!n || json_node_get_value_type(n) != G_TYPE_STRING || !*json_node_get_string(n)) {
        fail(dec, error, SBX_FRAME_ERROR_BAD_HEADER, "frame header has no \"type\" string");
        return NULL;
    }
    frame->type = json_node_get_string(n);
    n = json_object_get_member(frame->header, "id");
    if (!n || json_node_get_value_type(n) != G_TYPE_INT64 || json_node_get_int(n) < 0) {
        fail(dec, error, SBX_FRAME_ERROR_BAD_HEADER,
             "frame header has no non-negative integer \"id\" (type \"%s\")", frame->type);
        return NULL;
    }
    frame->id = json_node_get_int(n);
    frame->payload = g_bytes_new(p + hlen, plen);
    dec->start += SBX_FRAME_PREFIX_SIZE + hlen + plen;
    return g_steal_pointer(&frame);
}

JsonObject *
sbx_frame_header_new(const char *type, gint64 id)
{
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "type", type);
    json_object_set_int_member(o, "id", id);
    return o;
}

gboolean
sbx_frame_encode(GByteArray *out, JsonObject *header, const void *payload, gsize payload_len,
                 GError **error)
{
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autoptr(JsonNode) root = json_node_new(JSON_NODE_OBJECT);
    g_autofree char *text = NULL;
    gsize hlen = 0;
    guint8 prefix[SBX_FRAME_PREFIX_SIZE];

    g_return_val_if_fail(json_object_has_member(header, "type"), FALSE);
    g_return_val_if_fail(json_object_has_member(header, "id"), FALSE);

    json_node_set_object(root, header);
    json_generator_set_root(gen, root);
    text = json_generator_to_data(gen, &hlen);
    if (hlen > SBX_FRAME_MAX_HEADER) {
        g_set_error(error, SBX_FRAME_ERROR, SBX_FRAME_ERROR_TOO_LARGE,
                    "frame header of %" G_GSIZE_FORMAT " bytes exceeds the %u byte limit", hlen,
                    SBX_FRAME_MAX_HEADER);
        return FALSE;
    }
    if (payload_len > SBX_FRAME_MAX_PAYLOAD) {
        g_set_error(error, SBX_FRAME_ERROR, SBX_FRAME_ERROR_TOO_LARGE,
                    "frame payload of %" G_GSIZE_FORMAT " bytes exceeds the %u byte limit",
                    payload_len, SBX_FRAME_MAX_PAYLOAD);
        return FALSE;
    }
    write_be32(prefix, (guint32)hlen);
    write_be32(prefix + 4, (guint32)payload_len);
    g_byte_array_append(out, prefix, sizeof prefix);
    g_byte_array_append(out, (const guint8 *)text, (guint)hlen);
    if (payload_len > 0)
        g_byte_array_append(out, payload, (guint)payload_len);
    return TRUE;
}
