/* SPDX-License-Identifier: MIT
 *
 * Unit tests of the network part of the run contract (scheduler/sbx-run.c):
 * the "network", "allow_domains", "allow_http" and "expose" request keys
 * survive a{sv} round trips, are validated before anything runs (mode vs.
 * domains vs. ports), and the result's exposed_ports / network_ms reach the
 * a{sv} and JSON forms.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "scheduler/sbx-error.h"
#include "scheduler/sbx-run.h"

static SbxRunSpec *
spec_from(GVariant *dict, GError **error)
{
    g_autoptr(SbxRunSpec) spec = sbx_run_spec_new(NULL);
    g_autoptr(GVariant) owned = g_variant_ref_sink(dict);
    spec->code = g_bytes_new_static("print(1)", 8);
    if (!sbx_run_spec_from_variant(spec, owned, error))
        return NULL;
    return g_steal_pointer(&spec);
}

static void
test_round_trip(void **state)
{
    g_autoptr(GError) error = NULL;
    g_autoptr(SbxRunSpec) spec = spec_from(
        g_variant_new_parsed("{'network': <'allow'>, 'allow_domains': <['Example.com', 'pypi.org']>,"
                             " 'allow_http': <true>, 'expose': <[(@q 8000, @q 0), (8001, 18001)]>}"),
        &error);
    assert_non_null(spec);
    assert_int_equal(spec->network, GVP_MODE_ALLOW);
    assert_int_equal(g_strv_length(spec->allow_domains), 2);
    assert_true(spec->allow_http);
    assert_int_equal(spec->expose->len, 2);
    assert_int_equal(g_array_index(spec->expose, GvpPort, 1).external, 18001);
    assert_true(sbx_run_spec_validate(spec, NULL, TRUE, &error));

    g_autoptr(GVariant) v = g_variant_ref_sink(sbx_run_spec_to_variant(spec));
    g_autoptr(SbxRunSpec) back = spec_from(g_variant_ref(v), &error);
    assert_non_null(back);
    assert_int_equal(back->network, GVP_MODE_ALLOW);
    assert_string_equal(back->allow_domains[0], "Example.com");
    assert_true(back->allow_http);
    assert_int_equal(back->expose->len, 2);
    assert_int_equal(g_array_index(back->expose, GvpPort, 0).internal, 8000);

    /* no network: no network keys on the wire */
    g_autoptr(SbxRunSpec) plain = sbx_run_spec_new(NULL);
    g_autoptr(GVariant) pv = g_variant_ref_sink(sbx_run_spec_to_variant(plain));
    assert_false(g_variant_lookup(pv, "network", "&s", NULL));
}

static void
test_refused(void **state)
{
    static const char *const bad[] = {
        "{'network': <'internet'>}",
        "{'network': <'allow'>}",
        "{'network': <'allow'>, 'allow_domains': <['*.example.com']>}",
        "{'network': <'allow'>, 'allow_domains': <['com']>}",
        "{'network': <'full'>, 'allow_domains': <['example.com']>}",
        "{'network': <'none'>, 'expose': <[(@q 80, @q 0)]>}",
        "{'network': <'expose'>}",
        "{'network': <'expose'>, 'expose': <[(@q 0, @q 0)]>}",
        "{'network': <'expose'>, 'expose': <[(@q 80, @q 0), (80, 81)]>}",
        "{'network': <'expose'>, 'expose': <[(@q 1, @q 0), (2, 0), (3, 0), (4, 0), (5, 0), (6, 0),"
        " (7, 0), (8, 0), (9, 0), (10, 0), (11, 0)]>}",
        "{'allow_domains': <['example.com']>}",
    };
    for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autoptr(GError) error = NULL;
        g_autoptr(SbxRunSpec) spec = spec_from(g_variant_new_parsed(bad[i]), &error);
        if (spec && sbx_run_spec_validate(spec, NULL, TRUE, &error))
            fail_msg("accepted %s", bad[i]);
        if (!g_error_matches(error, SBX_ERROR, SBX_ERROR_INVALID_INPUT))
            fail_msg("%s: %s", bad[i], error ? error->message : "no error");
    }
}

static void
test_result(void **state)
{
    g_autoptr(SbxRunResult) r = sbx_run_result_new();
    GvpPort p = {8000, 34567};
    g_array_append_val(r->exposed_ports, p);
    r->timing.network_ms = 12;
    g_autoptr(GVariant) v = g_variant_ref_sink(sbx_run_result_to_variant(r));
    g_autoptr(GVariant) ports = g_variant_lookup_value(v, "exposed_ports", G_VARIANT_TYPE("a(qqs)"));
    assert_non_null(ports);
    assert_int_equal(g_variant_n_children(ports), 1);
    guint16 in, ex;
    const char *url;
    g_variant_get_child(ports, 0, "(qq&s)", &in, &ex, &url);
    assert_int_equal(in, 8000);
    assert_int_equal(ex, 34567);
    assert_string_equal(url, "http://127.0.0.1:34567");

    g_autoptr(SbxRunResult) back = sbx_run_result_new();
    assert_true(sbx_run_result_from_variant(back, v, NULL));
    assert_int_equal(back->exposed_ports->len, 1);
    assert_int_equal(g_array_index(back->exposed_ports, GvpPort, 0).external, 34567);
    assert_int_equal(back->timing.network_ms, 12);

    g_autoptr(JsonBuilder) b = json_builder_new();
    json_builder_begin_object(b);
    sbx_run_result_add_json(r, b);
    json_builder_end_object(b);
    g_autoptr(JsonNode) root = json_builder_get_root(b);
    g_autofree char *text = json_to_string(root, FALSE);
    assert_non_null(strstr(text, "\"exposed_ports\":[{\"internal\":8000,\"external\":34567,"
                                 "\"url\":\"http://127.0.0.1:34567\"}]"));
    assert_non_null(strstr(text, "\"network_ms\":12"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_result),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
