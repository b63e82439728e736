/* SPDX-License-Identifier: MIT
 *
 * L1 templates (docs/snapshots.md): a booted guest with a warm REPL, frozen as
 * (RAM file, device state, work-disk state) so a run restores it in ~0.2 s
 * instead of booting (~2 s) and starting its interpreter (~2 s) under TCG.
 * SbxTemplateCache owns a directory of templates keyed by everything that
 * changes the device model or the guest's contents; builds are serialized
 * across processes with flock and committed by renaming the metadata last.
 */
#pragma once

#include <gio/gio.h>

#include "common/sbx-validate.h"
#include "qsd/qsd-daemon.h"
#include "scheduler/sbx-vm.h"

G_BEGIN_DECLS

/* 3: no cloned javascript REPL; 4: the REPL (javascript too) is warmed with the
 * guest clock SBX_TEMPLATE_CLOCK_BACK_S back */
#define SBX_TEMPLATE_FORMAT 4

/* How far the template VM's wall clock is set back while its REPL starts and
 * warms. Restores set the real time, and OpenSSL 3.0 reseeds a DRBG whose
 * last seeding is more than 7 min (per-thread) / 1 h (primary) old, so a
 * cloned node's DRBGs draw fresh kernel entropy on their first use. A day:
 * far past both intervals, and still robust to a host clock stepped back by
 * less than 23 h between the build and a restore. */
#define SBX_TEMPLATE_CLOCK_BACK_S (24 * 3600)

/* What the cache key covers. */
typedef struct {
    SbxLanguage language;
    guint memory_mb;
    guint vcpus;
    SbxAccel accel;
    const char *qemu;       /* binary (resolved in PATH; its identity is hashed) */
    const char *guest_dir;  /* its manifest.json (image file hashes) is hashed */
    const char *cmdline;
    gboolean mem_merge;
    const char *disk_format; /* format of the template VM's work disk */
} SbxTemplateKeyInput;

/* "l1-<language>-<memory>m-<16 hex>". */
char *sbx_template_compute_key(const SbxTemplateKeyInput *in, GError **error);
/* The language and memory size a key names; FALSE if @key is not one. */
gboolean sbx_template_key_parse(const char *key, SbxLanguage *out_language,
                                guint *out_memory_mb);

typedef struct _SbxTemplate SbxTemplate;

SbxTemplate *sbx_template_ref(SbxTemplate *tpl);
void sbx_template_unref(SbxTemplate *tpl);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SbxTemplate, sbx_template_unref)

const char *sbx_template_get_key(SbxTemplate *tpl);
const char *sbx_template_get_ram_path(SbxTemplate *tpl);
const char *sbx_template_get_disk_path(SbxTemplate *tpl);
const char *sbx_template_get_disk_format(SbxTemplate *tpl);
guint64 sbx_template_get_disk_size(SbxTemplate *tpl);
guint sbx_template_get_memory_mb(SbxTemplate *tpl);
/* Bytes of RAM-file pages the verification restore touched (the prefetch set). */
guint64 sbx_template_get_hot_bytes(SbxTemplate *tpl);
/* The device state, opened read-only (O_CLOEXEC), -1 on error. */
int sbx_template_open_state(SbxTemplate *tpl, GError **error);
/* The RAM file, opened read-only (O_CLOEXEC) and checked to be the very file
 * the metadata describes (device, inode, size); -1 on error. */
int sbx_template_open_ram(SbxTemplate *tpl, GError **error);
/* posix_fadvise(WILLNEED) the hot ranges of the RAM file in a worker thread
 * (fire and forget; a no-op for pages already cached). */
void sbx_template_prefetch(SbxTemplate *tpl);
/* Drop the RAM file's clean pages from the page cache (benchmarks). */
gboolean sbx_template_evict(SbxTemplate *tpl, GError **error);

#define SBX_TYPE_TEMPLATE_CACHE (sbx_template_cache_get_type())
G_DECLARE_FINAL_TYPE(SbxTemplateCache, sbx_template_cache, SBX, TEMPLATE_CACHE, GObject)

/* @dir is created (0700). */
SbxTemplateCache *sbx_template_cache_new(const char *dir, GError **error);
const char *sbx_template_cache_get_dir(SbxTemplateCache *self);

/* A committed template for @key whose files still have the size and identity
 * recorded when it was written, or NULL: a miss (no error; also when another
 * process evicted it) or an invalid entry (error set; the entry was removed so
 * the next build replaces it). A hit marks the entry used (its metadata's
 * mtime, at most once a minute): the LRU order of evict_lru. */
SbxTemplate *sbx_template_cache_lookup(SbxTemplateCache *self, const char *key, GError **error);
/* Forget and delete @key's entry (after a restore from it failed). */
void sbx_template_cache_remove(SbxTemplateCache *self, const char *key);
/* Delete every entry whose key is not in @keep (NULL-terminated) and that no
 * process is building: templates of an older image, QEMU or config. Returns
 * how many were removed. */
guint sbx_template_cache_prune(SbxTemplateCache *self, const char *const *keep);
/* Every key with a file in the directory (committed or not), unordered. */
GStrv sbx_template_cache_list_keys(SbxTemplateCache *self);
/* Committed entries (with metadata) in the directory. */
guint sbx_template_cache_count(SbxTemplateCache *self);
/* Remove least recently used entries, each whole (metadata first, then its
 * files and lock), until at most @max_entries committed ones remain; never
 * @keep nor an entry some process is building (its flock is held). Returns
 * the removed keys. */
GStrv sbx_template_cache_evict_lru(SbxTemplateCache *self, guint max_entries, const char *keep);
/* TRUE while this process builds @key. */
gboolean sbx_template_cache_is_building(SbxTemplateCache *self, const char *key);

typedef struct {
    SbxLanguage language;
    SbxVmParams vm;        /* template VM: qemu, qemu_cfg (no mem_path), run_dir, work_disk
                            * (taken over: it becomes the template's disk), no cgroup needed */
    const char *verify_run_dir; /* run dir of the verification restore */
    guint64 disk_size;     /* virtual size of the work disk */
    QsdDaemon *qsd;        /* creates the verification VM's overlay */
} SbxTemplateBuildParams;

/* Boot a template VM with its RAM in a share=on file, warm the REPL, save the
 * device state (x-ignore-shared), keep RAM file and work disk, then restore it
 * once to check it works and to record the pages the first exec touches.
 * G_IO_ERROR_BUSY when another process holds the build lock. */
void sbx_template_cache_build_async(SbxTemplateCache *self, const char *key,
                                    const SbxTemplateBuildParams *params,
                                    GCancellable *cancellable, GAsyncReadyCallback callback,
                                    gpointer user_data);
SbxTemplate *sbx_template_cache_build_finish(SbxTemplateCache *self, GAsyncResult *result,
                                             GError **error);

/* The probe program of each language and the output it must print. */
const char *sbx_template_probe_code(SbxLanguage language);

G_END_DECLS
