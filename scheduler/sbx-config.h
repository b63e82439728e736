/* SPDX-License-Identifier: MIT
 *
 * schedulerd configuration: defaults, the key-file (data/schedulerd.conf
 * documents every key), environment overrides (SCHEDULERD_ACCEL, SBX_GUEST_DIR)
 * and command-line overrides applied on top by main.c / schedulerctl. The
 * [pool] values are overridden at run time by SCHEDULERD_L1, ... (read by
 * sbx-pool at every use, not here).
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef enum {
    SBX_ACCEL_MODE_AUTO,
    SBX_ACCEL_MODE_TCG,
    SBX_ACCEL_MODE_KVM,
} SbxAccelMode;

/* Upper bounds of [pool] values, shared with the environment overrides. */
#define SBX_CONFIG_MAX_WARM_POOL 16
#define SBX_CONFIG_MAX_L1_PRESTART 8
#define SBX_CONFIG_MAX_L1_BUILD_DRAIN_S 600

typedef struct {
    /* [scheduler] */
    char *guest_dir;       /* vmlinux, initramfs.cpio, rootfs.erofs, work-seed.ext4, cmdline */
    char *qemu;            /* qemu-system-x86_64 */
    char *qemu_img;        /* qemu-img */
    char *qsd;             /* qemu-storage-daemon */
    char *runtime_dir;     /* sockets, overlays, live-VM records */
    SbxAccelMode accel;
    guint vcpus;
    guint tb_size_mb;
    guint boot_timeout_s;
    gboolean qemu_sandbox; /* -sandbox on when QEMU supports it */
    gboolean ksm;          /* mem-merge=on */
    /* [limits] */
    guint default_memory_mb;
    guint min_memory_mb;
    guint max_memory_mb;
    guint default_timeout_s;
    guint max_timeout_s;
    /* [admission] */
    double memory_overcommit_ratio;
    double cpu_overcommit_ratio;
    double memory_reserve_ratio;
    double cpu_reserve_cores;
    guint vm_overhead_mb;      /* QEMU process overhead per VM */
    guint tcg_cache_mb;        /* extra under TCG: the translation cache */
    guint admission_timeout_s; /* how long a request may wait in the queue */
    guint vm_cpu_overhead_millis;     /* CPU reserved per VM beyond its vCPUs */
    double psi_full_avg10_threshold;  /* memory PSI gate; <= 0 disables */
    guint available_memory_floor_mb;  /* admit only above this much free memory; 0 off */
    guint bypass_limit;               /* later requests that may pass a blocked head */
    guint lookahead;                  /* waiters looked at per dispatch pass */
    /* [session] */
    guint session_idle_timeout_s;
    /* [pool] (docs/snapshots.md; the SCHEDULERD_* variables there override
     * these at run time) */
    guint warm_pool_python;      /* ready VMs kept per language; 0 disables it */
    guint warm_pool_javascript;
    guint warm_pool_raw;
    gboolean l1;                 /* L1 templates (lookups, builds, pre-started QEMUs) */
    gboolean l1_prefetch;        /* hot-page prefetch on restore */
    guint l1_prestart;           /* pre-started restore targets per language */
    guint l1_build_drain_s;      /* a shutdown lets a template build finish this long */
    guint l1_max_templates;      /* template entries kept; least recently used evicted */
} SbxConfig;

SbxConfig *sbx_config_new_default(void);
void sbx_config_free(SbxConfig *cfg);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SbxConfig, sbx_config_free)

/* Apply a key file (missing keys keep their value; unknown keys are errors,
 * so typos do not go unnoticed). */
gboolean sbx_config_load_file(SbxConfig *cfg, const char *path, GError **error);
/* Apply SCHEDULERD_ACCEL=tcg|kvm|auto and SBX_GUEST_DIR. */
gboolean sbx_config_apply_env(SbxConfig *cfg, GError **error);
gboolean sbx_accel_mode_parse(const char *text, SbxAccelMode *out_mode, GError **error);

G_END_DECLS
