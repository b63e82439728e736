/* SPDX-License-Identifier: MIT
 *
 * qsd-overlay-pool: pre-created per-VM writable disks. Reflink clones are made
 * inline (one ioctl); qcow2 overlays go through QsdDaemon's blockdev-create.
 * Refills run in the background, at most QSD_POOL_PARALLEL at a time, so a
 * burst of takes never queues behind a long refill. Used by scheduler/sbx-vm.
 */
#include "qsd/qsd-overlay-pool.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/sbx-fd.h"

#define QSD_POOL_PARALLEL 2
/* Consecutive refill failures retried at once (a storage daemon that died is
 * restarted by the next request). */
#define QSD_POOL_DEATH_RETRIES 3

struct _QsdOverlayPool {
    GObject parent_instance;
    QsdDaemon *qsd;
    char *seed;
    char *dir;
    guint64 seed_size;
    gboolean reflink;
    guint target;
    GQueue ready;      /* char* paths */
    guint in_flight;   /* background creations */
    guint death_retries;
    guint64 serial;
    guint64 created;
    guint64 misses;
    GCancellable *cancellable;
};

G_DEFINE_FINAL_TYPE(QsdOverlayPool, qsd_overlay_pool, G_TYPE_OBJECT)

static gboolean
reflink_clone(const char *seed, const char *dest, GError **error)
{
    g_auto(SbxFd) src = open(seed, O_RDONLY | O_CLOEXEC);
    if (src < 0) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "%s: %s", seed, g_strerror(e));
        return FALSE;
    }
    g_auto(SbxFd) dst = open(dest, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (dst < 0) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "%s: %s", dest, g_strerror(e));
        return FALSE;
    }
    if (ioctl(dst, FICLONE, src) != 0) {
        int e = errno;
        (void)unlink(dest);
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "reflink %s -> %s: %s", seed,
                    dest, g_strerror(e));
        return FALSE;
    }
    return TRUE;
}

/* Probe once whether @dir's filesystem can reflink the seed. */
static gboolean
probe_reflink(QsdOverlayPool *self)
{
    g_autofree char *probe = g_build_filename(self->dir, ".reflink-probe", NULL);
    (void)unlink(probe);
    gboolean ok = reflink_clone(self->seed, probe, NULL);
    (void)unlink(probe);
    return ok;
}

static char *
next_path(QsdOverlayPool *self)
{
    return g_strdup_printf("%s/pool-%d-%" G_GUINT64_FORMAT ".%s", self->dir, (int)getpid(),
                           ++self->serial, self->reflink ? "raw" : "qcow2");
}

static void refill(QsdOverlayPool *self);

typedef struct {
    QsdOverlayPool *pool;
    char *path;
} CreateData;

static void
created_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    CreateData *d = user_data;
    g_autoptr(QsdOverlayPool) self = d->pool;
    g_autoptr(GError) error = NULL;
    g_autofree char *path = d->path;
    g_free(d);

    self->in_flight--;
    if (!qsd_daemon_create_overlay_finish(QSD_DAEMON(source), res, &error)) {
        /* A daemon that died (killed, OOM) while serving is restarted by the
         * next request, so a failure is retried a few times right away (else
         * the pool stays short until the next take). After that refilling
         * stops until the next take: a broken storage daemon must not spin.
         * The take path reports the error to its caller. */
        g_debug("overlay pool refill failed: %s", error->message);
        if (!g_cancellable_is_cancelled(self->cancellable) &&
            self->death_retries++ < QSD_POOL_DEATH_RETRIES)
            refill(self);
        return;
    }
    self->death_retries = 0;
    if (g_cancellable_is_cancelled(self->cancellable)) {
        (void)unlink(path);
        return;
    }
    self->created++;
    g_queue_push_tail(&self->ready, g_steal_pointer(&path));
    refill(self);
}

static void
refill(QsdOverlayPool *self)
{
    while (g_queue_get_length(&self->ready) + self->in_flight < self->target) {
        g_autofree char *path = next_path(self);
        if (self->reflink) {
            g_autoptr(GError) error = NULL;
            if (!reflink_clone(self->seed, path, &error)) {
                g_debug("overlay pool: %s", error->message);
                return;
            }
            self->created++;
            g_queue_push_tail(&self->ready, g_steal_pointer(&path));
            continue;
        }
        if (self->in_flight >= QSD_POOL_PARALLEL)
            return;
        CreateData *d = g_new0(CreateData, 1);
        d->pool = g_object_ref(self);
        d->path = g_strdup(path);
        self->in_flight++;
        qsd_daemon_create_overlay_async(self->qsd, path, self->seed, "raw", self->seed_size,
                                        self->cancellable, created_cb, d);
    }
}

static void
remove_stale(const char *dir)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *name;
    while (d && (name = g_dir_read_name(d)) != NULL) {
        if (g_str_has_prefix(name, "pool-")) {
            g_autofree char *p = g_build_filename(dir, name, NULL);
            (void)unlink(p);
        }
    }
}

QsdOverlayPool *
qsd_overlay_pool_new(QsdDaemon *qsd, const char *seed, const char *dir, guint target,
                     GError **error)
{
    struct stat st;
    if (stat(seed, &st) != 0) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "work seed %s: %s", seed,
                    g_strerror(e));
        return NULL;
    }
    if (g_mkdir_with_parents(dir, 0700) != 0) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "%s: %s", dir, g_strerror(e));
        return NULL;
    }
    QsdOverlayPool *self = g_object_new(QSD_TYPE_OVERLAY_POOL, NULL);
    self->qsd = g_object_ref(qsd);
    self->seed = g_canonicalize_filename(seed, NULL);
    self->dir = g_strdup(dir);
    self->seed_size = (guint64)st.st_size;
    remove_stale(dir);
    self->reflink = probe_reflink(self);
    g_debug("overlay pool in %s: %s", dir, self->reflink ? "reflink clones" : "qcow2 overlays");
    qsd_overlay_pool_set_target(self, target);
    return self;
}

void
qsd_overlay_pool_set_target(QsdOverlayPool *self, guint target)
{
    self->target = target;
    while (g_queue_get_length(&self->ready) > target) {
        g_autofree char *p = g_queue_pop_tail(&self->ready);
        (void)unlink(p);
    }
    refill(self);
}

guint
qsd_overlay_pool_get_ready(QsdOverlayPool *self)
{
    return g_queue_get_length(&self->ready);
}

guint
qsd_overlay_pool_get_target(QsdOverlayPool *self)
{
    return self->target;
}

const char *
qsd_overlay_pool_get_format(QsdOverlayPool *self)
{
    return self->reflink ? "raw" : "qcow2";
}

gboolean
qsd_overlay_pool_uses_reflink(QsdOverlayPool *self)
{
    return self->reflink;
}

guint64
qsd_overlay_pool_get_created(QsdOverlayPool *self)
{
    return self->created;
}

guint64
qsd_overlay_pool_get_misses(QsdOverlayPool *self)
{
    return self->misses;
}

static void
take_created_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GTask) task = user_data;
    GError *error = NULL;
    if (!qsd_daemon_create_overlay_finish(QSD_DAEMON(source), res, &error)) {
        g_prefix_error(&error, "creating the VM's work disk: ");
        g_task_return_error(task, error);
        return;
    }
    g_task_return_boolean(task, TRUE);
}

void
qsd_overlay_pool_take_async(QsdOverlayPool *self, const char *dest, GCancellable *cancellable,
                            GAsyncReadyCallback callback, gpointer user_data)
{
    g_autoptr(GTask) task = g_task_new(self, cancellable, callback, user_data);
    g_task_set_source_tag(task, qsd_overlay_pool_take_async);

    g_autofree char *ready = g_queue_pop_head(&self->ready);
    if (ready != NULL) {
        if (rename(ready, dest) != 0) {
            int e = errno;
            (void)unlink(ready);
            g_task_return_new_error(task, G_IO_ERROR, g_io_error_from_errno(e),
                                    "moving work disk to %s: %s", dest, g_strerror(e));
            return;
        }
        refill(self);
        g_task_return_boolean(task, TRUE);
        return;
    }
    self->misses++;
    refill(self);
    if (self->reflink) {
        GError *error = NULL;
        if (!reflink_clone(self->seed, dest, &error))
            g_task_return_error(task, error);
        else
            g_task_return_boolean(task, TRUE);
        return;
    }
    qsd_daemon_create_overlay_async(self->qsd, dest, self->seed, "raw", self->seed_size,
                                    cancellable, take_created_cb, g_steal_pointer(&task));
}

gboolean
qsd_overlay_pool_take_finish(QsdOverlayPool *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

void
qsd_overlay_pool_drain(QsdOverlayPool *self)
{
    char *p;
    self->target = 0;
    while ((p = g_queue_pop_head(&self->ready)) != NULL) {
        (void)unlink(p);
        g_free(p);
    }
}

static void
qsd_overlay_pool_dispose(GObject *object)
{
    QsdOverlayPool *self = QSD_OVERLAY_POOL(object);
    g_cancellable_cancel(self->cancellable);
    qsd_overlay_pool_drain(self);
    g_clear_object(&self->qsd);
    G_OBJECT_CLASS(qsd_overlay_pool_parent_class)->dispose(object);
}

static void
qsd_overlay_pool_finalize(GObject *object)
{
    QsdOverlayPool *self = QSD_OVERLAY_POOL(object);
    g_free(self->seed);
    g_free(self->dir);
    g_clear_object(&self->cancellable);
    G_OBJECT_CLASS(qsd_overlay_pool_parent_class)->finalize(object);
}

static void
qsd_overlay_pool_init(QsdOverlayPool *self)
{
    g_queue_init(&self->ready);
    self->cancellable = g_cancellable_new();
}

static void
qsd_overlay_pool_class_init(QsdOverlayPoolClass *klass)
{
    GObjectClass *oc = G_OBJECT_CLASS(klass);
    oc->dispose = qsd_overlay_pool_dispose;
    oc->finalize = qsd_overlay_pool_finalize;
}
