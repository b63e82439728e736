/* SPDX-License-Identifier: MIT
 *
 * schedulerctl: the command-line client. `run` sends code to schedulerd over
 * D-Bus (the program's output goes straight to our stdout/stderr fds, passed
 * to the daemon), or, when no daemon owns the bus name (or with --embedded),
 * runs the same scheduler core in-process. Also `status`, `doctor`, `version`.
 * Exit status: the sandbox's exit code; 124 on timeout; 125 when the
 * scheduler could not run the code; 2 for usage errors.
 */
#include <locale.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <gio/gio.h>
#include <gio/gunixfdlist.h>
#include <gio/gunixinputstream.h>
#include <gio/gunixoutputstream.h>
#include <json-glib/json-glib.h>

#include "data/sbx-dbus-generated.h"
#include "scheduler/sbx-error.h"
#include "scheduler/sbx-manager.h"

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

static int
run_daemon(GDBusConnection *bus, SbxRunSpec *spec)
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
        bus, BUS_NAME, OBJECT_PATH, BUS_NAME, "Run",
        g_variant_new("(@a{sv}hh)", sbx_run_spec_to_variant(spec), h_out, h_err),
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
    if (bus)
        return run_daemon(bus, spec);
    return run_embedded(spec, g_steal_pointer(&cfg));
}

static void
print_variant_dict(GVariant *dict, int indent)
{
    GVariantIter it;
    const char *key;
    GVariant *value;
    g_variant_iter_init(&it, dict);
    while (g_variant_iter_next(&it, "{&sv}", &key, &value)) {
        g_autofree char *text = g_variant_is_of_type(value, G_VARIANT_TYPE_STRING)
                                    ? g_variant_dup_string(value, NULL)
                                    : g_variant_print(value, FALSE);
        g_print("%*s%-24s %s\n", indent, "", key, text);
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
        g_print("%-24s %s\n", "mode", "embedded (no schedulerd on the bus)");
    }
    if (opt.json) {
        g_autoptr(JsonNode) node = json_gvariant_serialize(status);
        g_autofree char *text = json_to_string(node, TRUE);
        g_print("%s\n", text);
    } else {
        print_variant_dict(status, 0);
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
    if (strcmp(cmd, "status") == 0)
        return cmd_status_or_doctor(argc, argv, FALSE);
    if (strcmp(cmd, "doctor") == 0)
        return cmd_status_or_doctor(argc, argv, TRUE);
    usage_error("unknown command '%s'", cmd);
}
