/* SPDX-License-Identifier: MIT
 *
 * Unit tests of qmp/qmp-parser.c: QMP framing (partial reads, several
 * messages per read, CRLF, over-long lines, invalid UTF-8 / JSON, nesting
 * bomb) and message classification (greeting, event, reply, id-less error,
 * bad ids). Pure: no sockets, no main loop.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "qmp/qmp-parser.h"

/* Feed @text in chunks of @chunk bytes; collect every message. */
static GPtrArray *
feed_chunked(QmpParser *p, const char *text, gsize len, gsize chunk, GError **error)
{
    GPtrArray *msgs = g_ptr_array_new_with_free_func((GDestroyNotify)json_object_unref);

    for (gsize off = 0; off < len; off += chunk) {
        qmp_parser_feed(p, text + off, MIN(chunk, len - off));
        for (;;) {
            JsonObject *msg = NULL;
            if (!qmp_parser_next(p, &msg, error)) {
                if (error && *error)
                    return msgs;
                break;
            }
            g_ptr_array_add(msgs, msg);
        }
    }
    return msgs;
}

static void
test_partial_reads(void **state)
{
    const char *text =
        "{\"return\": {\"status\": \"running\"}, \"id\": 7}\r\n"
        "{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\r\n";
    /* Every chunk size from 1 byte to the whole text gives the same two messages. */
    for (gsize chunk = 1; chunk <= strlen(text); chunk++) {
        g_autoptr(QmpParser) p = qmp_parser_new(0);
        g_autoptr(GError) error = NULL;
        g_autoptr(GPtrArray) msgs = feed_chunked(p, text, strlen(text), chunk, &error);

        assert_null(error);
        assert_int_equal(msgs->len, 2);
        JsonObject *ret = qmp_json_peek_object(g_ptr_array_index(msgs, 0), "return");
        assert_non_null(ret);
        assert_string_equal(qmp_json_peek_string(ret, "status"), "running");
        assert_string_equal(qmp_json_peek_string(g_ptr_array_index(msgs, 1), "event"), "STOP");
        assert_int_equal(qmp_message_get_timestamp(g_ptr_array_index(msgs, 1)), 1000002);
        assert_int_equal(qmp_parser_get_buffered(p), 0);
    }
}

static void
test_many_in_one_read_and_lf_only(void **state)
{
    g_autoptr(QmpParser) p = qmp_parser_new(0);
    g_autoptr(GError) error = NULL;
    GString *s = g_string_new(NULL);

    for (int i = 0; i < 100; i++)
        g_string_append_printf(s, "{\"return\": %d, \"id\": %d}%s", i, i, i % 2 ? "\r\n" : "\n");
    g_string_append(s, "\r\n\n");                        /* empty lines are skipped */
    g_string_append(s, "{\"return\": {}, \"id\": 1000"); /* incomplete tail stays buffered */
    g_autoptr(GPtrArray) msgs = feed_chunked(p, s->str, s->len, s->len, &error);
    assert_null(error);
    assert_int_equal(msgs->len, 100);
    for (guint i = 0; i < msgs->len; i++) {
        gint64 id = -1;
        QmpMessageKind kind;
        assert_true(qmp_message_classify(g_ptr_array_index(msgs, i), &kind, &id, NULL));
        assert_int_equal(kind, QMP_MESSAGE_RETURN);
        assert_int_equal(id, i);
    }
    assert_int_equal(qmp_parser_get_buffered(p), strlen("{\"return\": {}, \"id\": 1000"));
    qmp_parser_feed(p, "}\r\n", 3);
    g_autoptr(JsonObject) last = NULL;
    assert_true(qmp_parser_next(p, &last, &error));
    gint64 id = 0;
    assert_true(qmp_json_get_int(last, "id", &id));
    assert_int_equal(id, 1000);
    g_string_free(s, TRUE);
}

static void
test_zero_copy_reserve(void **state)
{
    g_autoptr(QmpParser) p = qmp_parser_new(0);
    gsize avail = 0;
    char *buf = qmp_parser_reserve(p, 16, &avail);
    const char *msg = "{\"QMP\": {\"version\": {}}}\n";

    assert_true(avail >= 16);
    memcpy(buf, msg, strlen(msg));
    qmp_parser_commit(p, strlen(msg));
    g_autoptr(JsonObject) obj = NULL;
    assert_true(qmp_parser_next(p, &obj, NULL));
    QmpMessageKind kind;
    assert_true(qmp_message_classify(obj, &kind, NULL, NULL));
    assert_int_equal(kind, QMP_MESSAGE_GREETING);
}

/* A 5 MiB message (under the cap) arrives in 64 KiB reads and parses; the
 * buffer is given back afterwards and small messages still work. */
static void
test_big_message(void **state)
{
    g_autoptr(QmpParser) p = qmp_parser_new(0);
    GString *s = g_string_new("{\"return\": [");
    guint n = 0;

    while (s->len < 5 * 1024 * 1024) {
        g_string_append(s, "{\"name\": \"x\"},");
        n++;
    }
    g_string_append(s, "{}], \"id\": 1}\r\n{\"return\": {}, \"id\": 2}\r\n");
    g_autoptr(GError) error = NULL;
    g_autoptr(GPtrArray) msgs = feed_chunked(p, s->str, s->len, 65536, &error);
    assert_null(error);
    assert_int_equal(msgs->len, 2);
    JsonArray *arr = qmp_json_peek_array(g_ptr_array_index(msgs, 0), "return");
    assert_int_equal(json_array_get_length(arr), n + 1);
    gsize avail = 0;
    (void)qmp_parser_reserve(p, 1, &avail);
    assert_true(avail <= 1024 * 1024); /* shrunk */
    g_string_free(s, TRUE);
}

static void
expect_protocol_error(QmpParser *p, const char *what)
{
    g_autoptr(JsonObject) msg = NULL;
    g_autoptr(GError) error = NULL;
    assert_false(qmp_parser_next(p, &msg, &error));
    assert_null(msg);
    if (!g_error_matches(error, QMP_ERROR, QMP_ERROR_PROTOCOL))
        fail_msg("%s: expected a protocol error, got %s", what, error ? error->message : "none");
    /* Sticky: the stream stays broken. */
    g_clear_error(&error);
    qmp_parser_feed(p, "{\"return\": {}, \"id\": 1}\n", 24);
    assert_false(qmp_parser_next(p, &msg, &error));
    assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_PROTOCOL));
}

static void
test_over_long_line(void **state)
{
    const gsize cap = 1000;
    /* Exactly at the cap is fine, in any split, CRLF-terminated. */
    {
        g_autoptr(QmpParser) p = qmp_parser_new(cap);
        g_autofree char *line = g_malloc(cap + 2);
        memset(line, ' ', cap);
        memcpy(line, "{\"return\": 1, \"id\": 1}", 22);
        line[cap] = '\r';
        line[cap + 1] = '\n';
        qmp_parser_feed(p, line, cap + 1); /* "\r" arrives, "\n" not yet */
        g_autoptr(JsonObject) msg = NULL;
        assert_false(qmp_parser_next(p, &msg, NULL));
        qmp_parser_feed(p, "\n", 1);
        assert_true(qmp_parser_next(p, &msg, NULL));
    }
    /* One byte more, no newline at all: refused as soon as it is known to be too long. */
    {
        g_autoptr(QmpParser) p = qmp_parser_new(cap);
        g_autofree char *line = g_malloc(cap + 2);
        memset(line, 'x', cap + 2);
        qmp_parser_feed(p, line, cap + 2);
        expect_protocol_error(p, "over-long unterminated line");
    }
    /* One byte more, terminated. */
    {
        g_autoptr(QmpParser) p = qmp_parser_new(cap);
        g_autofree char *line = g_malloc(cap + 2);
        memset(line, ' ', cap + 1);
        line[cap + 1] = '\n';
        qmp_parser_feed(p, line, cap + 2);
        expect_protocol_error(p, "over-long terminated line");
    }
}

static void
test_default_cap_is_10_mib(void **state)
{
    g_autoptr(QmpParser) p = qmp_parser_new(0);
    gsize n = QMP_PARSER_DEFAULT_MAX_LINE + 2;
    g_autofree char *junk = g_malloc(n);

    assert_int_equal(QMP_PARSER_DEFAULT_MAX_LINE, 10 * 1024 * 1024);
    memset(junk, 'a', n);
    qmp_parser_feed(p, junk, n);
    expect_protocol_error(p, "10 MiB + 2 bytes");
}

static void
test_invalid_input(void **state)
{
    static const struct {
        const char *text;
        gsize len;
    } cases[] = {
        {"{\"return\": \"\xc3\x28\", \"id\": 1}\n", 0},     /* invalid UTF-8 */
        {"{\"return\": \"\xed\xa0\x80\", \"id\": 1}\n", 0}, /* UTF-16 surrogate in UTF-8 */
        {"{\"return\": \"a\0b\", \"id\": 1}\n", 27},        /* NUL byte */
        {"{\"return\": }\n", 0},                            /* invalid JSON */
        {"garbage\r\n", 0},
        {"[1, 2, 3]\n", 0}, /* not an object */
        {"42\n", 0},
        {"{\"a\": 1} {\"b\": 2}\n", 0}, /* two values on one line (json-glib takes it) */
        {"var x = {\"a\": 1}\n", 0},    /* json-glib extension */
        {"{\"a\": [1}\n", 0},           /* unbalanced */
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(QmpParser) p = qmp_parser_new(0);
        gsize len = cases[i].len ? cases[i].len : strlen(cases[i].text);
        qmp_parser_feed(p, cases[i].text, len);
        expect_protocol_error(p, cases[i].text);
    }
}

static void
test_nesting_bomb(void **state)
{
    g_autoptr(QmpParser) p = qmp_parser_new(0);
    gsize n = 1000000;
    g_autofree char *bomb = g_malloc(n + 1);

    /* json-glib recurses per level: this would overflow the stack without the depth check. */
    memset(bomb, '[', n);
    bomb[n] = '\n';
    qmp_parser_feed(p, bomb, n + 1);
    expect_protocol_error(p, "nesting bomb");

    /* Brackets inside strings do not count; moderate real nesting passes. */
    g_autoptr(QmpParser) q = qmp_parser_new(0);
    GString *s =
        g_string_new("{\"return\": \"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\\"[[[[[\", \"x\": ");
    for (int i = 0; i < 100; i++)
        g_string_append_c(s, '[');
    for (int i = 0; i < 100; i++)
        g_string_append_c(s, ']');
    g_string_append(s, ", \"id\": 3}\n");
    qmp_parser_feed(q, s->str, s->len);
    g_autoptr(JsonObject) msg = NULL;
    g_autoptr(GError) error = NULL;
    assert_true(qmp_parser_next(q, &msg, &error));
    g_string_free(s, TRUE);
}

typedef struct {
    const char *json;
    gboolean ok;
    QmpMessageKind kind;
    gint64 id;
} ClassifyCase;

static void
test_classify(void **state)
{
    static const ClassifyCase cases[] = {
        {"{\"QMP\": {\"version\": {}, \"capabilities\": []}}", TRUE, QMP_MESSAGE_GREETING, -1},
        {"{\"event\": \"SHUTDOWN\", \"data\": {\"guest\": true}}", TRUE, QMP_MESSAGE_EVENT, -1},
        {"{\"event\": \"RESUME\"}", TRUE, QMP_MESSAGE_EVENT, -1},
        {"{\"return\": {}, \"id\": 5}", TRUE, QMP_MESSAGE_RETURN, 5},
        {"{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}, \"id\": 6}", TRUE,
         QMP_MESSAGE_ERROR, 6},
        /* protocol errors */
        {"{\"error\": {\"class\": \"GenericError\", \"desc\": \"bad JSON\"}}", FALSE, 0,
         0},                               /* id-less */
        {"{\"return\": {}}", FALSE, 0, 0}, /* id-less */
        {"{\"return\": {}, \"id\": \"abc\"}", FALSE, 0, 0},
        {"{\"return\": {}, \"id\": -1}", FALSE, 0, 0},
        {"{\"return\": {}, \"id\": 1.5}", FALSE, 0, 0},
        {"{\"error\": \"x\", \"id\": 1}", FALSE, 0, 0},
        {"{\"error\": {\"class\": 3, \"desc\": \"x\"}, \"id\": 1}", FALSE, 0, 0},
        {"{\"event\": 3}", FALSE, 0, 0},
        {"{\"event\": \"X\", \"data\": 3}", FALSE, 0, 0},
        {"{\"QMP\": 1}", FALSE, 0, 0},
        {"{\"hello\": 1}", FALSE, 0, 0},
        {"{}", FALSE, 0, 0},
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(QmpParser) p = qmp_parser_new(0);
        g_autoptr(JsonObject) msg = NULL;
        g_autoptr(GError) error = NULL;
        QmpMessageKind kind = 99;
        gint64 id = 42;

        qmp_parser_feed(p, cases[i].json, strlen(cases[i].json));
        qmp_parser_feed(p, "\n", 1);
        assert_true(qmp_parser_next(p, &msg, NULL));
        gboolean ok = qmp_message_classify(msg, &kind, &id, &error);
        if (ok != cases[i].ok)
            fail_msg("case %zu (%s): classify returned %d", i, cases[i].json, ok);
        if (ok) {
            assert_int_equal(kind, cases[i].kind);
            assert_int_equal(id, cases[i].id);
        } else {
            assert_true(g_error_matches(error, QMP_ERROR, QMP_ERROR_PROTOCOL));
        }
    }
}

static void
test_error_class(void **state)
{
    g_autoptr(QmpParser) p = qmp_parser_new(0);
    const char *text = "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command foo "
                       "has not been found\"}, \"id\": 1}\n"
                       "{\"error\": {\"class\": \"SomethingNew\", \"desc\": \"d\"}, \"id\": 2}\n";
    qmp_parser_feed(p, text, strlen(text));

    g_autoptr(JsonObject) m1 = NULL, m2 = NULL;
    assert_true(qmp_parser_next(p, &m1, NULL));
    assert_true(qmp_parser_next(p, &m2, NULL));
    g_autoptr(GError) e1 = qmp_error_new_from_reply(qmp_json_peek_object(m1, "error"), "foo");
    g_autoptr(GError) e2 = qmp_error_new_from_reply(qmp_json_peek_object(m2, "error"), "bar");
    assert_true(g_error_matches(e1, QMP_ERROR, QMP_ERROR_COMMAND));
    assert_int_equal(qmp_error_get_class(e1), QMP_ERROR_CLASS_COMMAND_NOT_FOUND);
    assert_string_equal(qmp_error_get_class_name(e1), "CommandNotFound");
    assert_int_equal(qmp_error_get_class(e2), QMP_ERROR_CLASS_UNKNOWN);
    assert_string_equal(qmp_error_get_class_name(e2), "SomethingNew");
    /* The class survives g_error_copy (extended error domain). */
    g_autoptr(GError) e3 = g_error_copy(e1);
    assert_int_equal(qmp_error_get_class(e3), QMP_ERROR_CLASS_COMMAND_NOT_FOUND);
    /* Other errors have no class. */
    g_autoptr(GError) other = g_error_new(G_IO_ERROR, G_IO_ERROR_FAILED, "x");
    assert_int_equal(qmp_error_get_class(other), QMP_ERROR_CLASS_NONE);
    assert_null(qmp_error_get_class_name(other));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_partial_reads),
        cmocka_unit_test(test_many_in_one_read_and_lf_only),
        cmocka_unit_test(test_zero_copy_reserve),
        cmocka_unit_test(test_big_message),
        cmocka_unit_test(test_over_long_line),
        cmocka_unit_test(test_default_cap_is_10_mib),
        cmocka_unit_test(test_invalid_input),
        cmocka_unit_test(test_nesting_bomb),
        cmocka_unit_test(test_classify),
        cmocka_unit_test(test_error_class),
    };
    return cmocka_run_group_tests_name("qmp-parser", tests, NULL, NULL);
}
