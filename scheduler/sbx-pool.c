/* SPDX-License-Identifier: MIT
 *
 * sbx-pool: L1 template use (lookup, restore, background builds through
 * admission) and the warm pool of ready VMs (docs/snapshots.md). Talks to
 * sbx-template (the cache), sbx-vm (boot / restore / destroy), sbx-guest
 * (warm, health ping), sbx-admission (reservations for pooled VMs and builds),
 * sbx-cgroup and qsd/ (work disks). The manager (sbx-manager.c) calls the
 * hooks declared in sbx-pool.h; the pool holds no global state.
 */
#define G_LOG_DOMAIN "sbx-pool"

#include "scheduler/sbx-pool.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/sbx-fd.h"

#define SBX_POOL_HEALTH_INTERVAL_S 30
#define SBX_POOL_HEALTH_TIMEOUT_MS 5000
#define SBX_POOL_MAX_BUILD_FAILURES 3 /* per (language, memory): then no more builds of it */
#define SBX_POOL_MAX_BUILD_QUEUE 16

typedef struct {
    SbxPool *pool;
    SbxVm *vm;
    SbxReservation *res;
    SbxLanguage language;
    SbxTemplate *tpl;  /* pre-started for this template (no reservation), or NULL: warm VM */
    gboolean taken;  /* left the pool (used, evicted or found dead) */
    gboolean checking;
    guint check_timer;
    gulong died_id;
} PoolVm;

struct _SbxPool {
    GObject parent_instance;
    SbxPoolDeps d;
    SbxTemplateCache *cache;
    GQueue warm[SBX_N_LANGUAGES]; /* PoolVm*, oldest first */
    guint filling[SBX_N_LANGUAGES];
    gboolean used[SBX_N_LANGUAGES];
    GHashTable *build_failures;   /* build_id(language, memory) -> failures in a row */
    GQueue build_queue;           /* BuildReq* */
    /* pre-started -incoming defer QEMUs, per language, for prestart_tpl[l] */
    SbxTemplate *prestart_tpl[SBX_N_LANGUAGES];
    GQueue prestarted[SBX_N_LANGUAGES]; /* PoolVm* (res NULL) */
    guint prestarting;
    guint64 prestart_hits, prestart_failures;
    guint builds_running;
    guint fills_running;
    guint idle_source;
    guint health_timer;
    guint64 serial;
    /* Status */
    guint64 l1_hits, l1_restore_failures, l1_invalid, l1_builds, l1_build_failures, l1_evictions;
    guint64 warm_hits, warm_misses, warm_evictions, warm_health_failures, warm_fill_failures;
    gboolean shutting_down;
    guint destroys_running;
    guint drain_timer;
    GTask *shutdown_task;
    GCancellable *cancellable;       /* fills: cancelled at shutdown */
    GCancellable *build_cancellable; /* builds: finish during a shutdown, cancelled on dispose */
};

typedef struct {
    SbxLanguage language;
    guint memory_mb;
} BuildReq;

G_DEFINE_FINAL_TYPE(SbxPool, sbx_pool, G_TYPE_OBJECT)

static void pool_kick_now(SbxPool *self);
static char *template_key(SbxPool *self, SbxLanguage language, guint memory_mb, GError **error);
static void shutdown_check(SbxPool *self);

/* ---- switches ------------------------------------------------------------ */
/* [pool] of the config file, overridden by the environment at every use (no
 * restart): an unset or empty variable leaves the config's value. */

static gboolean
env_switch(const char *name, gboolean cfg_value)
{
    const char *v = g_getenv(name);
    if (v == NULL || *v == '\0')
        return cfg_value;
    return !(g_str_equal(v, "0") || g_ascii_strcasecmp(v, "off") == 0 ||
             g_ascii_strcasecmp(v, "false") == 0);
}

static guint
env_uint(const char *name, guint cfg_value, guint max)
{
    const char *v = g_getenv(name);
    if (v == NULL || *v == '\0')
        return cfg_value;
    return (guint)MIN(g_ascii_strtoull(v, NULL, 10), max);
}

static gboolean
l1_on(SbxPool *self)
{
    return env_switch("SCHEDULERD_L1", self->d.cfg->l1);
}

static gboolean
prefetch_on(SbxPool *self)
{
    return env_switch("SCHEDULERD_L1_PREFETCH", self->d.cfg->l1_prefetch);
}

static guint
warm_target(SbxPool *self, SbxLanguage language)
{
    const SbxConfig *cfg = self->d.cfg;
    guint v = language == SBX_LANGUAGE_PYTHON       ? cfg->warm_pool_python
              : language == SBX_LANGUAGE_JAVASCRIPT ? cfg->warm_pool_javascript
                                                    : cfg->warm_pool_raw;
    return env_uint("SCHEDULERD_WARM_POOL", v, SBX_CONFIG_MAX_WARM_POOL);
}

static guint
prestart_target(SbxPool *self)
{
    return env_uint("SCHEDULERD_L1_PRESTART", self->d.cfg->l1_prestart,
                    SBX_CONFIG_MAX_L1_PRESTART);
}

static guint
build_drain_s(SbxPool *self)
{
    return env_uint("SCHEDULERD_L1_BUILD_DRAIN_S", self->d.cfg->l1_build_drain_s,
                    SBX_CONFIG_MAX_L1_BUILD_DRAIN_S);
}

/* What a VM of @memory_mb reserves (the default size's is precomputed). */
static void
vm_cost(SbxPool *self, guint memory_mb, guint64 *mem, guint64 *cpu)
{
    if (memory_mb == self->d.cfg->default_memory_mb) {
        *mem = self->d.vm_mem_cost;
        *cpu = self->d.vm_cpu_cost;
        return;
    }
    sbx_admission_config_vm_cost(&self->d.acfg, (guint64)memory_mb << 20, self->d.cfg->vcpus,
                                 self->d.accel == SBX_ACCEL_TCG, mem, cpu);
}

static gpointer
build_id(SbxLanguage language, guint memory_mb)
{
    return GUINT_TO_POINTER(((guint)language << 24) | (memory_mb & 0xffffff));
}

/* ---- construction --------------------------------------------------------- */

SbxPool *
sbx_pool_new(const SbxPoolDeps *deps, GError **error)
{
    g_autoptr(SbxTemplateCache) cache = sbx_template_cache_new(deps->l1_dir, error);
    if (cache == NULL)
        return NULL;
    SbxPool *self = g_object_new(SBX_TYPE_POOL, NULL);
    self->d = *deps;
    self->cache = g_steal_pointer(&cache);
    /* templates of another image / QEMU / config are dead weight: an entry is
     * current when its key is what this config computes for its language and
     * memory size */
    g_autoptr(GPtrArray) keep = g_ptr_array_new_with_free_func(g_free);
    g_auto(GStrv) have = sbx_template_cache_list_keys(self->cache);
    for (guint i = 0; have[i]; i++) {
        SbxLanguage language;
        guint memory_mb;
        if (!sbx_template_key_parse(have[i], &language, &memory_mb))
            continue;
        g_autofree char *k = template_key(self, language, memory_mb, NULL);
        if (g_strcmp0(k, have[i]) == 0)
            g_ptr_array_add(keep, g_steal_pointer(&k));
    }
    g_ptr_array_add(keep, NULL);
    guint pruned = sbx_template_cache_prune(self->cache, (const char *const *)keep->pdata);
    if (pruned)
        g_info("removed %u stale L1 template(s)", pruned);
    g_auto(GStrv) evicted =
        sbx_template_cache_evict_lru(self->cache, deps->cfg->l1_max_templates, NULL);
    if (evicted[0])
        g_info("evicted %u L1 template(s) beyond l1_max_templates=%u", g_strv_length(evicted),
               deps->cfg->l1_max_templates);
    return self;
}

SbxTemplateCache *
sbx_pool_get_template_cache(SbxPool *self)
{
    return self->cache;
}

void
sbx_pool_fill_vm_params(SbxPool *self, guint memory_mb, SbxVmParams *p)
{
    const SbxConfig *cfg = self->d.cfg;
    memset(p, 0, sizeof *p);
    p->qemu = cfg->qemu;
    p->qemu_cfg.accel = self->d.accel;
    p->qemu_cfg.memory_mb = memory_mb;
    p->qemu_cfg.vcpus = cfg->vcpus;
    p->qemu_cfg.tb_size_mb = self->d.accel == SBX_ACCEL_TCG ? cfg->tb_size_mb : 0;
    p->qemu_cfg.kernel = self->d.kernel;
    p->qemu_cfg.initrd = self->d.initrd;
    p->qemu_cfg.cmdline = self->d.cmdline;
    p->qemu_cfg.tsc_khz = self->d.accel == SBX_ACCEL_TCG ? self->d.tsc_khz : 0;
    p->qemu_cfg.rootfs = self->d.rootfs;
    p->qemu_cfg.sandbox = FALSE;
    p->qemu_cfg.mem_merge = cfg->ksm;
    /* idle memory back to the host; the builder leaves it out wherever guest RAM
     * is a template's file (sbx_qemu_has_balloon) */
    p->qemu_cfg.balloon = env_switch("SCHEDULERD_BALLOON", TRUE);
    p->work_format = qsd_overlay_pool_get_format(self->d.disks);
    p->boot_timeout_ms = cfg->boot_timeout_s * 1000;
}

static void
cgroup_limits(SbxPool *self, guint memory_mb, guint64 res_mem, SbxCgroupLimits *l)
{
    memset(l, 0, sizeof *l);
    l->mem_max = res_mem;
    l->mem_high = ((guint64)memory_mb << 20) + ((guint64)self->d.cfg->vm_overhead_mb << 20);
    l->cpu_quota_millis = self->d.cfg->vcpus * 1000;
    l->pids_max = 256;
    if (l->mem_high > l->mem_max)
        l->mem_high = 0;
}

/* Admission is idle enough for background work: nobody queued and a VM of
 * @memory_mb fits right now. */
static gboolean
admission_idle(SbxPool *self, guint memory_mb)
{
    SbxAdmissionStats st = {0};
    guint64 mem, cpu;
    vm_cost(self, memory_mb, &mem, &cpu);
    sbx_admission_get_stats(self->d.admission, &st);
    return st.queue_length == 0 && st.memory_in_use_bytes + mem <= st.memory_budget_bytes &&
           st.cpu_in_use_millis + cpu <= st.cpu_budget_millis;
}

static char *
template_key(SbxPool *self, SbxLanguage language, guint memory_mb, GError **error)
{
    SbxTemplateKeyInput in = {
        .language = language,
        .memory_mb = memory_mb,
        .vcpus = self->d.cfg->vcpus,
        .accel = self->d.accel,
        .qemu = self->d.cfg->qemu,
        .guest_dir = self->d.cfg->guest_dir,
        .cmdline = self->d.cmdline,
        .mem_merge = self->d.cfg->ksm,
        .disk_format = qsd_overlay_pool_get_format(self->d.disks),
    };
    return sbx_template_compute_key(&in, error);
}

/* ---- L1 --------------------------------------------------------------------- */

static void
build_enqueue(SbxPool *self, SbxLanguage language, guint memory_mb)
{
    if (GPOINTER_TO_UINT(g_hash_table_lookup(self->build_failures,
                                             build_id(language, memory_mb))) >=
            SBX_POOL_MAX_BUILD_FAILURES ||
        self->build_queue.length >= SBX_POOL_MAX_BUILD_QUEUE)
        return;
    for (GList *l = self->build_queue.head; l; l = l->next) {
        BuildReq *r = l->data;
        if (r->language == language && r->memory_mb == memory_mb)
            return;
    }
    BuildReq *r = g_new0(BuildReq, 1);
    r->language = language;
    r->memory_mb = memory_mb;
    g_queue_push_tail(&self->build_queue, r);
    sbx_pool_kick(self);
}

SbxTemplate *
sbx_pool_l1_lookup(SbxPool *self, SbxLanguage language, guint memory_mb)
{
    g_autoptr(GError) error = NULL;
    if (!l1_on(self))
        return NULL;
    g_autofree char *key = template_key(self, language, memory_mb, &error);
    if (key == NULL) {
        g_debug("no L1 key: %s", error->message);
        return NULL;
    }
    SbxTemplate *tpl = sbx_template_cache_lookup(self->cache, key, &error);
    if (tpl == NULL && error) {
        self->l1_invalid++;
        g_warning("L1 template %s rejected (rebuilding): %s", key, error->message);
    }
    if (tpl == NULL) /* every memory size gets its own template (l1_max_templates bounds them) */
        build_enqueue(self, language, memory_mb);
    if (tpl && memory_mb == self->d.cfg->default_memory_mb &&
        self->prestart_tpl[language] != tpl) {
        g_clear_pointer(&self->prestart_tpl[language], sbx_template_unref);
        self->prestart_tpl[language] = sbx_template_ref(tpl);
    }
    return tpl;
}

void
sbx_pool_note_cold_boot(SbxPool *self, SbxLanguage language, guint memory_mb)
{
    if (l1_on(self))
        build_enqueue(self, language, memory_mb);
}

void
sbx_pool_l1_vm_params(SbxPool *self, SbxTemplate *tpl, SbxVmParams *p)
{
    p->qemu_cfg.mem_path = sbx_template_get_ram_path(tpl);
    p->qemu_cfg.mem_share = FALSE;
    p->work_format = "qcow2"; /* an overlay over the template's disk */
}

static void
disk_overlay_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GTask) task = user_data;
    GError *error = NULL;
    if (!qsd_daemon_create_overlay_finish(QSD_DAEMON(source), res, &error))
        g_task_return_error(task, error);
    else
        g_task_return_boolean(task, TRUE);
}

static void
disk_pool_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GTask) task = user_data;
    GError *error = NULL;
    if (!qsd_overlay_pool_take_finish(QSD_OVERLAY_POOL(source), res, &error))
        g_task_return_error(task, error);
    else
        g_task_return_boolean(task, TRUE);
}

void
sbx_pool_take_disk_async(SbxPool *self, SbxTemplate *tpl, const char *dest,
                         GCancellable *cancellable, GAsyncReadyCallback callback,
                         gpointer user_data)
{
    GTask *task = g_task_new(self, cancellable, callback, user_data);
    g_task_set_source_tag(task, sbx_pool_take_disk_async);
    if (tpl)
        qsd_daemon_create_overlay_async(self->d.qsd, dest, sbx_template_get_disk_path(tpl),
                                        sbx_template_get_disk_format(tpl),
                                        sbx_template_get_disk_size(tpl), cancellable,
                                        disk_overlay_cb, task);
    else
        qsd_overlay_pool_take_async(self->d.disks, dest, cancellable, disk_pool_cb, task);
}

gboolean
sbx_pool_take_disk_finish(SbxPool *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

static void
restored_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GTask) task = user_data;
    GError *error = NULL;
    if (!sbx_vm_restore_finish(SBX_VM(source), res, &error))
        g_task_return_error(task, error);
    else
        g_task_return_boolean(task, TRUE);
}

void
sbx_pool_l1_restore_async(SbxPool *self, SbxTemplate *tpl, SbxVm *vm, const SbxVmParams *p,
                          GCancellable *cancellable, GAsyncReadyCallback callback,
                          gpointer user_data)
{
    GTask *task = g_task_new(self, cancellable, callback, user_data);
    GError *error = NULL;
    g_task_set_source_tag(task, sbx_pool_l1_restore_async);
    /* state and RAM opened together, both checked against the metadata */
    g_auto(SbxFd) fd = sbx_template_open_state(tpl, &error);
    g_auto(SbxFd) ram = -1;
    if (fd >= 0 && p != NULL)
        ram = sbx_template_open_ram(tpl, &error);
    if (fd < 0 || (p != NULL && ram < 0)) {
        g_task_return_error(task, error);
        g_object_unref(task);
        return;
    }
    if (prefetch_on(self))
        sbx_template_prefetch(tpl);
    SbxVmParams vp;
    if (p) {
        vp = *p;
        vp.mem_fd = ram;
    }
    sbx_vm_restore_async(vm, p ? &vp : NULL, fd, cancellable, restored_cb, task);
}

gboolean
sbx_pool_l1_restore_finish(SbxPool *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

void
sbx_pool_l1_restore_failed(SbxPool *self, SbxTemplate *tpl, const GError *error)
{
    self->l1_restore_failures++;
    if (g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
        return;
    /* A template that fails to load is not retried: drop it, rebuild later. */
    g_warning("L1 restore from %s failed, falling back to a cold boot: %s",
              sbx_template_get_key(tpl), error->message);
    if (g_error_matches(error, SBX_VM_ERROR, SBX_VM_ERROR_MIGRATION) ||
        g_error_matches(error, SBX_VM_ERROR, SBX_VM_ERROR_DIED)) {
        sbx_template_cache_remove(self->cache, sbx_template_get_key(tpl));
        for (guint l = 0; l < SBX_N_LANGUAGES; l++)
            if (self->prestart_tpl[l] == tpl)
                g_clear_pointer(&self->prestart_tpl[l], sbx_template_unref);
    }
}

void
sbx_pool_l1_hit(SbxPool *self)
{
    self->l1_hits++;
}

/* ---- background template builds ---------------------------------------------- */

typedef struct {
    SbxPool *pool;
    BuildReq req;
    SbxReservation *res;
    char *key;
    char *run_dir, *verify_dir, *disk;
} BuildJob;

static void
rm_dir(const char *dir)
{
    g_autoptr(GDir) d = dir ? g_dir_open(dir, 0, NULL) : NULL;
    const char *name;
    while (d && (name = g_dir_read_name(d)) != NULL) {
        g_autofree char *p = g_build_filename(dir, name, NULL);
        (void)unlink(p);
    }
    if (dir)
        (void)rmdir(dir);
}

static void
build_job_free(BuildJob *j)
{
    rm_dir(j->run_dir);
    rm_dir(j->verify_dir);
    g_clear_pointer(&j->res, sbx_reservation_free);
    g_free(j->key);
    g_free(j->run_dir);
    g_free(j->verify_dir);
    g_free(j->disk);
    g_free(j);
}

static void
build_job_done(BuildJob *j)
{
    SbxPool *self = j->pool;
    self->builds_running--;
    build_job_free(j);
    shutdown_check(self);
    sbx_pool_kick(self);
    g_object_unref(self);
}

/* Keep at most l1_max_templates entries: drop the least recently used ones
 * (never @keep, the one just built) and forget pre-start targets among them. */
static void
evict_templates(SbxPool *self, const char *keep)
{
    g_auto(GStrv) gone =
        sbx_template_cache_evict_lru(self->cache, self->d.cfg->l1_max_templates, keep);
    for (guint i = 0; gone[i]; i++) {
        g_info("evicted L1 template %s (least recently used, l1_max_templates=%u)", gone[i],
               self->d.cfg->l1_max_templates);
        self->l1_evictions++;
        for (guint l = 0; l < SBX_N_LANGUAGES; l++)
            if (self->prestart_tpl[l] &&
                g_strcmp0(sbx_template_get_key(self->prestart_tpl[l]), gone[i]) == 0)
                g_clear_pointer(&self->prestart_tpl[l], sbx_template_unref);
    }
}

static void
built_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    BuildJob *j = user_data;
    SbxPool *self = j->pool;
    g_autoptr(GError) error = NULL;
    g_autoptr(SbxTemplate) tpl =
        sbx_template_cache_build_finish(SBX_TEMPLATE_CACHE(source), res, &error);
    if (tpl) {
        self->l1_builds++;
        g_hash_table_remove(self->build_failures, build_id(j->req.language, j->req.memory_mb));
        evict_templates(self, j->key);
    } else if (!g_error_matches(error, G_IO_ERROR, G_IO_ERROR_BUSY) &&
               !g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED)) {
        self->l1_build_failures++;
        gpointer id = build_id(j->req.language, j->req.memory_mb);
        g_hash_table_replace(self->build_failures, id,
                             GUINT_TO_POINTER(GPOINTER_TO_UINT(
                                                  g_hash_table_lookup(self->build_failures, id)) +
                                              1));
        g_warning("L1 template build for %s failed: %s", sbx_language_to_string(j->req.language),
                  error->message);
    }
    build_job_done(j);
}

static void
build_disk_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    BuildJob *j = user_data;
    SbxPool *self = j->pool;
    g_autoptr(GError) error = NULL;
    if (!qsd_overlay_pool_take_finish(QSD_OVERLAY_POOL(source), res, &error)) {
        g_warning("L1 template build: no work disk: %s", error->message);
        self->l1_build_failures++;
        build_job_done(j);
        return;
    }
    struct stat st;
    SbxTemplateBuildParams bp = {0};
    bp.language = j->req.language;
    sbx_pool_fill_vm_params(self, j->req.memory_mb, &bp.vm);
    bp.vm.run_dir = j->run_dir;
    bp.vm.work_disk = j->disk;
    bp.verify_run_dir = j->verify_dir;
    bp.disk_size = stat(self->d.seed, &st) == 0 ? (guint64)st.st_size : 0;
    bp.qsd = self->d.qsd;
    sbx_template_cache_build_async(self->cache, j->key, &bp, self->build_cancellable, built_cb,
                                   j);
}

static void
build_admitted_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    BuildJob *j = user_data;
    SbxPool *self = j->pool;
    g_autoptr(GError) error = NULL;
    j->res = sbx_admission_acquire_finish(SBX_ADMISSION(source), res, &error);
    if (j->res == NULL || self->shutting_down) {
        if (!self->shutting_down)
            build_enqueue(self, j->req.language, j->req.memory_mb); /* later */
        build_job_done(j);
        return;
    }
    g_autofree char *id = g_strdup_printf("l1build-%d-%" G_GUINT64_FORMAT, (int)getpid(),
                                          ++self->serial);
    j->run_dir = g_build_filename(self->d.vms_dir, id, NULL);
    j->verify_dir = g_strdup_printf("%s-verify", j->run_dir);
    if (g_mkdir_with_parents(j->run_dir, 0700) != 0) {
        build_job_done(j);
        return;
    }
    j->disk = g_strdup_printf("%s/work.%s", j->run_dir, qsd_overlay_pool_get_format(self->d.disks));
    qsd_overlay_pool_take_async(self->d.disks, j->disk, self->build_cancellable, build_disk_cb, j);
}

static gboolean
build_start_one(SbxPool *self)
{
    if (self->builds_running > 0)
        return FALSE;
    /* The oldest request that needs a build and whose size fits now (a large one
     * does not hold up the rest). Requests with nothing to build are dropped on
     * the way: answering TRUE for one would end this kick without a fill. */
    GList *it = self->build_queue.head;
    while (it) {
        GList *next = it->next;
        BuildReq *r = it->data;
        g_autofree char *key = template_key(self, r->language, r->memory_mb, NULL);
        g_autoptr(SbxTemplate) have =
            key ? sbx_template_cache_lookup(self->cache, key, NULL) : NULL;
        if (key == NULL || have || sbx_template_cache_is_building(self->cache, key)) {
            g_queue_delete_link(&self->build_queue, it);
            g_free(r);
            it = next;
            continue;
        }
        if (!admission_idle(self, r->memory_mb)) {
            it = next;
            continue;
        }
        g_queue_delete_link(&self->build_queue, it);
        BuildJob *j = g_new0(BuildJob, 1);
        j->pool = g_object_ref(self);
        j->req = *r;
        j->key = g_steal_pointer(&key);
        g_free(r);
        self->builds_running++;
        g_info("building L1 template %s in the background", j->key);
        guint64 mem, cpu;
        vm_cost(self, j->req.memory_mb, &mem, &cpu);
        sbx_admission_acquire_async(self->d.admission, mem, cpu, 100, self->build_cancellable,
                                    build_admitted_cb, j);
        return TRUE;
    }
    return FALSE;
}

/* ---- warm pool ----------------------------------------------------------------- */

static void
pool_vm_free(PoolVm *pv)
{
    g_clear_handle_id(&pv->check_timer, g_source_remove);
    if (pv->died_id)
        g_signal_handler_disconnect(pv->vm, pv->died_id);
    g_clear_object(&pv->vm);
    g_clear_pointer(&pv->res, sbx_reservation_free);
    g_clear_pointer(&pv->tpl, sbx_template_unref);
    g_free(pv);
}

static void
pool_vm_destroyed_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    PoolVm *pv = user_data;
    SbxPool *self = pv->pool;
    g_autoptr(GError) error = NULL;
    if (!sbx_vm_destroy_finish(SBX_VM(source), res, &error))
        g_warning("pooled VM %s: teardown incomplete: %s", sbx_vm_get_id(SBX_VM(source)),
                  error->message);
    pool_vm_free(pv); /* the reservation goes back after the VM is gone */
    self->destroys_running--;
    shutdown_check(self);
    sbx_pool_kick(self);
    g_object_unref(self);
}

/* Remove from its queue (if there) and destroy. */
static void
pool_vm_discard(PoolVm *pv)
{
    SbxPool *self = pv->pool;
    if (!pv->taken)
        g_queue_remove(pv->tpl ? &self->prestarted[pv->language] : &self->warm[pv->language], pv);
    pv->taken = TRUE;
    g_clear_handle_id(&pv->check_timer, g_source_remove);
    if (pv->died_id)
        g_signal_handler_disconnect(pv->vm, pv->died_id);
    pv->died_id = 0;
    self->destroys_running++;
    g_object_ref(self);
    sbx_vm_destroy_async(pv->vm, pool_vm_destroyed_cb, pv);
}

static void
pool_vm_died_cb(SbxVm *vm, const char *how, gpointer user_data)
{
    PoolVm *pv = user_data;
    g_warning("pooled VM %s died (%s)", sbx_vm_get_id(vm), how);
    pv->pool->warm_health_failures++;
    pool_vm_discard(pv);
}

typedef struct {
    SbxPool *pool;
    PoolVm *pv;
    SbxLanguage language;
    SbxVm *vm;
    SbxReservation *res;
    SbxTemplate *tpl;
    SbxCgroup *cgroup;
    char *run_dir, *disk;
    guint pending;
    GError *error;
} Fill;

static void
fill_free(Fill *f)
{
    g_clear_object(&f->vm);
    g_clear_pointer(&f->res, sbx_reservation_free);
    g_clear_pointer(&f->tpl, sbx_template_unref);
    g_clear_object(&f->cgroup);
    g_free(f->run_dir);
    g_free(f->disk);
    g_clear_error(&f->error);
    g_free(f);
}

static void
fill_end(Fill *f)
{
    SbxPool *self = f->pool;
    self->filling[f->language]--;
    self->fills_running--;
    fill_free(f);
    shutdown_check(self);
    sbx_pool_kick(self);
    g_object_unref(self);
}

static void
fill_vm_gone_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Fill *f = user_data;
    (void)sbx_vm_destroy_finish(SBX_VM(source), res, NULL);
    fill_end(f);
}

static void
fill_fail(Fill *f, GError *error)
{
    SbxPool *self = f->pool;
    if (!g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED)) {
        self->warm_fill_failures++;
        g_warning("warm pool (%s): %s", sbx_language_to_string(f->language), error->message);
    }
    g_error_free(error);
    if (f->vm) {
        sbx_vm_destroy_async(f->vm, fill_vm_gone_cb, f);
        return;
    }
    if (f->cgroup)
        (void)sbx_cgroup_try_destroy(f->cgroup, NULL);
    rm_dir(f->run_dir);
    fill_end(f);
}

static void
fill_ready(Fill *f)
{
    SbxPool *self = f->pool;
    if (self->shutting_down) {
        fill_fail(f, g_error_new_literal(G_IO_ERROR, G_IO_ERROR_CANCELLED, "shutting down"));
        return;
    }
    PoolVm *pv = g_new0(PoolVm, 1);
    pv->pool = self;
    pv->vm = g_steal_pointer(&f->vm);
    pv->res = g_steal_pointer(&f->res);
    pv->language = f->language;
    pv->died_id = g_signal_connect(pv->vm, "died", G_CALLBACK(pool_vm_died_cb), pv);
    g_queue_push_tail(&self->warm[f->language], pv);
    g_info("warm pool (%s): VM %s ready (%s)", sbx_language_to_string(f->language),
           sbx_vm_get_id(pv->vm), f->tpl ? "L1 restore" : "cold boot");
    /* No agent `reclaim` here: a VM that has only booted and primed its REPL has
     * nothing freed to give back (docs/snapshots.md, "Host memory of idle VMs"),
     * and a request arriving during the reclaim would wait for its sync, cache
     * drop and compaction on the agent's loop. Free page reporting still returns
     * what the guest frees. */
    fill_end(f);
}

static void
fill_primed_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Fill *f = user_data;
    SbxGuestExecResult r = {0};
    GError *error = NULL;
    if (!sbx_guest_exec_finish(SBX_GUEST(source), res, &r, &error)) {
        fill_fail(f, error);
        return;
    }
    if (r.exit_code != 0) {
        fill_fail(f, g_error_new(SBX_GUEST_ERROR, SBX_GUEST_ERROR_FAILED,
                                 "the warm-up snippet exited with %d", r.exit_code));
        return;
    }
    fill_ready(f);
}

/* Run a no-op snippet once before the VM is offered: the first exec in a VM
 * pays for faulting in the interpreter's pages and, under TCG, for translating
 * its hot code; a pooled VM should not hand that cost to the request. The
 * snippet leaves no state behind. */
static void
fill_prime(Fill *f)
{
    static const char *const noop[SBX_N_LANGUAGES] = {
        [SBX_LANGUAGE_PYTHON] = "pass",
        [SBX_LANGUAGE_JAVASCRIPT] = "undefined",
        [SBX_LANGUAGE_RAW] = ":",
    };
    g_autoptr(GBytes) code = g_bytes_new_static(noop[f->language], strlen(noop[f->language]));
    sbx_guest_exec_async(sbx_vm_get_guest(f->vm), f->language, code, 30, NULL, NULL, NULL, NULL,
                         f->pool->cancellable, fill_primed_cb, f);
}

static void
fill_warmed_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Fill *f = user_data;
    GError *error = NULL;
    if (!sbx_guest_warm_finish(SBX_GUEST(source), res, &error)) {
        fill_fail(f, error);
        return;
    }
    fill_prime(f);
}

static void
fill_started_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Fill *f = user_data;
    SbxPool *self = f->pool;
    GError *error = NULL;
    gboolean ok = f->tpl ? sbx_pool_l1_restore_finish(self, res, &error)
                         : sbx_vm_boot_finish(SBX_VM(source), res, &error);
    if (!ok) {
        if (f->tpl)
            sbx_pool_l1_restore_failed(self, f->tpl, error);
        fill_fail(f, error);
        return;
    }
    if (f->tpl) {
        fill_prime(f); /* the template's REPL is already running */
        return;
    }
    sbx_pool_note_cold_boot(self, f->language, self->d.cfg->default_memory_mb);
    sbx_guest_warm_async(sbx_vm_get_guest(f->vm), f->language, self->cancellable, fill_warmed_cb,
                         f);
}

static void
fill_setup_done(Fill *f)
{
    SbxPool *self = f->pool;
    if (--f->pending > 0)
        return;
    if (f->error) {
        fill_fail(f, g_steal_pointer(&f->error));
        return;
    }
    SbxVmParams p;
    sbx_pool_fill_vm_params(self, self->d.cfg->default_memory_mb, &p);
    p.run_dir = f->run_dir;
    p.work_disk = f->disk;
    p.cgroup = f->cgroup;
    g_autofree char *id = g_path_get_basename(f->run_dir);
    f->vm = sbx_vm_new(id);
    if (f->tpl) {
        sbx_pool_l1_vm_params(self, f->tpl, &p);
        sbx_pool_l1_restore_async(self, f->tpl, f->vm, &p, self->cancellable, fill_started_cb, f);
    } else {
        sbx_vm_boot_async(f->vm, &p, self->cancellable, fill_started_cb, f);
    }
    g_clear_object(&f->cgroup); /* the VM owns it */
}

static void
fill_disk_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Fill *f = user_data;
    GError *error = NULL;
    if (!sbx_pool_take_disk_finish(SBX_POOL(source), res, &error) && f->error == NULL)
        f->error = error;
    else if (error)
        g_error_free(error);
    fill_setup_done(f);
}

static void
fill_cgroup_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Fill *f = user_data;
    GError *error = NULL;
    f->cgroup = sbx_cgroup_manager_create_finish(SBX_CGROUP_MANAGER(source), res, &error);
    if (f->cgroup == NULL && f->error == NULL)
        f->error = error;
    else if (error)
        g_error_free(error);
    fill_setup_done(f);
}

static void
fill_admitted_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Fill *f = user_data;
    SbxPool *self = f->pool;
    GError *error = NULL;
    f->res = sbx_admission_acquire_finish(SBX_ADMISSION(source), res, &error);
    if (f->res == NULL) {
        fill_fail(f, error);
        return;
    }
    g_autofree char *id = g_strdup_printf("warm-%d-%" G_GUINT64_FORMAT, (int)getpid(),
                                          ++self->serial);
    f->run_dir = g_build_filename(self->d.vms_dir, id, NULL);
    if (g_mkdir_with_parents(f->run_dir, 0700) != 0) {
        int e = errno;
        fill_fail(f, g_error_new(G_IO_ERROR, g_io_error_from_errno(e), "%s: %s", f->run_dir,
                                 g_strerror(e)));
        return;
    }
    f->tpl = sbx_pool_l1_lookup(self, f->language, self->d.cfg->default_memory_mb);
    f->disk = g_strdup_printf("%s/work.%s", f->run_dir,
                              f->tpl ? "qcow2" : qsd_overlay_pool_get_format(self->d.disks));
    SbxCgroupLimits limits;
    cgroup_limits(self, self->d.cfg->default_memory_mb, sbx_reservation_get_memory_bytes(f->res),
                  &limits);
    f->pending = 2;
    sbx_pool_take_disk_async(self, f->tpl, f->disk, self->cancellable, fill_disk_cb, f);
    sbx_cgroup_manager_create_async(self->d.cgroups, id, &limits, self->cancellable,
                                    fill_cgroup_cb, f);
}

static gboolean
fill_start_one(SbxPool *self)
{
    if (self->fills_running > 0 || !admission_idle(self, self->d.cfg->default_memory_mb))
        return FALSE;
    for (guint l = 0; l < SBX_N_LANGUAGES; l++) {
        if (!self->used[l] || self->warm[l].length + self->filling[l] >= warm_target(self, l))
            continue;
        Fill *f = g_new0(Fill, 1);
        f->pool = g_object_ref(self);
        f->language = l;
        self->filling[l]++;
        self->fills_running++;
        sbx_admission_acquire_async(self->d.admission, self->d.vm_mem_cost, self->d.vm_cpu_cost,
                                    100, self->cancellable, fill_admitted_cb, f);
        return TRUE;
    }
    return FALSE;
}

SbxVm *
sbx_pool_take_warm(SbxPool *self, const SbxRunSpec *spec, SbxReservation **out_res)
{
    if (self->shutting_down || spec->memory_mb != self->d.cfg->default_memory_mb)
        return NULL;
    self->used[spec->language] = TRUE;
    PoolVm *pv;
    SbxVm *vm = NULL;
    while (vm == NULL && (pv = g_queue_pop_head(&self->warm[spec->language])) != NULL) {
        pv->taken = TRUE;
        if (sbx_vm_get_state(pv->vm) != SBX_VM_STATE_READY) {
            pool_vm_discard(pv);
            continue;
        }
        vm = g_steal_pointer(&pv->vm);
        g_signal_handler_disconnect(vm, pv->died_id);
        pv->died_id = 0;
        *out_res = g_steal_pointer(&pv->res);
        pool_vm_free(pv);
    }
    if (vm)
        self->warm_hits++;
    else if (warm_target(self, spec->language) > 0)
        self->warm_misses++;
    /* no refill now: under TCG a restore next to the run's exec slows the exec
     * down; the manager kicks the pool when the run is over */
    return vm;
}

gboolean
sbx_pool_make_room(SbxPool *self, SbxLanguage for_language, guint64 mem, guint64 cpu)
{
    SbxAdmissionStats st = {0};
    sbx_admission_get_stats(self->d.admission, &st);
    if (st.queue_length == 0 && st.memory_in_use_bytes + mem <= st.memory_budget_bytes &&
        st.cpu_in_use_millis + cpu <= st.cpu_budget_millis)
        return FALSE;
    for (int pass = 0; pass < 2; pass++) {
        for (guint l = 0; l < SBX_N_LANGUAGES; l++) {
            if (pass == 0 && l == for_language)
                continue;
            PoolVm *pv = g_queue_peek_head(&self->warm[l]);
            if (pv) {
                self->warm_evictions++;
                pool_vm_discard(pv);
                return TRUE;
            }
        }
    }
    return FALSE;
}

/* ---- pre-started -incoming defer QEMUs -------------------------------------------- */

/* A pre-started QEMU holds no admission reservation: it has mapped the
 * template's RAM file but loaded nothing (its RSS is QEMU's own, ~30 MB); the
 * run that takes it brings its own reservation. Its cgroup has the limits of a
 * default-memory run, its work disk is already the overlay over the template. */
typedef struct {
    SbxPool *pool;
    PoolVm *pv;
    char *run_dir, *disk;
    SbxCgroup *cgroup;
    guint pending;
    GError *error;
} Pre;

static void
pre_end(Pre *p, GError *error)
{
    SbxPool *self = p->pool;
    PoolVm *pv = p->pv;
    self->prestarting--;
    if (error) {
        if (!g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED)) {
            self->prestart_failures++;
            g_warning("pre-starting a restore target failed: %s", error->message);
        }
        g_error_free(error);
        if (pv->vm) {
            pv->taken = TRUE;
            pool_vm_discard(pv);
        } else {
            if (p->cgroup)
                (void)sbx_cgroup_try_destroy(p->cgroup, NULL);
            rm_dir(p->run_dir);
            pool_vm_free(pv);
        }
    } else if (self->shutting_down) {
        pv->taken = TRUE;
        pool_vm_discard(pv);
    } else {
        g_queue_push_tail(&self->prestarted[pv->language], pv);
    }
    g_clear_object(&p->cgroup);
    g_free(p->run_dir);
    g_free(p->disk);
    g_free(p);
    shutdown_check(self);
    sbx_pool_kick(self);
    g_object_unref(self);
}

static void
pre_started_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Pre *p = user_data;
    GError *error = NULL;
    (void)sbx_vm_prestart_finish(SBX_VM(source), res, &error);
    pre_end(p, error);
}

static void
pre_setup_done(Pre *p)
{
    SbxPool *self = p->pool;
    if (--p->pending > 0)
        return;
    if (p->error) {
        pre_end(p, g_steal_pointer(&p->error));
        return;
    }
    /* The template may have been dropped meanwhile: QEMU would create a new,
     * empty RAM file at its path. */
    g_autoptr(SbxTemplate) still =
        sbx_template_cache_lookup(self->cache, sbx_template_get_key(p->pv->tpl), NULL);
    if (still != p->pv->tpl) {
        pre_end(p, g_error_new_literal(G_IO_ERROR, G_IO_ERROR_CANCELLED, "template dropped"));
        return;
    }
    GError *error = NULL;
    g_auto(SbxFd) ram = sbx_template_open_ram(p->pv->tpl, &error);
    if (ram < 0) {
        pre_end(p, error);
        return;
    }
    SbxVmParams vp;
    sbx_pool_fill_vm_params(self, self->d.cfg->default_memory_mb, &vp);
    sbx_pool_l1_vm_params(self, p->pv->tpl, &vp);
    vp.mem_fd = ram;
    vp.run_dir = p->run_dir;
    vp.work_disk = p->disk;
    vp.cgroup = p->cgroup;
    g_autofree char *id = g_path_get_basename(p->run_dir);
    p->pv->vm = sbx_vm_new(id);
    sbx_vm_prestart_async(p->pv->vm, &vp, self->cancellable, pre_started_cb, p);
    g_clear_object(&p->cgroup); /* the VM owns it */
}

static void
pre_disk_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Pre *p = user_data;
    GError *error = NULL;
    if (!sbx_pool_take_disk_finish(SBX_POOL(source), res, &error) && p->error == NULL)
        p->error = error;
    else if (error)
        g_error_free(error);
    pre_setup_done(p);
}

static void
pre_cgroup_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Pre *p = user_data;
    GError *error = NULL;
    p->cgroup = sbx_cgroup_manager_create_finish(SBX_CGROUP_MANAGER(source), res, &error);
    if (p->cgroup == NULL && p->error == NULL)
        p->error = error;
    else if (error)
        g_error_free(error);
    pre_setup_done(p);
}

static gboolean
prestart_one(SbxPool *self)
{
    if (self->prestarting > 0 || !l1_on(self))
        return FALSE;
    for (guint l = 0; l < SBX_N_LANGUAGES; l++) {
        SbxTemplate *tpl = self->prestart_tpl[l];
        if (tpl == NULL || self->prestarted[l].length >= prestart_target(self))
            continue;
        Pre *p = g_new0(Pre, 1);
        p->pool = g_object_ref(self);
        p->pv = g_new0(PoolVm, 1);
        p->pv->pool = self;
        p->pv->language = l;
        p->pv->tpl = sbx_template_ref(tpl);
        self->prestarting++;
        g_autofree char *id = g_strdup_printf("pre-%d-%" G_GUINT64_FORMAT, (int)getpid(),
                                              ++self->serial);
        p->run_dir = g_build_filename(self->d.vms_dir, id, NULL);
        if (g_mkdir_with_parents(p->run_dir, 0700) != 0) {
            int e = errno;
            pre_end(p, g_error_new(G_IO_ERROR, g_io_error_from_errno(e), "%s: %s", p->run_dir,
                                   g_strerror(e)));
            return TRUE;
        }
        p->disk = g_build_filename(p->run_dir, "work.qcow2", NULL);
        SbxCgroupLimits limits;
        cgroup_limits(self, self->d.cfg->default_memory_mb, self->d.vm_mem_cost, &limits);
        p->pending = 2;
        sbx_pool_take_disk_async(self, tpl, p->disk, self->cancellable, pre_disk_cb, p);
        sbx_cgroup_manager_create_async(self->d.cgroups, id, &limits, self->cancellable,
                                        pre_cgroup_cb, p);
        return TRUE;
    }
    return FALSE;
}

SbxVm *
sbx_pool_take_prestarted(SbxPool *self, SbxTemplate *tpl, SbxLanguage language)
{
    PoolVm *pv;
    SbxVm *vm = NULL;
    /* pre-started QEMUs have the default memory size: leave them to those runs */
    if (self->shutting_down || sbx_template_get_memory_mb(tpl) != self->d.cfg->default_memory_mb)
        return NULL;
    while (vm == NULL && (pv = g_queue_pop_head(&self->prestarted[language])) != NULL) {
        pv->taken = TRUE;
        if (pv->tpl != tpl || !sbx_vm_is_prestarted(pv->vm)) {
            pool_vm_discard(pv); /* another template's, or its QEMU died */
            continue;
        }
        vm = g_steal_pointer(&pv->vm);
        pool_vm_free(pv);
    }
    if (vm)
        self->prestart_hits++;
    return vm; /* refilled when the run is over (sbx_pool_kick from the manager) */
}

/* ---- health --------------------------------------------------------------------- */

typedef struct {
    PoolVm *pv;
    GCancellable *cancel;
} Check;

static void
health_pong_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Check *c = user_data;
    g_autoptr(GError) error = NULL;
    gboolean ok = sbx_guest_ping_finish(SBX_GUEST(source), res, &error);
    PoolVm *pv = c->pv;
    if (pv) {
        pv->checking = FALSE;
        g_clear_handle_id(&pv->check_timer, g_source_remove);
        if (!ok && !pv->taken) {
            g_warning("pooled VM %s failed its health check: %s", sbx_vm_get_id(pv->vm),
                      error->message);
            pv->pool->warm_health_failures++;
            pool_vm_discard(pv);
        }
    }
    g_object_unref(c->cancel);
    g_free(c);
}

static gboolean
health_timeout_cb(gpointer user_data)
{
    Check *c = user_data;
    c->pv->check_timer = 0;
    g_cancellable_cancel(c->cancel); /* the pong callback discards the VM */
    return G_SOURCE_REMOVE;
}

static gboolean
health_tick_cb(gpointer user_data)
{
    SbxPool *self = user_data;
    /* The VMs stay in their queue while checked: the pool never looks empty. */
    for (guint l = 0; l < SBX_N_LANGUAGES; l++)
        for (GList *it = self->warm[l].head; it; it = it->next) {
            PoolVm *pv = it->data;
            if (pv->checking)
                continue;
            Check *c = g_new0(Check, 1);
            c->pv = pv;
            c->cancel = g_cancellable_new();
            pv->checking = TRUE;
            pv->check_timer = g_timeout_add(SBX_POOL_HEALTH_TIMEOUT_MS, health_timeout_cb, c);
            sbx_guest_ping_async(sbx_vm_get_guest(pv->vm), c->cancel, health_pong_cb, c);
        }
    return G_SOURCE_CONTINUE;
}

/* ---- kick / status / shutdown ---------------------------------------------------- */

static gboolean
kick_idle_cb(gpointer user_data)
{
    SbxPool *self = user_data;
    self->idle_source = 0;
    pool_kick_now(self);
    return G_SOURCE_REMOVE;
}

static void
pool_kick_now(SbxPool *self)
{
    if (self->shutting_down)
        return;
    /* templates first: they make every later fill and run fast */
    if (l1_on(self) && build_start_one(self))
        return;
    (void)prestart_one(self); /* cheap: no admission, runs beside a fill */
    (void)fill_start_one(self);
}

void
sbx_pool_kick(SbxPool *self)
{
    if (self->idle_source == 0 && !self->shutting_down)
        self->idle_source = g_idle_add(kick_idle_cb, self);
    if (self->health_timer == 0 && !self->shutting_down)
        self->health_timer =
            g_timeout_add_seconds(SBX_POOL_HEALTH_INTERVAL_S, health_tick_cb, self);
}

void
sbx_pool_add_status(SbxPool *self, GVariantBuilder *b)
{
    for (guint l = 0; l < SBX_N_LANGUAGES; l++) {
        g_autofree char *k = g_strdup_printf("warm_pool_%s", sbx_language_to_string(l));
        g_variant_builder_add(b, "{sv}", k, g_variant_new_uint32(self->warm[l].length));
    }
    guint target_max = 0;
    for (guint l = 0; l < SBX_N_LANGUAGES; l++) {
        g_autofree char *k =
            g_strdup_printf("warm_pool_target_%s", sbx_language_to_string(l));
        g_variant_builder_add(b, "{sv}", k, g_variant_new_uint32(warm_target(self, l)));
        target_max = MAX(target_max, warm_target(self, l));
    }
    g_variant_builder_add(b, "{sv}", "warm_pool_target", g_variant_new_uint32(target_max));
    g_variant_builder_add(b, "{sv}", "warm_pool_hits", g_variant_new_uint64(self->warm_hits));
    g_variant_builder_add(b, "{sv}", "warm_pool_misses", g_variant_new_uint64(self->warm_misses));
    g_variant_builder_add(b, "{sv}", "warm_pool_evictions",
                          g_variant_new_uint64(self->warm_evictions));
    g_variant_builder_add(b, "{sv}", "warm_pool_health_failures",
                          g_variant_new_uint64(self->warm_health_failures));
    g_variant_builder_add(b, "{sv}", "warm_pool_fill_failures",
                          g_variant_new_uint64(self->warm_fill_failures));
    g_variant_builder_add(b, "{sv}", "l1_enabled", g_variant_new_boolean(l1_on(self)));
    g_variant_builder_add(b, "{sv}", "l1_prefetch", g_variant_new_boolean(prefetch_on(self)));
    g_variant_builder_add(b, "{sv}", "l1_prestart_target",
                          g_variant_new_uint32(prestart_target(self)));
    g_variant_builder_add(b, "{sv}", "l1_build_drain_s", g_variant_new_uint32(build_drain_s(self)));
    g_variant_builder_add(b, "{sv}", "l1_max_templates",
                          g_variant_new_uint32(self->d.cfg->l1_max_templates));
    g_variant_builder_add(b, "{sv}", "l1_templates",
                          g_variant_new_uint32(sbx_template_cache_count(self->cache)));
    g_variant_builder_add(b, "{sv}", "l1_evictions", g_variant_new_uint64(self->l1_evictions));
    g_variant_builder_add(b, "{sv}", "l1_hits", g_variant_new_uint64(self->l1_hits));
    g_variant_builder_add(b, "{sv}", "l1_restore_failures",
                          g_variant_new_uint64(self->l1_restore_failures));
    g_variant_builder_add(b, "{sv}", "l1_invalid", g_variant_new_uint64(self->l1_invalid));
    g_variant_builder_add(b, "{sv}", "l1_builds", g_variant_new_uint64(self->l1_builds));
    g_variant_builder_add(b, "{sv}", "l1_build_failures",
                          g_variant_new_uint64(self->l1_build_failures));
    g_variant_builder_add(b, "{sv}", "l1_builds_running", g_variant_new_uint32(self->builds_running));
    guint pre = 0;
    for (guint l = 0; l < SBX_N_LANGUAGES; l++)
        pre += self->prestarted[l].length;
    g_variant_builder_add(b, "{sv}", "l1_prestarted", g_variant_new_uint32(pre));
    g_variant_builder_add(b, "{sv}", "l1_prestart_hits", g_variant_new_uint64(self->prestart_hits));
    g_variant_builder_add(b, "{sv}", "l1_prestart_failures",
                          g_variant_new_uint64(self->prestart_failures));
}

static void
shutdown_check(SbxPool *self)
{
    if (self->shutdown_task == NULL || self->builds_running > 0 || self->fills_running > 0 ||
        self->destroys_running > 0 || self->prestarting > 0)
        return;
    g_clear_handle_id(&self->drain_timer, g_source_remove);
    GTask *task = g_steal_pointer(&self->shutdown_task);
    g_task_return_boolean(task, TRUE);
    g_object_unref(task);
}

static gboolean
drain_timeout_cb(gpointer user_data)
{
    SbxPool *self = user_data;
    self->drain_timer = 0;
    g_cancellable_cancel(self->build_cancellable);
    return G_SOURCE_REMOVE;
}

void
sbx_pool_shutdown_async(SbxPool *self, GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = g_task_new(self, NULL, callback, user_data);
    g_task_set_source_tag(task, sbx_pool_shutdown_async);
    if (self->shutdown_task) {
        g_task_return_new_error(task, G_IO_ERROR, G_IO_ERROR_PENDING, "already shutting down");
        g_object_unref(task);
        return;
    }
    self->shutting_down = TRUE;
    self->shutdown_task = task;
    g_clear_handle_id(&self->idle_source, g_source_remove);
    g_clear_handle_id(&self->health_timer, g_source_remove);
    g_queue_clear_full(&self->build_queue, g_free);
    g_cancellable_cancel(self->cancellable);
    for (guint l = 0; l < SBX_N_LANGUAGES; l++) {
        PoolVm *pv;
        while ((pv = g_queue_peek_head(&self->warm[l])) != NULL)
            pool_vm_discard(pv);
        while ((pv = g_queue_peek_head(&self->prestarted[l])) != NULL)
            pool_vm_discard(pv);
    }
    /* A template build in flight may finish (the next start, or the next
     * `schedulerctl run --embedded`, restores from it), within a bound. */
    if (self->builds_running > 0)
        self->drain_timer = g_timeout_add_seconds(build_drain_s(self), drain_timeout_cb, self);
    shutdown_check(self);
}

gboolean
sbx_pool_shutdown_finish(SbxPool *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

static void
sbx_pool_dispose(GObject *object)
{
    SbxPool *self = SBX_POOL(object);
    g_cancellable_cancel(self->cancellable);
    g_cancellable_cancel(self->build_cancellable);
    g_clear_handle_id(&self->drain_timer, g_source_remove);
    g_clear_handle_id(&self->idle_source, g_source_remove);
    g_clear_handle_id(&self->health_timer, g_source_remove);
    for (guint l = 0; l < SBX_N_LANGUAGES; l++) {
        PoolVm *pv;
        while ((pv = g_queue_pop_head(&self->warm[l])) != NULL)
            pool_vm_free(pv); /* SbxVm's dispose kills a QEMU left running */
        while ((pv = g_queue_pop_head(&self->prestarted[l])) != NULL)
            pool_vm_free(pv);
        g_clear_pointer(&self->prestart_tpl[l], sbx_template_unref);
    }
    g_queue_clear_full(&self->build_queue, g_free);
    g_clear_object(&self->cache);
    g_clear_pointer(&self->build_failures, g_hash_table_unref);
    G_OBJECT_CLASS(sbx_pool_parent_class)->dispose(object);
}

static void
sbx_pool_finalize(GObject *object)
{
    SbxPool *self = SBX_POOL(object);
    g_clear_object(&self->cancellable);
    g_clear_object(&self->build_cancellable);
    G_OBJECT_CLASS(sbx_pool_parent_class)->finalize(object);
}

static void
sbx_pool_init(SbxPool *self)
{
    self->cancellable = g_cancellable_new();
    self->build_cancellable = g_cancellable_new();
    for (guint l = 0; l < SBX_N_LANGUAGES; l++) {
        g_queue_init(&self->warm[l]);
        g_queue_init(&self->prestarted[l]);
    }
    g_queue_init(&self->build_queue);
    self->build_failures = g_hash_table_new(g_direct_hash, g_direct_equal);
}

static void
sbx_pool_class_init(SbxPoolClass *klass)
{
    GObjectClass *oc = G_OBJECT_CLASS(klass);
    oc->dispose = sbx_pool_dispose;
    oc->finalize = sbx_pool_finalize;
}
