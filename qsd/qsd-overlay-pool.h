/* SPDX-License-Identifier: MIT
 *
 * QsdOverlayPool: per-VM writable disks, ready before they are asked for.
 * Each disk is a copy-on-write view of one read-only seed image (the guest's
 * pre-built ext4 "work seed"): a reflink clone (FICLONE, raw) where the
 * filesystem supports it, else a qcow2 overlay created by the storage daemon.
 * No byte copy ever happens. The pool keeps `target` disks pre-created and
 * refills in the background after each take.
 */
#pragma once

#include <gio/gio.h>

#include "qsd/qsd-daemon.h"

G_BEGIN_DECLS

#define QSD_TYPE_OVERLAY_POOL (qsd_overlay_pool_get_type())
G_DECLARE_FINAL_TYPE(QsdOverlayPool, qsd_overlay_pool, QSD, OVERLAY_POOL, GObject)

/* @seed: absolute path of the raw seed image. @dir: where pooled disks live
 * (created if missing; stale pool files from an earlier run are removed).
 * Fails if the seed cannot be read. */
QsdOverlayPool *qsd_overlay_pool_new(QsdDaemon *qsd, const char *seed, const char *dir,
                                     guint target, GError **error);

/* Change the number of disks kept ready (refills in the background). */
void qsd_overlay_pool_set_target(QsdOverlayPool *self, guint target);
guint qsd_overlay_pool_get_ready(QsdOverlayPool *self);
guint qsd_overlay_pool_get_target(QsdOverlayPool *self);
/* "raw" (reflink clones) or "qcow2" (overlays): the format of the disks handed out. */
const char *qsd_overlay_pool_get_format(QsdOverlayPool *self);
gboolean qsd_overlay_pool_uses_reflink(QsdOverlayPool *self);
/* Disks created since start, and how many takes found the pool empty. */
guint64 qsd_overlay_pool_get_created(QsdOverlayPool *self);
guint64 qsd_overlay_pool_get_misses(QsdOverlayPool *self);

/* Move a ready disk to @dest (same filesystem), or create one on demand when
 * the pool is empty. The caller owns @dest afterwards. */
void qsd_overlay_pool_take_async(QsdOverlayPool *self, const char *dest, GCancellable *cancellable,
                                 GAsyncReadyCallback callback, gpointer user_data);
gboolean qsd_overlay_pool_take_finish(QsdOverlayPool *self, GAsyncResult *result, GError **error);

/* Remove every ready disk (shutdown). */
void qsd_overlay_pool_drain(QsdOverlayPool *self);

G_END_DECLS
