/* SPDX-License-Identifier: MIT
 *
 * Unit tests of gvproxy-glue/gvp-policy: modes, domain validation and
 * allow-list matching (subdomains, look-alikes), exposed-port specs, request
 * consistency, the DNS query parser and reply builder, the TLS ClientHello
 * SNI parser (a real Python/OpenSSL ClientHello, every truncation, bit
 * flips) and the HTTP Host parser.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "gvproxy-glue/gvp-policy.h"
#include "tests/sbx-test-tls-hello.h"


static void
test_modes(void **state)
{
    GvpMode m;
    const char *names[] = {"none", "expose", "allow", "full"};
    for (guint i = 0; i < G_N_ELEMENTS(names); i++) {
        assert_true(gvp_mode_from_string(names[i], &m, NULL));
        assert_string_equal(gvp_mode_to_string(m), names[i]);
    }
    g_autoptr(GError) e = NULL;
    assert_false(gvp_mode_from_string("FULL", &m, &e));
    assert_true(g_error_matches(e, GVP_ERROR, GVP_ERROR_INVALID));
    assert_false(gvp_mode_from_string(NULL, &m, NULL));
}

static void
test_domains(void **state)
{
    static const struct {
        const char *in, *out;
    } good[] = {
        {"Example.COM", "example.com"}, {"a.b.example.org.", "a.b.example.org"},
        {"xn--bcher-kva.example", "xn--bcher-kva.example"}, {"a-1.b2.io", "a-1.b2.io"},
    };
    static const char *const bad[] = {
        "", ".", "com", "*.example.com", "exa mple.com", "-a.example.com", "a-.example.com",
        "a..example.com", "example.c0m", "example.com..", "ex_ample.com", "example.com/x",
        "exa\nmple.com", ".example.com",
    };
    for (guint i = 0; i < G_N_ELEMENTS(good); i++) {
        g_autofree char *out = NULL;
        assert_true(gvp_domain_normalize(good[i].in, &out, NULL));
        assert_string_equal(out, good[i].out);
    }
    for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autofree char *out = NULL;
        g_autoptr(GError) e = NULL;
        if (gvp_domain_normalize(bad[i], &out, &e))
            fail_msg("accepted '%s'", bad[i]);
        assert_true(g_error_matches(e, GVP_ERROR, GVP_ERROR_INVALID));
        assert_null(out);
    }
    /* length limits: a 63-byte label is fine, 64 is not; 253 total is fine, 254 not */
    g_autofree char *l63 = g_strnfill(63, 'a'), *l64 = g_strnfill(64, 'a');
    g_autofree char *d63 = g_strconcat(l63, ".com", NULL), *d64 = g_strconcat(l64, ".com", NULL);
    g_autofree char *o = NULL;
    assert_true(gvp_domain_normalize(d63, &o, NULL));
    assert_false(gvp_domain_normalize(d64, &o, NULL));
    GString *big = g_string_new(NULL);
    while (big->len < 250)
        g_string_append(big, "abcdefghi.");
    g_string_truncate(big, 249);
    g_string_append(big, ".com"); /* 253 */
    g_clear_pointer(&o, g_free);
    assert_int_equal(big->len, 253);
    assert_true(gvp_domain_normalize(big->str, &o, NULL));
    g_string_prepend(big, "a");
    assert_false(gvp_domain_normalize(big->str, &o, NULL));
    g_string_free(big, TRUE);
}

static void
test_allowed(void **state)
{
    const char *const allow[] = {"example.com", "pypi.org", NULL};
    assert_true(gvp_domain_allowed(allow, "example.com"));
    assert_true(gvp_domain_allowed(allow, "EXAMPLE.com."));
    assert_true(gvp_domain_allowed(allow, "a.b.example.com"));
    assert_true(gvp_domain_allowed(allow, "files.pypi.org"));
    assert_false(gvp_domain_allowed(allow, "badexample.com"));
    assert_false(gvp_domain_allowed(allow, "example.com.evil.net"));
    assert_false(gvp_domain_allowed(allow, "example.co"));
    assert_false(gvp_domain_allowed(allow, "com"));
    assert_false(gvp_domain_allowed(allow, ""));
    assert_false(gvp_domain_allowed(allow, NULL));
    assert_false(gvp_domain_allowed(NULL, "example.com"));
}

static void
test_ports(void **state)
{
    GvpPort p;
    assert_true(gvp_port_parse("8000", &p, NULL));
    assert_int_equal(p.internal, 8000);
    assert_int_equal(p.external, 0);
    assert_true(gvp_port_parse("80:18080", &p, NULL));
    assert_int_equal(p.internal, 80);
    assert_int_equal(p.external, 18080);
    assert_true(gvp_port_parse("80:0", &p, NULL));
    assert_int_equal(p.external, 0);
    static const char *const bad[] = {"", "0", "65536", "80:65536", "-1", "80:", ":80", "8o",
                                      "80:90:100", "123456", " 80"};
    for (guint i = 0; i < G_N_ELEMENTS(bad); i++)
        if (gvp_port_parse(bad[i], &p, NULL))
            fail_msg("accepted '%s'", bad[i]);

    GvpPort ok[] = {{80, 0}, {81, 0}, {82, 9000}};
    assert_true(gvp_ports_validate(ok, 3, NULL));
    GvpPort dup_in[] = {{80, 0}, {80, 9000}};
    assert_false(gvp_ports_validate(dup_in, 2, NULL));
    GvpPort dup_ex[] = {{80, 9000}, {81, 9000}};
    assert_false(gvp_ports_validate(dup_ex, 2, NULL));
    GvpPort many[11];
    for (guint i = 0; i < 11; i++)
        many[i] = (GvpPort){(guint16)(1000 + i), 0};
    assert_true(gvp_ports_validate(many, 10, NULL));
    assert_false(gvp_ports_validate(many, 11, NULL));
}

static void
test_request(void **state)
{
    const char *const doms[] = {"example.com", NULL};
    const char *const bad_doms[] = {"*.example.com", NULL};
    GvpPort port = {8000, 0};
    assert_true(gvp_request_validate(GVP_MODE_NONE, NULL, NULL, 0, NULL));
    assert_false(gvp_request_validate(GVP_MODE_NONE, NULL, &port, 1, NULL));
    assert_true(gvp_request_validate(GVP_MODE_EXPOSE, NULL, &port, 1, NULL));
    assert_false(gvp_request_validate(GVP_MODE_EXPOSE, NULL, NULL, 0, NULL));
    assert_false(gvp_request_validate(GVP_MODE_EXPOSE, doms, &port, 1, NULL));
    assert_true(gvp_request_validate(GVP_MODE_ALLOW, doms, NULL, 0, NULL));
    assert_true(gvp_request_validate(GVP_MODE_ALLOW, doms, &port, 1, NULL));
    assert_false(gvp_request_validate(GVP_MODE_ALLOW, NULL, NULL, 0, NULL));
    assert_false(gvp_request_validate(GVP_MODE_ALLOW, bad_doms, NULL, 0, NULL));
    assert_true(gvp_request_validate(GVP_MODE_FULL, NULL, NULL, 0, NULL));
    assert_false(gvp_request_validate(GVP_MODE_FULL, doms, NULL, 0, NULL));

    g_autofree char *c0 = gvp_guest_cmdline(GVP_MODE_NONE);
    g_autofree char *c1 = gvp_guest_cmdline(GVP_MODE_EXPOSE);
    g_autofree char *c2 = gvp_guest_cmdline(GVP_MODE_ALLOW);
    assert_string_equal(c0, "");
    assert_string_equal(c1, "sbx.net=192.0.2.2/24,192.0.2.1");
    assert_string_equal(c2, "sbx.net=192.0.2.2/24,192.0.2.1,192.0.2.1");
}

/* A query for @name, type @qtype, as a resolver sends it. */
static gsize
make_query(const char *name, guint16 qtype, guint8 *out)
{
    static const guint8 head[] = {0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
    gsize n = sizeof head;
    memcpy(out, head, n);
    g_auto(GStrv) labels = g_strsplit(name, ".", 0);
    for (guint i = 0; labels[i]; i++) {
        out[n++] = (guint8)strlen(labels[i]);
        memcpy(out + n, labels[i], strlen(labels[i]));
        n += strlen(labels[i]);
    }
    out[n++] = 0;
    out[n++] = (guint8)(qtype >> 8);
    out[n++] = (guint8)qtype;
    out[n++] = 0;
    out[n++] = 1;
    return n;
}

static void
test_dns(void **state)
{
    guint8 q[512], r[600];
    GvpDnsQuery dq;
    gsize n = make_query("WWW.Example.com", GVP_DNS_TYPE_A, q);
    assert_true(gvp_dns_parse_query(q, n, &dq));
    assert_string_equal(dq.name, "www.example.com");
    assert_int_equal(dq.id, 0x1234);
    assert_int_equal(dq.qtype, 1);
    assert_int_equal(dq.qclass, 1);
    assert_int_equal(dq.question_end, n);

    const guint8 a[4] = {192, 0, 2, 1};
    gsize rl = gvp_dns_build_reply(q, &dq, GVP_DNS_RCODE_NOERROR, a, r, sizeof r);
    assert_int_equal(rl, n + 16);
    assert_int_equal(r[0], 0x12);
    assert_true(r[2] & 0x80);               /* QR */
    assert_int_equal(r[3] & 0x0f, 0);       /* NOERROR */
    assert_int_equal(r[7], 1);              /* ANCOUNT */
    assert_memory_equal(r + rl - 4, a, 4);
    assert_int_equal(r[n], 0xc0);           /* name pointer to the question */

    rl = gvp_dns_build_reply(q, &dq, GVP_DNS_RCODE_NXDOMAIN, NULL, r, sizeof r);
    assert_int_equal(rl, n);
    assert_int_equal(r[3] & 0x0f, 3);
    assert_int_equal(r[7], 0);
    assert_int_equal(gvp_dns_build_reply(q, &dq, 0, a, r, n), 0); /* too small */

    /* every truncation is refused, never read past */
    for (gsize k = 0; k < n; k++) {
        g_autofree guint8 *t = g_memdup2(q, k);
        assert_false(gvp_dns_parse_query(t, k, &dq));
    }
    /* a response, two questions, a compression pointer, a bad label byte */
    guint8 m[512];
    memcpy(m, q, n);
    m[2] |= 0x80;
    assert_false(gvp_dns_parse_query(m, n, &dq));
    memcpy(m, q, n);
    m[5] = 2;
    assert_false(gvp_dns_parse_query(m, n, &dq));
    memcpy(m, q, n);
    m[12] = 0xc0;
    assert_false(gvp_dns_parse_query(m, n, &dq));
    memcpy(m, q, n);
    m[13] = '*';
    assert_false(gvp_dns_parse_query(m, n, &dq));
}

static void
test_sni(void **state)
{
    char *name = NULL;
    assert_int_equal(gvp_tls_parse_sni(sbx_test_client_hello, sizeof sbx_test_client_hello, &name), GVP_PARSE_OK);
    assert_string_equal(name, "api.example.com");
    g_free(name);
    /* every prefix asks for more (or is already decided), never reads past */
    for (gsize k = 0; k < sizeof sbx_test_client_hello; k++) {
        g_autofree guint8 *t = g_memdup2(sbx_test_client_hello, k);
        name = NULL;
        GvpParseResult r = gvp_tls_parse_sni(t, k, &name);
        if (r != GVP_PARSE_NEED_MORE)
            fail_msg("prefix %zu: %d", (size_t)k, r);
        assert_null(name);
    }
    /* single-bit flips: any verdict, but a name only when it is a hostname */
    for (gsize k = 0; k < sizeof sbx_test_client_hello; k++) {
        g_autofree guint8 *t = g_memdup2(sbx_test_client_hello, sizeof sbx_test_client_hello);
        t[k] ^= 0x20;
        name = NULL;
        if (gvp_tls_parse_sni(t, sizeof sbx_test_client_hello, &name) == GVP_PARSE_OK) {
            g_autofree char *n = name;
            for (const char *p = n; *p; p++)
                assert_true(g_ascii_isalnum(*p) || *p == '-' || *p == '.' || *p == '_');
        }
    }
    static const guint8 http[] = "GET / HTTP/1.1\r\n";
    assert_int_equal(gvp_tls_parse_sni(http, sizeof http - 1, &name), GVP_PARSE_INVALID);
}

static void
test_http(void **state)
{
    char *host = NULL;
    const char *req = "GET /x HTTP/1.1\r\nUser-Agent: t\r\nHost: Files.Example.com:8080\r\n\r\n";
    assert_int_equal(gvp_http_parse_host((const guint8 *)req, strlen(req), &host), GVP_PARSE_OK);
    assert_string_equal(host, "files.example.com");
    g_free(host);
    for (gsize k = 0; k < strlen(req); k++)
        assert_int_equal(gvp_http_parse_host((const guint8 *)req, k, &host), GVP_PARSE_NEED_MORE);
    const char *nohost = "GET / HTTP/1.0\r\nA: b\r\n\r\n";
    assert_int_equal(gvp_http_parse_host((const guint8 *)nohost, strlen(nohost), &host),
                     GVP_PARSE_NONE);
    const char *two = "GET / HTTP/1.1\r\nHost: a.com\r\nHost: b.com\r\n\r\n";
    assert_int_equal(gvp_http_parse_host((const guint8 *)two, strlen(two), &host),
                     GVP_PARSE_INVALID);
    const char *badport = "GET / HTTP/1.1\r\nHost: a.com:80x\r\n\r\n";
    assert_int_equal(gvp_http_parse_host((const guint8 *)badport, strlen(badport), &host),
                     GVP_PARSE_INVALID);
    const char *junk = "\x16\x03\x01";
    assert_int_equal(gvp_http_parse_host((const guint8 *)junk, 3, &host), GVP_PARSE_INVALID);
    const char *inject = "GET / HTTP/1.1\r\nHost: a.com/evil\r\n\r\n";
    assert_int_equal(gvp_http_parse_host((const guint8 *)inject, strlen(inject), &host),
                     GVP_PARSE_INVALID);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_modes),   cmocka_unit_test(test_domains),
        cmocka_unit_test(test_allowed), cmocka_unit_test(test_ports),
        cmocka_unit_test(test_request), cmocka_unit_test(test_dns),
        cmocka_unit_test(test_sni),     cmocka_unit_test(test_http),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
