/* SPDX-License-Identifier: MIT
 *
 * sbx-config: defaults + key-file + environment for schedulerd and the
 * embedded scheduler in schedulerctl. Pure apart from reading the file.
 */
#define G_LOG_DOMAIN "sbx-config"

#include "scheduler/sbx-config.h"

#include <string.h>
#include <unistd.h>

static char *
default_runtime_dir(void)
{
    if (getuid() == 0)
        return g_strdup("/run/schedulerd");
    return g_build_filename(g_get_user_runtime_dir(), "schedulerd", NULL);
}

SbxConfig *
sbx_config_new_default(void)
{
    SbxConfig *cfg = g_new0(SbxConfig, 1);
    cfg->guest_dir = g_build_filename(SBX_PKGDATADIR, "guest", NULL);
    cfg->qemu = g_strdup("qemu-system-x86_64");
    cfg->qemu_img = g_strdup("qemu-img");
    cfg->qsd = g_strdup("qemu-storage-daemon");
    cfg->runtime_dir = default_runtime_dir();
    cfg->accel = SBX_ACCEL_MODE_AUTO;
    cfg->vcpus = 1;
    cfg->tb_size_mb = 128;
    cfg->boot_timeout_s = 60;
    cfg->qemu_sandbox = TRUE;
    cfg->ksm = TRUE;
    cfg->default_memory_mb = 512;
    cfg->min_memory_mb = 128;
    cfg->max_memory_mb = 8192;
    cfg->default_timeout_s = 30;
    cfg->max_timeout_s = 300;
    cfg->memory_overcommit_ratio = 5.0;
    cfg->cpu_overcommit_ratio = 2.0;
    cfg->memory_reserve_ratio = 0.08;
    cfg->cpu_reserve_cores = 0.5;
    cfg->vm_overhead_mb = 64;
    cfg->tcg_cache_mb = 128;
    cfg->admission_timeout_s = 600;
    cfg->vm_cpu_overhead_millis = 250;
    cfg->psi_full_avg10_threshold = 10.0;
    cfg->available_memory_floor_mb = 0;
    cfg->bypass_limit = 8;
    cfg->lookahead = 64;
    cfg->session_idle_timeout_s = 300;
    cfg->warm_pool_python = 1;
    cfg->warm_pool_javascript = 1;
    cfg->warm_pool_raw = 1;
    cfg->l1 = TRUE;
    cfg->l1_prefetch = TRUE;
    cfg->l1_prestart = 1;
    cfg->l1_build_drain_s = 20;
    cfg->l1_max_templates = 8;
    return cfg;
}

void
sbx_config_free(SbxConfig *cfg)
{
    if (cfg == NULL)
        return;
    g_free(cfg->guest_dir);
    g_free(cfg->qemu);
    g_free(cfg->qemu_img);
    g_free(cfg->qsd);
    g_free(cfg->runtime_dir);
    g_free(cfg);
}

gboolean
sbx_accel_mode_parse(const char *text, SbxAccelMode *out_mode, GError **error)
{
    if (g_strcmp0(text, "auto") == 0)
        *out_mode = SBX_ACCEL_MODE_AUTO;
    else if (g_strcmp0(text, "tcg") == 0)
        *out_mode = SBX_ACCEL_MODE_TCG;
    else if (g_strcmp0(text, "kvm") == 0)
        *out_mode = SBX_ACCEL_MODE_KVM;
    else {
        g_set_error(error, G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_INVALID_VALUE,
                    "accelerator '%s' is not one of auto, tcg, kvm", text);
        return FALSE;
    }
    return TRUE;
}

typedef enum { K_STR, K_UINT, K_DOUBLE, K_BOOL, K_ACCEL } KeyType;

typedef struct {
    const char *group;
    const char *key;
    KeyType type;
    gsize offset;
    double min, max;
} KeyDesc;

#define STR(g, k, f)             {g, k, K_STR, G_STRUCT_OFFSET(SbxConfig, f), 0, 0}
#define UINT(g, k, f, lo, hi)    {g, k, K_UINT, G_STRUCT_OFFSET(SbxConfig, f), lo, hi}
#define DOUBLE(g, k, f, lo, hi)  {g, k, K_DOUBLE, G_STRUCT_OFFSET(SbxConfig, f), lo, hi}
#define BOOL(g, k, f)            {g, k, K_BOOL, G_STRUCT_OFFSET(SbxConfig, f), 0, 0}

static const KeyDesc keys[] = {
    STR("scheduler", "guest_dir", guest_dir),
    STR("scheduler", "qemu", qemu),
    STR("scheduler", "qemu_img", qemu_img),
    STR("scheduler", "qemu_storage_daemon", qsd),
    STR("scheduler", "runtime_dir", runtime_dir),
    {"scheduler", "accel", K_ACCEL, G_STRUCT_OFFSET(SbxConfig, accel), 0, 0},
    UINT("scheduler", "vcpus", vcpus, 1, 64),
    UINT("scheduler", "tb_size_mb", tb_size_mb, 0, 2048),
    UINT("scheduler", "boot_timeout_s", boot_timeout_s, 1, 600),
    BOOL("scheduler", "qemu_sandbox", qemu_sandbox),
    BOOL("scheduler", "ksm", ksm),
    UINT("limits", "default_memory_mb", default_memory_mb, 128, 1 << 20),
    UINT("limits", "min_memory_mb", min_memory_mb, 64, 1 << 20),
    UINT("limits", "max_memory_mb", max_memory_mb, 128, 1 << 20),
    UINT("limits", "default_timeout_s", default_timeout_s, 1, 3600),
    UINT("limits", "max_timeout_s", max_timeout_s, 1, 3600),
    DOUBLE("admission", "memory_overcommit_ratio", memory_overcommit_ratio, 0.1, 100),
    DOUBLE("admission", "cpu_overcommit_ratio", cpu_overcommit_ratio, 0.1, 100),
    DOUBLE("admission", "memory_reserve_ratio", memory_reserve_ratio, 0, 0.95),
    DOUBLE("admission", "cpu_reserve_cores", cpu_reserve_cores, 0, 1024),
    UINT("admission", "vm_overhead_mb", vm_overhead_mb, 0, 1 << 16),
    UINT("admission", "tcg_cache_mb", tcg_cache_mb, 0, 1 << 16),
    UINT("admission", "admission_timeout_s", admission_timeout_s, 0, 86400),
    UINT("admission", "vm_cpu_overhead_millis", vm_cpu_overhead_millis, 0, 64000),
    DOUBLE("admission", "psi_full_avg10_threshold", psi_full_avg10_threshold, 0, 100),
    UINT("admission", "available_memory_floor_mb", available_memory_floor_mb, 0, 1 << 24),
    UINT("admission", "bypass_limit", bypass_limit, 0, 1 << 16),
    UINT("admission", "lookahead", lookahead, 1, 1 << 16),
    UINT("session", "idle_timeout_s", session_idle_timeout_s, 1, 86400),
    UINT("pool", "warm_pool_python", warm_pool_python, 0, SBX_CONFIG_MAX_WARM_POOL),
    UINT("pool", "warm_pool_javascript", warm_pool_javascript, 0, SBX_CONFIG_MAX_WARM_POOL),
    UINT("pool", "warm_pool_raw", warm_pool_raw, 0, SBX_CONFIG_MAX_WARM_POOL),
    BOOL("pool", "l1", l1),
    BOOL("pool", "l1_prefetch", l1_prefetch),
    UINT("pool", "l1_prestart", l1_prestart, 0, SBX_CONFIG_MAX_L1_PRESTART),
    UINT("pool", "l1_build_drain_s", l1_build_drain_s, 0, SBX_CONFIG_MAX_L1_BUILD_DRAIN_S),
    UINT("pool", "l1_max_templates", l1_max_templates, 1, 256),
};

static const KeyDesc *
find_key(const char *group, const char *key)
{
    for (gsize i = 0; i < G_N_ELEMENTS(keys); i++)
        if (strcmp(keys[i].group, group) == 0 && strcmp(keys[i].key, key) == 0)
            return &keys[i];
    return NULL;
}

static gboolean
apply_key(SbxConfig *cfg, GKeyFile *kf, const KeyDesc *d, GError **error)
{
    guint8 *field = (guint8 *)cfg + d->offset;
    g_autoptr(GError) local = NULL;

    switch (d->type) {
    case K_STR: {
        char *v = g_key_file_get_string(kf, d->group, d->key, &local);
        if (v == NULL)
            break;
        g_free(*(char **)field);
        *(char **)field = v;
        return TRUE;
    }
    case K_ACCEL: {
        g_autofree char *v = g_key_file_get_string(kf, d->group, d->key, &local);
        if (v == NULL)
            break;
        return sbx_accel_mode_parse(g_strstrip(v), (SbxAccelMode *)field, error);
    }
    case K_UINT: {
        g_autofree char *raw = g_key_file_get_value(kf, d->group, d->key, NULL);
        guint64 v = g_key_file_get_uint64(kf, d->group, d->key, &local);
        if (local && !g_error_matches(local, G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_INVALID_VALUE))
            break;
        if (local || (raw && strchr(raw, '-')) || v < d->min || v > d->max) {
            g_set_error(error, G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_INVALID_VALUE,
                        "[%s] %s = %s is outside %.0f..%.0f", d->group, d->key,
                        raw ? g_strstrip(raw) : "", d->min, d->max);
            return FALSE;
        }
        *(guint *)field = (guint)v;
        return TRUE;
    }
    case K_DOUBLE: {
        double v = g_key_file_get_double(kf, d->group, d->key, &local);
        if (local)
            break;
        if (v < d->min || v > d->max) {
            g_set_error(error, G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_INVALID_VALUE,
                        "[%s] %s = %g is outside %g..%g", d->group, d->key, v, d->min, d->max);
            return FALSE;
        }
        *(double *)field = v;
        return TRUE;
    }
    case K_BOOL: {
        gboolean v = g_key_file_get_boolean(kf, d->group, d->key, &local);
        if (g_error_matches(local, G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_INVALID_VALUE)) {
            g_autofree char *raw = g_key_file_get_value(kf, d->group, d->key, NULL);
            g_set_error(error, G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_INVALID_VALUE,
                        "[%s] %s = %s is not one of true, false", d->group, d->key,
                        raw ? raw : "");
            return FALSE;
        }
        if (local)
            break;
        *(gboolean *)field = v;
        return TRUE;
    }
    }
    g_propagate_prefixed_error(error, g_steal_pointer(&local), "[%s] %s: ", d->group, d->key);
    return FALSE;
}

gboolean
sbx_config_load_file(SbxConfig *cfg, const char *path, GError **error)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();
    if (!g_key_file_load_from_file(kf, path, G_KEY_FILE_NONE, error)) {
        g_prefix_error(error, "%s: ", path);
        return FALSE;
    }
    g_auto(GStrv) groups = g_key_file_get_groups(kf, NULL);
    for (guint g = 0; groups[g]; g++) {
        g_auto(GStrv) names = g_key_file_get_keys(kf, groups[g], NULL, NULL);
        for (guint k = 0; names && names[k]; k++) {
            const KeyDesc *d = find_key(groups[g], names[k]);
            if (d == NULL) {
                g_set_error(error, G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_KEY_NOT_FOUND,
                            "%s: unknown key [%s] %s", path, groups[g], names[k]);
                return FALSE;
            }
            if (!apply_key(cfg, kf, d, error)) {
                g_prefix_error(error, "%s: ", path);
                return FALSE;
            }
        }
    }
    if (cfg->min_memory_mb > cfg->default_memory_mb || cfg->default_memory_mb > cfg->max_memory_mb ||
        cfg->default_timeout_s > cfg->max_timeout_s) {
        g_set_error(error, G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_INVALID_VALUE,
                    "%s: [limits] needs min_memory_mb <= default_memory_mb <= max_memory_mb and "
                    "default_timeout_s <= max_timeout_s",
                    path);
        return FALSE;
    }
    if (cfg->tb_size_mb > 0 && cfg->tcg_cache_mb < cfg->tb_size_mb) {
        g_set_error(error, G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_INVALID_VALUE,
                    "%s: [admission] tcg_cache_mb = %u is below [scheduler] tb_size_mb = %u: "
                    "admission would count less than a TCG VM's translation cache can hold",
                    path, cfg->tcg_cache_mb, cfg->tb_size_mb);
        return FALSE;
    }
    return TRUE;
}

gboolean
sbx_config_apply_env(SbxConfig *cfg, GError **error)
{
    const char *accel = g_getenv("SCHEDULERD_ACCEL");
    const char *guest = g_getenv("SBX_GUEST_DIR");
    if (accel && *accel && !sbx_accel_mode_parse(accel, &cfg->accel, error)) {
        g_prefix_error(error, "SCHEDULERD_ACCEL: ");
        return FALSE;
    }
    if (guest && *guest) {
        g_free(cfg->guest_dir);
        cfg->guest_dir = g_strdup(guest);
    }
    return TRUE;
}
