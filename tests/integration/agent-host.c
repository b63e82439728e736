/* SPDX-License-Identifier: MIT
 *
 * Integration test: the real guest agent (guest/agent/sbx-agent) run on the
 * host over a socketpair (--channel-fd, --home <tmp>, --no-setuid), driven by
 * the real host client (scheduler/sbx-guest.c). Covers python / javascript /
 * raw exit codes and persistent state, env, timeouts (-1, then a fresh REPL),
 * kill -9 (137 + retire), output limits, a 50 MiB file round trip, path
 * escapes, cancellation and a dead channel. Prints TAP. Also prints the warm
 * REPL print(1) round trip as a TAP comment (measured, not asserted).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gio/gio.h>
#include <glib/gstdio.h>

#include "scheduler/sbx-guest.h"
#include "tests/sbx-test-loop.h"
#include "tests/sbx-test-tap.h"

static GMainContext *ctx;

/* ---- sync helpers ------------------------------------------------------- */

static GAsyncResult *
wait_result(GAsyncResult **slot)
{
    while (!*slot)
        g_main_context_iteration(ctx, TRUE);
    return *slot;
}

typedef struct {
    GString *out;
    GString *err;
    guint chunks;
} Output;

static void
on_output(SbxGuestStream stream, const guint8 *data, gsize len, gpointer user_data)
{
    Output *o = user_data;
    g_string_append_len(stream == SBX_GUEST_STDOUT ? o->out : o->err, (const char *)data, (gssize)len);
    o->chunks++;
}

static void
output_clear(Output *o)
{
    g_string_free(o->out, TRUE);
    g_string_free(o->err, TRUE);
}

static gboolean
run_exec(SbxGuest *g, SbxLanguage lang, const char *code, guint timeout, GHashTable *env,
         Output *o, SbxGuestExecResult *res, GCancellable *cancel, GError **error)
{
    g_autoptr(GBytes) b = g_bytes_new(code, strlen(code));
    GAsyncResult *r = NULL;
    gboolean ok;

    o->out = g_string_new(NULL);
    o->err = g_string_new(NULL);
    o->chunks = 0;
    memset(res, 0, sizeof *res);
    sbx_guest_exec_async(g, lang, b, timeout, env, on_output, o, NULL, cancel, sbx_test_store_result, &r);
    ok = sbx_guest_exec_finish(g, wait_result(&r), res, error);
    g_object_unref(r);
    return ok;
}

/* exec and expect success; returns stdout (owned), fills *code. */
static char *
simple_exec(SbxGuest *g, SbxLanguage lang, const char *code, int *exit_code)
{
    Output o;
    SbxGuestExecResult res;
    g_autoptr(GError) error = NULL;
    char *out;

    if (!run_exec(g, lang, code, 30, NULL, &o, &res, NULL, &error)) {
        printf("# exec failed: %s\n", error->message);
        output_clear(&o);
        *exit_code = -1000;
        return g_strdup("");
    }
    *exit_code = res.exit_code;
    if (o.err->len) {
        g_auto(GStrv) lines = g_strsplit(o.err->str, "\n", -1);
        for (char **l = lines; *l; l++)
            if (**l)
                printf("# stderr: %s\n", *l);
    }
    out = g_strdup(o.out->str);
    output_clear(&o);
    return out;
}

/* ---- agent process ------------------------------------------------------ */

typedef struct {
    GSubprocess *proc;
    SbxGuest *guest;
    char *home;
} Agent;

static gboolean
agent_start(Agent *a, GError **error)
{
    const char *builddir = g_getenv("top_builddir");
    g_autofree char *agent = g_build_filename(builddir ? builddir : ".", "guest/agent/sbx-agent", NULL);
    g_autoptr(GSubprocessLauncher) l = g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_NONE);
    int sv[2];
    GAsyncResult *r = NULL;
    gboolean ok;

    a->home = g_dir_make_tmp("sbx-agent-home-XXXXXX", error);
    if (!a->home)
        return FALSE;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "socketpair: %s", g_strerror(errno));
        return FALSE;
    }
    g_subprocess_launcher_take_fd(l, sv[1], 3);
    a->proc = g_subprocess_launcher_spawn(l, error, agent, "--channel-fd", "3", "--home", a->home,
                                          "--no-setuid", NULL);
    if (!a->proc) {
        close(sv[0]);
        return FALSE;
    }
    a->guest = sbx_guest_new(sv[0]);
    sbx_guest_wait_hello_async(a->guest, 10000, NULL, sbx_test_store_result, &r);
    ok = sbx_guest_wait_hello_finish(a->guest, wait_result(&r), error);
    g_object_unref(r);
    return ok;
}

static void
agent_stop(Agent *a)
{
    if (a->guest) {
        sbx_guest_close(a->guest);
        g_clear_object(&a->guest);
    }
    if (a->proc) {
        GAsyncResult *r = NULL;
        g_subprocess_wait_async(a->proc, NULL, sbx_test_store_result, &r);
        g_subprocess_wait_finish(a->proc, wait_result(&r), NULL);
        g_object_unref(r);
        g_clear_object(&a->proc);
    }
    if (a->home) {
        g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", a->home);
        (void)!system(cmd);
        g_clear_pointer(&a->home, g_free);
    }
}

/* ---- tests -------------------------------------------------------------- */

static void
test_languages(SbxGuest *g)
{
    int code;
    g_autofree char *o1 = simple_exec(g, SBX_LANGUAGE_PYTHON, "print('hello from python')\nimport sys\nsys.exit(3)", &code);
    OK(g_str_equal(o1, "hello from python\n") && code == 3, "python prints and exits 3 (got %d, \"%s\")", code, o1);
    g_autofree char *o2 = simple_exec(g, SBX_LANGUAGE_JAVASCRIPT, "console.log('hello from js'); process.exit(5)", &code);
    OK(g_str_equal(o2, "hello from js\n") && code == 5, "javascript prints and exits 5 (got %d, \"%s\")", code, o2);
    g_autofree char *o3 = simple_exec(g, SBX_LANGUAGE_RAW, "echo hello from sh; exit 7", &code);
    OK(g_str_equal(o3, "hello from sh\n") && code == 7, "raw prints and exits 7 (got %d, \"%s\")", code, o3);
    g_autofree char *o4 = simple_exec(g, SBX_LANGUAGE_RAW, "kill -TERM $$", &code);
    OK(code == 128 + 15, "raw killed by SIGTERM exits 143 (got %d)", code);
    g_autofree char *o5 = simple_exec(g, SBX_LANGUAGE_PYTHON, "raise ValueError('boom')", &code);
    OK(code == 1, "python uncaught exception exits 1 (got %d)", code);
    g_autofree char *o6 = simple_exec(g, SBX_LANGUAGE_PYTHON, "import os\nprint(os.getcwd() == os.environ['HOME'])", &code);
    OK(g_str_equal(o6, "True\n") && code == 0, "cwd is HOME (got \"%s\")", o6);
}

/* The exit frame times the agent's part: accept_us (request read -> code sent to
 * the interpreter) and duration_us (code sent -> exit seen), both reported. */
static void
test_exit_timing(SbxGuest *g)
{
    Output o;
    SbxGuestExecResult res = {0};
    g_autoptr(GError) error = NULL;
    gboolean ok = run_exec(g, SBX_LANGUAGE_PYTHON, "print(1)", 30, NULL, &o, &res, NULL, &error);
    output_clear(&o);
    OK(ok && res.accept_us >= 0 && res.accept_us < 10 * G_USEC_PER_SEC && res.duration_us > 0,
       "exit reports accept_us %" G_GINT64_FORMAT " and duration_us %" G_GUINT64_FORMAT,
       res.accept_us, res.duration_us);
}

static void
test_state(SbxGuest *g)
{
    int c1, c2, c3, c4;
    g_autofree char *a = simple_exec(g, SBX_LANGUAGE_PYTHON, "counter = 41\ndef bump():\n    global counter\n    counter += 1\n    return counter", &c1);
    g_autofree char *b = simple_exec(g, SBX_LANGUAGE_PYTHON, "print(bump())", &c2);
    OK(c1 == 0 && c2 == 0 && g_str_equal(b, "42\n"), "python state persists across execs (\"%s\")", b);
    g_autofree char *x = simple_exec(g, SBX_LANGUAGE_JAVASCRIPT, "let total = 10; function add(n) { total += n; return total; }", &c3);
    g_autofree char *y = simple_exec(g, SBX_LANGUAGE_JAVASCRIPT, "console.log(add(5))", &c4);
    OK(c3 == 0 && c4 == 0 && g_str_equal(y, "15\n"), "javascript state persists across execs (\"%s\")", y);
    int c5;
    g_autofree char *z = simple_exec(g, SBX_LANGUAGE_JAVASCRIPT, "setTimeout(() => console.log('timer fired'), 50)", &c5);
    OK(c5 == 0 && g_str_equal(z, "timer fired\n"), "javascript exec waits for pending timers (\"%s\")", z);
}

static void
test_env(SbxGuest *g)
{
    g_autoptr(GHashTable) env = g_hash_table_new(g_str_hash, g_str_equal);
    g_autoptr(GError) error = NULL;
    Output o;
    SbxGuestExecResult res;
    gboolean ok;

    g_hash_table_insert(env, "GREETING", "hi there");
    ok = run_exec(g, SBX_LANGUAGE_RAW, "echo \"$GREETING\"", 10, env, &o, &res, NULL, &error);
    OK(ok && g_str_equal(o.out->str, "hi there\n"), "raw sees user env");
    output_clear(&o);
    ok = run_exec(g, SBX_LANGUAGE_PYTHON, "import os; print(os.environ['GREETING'])", 10, env, &o, &res, NULL, &error);
    OK(ok && g_str_equal(o.out->str, "hi there\n"), "python sees user env");
    output_clear(&o);
    ok = run_exec(g, SBX_LANGUAGE_PYTHON, "import os; print(os.environ.get('GREETING'))", 10, NULL, &o, &res, NULL, &error);
    OK(ok && g_str_equal(o.out->str, "None\n"), "python env is restored after the exec");
    output_clear(&o);
    ok = run_exec(g, SBX_LANGUAGE_JAVASCRIPT, "console.log(process.env.GREETING)", 10, env, &o, &res, NULL, &error);
    OK(ok && g_str_equal(o.out->str, "hi there\n"), "javascript sees user env");
    output_clear(&o);

    g_hash_table_insert(env, "LD_PRELOAD", "/tmp/evil.so");
    ok = run_exec(g, SBX_LANGUAGE_RAW, "echo no", 10, env, &o, &res, NULL, &error);
    OK(!ok && g_error_matches(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_ENV) && o.out->len == 0,
       "LD_PRELOAD refused before anything runs: %s", error ? error->message : "(accepted)");
    output_clear(&o);
    g_clear_error(&error);
    ok = run_exec(g, SBX_LANGUAGE_RAW, "   \n", 10, NULL, &o, &res, NULL, &error);
    OK(!ok && g_error_matches(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_CODE), "blank code refused: %s",
       error ? error->message : "(accepted)");
    output_clear(&o);
    g_clear_error(&error);
    ok = run_exec(g, SBX_LANGUAGE_RAW, "echo x", 301, NULL, &o, &res, NULL, &error);
    OK(!ok && g_error_matches(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_TIMEOUT), "timeout 301 s refused: %s",
       error ? error->message : "(accepted)");
    output_clear(&o);
}

static void
test_timeout_and_kill(SbxGuest *g)
{
    g_autoptr(GError) error = NULL;
    Output o;
    SbxGuestExecResult res;
    int code;
    gboolean ok;

    g_free(simple_exec(g, SBX_LANGUAGE_PYTHON, "marker = 'old repl'", &code));
    ok = run_exec(g, SBX_LANGUAGE_PYTHON, "import time\nprint('sleeping', flush=True)\ntime.sleep(60)", 1, NULL, &o, &res, NULL, &error);
    OK(ok && res.exit_code == -1 && res.timed_out && g_str_equal(o.out->str, "sleeping\n"),
       "python timeout gives -1 and keeps output so far (code %d)", res.exit_code);
    output_clear(&o);
    g_autofree char *after = simple_exec(g, SBX_LANGUAGE_PYTHON, "print(globals().get('marker', 'fresh repl'))", &code);
    OK(code == 0 && g_str_equal(after, "fresh repl\n"), "the exec after a timeout works in a fresh REPL (\"%s\")", after);

    ok = run_exec(g, SBX_LANGUAGE_JAVASCRIPT, "while (true) {}", 1, NULL, &o, &res, NULL, &error);
    OK(ok && res.exit_code == -1 && res.timed_out, "javascript busy loop times out with -1 (code %d)", res.exit_code);
    output_clear(&o);
    g_autofree char *js = simple_exec(g, SBX_LANGUAGE_JAVASCRIPT, "console.log('js ok')", &code);
    OK(code == 0 && g_str_equal(js, "js ok\n"), "javascript works after a timeout");

    ok = run_exec(g, SBX_LANGUAGE_RAW, "trap '' TERM; sleep 30", 1, NULL, &o, &res, NULL, &error);
    OK(ok && res.exit_code == -1 && res.timed_out, "raw ignoring SIGTERM is SIGKILLed after the grace (code %d)", res.exit_code);
    output_clear(&o);

    ok = run_exec(g, SBX_LANGUAGE_PYTHON, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", 10, NULL, &o, &res, NULL, &error);
    OK(ok && res.exit_code == 137 && res.retire && !res.timed_out, "kill -9 of the user process gives 137 and retire (code %d)", res.exit_code);
    output_clear(&o);
    g_autofree char *p = simple_exec(g, SBX_LANGUAGE_PYTHON, "print('python ok')", &code);
    OK(code == 0 && g_str_equal(p, "python ok\n"), "python works after the kill");
}

static void
test_output_limits(SbxGuest *g)
{
    g_autoptr(GError) error = NULL;
    Output o;
    SbxGuestExecResult res;
    gboolean ok;

    ok = run_exec(g, SBX_LANGUAGE_PYTHON, "import sys\nsys.stdout.write('x' * (3 * 1024 * 1024))\nkeep = 'kept'", 30, NULL, &o, &res, NULL, &error);
    OK(ok && res.exit_code == 0 && res.stdout_truncated && o.out->len == SBX_MAX_STDOUT_BYTES &&
       res.stdout_bytes == SBX_MAX_STDOUT_BYTES,
       "stdout capped at exactly 1 MiB with stdout_truncated (got %zu bytes)", o.out->len);
    OK(o.chunks > 1, "stdout was streamed in %u chunks", o.chunks);
    output_clear(&o);
    ok = run_exec(g, SBX_LANGUAGE_PYTHON, "import sys\nsys.stderr.write('e' * 300000)", 30, NULL, &o, &res, NULL, &error);
    OK(ok && res.stderr_truncated && !res.stdout_truncated && o.err->len == SBX_MAX_STDERR_BYTES,
       "stderr capped at exactly 100 KiB with stderr_truncated (got %zu bytes)", o.err->len);
    output_clear(&o);
    int code;
    g_autofree char *s = simple_exec(g, SBX_LANGUAGE_PYTHON, "print(keep)", &code);
    OK(code == 0 && g_str_equal(s, "kept\n"), "session stays usable after output limits");

    /* Raw code larger than an argv string goes through a pipe. */
    g_autoptr(GString) big = g_string_new(NULL);
    while (big->len < 200 * 1024)
        g_string_append(big, "# padding padding padding padding padding padding padding padding\n");
    g_string_append(big, "echo big script ran");
    g_autofree char *bo = simple_exec(g, SBX_LANGUAGE_RAW, big->str, &code);
    OK(code == 0 && g_str_equal(bo, "big script ran\n"), "200 KiB raw script runs (\"%s\")", bo);
}

static gboolean
write_file(SbxGuest *g, const char *path, GInputStream *in, guint64 *size, GError **error)
{
    GAsyncResult *r = NULL;
    gboolean ok;
    sbx_guest_write_file_async(g, path, in, 0640, NULL, sbx_test_store_result, &r);
    ok = sbx_guest_write_file_finish(g, wait_result(&r), size, error);
    g_object_unref(r);
    return ok;
}

static gboolean
read_file(SbxGuest *g, const char *path, GOutputStream *out, guint64 *size, GError **error)
{
    GAsyncResult *r = NULL;
    gboolean ok;
    sbx_guest_read_file_async(g, path, out, NULL, sbx_test_store_result, &r);
    ok = sbx_guest_read_file_finish(g, wait_result(&r), size, error);
    g_object_unref(r);
    return ok;
}

static char *
sha256_file(const char *path)
{
    g_autoptr(GChecksum) c = g_checksum_new(G_CHECKSUM_SHA256);
    g_autoptr(GMappedFile) m = g_mapped_file_new(path, FALSE, NULL);
    if (!m)
        return g_strdup("?");
    g_checksum_update(c, (const guchar *)g_mapped_file_get_contents(m), g_mapped_file_get_length(m));
    return g_strdup(g_checksum_get_string(c));
}

static void
test_files(Agent *a)
{
    SbxGuest *g = a->guest;
    g_autoptr(GError) error = NULL;
    g_autofree char *tmpdir = g_dir_make_tmp("sbx-agent-files-XXXXXX", NULL);
    g_autofree char *src = g_build_filename(tmpdir, "src.bin", NULL);
    g_autofree char *dst = g_build_filename(tmpdir, "dst.bin", NULL);
    const gsize size = 50 * 1024 * 1024;
    guint64 wrote = 0, read = 0;
    gboolean ok;

    {
        g_autofree guint8 *data = g_malloc(size);
        guint32 x = 0x12345678;
        for (gsize i = 0; i < size; i++) { /* xorshift: incompressible, deterministic, with NULs */
            x ^= x << 13; x ^= x >> 17; x ^= x << 5;
            data[i] = (guint8)x;
        }
        g_file_set_contents(src, (const char *)data, (gssize)size, NULL);
    }
    {
        g_autoptr(GFile) f = g_file_new_for_path(src);
        g_autoptr(GFileInputStream) in = g_file_read(f, NULL, NULL);
        gint64 t0 = g_get_monotonic_time();
        ok = write_file(g, "data/deep/blob.bin", G_INPUT_STREAM(in), &wrote, &error);
        gint64 t1 = g_get_monotonic_time();
        OK(ok && wrote == size, "50 MiB write_file into a new subdirectory (%s)", ok ? "ok" : error->message);
        printf("# write_file 50 MiB: %.0f ms\n", (t1 - t0) / 1000.0);
    }
    {
        g_autoptr(GFile) f = g_file_new_for_path(dst);
        g_autoptr(GFileOutputStream) out = g_file_replace(f, NULL, FALSE, G_FILE_CREATE_NONE, NULL, NULL);
        gint64 t0 = g_get_monotonic_time();
        ok = read_file(g, "data/deep/blob.bin", G_OUTPUT_STREAM(out), &read, &error);
        gint64 t1 = g_get_monotonic_time();
        g_output_stream_close(G_OUTPUT_STREAM(out), NULL, NULL);
        printf("# read_file 50 MiB: %.0f ms\n", (t1 - t0) / 1000.0);
        g_autofree char *h1 = sha256_file(src);
        g_autofree char *h2 = sha256_file(dst);
        OK(ok && read == size && g_str_equal(h1, h2), "50 MiB read_file round-trips byte-identical (%s)", h2);
    }
    {
        g_autofree char *inhome = g_build_filename(a->home, "data/deep/blob.bin", NULL);
        GStatBuf st;
        OK(g_stat(inhome, &st) == 0 && (st.st_mode & 0777) == 0640 && (gsize)st.st_size == size,
           "stored with mode 0640 at the resolved path");
    }
    {
        GAsyncResult *r = NULL;
        gboolean trunc = TRUE;
        sbx_guest_list_files_async(g, "data/deep", NULL, sbx_test_store_result, &r);
        g_autoptr(GPtrArray) list = sbx_guest_list_files_finish(g, wait_result(&r), &trunc, &error);
        g_object_unref(r);
        SbxGuestFileInfo *fi = list && list->len == 1 ? list->pdata[0] : NULL;
        OK(fi && g_str_equal(fi->name, "blob.bin") && fi->type == SBX_GUEST_FILE_REGULAR && fi->size == size && !trunc,
           "list_files shows the file with its size");
    }
    /* Overwrite atomically with a small file; empty file works. */
    {
        g_autoptr(GInputStream) in = g_memory_input_stream_new_from_data("small\n", 6, NULL);
        ok = write_file(g, "data/deep/blob.bin", in, &wrote, &error);
        g_autoptr(GOutputStream) mem = g_memory_output_stream_new_resizable();
        gboolean ok2 = read_file(g, "data/deep/blob.bin", mem, &read, &error);
        g_output_stream_close(mem, NULL, NULL);
        OK(ok && ok2 && read == 6 &&
           memcmp(g_memory_output_stream_get_data(G_MEMORY_OUTPUT_STREAM(mem)), "small\n", 6) == 0,
           "write_file replaces an existing file");
        g_autoptr(GInputStream) empty = g_memory_input_stream_new();
        ok = write_file(g, "empty", empty, &wrote, &error);
        OK(ok && wrote == 0, "empty file upload");
    }
    /* Over the 500 MiB limit: refused, the partial upload is removed. */
    {
        g_autoptr(GFile) zero = g_file_new_for_path("/dev/zero");
        g_autoptr(GFileInputStream) in = g_file_read(zero, NULL, NULL);
        g_autoptr(GDir) dir = NULL;
        const char *name;
        gboolean leftovers = FALSE;
        g_clear_error(&error);
        ok = write_file(g, "huge.bin", G_INPUT_STREAM(in), &wrote, &error);
        g_autofree char *target = g_build_filename(a->home, "huge.bin", NULL);
        dir = g_dir_open(a->home, 0, NULL);
        while (dir && (name = g_dir_read_name(dir)))
            leftovers |= g_str_has_prefix(name, ".sbx-upload-");
        OK(!ok && g_error_matches(error, SBX_GUEST_ERROR, SBX_GUEST_ERROR_TOO_LARGE) &&
           !g_file_test(target, G_FILE_TEST_EXISTS) && !leftovers,
           "an endless upload stops at 500 MiB with TOO_LARGE and leaves nothing behind: %s",
           error ? error->message : "(accepted)");
    }
    /* The user's code sees the file. */
    {
        int code;
        g_autofree char *o = simple_exec(g, SBX_LANGUAGE_PYTHON, "print(open('data/deep/blob.bin').read(), end='')", &code);
        OK(code == 0 && g_str_equal(o, "small\n"), "user code reads the uploaded file from cwd");
    }
    /* Escapes. */
    {
        g_autoptr(GInputStream) in = g_memory_input_stream_new_from_data("x", 1, NULL);
        g_clear_error(&error);
        ok = write_file(g, "../escape.txt", in, &wrote, &error);
        OK(!ok && g_error_matches(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_PATH), "\"../escape.txt\" refused: %s",
           error ? error->message : "(accepted)");
        g_clear_error(&error);
        ok = write_file(g, "/etc/passwd", in, &wrote, &error);
        OK(!ok && g_error_matches(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_PATH), "absolute path refused");
    }
    {
        /* A symlink planted by user code must not lead outside the home. */
        int code;
        g_autofree char *outside = g_build_filename(tmpdir, "outside", NULL);
        g_mkdir(outside, 0700);
        g_autofree char *plant = g_strdup_printf("import os\nos.symlink('%s', 'link')\nos.symlink('%s/src.bin', 'filelink')", outside, tmpdir);
        g_free(simple_exec(g, SBX_LANGUAGE_PYTHON, plant, &code));
        g_autoptr(GInputStream) in = g_memory_input_stream_new_from_data("pwned", 5, NULL);
        g_clear_error(&error);
        ok = write_file(g, "link/pwned.txt", in, &wrote, &error);
        g_autofree char *pwned = g_build_filename(outside, "pwned.txt", NULL);
        OK(!ok && g_error_matches(error, SBX_GUEST_ERROR, SBX_GUEST_ERROR_INVALID_INPUT) &&
           !g_file_test(pwned, G_FILE_TEST_EXISTS),
           "write through a symlinked directory refused by the agent: %s", error ? error->message : "(accepted)");
        g_autoptr(GOutputStream) mem = g_memory_output_stream_new_resizable();
        g_clear_error(&error);
        ok = read_file(g, "filelink", mem, &read, &error);
        OK(!ok && g_error_matches(error, SBX_GUEST_ERROR, SBX_GUEST_ERROR_INVALID_INPUT),
           "read of a symlink refused by the agent: %s", error ? error->message : "(accepted)");
        g_clear_error(&error);
        ok = read_file(g, "no/such/file", mem, &read, &error);
        OK(!ok && g_error_matches(error, SBX_GUEST_ERROR, SBX_GUEST_ERROR_NOT_FOUND), "missing file is NOT_FOUND: %s",
           error ? error->message : "(accepted)");
    }
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", tmpdir);
    (void)!system(cmd);
}

static gboolean
cancel_later(gpointer data)
{
    g_cancellable_cancel(data);
    return G_SOURCE_REMOVE;
}

static void
test_misc(SbxGuest *g)
{
    g_autoptr(GError) error = NULL;
    GAsyncResult *r = NULL;
    SbxGuestExecResult res;
    gboolean ok;

    sbx_guest_ping_async(g, NULL, sbx_test_store_result, &r);
    ok = sbx_guest_ping_finish(g, wait_result(&r), &error);
    g_clear_object(&r);
    OK(ok, "ping");
    sbx_guest_warm_async(g, SBX_LANGUAGE_JAVASCRIPT, NULL, sbx_test_store_result, &r);
    ok = sbx_guest_warm_finish(g, wait_result(&r), &error);
    g_clear_object(&r);
    OK(ok, "warm javascript");
    {
        int c;
        g_free(simple_exec(g, SBX_LANGUAGE_JAVASCRIPT,
                           "globalThis.mr0 = Math.random; globalThis.vmr0 = "
                           "require('vm').runInNewContext('Math.random')",
                           &c));
    }
    sbx_guest_reseed_async(g, NULL, NULL, sbx_test_store_result, &r);
    ok = sbx_guest_reseed_finish(g, wait_result(&r), &error);
    g_clear_object(&r);
    OK(ok, "reseed with 64 host bytes (%s)", ok ? "ok" : error->message);
    {
        /* the running node REPL got fresh entropy: new Math.random in the main
         * context and in vm contexts (the clone case is tests/integration/test-l1-js) */
        int c;
        g_autofree char *o = simple_exec(
            g, SBX_LANGUAGE_JAVASCRIPT,
            "const vm = require('vm'), cx = vm.createContext(), xs = [0, 1, 2].map(Math.random);\n"
            "const vr = vm.runInContext('Math.random', cx);\n"
            "console.log(Math.random !== mr0, Math.random.name, xs.every((x) => x >= 0 && x < 1),\n"
            "  new Set(xs).size, vr !== vmr0 && vr.name === 'random' && vr !== Math.random,\n"
            "  vm.runInContext('Math.random() < 1', cx))",
            &c);
        OK(c == 0 && g_str_equal(o, "true random true 3 true true\n"),
           "after a reseed the javascript REPL has a new Math.random, in vm contexts too (%s)", o);
    }

    /* One exec at a time: a second one while the first runs is BUSY. */
    {
        g_autoptr(GBytes) slow = g_bytes_new_static("import time\ntime.sleep(0.5)", 26);
        g_autoptr(GBytes) fast = g_bytes_new_static("print(2)", 8);
        GAsyncResult *ra = NULL, *rb = NULL;
        g_autoptr(GError) ea = NULL;
        g_autoptr(GError) eb = NULL;
        sbx_guest_exec_async(g, SBX_LANGUAGE_PYTHON, slow, 10, NULL, NULL, NULL, NULL, NULL, sbx_test_store_result, &ra);
        sbx_guest_exec_async(g, SBX_LANGUAGE_PYTHON, fast, 10, NULL, NULL, NULL, NULL, NULL, sbx_test_store_result, &rb);
        gboolean okb = sbx_guest_exec_finish(g, wait_result(&rb), &res, &eb);
        gboolean oka = sbx_guest_exec_finish(g, wait_result(&ra), &res, &ea);
        OK(oka && !okb && g_error_matches(eb, SBX_GUEST_ERROR, SBX_GUEST_ERROR_BUSY),
           "a second concurrent exec is refused with BUSY, the first completes");
        g_object_unref(ra);
        g_object_unref(rb);
    }

    /* Cancel a running exec: the caller gets CANCELLED, the guest kills it. */
    g_autoptr(GCancellable) c = g_cancellable_new();
    Output o;
    g_timeout_add_full(G_PRIORITY_DEFAULT, 300, cancel_later, g_object_ref(c), g_object_unref);
    ok = run_exec(g, SBX_LANGUAGE_PYTHON, "import time\ntime.sleep(30)", 60, NULL, &o, &res, c, &error);
    OK(!ok && g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED), "cancelled exec fails with CANCELLED");
    output_clear(&o);
    /* Sent while the cancelled one is still being killed: queued, not BUSY. */
    g_clear_error(&error);
    ok = run_exec(g, SBX_LANGUAGE_PYTHON, "print('after cancel')", 10, NULL, &o, &res, NULL, &error);
    if (!ok)
        printf("# %s\n", error->message);
    OK(ok && g_str_equal(o.out->str, "after cancel\n"), "exec works after a cancel");
    output_clear(&o);
}

static void
bench_roundtrip(SbxGuest *g, SbxLanguage lang, const char *code)
{
    enum { N = 200 };
    double t[N];
    int c;
    g_free(simple_exec(g, lang, code, &c)); /* warm */
    for (int i = 0; i < N; i++) {
        gint64 t0 = g_get_monotonic_time();
        g_free(simple_exec(g, lang, code, &c));
        t[i] = (g_get_monotonic_time() - t0) / 1000.0;
    }
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++)
            if (t[j] < t[i]) { double x = t[i]; t[i] = t[j]; t[j] = x; }
    printf("# warm %s round trip of %s (host, socketpair), N=%d: min %.3f / median %.3f / p95 %.3f ms\n",
           sbx_language_to_string(lang), code, N, t[0], t[N / 2], t[N * 95 / 100]);
}

static int n_closed;

static void
on_closed(SbxGuest *g, gpointer data)
{
    n_closed++;
}

static void
test_disconnect(Agent *a)
{
    g_autoptr(GError) error = NULL;
    GAsyncResult *r1 = NULL, *r2 = NULL;
    g_autoptr(GBytes) code = g_bytes_new_static("import time\ntime.sleep(30)", 26);
    SbxGuestExecResult res;
    gboolean ok;

    g_signal_connect(a->guest, "closed", G_CALLBACK(on_closed), NULL);
    sbx_guest_exec_async(a->guest, SBX_LANGUAGE_PYTHON, code, 60, NULL, NULL, NULL, NULL, NULL, sbx_test_store_result, &r1);
    sbx_guest_ping_async(a->guest, NULL, sbx_test_store_result, &r2);
    while (!r2)
        g_main_context_iteration(ctx, TRUE);
    g_subprocess_force_exit(a->proc);
    ok = sbx_guest_exec_finish(a->guest, wait_result(&r1), &res, &error);
    OK(!ok && g_error_matches(error, SBX_GUEST_ERROR, SBX_GUEST_ERROR_DISCONNECTED),
       "agent death fails the pending exec with DISCONNECTED: %s", error ? error->message : "(none)");
    OK(n_closed == 1 && sbx_guest_is_closed(a->guest), "\"closed\" emitted once");
    g_clear_error(&error);
    GAsyncResult *r3 = NULL;
    sbx_guest_ping_async(a->guest, NULL, sbx_test_store_result, &r3);
    ok = sbx_guest_ping_finish(a->guest, wait_result(&r3), &error);
    OK(!ok && g_error_matches(error, SBX_GUEST_ERROR, SBX_GUEST_ERROR_DISCONNECTED), "requests after close fail with DISCONNECTED");
    g_object_unref(r1);
    g_object_unref(r2);
    g_object_unref(r3);
}

int
main(void)
{
    Agent a = { 0 };
    g_autoptr(GError) error = NULL;

    ctx = g_main_context_default();
    if (!g_file_test("/usr/bin/python3", G_FILE_TEST_IS_EXECUTABLE) ||
        !(g_file_test("/usr/bin/node", G_FILE_TEST_IS_EXECUTABLE) || g_file_test("/usr/bin/nodejs", G_FILE_TEST_IS_EXECUTABLE))) {
        printf("1..0 # SKIP needs /usr/bin/python3 and /usr/bin/node (ci/deps.sh installs them)\n");
        return 77;
    }
    if (!agent_start(&a, &error)) {
        printf("not ok 1 - agent starts and says hello: %s\n1..1\n", error->message);
        agent_stop(&a);
        return 1;
    }
    OK(sbx_guest_get_protocol_version(a.guest) == 1 && sbx_guest_has_language(a.guest, SBX_LANGUAGE_PYTHON) &&
       sbx_guest_has_language(a.guest, SBX_LANGUAGE_JAVASCRIPT) && sbx_guest_has_language(a.guest, SBX_LANGUAGE_RAW),
       "hello: protocol 1, agent %s, python/javascript/raw", sbx_guest_get_agent_version(a.guest));
    test_languages(a.guest);
    test_exit_timing(a.guest);
    test_state(a.guest);
    test_env(a.guest);
    test_timeout_and_kill(a.guest);
    test_output_limits(a.guest);
    test_files(&a);
    test_misc(a.guest);
    bench_roundtrip(a.guest, SBX_LANGUAGE_PYTHON, "print(1)");
    bench_roundtrip(a.guest, SBX_LANGUAGE_JAVASCRIPT, "console.log(1)");
    {
        /* Closing the channel ends the agent cleanly (under ASan this includes its leak check). */
        GAsyncResult *r = NULL;
        sbx_guest_close(a.guest);
        g_subprocess_wait_async(a.proc, NULL, sbx_test_store_result, &r);
        g_subprocess_wait_finish(a.proc, wait_result(&r), NULL);
        g_object_unref(r);
        OK(g_subprocess_get_if_exited(a.proc) && g_subprocess_get_exit_status(a.proc) == 0,
           "agent exits 0 when the host closes the channel");
        agent_stop(&a);
    }
    memset(&a, 0, sizeof a);
    if (!agent_start(&a, &error)) {
        OK(FALSE, "second agent starts: %s", error->message);
    } else {
        test_disconnect(&a);
    }
    agent_stop(&a);
    printf("1..%d\n", test_no);
    return failures ? 1 : 0;
}
