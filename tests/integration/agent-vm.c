/* SPDX-License-Identifier: MIT
 *
 * Integration test: boot the real guest image ($SBX_GUEST_DIR, `make
 * guest-image`) under TCG the way the contract attaches it (microvm,
 * virtio-mmio, agent port org.schedulerd.agent.0 on a socketpair fd), spawned
 * with the project's spawn helper, and drive the agent inside it with the real
 * SbxGuest client: python / javascript / raw, persistent state, user code as
 * uid 1000 with no_new_privs, timeout, kill -9, a file round trip and reseed.
 * Prints TAP; time to hello and the warm print(1) round trip are printed as
 * comments (measured, not asserted). Skips (77) without QEMU or an image with
 * the agent.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <gio/gio.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>

#include "common/sbx-spawn.h"
#include "scheduler/sbx-guest.h"
#include "tests/sbx-test-loop.h"
#include "tests/sbx-test-tap.h"


static void
on_output(SbxGuestStream stream, const guint8 *data, gsize len, gpointer user_data)
{
    GString **o = user_data;
    g_string_append_len(o[stream == SBX_GUEST_STDOUT ? 0 : 1], (const char *)data, (gssize)len);
}

/* Returns stdout; *res filled; FALSE result code -1000 on a request error. */
static char *
exec(SbxGuest *g, SbxLanguage lang, const char *code, guint timeout, SbxGuestExecResult *res)
{
    g_autoptr(GBytes) b = g_bytes_new(code, strlen(code));
    g_autoptr(GError) error = NULL;
    GString *o[2] = { g_string_new(NULL), g_string_new(NULL) };
    GAsyncResult *r = NULL;

    memset(res, 0, sizeof *res);
    sbx_guest_exec_async(g, lang, b, timeout, NULL, on_output, o, NULL, NULL, sbx_test_store_result, &r);
    if (!sbx_guest_exec_finish(g, sbx_test_wait_result(&r), res, &error)) {
        printf("# exec failed: %s\n", error->message);
        res->exit_code = -1000;
    }
    g_object_unref(r);
    if (o[1]->len) {
        g_auto(GStrv) lines = g_strsplit(o[1]->str, "\n", -1);
        for (char **l = lines; *l; l++)
            if (**l)
                printf("# stderr: %s\n", *l);
    }
    g_string_free(o[1], TRUE);
    return g_string_free(o[0], FALSE);
}

static guint
host_tsc_khz(void)
{
    g_autofree char *s = NULL;
    if (g_file_get_contents("/sys/devices/system/cpu/cpu0/tsc_freq_khz", &s, NULL, NULL))
        return (guint)g_ascii_strtoull(s, NULL, 10);
    g_clear_pointer(&s, g_free);
    if (g_file_get_contents("/proc/cpuinfo", &s, NULL, NULL)) {
        char *p = strstr(s, "cpu MHz");
        if (p && (p = strchr(p, ':')))
            return (guint)(g_ascii_strtod(p + 1, NULL) * 1000);
    }
    return 0;
}

static SbxChild *
spawn_vm(const char *qemu, const char *dir, const char *cmdline, const char *chardev, int fd,
         GError **error)
{
    g_autoptr(SbxSpawnSpec) spec = sbx_spawn_spec_new();

    sbx_spawn_spec_add_args(spec, qemu, "-M", "microvm", "-accel", "tcg", "-m", "512", "-smp", "1",
                            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                            "-global", "virtio-mmio.force-legacy=false", NULL);
    sbx_spawn_spec_add_arg(spec, "-kernel");
    sbx_spawn_spec_add_argf(spec, "%s/vmlinux", dir);
    sbx_spawn_spec_add_arg(spec, "-initrd");
    sbx_spawn_spec_add_argf(spec, "%s/initramfs.cpio", dir);
    sbx_spawn_spec_add_arg(spec, "-append");
    sbx_spawn_spec_add_argf(spec, "%s tsc_early_khz=%u", cmdline, host_tsc_khz());
    sbx_spawn_spec_add_args(spec, "-serial", "stdio", "-drive", NULL);
    sbx_spawn_spec_add_argf(spec, "file=%s/rootfs.erofs,format=raw,if=none,id=root,readonly=on", dir);
    sbx_spawn_spec_add_args(spec, "-device", "virtio-blk-device,drive=root,serial=sbx-root",
                            "-device", "virtio-serial-device", "-chardev", chardev,
                            "-device", "virtserialport,chardev=agent,name=org.schedulerd.agent.0", NULL);
    if (fd >= 0)
        sbx_spawn_spec_take_fd(spec, fd, 3);
    return sbx_child_spawn(spec, error);
}

static void
stop_vm(SbxChild *child)
{
    GAsyncResult *r = NULL;
    sbx_child_kill(child, SIGKILL);
    sbx_child_wait_async(child, NULL, sbx_test_store_result, &r);
    sbx_child_wait_finish(child, sbx_test_wait_result(&r), NULL);
    g_object_unref(r);
}

/* Connect to QEMU's listening chardev socket (test only: a short blocking retry). */
static SbxGuest *
connect_guest(const char *path)
{
    for (int i = 0; i < 500; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        g_strlcpy(sa.sun_path, path, sizeof sa.sun_path);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
            return sbx_guest_new(fd);
        close(fd);
        g_usleep(20 * 1000);
    }
    return NULL;
}

static gboolean
wait_hello(SbxGuest *g, GError **error)
{
    GAsyncResult *r = NULL;
    gboolean ok;
    sbx_guest_wait_hello_async(g, 180000, NULL, sbx_test_store_result, &r);
    ok = sbx_guest_wait_hello_finish(g, sbx_test_wait_result(&r), error);
    g_object_unref(r);
    return ok;
}

/* The host disconnects and reconnects (QEMU chardev in server mode): the agent
 * sees POLLHUP on the port, waits without spinning, greets the new peer, and
 * its REPLs survive. Also covers a host that connects before the guest opened
 * the port. */
static void
test_reconnect(const char *qemu, const char *dir, const char *cmdline)
{
    g_autofree char *tmp = g_dir_make_tmp("sbx-agent-vm-XXXXXX", NULL);
    g_autofree char *sock = g_build_filename(tmp, "agent.sock", NULL);
    g_autofree char *chardev = g_strdup_printf("socket,id=agent,path=%s,server=on,wait=off", sock);
    g_autoptr(GError) error = NULL;
    g_autoptr(SbxChild) child = spawn_vm(qemu, dir, cmdline, chardev, -1, &error);
    SbxGuestExecResult res;

    if (!child) {
        OK(FALSE, "qemu with a listening agent socket starts: %s", error->message);
        return;
    }
    {
        g_autoptr(SbxGuest) g = connect_guest(sock);
        gboolean ok = g && wait_hello(g, &error);
        OK(ok, "hello to a host that connected before the guest opened its port (%s)",
           ok ? "ok" : error ? error->message : "no connection");
        if (!ok) {
            g_autofree char *console = sbx_child_dup_console_tail(child, 20);
            g_auto(GStrv) lines = g_strsplit(console ? console : "", "\n", -1);
            for (char **l = lines; *l; l++)
                printf("# console: %s\n", *l);
        }
        if (ok) {
            g_free(exec(g, SBX_LANGUAGE_PYTHON, "survivor = 'still here'", 60, &res));
            OK(res.exit_code == 0, "exec on the first connection");
        }
        if (g)
            sbx_guest_close(g);
    }
    {
        g_autoptr(SbxGuest) g = connect_guest(sock);
        gboolean ok = g && wait_hello(g, &error);
        OK(ok, "the agent greets the host again after a reconnect (%s)", ok ? "ok" : error ? error->message : "no connection");
        if (ok) {
            g_autofree char *o = exec(g, SBX_LANGUAGE_PYTHON, "print(survivor)", 60, &res);
            OK(res.exit_code == 0 && g_str_equal(o, "still here\n"), "the python REPL survived the reconnect (\"%s\")", o);
        }
        if (g)
            sbx_guest_close(g);
    }
    stop_vm(child);
    (void)g_unlink(sock);
    (void)g_rmdir(tmp);
}

static void
skip(const char *why)
{
    printf("1..0 # SKIP %s\n", why);
    exit(77);
}

int
main(void)
{
    const char *dir = g_getenv("SBX_GUEST_DIR");
    g_autofree char *qemu = g_find_program_in_path("qemu-system-x86_64");
    g_autofree char *cmdline = NULL, *manifest = NULL;
    g_autoptr(GError) error = NULL;
    g_autoptr(SbxChild) child = NULL;
    g_autoptr(SbxGuest) g = NULL;
    SbxGuestExecResult res;
    GAsyncResult *r = NULL;
    int sv[2];
    gint64 t0;
    gboolean ok;

    if (!qemu)
        skip("qemu-system-x86_64 not installed (ci/deps.sh installs it)");
    if (!dir || !*dir)
        skip("SBX_GUEST_DIR not set (make guest-image)");
    {
        g_autofree char *mpath = g_build_filename(dir, "manifest.json", NULL);
        g_autofree char *cpath = g_build_filename(dir, "cmdline", NULL);
        g_autoptr(JsonParser) p = json_parser_new();
        JsonNode *root;
        if (!g_file_get_contents(mpath, &manifest, NULL, NULL) ||
            !g_file_get_contents(cpath, &cmdline, NULL, NULL))
            skip("no guest image in SBX_GUEST_DIR (run make guest-image)");
        if (!json_parser_load_from_data(p, manifest, -1, NULL) || !(root = json_parser_get_root(p)) ||
            !JSON_NODE_HOLDS_OBJECT(root) ||
            json_object_get_string_member_with_default(json_node_get_object(root), "agent_sha256", NULL) == NULL)
            skip("the guest image has no agent (build guest/agent/sbx-agent, then make guest-image)");
        g_strstrip(cmdline);
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        printf("1..0 # SKIP socketpair: %s\n", g_strerror(errno));
        return 99;
    }

    t0 = g_get_monotonic_time();
    child = spawn_vm(qemu, dir, cmdline, "socket,id=agent,fd=3", sv[1], &error);
    if (!child) {
        printf("not ok 1 - qemu starts: %s\n1..1\n", error->message);
        close(sv[0]);
        return 1;
    }
    g = sbx_guest_new(sv[0]);
    sbx_guest_wait_hello_async(g, 180000, NULL, sbx_test_store_result, &r);
    ok = sbx_guest_wait_hello_finish(g, sbx_test_wait_result(&r), &error);
    g_clear_object(&r);
    printf("# TCG boot to agent hello: %.0f ms\n", (g_get_monotonic_time() - t0) / 1000.0);
    OK(ok && sbx_guest_has_language(g, SBX_LANGUAGE_PYTHON) && sbx_guest_has_language(g, SBX_LANGUAGE_JAVASCRIPT) &&
       sbx_guest_has_language(g, SBX_LANGUAGE_RAW),
       "agent in the VM says hello with python, javascript and raw (%s)", ok ? sbx_guest_get_agent_version(g) : error->message);
    if (!ok) {
        g_autofree char *console = sbx_child_dup_console_tail(child, 40);
        g_auto(GStrv) lines = g_strsplit(console ? console : "", "\n", -1);
        for (char **l = lines; *l; l++)
            printf("# console: %s\n", *l);
        goto out;
    }

    sbx_guest_reseed_async(g, NULL, NULL, sbx_test_store_result, &r);
    ok = sbx_guest_reseed_finish(g, sbx_test_wait_result(&r), &error);
    g_clear_object(&r);
    OK(ok, "reseed (RNDADDENTROPY + RNDRESEEDCRNG) in the guest");

    {
        g_autofree char *o = exec(g, SBX_LANGUAGE_PYTHON, "print('py', 6 * 7)\nimport sys\nsys.exit(3)", 60, &res);
        OK(res.exit_code == 3 && g_str_equal(o, "py 42\n"), "python in the VM prints and exits 3 (%d)", res.exit_code);
    }
    {
        g_autofree char *o = exec(g, SBX_LANGUAGE_JAVASCRIPT, "console.log('js', 6 * 7); process.exit(5)", 60, &res);
        OK(res.exit_code == 5 && g_str_equal(o, "js 42\n"), "javascript in the VM prints and exits 5 (%d)", res.exit_code);
    }
    {
        g_autofree char *o = exec(g, SBX_LANGUAGE_RAW, "echo sh $((6 * 7)); exit 7", 60, &res);
        OK(res.exit_code == 7 && g_str_equal(o, "sh 42\n"), "raw in the VM prints and exits 7 (%d)", res.exit_code);
    }
    {
        g_autofree char *a = exec(g, SBX_LANGUAGE_PYTHON, "state = {'n': 1}", 60, &res);
        g_autofree char *b = exec(g, SBX_LANGUAGE_PYTHON, "state['n'] += 1; print(state['n'])", 60, &res);
        OK(g_str_equal(b, "2\n"), "python state persists in the VM");
    }
    {
        g_autofree char *o = exec(g, SBX_LANGUAGE_RAW,
                                  "id -u; id -g; grep NoNewPrivs /proc/self/status | tr -d ' \\t'; pwd; echo $HOME; ulimit -c; cat /proc/self/oom_score_adj", 60, &res);
        OK(g_str_equal(o, "1000\n1000\nNoNewPrivs:1\n/home/user\n/home/user\n0\n500\n"),
           "user code runs as 1000:1000, no_new_privs, in /home/user, core 0, oom_score_adj 500 (\"%s\")", o);
    }
    {
        /* The REPL drivers' control pipes (fds 3 and 4) do not leak into the user's children. */
        g_autofree char *js = exec(g, SBX_LANGUAGE_JAVASCRIPT,
            "console.log(require('child_process').execSync('for f in 3 4; do [ -e /proc/$$/fd/$f ] && echo leaked $f; done; echo clean').toString().trim())", 60, &res);
        OK(g_str_equal(js, "clean\n"), "javascript children do not inherit the REPL control pipes (\"%s\")", js);
        g_autofree char *py = exec(g, SBX_LANGUAGE_PYTHON,
            "import subprocess\nprint(subprocess.run('for f in 3 4; do [ -e /proc/$$/fd/$f ] && echo leaked $f; done; echo clean', shell=True, close_fds=False, capture_output=True, text=True).stdout.strip())", 60, &res);
        OK(g_str_equal(py, "clean\n"), "python children do not inherit the REPL control pipes (\"%s\")", py);
    }
    {
        g_autofree char *o = exec(g, SBX_LANGUAGE_PYTHON, "import time\ntime.sleep(60)", 2, &res);
        g_autofree char *a = exec(g, SBX_LANGUAGE_PYTHON, "print(globals().get('state', 'fresh'))", 60, &res);
        OK(g_str_equal(a, "fresh\n"), "timeout gives a fresh REPL in the VM");
    }
    {
        g_autofree char *o = exec(g, SBX_LANGUAGE_PYTHON, "import os\nos.kill(os.getpid(), 9)", 60, &res);
        OK(res.exit_code == 137 && res.retire, "kill -9 in the VM gives 137 and retire (%d)", res.exit_code);
    }
    {
        /* A real OOM in the 512 MiB guest: the kernel kills the user's python (oom_score_adj
         * 500), not the agent; 137 + retire; the agent keeps serving. */
        /* 300 s: before the OOM kill the guest kernel reclaims page cache and re-reads
         * python's code from the root disk, which under TCG on a busy host once took
         * over 120 s (the exec then timed out: -1). */
        g_autofree char *o = exec(g, SBX_LANGUAGE_PYTHON,
                                  "hog = []\nwhile True:\n    hog.append(bytearray(32 * 1024 * 1024))", 300, &res);
        OK(res.exit_code == 137 && res.retire && !res.timed_out, "OOM in the guest gives 137 and retire (%d%s)",
           res.exit_code, res.timed_out ? ", timed out" : "");
        g_autofree char *after = exec(g, SBX_LANGUAGE_RAW, "echo alive", 60, &res);
        OK(g_str_equal(after, "alive\n"), "the agent survives the OOM kill");
    }
    {
        /* 8 MiB file round trip through the virtio-serial port. */
        const gsize size = 8 * 1024 * 1024;
        g_autofree guint8 *data = g_malloc(size);
        guint32 x = 0xdeadbeef;
        guint64 n = 0;
        for (gsize i = 0; i < size; i++) {
            x ^= x << 13; x ^= x >> 17; x ^= x << 5;
            data[i] = (guint8)x;
        }
        g_autoptr(GInputStream) in = g_memory_input_stream_new_from_data(data, (gssize)size, NULL);
        gint64 w0 = g_get_monotonic_time();
        sbx_guest_write_file_async(g, "blob.bin", in, 0600, NULL, sbx_test_store_result, &r);
        ok = sbx_guest_write_file_finish(g, sbx_test_wait_result(&r), &n, &error);
        g_clear_object(&r);
        gint64 w1 = g_get_monotonic_time();
        g_autoptr(GOutputStream) mem = g_memory_output_stream_new_resizable();
        sbx_guest_read_file_async(g, "blob.bin", mem, NULL, sbx_test_store_result, &r);
        gboolean ok2 = sbx_guest_read_file_finish(g, sbx_test_wait_result(&r), &n, &error);
        g_clear_object(&r);
        gint64 w2 = g_get_monotonic_time();
        g_output_stream_close(mem, NULL, NULL);
        OK(ok && ok2 && n == size &&
           memcmp(g_memory_output_stream_get_data(G_MEMORY_OUTPUT_STREAM(mem)), data, size) == 0,
           "8 MiB file round-trips byte-identical through the VM");
        printf("# VM write_file 8 MiB %.0f ms, read_file %.0f ms\n", (w1 - w0) / 1000.0, (w2 - w1) / 1000.0);
        g_autofree char *o = exec(g, SBX_LANGUAGE_RAW, "stat -c '%u %a %s' blob.bin", 60, &res);
        OK(g_str_equal(o, "1000 600 8388608\n"), "uploaded file is owned by the user with mode 0600 (\"%s\")", o);
    }
    {
        enum { N = 100 };
        double t[N];
        for (int i = 0; i < N; i++) {
            gint64 s = g_get_monotonic_time();
            g_free(exec(g, SBX_LANGUAGE_PYTHON, "print(1)", 60, &res));
            t[i] = (g_get_monotonic_time() - s) / 1000.0;
        }
        for (int i = 0; i < N; i++)
            for (int j = i + 1; j < N; j++)
                if (t[j] < t[i]) { double tmp = t[i]; t[i] = t[j]; t[j] = tmp; }
        printf("# VM (TCG) warm python print(1) round trip, N=%d: min %.2f / median %.2f / p95 %.2f ms\n",
               N, t[0], t[N / 2], t[N * 95 / 100]);
        OK(res.exit_code == 0, "100 warm python execs in the VM");
    }

out:
    sbx_guest_close(g);
    stop_vm(child);
    test_reconnect(qemu, dir, cmdline);
    printf("1..%d\n", test_no);
    return failures ? 1 : 0;
}
