/* SPDX-License-Identifier: MIT
 *
 * File transfer in the guest agent: write_file (streamed chunks into a
 * temporary file, mode + owner set, atomic rename), read_file (streamed back
 * with credit-based flow control so neither side buffers a whole file) and
 * list_files. Every path is validated (common/sbx-validate.c) and resolved
 * from an fd of the home directory one component at a time with O_NOFOLLOW,
 * so a symlink planted by user code can never lead the (root) agent outside
 * /home/user. Used by ga-main.c.
 */
#define G_LOG_DOMAIN "sbx-agent"
#include "guest/agent/ga-agent.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gio/gio.h>

#include "common/sbx-fd.h"

#define MAX_TRANSFERS 16
#define LIST_MAX_ENTRIES 10000
#define LIST_MAX_JSON (768 * 1024)

typedef struct {
    gint64 id;
    int dirfd;
    char *name;
    char *tmpname;
    int fd;          /* -1 once failed */
    guint64 size;
    gboolean failed; /* error already sent; swallow chunks until file_end */
} GaUpload;

typedef struct {
    gint64 id;
    int fd;
    guint64 sent;
    guint64 acked;
    guint64 window; /* 0: no flow control */
    guint mode;
} GaDownload;

struct _GaFiles {
    GaAgent *a;
    int homefd;
    GHashTable *uploads;   /* id -> GaUpload */
    GHashTable *downloads; /* id -> GaDownload */
};

static gboolean
set_errno_error(GError **error, int err, const char *what, const char *path)
{
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(err), "%s \"%s\": %s", what, path,
                g_strerror(err));
    return FALSE;
}

/* Open the directory that holds the last component of @path, walking from
 * the home fd without following symlinks. @create makes missing parents
 * (owned by the user). Returns an O_PATH directory fd. */
static int
open_parent(GaFiles *f, const char *path, gboolean create, char **out_name, GError **error)
{
    g_auto(GStrv) parts = g_strsplit(path, "/", -1);
    guint n = g_strv_length(parts);
    g_auto(SbxFd) dir = fcntl(f->homefd, F_DUPFD_CLOEXEC, 3);

    if (dir < 0) {
        set_errno_error(error, errno, "dup", "home");
        return -1;
    }
    for (guint i = 0; i + 1 < n; i++) {
        int next = openat(dir, parts[i], O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (next < 0 && errno == ENOENT && create) {
            if (mkdirat(dir, parts[i], 0755) != 0 && errno != EEXIST) {
                set_errno_error(error, errno, "cannot create directory", parts[i]);
                return -1;
            }
            if (!f->a->no_setuid)
                (void)fchownat(dir, parts[i], f->a->uid, f->a->gid, AT_SYMLINK_NOFOLLOW);
            next = openat(dir, parts[i], O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
        if (next < 0) {
            int err = errno;
            if (err == ENOTDIR || err == ELOOP) {
                g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                            "path component \"%s\" of \"%s\" is a symlink or not a directory",
                            parts[i], path);
                return -1;
            }
            set_errno_error(error, err, "cannot open directory", parts[i]);
            return -1;
        }
        sbx_fd_close(&dir);
        dir = next;
    }
    *out_name = g_strdup(parts[n - 1]);
    return sbx_steal_fd(&dir);
}

static void
upload_free(gpointer data)
{
    GaUpload *u = data;
    if (u->fd >= 0) {
        close(u->fd);
        (void)unlinkat(u->dirfd, u->tmpname, 0);
    }
    if (u->dirfd >= 0)
        close(u->dirfd);
    g_free(u->name);
    g_free(u->tmpname);
    g_free(u);
}

static void
download_free(gpointer data)
{
    GaDownload *d = data;
    if (d->fd >= 0)
        close(d->fd);
    g_free(d);
}

/* Mark an upload failed: drop its temporary file, keep the id to swallow chunks. */
static void
upload_fail(GaFiles *f, GaUpload *u, const GError *error)
{
    ga_send_gerror(f->a, u->id, error);
    if (u->fd >= 0) {
        close(u->fd);
        u->fd = -1;
        (void)unlinkat(u->dirfd, u->tmpname, 0);
    }
    u->failed = TRUE;
}

static gboolean
upload_append(GaFiles *f, GaUpload *u, GBytes *payload)
{
    gsize len = 0;
    const guint8 *data = g_bytes_get_data(payload, &len);
    g_autoptr(GError) error = NULL;

    if (u->failed || len == 0)
        return TRUE;
    if (u->size + len > SBX_MAX_FILE_BYTES) {
        g_set_error(&error, G_IO_ERROR, G_IO_ERROR_NO_SPACE,
                    "file \"%s\" exceeds the %llu byte limit", u->name, SBX_MAX_FILE_BYTES);
        upload_fail(f, u, error);
        return FALSE;
    }
    while (len > 0) {
        ssize_t n = write(u->fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            set_errno_error(&error, errno, "cannot write", u->name);
            upload_fail(f, u, error);
            return FALSE;
        }
        data += n;
        len -= (gsize)n;
        u->size += (guint64)n;
    }
    return TRUE;
}

static void
handle_write_file(GaFiles *f, SbxFrame *frame)
{
    const char *path = sbx_frame_get_string(frame, "path", NULL);
    g_autoptr(GError) error = NULL;
    GaUpload *u;

    if (g_hash_table_contains(f->uploads, &frame->id)) {
        ga_send_error(f->a, frame->id, GA_ERR_PROTOCOL, "write_file id %" G_GINT64_FORMAT " is already open",
                      frame->id);
        return;
    }
    u = g_new0(GaUpload, 1);
    u->id = frame->id;
    u->fd = -1;
    u->dirfd = -1;
    u->tmpname = g_strdup_printf(".sbx-upload-%" G_GINT64_FORMAT ".tmp", frame->id);
    g_hash_table_insert(f->uploads, &u->id, u);
    if (g_hash_table_size(f->uploads) + g_hash_table_size(f->downloads) > MAX_TRANSFERS) {
        g_set_error(&error, G_IO_ERROR, G_IO_ERROR_BUSY, "too many file transfers in flight (limit %d)",
                    MAX_TRANSFERS);
        upload_fail(f, u, error);
        return;
    }
    if (!sbx_validate_path(path, path ? strlen(path) : 0, FALSE, &error)) {
        upload_fail(f, u, error);
        return;
    }
    u->dirfd = open_parent(f, path, TRUE, &u->name, &error);
    if (u->dirfd < 0) {
        upload_fail(f, u, error);
        return;
    }
    (void)unlinkat(u->dirfd, u->tmpname, 0);
    u->fd = openat(u->dirfd, u->tmpname, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (u->fd < 0) {
        set_errno_error(&error, errno, "cannot create", path);
        upload_fail(f, u, error);
        return;
    }
    upload_append(f, u, frame->payload);
}

static void
handle_file_end(GaFiles *f, SbxFrame *frame)
{
    GaUpload *u = g_hash_table_lookup(f->uploads, &frame->id);
    g_autoptr(GError) error = NULL;
    guint mode = (guint)sbx_frame_get_int(frame, "mode", 0644) & 0777;
    JsonObject *h;

    if (!u)
        return;
    if (sbx_frame_get_bool(frame, "abort", FALSE)) {
        g_hash_table_remove(f->uploads, &frame->id); /* drops the temporary file */
        return;
    }
    if (!u->failed && upload_append(f, u, frame->payload)) {
        if (fchmod(u->fd, mode) != 0 ||
            (!f->a->no_setuid && fchown(u->fd, f->a->uid, f->a->gid) != 0) ||
            renameat(u->dirfd, u->tmpname, u->dirfd, u->name) != 0) {
            set_errno_error(&error, errno, "cannot store", u->name);
            upload_fail(f, u, error);
        } else {
            close(u->fd);
            u->fd = -1; /* renamed: nothing to clean up */
            h = sbx_frame_header_new("ok", u->id);
            json_object_set_int_member(h, "size", (gint64)u->size);
            ga_send(f->a, h, NULL, 0);
        }
    }
    g_hash_table_remove(f->uploads, &frame->id);
}

/* Send chunks while the output queue and the host's credit allow. */
static gboolean
download_pump(GaFiles *f, GaDownload *d)
{
    static guint8 buf[SBX_FRAME_FILE_CHUNK];

    while (ga_outq_pending(f->a) < GA_OUTQ_HIGH && (d->window == 0 || d->sent - d->acked < d->window)) {
        ssize_t n = read(d->fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            g_autoptr(GError) error = NULL;
            set_errno_error(&error, errno, "cannot read", "file");
            ga_send_gerror(f->a, d->id, error);
            return FALSE;
        }
        if (n == 0) {
            JsonObject *h = sbx_frame_header_new("file_end", d->id);
            json_object_set_int_member(h, "size", (gint64)d->sent);
            json_object_set_int_member(h, "mode", d->mode);
            ga_send(f->a, h, NULL, 0);
            return FALSE;
        }
        if (d->sent + (guint64)n > SBX_MAX_FILE_BYTES) {
            ga_send_error(f->a, d->id, GA_ERR_TOO_LARGE, "file grew past the %llu byte limit",
                          SBX_MAX_FILE_BYTES);
            return FALSE;
        }
        ga_send(f->a, sbx_frame_header_new("file_chunk", d->id), buf, (gsize)n);
        d->sent += (guint64)n;
    }
    return TRUE;
}

static void
handle_read_file(GaFiles *f, SbxFrame *frame)
{
    const char *path = sbx_frame_get_string(frame, "path", NULL);
    g_autoptr(GError) error = NULL;
    g_autofree char *name = NULL;
    g_auto(SbxFd) dir = -1;
    g_auto(SbxFd) fd = -1;
    struct stat st;
    GaDownload *d;

    if (g_hash_table_contains(f->downloads, &frame->id)) {
        ga_send_error(f->a, frame->id, GA_ERR_PROTOCOL, "read_file id %" G_GINT64_FORMAT " is already open",
                      frame->id);
        return;
    }
    if (g_hash_table_size(f->uploads) + g_hash_table_size(f->downloads) >= MAX_TRANSFERS) {
        ga_send_error(f->a, frame->id, GA_ERR_BUSY, "too many file transfers in flight (limit %d)",
                      MAX_TRANSFERS);
        return;
    }
    if (!sbx_validate_path(path, path ? strlen(path) : 0, FALSE, &error) ||
        (dir = open_parent(f, path, FALSE, &name, &error)) < 0) {
        ga_send_gerror(f->a, frame->id, error);
        return;
    }
    fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ELOOP)
            ga_send_error(f->a, frame->id, GA_ERR_INVALID_INPUT, "\"%s\" is a symlink", path);
        else {
            set_errno_error(&error, errno, "cannot open", path);
            ga_send_gerror(f->a, frame->id, error);
        }
        return;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ga_send_error(f->a, frame->id, GA_ERR_INVALID_INPUT, "\"%s\" is not a regular file", path);
        return;
    }
    if ((guint64)st.st_size > SBX_MAX_FILE_BYTES) {
        ga_send_error(f->a, frame->id, GA_ERR_TOO_LARGE, "\"%s\" is %lld bytes; the limit is %llu",
                      path, (long long)st.st_size, SBX_MAX_FILE_BYTES);
        return;
    }
    (void)fcntl(fd, F_SETFL, 0);
    d = g_new0(GaDownload, 1);
    d->id = frame->id;
    d->fd = sbx_steal_fd(&fd);
    d->window = (guint64)MAX(0, sbx_frame_get_int(frame, "window", 0));
    d->mode = st.st_mode & 07777;
    if (download_pump(f, d))
        g_hash_table_insert(f->downloads, &d->id, d);
    else
        download_free(d);
}

static void
handle_file_ack(GaFiles *f, SbxFrame *frame)
{
    GaDownload *d = g_hash_table_lookup(f->downloads, &frame->id);
    gint64 bytes = sbx_frame_get_int(frame, "bytes", 0);

    if (!d)
        return;
    if (bytes > 0 && (guint64)bytes > d->acked)
        d->acked = MIN((guint64)bytes, d->sent);
    if (!download_pump(f, d))
        g_hash_table_remove(f->downloads, &frame->id);
}

static const char *
type_name(mode_t m)
{
    if (S_ISREG(m))
        return "file";
    if (S_ISDIR(m))
        return "dir";
    if (S_ISLNK(m))
        return "symlink";
    return "other";
}

static gint
cmp_str(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void
handle_list_files(GaFiles *f, SbxFrame *frame)
{
    const char *path = sbx_frame_get_string(frame, "path", "");
    g_autoptr(GError) error = NULL;
    g_autofree char *name = NULL;
    g_auto(SbxFd) parent = -1;
    int fd;
    DIR *dir;
    struct dirent *de;
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(JsonArray) entries = json_array_new();
    gboolean truncated = FALSE;
    gsize approx = 0;
    JsonObject *h;

    if (!sbx_validate_path(path, strlen(path), TRUE, &error)) {
        ga_send_gerror(f->a, frame->id, error);
        return;
    }
    if (!*path || g_str_equal(path, ".")) {
        fd = openat(f->homefd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } else {
        parent = open_parent(f, path, FALSE, &name, &error);
        if (parent < 0) {
            ga_send_gerror(f->a, frame->id, error);
            return;
        }
        fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    }
    if (fd < 0) {
        if (errno == ENOTDIR || errno == ELOOP)
            ga_send_error(f->a, frame->id, GA_ERR_INVALID_INPUT, "\"%s\" is not a directory", path);
        else {
            set_errno_error(&error, errno, "cannot list", path);
            ga_send_gerror(f->a, frame->id, error);
        }
        return;
    }
    dir = fdopendir(fd);
    if (!dir) {
        close(fd);
        set_errno_error(&error, errno, "cannot list", path);
        ga_send_gerror(f->a, frame->id, error);
        return;
    }
    while ((de = readdir(dir))) {
        if (g_str_equal(de->d_name, ".") || g_str_equal(de->d_name, ".."))
            continue;
        if (!g_utf8_validate(de->d_name, -1, NULL))
            continue; /* cannot be named in JSON; documented */
        if (names->len >= LIST_MAX_ENTRIES) {
            truncated = TRUE;
            break;
        }
        g_ptr_array_add(names, g_strdup(de->d_name));
    }
    g_ptr_array_sort(names, cmp_str);
    for (guint i = 0; i < names->len; i++) {
        const char *n = names->pdata[i];
        struct stat st;
        JsonObject *o;
        if (fstatat(dirfd(dir), n, &st, AT_SYMLINK_NOFOLLOW) != 0)
            continue;
        approx += strlen(n) * 2 + 64;
        if (approx > LIST_MAX_JSON) {
            truncated = TRUE;
            break;
        }
        o = json_object_new();
        json_object_set_string_member(o, "name", n);
        json_object_set_string_member(o, "type", type_name(st.st_mode));
        json_object_set_int_member(o, "size", (gint64)st.st_size);
        json_object_set_int_member(o, "mode", st.st_mode & 07777);
        json_array_add_object_element(entries, o);
    }
    closedir(dir);
    h = sbx_frame_header_new("file_list", frame->id);
    json_object_set_array_member(h, "entries", g_steal_pointer(&entries));
    json_object_set_boolean_member(h, "truncated", truncated);
    ga_send(f->a, h, NULL, 0);
}

void
ga_files_handle(GaFiles *f, SbxFrame *frame)
{
    const char *t = frame->type;

    if (g_str_equal(t, "write_file"))
        handle_write_file(f, frame);
    else if (g_str_equal(t, "file_chunk")) {
        GaUpload *u = g_hash_table_lookup(f->uploads, &frame->id);
        if (u)
            upload_append(f, u, frame->payload);
    } else if (g_str_equal(t, "file_end"))
        handle_file_end(f, frame);
    else if (g_str_equal(t, "read_file"))
        handle_read_file(f, frame);
    else if (g_str_equal(t, "file_ack"))
        handle_file_ack(f, frame);
    else if (g_str_equal(t, "list_files"))
        handle_list_files(f, frame);
}

void
ga_files_resume(GaFiles *f)
{
    GHashTableIter it;
    gpointer v;

    g_hash_table_iter_init(&it, f->downloads);
    while (g_hash_table_iter_next(&it, NULL, &v))
        if (!download_pump(f, v))
            g_hash_table_iter_remove(&it);
}

void
ga_files_cancel(GaFiles *f, gint64 target)
{
    g_hash_table_remove(f->uploads, &target);
    g_hash_table_remove(f->downloads, &target);
}

void
ga_files_reset(GaFiles *f)
{
    g_hash_table_remove_all(f->uploads);
    g_hash_table_remove_all(f->downloads);
}

GaFiles *
ga_files_new(GaAgent *a)
{
    GaFiles *f = g_new0(GaFiles, 1);
    f->a = a;
    f->homefd = open(a->home, O_PATH | O_DIRECTORY | O_CLOEXEC);
    f->uploads = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, upload_free);
    f->downloads = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, download_free);
    return f;
}

void
ga_files_free(GaFiles *f)
{
    if (!f)
        return;
    g_hash_table_unref(f->uploads);
    g_hash_table_unref(f->downloads);
    if (f->homefd >= 0)
        close(f->homefd);
    g_free(f);
}
