/* SPDX-License-Identifier: MIT
 *
 * schedulerctl: the command-line client. `run` sends code to schedulerd over
 * D-Bus (the program's output goes straight to our stdout/stderr fds, passed
 * to the daemon), or, when no daemon owns the bus name (or with --embedded),
 * runs the same scheduler core in-process. Also `status`, `doctor`, `version`,
 * and `session ...` (a VM kept across commands, daemon mode only); `run
 * --upload/--download` goes through a session in both modes.
 * Exit status: the sandbox's exit code; 124 on timeout; 125 when the
 * scheduler could not run the code; 2 for usage errors.
 */
#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <stdio.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

#include <gio/gio.h>
#include <glib/gstdio.h>
#include <gio/gunixfdlist.h>
#include <gio/gunixinputstream.h>
#include <gio/gunixoutputstream.h>
#include <json-glib/json-glib.h>

#include "data/sbx-dbus-generated.h"
#include "scheduler/sbx-error.h"
#include "scheduler/sbx-manager.h"
#include "scheduler/sbx-session.h"

#define BUS_NAME "org.schedulerd.Scheduler1"
#define OBJECT_PATH "/org/schedulerd/Scheduler1"

#define EXIT_USAGE 2
#define EXIT_TIMEOUT 124
#define EXIT_SCHEDULER 125

typedef struct {
    /* global */
    gboolean embedded;
    gboolean system_bus;
    char *config;
    /* run */
    char **codes;
    char *language;
    int timeout;
    int memory;
    char **env;
    char *network;
    char **allow_domains;
    char **expose;
    gboolean allow_http;
    gboolean json;
    gboolean quiet;
    char **uploads;   /* LOCAL:GUEST */
    char **downloads; /* GUEST[:LOCAL] */
} Options;

static Options opt = {.timeout = -1, .memory = -1};

static void G_GNUC_PRINTF(1, 2) G_GNUC_NORETURN
usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_printerr("schedulerctl: %s (see schedulerctl --help)\n", msg);
    exit(EXIT_USAGE);
}

/* ---- building the request --------------------------------------------- */

static gboolean
language_from_path(const char *path, SbxLanguage *out)
{
    if (g_str_has_suffix(path, ".py"))
        *out = SBX_LANGUAGE_PYTHON;
    else if (g_str_has_suffix(path, ".js") || g_str_has_suffix(path, ".mjs") ||
             g_str_has_suffix(path, ".cjs"))
        *out = SBX_LANGUAGE_JAVASCRIPT;
    else if (g_str_has_suffix(path, ".sh"))
        *out = SBX_LANGUAGE_RAW;
    else
        return FALSE;
    return TRUE;
}

static GBytes *
read_all_stdin(void)
{
    g_autoptr(GInputStream) in = g_unix_input_stream_new(0, FALSE);
    g_autoptr(GOutputStream) mem = g_memory_output_stream_new_resizable();
    g_autoptr(GError) error = NULL;
    if (g_output_stream_splice(mem, in, G_OUTPUT_STREAM_SPLICE_CLOSE_TARGET, NULL, &error) < 0)
        usage_error("reading code from stdin: %s", error->message);
    return g_memory_output_stream_steal_as_bytes(G_MEMORY_OUTPUT_STREAM(mem));
}

static SbxRunSpec *
build_spec(const SbxConfig *cfg, int argc, char **argv)
{
    g_autoptr(SbxRunSpec) spec = sbx_run_spec_new(cfg);
    gboolean have_lang = FALSE;
    g_autoptr(GError) error = NULL;

    if (opt.language) {
        if (!sbx_validate_language(opt.language, &spec->language, &error))
            usage_error("%s", error->message);
        have_lang = TRUE;
    }
    if (opt.codes && argc > 1)
        usage_error("give the code either with -c or as an argument, not both");
    if (argc > 2)
        usage_error("unexpected argument '%s'", argv[2]);
    if (opt.codes) {
        g_autofree char *joined = g_strjoinv("\n", opt.codes);
        gsize n = strlen(joined);
        spec->code = g_bytes_new_take(g_steal_pointer(&joined), n);
    } else if (argc == 2 && strcmp(argv[1], "-") == 0) {
        spec->code = read_all_stdin();
    } else if (argc == 2 && g_file_test(argv[1], G_FILE_TEST_IS_REGULAR)) {
        char *data = NULL;
        gsize n = 0;
        if (!g_file_get_contents(argv[1], &data, &n, &error))
            usage_error("%s", error->message);
        spec->code = g_bytes_new_take(data, n);
        SbxLanguage from_ext;
        if (!have_lang && language_from_path(argv[1], &from_ext))
            spec->language = from_ext;
    } else if (argc == 2) {
        spec->code = g_bytes_new(argv[1], strlen(argv[1]));
    } else {
        usage_error("no code given: pass it as an argument, with -c, as a file, or '-' for stdin");
    }
    if (opt.timeout >= 0)
        spec->timeout_s = (guint)opt.timeout;
    if (opt.memory >= 0)
        spec->memory_mb = (guint)opt.memory;
    for (guint i = 0; opt.env && opt.env[i]; i++) {
        const char *eq = strchr(opt.env[i], '=');
        if (eq == NULL || eq == opt.env[i])
            usage_error("-e takes KEY=VALUE, got '%s'", opt.env[i]);
        g_hash_table_replace(spec->env, g_strndup(opt.env[i], (gsize)(eq - opt.env[i])),
                             g_strdup(eq + 1));
    }
    /* network: --allow-domain implies "allow", --expose alone implies "expose" */
    if (opt.network && !gvp_mode_from_string(opt.network, &spec->network, &error))
        usage_error("--network: %s", error->message);
    if (!opt.network && opt.allow_domains)
        spec->network = GVP_MODE_ALLOW;
    else if (!opt.network && opt.expose)
        spec->network = GVP_MODE_EXPOSE;
    spec->allow_domains = g_strdupv(opt.allow_domains);
    spec->allow_http = opt.allow_http;
    for (guint i = 0; opt.expose && opt.expose[i]; i++) {
        GvpPort p;
        if (!gvp_port_parse(opt.expose[i], &p, &error))
            usage_error("--expose: %s", error->message);
        g_array_append_val(spec->expose, p);
    }
    return g_steal_pointer(&spec);
}

/* ---- output ----------------------------------------------------------- */

static int
exit_status_for(const SbxRunResult *r)
{
    if (r->timed_out || r->exit_code < 0)
        return EXIT_TIMEOUT;
    return r->exit_code & 0xff;
}

static void
print_json(const SbxRunResult *r, GBytes *out, GBytes *err, const GError *error)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "stdout");
    json_builder_add_string_value(b, out ? g_bytes_get_data(out, NULL) : "");
    json_builder_set_member_name(b, "stderr");
    json_builder_add_string_value(b, err ? g_bytes_get_data(err, NULL) : "");
    if (r)
        sbx_run_result_add_json(r, b);
    if (error) {
        json_builder_set_member_name(b, "error");
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "name");
        json_builder_add_string_value(
            b, error->domain == SBX_ERROR ? sbx_error_code_to_name(error->code) : "Failed");
        json_builder_set_member_name(b, "message");
        json_builder_add_string_value(b, error->message);
        json_builder_end_object(b);
    }
    json_builder_end_object(b);
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autoptr(JsonNode) root = json_builder_get_root(b);
    json_generator_set_root(gen, root);
    g_autofree char *text = json_generator_to_data(gen, NULL);
    g_print("%s\n", text);
}

static void
print_error(const GError *error)
{
    const char *name = error->domain == SBX_ERROR ? sbx_error_code_to_name(error->code) : NULL;
    if (g_dbus_error_is_remote_error(error)) {
        g_autofree char *remote = g_dbus_error_get_remote_error(error);
        g_autofree char *msg = g_strdup(error->message);
        g_dbus_error_strip_remote_error((GError *)error);
        g_printerr("schedulerctl: %s: %s\n", remote ? strrchr(remote, '.') + 1 : "Error",
                   error->message);
        return;
    }
    g_printerr("schedulerctl: %s%s%s\n", name ? name : "", name ? ": " : "", error->message);
}

/* NUL-terminated copy of a memory stream's contents (JSON needs a C string). */
static GBytes *
mem_contents(GOutputStream *mem)
{
    if (mem == NULL)
        return NULL;
    g_output_stream_write_all(mem, "", 1, NULL, NULL, NULL);
    g_output_stream_close(mem, NULL, NULL);
    return g_memory_output_stream_steal_as_bytes(G_MEMORY_OUTPUT_STREAM(mem));
}

/* ---- embedded mode ---------------------------------------------------- */

typedef struct {
    GMainLoop *loop;
    SbxRunResult *result;
    GError *error;
    gboolean ok;
    gboolean tty;
} Wait;

static void
progress_cb(SbxRunStage stage, gpointer user_data)
{
    Wait *w = user_data;
    if (!w->tty)
        return;
    switch (stage) {
    case SBX_RUN_STAGE_ADMISSION:
        g_printerr("\r\033[Kwaiting for capacity…");
        break;
    case SBX_RUN_STAGE_BOOT:
        g_printerr("\r\033[Kbooting microVM…");
        break;
    case SBX_RUN_STAGE_EXEC:
    case SBX_RUN_STAGE_TEARDOWN:
        g_printerr("\r\033[K");
        w->tty = FALSE;
        break;
    }
}

static void
started_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    Wait *w = data;
    w->ok = sbx_manager_start_finish(SBX_MANAGER(src), res, &w->error);
    g_main_loop_quit(w->loop);
}

static void
ran_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    Wait *w = data;
    w->result = sbx_manager_run_finish(SBX_MANAGER(src), res, &w->error);
    g_main_loop_quit(w->loop);
}

static void
shut_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    Wait *w = data;
    (void)sbx_manager_shutdown_finish(SBX_MANAGER(src), res, NULL);
    g_main_loop_quit(w->loop);
}

static SbxConfig *
load_config(void)
{
    g_autoptr(SbxConfig) cfg = sbx_config_new_default();
    g_autoptr(GError) error = NULL;
    g_autofree char *sys = g_build_filename(SBX_SYSCONFDIR, "schedulerd", "schedulerd.conf", NULL);
    const char *path = opt.config ? opt.config : (g_file_test(sys, G_FILE_TEST_EXISTS) ? sys : NULL);
    if (path && !sbx_config_load_file(cfg, path, &error))
        usage_error("%s", error->message);
    if (!sbx_config_apply_env(cfg, &error))
        usage_error("%s", error->message);
    if (getuid() != 0 && opt.embedded) {
        /* embedded runs of a normal user keep their state in their runtime dir */
    }
    return g_steal_pointer(&cfg);
}

static gboolean
start_manager(SbxManager *mgr, GMainLoop *loop, GError **error)
{
    Wait w = {.loop = loop};
    sbx_manager_start_async(mgr, NULL, started_cb, &w);
    g_main_loop_run(loop);
    if (!w.ok) {
        g_propagate_error(error, w.error);
        return FALSE;
    }
    return TRUE;
}

static void
stop_manager(SbxManager *mgr, GMainLoop *loop)
{
    Wait w = {.loop = loop};
    sbx_manager_shutdown_async(mgr, shut_cb, &w);
    g_main_loop_run(loop);
}

static int
run_embedded(SbxRunSpec *spec, SbxConfig *cfg)
{
    g_autoptr(GMainLoop) loop = g_main_loop_new(NULL, FALSE);
    g_autoptr(SbxManager) mgr = sbx_manager_new(cfg);
    g_autoptr(GError) error = NULL;
    g_autoptr(GOutputStream) out = NULL, err = NULL;

    if (!start_manager(mgr, loop, &error)) {
        if (opt.json)
            print_json(NULL, NULL, NULL, error);
        else
            print_error(error);
        return EXIT_SCHEDULER;
    }
    if (opt.json) {
        out = g_memory_output_stream_new_resizable();
        err = g_memory_output_stream_new_resizable();
    } else {
        out = g_unix_output_stream_new(STDOUT_FILENO, FALSE);
        err = g_unix_output_stream_new(STDERR_FILENO, FALSE);
    }
    Wait w = {.loop = loop, .tty = !opt.quiet && !opt.json && isatty(STDERR_FILENO)};
    sbx_manager_run_async(mgr, spec, out, err, progress_cb, &w, NULL, ran_cb, &w);
    g_main_loop_run(loop);
    progress_cb(SBX_RUN_STAGE_TEARDOWN, &w);
    stop_manager(mgr, loop);

    int status = w.result ? exit_status_for(w.result) : EXIT_SCHEDULER;
    if (opt.json) {
        g_autoptr(GBytes) o = mem_contents(out);
        g_autoptr(GBytes) e = mem_contents(err);
        print_json(w.result, o, e, w.error);
    } else if (w.error) {
        print_error(w.error);
    } else if (w.result->timed_out && !opt.quiet) {
        g_printerr("schedulerctl: timed out after %u s\n", spec->timeout_s);
    } else if (w.result->output_limit[0] && !opt.quiet) {
        g_printerr("schedulerctl: %s exceeded its limit and was truncated\n",
                   w.result->output_limit);
    }
    g_clear_pointer(&w.result, sbx_run_result_free);
    g_clear_error(&w.error);
    return status;
}

/* ---- daemon mode ------------------------------------------------------ */

static GDBusConnection *
daemon_connection(void)
{
    if (opt.embedded)
        return NULL;
    g_autoptr(GDBusConnection) bus =
        g_bus_get_sync(opt.system_bus ? G_BUS_TYPE_SYSTEM : G_BUS_TYPE_SESSION, NULL, NULL);
    if (bus == NULL)
        return NULL;
    g_autoptr(GVariant) owner = g_dbus_connection_call_sync(
        bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
        "NameHasOwner", g_variant_new("(s)", BUS_NAME), G_VARIANT_TYPE("(b)"),
        G_DBUS_CALL_FLAGS_NONE, 5000, NULL, NULL);
    gboolean has = FALSE;
    if (owner)
        g_variant_get(owner, "(b)", &has);
    return has ? g_steal_pointer(&bus) : NULL;
}

/* Run (main object) and Session.Exec share the call: (a{sv} h h) -> a{sv}. */
static int
exec_daemon(GDBusConnection *bus, const char *path, const char *iface, const char *method,
            GVariant *spec_v)
{
    g_autoptr(GError) error = NULL;
    int out_fd = STDOUT_FILENO, err_fd = STDERR_FILENO;
    g_autofree char *out_path = NULL, *err_path = NULL;
    if (opt.json) {
        /* capture through temporary files the daemon writes to */
        out_fd = g_file_open_tmp("sbx-out-XXXXXX", &out_path, &error);
        err_fd = out_fd >= 0 ? g_file_open_tmp("sbx-err-XXXXXX", &err_path, &error) : -1;
        if (out_fd < 0 || err_fd < 0) {
            print_error(error);
            return EXIT_SCHEDULER;
        }
    }
    g_autoptr(GUnixFDList) fds = g_unix_fd_list_new();
    int h_out = g_unix_fd_list_append(fds, out_fd, &error);
    int h_err = h_out >= 0 ? g_unix_fd_list_append(fds, err_fd, &error) : -1;
    if (h_err < 0) {
        print_error(error);
        return EXIT_SCHEDULER;
    }
    g_autoptr(GUnixFDList) out_fds = NULL;
    g_autoptr(GVariant) reply = g_dbus_connection_call_with_unix_fd_list_sync(
        bus, BUS_NAME, path, iface, method, g_variant_new("(@a{sv}hh)", spec_v, h_out, h_err),
        G_VARIANT_TYPE("(a{sv})"), G_DBUS_CALL_FLAGS_NONE, G_MAXINT, fds, &out_fds, NULL, &error);
    g_autoptr(SbxRunResult) result = NULL;
    if (reply) {
        g_autoptr(GVariant) dict = g_variant_get_child_value(reply, 0);
        result = sbx_run_result_new();
        if (!sbx_run_result_from_variant(result, dict, &error))
            g_clear_pointer(&result, sbx_run_result_free);
    }
    if (opt.json) {
        g_autofree char *o = NULL, *e = NULL;
        g_file_get_contents(out_path, &o, NULL, NULL);
        g_file_get_contents(err_path, &e, NULL, NULL);
        unlink(out_path);
        unlink(err_path);
        close(out_fd);
        close(err_fd);
        g_autoptr(GBytes) ob = g_bytes_new(o ? o : "", o ? strlen(o) + 1 : 1);
        g_autoptr(GBytes) eb = g_bytes_new(e ? e : "", e ? strlen(e) + 1 : 1);
        if (error && g_dbus_error_is_remote_error(error)) {
            g_autofree char *remote = g_dbus_error_get_remote_error(error);
            g_dbus_error_strip_remote_error(error);
            (void)remote;
        }
        print_json(result, ob, eb, error);
    } else if (error) {
        print_error(error);
    }
    return result ? exit_status_for(result) : EXIT_SCHEDULER;
}

static int
run_daemon(GDBusConnection *bus, SbxRunSpec *spec)
{
    return exec_daemon(bus, OBJECT_PATH, BUS_NAME, "Run", sbx_run_spec_to_variant(spec));
}

/* ---- sessions and file transfer --------------------------------------- */

#define SESSION_IFACE BUS_NAME ".Session"
#define SESSIONS_NEED_DAEMON                                                                   \
    "sessions need schedulerd (a session outlives this command, the embedded scheduler "      \
    "does not): start it with `schedulerd &` or `systemctl --user start schedulerd`, then "    \
    "retry without --embedded"

/* One session, through schedulerd (bus + path) or in-process (mgr + session):
 * `run --upload/--download` works in both modes, `session ...` in daemon mode. */
typedef struct {
    GDBusConnection *bus;
    char *path;
    GMainLoop *loop;
    SbxManager *mgr;
    SbxSession *session;
} Sess;

typedef struct {
    GMainLoop *loop;
    GAsyncResult *res;
} Pending;

static void
pending_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Pending *p = user_data;
    p->res = g_object_ref(res);
    g_main_loop_quit(p->loop);
}

/* A D-Bus error for a person: "no such session" instead of UnknownObject. */
static void
fix_remote_error(GError *error, const char *path)
{
    if (error == NULL || !g_dbus_error_is_remote_error(error))
        return;
    g_autofree char *remote = g_dbus_error_get_remote_error(error);
    if (g_strcmp0(remote, "org.freedesktop.DBus.Error.UnknownObject") == 0 ||
        g_strcmp0(remote, "org.freedesktop.DBus.Error.UnknownMethod") == 0) {
        g_dbus_error_strip_remote_error(error);
        g_free(error->message);
        error->domain = SBX_ERROR;
        error->code = SBX_ERROR_NOT_FOUND;
        error->message = g_strdup_printf(
            "no session at %s (wrong id, or it was closed more than a few minutes ago)",
            path ? path : "?");
    } else if (g_str_has_prefix(remote, BUS_NAME ".Error.")) {
        /* registered: the GError already carries SBX_ERROR + code */
        g_dbus_error_strip_remote_error(error);
    }
}

/* A builder holding @dict's entries except @key (@dict may be floating). */
static void
dict_builder_without(GVariantBuilder *b, GVariant *dict, const char *key)
{
    g_autoptr(GVariant) d = g_variant_ref_sink(dict);
    GVariantIter it;
    const char *k;
    GVariant *value;
    g_variant_builder_init(b, G_VARIANT_TYPE_VARDICT);
    g_variant_iter_init(&it, d);
    while (g_variant_iter_next(&it, "{&sv}", &k, &value)) {
        if (strcmp(k, key) != 0)
            g_variant_builder_add(b, "{sv}", k, value);
        g_variant_unref(value);
    }
}

static GVariant *
session_call(Sess *s, const char *method, GVariant *params, const char *reply_type,
             GUnixFDList *fds, GError **error)
{
    GVariant *reply = g_dbus_connection_call_with_unix_fd_list_sync(
        s->bus, BUS_NAME, s->path, SESSION_IFACE, method, params,
        reply_type ? G_VARIANT_TYPE(reply_type) : NULL, G_DBUS_CALL_FLAGS_NONE, G_MAXINT, fds,
        NULL, NULL, error);
    if (reply == NULL)
        fix_remote_error(*error, s->path);
    return reply;
}

static gboolean
sess_create(Sess *s, const SbxRunSpec *spec, guint idle_timeout_s, gboolean detach,
            GError **error)
{
    if (s->bus) {
        GVariantBuilder b;
        dict_builder_without(&b, sbx_run_spec_to_variant(spec), "code");
        if (idle_timeout_s)
            g_variant_builder_add(&b, "{sv}", "idle_timeout", g_variant_new_uint32(idle_timeout_s));
        if (detach)
            g_variant_builder_add(&b, "{sv}", "detach", g_variant_new_boolean(TRUE));
        g_autoptr(GVariant) reply = g_dbus_connection_call_sync(
            s->bus, BUS_NAME, OBJECT_PATH, BUS_NAME, "CreateSession", g_variant_new("(a{sv})", &b),
            G_VARIANT_TYPE("(o)"), G_DBUS_CALL_FLAGS_NONE, G_MAXINT, NULL, error);
        if (reply == NULL) {
            fix_remote_error(*error, NULL);
            return FALSE;
        }
        g_variant_get(reply, "(o)", &s->path);
        return TRUE;
    }
    Pending p = {.loop = s->loop};
    sbx_manager_create_session_async(s->mgr, spec, idle_timeout_s, NULL, pending_cb, &p);
    g_main_loop_run(s->loop);
    s->session = sbx_manager_create_session_finish(s->mgr, p.res, error);
    g_object_unref(p.res);
    return s->session != NULL;
}

/* Exec in the session; output to @out_fd / @err_fd (not closed). */
static SbxRunResult *
sess_exec(Sess *s, const SbxRunSpec *spec, int out_fd, int err_fd, GError **error)
{
    if (s->bus) {
        g_autoptr(GUnixFDList) fds = g_unix_fd_list_new();
        int h_out = g_unix_fd_list_append(fds, out_fd, error);
        int h_err = h_out >= 0 ? g_unix_fd_list_append(fds, err_fd, error) : -1;
        if (h_err < 0)
            return NULL;
        g_autoptr(GVariant) reply = session_call(
            s, "Exec", g_variant_new("(@a{sv}hh)", sbx_run_spec_to_variant(spec), h_out, h_err),
            "(a{sv})", fds, error);
        if (reply == NULL)
            return NULL;
        g_autoptr(GVariant) dict = g_variant_get_child_value(reply, 0);
        g_autoptr(SbxRunResult) r = sbx_run_result_new();
        if (!sbx_run_result_from_variant(r, dict, error))
            return NULL;
        return g_steal_pointer(&r);
    }
    g_autoptr(GOutputStream) out = g_unix_output_stream_new(out_fd, FALSE);
    g_autoptr(GOutputStream) err = g_unix_output_stream_new(err_fd, FALSE);
    Pending p = {.loop = s->loop};
    sbx_session_exec_async(s->session, spec, out, err, pending_cb, &p);
    g_main_loop_run(s->loop);
    SbxRunResult *r = sbx_session_exec_finish(s->session, p.res, error);
    g_object_unref(p.res);
    return r;
}

static gboolean
sess_upload(Sess *s, const char *local, const char *guest, GError **error)
{
    struct stat st;
    int fd = open(local, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        int e = fd < 0 ? errno : EINVAL;
        if (fd >= 0)
            close(fd);
        g_set_error(error, SBX_ERROR, SBX_ERROR_INVALID_INPUT, "cannot upload %s: %s", local,
                    e == EINVAL ? "not a regular file" : g_strerror(e));
        return FALSE;
    }
    guint mode = st.st_mode & 0777;
    if (s->bus) {
        g_autoptr(GUnixFDList) fds = g_unix_fd_list_new_from_array(&fd, 1); /* takes fd */
        GVariantBuilder o;
        g_variant_builder_init(&o, G_VARIANT_TYPE_VARDICT);
        g_variant_builder_add(&o, "{sv}", "mode", g_variant_new_uint32(mode));
        g_autoptr(GVariant) reply = session_call(
            s, "WriteFile", g_variant_new("(sha{sv})", guest, 0, &o), NULL, fds, error);
        return reply != NULL;
    }
    g_autoptr(GInputStream) in = g_unix_input_stream_new(fd, TRUE);
    Pending p = {.loop = s->loop};
    sbx_session_write_file_async(s->session, guest, in, mode, pending_cb, &p);
    g_main_loop_run(s->loop);
    gboolean ok = sbx_session_write_file_finish(s->session, p.res, NULL, error);
    g_object_unref(p.res);
    return ok;
}

/* @local "-": stdout. A local file that could not be filled is removed. */
static gboolean
sess_download(Sess *s, const char *guest, const char *local, GError **error)
{
    gboolean to_stdout = strcmp(local, "-") == 0;
    int fd = to_stdout ? dup(STDOUT_FILENO)
                       : open(local, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "cannot write %s: %s", local,
                    g_strerror(e));
        return FALSE;
    }
    gboolean ok;
    if (s->bus) {
        g_autoptr(GUnixFDList) fds = g_unix_fd_list_new_from_array(&fd, 1); /* takes fd */
        g_autoptr(GVariant) reply =
            session_call(s, "ReadFile", g_variant_new("(sh)", guest, 0), NULL, fds, error);
        ok = reply != NULL;
    } else {
        g_autoptr(GOutputStream) out = g_unix_output_stream_new(fd, TRUE);
        Pending p = {.loop = s->loop};
        sbx_session_read_file_async(s->session, guest, out, pending_cb, &p);
        g_main_loop_run(s->loop);
        ok = sbx_session_read_file_finish(s->session, p.res, NULL, error);
        g_object_unref(p.res);
    }
    if (!ok && !to_stdout)
        (void)unlink(local);
    return ok;
}

/* How the session's VM was started (admission, setup, boot or restore). */
static void
sess_start_timings(Sess *s, SbxTimings *out)
{
    memset(out, 0, sizeof *out);
    if (s->session) {
        *out = *sbx_session_get_start_timings(s->session);
        return;
    }
    g_autoptr(GVariant) reply = g_dbus_connection_call_sync(
        s->bus, BUS_NAME, s->path, "org.freedesktop.DBus.Properties", "Get",
        g_variant_new("(ss)", SESSION_IFACE, "StartTiming"), G_VARIANT_TYPE("(v)"),
        G_DBUS_CALL_FLAGS_NONE, 10000, NULL, NULL);
    if (reply == NULL)
        return; /* an older schedulerd: the exec's timings only */
    g_autoptr(GVariant) v = NULL;
    g_variant_get(reply, "(v)", &v);
    guint64 ms;
    if (g_variant_lookup(v, "admission_ms", "t", &ms))
        out->admission_ms = (gint64)ms;
    if (g_variant_lookup(v, "setup_ms", "t", &ms))
        out->setup_ms = (gint64)ms;
    if (g_variant_lookup(v, "boot_ms", "t", &ms))
        out->boot_ms = (gint64)ms;
    if (g_variant_lookup(v, "restore_ms", "t", &ms))
        out->restore_ms = (gint64)ms;
}

static gboolean
sess_close(Sess *s, GError **error)
{
    if (s->bus) {
        g_autoptr(GVariant) reply = session_call(s, "Close", NULL, NULL, NULL, error);
        return reply != NULL;
    }
    Pending p = {.loop = s->loop};
    sbx_session_close_async(s->session, SBX_SESSION_CLOSED_BY_CALLER, pending_cb, &p);
    g_main_loop_run(s->loop);
    gboolean ok = sbx_session_close_finish(s->session, p.res, error);
    g_object_unref(p.res);
    return ok;
}

static void
sess_clear(Sess *s)
{
    g_clear_pointer(&s->path, g_free);
    g_clear_object(&s->session);
}

/* LOCAL:GUEST (upload) or GUEST[:LOCAL] (download; LOCAL defaults to the
 * guest file's name in the current directory, "-" is stdout). */
static void
parse_transfer(const char *arg, gboolean upload, char **out_local, char **out_guest)
{
    const char *colon = strchr(arg, ':');
    g_autofree char *first = colon ? g_strndup(arg, (gsize)(colon - arg)) : g_strdup(arg);
    const char *second = colon ? colon + 1 : NULL;
    g_autoptr(GError) error = NULL;
    if (upload) {
        if (second == NULL || !*first || !*second)
            usage_error("--upload takes LOCAL:GUEST, got '%s'", arg);
        *out_local = g_steal_pointer(&first);
        *out_guest = g_strdup(second);
    } else {
        if (!*first || (second && !*second))
            usage_error("--download takes GUEST[:LOCAL], got '%s'", arg);
        *out_local = second ? g_strdup(second) : g_path_get_basename(first);
        *out_guest = g_steal_pointer(&first);
    }
    if (!sbx_validate_path(*out_guest, strlen(*out_guest), FALSE, &error))
        usage_error("guest path '%s': %s", *out_guest, error->message);
}

/* `run` with --upload / --download: a session (create, upload, exec,
 * download, close), through schedulerd or in-process. Not detached: if this
 * process dies, schedulerd closes the session and destroys the VM. */
static int
run_with_files(GDBusConnection *bus, SbxRunSpec *spec, SbxConfig *cfg)
{
    g_autoptr(GMainLoop) loop = g_main_loop_new(NULL, FALSE);
    g_autoptr(SbxManager) mgr = bus ? NULL : sbx_manager_new(cfg);
    g_autoptr(GError) error = NULL;
    Sess s = {.bus = bus, .loop = loop, .mgr = mgr};
    g_autoptr(SbxRunResult) result = NULL;
    g_autofree char *out_path = NULL, *err_path = NULL;
    int out_fd = STDOUT_FILENO, err_fd = STDERR_FILENO;
    gboolean created = FALSE;

    for (guint i = 0; opt.uploads && opt.uploads[i]; i++) {
        g_autofree char *local = NULL, *guest = NULL;
        parse_transfer(opt.uploads[i], TRUE, &local, &guest); /* usage errors before any VM */
        if (g_access(local, R_OK) != 0)
            usage_error("--upload %s: %s", local, g_strerror(errno));
    }
    for (guint i = 0; opt.downloads && opt.downloads[i]; i++) {
        g_autofree char *local = NULL, *guest = NULL;
        parse_transfer(opt.downloads[i], FALSE, &local, &guest);
    }
    if (mgr && !start_manager(mgr, loop, &error))
        goto out;
    if (!opt.quiet && !opt.json && isatty(STDERR_FILENO))
        g_printerr("\r\033[Kbooting microVM…");
    created = sess_create(&s, spec, 0, FALSE, &error);
    if (!opt.quiet && !opt.json && isatty(STDERR_FILENO))
        g_printerr("\r\033[K");
    if (!created)
        goto out;
    for (guint i = 0; opt.uploads && opt.uploads[i]; i++) {
        g_autofree char *local = NULL, *guest = NULL;
        parse_transfer(opt.uploads[i], TRUE, &local, &guest);
        if (!sess_upload(&s, local, guest, &error)) {
            g_prefix_error(&error, "upload %s -> %s: ", local, guest);
            goto out;
        }
    }
    if (opt.json) {
        out_fd = g_file_open_tmp("sbx-out-XXXXXX", &out_path, &error);
        err_fd = out_fd >= 0 ? g_file_open_tmp("sbx-err-XXXXXX", &err_path, &error) : -1;
        if (err_fd < 0)
            goto out;
    }
    result = sess_exec(&s, spec, out_fd, err_fd, &error);
    if (result == NULL)
        goto out;
    for (guint i = 0; opt.downloads && opt.downloads[i]; i++) {
        g_autofree char *local = NULL, *guest = NULL;
        parse_transfer(opt.downloads[i], FALSE, &local, &guest);
        if (!sess_download(&s, guest, local, &error)) {
            g_prefix_error(&error, "download %s -> %s: ", guest, local);
            break;
        }
    }

out:
    if (created) {
        g_autoptr(GError) close_error = NULL;
        SbxTimings st;
        sess_start_timings(&s, &st);
        gint64 t0 = g_get_monotonic_time();
        if (!sess_close(&s, &close_error) && !g_error_matches(close_error, SBX_ERROR,
                                                              SBX_ERROR_SESSION_CLOSED))
            g_printerr("schedulerctl: closing the session: %s\n", close_error->message);
        if (result) { /* the whole run: start, exec, teardown (transfers not counted) */
            result->timing.admission_ms = st.admission_ms;
            result->timing.setup_ms = st.setup_ms;
            result->timing.boot_ms = st.boot_ms;
            result->timing.restore_ms = st.restore_ms;
            result->timing.teardown_ms = MAX((g_get_monotonic_time() - t0 + 500) / 1000, 1);
            result->timing.total_ms += st.admission_ms + st.setup_ms + st.boot_ms +
                                       st.restore_ms + result->timing.teardown_ms;
        }
    }
    sess_clear(&s);
    if (mgr)
        stop_manager(mgr, loop);
    if (opt.json) {
        g_autofree char *o = NULL, *e = NULL;
        if (out_path) {
            g_file_get_contents(out_path, &o, NULL, NULL);
            unlink(out_path);
            close(out_fd);
        }
        if (err_path) {
            g_file_get_contents(err_path, &e, NULL, NULL);
            unlink(err_path);
            close(err_fd);
        }
        g_autoptr(GBytes) ob = g_bytes_new(o ? o : "", o ? strlen(o) + 1 : 1);
        g_autoptr(GBytes) eb = g_bytes_new(e ? e : "", e ? strlen(e) + 1 : 1);
        print_json(result, ob, eb, error);
    } else if (error) {
        print_error(error);
    } else if (result->timed_out && !opt.quiet) {
        g_printerr("schedulerctl: timed out after %u s\n", spec->timeout_s);
    }
    if (error)
        return EXIT_SCHEDULER;
    return exit_status_for(result);
}

static void
session_path_from_arg(const char *arg, Sess *s)
{
    if (arg[0] == '/')
        s->path = g_strdup(arg);
    else
        s->path = g_strdup_printf("%s/session/%s", OBJECT_PATH, arg);
    if (!g_variant_is_object_path(s->path))
        usage_error("'%s' is not a session id (as printed by `schedulerctl session create`)", arg);
}

static GDBusConnection *
session_bus_or_exit(void)
{
    GDBusConnection *bus = opt.embedded ? NULL : daemon_connection();
    if (bus == NULL) {
        g_printerr("schedulerctl: %s\n", SESSIONS_NEED_DAEMON);
        exit(EXIT_SCHEDULER);
    }
    return bus;
}

static int
cmd_session(int argc, char **argv)
{
    int idle_timeout = 0;
    gboolean attach = FALSE;
    GOptionEntry entries[] = {
        {"language", 'l', 0, G_OPTION_ARG_STRING, &opt.language, "create: default language; exec: python, javascript or raw", "LANG"},
        {"memory", 'm', 0, G_OPTION_ARG_INT, &opt.memory, "create: guest memory in MiB (>= 128, default 512)", "MIB"},
        {"idle-timeout", 0, 0, G_OPTION_ARG_INT, &idle_timeout, "create: close the session after SECONDS without calls (default 300)", "SECONDS"},
        {"code", 'c', 0, G_OPTION_ARG_STRING_ARRAY, &opt.codes, "exec: code (repeatable: lines are joined)", "CODE"},
        {"timeout", 't', 0, G_OPTION_ARG_INT, &opt.timeout, "exec: seconds before the code is killed (1-300, default 30)", "SECONDS"},
        {"env", 'e', 0, G_OPTION_ARG_STRING_ARRAY, &opt.env, "exec: environment variable (repeatable)", "KEY=VALUE"},
        {"json", 0, 0, G_OPTION_ARG_NONE, &opt.json, "exec: print one JSON object with output, exit code and timings", NULL},
        {"quiet", 'q', 0, G_OPTION_ARG_NONE, &opt.quiet, "exec: no notes on stderr", NULL},
        {"system", 0, 0, G_OPTION_ARG_NONE, &opt.system_bus, "Talk to schedulerd on the system bus (default: session bus)", NULL},
        {"embedded", 0, 0, G_OPTION_ARG_NONE, &opt.embedded, "(refused: sessions need schedulerd)", NULL},
        {"attach", 0, 0, G_OPTION_ARG_NONE, &attach, "create: close the session when this command exits (for tests)", NULL},
        {NULL},
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("SUBCOMMAND [ARGS]");
    g_option_context_set_summary(
        ctx, "A microVM kept across several commands (needs schedulerd).\n\n"
             "  create [-l LANG] [-m MIB] [--idle-timeout S]  start one; prints its ID\n"
             "  exec ID [CODE | FILE | -]                      run code; state persists\n"
             "  upload ID LOCAL GUEST                          copy a file into the VM\n"
             "  download ID GUEST [LOCAL]                      copy a file out ('-': stdout)\n"
             "  ls ID [PATH]                                   list a guest directory\n"
             "  close ID                                       destroy the VM\n\n"
             "Guest paths are relative to /home/user. A session closes after its idle\n"
             "timeout, when code in it is killed with SIGKILL (exit 137) or its VM dies.");
    g_option_context_add_main_entries(ctx, entries, NULL);
    g_autoptr(GError) error = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &error))
        usage_error("%s", error->message);
    if (argc < 2)
        usage_error("session needs a subcommand: create, exec, upload, download, ls or close");
    const char *sub = argv[1];
    static const char *const subs[] = {"create", "exec", "upload", "download", "ls", "close"};
    gboolean known = FALSE;
    for (guint i = 0; i < G_N_ELEMENTS(subs); i++)
        known = known || strcmp(sub, subs[i]) == 0;
    if (!known)
        usage_error("unknown session subcommand '%s'", sub);

    g_autoptr(SbxConfig) cfg = load_config();
    g_autoptr(GDBusConnection) bus = session_bus_or_exit();
    Sess s = {.bus = bus};
    int status = 0;

    if (strcmp(sub, "create") == 0) {
        if (argc > 2)
            usage_error("unexpected argument '%s'", argv[2]);
        g_autoptr(SbxRunSpec) spec = sbx_run_spec_new(cfg);
        if (opt.language && !sbx_validate_language(opt.language, &spec->language, &error))
            usage_error("%s", error->message);
        if (opt.memory >= 0)
            spec->memory_mb = (guint)opt.memory;
        if (idle_timeout < 0 || idle_timeout > 86400)
            usage_error("--idle-timeout takes 1..86400 seconds");
        if (!sess_create(&s, spec, (guint)idle_timeout, !attach, &error)) {
            print_error(error);
            return EXIT_SCHEDULER;
        }
        g_print("%s\n", strrchr(s.path, '/') + 1);
        if (attach) {
            /* hold the connection until stdin closes or we are killed */
            g_autoptr(GInputStream) in = g_unix_input_stream_new(STDIN_FILENO, FALSE);
            char buf[256];
            while (g_input_stream_read(in, buf, sizeof buf, NULL, NULL) > 0)
                ;
        }
        sess_clear(&s);
        return 0;
    }
    if (argc < 3)
        usage_error("session %s needs the session ID", sub);
    session_path_from_arg(argv[2], &s);

    if (strcmp(sub, "exec") == 0) {
        /* a missing session is one clear line, before the code is read */
        g_autoptr(GVariant) props = g_dbus_connection_call_sync(
            bus, BUS_NAME, s.path, "org.freedesktop.DBus.Properties", "GetAll",
            g_variant_new("(s)", SESSION_IFACE), NULL, G_DBUS_CALL_FLAGS_NONE, 10000, NULL, &error);
        if (props == NULL) {
            fix_remote_error(error, s.path);
            print_error(error);
            sess_clear(&s);
            return EXIT_SCHEDULER;
        }
        /* build_spec reads argv[1] as the code: shift past "exec ID" */
        g_autoptr(SbxRunSpec) spec = build_spec(cfg, argc - 2, argv + 2);
        if (!sbx_run_spec_validate(spec, cfg, TRUE, &error)) {
            print_error(error);
            sess_clear(&s);
            return EXIT_USAGE;
        }
        /* the session's language unless -l or the file's extension says otherwise */
        SbxLanguage ext;
        gboolean explicit_lang = opt.language != NULL ||
                                 (argc > 3 && g_file_test(argv[3], G_FILE_TEST_IS_REGULAR) &&
                                  language_from_path(argv[3], &ext));
        GVariantBuilder b;
        dict_builder_without(&b, sbx_run_spec_to_variant(spec),
                             explicit_lang ? "" : "language");
        status = exec_daemon(bus, s.path, SESSION_IFACE, "Exec", g_variant_builder_end(&b));
    } else if (strcmp(sub, "upload") == 0) {
        if (argc != 5)
            usage_error("usage: session upload ID LOCAL GUEST");
        if (!sess_upload(&s, argv[3], argv[4], &error))
            status = EXIT_SCHEDULER;
    } else if (strcmp(sub, "download") == 0) {
        if (argc != 4 && argc != 5)
            usage_error("usage: session download ID GUEST [LOCAL]");
        g_autofree char *local = argc == 5 ? g_strdup(argv[4]) : g_path_get_basename(argv[3]);
        if (!sess_download(&s, argv[3], local, &error))
            status = EXIT_SCHEDULER;
    } else if (strcmp(sub, "ls") == 0) {
        if (argc > 4)
            usage_error("usage: session ls ID [PATH]");
        g_autoptr(GVariant) reply =
            session_call(&s, "ListFiles", g_variant_new("(s)", argc == 4 ? argv[3] : ""),
                         "(a(sbt))", NULL, &error);
        if (reply) {
            g_autoptr(GVariantIter) it = NULL;
            const char *name;
            gboolean is_dir;
            guint64 size;
            g_variant_get(reply, "(a(sbt))", &it);
            while (g_variant_iter_next(it, "(&sbt)", &name, &is_dir, &size))
                g_print("%s %12" G_GUINT64_FORMAT " %s%s\n", is_dir ? "d" : "-", size, name,
                        is_dir ? "/" : "");
        } else {
            status = EXIT_SCHEDULER;
        }
    } else if (strcmp(sub, "close") == 0) {
        if (argc > 3)
            usage_error("unexpected argument '%s'", argv[3]);
        if (!sess_close(&s, &error))
            status = EXIT_SCHEDULER;
    }
    if (error) {
        print_error(error);
        if (g_error_matches(error, SBX_ERROR, SBX_ERROR_INVALID_INPUT))
            status = EXIT_USAGE; /* nothing was done: fix the arguments */
    }
    sess_clear(&s);
    return status;
}

/* ---- commands --------------------------------------------------------- */

static int
cmd_run(int argc, char **argv)
{
    GOptionEntry entries[] = {
        {"code", 'c', 0, G_OPTION_ARG_STRING_ARRAY, &opt.codes, "Code to run (repeatable: lines are joined)", "CODE"},
        {"language", 'l', 0, G_OPTION_ARG_STRING, &opt.language, "python (default), javascript or raw (shell)", "LANG"},
        {"timeout", 't', 0, G_OPTION_ARG_INT, &opt.timeout, "Seconds before the code is killed (1-300, default 30)", "SECONDS"},
        {"memory", 'm', 0, G_OPTION_ARG_INT, &opt.memory, "Guest memory in MiB (>= 128, default 512)", "MIB"},
        {"env", 'e', 0, G_OPTION_ARG_STRING_ARRAY, &opt.env, "Environment variable for the code (repeatable)", "KEY=VALUE"},
        {"network", 0, 0, G_OPTION_ARG_STRING, &opt.network,
         "Network: none (default, no NIC), expose (ports only), allow (allow-listed egress), full",
         "MODE"},
        {"allow-domain", 0, 0, G_OPTION_ARG_STRING_ARRAY, &opt.allow_domains,
         "Allow egress to DOMAIN and its subdomains (HTTPS by SNI; implies --network allow)",
         "DOMAIN"},
        {"allow-http", 0, 0, G_OPTION_ARG_NONE, &opt.allow_http,
         "With --network allow: plain HTTP to allowed domains too (by Host header)", NULL},
        {"expose", 0, 0, G_OPTION_ARG_STRING_ARRAY, &opt.expose,
         "Expose guest TCP port INTERNAL on 127.0.0.1:EXTERNAL (any free port if omitted; up to 10)",
         "INTERNAL[:EXTERNAL]"},
        {"upload", 0, 0, G_OPTION_ARG_STRING_ARRAY, &opt.uploads, "Copy the local file LOCAL to GUEST (relative to /home/user) before the code runs (repeatable)", "LOCAL:GUEST"},
        {"download", 0, 0, G_OPTION_ARG_STRING_ARRAY, &opt.downloads, "Copy GUEST out after the code ran, to LOCAL ('-': stdout; default: its name here) (repeatable)", "GUEST[:LOCAL]"},
        {"json", 0, 0, G_OPTION_ARG_NONE, &opt.json, "Print one JSON object with output, exit code and timings", NULL},
        {"quiet", 'q', 0, G_OPTION_ARG_NONE, &opt.quiet, "No progress line, no notes on stderr", NULL},
        {"embedded", 0, 0, G_OPTION_ARG_NONE, &opt.embedded, "Run the scheduler in this process even if schedulerd is running", NULL},
        {"system", 0, 0, G_OPTION_ARG_NONE, &opt.system_bus, "Talk to schedulerd on the system bus (default: session bus)", NULL},
        {"config", 0, 0, G_OPTION_ARG_FILENAME, &opt.config, "Config file for embedded mode", "FILE"},
        {NULL},
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("[CODE | FILE | -]");
    g_option_context_set_summary(
        ctx, "Run code in a fresh microVM and print its output.\n\n"
             "CODE is program text; FILE is a script whose extension (.py .js .sh) picks the\n"
             "language; '-' reads the code from stdin. The exit status is the program's;\n"
             "124 on timeout, 125 when the scheduler could not run it, 2 for usage errors.");
    g_option_context_add_main_entries(ctx, entries, NULL);
    g_autoptr(GError) error = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &error))
        usage_error("%s", error->message);

    g_autoptr(SbxConfig) cfg = load_config();
    g_autoptr(SbxRunSpec) spec = build_spec(cfg, argc, argv);
    /* Validate here too, so a bad request fails the same way in both modes and
     * before any daemon or VM is involved. */
    if (!sbx_run_spec_validate(spec, cfg, TRUE, &error)) {
        if (opt.json)
            print_json(NULL, NULL, NULL, error);
        else
            print_error(error);
        return EXIT_USAGE;
    }
    g_autoptr(GDBusConnection) bus = daemon_connection();
    if (opt.uploads || opt.downloads)
        return run_with_files(bus, spec, bus ? NULL : g_steal_pointer(&cfg));
    if (bus)
        return run_daemon(bus, spec);
    return run_embedded(spec, g_steal_pointer(&cfg));
}

/* The longest key of an a{sv} (at least @min): the column the values start at. */
static int
variant_dict_key_width(GVariant *dict, int min)
{
    GVariantIter it;
    const char *key;
    int width = min;
    g_variant_iter_init(&it, dict);
    while (g_variant_iter_next(&it, "{&sv}", &key, NULL))
        width = MAX(width, (int)strlen(key));
    return width;
}

static void
print_variant_dict(GVariant *dict, int indent, int width)
{
    GVariantIter it;
    const char *key;
    GVariant *value;
    g_variant_iter_init(&it, dict);
    while (g_variant_iter_next(&it, "{&sv}", &key, &value)) {
        g_autofree char *text = g_variant_is_of_type(value, G_VARIANT_TYPE_STRING)
                                    ? g_variant_dup_string(value, NULL)
                                    : g_variant_print(value, FALSE);
        g_print("%*s%-*s %s\n", indent, "", width, key, text);
        g_variant_unref(value);
    }
}

static int
cmd_status_or_doctor(int argc, char **argv, gboolean doctor)
{
    GOptionEntry entries[] = {
        {"embedded", 0, 0, G_OPTION_ARG_NONE, &opt.embedded, "Ask an in-process scheduler, not schedulerd", NULL},
        {"system", 0, 0, G_OPTION_ARG_NONE, &opt.system_bus, "Talk to schedulerd on the system bus", NULL},
        {"json", 0, 0, G_OPTION_ARG_NONE, &opt.json, "Print JSON", NULL},
        {"config", 0, 0, G_OPTION_ARG_FILENAME, &opt.config, "Config file for embedded mode", "FILE"},
        {NULL},
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new(NULL);
    g_option_context_set_summary(ctx, doctor ? "Check this host for running microVMs: limits, "
                                               "sysctls, cgroups, KVM, KSM, PSI; each problem "
                                               "with its fix."
                                             : "Show the scheduler's capacity and counters.");
    g_option_context_add_main_entries(ctx, entries, NULL);
    g_autoptr(GError) error = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &error))
        usage_error("%s", error->message);
    if (argc > 1)
        usage_error("unexpected argument '%s'", argv[1]);

    if (doctor) {
        /* The probe is the same code the daemon runs at start; run it here. */
        SbxProbeOptions popts = {0};
        popts.test_kvm = TRUE;
        g_autoptr(SbxProbeReport) report = sbx_probe_run(&popts);
        g_autofree char *text = sbx_probe_report_to_string(report, opt.json);
        g_print("%s\n", text);
        return sbx_probe_report_count(report, SBX_PROBE_ERROR) > 0 ? 1 : 0;
    }
    g_autoptr(GDBusConnection) bus = daemon_connection();
    g_autoptr(GVariant) status = NULL;
    if (bus) {
        g_autoptr(GVariant) reply = g_dbus_connection_call_sync(
            bus, BUS_NAME, OBJECT_PATH, BUS_NAME, "Status", NULL, G_VARIANT_TYPE("(a{sv})"),
            G_DBUS_CALL_FLAGS_NONE, 10000, NULL, &error);
        if (reply == NULL) {
            print_error(error);
            return EXIT_SCHEDULER;
        }
        status = g_variant_get_child_value(reply, 0);
    } else {
        g_autoptr(GMainLoop) loop = g_main_loop_new(NULL, FALSE);
        g_autoptr(SbxManager) mgr = sbx_manager_new(load_config());
        if (!start_manager(mgr, loop, &error)) {
            print_error(error);
            return EXIT_SCHEDULER;
        }
        status = g_variant_ref_sink(sbx_manager_get_status(mgr));
        stop_manager(mgr, loop);
        if (!opt.json)
            g_print("%-*s %s\n", variant_dict_key_width(status, 4), "mode",
                    "embedded (no schedulerd on the bus)");
    }
    if (opt.json) {
        g_autoptr(JsonNode) node = json_gvariant_serialize(status);
        g_autofree char *text = json_to_string(node, TRUE);
        g_print("%s\n", text);
    } else {
        print_variant_dict(status, 0, variant_dict_key_width(status, 4));
    }
    return 0;
}

/* The CLI prints one clear line per problem itself; library and scheduler
 * logs (probe warnings, state changes) only show with SCHEDULERCTL_VERBOSE=1
 * (`schedulerctl doctor` prints the probe's findings with their fixes). */
static GLogWriterOutput
cli_log_writer(GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer user_data)
{
    gboolean verbose = GPOINTER_TO_INT(user_data);
    if (!verbose && !(level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL)))
        return G_LOG_WRITER_HANDLED;
    return g_log_writer_standard_streams(level, fields, n_fields, NULL);
}

static void
print_help(void)
{
    g_print("Usage: schedulerctl COMMAND [OPTIONS]\n\n"
            "Run untrusted code in throw-away QEMU microVMs.\n\n"
            "Commands:\n"
            "  run      Run code in a fresh microVM and print its output\n"
            "  session  Keep a microVM across commands: create, exec, upload, download, ls, close\n"
            "  status   Show capacity, slots in use, queue and pool sizes\n"
            "  doctor   Check the host and print fixes for what is wrong\n"
            "  version  Print the version\n\n"
            "`schedulerctl COMMAND --help` describes each command's options.\n"
            "Without a schedulerd on the bus, commands run the scheduler in-process.\n"
            "SCHEDULERCTL_VERBOSE=1 shows the scheduler's log on stderr.\n");
}

int
main(int argc, char **argv)
{
    setlocale(LC_ALL, "");
    sbx_error_register_dbus();
    g_log_set_writer_func(cli_log_writer,
                          GINT_TO_POINTER(g_strcmp0(g_getenv("SCHEDULERCTL_VERBOSE"), "1") == 0),
                          NULL);
    if (argc < 2) {
        print_help();
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        print_help();
        return 0;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        g_print("schedulerctl %s\n", PACKAGE_VERSION);
        return 0;
    }
    /* let each command's GOptionContext see "schedulerctl-CMD args..." */
    g_autofree char *prog = g_strdup_printf("schedulerctl %s", cmd);
    argv[1] = prog;
    argv++;
    argc--;
    if (strcmp(cmd, "run") == 0)
        return cmd_run(argc, argv);
    if (strcmp(cmd, "session") == 0)
        return cmd_session(argc, argv);
    if (strcmp(cmd, "status") == 0)
        return cmd_status_or_doctor(argc, argv, FALSE);
    if (strcmp(cmd, "doctor") == 0)
        return cmd_status_or_doctor(argc, argv, TRUE);
    usage_error("unknown command '%s'", cmd);
}
