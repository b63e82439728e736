/* SPDX-License-Identifier: MIT
 *
 * schedulerd: the daemon. Loads the configuration (key file + command line),
 * starts the scheduler core (SbxManager), owns org.schedulerd.Scheduler1 on
 * the session bus (default) or the system bus, exports the D-Bus adapter and
 * tells systemd READY=1 / STATUS= / WATCHDOG=1. SIGTERM or SIGINT drain:
 * admission stops, in-flight runs are cancelled and their VMs destroyed, the
 * storage daemon stops, and the process exits 0. The only globals of the
 * project live here.
 */
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <glib-unix.h>
#include <gio/gio.h>
#include <systemd/sd-daemon.h>

#include "scheduler/sbx-dbus.h"
#include "scheduler/sbx-error.h"
#include "scheduler/sbx-manager.h"

#define BUS_NAME "org.schedulerd.Scheduler1"

typedef struct {
    GMainLoop *loop;
    SbxManager *manager;
    SbxDBusAdapter *adapter;
    guint owner_id;
    int exit_code;
    gboolean stopping;
    gboolean system_bus;
    guint watchdog_id;
} Daemon;

static Daemon daemon_state; /* main.c is the one place that holds globals */

static void
notify(const char *text)
{
    (void)sd_notify(0, text);
}

static void
shutdown_done_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Daemon *d = user_data;
    g_autoptr(GError) error = NULL;
    if (!sbx_manager_shutdown_finish(SBX_MANAGER(source), res, &error)) {
        g_warning("shutdown incomplete: %s", error->message);
        d->exit_code = 1;
    }
    /* Only now leave the bus: clients saw their runs fail and their sessions'
     * Closed("shutdown") signals while the drain went on. */
    if (d->adapter)
        sbx_dbus_adapter_unexport(d->adapter);
    if (d->owner_id) {
        g_bus_unown_name(d->owner_id);
        d->owner_id = 0;
    }
    g_info("stopped");
    g_main_loop_quit(d->loop);
}

static void
begin_shutdown(Daemon *d, const char *why)
{
    if (d->stopping)
        return;
    d->stopping = TRUE;
    g_info("draining (%s)", why);
    notify("STOPPING=1\nSTATUS=draining: cancelling runs and destroying VMs");
    /* The manager refuses new work from here on (Transient: safe to retry). */
    sbx_manager_shutdown_async(d->manager, shutdown_done_cb, d);
}

static gboolean
signal_cb(gpointer user_data)
{
    Daemon *d = &daemon_state;
    if (sbx_manager_get_probe(d->manager) == NULL) {
        d->stopping = TRUE; /* still starting: started_cb drains */
        return G_SOURCE_CONTINUE;
    }
    begin_shutdown(d, "signal");
    return G_SOURCE_CONTINUE;
}

static gboolean
watchdog_cb(gpointer user_data)
{
    notify("WATCHDOG=1");
    return G_SOURCE_CONTINUE;
}

static void
bus_acquired_cb(GDBusConnection *connection, const char *name, gpointer user_data)
{
    Daemon *d = user_data;
    g_autoptr(GError) error = NULL;
    d->adapter = sbx_dbus_adapter_new(d->manager);
    if (!sbx_dbus_adapter_export(d->adapter, connection, &error)) {
        g_critical("cannot export %s: %s", name, error->message);
        d->exit_code = 1;
        begin_shutdown(d, "export failed");
    }
}

static void
name_acquired_cb(GDBusConnection *connection, const char *name, gpointer user_data)
{
    Daemon *d = user_data;
    g_info("serving %s (accelerator %s)", name, sbx_manager_get_accel(d->manager));
    g_autofree char *status =
        g_strdup_printf("READY=1\nSTATUS=serving %s, accelerator %s", name,
                        sbx_manager_get_accel(d->manager));
    notify(status);
}

static void
name_lost_cb(GDBusConnection *connection, const char *name, gpointer user_data)
{
    Daemon *d = user_data;
    if (d->stopping)
        return;
    g_printerr("schedulerd: could not own %s on the %s (is another schedulerd running, or no bus?)\n",
               name, connection ? "bus" : "bus (no connection)");
    d->exit_code = 1;
    begin_shutdown(d, "bus name lost");
}

static void
started_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    Daemon *d = user_data;
    g_autoptr(GError) error = NULL;
    if (!sbx_manager_start_finish(SBX_MANAGER(source), res, &error)) {
        g_printerr("schedulerd: cannot start: %s\n", error->message);
        d->exit_code = 1;
        g_main_loop_quit(d->loop);
        return;
    }
    if (d->stopping) {
        begin_shutdown(d, "signal during start");
        return;
    }
    /* The name is requested only once the core is up: a client that sees it can run. */
    d->owner_id = g_bus_own_name(d->system_bus ? G_BUS_TYPE_SYSTEM : G_BUS_TYPE_SESSION, BUS_NAME,
                                 G_BUS_NAME_OWNER_FLAGS_NONE, bus_acquired_cb, name_acquired_cb,
                                 name_lost_cb, d, NULL);
}

int
main(int argc, char **argv)
{
    Daemon *d = &daemon_state;
    g_autofree char *config = NULL;
    g_autofree char *runtime_dir = NULL;
    g_autofree char *accel = NULL;
    g_autofree char *guest_dir = NULL;
    gboolean system_bus = FALSE, verbose = FALSE, version = FALSE;
    GOptionEntry entries[] = {
        {"config", 'c', 0, G_OPTION_ARG_FILENAME, &config, "Key-file configuration (default: " SBX_SYSCONFDIR "/schedulerd/schedulerd.conf if present)", "FILE"},
        {"system", 0, 0, G_OPTION_ARG_NONE, &system_bus, "Own the name on the system bus (default: session bus)", NULL},
        {"runtime-dir", 0, 0, G_OPTION_ARG_FILENAME, &runtime_dir, "Overrides [scheduler] runtime_dir", "DIR"},
        {"guest-dir", 0, 0, G_OPTION_ARG_FILENAME, &guest_dir, "Overrides [scheduler] guest_dir", "DIR"},
        {"accel", 0, 0, G_OPTION_ARG_STRING, &accel, "Overrides [scheduler] accel: auto, tcg or kvm", "ACCEL"},
        {"verbose", 'v', 0, G_OPTION_ARG_NONE, &verbose, "Log info messages too", NULL},
        {"version", 0, 0, G_OPTION_ARG_NONE, &version, "Print the version and exit", NULL},
        {NULL},
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new(NULL);
    g_autoptr(GError) error = NULL;

    setlocale(LC_ALL, "");
    g_option_context_set_summary(ctx, "The schedulerd daemon: runs untrusted code in throw-away "
                                      "QEMU microVMs for D-Bus clients (see schedulerctl).");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
        g_printerr("schedulerd: %s\n", error->message);
        return 2;
    }
    if (version) {
        g_print("schedulerd %s\n", PACKAGE_VERSION);
        return 0;
    }
    if (verbose)
        g_setenv("G_MESSAGES_DEBUG", "schedulerd qsd", FALSE);

    g_autoptr(SbxConfig) cfg = sbx_config_new_default();
    g_autofree char *sys = g_build_filename(SBX_SYSCONFDIR, "schedulerd", "schedulerd.conf", NULL);
    const char *path = config ? config : (g_file_test(sys, G_FILE_TEST_EXISTS) ? sys : NULL);
    if ((path && !sbx_config_load_file(cfg, path, &error)) || !sbx_config_apply_env(cfg, &error) ||
        (accel && !sbx_accel_mode_parse(accel, &cfg->accel, &error))) {
        g_printerr("schedulerd: %s\n", error->message);
        return 2;
    }
    if (runtime_dir) {
        g_free(cfg->runtime_dir);
        cfg->runtime_dir = g_strdup(runtime_dir);
    }
    if (guest_dir) {
        g_free(cfg->guest_dir);
        cfg->guest_dir = g_strdup(guest_dir);
    }

    sbx_error_register_dbus();
    d->loop = g_main_loop_new(NULL, FALSE);
    d->manager = sbx_manager_new(g_steal_pointer(&cfg));
    g_unix_signal_add(SIGTERM, signal_cb, NULL);
    g_unix_signal_add(SIGINT, signal_cb, NULL);
    signal(SIGPIPE, SIG_IGN); /* a client closing its output fd must not kill us */

    guint64 wd_usec = 0;
    if (sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0)
        d->watchdog_id = g_timeout_add((guint)(wd_usec / 2000), watchdog_cb, NULL);

    notify("STATUS=starting: probing the host, reaping orphans, starting the storage daemon");
    d->system_bus = system_bus;
    sbx_manager_start_async(d->manager, NULL, started_cb, d);
    g_main_loop_run(d->loop);
    if (d->watchdog_id)
        g_source_remove(d->watchdog_id);
    g_clear_object(&d->adapter);
    g_clear_object(&d->manager);
    g_main_loop_unref(d->loop);
    return d->exit_code;
}
