/* SPDX-License-Identifier: MIT
 *
 * sbx-agent: the guest agent. Runs inside the microVM (started by guest/init,
 * which stays PID 1 and reaps; exec'd as PID 1 by another init it forks such a
 * reaper itself), finds the virtio-serial port named org.schedulerd.agent.0,
 * sends its hello before any other start-up work, and serves the wire
 * protocol of docs/guest-protocol.md (codec in common/sbx-frame.c) on a GLib
 * main loop: transport, reconnect handling and dispatch live here; REPLs and
 * exec in ga-exec.c; file transfer in ga-files.c.
 *
 * With --channel-fd N it speaks the same protocol over an inherited socket
 * (tests run the real agent on the host over a socketpair that way).
 */
#define G_LOG_DOMAIN "sbx-agent"
#include "guest/agent/ga-agent.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <gio/gio.h>
#include <glib-unix.h>

#include "common/sbx-fd.h"

#define READ_CHUNK (256 * 1024)
#define PROBE_MAX_MS 100

static void transport_start(GaAgent *a);
static void transport_disconnected(GaAgent *a);

/* ---- sending ------------------------------------------------------------ */

gsize
ga_outq_pending(GaAgent *a)
{
    return a->outq->len - a->outq_off;
}

static gboolean
on_writable(int fd, GIOCondition cond, gpointer data)
{
    GaAgent *a = data;

    while (ga_outq_pending(a) > 0) {
        ssize_t n = write(a->fd, a->outq->data + a->outq_off, ga_outq_pending(a));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return G_SOURCE_CONTINUE;
            g_debug("channel write failed: %s", g_strerror(errno));
            a->out_watch = 0;
            transport_disconnected(a);
            return G_SOURCE_REMOVE;
        }
        a->outq_off += (gsize)n;
    }
    g_byte_array_set_size(a->outq, 0);
    a->outq_off = 0;
    a->out_watch = 0;
    ga_files_resume(a->files);
    return G_SOURCE_REMOVE;
}

void
ga_send(GaAgent *a, JsonObject *header, const void *payload, gsize len)
{
    g_autoptr(JsonObject) h = header;
    g_autoptr(GError) error = NULL;

    if (!a->connected)
        return;
    if (!sbx_frame_encode(a->outq, h, payload, len, &error)) {
        g_warning("dropping an outgoing frame: %s", error->message);
        return;
    }
    if (!a->out_watch)
        a->out_watch = g_unix_fd_add(a->fd, G_IO_OUT, on_writable, a);
}

void
ga_send_error(GaAgent *a, gint64 id, const char *code, const char *fmt, ...)
{
    va_list ap;
    JsonObject *h = sbx_frame_header_new("error", id);
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    json_object_set_string_member(h, "code", code);
    json_object_set_string_member(h, "message", msg);
    ga_send(a, h, NULL, 0);
}

void
ga_send_gerror(GaAgent *a, gint64 id, const GError *error)
{
    const char *code = GA_ERR_IO;

    if (error->domain == SBX_VALIDATE_ERROR)
        code = GA_ERR_INVALID_INPUT;
    else if (error->domain == G_IO_ERROR && error->code == G_IO_ERROR_NOT_FOUND)
        code = GA_ERR_NOT_FOUND;
    else if (error->domain == G_IO_ERROR && error->code == G_IO_ERROR_NO_SPACE)
        code = GA_ERR_TOO_LARGE;
    else if (error->domain == G_IO_ERROR && error->code == G_IO_ERROR_INVALID_ARGUMENT)
        code = GA_ERR_INVALID_INPUT;
    ga_send_error(a, id, code, "%s", error->message);
}

void
ga_send_ok(GaAgent *a, gint64 id)
{
    ga_send(a, sbx_frame_header_new("ok", id), NULL, 0);
}

static gint64
boottime_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (gint64)ts.tv_sec * G_GINT64_CONSTANT(1000000000) + ts.tv_nsec;
}

/* The optional "boot" member of hello: where the boot's time went, one clock. */
static JsonObject *
boot_timeline_new(GaAgent *a)
{
    static const char *const init_names[] = { "init_start_ns", "modules_ns", "root_ns", "exec_ns" };
    JsonObject *b = json_object_new();

    json_object_set_string_member(b, "clock", "boottime");
    for (gsize i = 0; i < G_N_ELEMENTS(init_names); i++)
        if (a->boot_init_ns[i] > 0)
            json_object_set_int_member(b, init_names[i], a->boot_init_ns[i]);
    json_object_set_int_member(b, "main_ns", a->boot_main_ns);
    json_object_set_int_member(b, "hello_ns", a->boot_hello_ns);
    return b;
}

/* init passes "start,modules,root,exec" (ns); the variable is not passed on. */
static void
read_init_timeline(GaAgent *a)
{
    const char *v = g_getenv("SBX_BOOT_NS");
    g_auto(GStrv) parts = NULL;

    if (!v)
        return;
    parts = g_strsplit(v, ",", 5);
    if (g_strv_length(parts) == G_N_ELEMENTS(a->boot_init_ns))
        for (gsize i = 0; i < G_N_ELEMENTS(a->boot_init_ns); i++)
            a->boot_init_ns[i] = MAX(0, g_ascii_strtoll(parts[i], NULL, 10));
    g_unsetenv("SBX_BOOT_NS");
}

static void
send_hello(GaAgent *a)
{
    JsonObject *h = sbx_frame_header_new("hello", 0);
    g_autoptr(JsonArray) caps = json_array_new();
    g_autoptr(JsonObject) langs = json_object_new();
    g_autoptr(JsonObject) limits = json_object_new();
    static const char *const capabilities[] = {
        "exec", "warm", "cancel", "write_file", "read_file", "list_files", "reseed", "ping",
        "reclaim",
    };

    json_object_set_int_member(h, "protocol", SBX_PROTOCOL_VERSION);
    json_object_set_string_member(h, "agent_version", PACKAGE_VERSION);
    json_object_set_int_member(h, "pid", getpid());
    for (gsize i = 0; i < G_N_ELEMENTS(capabilities); i++)
        json_array_add_string_element(caps, capabilities[i]);
    json_object_set_array_member(h, "capabilities", g_steal_pointer(&caps));
    json_object_set_boolean_member(langs, "python", a->python != NULL);
    json_object_set_boolean_member(langs, "javascript", a->node != NULL);
    json_object_set_boolean_member(langs, "raw", a->shell != NULL);
    json_object_set_object_member(h, "languages", g_steal_pointer(&langs));
    json_object_set_int_member(limits, "max_header", SBX_FRAME_MAX_HEADER);
    json_object_set_int_member(limits, "max_payload", SBX_FRAME_MAX_PAYLOAD);
    json_object_set_int_member(limits, "max_code", SBX_MAX_CODE_BYTES);
    json_object_set_int_member(limits, "max_stdout", SBX_MAX_STDOUT_BYTES);
    json_object_set_int_member(limits, "max_stderr", SBX_MAX_STDERR_BYTES);
    json_object_set_int_member(limits, "max_file", (gint64)SBX_MAX_FILE_BYTES);
    json_object_set_object_member(h, "limits", g_steal_pointer(&limits));
    if (a->virtio) {
        if (a->boot_hello_ns == 0)
            a->boot_hello_ns = boottime_ns();
        json_object_set_object_member(h, "boot", boot_timeline_new(a));
    }
    ga_send(a, h, NULL, 0);
}

/* ---- simple requests ---------------------------------------------------- */

static void
handle_reseed(GaAgent *a, SbxFrame *frame)
{
    gsize len = 0;
    const guint8 *data = g_bytes_get_data(frame->payload, &len);
    g_auto(SbxFd) fd = -1;
    gboolean credited = FALSE;
    JsonObject *h;

    if (len == 0 || len > 4096) {
        ga_send_error(a, frame->id, GA_ERR_INVALID_INPUT,
                      "reseed needs 1..4096 bytes of entropy in the payload, got %" G_GSIZE_FORMAT, len);
        return;
    }
    fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        ga_send_error(a, frame->id, GA_ERR_IO, "open /dev/urandom: %s", g_strerror(errno));
        return;
    }
    {
        g_autofree struct rand_pool_info *info = g_malloc0(sizeof *info + len);
        info->entropy_count = (int)(len * 8);
        info->buf_size = (int)len;
        memcpy(info->buf, data, len);
        credited = ioctl(fd, RNDADDENTROPY, info) == 0;
    }
    if (!credited) {
        /* Not privileged (tests): mixing without credit still changes the state. */
        if (write(fd, data, len) != (ssize_t)len) {
            ga_send_error(a, frame->id, GA_ERR_IO, "write /dev/urandom: %s", g_strerror(errno));
            return;
        }
    } else if (ioctl(fd, RNDRESEEDCRNG) != 0) {
        credited = FALSE;
    }
    /* After a snapshot restore the wall clock stands at the template's save
     * time: take the host's (unprivileged test agents cannot; say so). */
    gboolean clock_set = FALSE;
    gint64 realtime_ns = sbx_frame_get_int(frame, "realtime_ns", 0);
    if (realtime_ns > 0) {
        struct timespec ts = {.tv_sec = realtime_ns / 1000000000,
                              .tv_nsec = realtime_ns % 1000000000};
        clock_set = clock_settime(CLOCK_REALTIME, &ts) == 0;
    }
    /* Only now: the REPL reads the time of the clock just set (OpenSSL's DRBG
     * reseed interval) and the reseeded CRNG. */
    ga_exec_reseed(a->exec);
    h = sbx_frame_header_new("ok", frame->id);
    json_object_set_boolean_member(h, "credited", credited);
    json_object_set_boolean_member(h, "clock_set", clock_set);
    ga_send(a, h, NULL, 0);
}

static gboolean
write_proc(const char *path, const char *value)
{
    g_auto(SbxFd) fd = open(path, O_WRONLY | O_CLOEXEC);
    return fd >= 0 && write(fd, value, strlen(value)) == (ssize_t)strlen(value);
}

/* The VM is idle: drop the clean page cache and slab (what the kernel would drop
 * under pressure anyway; mapped pages, e.g. a warm REPL's, stay) and compact, so
 * that free page reporting (virtio-balloon) can hand whole blocks to the host. */
static void
handle_reclaim(GaAgent *a, SbxFrame *frame)
{
    gint64 t0 = g_get_monotonic_time();
    JsonObject *h;

    sync();
    gboolean dropped = write_proc("/proc/sys/vm/drop_caches", "3");
    gboolean compacted = write_proc("/proc/sys/vm/compact_memory", "1");
    h = sbx_frame_header_new("ok", frame->id);
    json_object_set_boolean_member(h, "dropped", dropped);
    json_object_set_boolean_member(h, "compacted", compacted);
    json_object_set_int_member(h, "duration_us", g_get_monotonic_time() - t0);
    ga_send(a, h, NULL, 0);
}

static void
dispatch(GaAgent *a, SbxFrame *frame)
{
    const char *t = frame->type;

    if (g_str_equal(t, "hello")) {
        /* The host (re)connected. A quick disconnect + reconnect can happen
         * between two polls of the port, so the host greets first and the
         * agent answers; transfers of an earlier connection are dropped. */
        ga_files_reset(a->files);
        send_hello(a);
    } else if (g_str_equal(t, "ping")) {
        JsonObject *h = sbx_frame_header_new("pong", frame->id);
        json_object_set_string_member(h, "agent_version", PACKAGE_VERSION);
        ga_send(a, h, NULL, 0);
    } else if (g_str_equal(t, "exec")) {
        ga_exec_handle(a->exec, frame, a->last_read_us);
    } else if (g_str_equal(t, "warm")) {
        ga_exec_warm(a->exec, frame);
    } else if (g_str_equal(t, "cancel")) {
        /* Cancelling something already finished is not an error. */
        gint64 target = sbx_frame_get_int(frame, "target", -1);
        ga_exec_cancel(a->exec, target);
        ga_files_cancel(a->files, target);
        ga_send_ok(a, frame->id);
    } else if (g_str_equal(t, "reseed")) {
        handle_reseed(a, frame);
    } else if (g_str_equal(t, "reclaim")) {
        handle_reclaim(a, frame);
    } else if (g_str_equal(t, "write_file") || g_str_equal(t, "file_chunk") ||
               g_str_equal(t, "file_end") || g_str_equal(t, "read_file") ||
               g_str_equal(t, "file_ack") || g_str_equal(t, "list_files")) {
        ga_files_handle(a->files, frame);
    } else {
        ga_send_error(a, frame->id, GA_ERR_UNSUPPORTED, "unknown request type \"%s\"", t);
    }
}

/* ---- transport ---------------------------------------------------------- */

static void
stop_watches(GaAgent *a)
{
    g_clear_handle_id(&a->in_watch, g_source_remove);
    g_clear_handle_id(&a->out_watch, g_source_remove);
}

static void
transport_disconnected(GaAgent *a)
{
    stop_watches(a);
    a->connected = FALSE;
    g_byte_array_set_size(a->outq, 0);
    a->outq_off = 0;
    ga_files_reset(a->files);
    if (!a->virtio) {
        /* A socket channel does not come back: the host is gone. */
        g_main_loop_quit(a->loop);
        return;
    }
    g_debug("host disconnected; waiting for it to come back");
    transport_start(a);
}

static gboolean
on_readable(int fd, GIOCondition cond, gpointer data)
{
    GaAgent *a = data;
    guint8 buf[64 * 1024];

    for (int round = 0; round < READ_CHUNK / (int)sizeof buf; round++) {
        ssize_t n = read(a->fd, buf, sizeof buf);
        g_autoptr(GError) error = NULL;
        SbxFrame *frame;

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0) {
            if (n < 0)
                g_debug("channel read failed: %s", g_strerror(errno));
            a->in_watch = 0;
            transport_disconnected(a);
            return G_SOURCE_REMOVE;
        }
        a->last_read_us = g_get_monotonic_time();
        if (!sbx_frame_decoder_feed(a->dec, buf, (gsize)n, &error))
            goto protocol_error;
        while ((frame = sbx_frame_decoder_pop(a->dec, &error))) {
            dispatch(a, frame);
            sbx_frame_free(frame);
            if (!a->connected)
                return G_SOURCE_REMOVE;
        }
        if (error)
            goto protocol_error;
        continue;
    protocol_error:
        /* Framing is lost: tell the host, then start over with an empty buffer. */
        ga_send_error(a, 0, GA_ERR_PROTOCOL, "%s", error->message);
        sbx_frame_decoder_reset(a->dec);
        break;
    }
    if ((cond & (G_IO_HUP | G_IO_ERR)) && !(cond & G_IO_IN)) {
        a->in_watch = 0;
        transport_disconnected(a);
        return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
}

static void
transport_connected(GaAgent *a)
{
    a->connected = TRUE;
    a->probe_backoff_ms = 1;
    sbx_frame_decoder_reset(a->dec);
    a->in_watch = g_unix_fd_add(a->fd, G_IO_IN | G_IO_HUP | G_IO_ERR, on_readable, a);
    send_hello(a);
}

/* virtio-serial reports POLLHUP (and fails writes with EAGAIN) while the host
 * side is not connected. Probe with a backoff instead of watching the fd, which
 * would spin on the permanent HUP. */
static gboolean
on_probe(gpointer data)
{
    GaAgent *a = data;
    struct pollfd p = { .fd = a->fd, .events = POLLIN | POLLOUT };

    a->probe_timer = 0;
    if (poll(&p, 1, 0) >= 0 && !(p.revents & (POLLHUP | POLLERR | POLLNVAL))) {
        transport_connected(a);
        return G_SOURCE_REMOVE;
    }
    a->probe_backoff_ms = MIN(a->probe_backoff_ms * 2, PROBE_MAX_MS);
    a->probe_timer = g_timeout_add(a->probe_backoff_ms, on_probe, a);
    return G_SOURCE_REMOVE;
}

static void
transport_start(GaAgent *a)
{
    if (!a->virtio) {
        transport_connected(a);
        return;
    }
    a->probe_backoff_ms = 1;
    on_probe(a);
}

/* Find /dev/vportNpM whose /sys/class/virtio-ports/vportNpM/name is @name. */
static int
open_port(const char *name, GError **error)
{
    g_autoptr(GDir) dir = g_dir_open("/sys/class/virtio-ports", 0, error);
    const char *ent;

    if (!dir)
        return -1;
    while ((ent = g_dir_read_name(dir))) {
        g_autofree char *path = g_strdup_printf("/sys/class/virtio-ports/%s/name", ent);
        g_autofree char *contents = NULL;
        g_autofree char *dev = NULL;
        int fd;

        if (!g_file_get_contents(path, &contents, NULL, NULL))
            continue;
        g_strchomp(contents);
        if (!g_str_equal(contents, name))
            continue;
        dev = g_strdup_printf("/dev/%s", ent);
        fd = open(dev, O_RDWR | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            g_set_error(error, G_IO_ERROR, g_io_error_from_errno(err), "open %s: %s", dev,
                        g_strerror(err));
        }
        return fd;
    }
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND, "no virtio-serial port named %s", name);
    return -1;
}

/* ---- PID 1 -------------------------------------------------------------- */

/* As PID 1 we must reap every orphan, which would steal the exit status of
 * the REPLs the agent waits for. So PID 1 forks: the parent only reaps, and
 * powers the VM off when the agent itself dies (the host sees QEMU exit). */
static void
become_reaper_if_pid1(void)
{
    pid_t agent;
    int status;

    if (getpid() != 1)
        return;
    agent = fork();
    if (agent < 0) {
        fprintf(stderr, "sbx-agent: fork: %s\n", g_strerror(errno));
        return; /* serve as PID 1 without a reaper rather than not at all */
    }
    if (agent == 0)
        return;
    for (;;) {
        pid_t pid = waitpid(-1, &status, 0);
        if (pid == agent || (pid < 0 && errno == ECHILD)) {
            fprintf(stderr, "sbx-agent: agent exited (status 0x%x); powering off\n", status);
            sync();
            reboot(RB_POWER_OFF);
            _exit(1);
        }
    }
}

/* ---- main --------------------------------------------------------------- */

static char *
find_program(const char *opt, const char *const *candidates)
{
    if (opt)
        return *opt ? g_find_program_in_path(opt) : NULL; /* "" disables */
    for (; *candidates; candidates++)
        if (g_file_test(*candidates, G_FILE_TEST_IS_EXECUTABLE))
            return g_strdup(*candidates);
    return NULL;
}

int
main(int argc, char **argv)
{
    gint64 main_ns = boottime_ns(); /* first: exec -> here is the loader's time */
    static const char *const pythons[] = { "/usr/bin/python3", "/usr/local/bin/python3", NULL };
    static const char *const nodes[] = { "/usr/bin/node", "/usr/bin/nodejs", "/usr/local/bin/node", NULL };
    static const char *const shells[] = { "/bin/sh", NULL };
    int channel_fd = -1;
    g_autofree char *home = NULL;
    g_autofree char *port_name = NULL;
    g_autofree char *python = NULL;
    g_autofree char *node = NULL;
    g_autofree char *shell = NULL;
    gboolean no_setuid = FALSE;
    GOptionEntry entries[] = {
        { "channel-fd", 0, 0, G_OPTION_ARG_INT, &channel_fd, "Serve on this inherited socket instead of the virtio-serial port", "FD" },
        { "port-name", 0, 0, G_OPTION_ARG_STRING, &port_name, "virtio-serial port name (default " GA_PORT_NAME ")", "NAME" },
        { "home", 0, 0, G_OPTION_ARG_FILENAME, &home, "User home and file root (default /home/user)", "DIR" },
        { "no-setuid", 0, 0, G_OPTION_ARG_NONE, &no_setuid, "Run user code as the agent's user (tests only)", NULL },
        { "python", 0, 0, G_OPTION_ARG_FILENAME, &python, "python3 interpreter (\"\" disables)", "PATH" },
        { "node", 0, 0, G_OPTION_ARG_FILENAME, &node, "node interpreter (\"\" disables)", "PATH" },
        { "shell", 0, 0, G_OPTION_ARG_FILENAME, &shell, "shell for raw (default /bin/sh)", "PATH" },
        { NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- schedulerd guest agent");
    g_autoptr(GError) error = NULL;
    GaAgent agent = { .boot_main_ns = main_ns };
    GaAgent *a = &agent;

    read_init_timeline(a);
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
        fprintf(stderr, "sbx-agent: %s\n", error->message);
        return 2;
    }
    if (channel_fd < 0)
        become_reaper_if_pid1(); /* guest/init forks and reaps itself: only for other inits */
    signal(SIGPIPE, SIG_IGN);

    a->home = g_strdup(home ? home : "/home/user");
    a->no_setuid = no_setuid;
    a->uid = no_setuid ? getuid() : GA_USER_UID;
    a->gid = no_setuid ? getgid() : GA_USER_GID;
    a->python = find_program(python, pythons);
    a->node = find_program(node, nodes);
    a->shell = find_program(shell, shells);
    if (!g_file_test(a->home, G_FILE_TEST_IS_DIR)) {
        fprintf(stderr, "sbx-agent: home %s is not a directory\n", a->home);
        return 1;
    }
    a->loop = g_main_loop_new(NULL, FALSE);
    a->dec = sbx_frame_decoder_new();
    a->outq = g_byte_array_sized_new(256 * 1024);
    a->exec = ga_exec_new(a);
    a->files = ga_files_new(a);

    if (channel_fd >= 0) {
        int fl = fcntl(channel_fd, F_GETFL);
        if (fl < 0 || fcntl(channel_fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
            fcntl(channel_fd, F_SETFD, FD_CLOEXEC) < 0) {
            fprintf(stderr, "sbx-agent: bad --channel-fd %d: %s\n", channel_fd, g_strerror(errno));
            return 2;
        }
        a->fd = channel_fd;
        a->virtio = FALSE;
    } else {
        /* The port appears shortly after boot; the module may still be probing. */
        for (int i = 0; i < 5000; i++) {
            g_clear_error(&error);
            a->fd = open_port(port_name ? port_name : GA_PORT_NAME, &error);
            if (a->fd >= 0 || !g_error_matches(error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND))
                break;
            g_usleep(1000); /* before the loop runs; nothing else to serve yet */
        }
        if (a->fd < 0) {
            fprintf(stderr, "sbx-agent: %s\n", error->message);
            return 1;
        }
        a->virtio = TRUE;
    }
    /* hello first (the loop's first iteration writes it); what follows it does not
     * need to come before */
    transport_start(a);
    if (a->virtio) {
        /* In the VM the OOM killer must pick user code, never the agent. */
        /* a plain write: g_file_set_contents would try a temp file + rename in /proc */
        int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
        if (oom < 0 || write(oom, "-1000", 5) != 5)
            g_warning("cannot protect the agent from the OOM killer: %s", g_strerror(errno));
        if (oom >= 0)
            close(oom);
    }
    g_main_loop_run(a->loop);

    stop_watches(a);
    g_clear_handle_id(&a->probe_timer, g_source_remove);
    ga_files_free(a->files);
    ga_exec_free(a->exec);
    g_byte_array_unref(a->outq);
    sbx_frame_decoder_free(a->dec);
    g_main_loop_unref(a->loop);
    close(a->fd);
    g_free(a->home);
    g_free(a->python);
    g_free(a->node);
    g_free(a->shell);
    return a->exit_status;
}
