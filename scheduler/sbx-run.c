/* SPDX-License-Identifier: MIT
 *
 * sbx-run: the run request/result contract and its a{sv} / JSON forms. Input
 * validation reuses common/sbx-validate (the guest agent checks the same rules
 * again on its side) and maps every failure to SBX_ERROR_INVALID_INPUT.
 */
#define G_LOG_DOMAIN "sbx-run"

#include "scheduler/sbx-run.h"
#include "scheduler/sbx-error.h"

#include <string.h>

SbxRunSpec *
sbx_run_spec_new(const SbxConfig *cfg)
{
    SbxRunSpec *spec = g_new0(SbxRunSpec, 1);
    spec->language = SBX_LANGUAGE_PYTHON;
    spec->timeout_s = cfg ? cfg->default_timeout_s : 30;
    spec->memory_mb = cfg ? cfg->default_memory_mb : 512;
    spec->env = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    spec->expose = g_array_new(FALSE, FALSE, sizeof(GvpPort));
    return spec;
}

void
sbx_run_spec_free(SbxRunSpec *spec)
{
    if (spec == NULL)
        return;
    g_clear_pointer(&spec->code, g_bytes_unref);
    g_hash_table_unref(spec->env);
    g_strfreev(spec->allow_domains);
    g_array_unref(spec->expose);
    g_free(spec);
}

static gboolean
invalid(GError **error, GError *cause)
{
    g_set_error_literal(error, SBX_ERROR, SBX_ERROR_INVALID_INPUT, cause->message);
    g_error_free(cause);
    return FALSE;
}

gboolean
sbx_run_spec_validate(const SbxRunSpec *spec, const SbxConfig *cfg, gboolean need_code,
                      GError **error)
{
    GError *cause = NULL;

    if (need_code || spec->code != NULL) {
        gsize len = 0;
        const void *data = spec->code ? g_bytes_get_data(spec->code, &len) : "";
        if (!sbx_validate_code(data, len, &cause))
            return invalid(error, cause);
    }
    if (!sbx_validate_timeout(spec->timeout_s, &cause))
        return invalid(error, cause);
    if (cfg && spec->timeout_s > cfg->max_timeout_s) {
        g_set_error(error, SBX_ERROR, SBX_ERROR_INVALID_INPUT,
                    "timeout %u s is over this host's limit of %u s ([limits] max_timeout_s)",
                    spec->timeout_s, cfg->max_timeout_s);
        return FALSE;
    }
    guint min_mb = cfg ? cfg->min_memory_mb : 128, max_mb = cfg ? cfg->max_memory_mb : 8192;
    if (spec->memory_mb < min_mb || spec->memory_mb > max_mb) {
        g_set_error(error, SBX_ERROR, SBX_ERROR_INVALID_INPUT,
                    "memory %u MiB is outside the allowed %u..%u MiB", spec->memory_mb, min_mb,
                    max_mb);
        return FALSE;
    }
    if (!sbx_validate_env(spec->env, &cause))
        return invalid(error, cause);
    if (!gvp_request_validate(spec->network, (const char *const *)spec->allow_domains,
                              (const GvpPort *)spec->expose->data, spec->expose->len, &cause))
        return invalid(error, cause);
    return TRUE;
}

gboolean
sbx_run_spec_from_variant(SbxRunSpec *spec, GVariant *dict, GError **error)
{
    GVariantIter iter;
    const char *key;
    GVariant *value;

    g_variant_iter_init(&iter, dict);
    while (g_variant_iter_next(&iter, "{&sv}", &key, &value)) {
        g_autoptr(GVariant) v = value;
        if (strcmp(key, "language") == 0 && g_variant_is_of_type(v, G_VARIANT_TYPE_STRING)) {
            GError *cause = NULL;
            if (!sbx_validate_language(g_variant_get_string(v, NULL), &spec->language, &cause))
                return invalid(error, cause);
        } else if (strcmp(key, "code") == 0 && g_variant_is_of_type(v, G_VARIANT_TYPE_BYTESTRING)) {
            gsize n = 0;
            const void *data = g_variant_get_fixed_array(v, &n, 1);
            g_clear_pointer(&spec->code, g_bytes_unref);
            spec->code = g_bytes_new(data, n);
        } else if (strcmp(key, "code") == 0 && g_variant_is_of_type(v, G_VARIANT_TYPE_STRING)) {
            gsize n = 0;
            const char *s = g_variant_get_string(v, &n);
            g_clear_pointer(&spec->code, g_bytes_unref);
            spec->code = g_bytes_new(s, n);
        } else if (strcmp(key, "timeout") == 0 && g_variant_is_of_type(v, G_VARIANT_TYPE_UINT32)) {
            spec->timeout_s = g_variant_get_uint32(v);
        } else if (strcmp(key, "memory") == 0 && g_variant_is_of_type(v, G_VARIANT_TYPE_UINT32)) {
            spec->memory_mb = g_variant_get_uint32(v);
        } else if (strcmp(key, "env") == 0 && g_variant_is_of_type(v, G_VARIANT_TYPE("a{ss}"))) {
            GVariantIter ei;
            const char *k, *val;
            g_variant_iter_init(&ei, v);
            while (g_variant_iter_next(&ei, "{&s&s}", &k, &val))
                g_hash_table_replace(spec->env, g_strdup(k), g_strdup(val));
        } else if (strcmp(key, "network") == 0 && g_variant_is_of_type(v, G_VARIANT_TYPE_STRING)) {
            GError *cause = NULL;
            if (!gvp_mode_from_string(g_variant_get_string(v, NULL), &spec->network, &cause))
                return invalid(error, cause);
        } else if (strcmp(key, "allow_domains") == 0 &&
                   g_variant_is_of_type(v, G_VARIANT_TYPE_STRING_ARRAY)) {
            g_strfreev(spec->allow_domains);
            spec->allow_domains = g_variant_dup_strv(v, NULL);
        } else if (strcmp(key, "allow_http") == 0 &&
                   g_variant_is_of_type(v, G_VARIANT_TYPE_BOOLEAN)) {
            spec->allow_http = g_variant_get_boolean(v);
        } else if (strcmp(key, "expose") == 0 && g_variant_is_of_type(v, G_VARIANT_TYPE("a(qq)"))) {
            GVariantIter pi;
            GvpPort p;
            g_array_set_size(spec->expose, 0);
            g_variant_iter_init(&pi, v);
            while (g_variant_iter_next(&pi, "(qq)", &p.internal, &p.external) &&
                   spec->expose->len <= GVP_MAX_PORTS)
                g_array_append_val(spec->expose, p);
        } else {
            g_set_error(error, SBX_ERROR, SBX_ERROR_INVALID_INPUT,
                        "unknown or ill-typed key '%s' (type %s) in the request", key,
                        g_variant_get_type_string(v));
            return FALSE;
        }
    }
    return TRUE;
}

GVariant *
sbx_run_spec_to_variant(const SbxRunSpec *spec)
{
    GVariantBuilder b, env;
    GHashTableIter it;
    gpointer k, v;

    g_variant_builder_init(&b, G_VARIANT_TYPE_VARDICT);
    g_variant_builder_add(&b, "{sv}", "language",
                          g_variant_new_string(sbx_language_to_string(spec->language)));
    if (spec->code) {
        gsize n = 0;
        const void *data = g_bytes_get_data(spec->code, &n);
        g_variant_builder_add(&b, "{sv}", "code",
                              g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, data, n, 1));
    }
    g_variant_builder_add(&b, "{sv}", "timeout", g_variant_new_uint32(spec->timeout_s));
    g_variant_builder_add(&b, "{sv}", "memory", g_variant_new_uint32(spec->memory_mb));
    g_variant_builder_init(&env, G_VARIANT_TYPE("a{ss}"));
    g_hash_table_iter_init(&it, spec->env);
    while (g_hash_table_iter_next(&it, &k, &v))
        g_variant_builder_add(&env, "{ss}", (const char *)k, (const char *)v);
    g_variant_builder_add(&b, "{sv}", "env", g_variant_builder_end(&env));
    if (spec->network != GVP_MODE_NONE) {
        GVariantBuilder ports;
        g_variant_builder_add(&b, "{sv}", "network",
                              g_variant_new_string(gvp_mode_to_string(spec->network)));
        g_variant_builder_init(&ports, G_VARIANT_TYPE("a(qq)"));
        for (guint i = 0; i < spec->expose->len; i++) {
            const GvpPort *p = &g_array_index(spec->expose, GvpPort, i);
            g_variant_builder_add(&ports, "(qq)", p->internal, p->external);
        }
        g_variant_builder_add(&b, "{sv}", "expose", g_variant_builder_end(&ports));
    }
    if (spec->allow_domains)
        g_variant_builder_add(&b, "{sv}", "allow_domains",
                              g_variant_new_strv((const char *const *)spec->allow_domains, -1));
    if (spec->allow_http)
        g_variant_builder_add(&b, "{sv}", "allow_http", g_variant_new_boolean(TRUE));
    return g_variant_builder_end(&b);
}

SbxRunResult *
sbx_run_result_new(void)
{
    SbxRunResult *r = g_new0(SbxRunResult, 1);
    r->output_limit = g_strdup("");
    r->accel = g_strdup("tcg");
    r->guest_accept_us = -1;
    r->exposed_ports = g_array_new(FALSE, FALSE, sizeof(GvpPort));
    return r;
}

void
sbx_run_result_free(SbxRunResult *result)
{
    if (result == NULL)
        return;
    g_free(result->output_limit);
    g_free(result->accel);
    g_array_unref(result->exposed_ports);
    g_free(result);
}

#define TIMING_FIELDS(X)                                                                           \
    X(admission_ms) X(setup_ms) X(boot_ms) X(restore_ms) X(exec_ms) X(teardown_ms) X(total_ms)     \
        X(network_ms)

GVariant *
sbx_run_result_to_variant(const SbxRunResult *r)
{
    GVariantBuilder b, t;
    g_variant_builder_init(&t, G_VARIANT_TYPE("a{st}"));
#define ADD_T(f) g_variant_builder_add(&t, "{st}", #f, (guint64)MAX(r->timing.f, 0));
    TIMING_FIELDS(ADD_T)
#undef ADD_T
    g_variant_builder_init(&b, G_VARIANT_TYPE_VARDICT);
    g_variant_builder_add(&b, "{sv}", "exit_code", g_variant_new_int32(r->exit_code));
    g_variant_builder_add(&b, "{sv}", "timed_out", g_variant_new_boolean(r->timed_out));
    g_variant_builder_add(&b, "{sv}", "output_limit", g_variant_new_string(r->output_limit));
    g_variant_builder_add(&b, "{sv}", "timing", g_variant_builder_end(&t));
    g_variant_builder_add(&b, "{sv}", "warm_pool_hit", g_variant_new_boolean(r->warm_pool_hit));
    g_variant_builder_add(&b, "{sv}", "l1_hit", g_variant_new_boolean(r->l1_hit));
    g_variant_builder_add(&b, "{sv}", "accel", g_variant_new_string(r->accel));
    g_variant_builder_add(&b, "{sv}", "cpu_ms", g_variant_new_uint64(r->cpu_ms));
    g_variant_builder_add(&b, "{sv}", "memory_peak_mb", g_variant_new_uint64(r->memory_peak_mb));
    GVariantBuilder ports;
    g_variant_builder_init(&ports, G_VARIANT_TYPE("a(qqs)"));
    for (guint i = 0; i < r->exposed_ports->len; i++) {
        const GvpPort *p = &g_array_index(r->exposed_ports, GvpPort, i);
        g_autofree char *url = g_strdup_printf("http://127.0.0.1:%u", p->external);
        g_variant_builder_add(&ports, "(qqs)", p->internal, p->external, url);
    }
    g_variant_builder_add(&b, "{sv}", "exposed_ports", g_variant_builder_end(&ports));
    return g_variant_builder_end(&b);
}

gboolean
sbx_run_result_from_variant(SbxRunResult *r, GVariant *dict, GError **error)
{
    g_autoptr(GVariant) timing = NULL;
    const char *s;

    if (!g_variant_lookup(dict, "exit_code", "i", &r->exit_code)) {
        g_set_error_literal(error, SBX_ERROR, SBX_ERROR_OUTCOME_UNKNOWN,
                            "the daemon's reply has no exit_code");
        return FALSE;
    }
    g_variant_lookup(dict, "timed_out", "b", &r->timed_out);
    if (g_variant_lookup(dict, "output_limit", "&s", &s)) {
        g_free(r->output_limit);
        r->output_limit = g_strdup(s);
    }
    if (g_variant_lookup(dict, "accel", "&s", &s)) {
        g_free(r->accel);
        r->accel = g_strdup(s);
    }
    g_variant_lookup(dict, "warm_pool_hit", "b", &r->warm_pool_hit);
    g_variant_lookup(dict, "l1_hit", "b", &r->l1_hit);
    g_variant_lookup(dict, "cpu_ms", "t", &r->cpu_ms);
    g_variant_lookup(dict, "memory_peak_mb", "t", &r->memory_peak_mb);
    g_autoptr(GVariant) ports = g_variant_lookup_value(dict, "exposed_ports", G_VARIANT_TYPE("a(qqs)"));
    if (ports) {
        GVariantIter pi;
        GvpPort p;
        g_variant_iter_init(&pi, ports);
        while (g_variant_iter_next(&pi, "(qq&s)", &p.internal, &p.external, NULL))
            g_array_append_val(r->exposed_ports, p);
    }
    timing = g_variant_lookup_value(dict, "timing", G_VARIANT_TYPE("a{st}"));
    if (timing) {
        guint64 v;
#define GET_T(f)                                                                                   \
    if (g_variant_lookup(timing, #f, "t", &v))                                                     \
        r->timing.f = (gint64)v;
        TIMING_FIELDS(GET_T)
#undef GET_T
    }
    return TRUE;
}

void
sbx_run_result_add_json(const SbxRunResult *r, JsonBuilder *b)
{
    json_builder_set_member_name(b, "exit_code");
    json_builder_add_int_value(b, r->exit_code);
    json_builder_set_member_name(b, "timed_out");
    json_builder_add_boolean_value(b, r->timed_out);
    json_builder_set_member_name(b, "output_limit");
    json_builder_add_string_value(b, r->output_limit);
    json_builder_set_member_name(b, "timing");
    json_builder_begin_object(b);
#define JSON_T(f)                                                                                  \
    json_builder_set_member_name(b, #f);                                                           \
    json_builder_add_int_value(b, MAX(r->timing.f, 0));
    TIMING_FIELDS(JSON_T)
#undef JSON_T
    json_builder_end_object(b);
    json_builder_set_member_name(b, "warm_pool_hit");
    json_builder_add_boolean_value(b, r->warm_pool_hit);
    json_builder_set_member_name(b, "l1_hit");
    json_builder_add_boolean_value(b, r->l1_hit);
    json_builder_set_member_name(b, "accel");
    json_builder_add_string_value(b, r->accel);
    json_builder_set_member_name(b, "cpu_ms");
    json_builder_add_int_value(b, (gint64)r->cpu_ms);
    json_builder_set_member_name(b, "memory_peak_mb");
    json_builder_add_int_value(b, (gint64)r->memory_peak_mb);
    json_builder_set_member_name(b, "exposed_ports");
    json_builder_begin_array(b);
    for (guint i = 0; i < r->exposed_ports->len; i++) {
        const GvpPort *p = &g_array_index(r->exposed_ports, GvpPort, i);
        g_autofree char *url = g_strdup_printf("http://127.0.0.1:%u", p->external);
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "internal");
        json_builder_add_int_value(b, p->internal);
        json_builder_set_member_name(b, "external");
        json_builder_add_int_value(b, p->external);
        json_builder_set_member_name(b, "url");
        json_builder_add_string_value(b, url);
        json_builder_end_object(b);
    }
    json_builder_end_array(b);
}
