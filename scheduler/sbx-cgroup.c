/* SPDX-License-Identifier: MIT
 *
 * cgroup backend of the VM lifecycle. It writes cgroupfs directly (PID 1 need
 * not be systemd): at startup it reads /proc/self/mountinfo and /proc/self/cgroup
 * to find, per controller (memory, cpu, cpuacct, pids), the hierarchy that holds
 * it and the daemon's own group there, then creates `<own>/<base>` in each
 * hierarchy. Per VM it creates `<base>/<name>` everywhere, writes the limits
 * through the v2 or v1 interface files, hands the `cgroup.procs` paths to the
 * spawn helper (common/sbx-spawn, which joins them before exec), reads stats, and
 * tears down without blocking the main loop (kill, then rmdir retried on a
 * timer). Used by the VM lifecycle (scheduler/) and the startup probe; talks to
 * nothing but the filesystem.
 */
#define G_LOG_DOMAIN "sbx-cgroup"

#include "scheduler/sbx-cgroup.h"

#include <dirent.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/sbx-fd.h"

#define CPU_PERIOD_US 100000
#define CG_READ_MAX   (1024 * 1024)

typedef struct {
    char *mount;    /* mount point (with fs_root) */
    char *own_dir;  /* the daemon's group (or the configured root) in this hierarchy */
    char *base_dir; /* own_dir/base_name */
    gboolean v2;
    guint controllers; /* SBX_CGROUP_CONTROLLER_* served by this hierarchy for us */
} Hier;

struct _SbxCgroupManager {
    GObject parent_instance;
    char *fs_root;
    char *base_name;
    char *root_path;
    gboolean plain_fs;
    guint destroy_timeout_ms;
    SbxCgroupMode mode;
    char *reason;
    guint controllers;
    GPtrArray *hiers; /* Hier* */
    GMutex lock;      /* guards live: creates and destroys may run in worker threads */
    GHashTable *live; /* name -> SbxCgroup* (not owned), reserved from before mkdir */
};

typedef struct {
    char *path;
    guint controllers;
    gboolean v2;
    gboolean removed;
} CgDir;

struct _SbxCgroup {
    GObject parent_instance;
    SbxCgroupManager *mgr; /* owned ref */
    char *name;
    GPtrArray *dirs;  /* CgDir* */
    GPtrArray *procs; /* cgroup.procs path per dir */
    gboolean destroyed;
    gboolean registered;
    guint64 peak_seen;
};

G_DEFINE_FINAL_TYPE(SbxCgroupManager, sbx_cgroup_manager, G_TYPE_OBJECT)
G_DEFINE_FINAL_TYPE(SbxCgroup, sbx_cgroup, G_TYPE_OBJECT)

static const struct {
    const char *name;
    guint bit;
} controller_names[] = {
    {"memory", SBX_CGROUP_CONTROLLER_MEMORY},
    {"cpu", SBX_CGROUP_CONTROLLER_CPU},
    {"cpuacct", SBX_CGROUP_CONTROLLER_CPUACCT},
    {"pids", SBX_CGROUP_CONTROLLER_PIDS},
};

static guint
controller_bit(const char *name)
{
    for (guint i = 0; i < G_N_ELEMENTS(controller_names); i++)
        if (g_str_equal(controller_names[i].name, name))
            return controller_names[i].bit;
    return 0;
}

static char *
controllers_to_string(guint bits)
{
    GString *s = g_string_new(NULL);
    for (guint i = 0; i < G_N_ELEMENTS(controller_names); i++) {
        if (bits & controller_names[i].bit) {
            if (s->len)
                g_string_append_c(s, ',');
            g_string_append(s, controller_names[i].name);
        }
    }
    return g_string_free(s, FALSE);
}

static void
hier_free(gpointer p)
{
    Hier *h = p;
    g_free(h->mount);
    g_free(h->own_dir);
    g_free(h->base_dir);
    g_free(h);
}

static void
cgdir_free(gpointer p)
{
    CgDir *d = p;
    g_free(d->path);
    g_free(d);
}

/* ---- file helpers: every error is G_IO_ERROR with the path in the message ---- */

static void
set_errno_error(GError **error, int err, const char *what, const char *path)
{
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(err), "%s %s: %s", what, path,
                g_strerror(err));
}

static gboolean
cg_write_path(const char *path, const char *value, gboolean create, GError **error)
{
    g_auto(SbxFd) fd = open(path, O_WRONLY | O_CLOEXEC | (create ? O_CREAT | O_TRUNC : 0), 0644);
    if (fd < 0) {
        int err = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(err), "cannot open %s: %s", path,
                    g_strerror(err));
        return FALSE;
    }
    gsize len = strlen(value);
    ssize_t n;
    do
        n = write(fd, value, len);
    while (n < 0 && errno == EINTR);
    if (n < 0 || (gsize)n != len) {
        int err = n < 0 ? errno : EIO;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(err), "cannot write \"%s\" to %s: %s",
                    value, path, g_strerror(err));
        return FALSE;
    }
    return TRUE;
}

static gboolean
cg_write(SbxCgroupManager *mgr, const char *dir, const char *file, const char *value,
         GError **error)
{
    g_autofree char *path = g_build_filename(dir, file, NULL);
    return cg_write_path(path, value, mgr->plain_fs, error);
}

/* Like cg_write, but a missing file (older kernel, optional feature) is not an error. */
static gboolean
cg_write_optional(SbxCgroupManager *mgr, const char *dir, const char *file, const char *value,
                  GError **error)
{
    g_autoptr(GError) local = NULL;
    if (cg_write(mgr, dir, file, value, &local))
        return TRUE;
    if (g_error_matches(local, G_IO_ERROR, G_IO_ERROR_NOT_FOUND))
        return TRUE;
    g_propagate_error(error, g_steal_pointer(&local));
    return FALSE;
}

static char *
cg_read_path(const char *path, GError **error)
{
    g_auto(SbxFd) fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(err), "cannot open %s: %s", path,
                    g_strerror(err));
        return NULL;
    }
    g_autoptr(GString) buf = g_string_new(NULL);
    char chunk[4096];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int err = errno;
            g_set_error(error, G_IO_ERROR, g_io_error_from_errno(err), "cannot read %s: %s", path,
                        g_strerror(err));
            return NULL;
        }
        if (n == 0)
            break;
        if (buf->len + (gsize)n > CG_READ_MAX) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_MESSAGE_TOO_LARGE,
                        "%s is larger than %d bytes", path, CG_READ_MAX);
            return NULL;
        }
        g_string_append_len(buf, chunk, n);
    }
    return g_string_free(g_steal_pointer(&buf), FALSE);
}

static char *
cg_read(const char *dir, const char *file, GError **error)
{
    g_autofree char *path = g_build_filename(dir, file, NULL);
    return cg_read_path(path, error);
}

/* Parse one unsigned number; "max" (and v1's -1 spelled out) map to G_MAXUINT64. */
static gboolean
parse_u64(const char *text, const char *what, guint64 *out, GError **error)
{
    g_autofree char *s = g_strstrip(g_strdup(text));
    if (g_str_equal(s, "max") || g_str_equal(s, "-1")) {
        *out = G_MAXUINT64;
        return TRUE;
    }
    guint64 v;
    g_autoptr(GError) local = NULL;
    if (!g_ascii_string_to_unsigned(s, 10, 0, G_MAXUINT64, &v, &local)) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "%s: bad number \"%s\"", what, s);
        return FALSE;
    }
    *out = v;
    return TRUE;
}

/* Read a single-number file into *out. Returns FALSE with NOT_FOUND if absent. */
static gboolean
read_u64(const char *dir, const char *file, guint64 *out, GError **error)
{
    g_autofree char *path = g_build_filename(dir, file, NULL);
    g_autofree char *text = cg_read_path(path, error);
    if (text == NULL)
        return FALSE;
    return parse_u64(text, path, out, error);
}

/* Find "key value" in a flat-keyed file (cpu.stat, memory.events, ...). A missing key
 * leaves *out untouched and succeeds. */
static gboolean
read_keyed(const char *dir, const char *file, const char *key, guint64 *out, GError **error)
{
    g_autofree char *path = g_build_filename(dir, file, NULL);
    g_autofree char *text = cg_read_path(path, error);
    if (text == NULL)
        return FALSE;
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    for (guint i = 0; lines[i]; i++) {
        g_auto(GStrv) kv = g_strsplit(lines[i], " ", 2);
        if (kv[0] && kv[1] && g_str_equal(kv[0], key))
            return parse_u64(kv[1], path, out, error);
    }
    return TRUE;
}

/* Stats files may be absent on older kernels or with a controller missing: that
 * leaves the field at 0. Any other failure is reported. */
static gboolean
tolerate_missing(gboolean ok, GError **local, GError **error)
{
    if (ok)
        return TRUE;
    if (g_error_matches(*local, G_IO_ERROR, G_IO_ERROR_NOT_FOUND)) {
        g_clear_error(local);
        return TRUE;
    }
    g_propagate_error(error, g_steal_pointer(local));
    return FALSE;
}

/* ---- detection ---- */

/* Undo the octal escapes (\040 ...) of /proc/self/mountinfo. */
static char *
unescape_mount(const char *s)
{
    GString *out = g_string_new(NULL);
    for (const char *p = s; *p; p++) {
        if (p[0] == '\\' && g_ascii_isdigit(p[1]) && g_ascii_isdigit(p[2]) &&
            g_ascii_isdigit(p[3])) {
            g_string_append_c(out,
                              (char)(((p[1] - '0') << 6) | ((p[2] - '0') << 3) | (p[3] - '0')));
            p += 3;
        } else {
            g_string_append_c(out, *p);
        }
    }
    return g_string_free(out, FALSE);
}

typedef struct {
    char *v2_path;       /* "0::" line, or NULL */
    GPtrArray *v1_lines; /* "ctrl,ctrl" / path pairs, flattened */
} ProcCgroup;

static void
proc_cgroup_clear(ProcCgroup *pc)
{
    g_clear_pointer(&pc->v2_path, g_free);
    g_clear_pointer(&pc->v1_lines, g_ptr_array_unref);
}

static gboolean
parse_proc_cgroup(const char *text, ProcCgroup *out, GError **error)
{
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    out->v1_lines = g_ptr_array_new_with_free_func(g_free);
    for (guint i = 0; lines[i]; i++) {
        if (lines[i][0] == '\0')
            continue;
        g_auto(GStrv) f = g_strsplit(lines[i], ":", 3);
        if (g_strv_length(f) != 3 || f[2][0] != '/') {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                        "/proc/self/cgroup: bad line \"%s\"", lines[i]);
            return FALSE;
        }
        if (g_str_equal(f[0], "0") && f[1][0] == '\0') {
            g_free(out->v2_path);
            out->v2_path = g_strdup(f[2]);
        } else {
            g_ptr_array_add(out->v1_lines, g_strdup(f[1]));
            g_ptr_array_add(out->v1_lines, g_strdup(f[2]));
        }
    }
    return TRUE;
}

/* The daemon's path in the v1 hierarchy holding @controller. */
static const char *
proc_cgroup_v1_path(const ProcCgroup *pc, const char *controller)
{
    for (guint i = 0; i + 1 < pc->v1_lines->len; i += 2) {
        g_auto(GStrv) ctrls = g_strsplit(g_ptr_array_index(pc->v1_lines, i), ",", -1);
        if (g_strv_contains((const char *const *)ctrls, controller))
            return g_ptr_array_index(pc->v1_lines, i + 1);
    }
    return NULL;
}

/* Map a cgroup path (as in /proc/self/cgroup) to a directory under a mount whose
 * mountinfo "root" is @mount_root. NULL if the path is outside the mount. */
static char *
path_under_mount(const char *fs_root, const char *mount, const char *mount_root,
                 const char *cg_path)
{
    const char *rel = cg_path;
    if (!g_str_equal(mount_root, "/")) {
        gsize n = strlen(mount_root);
        if (strncmp(cg_path, mount_root, n) != 0 || (cg_path[n] != '/' && cg_path[n] != '\0'))
            return NULL;
        rel = cg_path + n;
    }
    return g_build_filename(fs_root, mount, rel, NULL);
}

static void set_none(SbxCgroupManager *self, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void
set_none(SbxCgroupManager *self, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *why = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    self->mode = SBX_CGROUP_MODE_NONE;
    self->controllers = 0;
    g_ptr_array_set_size(self->hiers, 0);
    g_free(self->reason);
    self->reason = g_strdup_printf("cgroups not used: %s; VMs run without cgroup limits", why);
}

static gboolean
mkdir_ok(const char *path, GError **error)
{
    if (mkdir(path, 0755) == 0 || errno == EEXIST)
        return TRUE;
    set_errno_error(error, errno, "cannot create", path);
    return FALSE;
}

/* v2: make the controllers we use available to the VM groups. The "no internal
 * processes" rule forbids enabling them under a non-root group that has members,
 * so if the daemon sits in its own delegated group it moves itself into a leaf
 * `<base>-daemon` first (what systemd asks of Delegate=yes services). */
static gboolean
v2_enable_controllers(SbxCgroupManager *self, Hier *h, GError **error)
{
    if (h->controllers == 0)
        return TRUE;
    GString *want = g_string_new(NULL);
    for (guint i = 0; i < G_N_ELEMENTS(controller_names); i++)
        if (h->controllers & controller_names[i].bit)
            g_string_append_printf(want, "%s+%s", want->len ? " " : "", controller_names[i].name);
    g_autofree char *w = g_string_free(want, FALSE);
    g_autoptr(GError) local = NULL;

    if (!cg_write(self, h->own_dir, "cgroup.subtree_control", w, &local)) {
        g_autofree char *root = g_build_filename(self->fs_root, h->mount, NULL);
        if (!g_error_matches(local, G_IO_ERROR, G_IO_ERROR_BUSY) || g_str_equal(root, h->own_dir)) {
            g_propagate_error(error, g_steal_pointer(&local));
            return FALSE;
        }
        g_clear_error(&local);
        g_autofree char *leaf_name = g_strdup_printf("%s-daemon", self->base_name);
        g_autofree char *leaf = g_build_filename(h->own_dir, leaf_name, NULL);
        if (!mkdir_ok(leaf, error) || !cg_write(self, leaf, "cgroup.procs", "0", error) ||
            !cg_write(self, h->own_dir, "cgroup.subtree_control", w, error))
            return FALSE;
        g_debug("moved the daemon into %s to enable %s below %s", leaf, w, h->own_dir);
    }
    return cg_write(self, h->base_dir, "cgroup.subtree_control", w, error);
}

static gboolean
detect(SbxCgroupManager *self, GError **error)
{
    g_autofree char *mi_path = g_build_filename(self->fs_root, "proc/self/mountinfo", NULL);
    g_autofree char *pc_path = g_build_filename(self->fs_root, "proc/self/cgroup", NULL);
    g_autoptr(GError) local = NULL;
    g_autofree char *mi = cg_read_path(mi_path, &local);
    if (mi == NULL) {
        set_none(self, "%s", local->message);
        return TRUE;
    }
    g_autofree char *pct = cg_read_path(pc_path, &local);
    if (pct == NULL) {
        set_none(self, "%s", local->message);
        return TRUE;
    }
    ProcCgroup pc = {0};
    if (!parse_proc_cgroup(pct, &pc, &local)) {
        proc_cgroup_clear(&pc);
        set_none(self, "%s", local->message);
        return TRUE;
    }

    guint v1_bits = 0;
    Hier *v2 = NULL;
    g_autofree char *v2_note = NULL;
    g_auto(GStrv) lines = g_strsplit(mi, "\n", -1);
    for (guint i = 0; lines[i]; i++) {
        const char *sep = strstr(lines[i], " - ");
        if (sep == NULL)
            continue;
        g_autofree char *pre = g_strndup(lines[i], sep - lines[i]);
        g_auto(GStrv) a = g_strsplit(pre, " ", -1);
        g_auto(GStrv) b = g_strsplit(sep + 3, " ", -1);
        if (g_strv_length(a) < 6 || g_strv_length(b) < 3)
            continue;
        gboolean is_v2 = g_str_equal(b[0], "cgroup2");
        if (!is_v2 && !g_str_equal(b[0], "cgroup"))
            continue;
        g_autofree char *mount = unescape_mount(a[4]);
        g_autofree char *mroot = unescape_mount(a[3]);

        if (is_v2) {
            if (v2 != NULL || pc.v2_path == NULL)
                continue;
            const char *cgp = self->root_path ? self->root_path : pc.v2_path;
            g_autofree char *own = path_under_mount(self->fs_root, mount, mroot, cgp);
            if (own == NULL) {
                v2_note = g_strdup_printf("own v2 group %s is outside the mount %s", cgp, mount);
                continue;
            }
            v2 = g_new0(Hier, 1);
            v2->v2 = TRUE;
            v2->mount = g_steal_pointer(&mount);
            v2->own_dir = g_steal_pointer(&own);
            continue;
        }
        /* v1: which of our controllers does this mount carry? */
        guint bits = 0;
        const char *first = NULL;
        g_auto(GStrv) opts = g_strsplit(b[2], ",", -1);
        for (guint k = 0; opts[k]; k++) {
            guint bit = controller_bit(opts[k]);
            if (bit && !(v1_bits & bit)) {
                bits |= bit;
                if (first == NULL)
                    first = opts[k];
            }
        }
        if (bits == 0)
            continue; /* name=systemd, devices, ..., or a second mount of a hierarchy seen */
        const char *cgp = self->root_path ? self->root_path : proc_cgroup_v1_path(&pc, first);
        if (cgp == NULL)
            continue;
        g_autofree char *own = path_under_mount(self->fs_root, mount, mroot, cgp);
        if (own == NULL)
            continue;
        Hier *h = g_new0(Hier, 1);
        h->mount = g_steal_pointer(&mount);
        h->own_dir = g_steal_pointer(&own);
        h->controllers = bits;
        v1_bits |= bits;
        g_ptr_array_add(self->hiers, h);
    }
    proc_cgroup_clear(&pc);

    guint v2_bits = 0;
    if (v2 != NULL) {
        g_autofree char *ctl = cg_read(v2->own_dir, "cgroup.controllers", NULL);
        if (ctl != NULL) {
            g_auto(GStrv) names = g_strsplit_set(g_strstrip(ctl), " \n", -1);
            for (guint k = 0; names[k]; k++) {
                guint bit = controller_bit(names[k]);
                if (bit != SBX_CGROUP_CONTROLLER_CPUACCT && !(v1_bits & bit))
                    v2_bits |= bit;
            }
        }
        v2->controllers = v2_bits;
        g_ptr_array_insert(self->hiers, 0, v2); /* v2 first: it carries cgroup.kill */
    }

    if (self->root_path) {
        for (guint i = 0; i < self->hiers->len; i++) {
            Hier *h = g_ptr_array_index(self->hiers, i);
            if (!g_file_test(h->own_dir, G_FILE_TEST_IS_DIR)) {
                g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                            "configured cgroup root %s does not exist (%s)", self->root_path,
                            h->own_dir);
                return FALSE;
            }
        }
    }

    if (((v1_bits | v2_bits) & ~SBX_CGROUP_CONTROLLER_CPUACCT) == 0) {
        set_none(self, "no memory, cpu or pids controller available%s%s", v2_note ? ": " : "",
                 v2_note ? v2_note : "");
        return TRUE;
    }

    /* Create the base group in every hierarchy. */
    for (guint i = 0; i < self->hiers->len;) {
        Hier *h = g_ptr_array_index(self->hiers, i);
        h->base_dir = g_build_filename(h->own_dir, self->base_name, NULL);
        if (!mkdir_ok(h->base_dir, &local) || (h->v2 && !v2_enable_controllers(self, h, &local))) {
            if (h->controllers == 0) {
                /* a v2 tree used only for tracking is optional */
                g_debug("not using %s: %s", h->base_dir, local->message);
                g_clear_error(&local);
                g_ptr_array_remove_index(self->hiers, i);
                continue;
            }
            set_none(self, "%s", local->message);
            return TRUE;
        }
        i++;
    }

    gboolean any_v1 = v1_bits != 0, any_v2 = FALSE;
    for (guint i = 0; i < self->hiers->len; i++) {
        Hier *h = g_ptr_array_index(self->hiers, i);
        self->controllers |= h->controllers;
        any_v2 |= h->v2;
    }
    self->mode = !any_v1  ? SBX_CGROUP_MODE_V2
                 : any_v2 ? SBX_CGROUP_MODE_HYBRID
                          : SBX_CGROUP_MODE_V1;

    GString *r = g_string_new(NULL);
    g_string_append_printf(r, "cgroup mode %s:", sbx_cgroup_mode_to_string(self->mode));
    for (guint i = 0; i < self->hiers->len; i++) {
        Hier *h = g_ptr_array_index(self->hiers, i);
        g_autofree char *c = controllers_to_string(h->controllers);
        g_string_append_printf(r, " %s%s%s at %s;", h->v2 ? "v2 " : "v1 ", c,
                               h->controllers ? "" : "process tracking", h->base_dir);
    }
    guint missing =
        (SBX_CGROUP_CONTROLLER_MEMORY | SBX_CGROUP_CONTROLLER_CPU | SBX_CGROUP_CONTROLLER_PIDS) &
        ~self->controllers;
    if (missing) {
        g_autofree char *c = controllers_to_string(missing);
        g_string_append_printf(r, " no %s controller: those limits are not enforced;", c);
    }
    g_string_truncate(r, r->len - 1);
    self->reason = g_string_free(r, FALSE);
    return TRUE;
}

/* ---- manager ---- */

static void
sbx_cgroup_manager_finalize(GObject *object)
{
    SbxCgroupManager *self = SBX_CGROUP_MANAGER(object);
    g_free(self->fs_root);
    g_free(self->base_name);
    g_free(self->root_path);
    g_free(self->reason);
    g_ptr_array_unref(self->hiers);
    g_hash_table_unref(self->live);
    g_mutex_clear(&self->lock);
    G_OBJECT_CLASS(sbx_cgroup_manager_parent_class)->finalize(object);
}

static void
sbx_cgroup_manager_class_init(SbxCgroupManagerClass *klass)
{
    G_OBJECT_CLASS(klass)->finalize = sbx_cgroup_manager_finalize;
}

static void
sbx_cgroup_manager_init(SbxCgroupManager *self)
{
    self->hiers = g_ptr_array_new_with_free_func(hier_free);
    self->live = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_mutex_init(&self->lock);
}

SbxCgroupManager *
sbx_cgroup_manager_new(const SbxCgroupConfig *cfg, GError **error)
{
    static const SbxCgroupConfig defaults = {0};
    if (cfg == NULL)
        cfg = &defaults;
    const char *base = cfg->base_name ? cfg->base_name : "schedulerd";
    if (base[0] == '\0' || strchr(base, '/') || g_str_equal(base, ".") || g_str_equal(base, "..")) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "bad cgroup base name \"%s\"",
                    base);
        return NULL;
    }
    if (cfg->root_path && cfg->root_path[0] != '/') {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "cgroup root \"%s\" must be an absolute cgroup path", cfg->root_path);
        return NULL;
    }
    g_autoptr(SbxCgroupManager) self = g_object_new(SBX_TYPE_CGROUP_MANAGER, NULL);
    self->fs_root = g_strdup(cfg->fs_root ? cfg->fs_root : "/");
    self->base_name = g_strdup(base);
    self->root_path = g_strdup(cfg->root_path);
    self->plain_fs = cfg->plain_fs;
    self->destroy_timeout_ms = cfg->destroy_timeout_ms ? cfg->destroy_timeout_ms : 5000;
    if (cfg->disable) {
        set_none(self, "disabled by configuration");
        return g_steal_pointer(&self);
    }
    if (!detect(self, error))
        return NULL;
    return g_steal_pointer(&self);
}

SbxCgroupMode
sbx_cgroup_manager_get_mode(SbxCgroupManager *self)
{
    g_return_val_if_fail(SBX_IS_CGROUP_MANAGER(self), SBX_CGROUP_MODE_NONE);
    return self->mode;
}

const char *
sbx_cgroup_manager_get_reason(SbxCgroupManager *self)
{
    g_return_val_if_fail(SBX_IS_CGROUP_MANAGER(self), NULL);
    return self->reason;
}

guint
sbx_cgroup_manager_get_controllers(SbxCgroupManager *self)
{
    g_return_val_if_fail(SBX_IS_CGROUP_MANAGER(self), 0);
    return self->controllers;
}

GPtrArray *
sbx_cgroup_manager_dup_base_dirs(SbxCgroupManager *self)
{
    g_return_val_if_fail(SBX_IS_CGROUP_MANAGER(self), NULL);
    GPtrArray *out = g_ptr_array_new_with_free_func(g_free);
    for (guint i = 0; i < self->hiers->len; i++)
        g_ptr_array_add(out, g_strdup(((Hier *)g_ptr_array_index(self->hiers, i))->base_dir));
    return out;
}

const char *
sbx_cgroup_mode_to_string(SbxCgroupMode mode)
{
    switch (mode) {
    case SBX_CGROUP_MODE_NONE:
        return "none";
    case SBX_CGROUP_MODE_V2:
        return "v2";
    case SBX_CGROUP_MODE_V1:
        return "v1";
    case SBX_CGROUP_MODE_HYBRID:
        return "hybrid";
    }
    return "unknown";
}

/* ---- per-VM group ---- */

static void
sbx_cgroup_finalize(GObject *object)
{
    SbxCgroup *self = SBX_CGROUP(object);
    if (self->registered) {
        g_mutex_lock(&self->mgr->lock);
        g_hash_table_remove(self->mgr->live, self->name);
        g_mutex_unlock(&self->mgr->lock);
    }
    g_free(self->name);
    g_ptr_array_unref(self->dirs);
    g_ptr_array_unref(self->procs);
    g_clear_object(&self->mgr);
    G_OBJECT_CLASS(sbx_cgroup_parent_class)->finalize(object);
}

static void
sbx_cgroup_class_init(SbxCgroupClass *klass)
{
    G_OBJECT_CLASS(klass)->finalize = sbx_cgroup_finalize;
}

static void
sbx_cgroup_init(SbxCgroup *self)
{
    self->dirs = g_ptr_array_new_with_free_func(cgdir_free);
    self->procs = g_ptr_array_new_with_free_func(g_free);
}

static SbxCgroup *
cgroup_new(SbxCgroupManager *mgr, const char *name)
{
    SbxCgroup *cg = g_object_new(SBX_TYPE_CGROUP, NULL);
    cg->mgr = g_object_ref(mgr);
    cg->name = g_strdup(name);
    return cg;
}

static gboolean
valid_name(const char *name)
{
    return name && name[0] && !strchr(name, '/') && !g_str_equal(name, ".") &&
           !g_str_equal(name, "..") && strlen(name) < 200 && !g_str_has_prefix(name, "cgroup.");
}

static CgDir *
find_dir(SbxCgroup *self, guint controller)
{
    for (guint i = 0; i < self->dirs->len; i++) {
        CgDir *d = g_ptr_array_index(self->dirs, i);
        if (d->controllers & controller)
            return d;
    }
    return NULL;
}

static gboolean
write_limits(SbxCgroup *self, const SbxCgroupLimits *l, GError **error)
{
    SbxCgroupManager *m = self->mgr;
    CgDir *d;
    char v[64];

    if ((d = find_dir(self, SBX_CGROUP_CONTROLLER_MEMORY)) != NULL) {
        if (d->v2) {
            if (l->mem_max) {
                g_snprintf(v, sizeof v, "%" G_GUINT64_FORMAT, l->mem_max);
                if (!cg_write(m, d->path, "memory.max", v, error) ||
                    !cg_write_optional(m, d->path, "memory.swap.max", "0", error))
                    return FALSE;
            }
            if (l->mem_high) {
                g_snprintf(v, sizeof v, "%" G_GUINT64_FORMAT, l->mem_high);
                if (!cg_write(m, d->path, "memory.high", v, error))
                    return FALSE;
            }
            /* an OOM kills the whole VM, not one of its threads' siblings */
            if (!cg_write_optional(m, d->path, "memory.oom.group", "1", error))
                return FALSE;
        } else {
            if (l->mem_max) {
                g_snprintf(v, sizeof v, "%" G_GUINT64_FORMAT, l->mem_max);
                /* memsw (memory+swap) must stay >= the memory limit: write it second */
                if (!cg_write(m, d->path, "memory.limit_in_bytes", v, error) ||
                    !cg_write_optional(m, d->path, "memory.memsw.limit_in_bytes", v, error))
                    return FALSE;
            }
            if (l->mem_high) {
                g_snprintf(v, sizeof v, "%" G_GUINT64_FORMAT, l->mem_high);
                if (!cg_write(m, d->path, "memory.soft_limit_in_bytes", v, error))
                    return FALSE;
            }
        }
    }
    if (l->cpu_quota_millis && (d = find_dir(self, SBX_CGROUP_CONTROLLER_CPU)) != NULL) {
        /* millis of a core per 100 ms period; the kernel's minimum quota is 1 ms */
        guint64 quota = MAX((guint64)l->cpu_quota_millis * (CPU_PERIOD_US / 1000), 1000);
        if (d->v2) {
            g_snprintf(v, sizeof v, "%" G_GUINT64_FORMAT " %d", quota, CPU_PERIOD_US);
            if (!cg_write(m, d->path, "cpu.max", v, error))
                return FALSE;
        } else {
            g_snprintf(v, sizeof v, "%d", CPU_PERIOD_US);
            if (!cg_write(m, d->path, "cpu.cfs_period_us", v, error))
                return FALSE;
            g_snprintf(v, sizeof v, "%" G_GUINT64_FORMAT, quota);
            if (!cg_write(m, d->path, "cpu.cfs_quota_us", v, error))
                return FALSE;
        }
    }
    if (l->pids_max && (d = find_dir(self, SBX_CGROUP_CONTROLLER_PIDS)) != NULL) {
        g_snprintf(v, sizeof v, "%u", l->pids_max);
        if (!cg_write(m, d->path, "pids.max", v, error))
            return FALSE;
    }
    return TRUE;
}

static gboolean remove_dir(SbxCgroupManager *m, CgDir *d, GError **error);

SbxCgroup *
sbx_cgroup_manager_create(SbxCgroupManager *self, const char *name, const SbxCgroupLimits *limits,
                          GError **error)
{
    g_return_val_if_fail(SBX_IS_CGROUP_MANAGER(self), NULL);
    if (!valid_name(name)) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "bad cgroup name \"%s\"",
                    name ? name : "(null)");
        return NULL;
    }
    g_autoptr(SbxCgroup) cg = cgroup_new(self, name);
    g_mutex_lock(&self->lock);
    gboolean taken = g_hash_table_contains(self->live, name);
    if (!taken)
        g_hash_table_insert(self->live, g_strdup(name), cg); /* reserved: the sweep skips it */
    g_mutex_unlock(&self->lock);
    if (taken) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_EXISTS, "cgroup %s is already in use", name);
        return NULL;
    }
    cg->registered = TRUE;
    for (guint i = 0; i < self->hiers->len; i++) {
        Hier *h = g_ptr_array_index(self->hiers, i);
        g_autofree char *path = g_build_filename(h->base_dir, name, NULL);
        if (mkdir(path, 0755) != 0) {
            int err = errno;
            set_errno_error(error, err, "cannot create cgroup", path);
            goto fail;
        }
        CgDir *d = g_new0(CgDir, 1);
        d->path = g_steal_pointer(&path);
        d->controllers = h->controllers;
        d->v2 = h->v2;
        g_ptr_array_add(cg->dirs, d);
        g_ptr_array_add(cg->procs, g_build_filename(d->path, "cgroup.procs", NULL));
        if (self->plain_fs && !cg_write(self, d->path, "cgroup.procs", "", error))
            goto fail;
    }
    if (limits && !write_limits(cg, limits, error))
        goto fail;
    return g_steal_pointer(&cg);

fail:
    /* nothing has joined yet: the directories go away at once */
    for (guint i = 0; i < cg->dirs->len; i++)
        (void)remove_dir(self, g_ptr_array_index(cg->dirs, i), NULL);
    cg->destroyed = TRUE;
    return NULL;
}

typedef struct {
    char *name;
    SbxCgroupLimits limits;
    gboolean has_limits;
} CreateData;

static void
create_data_free(gpointer p)
{
    CreateData *cd = p;
    g_free(cd->name);
    g_free(cd);
}

static void
create_thread(GTask *task, gpointer source, gpointer data, GCancellable *cancellable)
{
    CreateData *cd = data;
    GError *error = NULL;
    SbxCgroup *cg = sbx_cgroup_manager_create(SBX_CGROUP_MANAGER(source), cd->name,
                                              cd->has_limits ? &cd->limits : NULL, &error);
    if (cg)
        g_task_return_pointer(task, cg, g_object_unref);
    else
        g_task_return_error(task, error);
}

void
sbx_cgroup_manager_create_async(SbxCgroupManager *self, const char *name,
                                const SbxCgroupLimits *limits, GCancellable *cancellable,
                                GAsyncReadyCallback callback, gpointer user_data)
{
    g_return_if_fail(SBX_IS_CGROUP_MANAGER(self));
    g_autoptr(GTask) task = g_task_new(self, cancellable, callback, user_data);
    g_task_set_source_tag(task, sbx_cgroup_manager_create_async);
    CreateData *cd = g_new0(CreateData, 1);
    cd->name = g_strdup(name);
    if (limits) {
        cd->limits = *limits;
        cd->has_limits = TRUE;
    }
    g_task_set_task_data(task, cd, create_data_free);
    g_task_run_in_thread(task, create_thread);
}

SbxCgroup *
sbx_cgroup_manager_create_finish(SbxCgroupManager *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), NULL);
    return g_task_propagate_pointer(G_TASK(result), error);
}

const char *
sbx_cgroup_get_name(SbxCgroup *self)
{
    g_return_val_if_fail(SBX_IS_CGROUP(self), NULL);
    return self->name;
}

GPtrArray *
sbx_cgroup_get_procs_files(SbxCgroup *self)
{
    g_return_val_if_fail(SBX_IS_CGROUP(self), NULL);
    return self->procs;
}

const char *
sbx_cgroup_get_dir(SbxCgroup *self, guint controller)
{
    g_return_val_if_fail(SBX_IS_CGROUP(self), NULL);
    CgDir *d = find_dir(self, controller);
    return d ? d->path : NULL;
}

/* cpu time: cpuacct (v1) is exact in ns; otherwise any v2 group has cpu.stat */
static gboolean
read_cpu_ns(SbxCgroup *self, guint64 *out, GError **error)
{
    g_autoptr(GError) local = NULL;
    CgDir *d;
    if ((d = find_dir(self, SBX_CGROUP_CONTROLLER_CPUACCT)) != NULL)
        return tolerate_missing(read_u64(d->path, "cpuacct.usage", out, &local), &local, error);
    for (guint i = 0; i < self->dirs->len; i++) {
        CgDir *v = g_ptr_array_index(self->dirs, i);
        guint64 usec = 0;
        if (!v->v2)
            continue;
        if (!tolerate_missing(read_keyed(v->path, "cpu.stat", "usage_usec", &usec, &local),
                              &local, error))
            return FALSE;
        *out = usec * 1000;
        break;
    }
    return TRUE;
}

gboolean
sbx_cgroup_read_usage(SbxCgroup *self, guint64 *out_cpu_ns, guint64 *out_memory_peak_bytes,
                      GError **error)
{
    g_return_val_if_fail(SBX_IS_CGROUP(self), FALSE);
    if (self->dirs->len == 0) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED, "cgroup %s: %s", self->name,
                    self->mgr->reason);
        return FALSE;
    }
    g_autoptr(GError) local = NULL;
    guint64 cpu = 0, peak = 0, cur = 0;
    CgDir *d;
    if (!read_cpu_ns(self, &cpu, error))
        return FALSE;
    if ((d = find_dir(self, SBX_CGROUP_CONTROLLER_MEMORY)) != NULL) {
        if (!tolerate_missing(read_u64(d->path, d->v2 ? "memory.peak" : "memory.max_usage_in_bytes",
                                       &peak, &local),
                              &local, error))
            return FALSE;
        if (peak == 0 && /* v2 before 5.19 has no memory.peak */
            !tolerate_missing(read_u64(d->path, d->v2 ? "memory.current" : "memory.usage_in_bytes",
                                       &cur, &local),
                              &local, error))
            return FALSE;
    }
    self->peak_seen = MAX(self->peak_seen, MAX(peak, cur));
    *out_cpu_ns = cpu;
    *out_memory_peak_bytes = self->peak_seen;
    return TRUE;
}

gboolean
sbx_cgroup_read_stats(SbxCgroup *self, SbxCgroupStats *out, GError **error)
{
    g_return_val_if_fail(SBX_IS_CGROUP(self), FALSE);
    g_return_val_if_fail(out != NULL, FALSE);
    if (self->dirs->len == 0) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED, "cgroup %s: %s", self->name,
                    self->mgr->reason);
        return FALSE;
    }
    SbxCgroupStats s = {0};
    g_autoptr(GError) local = NULL;
    CgDir *d;

    if (!read_cpu_ns(self, &s.cpu_usage_ns, error))
        return FALSE;
    if ((d = find_dir(self, SBX_CGROUP_CONTROLLER_CPU)) != NULL &&
        !tolerate_missing(read_keyed(d->path, "cpu.stat", "nr_throttled", &s.nr_throttled, &local),
                          &local, error))
        return FALSE;

    if ((d = find_dir(self, SBX_CGROUP_CONTROLLER_MEMORY)) != NULL) {
        const char *cur = d->v2 ? "memory.current" : "memory.usage_in_bytes";
        const char *peak = d->v2 ? "memory.peak" : "memory.max_usage_in_bytes";
        const char *oom = d->v2 ? "memory.events" : "memory.oom_control";
        if (!tolerate_missing(read_u64(d->path, cur, &s.memory_current_bytes, &local), &local,
                              error) ||
            !tolerate_missing(read_u64(d->path, peak, &s.memory_peak_bytes, &local), &local,
                              error) ||
            !tolerate_missing(read_keyed(d->path, oom, "oom_kill", &s.oom_kills, &local), &local,
                              error))
            return FALSE;
    }
    if ((d = find_dir(self, SBX_CGROUP_CONTROLLER_PIDS)) != NULL) {
        if (!tolerate_missing(read_u64(d->path, "pids.current", &s.pids_current, &local), &local,
                              error) ||
            !tolerate_missing(read_keyed(d->path, "pids.events", "max", &s.pids_max_hits, &local),
                              &local, error))
            return FALSE;
    }
    /* without memory.peak (v2 before 5.19) the peak is the highest value polled */
    self->peak_seen = MAX(self->peak_seen, MAX(s.memory_peak_bytes, s.memory_current_bytes));
    s.memory_peak_bytes = self->peak_seen;
    *out = s;
    return TRUE;
}

/* ---- teardown ---- */

static GArray *
parse_pids(const char *text)
{
    GArray *pids = g_array_new(FALSE, FALSE, sizeof(pid_t));
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    for (guint i = 0; lines[i]; i++) {
        guint64 v;
        if (g_ascii_string_to_unsigned(g_strstrip(lines[i]), 10, 1, G_MAXINT32, &v, NULL)) {
            pid_t pid = (pid_t)v;
            g_array_append_val(pids, pid);
        }
    }
    return pids;
}

static gboolean
pids_contain(GArray *pids, pid_t pid)
{
    for (guint i = 0; i < pids->len; i++)
        if (g_array_index(pids, pid_t, i) == pid)
            return TRUE;
    return FALSE;
}

/* SIGKILL every member listed in @dir's cgroup.procs; *out_listed = how many were
 * listed. A pid is signalled through a pidfd, and only if it is still listed after
 * the pidfd was opened: a pid recycled by an unrelated process between the read and
 * the signal is never hit (the pidfd of a reaped process fails with ESRCH). Never
 * pid 1 or the daemon itself, whatever the file says. */
static gboolean
kill_members(const char *dir, guint *out_listed, GError **error)
{
    g_autofree char *text = cg_read(dir, "cgroup.procs", error);
    if (text == NULL)
        return FALSE;
    g_autoptr(GArray) pids = parse_pids(text);
    *out_listed = pids->len;
    if (pids->len == 0)
        return TRUE;

    g_autoptr(GArray) fds = g_array_new(FALSE, FALSE, sizeof(int));
    gboolean no_pidfd = FALSE;
    for (guint i = 0; i < pids->len; i++) {
        pid_t pid = g_array_index(pids, pid_t, i);
        int fd = -1;
        if (pid > 1 && pid != getpid() && !no_pidfd) {
            fd = (int)syscall(SYS_pidfd_open, pid, 0);
            if (fd < 0 && errno == ENOSYS)
                no_pidfd = TRUE; /* kernel < 5.3: plain kill() below */
        }
        g_array_append_val(fds, fd);
    }
    g_autofree char *again = cg_read(dir, "cgroup.procs", NULL);
    g_autoptr(GArray) still = parse_pids(again ? again : "");
    for (guint i = 0; i < pids->len; i++) {
        pid_t pid = g_array_index(pids, pid_t, i);
        int fd = g_array_index(fds, int, i);
        if (pid > 1 && pid != getpid() && pids_contain(still, pid)) {
            if (fd >= 0)
                (void)syscall(SYS_pidfd_send_signal, fd, SIGKILL, NULL, 0);
            else if (no_pidfd)
                (void)kill(pid, SIGKILL);
        }
        if (fd >= 0)
            (void)close(fd);
    }
    return TRUE;
}

static gboolean
remove_dir(SbxCgroupManager *m, CgDir *d, GError **error)
{
    if (m->plain_fs) {
        /* a plain directory tree standing in for cgroupfs: drop the interface files */
        g_autoptr(GDir) dir = g_dir_open(d->path, 0, NULL);
        const char *e;
        while (dir && (e = g_dir_read_name(dir)) != NULL) {
            g_autofree char *p = g_build_filename(d->path, e, NULL);
            if (!g_file_test(p, G_FILE_TEST_IS_DIR))
                (void)unlink(p);
        }
    }
    if (rmdir(d->path) == 0 || errno == ENOENT) {
        d->removed = TRUE;
        return TRUE;
    }
    set_errno_error(error, errno, "cannot remove cgroup", d->path);
    return FALSE;
}

gboolean
sbx_cgroup_try_destroy(SbxCgroup *self, GError **error)
{
    g_return_val_if_fail(SBX_IS_CGROUP(self), FALSE);
    SbxCgroupManager *m = self->mgr;
    guint busy = 0;

    if (self->destroyed)
        return TRUE;
    /* v2 (also the tracking tree in hybrid mode): one atomic write kills all, forks included */
    for (guint i = 0; i < self->dirs->len; i++) {
        CgDir *d = g_ptr_array_index(self->dirs, i);
        if (d->v2 && !d->removed)
            (void)cg_write_optional(m, d->path, "cgroup.kill", "1", NULL);
    }
    for (guint i = 0; i < self->dirs->len; i++) {
        CgDir *d = g_ptr_array_index(self->dirs, i);
        g_autoptr(GError) local = NULL;
        if (d->removed)
            continue;
        guint listed = 0;
        /* v1, or v2 without cgroup.kill: SIGKILL each member (the pids cap bounds forks) */
        if (!kill_members(d->path, &listed, &local)) {
            if (g_error_matches(local, G_IO_ERROR, G_IO_ERROR_NOT_FOUND)) {
                d->removed = !g_file_test(d->path, G_FILE_TEST_EXISTS);
                if (d->removed)
                    continue;
            }
            g_propagate_prefixed_error(error, g_steal_pointer(&local), "cgroup %s: ", self->name);
            return FALSE;
        }
        if (listed > 0) {
            busy++;
            continue;
        }
        if (!remove_dir(m, d, &local)) {
            if (!g_error_matches(local, G_IO_ERROR, G_IO_ERROR_BUSY)) {
                g_propagate_prefixed_error(error, g_steal_pointer(&local),
                                           "cgroup %s: ", self->name);
                return FALSE;
            }
            busy++;
        }
    }
    if (busy) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_BUSY,
                    "cgroup %s still has processes in %u hierarchies", self->name, busy);
        return FALSE;
    }
    self->destroyed = TRUE;
    if (self->registered) {
        g_mutex_lock(&m->lock);
        g_hash_table_remove(m->live, self->name);
        g_mutex_unlock(&m->lock);
        self->registered = FALSE;
    }
    return TRUE;
}

typedef struct {
    GSource *timer;
    gint64 deadline;
    guint interval_ms;
} DestroyData;

static void
destroy_data_free(gpointer p)
{
    DestroyData *dd = p;
    if (dd->timer) {
        g_source_destroy(dd->timer);
        g_source_unref(dd->timer);
    }
    g_free(dd);
}

static gboolean destroy_tick(gpointer user_data);

/* One try_destroy in a worker thread: mkdir/rmdir on cgroupfs take cgroup_mutex and
 * can stall for milliseconds under load, which the main loop must not. */
static void
destroy_attempt_thread(GTask *inner, gpointer source, gpointer data, GCancellable *cancellable)
{
    GError *error = NULL;
    if (sbx_cgroup_try_destroy(SBX_CGROUP(source), &error))
        g_task_return_boolean(inner, TRUE);
    else
        g_task_return_error(inner, error);
}

static void
destroy_attempt_done(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GTask) task = user_data;
    SbxCgroup *self = SBX_CGROUP(source);
    DestroyData *dd = g_task_get_task_data(task);
    g_autoptr(GError) error = NULL;

    if (g_task_propagate_boolean(G_TASK(res), &error)) {
        g_task_return_boolean(task, TRUE);
        return;
    }
    if (g_task_return_error_if_cancelled(task))
        return;
    if (!g_error_matches(error, G_IO_ERROR, G_IO_ERROR_BUSY) ||
        g_get_monotonic_time() >= dd->deadline) {
        if (g_error_matches(error, G_IO_ERROR, G_IO_ERROR_BUSY))
            g_prefix_error(&error, "after %u ms: ", self->mgr->destroy_timeout_ms);
        g_task_return_error(task, g_steal_pointer(&error));
        return;
    }
    /* back off 2, 4, ... 64 ms: exits after SIGKILL usually take well under that */
    dd->interval_ms = MIN(dd->interval_ms * 2, 64);
    dd->timer = g_timeout_source_new(dd->interval_ms);
    g_source_set_callback(dd->timer, destroy_tick, g_object_ref(task), g_object_unref);
    g_source_attach(dd->timer, g_task_get_context(task));
}

static void
destroy_attempt(GTask *task)
{
    if (g_task_return_error_if_cancelled(task))
        return;
    GTask *inner =
        g_task_new(g_task_get_source_object(task), NULL, destroy_attempt_done, g_object_ref(task));
    g_task_run_in_thread(inner, destroy_attempt_thread);
    g_object_unref(inner);
}

static gboolean
destroy_tick(gpointer user_data)
{
    GTask *task = user_data;
    DestroyData *dd = g_task_get_task_data(task);
    /* the source is being dispatched: let destroy_attempt replace it */
    g_clear_pointer(&dd->timer, g_source_unref);
    destroy_attempt(task);
    return G_SOURCE_REMOVE;
}

void
sbx_cgroup_destroy_async(SbxCgroup *self, GCancellable *cancellable, GAsyncReadyCallback callback,
                         gpointer user_data)
{
    g_return_if_fail(SBX_IS_CGROUP(self));
    g_autoptr(GTask) task = g_task_new(self, cancellable, callback, user_data);
    g_task_set_source_tag(task, sbx_cgroup_destroy_async);
    DestroyData *dd = g_new0(DestroyData, 1);
    dd->deadline = g_get_monotonic_time() + (gint64)self->mgr->destroy_timeout_ms * 1000;
    dd->interval_ms = 1;
    g_task_set_task_data(task, dd, destroy_data_free);
    destroy_attempt(task);
}

gboolean
sbx_cgroup_destroy_finish(SbxCgroup *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

/* ---- orphan sweep ---- */

typedef struct {
    guint pending;
    GPtrArray *removed; /* names */
    GString *failed;
} SweepData;

static void
sweep_data_free(gpointer p)
{
    SweepData *sd = p;
    g_ptr_array_unref(sd->removed);
    g_string_free(sd->failed, TRUE);
    g_free(sd);
}

static void
sweep_finish_if_done(GTask *task)
{
    SweepData *sd = g_task_get_task_data(task);
    if (sd->pending > 0)
        return;
    if (sd->failed->len > 0)
        g_task_return_new_error(task, G_IO_ERROR, G_IO_ERROR_BUSY,
                                "orphan cgroups left in place: %s", sd->failed->str);
    else
        g_task_return_pointer(task, g_ptr_array_ref(sd->removed),
                              (GDestroyNotify)g_ptr_array_unref);
}

static void
sweep_one_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(GTask) task = user_data;
    SbxCgroup *cg = SBX_CGROUP(source);
    SweepData *sd = g_task_get_task_data(task);
    g_autoptr(GError) error = NULL;

    if (sbx_cgroup_destroy_finish(cg, res, &error))
        g_ptr_array_add(sd->removed, g_strdup(cg->name));
    else
        g_string_append_printf(sd->failed, "%s%s", sd->failed->len ? "; " : "", error->message);
    sd->pending--;
    sweep_finish_if_done(task);
}

void
sbx_cgroup_manager_sweep_orphans_async(SbxCgroupManager *self, const char *prefix,
                                       GCancellable *cancellable, GAsyncReadyCallback callback,
                                       gpointer user_data)
{
    g_return_if_fail(SBX_IS_CGROUP_MANAGER(self));
    g_autoptr(GTask) task = g_task_new(self, cancellable, callback, user_data);
    g_task_set_source_tag(task, sbx_cgroup_manager_sweep_orphans_async);
    SweepData *sd = g_new0(SweepData, 1);
    sd->removed = g_ptr_array_new_with_free_func(g_free);
    sd->failed = g_string_new(NULL);
    g_task_set_task_data(task, sd, sweep_data_free);
    if (prefix == NULL)
        prefix = "vm-";

    /* name -> SbxCgroup adopting the directories found in every hierarchy */
    g_autoptr(GHashTable) found =
        g_hash_table_new_full(g_str_hash, g_str_equal, NULL, g_object_unref);
    g_autoptr(GPtrArray) order = g_ptr_array_new();
    for (guint i = 0; i < self->hiers->len; i++) {
        Hier *h = g_ptr_array_index(self->hiers, i);
        g_autoptr(GDir) dir = g_dir_open(h->base_dir, 0, NULL);
        const char *e;
        while (dir && (e = g_dir_read_name(dir)) != NULL) {
            if (!g_str_has_prefix(e, prefix) || !valid_name(e))
                continue;
            g_mutex_lock(&self->lock);
            gboolean live = g_hash_table_contains(self->live, e);
            g_mutex_unlock(&self->lock);
            if (live)
                continue;
            g_autofree char *p = g_build_filename(h->base_dir, e, NULL);
            if (!g_file_test(p, G_FILE_TEST_IS_DIR))
                continue;
            SbxCgroup *cg = g_hash_table_lookup(found, e);
            if (cg == NULL) {
                cg = cgroup_new(self, e);
                g_hash_table_insert(found, cg->name, cg);
                g_ptr_array_add(order, cg);
            }
            CgDir *d = g_new0(CgDir, 1);
            d->path = g_steal_pointer(&p);
            d->controllers = h->controllers;
            d->v2 = h->v2;
            g_ptr_array_add(cg->dirs, d);
        }
    }
    sd->pending = order->len + 1; /* +1 until every destroy has started */
    for (guint i = 0; i < order->len; i++)
        sbx_cgroup_destroy_async(g_ptr_array_index(order, i), cancellable, sweep_one_cb,
                                 g_object_ref(task));
    sd->pending--;
    sweep_finish_if_done(task);
}

GPtrArray *
sbx_cgroup_manager_sweep_orphans_finish(SbxCgroupManager *self, GAsyncResult *result,
                                        GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), NULL);
    return g_task_propagate_pointer(G_TASK(result), error);
}
