/* SPDX-License-Identifier: MIT
 *
 * Unit tests for the wire codec (common/sbx-frame.c): round trips, frames
 * split at every byte, several frames in one feed, size limits checked from
 * the prefix alone, bad UTF-8 / JSON / header fields, and the sticky error.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "common/sbx-frame.h"

static GByteArray *
encode_one(const char *type, gint64 id, const char *payload, gsize plen)
{
    GByteArray *out = g_byte_array_new();
    g_autoptr(JsonObject) h = sbx_frame_header_new(type, id);
    g_autoptr(GError) error = NULL;
    json_object_set_string_member(h, "note", "h\xc3\xa9llo \"quoted\"\n");
    assert_true(sbx_frame_encode(out, h, payload, plen, &error));
    assert_null(error);
    return out;
}

/* Hand-built frame: prefix with the given lengths, then raw header text and payload. */
static GByteArray *
raw_frame(guint32 hlen, guint32 plen, const char *hdr, gsize hdr_bytes, const char *payload, gsize pbytes)
{
    GByteArray *out = g_byte_array_new();
    guint8 p[8] = { hlen >> 24, hlen >> 16, hlen >> 8, hlen, plen >> 24, plen >> 16, plen >> 8, plen };
    g_byte_array_append(out, p, 8);
    if (hdr_bytes)
        g_byte_array_append(out, (const guint8 *)hdr, (guint)hdr_bytes);
    if (pbytes)
        g_byte_array_append(out, (const guint8 *)payload, (guint)pbytes);
    return out;
}

static void
test_roundtrip(void **state)
{
    static const char payload[] = "bin\0ary\xff\xfe";
    g_autoptr(GByteArray) wire = encode_one("stdout", 42, payload, sizeof payload);
    g_autoptr(SbxFrameDecoder) dec = sbx_frame_decoder_new();
    g_autoptr(GError) error = NULL;
    g_autoptr(SbxFrame) f = NULL;
    gsize n;

    assert_true(sbx_frame_decoder_feed(dec, wire->data, wire->len, &error));
    f = sbx_frame_decoder_pop(dec, &error);
    assert_null(error);
    assert_non_null(f);
    assert_string_equal(f->type, "stdout");
    assert_int_equal(f->id, 42);
    assert_string_equal(sbx_frame_get_string(f, "note", NULL), "h\xc3\xa9llo \"quoted\"\n");
    assert_int_equal(sbx_frame_get_int(f, "missing", -7), -7);
    assert_true(sbx_frame_get_bool(f, "note", TRUE)); /* ill-typed -> default */
    const guint8 *d = g_bytes_get_data(f->payload, &n);
    assert_int_equal(n, sizeof payload);
    assert_memory_equal(d, payload, sizeof payload);
    assert_null(sbx_frame_decoder_pop(dec, &error));
    assert_null(error);
    assert_int_equal(sbx_frame_decoder_get_buffered(dec), 0);
}

static void
test_partial_every_split(void **state)
{
    g_autoptr(GByteArray) wire = encode_one("exec", 7, "print(1)", 8);

    for (guint split = 0; split <= wire->len; split++) {
        g_autoptr(SbxFrameDecoder) dec = sbx_frame_decoder_new();
        g_autoptr(GError) error = NULL;
        g_autoptr(SbxFrame) f = NULL;
        /* feed byte by byte up to split, then the rest */
        for (guint i = 0; i < split; i++) {
            assert_true(sbx_frame_decoder_feed(dec, wire->data + i, 1, &error));
            SbxFrame *early = sbx_frame_decoder_pop(dec, &error);
            assert_null(error);
            if (i + 1 < wire->len)
                assert_null(early);
            else
                f = early;
        }
        if (!f) {
            assert_true(sbx_frame_decoder_feed(dec, wire->data + split, wire->len - split, &error));
            f = sbx_frame_decoder_pop(dec, &error);
        }
        assert_null(error);
        assert_non_null(f);
        assert_string_equal(f->type, "exec");
        assert_int_equal(g_bytes_get_size(f->payload), 8);
    }
}

static void
test_several_per_feed(void **state)
{
    g_autoptr(GByteArray) all = g_byte_array_new();
    g_autoptr(SbxFrameDecoder) dec = sbx_frame_decoder_new();
    g_autoptr(GError) error = NULL;

    for (int i = 0; i < 50; i++) {
        g_autofree char *p = g_strdup_printf("chunk-%d", i);
        g_autoptr(GByteArray) one = encode_one(i % 2 ? "stdout" : "stderr", i, p, i % 3 ? strlen(p) : 0);
        g_byte_array_append(all, one->data, one->len);
    }
    /* Feed in awkward 13-byte slices, popping as we go. */
    int seen = 0;
    for (guint off = 0; off < all->len; off += 13) {
        assert_true(sbx_frame_decoder_feed(dec, all->data + off, MIN(13u, all->len - off), &error));
        SbxFrame *f;
        while ((f = sbx_frame_decoder_pop(dec, &error))) {
            assert_int_equal(f->id, seen);
            assert_int_equal(g_bytes_get_size(f->payload), seen % 3 ? strlen("chunk-") + (seen < 10 ? 1 : 2) : 0);
            sbx_frame_free(f);
            seen++;
        }
        assert_null(error);
    }
    assert_int_equal(seen, 50);
    assert_int_equal(sbx_frame_decoder_get_buffered(dec), 0);
}

static void
test_oversize(void **state)
{
    struct { guint32 hlen, plen; } cases[] = {
        { SBX_FRAME_MAX_HEADER + 1, 0 },
        { 10, SBX_FRAME_MAX_PAYLOAD + 1 },
        { 0xffffffffu, 0xffffffffu },
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(SbxFrameDecoder) dec = sbx_frame_decoder_new();
        g_autoptr(GError) error = NULL;
        g_autoptr(GByteArray) w = raw_frame(cases[i].hlen, cases[i].plen, NULL, 0, NULL, 0);
        /* Refused from the 8-byte prefix alone, before any body arrives. */
        assert_false(sbx_frame_decoder_feed(dec, w->data, w->len, &error));
        assert_true(g_error_matches(error, SBX_FRAME_ERROR, SBX_FRAME_ERROR_TOO_LARGE));
        g_clear_error(&error);
        /* Sticky. */
        assert_null(sbx_frame_decoder_pop(dec, &error));
        assert_true(g_error_matches(error, SBX_FRAME_ERROR, SBX_FRAME_ERROR_TOO_LARGE));
        g_clear_error(&error);
        assert_false(sbx_frame_decoder_feed(dec, "x", 1, &error));
        g_clear_error(&error);
        /* Reset recovers. */
        sbx_frame_decoder_reset(dec);
        g_autoptr(GByteArray) ok = encode_one("ping", 1, NULL, 0);
        assert_true(sbx_frame_decoder_feed(dec, ok->data, ok->len, &error));
        g_autoptr(SbxFrame) f = sbx_frame_decoder_pop(dec, &error);
        assert_non_null(f);
    }
    /* Exactly at the limits is fine (the prefix check). */
    g_autoptr(SbxFrameDecoder) dec = sbx_frame_decoder_new();
    g_autoptr(GError) error = NULL;
    g_autoptr(GByteArray) w = raw_frame(SBX_FRAME_MAX_HEADER, SBX_FRAME_MAX_PAYLOAD, NULL, 0, NULL, 0);
    assert_true(sbx_frame_decoder_feed(dec, w->data, w->len, &error));
    assert_null(sbx_frame_decoder_pop(dec, &error));
    assert_null(error);
    /* And the encoder refuses an oversize payload. */
    g_autoptr(GByteArray) out = g_byte_array_new();
    g_autoptr(JsonObject) h = sbx_frame_header_new("x", 1);
    g_autofree guint8 *big = g_malloc0(SBX_FRAME_MAX_PAYLOAD + 1);
    assert_false(sbx_frame_encode(out, h, big, SBX_FRAME_MAX_PAYLOAD + 1, &error));
    assert_true(g_error_matches(error, SBX_FRAME_ERROR, SBX_FRAME_ERROR_TOO_LARGE));
    assert_int_equal(out->len, 0);
    g_clear_error(&error);
    assert_true(sbx_frame_encode(out, h, big, SBX_FRAME_MAX_PAYLOAD, &error));
}

static void
test_bad_headers(void **state)
{
    struct { const char *hdr; gsize len; int code; } cases[] = {
        { "{\"type\":\"a\",\"id\":1,\"x\":\"\xff\"}", 0, SBX_FRAME_ERROR_BAD_UTF8 },
        { "{\"type\":\"a\",\0\"id\":1}", 21, SBX_FRAME_ERROR_BAD_UTF8 },
        { "{\"type\":\"a\",\"id\":1", 0, SBX_FRAME_ERROR_BAD_JSON },
        { "[1,2,3]", 0, SBX_FRAME_ERROR_BAD_JSON },
        { "\"str\"", 0, SBX_FRAME_ERROR_BAD_JSON },
        { "{\"id\":1}", 0, SBX_FRAME_ERROR_BAD_HEADER },
        { "{\"type\":\"\",\"id\":1}", 0, SBX_FRAME_ERROR_BAD_HEADER },
        { "{\"type\":5,\"id\":1}", 0, SBX_FRAME_ERROR_BAD_HEADER },
        { "{\"type\":\"a\"}", 0, SBX_FRAME_ERROR_BAD_HEADER },
        { "{\"type\":\"a\",\"id\":-1}", 0, SBX_FRAME_ERROR_BAD_HEADER },
        { "{\"type\":\"a\",\"id\":1.5}", 0, SBX_FRAME_ERROR_BAD_HEADER },
        { "{\"type\":\"a\",\"id\":\"1\"}", 0, SBX_FRAME_ERROR_BAD_HEADER },
        { "", 0, SBX_FRAME_ERROR_BAD_HEADER },
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(SbxFrameDecoder) dec = sbx_frame_decoder_new();
        g_autoptr(GError) error = NULL;
        gsize len = cases[i].len ? cases[i].len : strlen(cases[i].hdr);
        g_autoptr(GByteArray) w = raw_frame((guint32)len, 2, cases[i].hdr, len, "pp", 2);
        gboolean fed = sbx_frame_decoder_feed(dec, w->data, w->len, &error);
        SbxFrame *f = NULL;
        if (fed)
            f = sbx_frame_decoder_pop(dec, &error);
        assert_null(f);
        assert_non_null(error);
        if (!g_error_matches(error, SBX_FRAME_ERROR, cases[i].code))
            fail_msg("case %zu: got code %d (%s), want %d", i, error->code, error->message, cases[i].code);
    }
}

/* Garbage and mutated frames: every feed ends in frames or a clean error, never a crash. */
static void
test_garbage(void **state)
{
    g_autoptr(GRand) rnd = g_rand_new_with_seed(1234);
    g_autoptr(GByteArray) good = encode_one("stdout", 3, "payload", 7);

    for (int round = 0; round < 2000; round++) {
        g_autoptr(SbxFrameDecoder) dec = sbx_frame_decoder_new();
        g_autoptr(GByteArray) w = g_byte_array_new();
        g_autoptr(GError) error = NULL;
        if (round % 2) {
            g_byte_array_append(w, good->data, good->len);
            for (int k = 0; k < 3; k++)
                w->data[g_rand_int_range(rnd, 0, (gint32)w->len)] = (guint8)g_rand_int(rnd);
        } else {
            guint n = (guint)g_rand_int_range(rnd, 0, 64);
            for (guint i = 0; i < n; i++) {
                guint8 b = (guint8)g_rand_int(rnd);
                g_byte_array_append(w, &b, 1);
            }
        }
        if (sbx_frame_decoder_feed(dec, w->data, w->len, &error)) {
            SbxFrame *f;
            while ((f = sbx_frame_decoder_pop(dec, &error))) {
                assert_non_null(f->type);
                assert_true(f->id >= 0);
                sbx_frame_free(f);
            }
        }
        assert_true(error == NULL || error->domain == SBX_FRAME_ERROR);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_partial_every_split),
        cmocka_unit_test(test_several_per_feed),
        cmocka_unit_test(test_oversize),
        cmocka_unit_test(test_bad_headers),
        cmocka_unit_test(test_garbage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
