/* SPDX-License-Identifier: MIT
 *
 * sbx-template: build, validate and hand out L1 templates (docs/snapshots.md).
 * A template is four files in the cache directory, committed in this order:
 *   <key>.ram    guest RAM (the template VM ran with memory-backend-file,share=on)
 *   <key>.state  device state saved with x-ignore-shared over a getfd'd fd
 *   <key>.disk   the template VM's work disk, as the guest's page cache knows it
 *   <key>.json   metadata: key inputs, sizes + identities + sha256 of the state,
 *                the hot page ranges to prefetch; renamed into place last, so a
 *                crash mid-build leaves no entry (only *.tmp files, removed by
 *                the next build of that key)
 * Builds hold flock(<key>.lock) so two processes never write the same entry.
 * Talks to sbx-vm (boot, save, restore), sbx-guest (warm, probe exec) and qsd/
 * (the verification VM's overlay over the template disk). Blocking file work
 * (fsync, hashing, mincore) runs in GTask worker threads.
 */
#define G_LOG_DOMAIN "sbx-template"

#include "scheduler/sbx-template.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <json-glib/json-glib.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/sbx-fd.h"

#define SBX_TEMPLATE_HOT_GAP_PAGES 16
#define SBX_TEMPLATE_TOUCH_INTERVAL_US (60 * G_USEC_PER_SEC)

/* ---- key ---------------------------------------------------------------- */

char *
sbx_template_compute_key(const SbxTemplateKeyInput *in, GError **error)
{
    g_autofree char *manifest_path = g_build_filename(in->guest_dir, "manifest.json", NULL);
    g_autofree char *manifest = NULL;
    gsize manifest_len = 0;
    if (!g_file_get_contents(manifest_path, &manifest, &manifest_len, error)) {
        g_prefix_error(error, "L1 key: ");
        return NULL;
    }
    g_autofree char *qemu = g_find_program_in_path(in->qemu);
    struct stat st = {0};
    if (qemu == NULL || stat(qemu, &st) != 0) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND, "L1 key: %s not found", in->qemu);
        return NULL;
    }
    g_autoptr(GChecksum) ck = g_checksum_new(G_CHECKSUM_SHA256);
    g_autofree char *text = g_strdup_printf(
        "format=%d|language=%s|memory=%u|vcpus=%u|net=none|accel=%s|mem_merge=%d|disk=%s|"
        "qemu=%s:%" G_GINT64_FORMAT ":%" G_GINT64_FORMAT ":%" G_GINT64_FORMAT "|cmdline=%s|",
        SBX_TEMPLATE_FORMAT, sbx_language_to_string(in->language), in->memory_mb, in->vcpus,
        sbx_accel_to_string(in->accel), in->mem_merge ? 1 : 0, in->disk_format, qemu,
        (gint64)st.st_size, (gint64)st.st_mtim.tv_sec, (gint64)st.st_mtim.tv_nsec,
        in->cmdline ? in->cmdline : "");
    g_checksum_update(ck, (const guchar *)text, -1);
    g_checksum_update(ck, (const guchar *)manifest, manifest_len);
    char hex[17];
    g_strlcpy(hex, g_checksum_get_string(ck), sizeof hex);
    return g_strdup_printf("l1-%s-%um-%s", sbx_language_to_string(in->language), in->memory_mb,
                           hex);
}

const char *
sbx_template_probe_code(SbxLanguage language)
{
    switch (language) {
    case SBX_LANGUAGE_PYTHON:
        return "print(1)";
    case SBX_LANGUAGE_JAVASCRIPT:
        return "console.log(1)";
    case SBX_LANGUAGE_RAW:
        return "echo 1";
    }
    return "echo 1";
}

/* ---- template ----------------------------------------------------------- */

typedef struct {
    guint64 size, dev, ino, mtime_ns;
} FileId;

struct _SbxTemplate {
    gint ref;
    char *key;
    char *ram_path, *state_path, *disk_path, *meta_path;
    char *disk_format;
    guint64 disk_size;
    guint memory_mb;
    FileId ram_id, state_id, disk_id;
    GArray *hot; /* guint64 pairs: start page, n pages */
    guint64 hot_bytes;
    gint64 touched_us; /* monotonic time this process last marked it used, 0: never */
};

static SbxTemplate *
template_new(const char *dir, const char *key)
{
    SbxTemplate *t = g_new0(SbxTemplate, 1);
    t->ref = 1;
    t->key = g_strdup(key);
    t->ram_path = g_strdup_printf("%s/%s.ram", dir, key);
    t->state_path = g_strdup_printf("%s/%s.state", dir, key);
    t->disk_path = g_strdup_printf("%s/%s.disk", dir, key);
    t->meta_path = g_strdup_printf("%s/%s.json", dir, key);
    t->hot = g_array_new(FALSE, FALSE, sizeof(guint64));
    return t;
}

SbxTemplate *
sbx_template_ref(SbxTemplate *tpl)
{
    g_atomic_int_inc(&tpl->ref);
    return tpl;
}

void
sbx_template_unref(SbxTemplate *tpl)
{
    if (tpl == NULL || !g_atomic_int_dec_and_test(&tpl->ref))
        return;
    g_free(tpl->key);
    g_free(tpl->ram_path);
    g_free(tpl->state_path);
    g_free(tpl->disk_path);
    g_free(tpl->meta_path);
    g_free(tpl->disk_format);
    g_array_unref(tpl->hot);
    g_free(tpl);
}

const char *sbx_template_get_key(SbxTemplate *tpl) { return tpl->key; }
const char *sbx_template_get_ram_path(SbxTemplate *tpl) { return tpl->ram_path; }
const char *sbx_template_get_disk_path(SbxTemplate *tpl) { return tpl->disk_path; }
const char *sbx_template_get_disk_format(SbxTemplate *tpl) { return tpl->disk_format; }
guint64 sbx_template_get_disk_size(SbxTemplate *tpl) { return tpl->disk_size; }
guint sbx_template_get_memory_mb(SbxTemplate *tpl) { return tpl->memory_mb; }
guint64 sbx_template_get_hot_bytes(SbxTemplate *tpl) { return tpl->hot_bytes; }

/* Open @path read-only and check it is still the file the template recorded. */
static int
open_recorded(const char *path, const FileId *id, GError **error)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "%s: %s", path, g_strerror(e));
        return -1;
    }
    if ((guint64)st.st_ino != id->ino || (guint64)st.st_dev != id->dev ||
        (guint64)st.st_size != id->size) {
        close(fd);
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                    "%s was replaced since the template was written", path);
        return -1;
    }
    return fd;
}

int
sbx_template_open_state(SbxTemplate *tpl, GError **error)
{
    return open_recorded(tpl->state_path, &tpl->state_id, error);
}

int
sbx_template_open_ram(SbxTemplate *tpl, GError **error)
{
    return open_recorded(tpl->ram_path, &tpl->ram_id, error);
}

static void
prefetch_thread(GTask *task, gpointer source, gpointer data, GCancellable *cancellable)
{
    SbxTemplate *tpl = data;
    g_auto(SbxFd) fd = open(tpl->ram_path, O_RDONLY | O_CLOEXEC);
    long page = sysconf(_SC_PAGESIZE);
    if (fd < 0)
        return;
    for (guint i = 0; i + 1 < tpl->hot->len; i += 2) {
        guint64 start = g_array_index(tpl->hot, guint64, i);
        guint64 n = g_array_index(tpl->hot, guint64, i + 1);
        (void)posix_fadvise(fd, (off_t)(start * page), (off_t)(n * page), POSIX_FADV_WILLNEED);
    }
}

void
sbx_template_prefetch(SbxTemplate *tpl)
{
    g_autoptr(GTask) task = g_task_new(NULL, NULL, NULL, NULL);
    g_task_set_task_data(task, sbx_template_ref(tpl), (GDestroyNotify)sbx_template_unref);
    g_task_run_in_thread(task, prefetch_thread);
}

gboolean
sbx_template_evict(SbxTemplate *tpl, GError **error)
{
    g_auto(SbxFd) fd = open(tpl->ram_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "%s: %s", tpl->ram_path,
                    g_strerror(e));
        return FALSE;
    }
    return TRUE;
}

/* ---- file identity + metadata ------------------------------------------- */

static gboolean
file_id_read(const char *path, FileId *out, GError **error)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "%s: %s", path, g_strerror(e));
        return FALSE;
    }
    out->size = (guint64)st.st_size;
    out->dev = (guint64)st.st_dev;
    out->ino = (guint64)st.st_ino;
    out->mtime_ns = (guint64)st.st_mtim.tv_sec * G_GUINT64_CONSTANT(1000000000) +
                    (guint64)st.st_mtim.tv_nsec;
    return TRUE;
}

static void
file_id_add_json(JsonBuilder *b, const char *name, const FileId *id)
{
    json_builder_set_member_name(b, name);
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "size");
    json_builder_add_int_value(b, (gint64)id->size);
    json_builder_set_member_name(b, "dev");
    json_builder_add_int_value(b, (gint64)id->dev);
    json_builder_set_member_name(b, "ino");
    json_builder_add_int_value(b, (gint64)id->ino);
    json_builder_set_member_name(b, "mtime_ns");
    json_builder_add_int_value(b, (gint64)id->mtime_ns);
    json_builder_end_object(b);
}

/* The object member @name, NULL when missing or not an object (no criticals). */
static JsonObject *
member_object(JsonObject *o, const char *name)
{
    JsonNode *n = o ? json_object_get_member(o, name) : NULL;
    return n && JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;
}

static gboolean
file_id_from_json(JsonObject *files, const char *name, FileId *out)
{
    JsonObject *o = member_object(files, name);
    if (o == NULL)
        return FALSE;
    out->size = (guint64)json_object_get_int_member_with_default(o, "size", -1);
    out->dev = (guint64)json_object_get_int_member_with_default(o, "dev", -1);
    out->ino = (guint64)json_object_get_int_member_with_default(o, "ino", -1);
    out->mtime_ns = (guint64)json_object_get_int_member_with_default(o, "mtime_ns", -1);
    return TRUE;
}

static gboolean
file_id_check(const char *path, const FileId *want, GError **error)
{
    FileId have;
    if (!file_id_read(path, &have, error))
        return FALSE;
    if (have.size != want->size || have.dev != want->dev || have.ino != want->ino ||
        have.mtime_ns != want->mtime_ns) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                    "%s changed since the template was written (size %" G_GUINT64_FORMAT
                    ", expected %" G_GUINT64_FORMAT ")",
                    path, have.size, want->size);
        return FALSE;
    }
    return TRUE;
}

/* ---- cache -------------------------------------------------------------- */

struct _SbxTemplateCache {
    GObject parent_instance;
    char *dir;
    GHashTable *entries;  /* key -> SbxTemplate* */
    GHashTable *building; /* key set */
};

G_DEFINE_FINAL_TYPE(SbxTemplateCache, sbx_template_cache, G_TYPE_OBJECT)

SbxTemplateCache *
sbx_template_cache_new(const char *dir, GError **error)
{
    if (g_mkdir_with_parents(dir, 0700) != 0) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "%s: %s", dir, g_strerror(e));
        return NULL;
    }
    SbxTemplateCache *self = g_object_new(SBX_TYPE_TEMPLATE_CACHE, NULL);
    self->dir = g_strdup(dir);
    return self;
}

const char *
sbx_template_cache_get_dir(SbxTemplateCache *self)
{
    return self->dir;
}

gboolean
sbx_template_cache_is_building(SbxTemplateCache *self, const char *key)
{
    return g_hash_table_contains(self->building, key);
}

static void
remove_entry_files(const char *dir, const char *key, gboolean tmp_only)
{
    static const char *const sfx[] = {"ram", "state", "disk", "json"};
    for (guint i = 0; i < G_N_ELEMENTS(sfx); i++) {
        g_autofree char *p = g_strdup_printf("%s/%s.%s.tmp", dir, key, sfx[i]);
        (void)unlink(p);
    }
    if (tmp_only)
        return;
    /* the metadata first: without it the entry no longer exists */
    for (gint i = G_N_ELEMENTS(sfx) - 1; i >= 0; i--) {
        g_autofree char *p = g_strdup_printf("%s/%s.%s", dir, key, sfx[i]);
        (void)unlink(p);
    }
}

void
sbx_template_cache_remove(SbxTemplateCache *self, const char *key)
{
    g_hash_table_remove(self->entries, key);
    remove_entry_files(self->dir, key, FALSE);
}

static SbxTemplate *
load_meta(const char *dir, const char *key, GError **error)
{
    g_autoptr(SbxTemplate) t = template_new(dir, key);
    g_autoptr(JsonParser) parser = json_parser_new();
    if (!json_parser_load_from_file(parser, t->meta_path, error))
        return NULL;
    JsonNode *root = json_parser_get_root(parser);
    JsonObject *o = root && JSON_NODE_HOLDS_OBJECT(root) ? json_node_get_object(root) : NULL;
    JsonObject *files = member_object(o, "files");
    if (o == NULL || files == NULL ||
        json_object_get_int_member_with_default(o, "format", 0) != SBX_TEMPLATE_FORMAT ||
        g_strcmp0(json_object_get_string_member_with_default(o, "key", ""), key) != 0 ||
        !file_id_from_json(files, "ram", &t->ram_id) ||
        !file_id_from_json(files, "state", &t->state_id) ||
        !file_id_from_json(files, "disk", &t->disk_id)) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "%s: malformed template metadata",
                    t->meta_path);
        return NULL;
    }
    t->disk_format = g_strdup(json_object_get_string_member_with_default(o, "disk_format", "qcow2"));
    t->disk_size = (guint64)json_object_get_int_member_with_default(o, "disk_size", 0);
    t->memory_mb = (guint)json_object_get_int_member_with_default(o, "memory_mb", 0);
    JsonNode *hot_node = json_object_get_member(o, "hot_pages");
    JsonArray *hot = hot_node && JSON_NODE_HOLDS_ARRAY(hot_node) ? json_node_get_array(hot_node)
                                                                  : NULL;
    long page = sysconf(_SC_PAGESIZE);
    for (guint i = 0; hot && i < json_array_get_length(hot); i++) {
        guint64 v = (guint64)json_array_get_int_element(hot, i);
        g_array_append_val(t->hot, v);
        if (i % 2 == 1)
            t->hot_bytes += v * (guint64)page;
    }
    return g_steal_pointer(&t);
}

static gboolean
template_check(SbxTemplate *t, GError **error)
{
    return file_id_check(t->ram_path, &t->ram_id, error) &&
           file_id_check(t->state_path, &t->state_id, error) &&
           file_id_check(t->disk_path, &t->disk_id, error);
}

/* The metadata's mtime is the entry's last use (the LRU order of
 * sbx_template_cache_evict_lru, shared by every process using the directory);
 * bumped at most once a minute per entry and process. */
static void
template_touch(SbxTemplate *t)
{
    gint64 now = g_get_monotonic_time();
    if (t->touched_us != 0 && now - t->touched_us < SBX_TEMPLATE_TOUCH_INTERVAL_US)
        return;
    t->touched_us = now;
    (void)utimensat(AT_FDCWD, t->meta_path, NULL, 0);
}

SbxTemplate *
sbx_template_cache_lookup(SbxTemplateCache *self, const char *key, GError **error)
{
    SbxTemplate *t = g_hash_table_lookup(self->entries, key);
    g_autoptr(SbxTemplate) loaded = NULL;
    if (t == NULL) {
        g_autofree char *meta = g_strdup_printf("%s/%s.json", self->dir, key);
        if (!g_file_test(meta, G_FILE_TEST_EXISTS))
            return NULL; /* a miss */
        loaded = load_meta(self->dir, key, error);
        if (loaded == NULL) {
            if (!sbx_template_cache_is_building(self, key))
                sbx_template_cache_remove(self, key);
            return NULL;
        }
        t = loaded;
    }
    if (!template_check(t, error)) {
        if (loaded == NULL && !g_file_test(t->meta_path, G_FILE_TEST_EXISTS)) {
            /* evicted (or removed) by another process: a miss, not damage */
            g_clear_error(error);
            g_hash_table_remove(self->entries, key);
            return NULL;
        }
        sbx_template_cache_remove(self, key);
        return NULL;
    }
    if (loaded)
        g_hash_table_replace(self->entries, g_strdup(key), sbx_template_ref(loaded));
    template_touch(t);
    return sbx_template_ref(t);
}

gboolean
sbx_template_key_parse(const char *key, SbxLanguage *out_language, guint *out_memory_mb)
{
    /* l1-<language>-<memory>m-<16 hex> */
    g_auto(GStrv) parts = key ? g_strsplit(key, "-", 4) : NULL;
    SbxLanguage language;
    guint64 mem = 0;
    if (parts == NULL || g_strv_length(parts) != 4 || g_strcmp0(parts[0], "l1") != 0 ||
        !sbx_validate_language(parts[1], &language, NULL) || !g_str_has_suffix(parts[2], "m") ||
        strlen(parts[3]) != 16)
        return FALSE;
    g_autofree char *digits = g_strndup(parts[2], strlen(parts[2]) - 1);
    if (!g_ascii_string_to_unsigned(digits, 10, 1, G_MAXUINT, &mem, NULL))
        return FALSE;
    *out_language = language;
    *out_memory_mb = (guint)mem;
    return TRUE;
}

/* The key of a file name in the cache directory, or NULL. */
static char *
key_of_name(const char *name)
{
    const char *dot = strchr(name, '.');
    if (!g_str_has_prefix(name, "l1-") || dot == NULL)
        return NULL;
    return g_strndup(name, (gsize)(dot - name));
}

GStrv
sbx_template_cache_list_keys(SbxTemplateCache *self)
{
    g_autoptr(GDir) d = g_dir_open(self->dir, 0, NULL);
    g_autoptr(GHashTable) seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    const char *n;
    while (d && (n = g_dir_read_name(d)) != NULL) {
        char *key = key_of_name(n);
        if (key)
            g_hash_table_add(seen, key);
    }
    g_autoptr(GStrvBuilder) b = g_strv_builder_new();
    GHashTableIter it;
    gpointer k;
    g_hash_table_iter_init(&it, seen);
    while (g_hash_table_iter_next(&it, &k, NULL))
        g_strv_builder_add(b, k);
    return g_strv_builder_end(b);
}

typedef struct {
    char *key;
    gint64 used_ns; /* the metadata's mtime */
} Committed;

static void
committed_clear(Committed *c)
{
    g_free(c->key);
}

static gint
committed_cmp_used(gconstpointer a, gconstpointer b)
{
    const Committed *x = a, *y = b;
    if (x->used_ns != y->used_ns)
        return x->used_ns < y->used_ns ? -1 : 1;
    return strcmp(x->key, y->key);
}

/* Entries with metadata (the commit point), least recently used first. */
static GArray *
list_committed(SbxTemplateCache *self)
{
    GArray *out = g_array_new(FALSE, FALSE, sizeof(Committed));
    g_array_set_clear_func(out, (GDestroyNotify)committed_clear);
    g_autoptr(GDir) d = g_dir_open(self->dir, 0, NULL);
    const char *n;
    while (d && (n = g_dir_read_name(d)) != NULL) {
        g_autofree char *key = key_of_name(n);
        struct stat st;
        if (key == NULL || !g_str_has_suffix(n, ".json") || strlen(n) != strlen(key) + 5)
            continue;
        g_autofree char *p = g_build_filename(self->dir, n, NULL);
        if (stat(p, &st) != 0)
            continue;
        Committed c = {g_steal_pointer(&key),
                       (gint64)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec};
        g_array_append_val(out, c);
    }
    g_array_sort(out, committed_cmp_used);
    return out;
}

guint
sbx_template_cache_count(SbxTemplateCache *self)
{
    g_autoptr(GArray) all = list_committed(self);
    return all->len;
}

/* Remove @key's whole entry and its lock file unless a build holds the lock
 * (this process's, or another's: flock). FALSE when it was left alone. */
static gboolean
remove_unless_building(SbxTemplateCache *self, const char *key)
{
    if (sbx_template_cache_is_building(self, key))
        return FALSE;
    g_autofree char *lock_path = g_strdup_printf("%s/%s.lock", self->dir, key);
    g_auto(SbxFd) lock = open(lock_path, O_RDWR | O_CLOEXEC);
    if (lock >= 0 && flock(lock, LOCK_EX | LOCK_NB) != 0)
        return FALSE;
    sbx_template_cache_remove(self, key);
    (void)unlink(lock_path);
    return TRUE;
}

GStrv
sbx_template_cache_evict_lru(SbxTemplateCache *self, guint max_entries, const char *keep)
{
    g_autoptr(GArray) all = list_committed(self);
    g_autoptr(GStrvBuilder) gone = g_strv_builder_new();
    guint left = all->len;
    for (guint i = 0; i < all->len && left > max_entries; i++) {
        Committed *c = &g_array_index(all, Committed, i);
        if (g_strcmp0(c->key, keep) == 0 || !remove_unless_building(self, c->key))
            continue;
        g_strv_builder_add(gone, c->key);
        left--;
    }
    return g_strv_builder_end(gone);
}

guint
sbx_template_cache_prune(SbxTemplateCache *self, const char *const *keep)
{
    g_auto(GStrv) keys = sbx_template_cache_list_keys(self);
    guint removed = 0;
    for (guint i = 0; keys[i]; i++) {
        if (keep && g_strv_contains(keep, keys[i]))
            continue;
        if (remove_unless_building(self, keys[i])) /* not while any process builds it */
            removed++;
    }
    return removed;
}

/* ---- build -------------------------------------------------------------- */

typedef struct {
    SbxTemplateCache *cache;
    char *key;
    SbxLanguage language;
    SbxVmParams vm;          /* strings below own the copies */
    char *qemu, *kernel, *initrd, *cmdline, *rootfs, *run_dir, *work_disk, *work_format;
    char *verify_run_dir, *verify_disk;
    guint64 disk_size;
    QsdDaemon *qsd;
    int lock_fd;
    int state_fd;
    SbxTemplate *tpl;        /* being built (tmp paths until commit) */
    char *ram_tmp, *state_tmp, *disk_tmp, *meta_tmp;
    char *state_sha256;
    SbxVm *vm_obj;
    GError *error;           /* to return after the VM is gone */
    char *qemu_version;
    gint64 t0, boot_ms, warm_ms, save_ms, verify_ms;
    GString *probe_out;
} Build;

static void
build_free(Build *b)
{
    if (b->lock_fd >= 0)
        close(b->lock_fd); /* releases the flock */
    if (b->state_fd >= 0)
        close(b->state_fd);
    g_free(b->key);
    g_free(b->qemu);
    g_free(b->kernel);
    g_free(b->initrd);
    g_free(b->cmdline);
    g_free(b->rootfs);
    g_free(b->run_dir);
    g_free(b->work_disk);
    g_free(b->work_format);
    g_free(b->verify_run_dir);
    g_free(b->verify_disk);
    g_free(b->ram_tmp);
    g_free(b->state_tmp);
    g_free(b->disk_tmp);
    g_free(b->meta_tmp);
    g_free(b->state_sha256);
    g_free(b->qemu_version);
    g_clear_pointer(&b->tpl, sbx_template_unref);
    g_clear_object(&b->vm_obj);
    g_clear_object(&b->qsd);
    g_clear_error(&b->error);
    if (b->probe_out)
        g_string_free(b->probe_out, TRUE);
    g_clear_object(&b->cache);
    g_free(b);
}

static void
build_fail(GTask *task, GError *error)
{
    Build *b = g_task_get_task_data(task);
    g_hash_table_remove(b->cache->building, b->key);
    remove_entry_files(b->cache->dir, b->key, TRUE);
    g_task_return_error(task, error);
    g_object_unref(task);
}

static void
vm_gone_then_fail_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GTask *task = user_data;
    Build *b = g_task_get_task_data(task);
    (void)sbx_vm_destroy_finish(SBX_VM(source), res, NULL);
    g_clear_object(&b->vm_obj);
    build_fail(task, g_steal_pointer(&b->error));
}

/* Fail after tearing the current VM down. */
static void
build_fail_vm(GTask *task, GError *error)
{
    Build *b = g_task_get_task_data(task);
    b->error = error;
    sbx_vm_destroy_async(b->vm_obj, vm_gone_then_fail_cb, task);
}

static void commit_thread(GTask *task, gpointer source, gpointer data, GCancellable *c);

static void
commit_done_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GTask *task = user_data;
    Build *b = g_task_get_task_data(task);
    GError *error = NULL;
    if (!g_task_propagate_boolean(G_TASK(res), &error)) {
        build_fail(task, error);
        return;
    }
    g_hash_table_remove(b->cache->building, b->key);
    g_hash_table_replace(b->cache->entries, g_strdup(b->key), sbx_template_ref(b->tpl));
    g_info("L1 template %s built: boot %" G_GINT64_FORMAT " ms, warm %" G_GINT64_FORMAT
           " ms, save %" G_GINT64_FORMAT " ms, verification restore %" G_GINT64_FORMAT
           " ms, %" G_GUINT64_FORMAT " KiB hot",
           b->key, b->boot_ms, b->warm_ms, b->save_ms, b->verify_ms, b->tpl->hot_bytes >> 10);
    g_task_return_pointer(task, sbx_template_ref(b->tpl), (GDestroyNotify)sbx_template_unref);
    g_object_unref(task);
}

static void
verify_destroyed_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GTask *task = user_data;
    Build *b = g_task_get_task_data(task);
    (void)sbx_vm_destroy_finish(SBX_VM(source), res, NULL);
    g_clear_object(&b->vm_obj);
    if (b->error) {
        build_fail(task, g_steal_pointer(&b->error));
        return;
    }
    GTask *t = g_task_new(NULL, NULL, commit_done_cb, task);
    g_task_set_task_data(t, b, NULL);
    g_task_run_in_thread(t, commit_thread);
    g_object_unref(t);
}

static void
probe_output_cb(SbxGuestStream stream, const guint8 *data, gsize len, gpointer user_data)
{
    Build *b = user_data;
    if (stream == SBX_GUEST_STDOUT && b->probe_out->len < 4096)
        g_string_append_len(b->probe_out, (const char *)data, (gssize)len);
}

static void hot_pages_record(Build *b);

static void
verify_exec_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GTask *task = user_data;
    Build *b = g_task_get_task_data(task);
    SbxGuestExecResult r = {0};
    GError *error = NULL;
    if (!sbx_guest_exec_finish(SBX_GUEST(source), res, &r, &error)) {
        g_prefix_error(&error, "probe exec in the restored template: ");
        b->error = error;
    } else if (r.exit_code != 0 || g_strcmp0(b->probe_out->str, "1\n") != 0) {
        b->error = g_error_new(G_IO_ERROR, G_IO_ERROR_FAILED,
                               "probe exec in the restored template: exit %d, output \"%s\"",
                               r.exit_code, b->probe_out->str);
    } else {
        hot_pages_record(b); /* the pages the restore + first exec faulted in */
    }
    sbx_vm_destroy_async(b->vm_obj, verify_destroyed_cb, task);
}

static void
verify_restored_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GTask *task = user_data;
    Build *b = g_task_get_task_data(task);
    GError *error = NULL;
    if (!sbx_vm_restore_finish(SBX_VM(source), res, &error)) {
        g_prefix_error(&error, "verification restore: ");
        build_fail_vm(task, error);
        return;
    }
    b->verify_ms = sbx_vm_get_restore_ms(b->vm_obj);
    b->probe_out = g_string_new(NULL);
    g_autoptr(GBytes) code = g_bytes_new_static(sbx_template_probe_code(b->language),
                                                strlen(sbx_template_probe_code(b->language)));
    sbx_guest_exec_async(sbx_vm_get_guest(b->vm_obj), b->language, code, 30, NULL,
                         probe_output_cb, b, NULL, g_task_get_cancellable(task), verify_exec_cb,
                         task);
}

static void
verify_disk_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GTask *task = user_data;
    Build *b = g_task_get_task_data(task);
    GError *error = NULL;
    if (!qsd_daemon_create_overlay_finish(QSD_DAEMON(source), res, &error)) {
        g_prefix_error(&error, "overlay over the template disk: ");
        build_fail(task, error);
        return;
    }
    SbxVmParams p = b->vm;
    p.run_dir = b->verify_run_dir;
    p.work_disk = b->verify_disk;
    p.work_format = "qcow2";
    p.cgroup = NULL;
    p.qemu_cfg.mem_path = b->ram_tmp;
    p.qemu_cfg.mem_share = FALSE;
    g_autofree char *id = g_strdup_printf("%s-verify", b->key);
    /* a fresh open: the fd QEMU wrote through has its offset at the end */
    g_auto(SbxFd) state = open(b->state_tmp, O_RDONLY | O_CLOEXEC);
    if (state < 0) {
        int e = errno;
        build_fail(task, g_error_new(G_IO_ERROR, g_io_error_from_errno(e), "%s: %s",
                                     b->state_tmp, g_strerror(e)));
        return;
    }
    b->vm_obj = sbx_vm_new(id);
    sbx_vm_restore_async(b->vm_obj, &p, state, g_task_get_cancellable(task), verify_restored_cb,
                         task);
}

static void
sync_done_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GTask *task = user_data;
    Build *b = g_task_get_task_data(task);
    GError *error = NULL;
    if (!g_task_propagate_boolean(G_TASK(res), &error)) {
        build_fail(task, error);
        return;
    }
    if (g_mkdir_with_parents(b->verify_run_dir, 0700) != 0) {
        int e = errno;
        build_fail(task, g_error_new(G_IO_ERROR, g_io_error_from_errno(e), "%s: %s",
                                     b->verify_run_dir, g_strerror(e)));
        return;
    }
    b->verify_disk = g_build_filename(b->verify_run_dir, "work.qcow2", NULL);
    qsd_daemon_create_overlay_async(b->qsd, b->verify_disk, b->disk_tmp, b->work_format,
                                    b->disk_size, g_task_get_cancellable(task), verify_disk_cb,
                                    task);
}

static gboolean
sha256_fd(int fd, char **out_hex, GError **error)
{
    g_autoptr(GChecksum) ck = g_checksum_new(G_CHECKSUM_SHA256);
    guint8 buf[64 * 1024];
    off_t off = 0;
    for (;;) {
        ssize_t n = pread(fd, buf, sizeof buf, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "read: %s", g_strerror(e));
            return FALSE;
        }
        if (n == 0)
            break;
        g_checksum_update(ck, buf, (gsize)n);
        off += n;
    }
    *out_hex = g_strdup(g_checksum_get_string(ck));
    return TRUE;
}

/* Worker: make the saved files durable, hash the state, drop the RAM file
 * from the page cache so the verification restore shows what it touches. */
static void
sync_thread(GTask *t, gpointer source, gpointer data, GCancellable *c)
{
    Build *b = data;
    GError *error = NULL;
    struct stat st;
    if (fsync(b->state_fd) != 0 || fstat(b->state_fd, &st) != 0 || st.st_size == 0) {
        g_task_return_new_error(t, G_IO_ERROR, G_IO_ERROR_FAILED,
                                "the saved device state is empty or unwritable");
        return;
    }
    if (!sha256_fd(b->state_fd, &b->state_sha256, &error)) {
        g_task_return_error(t, error);
        return;
    }
    g_auto(SbxFd) ram = open(b->ram_tmp, O_RDONLY | O_CLOEXEC);
    if (ram < 0 || fdatasync(ram) != 0) {
        int e = errno;
        g_task_return_new_error(t, G_IO_ERROR, g_io_error_from_errno(e), "%s: %s", b->ram_tmp,
                                g_strerror(e));
        return;
    }
    (void)posix_fadvise(ram, 0, 0, POSIX_FADV_DONTNEED);
    g_task_return_boolean(t, TRUE);
}

static void
template_vm_destroyed_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GTask *task = user_data;
    Build *b = g_task_get_task_data(task);
    (void)sbx_vm_destroy_finish(SBX_VM(source), res, NULL);
    g_clear_object(&b->vm_obj);
    GTask *t = g_task_new(NULL, NULL, sync_done_cb, task);
    g_task_set_task_data(t, b, NULL);
    g_task_run_in_thread(t, sync_thread);
    g_object_unref(t);
}

static void
saved_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GTask *task = user_data;
    Build *b = g_task_get_task_data(task);
    GError *error = NULL;
    if (!sbx_vm_save_state_finish(SBX_VM(source), res, &error)) {
        g_prefix_error(&error, "saving the template: ");
        build_fail_vm(task, error);
        return;
    }
    b->save_ms = (g_get_monotonic_time() - b->t0) / 1000;
    /* Keep the work disk as the guest's page cache knows it (QEMU flushed its
     * caches when the migration completed); the VM would delete it. */
    if (rename(b->work_disk, b->disk_tmp) != 0) {
        int e = errno;
        build_fail_vm(task, g_error_new(G_IO_ERROR, g_io_error_from_errno(e),
                                        "keeping the template disk: %s", g_strerror(e)));
        return;
    }
    sbx_vm_destroy_async(b->vm_obj, template_vm_destroyed_cb, task);
}

static void
save_now(GTask *task)
{
    Build *b = g_task_get_task_data(task);
    b->t0 = g_get_monotonic_time();
    b->state_fd = open(b->state_tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (b->state_fd < 0) {
        int e = errno;
        build_fail_vm(task, g_error_new(G_IO_ERROR, g_io_error_from_errno(e), "%s: %s",
                                        b->state_tmp, g_strerror(e)));
        return;
    }
    sbx_vm_save_state_async(b->vm_obj, b->state_fd, g_task_get_cancellable(task), saved_cb, task);
}

static void
warmed_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GTask *task = user_data;
    Build *b = g_task_get_task_data(task);
    GError *error = NULL;
    if (!sbx_guest_warm_finish(SBX_GUEST(source), res, &error)) {
        g_prefix_error(&error, "warming the %s REPL: ", sbx_language_to_string(b->language));
        build_fail_vm(task, error);
        return;
    }
    b->warm_ms = (g_get_monotonic_time() - b->t0) / 1000;
    save_now(task);
}

static void
clock_back_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GTask *task = user_data;
    Build *b = g_task_get_task_data(task);
    GError *error = NULL;
    if (!sbx_guest_reseed_finish(SBX_GUEST(source), res, &error)) {
        g_prefix_error(&error, "setting the template VM's clock back: ");
        build_fail_vm(task, error);
        return;
    }
    sbx_guest_warm_async(SBX_GUEST(source), b->language, g_task_get_cancellable(task), warmed_cb,
                         task);
}

static void
booted_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GTask *task = user_data;
    Build *b = g_task_get_task_data(task);
    GError *error = NULL;
    if (!sbx_vm_boot_finish(SBX_VM(source), res, &error)) {
        g_prefix_error(&error, "booting the template VM: ");
        build_fail_vm(task, error);
        return;
    }
    b->boot_ms = sbx_vm_get_boot_ms(b->vm_obj);
    b->t0 = g_get_monotonic_time();
    /* The REPL the template keeps (and every clone of it) starts under a clock
     * a day back: the restore's clock step then makes OpenSSL's DRBGs in a
     * cloned node reseed from the reseeded kernel (SBX_TEMPLATE_CLOCK_BACK_S). */
    gint64 back_us = g_get_real_time() - (gint64)SBX_TEMPLATE_CLOCK_BACK_S * G_USEC_PER_SEC;
    sbx_guest_reseed_clock_async(sbx_vm_get_guest(b->vm_obj), back_us * 1000,
                                 g_task_get_cancellable(task), clock_back_cb, task);
}

void
sbx_template_cache_build_async(SbxTemplateCache *self, const char *key,
                               const SbxTemplateBuildParams *params, GCancellable *cancellable,
                               GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = g_task_new(self, cancellable, callback, user_data);
    g_task_set_source_tag(task, sbx_template_cache_build_async);
    Build *b = g_new0(Build, 1);
    b->lock_fd = b->state_fd = -1;
    b->cache = g_object_ref(self);
    b->key = g_strdup(key);
    g_task_set_task_data(task, b, (GDestroyNotify)build_free);

    if (sbx_template_cache_is_building(self, key)) {
        g_task_return_new_error(task, G_IO_ERROR, G_IO_ERROR_BUSY, "%s is being built", key);
        g_object_unref(task);
        return;
    }
    g_autofree char *lock_path = g_strdup_printf("%s/%s.lock", self->dir, key);
    b->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (b->lock_fd < 0 || flock(b->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        g_task_return_new_error(task, G_IO_ERROR,
                                e == EWOULDBLOCK ? G_IO_ERROR_BUSY : g_io_error_from_errno(e),
                                "%s: %s", lock_path,
                                e == EWOULDBLOCK ? "another process is building this template"
                                                 : g_strerror(e));
        g_object_unref(task);
        return;
    }
    /* Another process may have committed it while we waited for nothing. */
    g_autoptr(GError) lookup_error = NULL;
    SbxTemplate *done = sbx_template_cache_lookup(self, key, &lookup_error);
    if (done) {
        g_task_return_pointer(task, done, (GDestroyNotify)sbx_template_unref);
        g_object_unref(task);
        return;
    }
    g_hash_table_add(self->building, g_strdup(key));
    remove_entry_files(self->dir, key, TRUE);

    b->language = params->language;
    b->vm = params->vm;
    b->qemu = g_strdup(params->vm.qemu);
    b->kernel = g_strdup(params->vm.qemu_cfg.kernel);
    b->initrd = g_strdup(params->vm.qemu_cfg.initrd);
    b->cmdline = g_strdup(params->vm.qemu_cfg.cmdline);
    b->rootfs = g_strdup(params->vm.qemu_cfg.rootfs);
    b->run_dir = g_strdup(params->vm.run_dir);
    b->work_disk = g_strdup(params->vm.work_disk);
    b->work_format = g_strdup(params->vm.work_format);
    b->vm.qemu = b->qemu;
    b->vm.qemu_cfg.kernel = b->kernel;
    b->vm.qemu_cfg.initrd = b->initrd;
    b->vm.qemu_cfg.cmdline = b->cmdline;
    b->vm.qemu_cfg.rootfs = b->rootfs;
    b->vm.qemu_cfg.vm_id = NULL;
    b->vm.qemu_cfg.work_disk = NULL;
    b->vm.qemu_cfg.incoming_defer = FALSE;
    b->vm.run_dir = b->run_dir;
    b->vm.work_disk = b->work_disk;
    b->vm.work_format = b->work_format;
    b->vm.cgroup = NULL;
    b->verify_run_dir = g_strdup(params->verify_run_dir);
    b->disk_size = params->disk_size;
    b->qsd = g_object_ref(params->qsd);
    b->tpl = template_new(self->dir, key);
    b->tpl->disk_format = g_strdup(params->vm.work_format);
    b->tpl->disk_size = params->disk_size;
    b->tpl->memory_mb = params->vm.qemu_cfg.memory_mb;
    b->ram_tmp = g_strdup_printf("%s.tmp", b->tpl->ram_path);
    b->state_tmp = g_strdup_printf("%s.tmp", b->tpl->state_path);
    b->disk_tmp = g_strdup_printf("%s.tmp", b->tpl->disk_path);
    b->meta_tmp = g_strdup_printf("%s.tmp", b->tpl->meta_path);

    SbxVmParams p = b->vm;
    p.qemu_cfg.mem_path = b->ram_tmp;
    p.qemu_cfg.mem_share = TRUE;
    g_autofree char *id = g_strdup_printf("%s-build", key);
    b->vm_obj = sbx_vm_new(id);
    sbx_vm_boot_async(b->vm_obj, &p, cancellable, booted_cb, task);
}

SbxTemplate *
sbx_template_cache_build_finish(SbxTemplateCache *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), NULL);
    return g_task_propagate_pointer(G_TASK(result), error);
}

/* mincore() of the RAM file: resident pages = what the restore and the probe
 * exec faulted in after the page cache was dropped. Ranges closer than
 * SBX_TEMPLATE_HOT_GAP_PAGES are merged. Best effort: no ranges on failure. */
static void
hot_pages_record(Build *b)
{
    g_auto(SbxFd) fd = open(b->ram_tmp, O_RDONLY | O_CLOEXEC);
    struct stat st;
    long page = sysconf(_SC_PAGESIZE);
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size == 0)
        return;
    gsize len = (gsize)st.st_size;
    void *map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        return;
    gsize npages = (len + (gsize)page - 1) / (gsize)page;
    g_autofree unsigned char *vec = g_malloc(npages);
    if (mincore(map, len, vec) == 0) {
        GArray *hot = b->tpl->hot;
        for (gsize i = 0; i < npages; i++) {
            if (!(vec[i] & 1))
                continue;
            guint64 n = hot->len;
            if (n >= 2) {
                guint64 *last = &g_array_index(hot, guint64, n - 2);
                if ((guint64)i <= last[0] + last[1] + SBX_TEMPLATE_HOT_GAP_PAGES) {
                    last[1] = (guint64)i - last[0] + 1; /* extend (and bridge a small gap) */
                    continue;
                }
            }
            guint64 start = i, one = 1;
            g_array_append_val(hot, start);
            g_array_append_val(hot, one);
        }
        b->tpl->hot_bytes = 0;
        for (guint i = 1; i < hot->len; i += 2)
            b->tpl->hot_bytes += g_array_index(hot, guint64, i) * (guint64)page;
    }
    munmap(map, len);
}

static gboolean
write_meta(Build *b, GError **error)
{
    SbxTemplate *t = b->tpl;
    g_autoptr(JsonBuilder) jb = json_builder_new();
    json_builder_begin_object(jb);
    json_builder_set_member_name(jb, "format");
    json_builder_add_int_value(jb, SBX_TEMPLATE_FORMAT);
    json_builder_set_member_name(jb, "key");
    json_builder_add_string_value(jb, t->key);
    json_builder_set_member_name(jb, "language");
    json_builder_add_string_value(jb, sbx_language_to_string(b->language));
    json_builder_set_member_name(jb, "memory_mb");
    json_builder_add_int_value(jb, t->memory_mb);
    json_builder_set_member_name(jb, "disk_format");
    json_builder_add_string_value(jb, t->disk_format);
    json_builder_set_member_name(jb, "disk_size");
    json_builder_add_int_value(jb, (gint64)t->disk_size);
    json_builder_set_member_name(jb, "state_sha256");
    json_builder_add_string_value(jb, b->state_sha256);
    json_builder_set_member_name(jb, "files");
    json_builder_begin_object(jb);
    file_id_add_json(jb, "ram", &t->ram_id);
    file_id_add_json(jb, "state", &t->state_id);
    file_id_add_json(jb, "disk", &t->disk_id);
    json_builder_end_object(jb);
    json_builder_set_member_name(jb, "hot_pages");
    json_builder_begin_array(jb);
    for (guint i = 0; i < t->hot->len; i++)
        json_builder_add_int_value(jb, (gint64)g_array_index(t->hot, guint64, i));
    json_builder_end_array(jb);
    json_builder_set_member_name(jb, "build_ms");
    json_builder_begin_object(jb);
    json_builder_set_member_name(jb, "boot");
    json_builder_add_int_value(jb, b->boot_ms);
    json_builder_set_member_name(jb, "warm");
    json_builder_add_int_value(jb, b->warm_ms);
    json_builder_set_member_name(jb, "save");
    json_builder_add_int_value(jb, b->save_ms);
    json_builder_set_member_name(jb, "verify_restore");
    json_builder_add_int_value(jb, b->verify_ms);
    json_builder_end_object(jb);
    json_builder_end_object(jb);
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autoptr(JsonNode) root = json_builder_get_root(jb);
    json_generator_set_root(gen, root);
    json_generator_set_pretty(gen, TRUE);
    g_autofree char *text = json_generator_to_data(gen, NULL);
    /* g_file_set_contents: temp file + fsync + rename, i.e. the commit point */
    return g_file_set_contents_full(t->meta_path, text, -1,
                                    G_FILE_SET_CONTENTS_CONSISTENT | G_FILE_SET_CONTENTS_DURABLE,
                                    0600, error);
}

static void
commit_thread(GTask *t, gpointer source, gpointer data, GCancellable *c)
{
    Build *b = data;
    GError *error = NULL;
    const char *from[] = {b->ram_tmp, b->state_tmp, b->disk_tmp};
    const char *to[] = {b->tpl->ram_path, b->tpl->state_path, b->tpl->disk_path};
    for (guint i = 0; i < G_N_ELEMENTS(from); i++) {
        if (rename(from[i], to[i]) != 0) {
            int e = errno;
            g_task_return_new_error(t, G_IO_ERROR, g_io_error_from_errno(e), "rename %s: %s",
                                    from[i], g_strerror(e));
            return;
        }
    }
    if (!file_id_read(b->tpl->ram_path, &b->tpl->ram_id, &error) ||
        !file_id_read(b->tpl->state_path, &b->tpl->state_id, &error) ||
        !file_id_read(b->tpl->disk_path, &b->tpl->disk_id, &error) || !write_meta(b, &error)) {
        g_task_return_error(t, error);
        return;
    }
    g_auto(SbxFd) dirfd = open(b->cache->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd >= 0)
        (void)fsync(dirfd);
    g_task_return_boolean(t, TRUE);
}

static void
sbx_template_cache_finalize(GObject *object)
{
    SbxTemplateCache *self = SBX_TEMPLATE_CACHE(object);
    g_hash_table_unref(self->entries);
    g_hash_table_unref(self->building);
    g_free(self->dir);
    G_OBJECT_CLASS(sbx_template_cache_parent_class)->finalize(object);
}

static void
sbx_template_cache_init(SbxTemplateCache *self)
{
    self->entries =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)sbx_template_unref);
    self->building = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
}

static void
sbx_template_cache_class_init(SbxTemplateCacheClass *klass)
{
    G_OBJECT_CLASS(klass)->finalize = sbx_template_cache_finalize;
}
