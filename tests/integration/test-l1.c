/* SPDX-License-Identifier: MIT
 *
 * Integration test of L1 templates and the warm pool (docs/snapshots.md) with
 * the real scheduler core in-process (SbxManager), real QEMU under TCG and the
 * real guest image ($SBX_GUEST_DIR): a cold run schedules a template build;
 * runs restored from it print the right output, get distinct CRNG state after
 * the reseed and do not see each other's files or REPL variables; the template's
 * RAM file is byte-identical after clones ran and idled (no balloon there);
 * javascript VMs restored from their template run in its warm node yet differ
 * in every random source node has (Math.random, OpenSSL-backed crypto, vm
 * contexts, workers) and keep the node across a session's execs; a state file
 * corrupted behind the cache's back (same size and mtime) makes the restore
 * fail and the run falls back to a cold boot (l1_hit false, failure counted in
 * Status); SCHEDULERD_L1=0 switches L1 off at run time; the warm pool serves a
 * run (warm_pool_hit); after shutdown no QEMU, run dir or temp file is left.
 * Prints TAP; restore/boot times are printed as comments, never asserted.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gio/gio.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>

#include "scheduler/sbx-admission.h"
#include "scheduler/sbx-manager.h"
#include "scheduler/sbx-session.h"
#include "tests/sbx-test-loop.h"
#include "tests/sbx-test-manager.h"
#include "tests/sbx-test-proc.h"
#include "tests/sbx-test-tap.h"

static void
run_code(SbxManager *mgr, const char *code, SbxTestRun *r)
{
    sbx_test_run(mgr, SBX_LANGUAGE_PYTHON, 0, 0, code, r);
}

/* A run's VM is released in the background after its result: wait for that. */
static gboolean
wait_cleanups(SbxManager *mgr)
{
    g_autoptr(GAsyncResult) res = NULL;
    sbx_manager_wait_cleanups_async(mgr, sbx_test_store_result, &res);
    return sbx_manager_wait_cleanups_finish(mgr, sbx_test_wait_result(&res), NULL) &&
           sbx_manager_get_n_cleanups(mgr) == 0;
}

static char *
find_file(const char *dir, const char *suffix)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *n;
    while (d && (n = g_dir_read_name(d)))
        if (g_str_has_suffix(n, suffix))
            return g_build_filename(dir, n, NULL);
    return NULL;
}

/* sha256 of a whole file (the template's RAM file is sparse: holes read as 0). */
static char *
file_sha256(const char *path)
{
    g_autoptr(GChecksum) c = g_checksum_new(G_CHECKSUM_SHA256);
    int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    if (fd < 0)
        return NULL;
    g_autofree guint8 *buf = g_malloc(1 << 20);
    ssize_t n;
    while ((n = read(fd, buf, 1 << 20)) > 0)
        g_checksum_update(c, buf, n);
    close(fd);
    return n == 0 ? g_strdup(g_checksum_get_string(c)) : NULL;
}

/* Overwrite the start of @path (the stream header and the first sections; the
 * middle may be ROM page data that QEMU loads without checking) with garbage,
 * keeping its size and mtime. */
static gboolean
corrupt_keep_identity(const char *path)
{
    struct stat st;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0)
        return FALSE;
    guint8 junk[4096];
    memset(junk, 0xa5, sizeof junk);
    off_t off = 0;
    gboolean ok = pwrite(fd, junk, MIN((off_t)sizeof junk, st.st_size - off), off) > 0;
    struct timespec ts[2] = {st.st_atim, st.st_mtim};
    ok = ok && futimens(fd, ts) == 0;
    close(fd);
    return ok;
}

/* The first exec of a restored javascript VM: when its node started (against
 * the wall clock), the clock, and one value of every random source. */
#define JS_RANDOM                                                                          \
    "(async () => {\n"                                                                     \
    "  const c = require('crypto'), vm = require('vm'), util = require('util');\n"         \
    "  const { Worker } = require('worker_threads'), s = c.webcrypto.subtle;\n"          \
    "  const hex = (b) => Buffer.from(b).toString('hex');\n"                               \
    "  const aes = await s.generateKey({ name: 'AES-GCM', length: 128 }, true, ['encrypt']);\n" \
    "  const ec = await s.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign']);\n" \
    "  const worker_math = await new Promise((res, rej) => {\n"                            \
    "    const w = new Worker('require(\"worker_threads\").parentPort.postMessage(Math.random())',\n" \
    "                         { eval: true });\n"                                          \
    "    w.once('message', res); w.once('error', rej);\n"                                 \
    "  });\n"                                                                              \
    "  console.log(JSON.stringify({\n"                                                     \
    "    age_s: (Date.now() - performance.timeOrigin) / 1000, now_ms: Date.now(),\n"      \
    "    math: Math.random(), math_again: Math.random(),\n"                                \
    "    bytes: c.randomBytes(16).toString('hex'),\n"                                      \
    "    bytes_async: (await util.promisify(c.randomBytes)(16)).toString('hex'),\n"        \
    "    uuid: c.randomUUID(), values: hex(c.getRandomValues(new Uint8Array(16))),\n"      \
    "    int: c.randomInt(2 ** 47), aes_key: hex(await s.exportKey('raw', aes)),\n"        \
    "    ec_key: (await s.exportKey('jwk', ec.privateKey)).d,\n"                           \
    "    vm_math: vm.runInNewContext('Math.random()'), worker_math }));\n"                 \
    "})()"

static JsonObject *
js_fields(const SbxTestRun *r)
{
    g_autoptr(JsonParser) p = json_parser_new();
    if (r->out == NULL || !json_parser_load_from_data(p, r->out, -1, NULL))
        return NULL;
    JsonNode *root = json_parser_get_root(p);
    return root && JSON_NODE_HOLDS_OBJECT(root) ? json_object_ref(json_node_get_object(root))
                                                : NULL;
}

static char *
js_member(JsonObject *o, const char *name)
{
    JsonNode *n = o ? json_object_get_member(o, name) : NULL;
    return n ? json_to_string(n, FALSE) : NULL;
}

/* One javascript exec in @sess; its stdout (owned), NULL when it failed. */
static char *
session_js(SbxManager *mgr, SbxSession *sess, const char *code)
{
    g_autoptr(SbxRunSpec) ex = sbx_run_spec_new(sbx_manager_get_config(mgr));
    g_autoptr(GOutputStream) out = g_memory_output_stream_new_resizable();
    g_autoptr(GAsyncResult) er = NULL;
    ex->language = SBX_LANGUAGE_JAVASCRIPT;
    ex->code = g_bytes_new(code, strlen(code));
    sbx_session_exec_async(sess, ex, out, NULL, sbx_test_store_result, &er);
    g_autoptr(SbxRunResult) rr = sbx_session_exec_finish(sess, sbx_test_wait_result(&er), NULL);
    g_output_stream_close(out, NULL, NULL);
    if (rr == NULL || rr->exit_code != 0)
        return NULL;
    GMemoryOutputStream *m = G_MEMORY_OUTPUT_STREAM(out);
    return g_strndup(g_memory_output_stream_get_data(m), g_memory_output_stream_get_data_size(m));
}

int
main(void)
{
    const char *guest = g_getenv("SBX_GUEST_DIR");
    g_autofree char *vmlinux = guest ? g_build_filename(guest, "vmlinux", NULL) : NULL;
    if (vmlinux == NULL || !g_file_test(vmlinux, G_FILE_TEST_EXISTS)) {
        printf("1..0 # SKIP no guest image in SBX_GUEST_DIR (make guest-image)\n");
        return 77;
    }
    g_autofree char *qemu = g_find_program_in_path("qemu-system-x86_64");
    if (qemu == NULL) {
        printf("1..0 # SKIP qemu-system-x86_64 not installed\n");
        return 77;
    }
    g_autofree char *rt = g_dir_make_tmp("sbx-l1-test-XXXXXX", NULL);
    g_autofree char *l1_dir = g_build_filename(rt, "l1", NULL);
    g_autofree char *vms_dir = g_build_filename(rt, "vms", NULL);
    g_setenv("SCHEDULERD_WARM_POOL", "0", TRUE);
    g_unsetenv("SCHEDULERD_L1");
    g_unsetenv("SCHEDULERD_L1_PREFETCH");

    SbxConfig *cfg = sbx_config_new_default();
    g_free(cfg->guest_dir);
    cfg->guest_dir = g_strdup(guest);
    g_free(cfg->runtime_dir);
    cfg->runtime_dir = g_strdup(rt);
    cfg->accel = SBX_ACCEL_MODE_TCG;
    g_autoptr(SbxManager) mgr = sbx_manager_new(cfg);

    printf("1..37\n");
    g_autoptr(GAsyncResult) started = NULL;
    g_autoptr(GError) error = NULL;
    sbx_manager_start_async(mgr, NULL, sbx_test_store_result, &started);
    gboolean up = sbx_manager_start_finish(mgr, sbx_test_wait_result(&started), &error);
    OK(up, "the manager starts (%s)", error ? error->message : "tcg");
    if (!up)
        return 1;

    /* 2-3: a cold run; it schedules the template build */
    SbxTestRun r = {0};
    run_code(mgr, "print(1)", &r);
    OK(r.result && g_strcmp0(r.out, "1\n") == 0 && !r.result->l1_hit,
       "first run boots cold and prints 1");
    sbx_test_run_clear(&r);
    gboolean built = sbx_test_wait_status(mgr, "l1_builds", 1, 600);
    OK(built, "the L1 template was built and verified in the background");
    g_autofree char *state = find_file(l1_dir, ".state");
    g_autofree char *meta = find_file(l1_dir, ".json");
    OK(state && meta && sbx_test_count_files(l1_dir, NULL, ".tmp") == 0,
       "the committed entry has its state and metadata, no temp files");
    g_autofree char *ram = find_file(l1_dir, ".ram");
    g_autofree char *ram_sha0 = file_sha256(ram);

    /* 5-7: restored runs: output, distinct random state */
    const char *rnd = "import os; print(os.urandom(16).hex())";
    SbxTestRun a = {0}, b = {0};
    run_code(mgr, rnd, &a);
    run_code(mgr, rnd, &b);
    OK(a.result && a.result->l1_hit && a.result->timing.restore_ms > 0 &&
           a.result->timing.boot_ms == 0,
       "a run restores from the template (l1_hit, restore_ms set, no boot)");
    OK(a.out && b.out && strlen(a.out) == 33 && strlen(b.out) == 33,
       "restored runs print 16 random bytes");
    OK(a.out && b.out && g_strcmp0(a.out, b.out) != 0 && b.result && b.result->l1_hit,
       "two VMs restored from one template produce different random bytes (CRNG reseeded)");
    sbx_test_run_clear(&a);
    sbx_test_run_clear(&b);

    /* 8: isolation between restored VMs (disk overlay and REPL state) */
    run_code(mgr, "leak = 1\nopen('/home/user/marker', 'w').write('x')\nprint('set')", &a);
    run_code(mgr,
             "import os\nprint(os.path.exists('/home/user/marker'), 'leak' in globals())", &b);
    OK(a.result && a.result->l1_hit && g_strcmp0(a.out, "set\n") == 0 && b.result &&
           b.result->l1_hit && g_strcmp0(b.out, "False False\n") == 0,
       "a file and a variable written by one restored VM are not seen by the next (%s)",
       b.out ? b.out : "-");
    sbx_test_run_clear(&a);
    sbx_test_run_clear(&b);

    /* the restored guest's wall clock is the host's, not the template's save time
     * (the template was saved several runs ago) */
    gint64 before_us = g_get_real_time();
    run_code(mgr, "import time; print('%.3f' % time.time())", &a);
    gint64 after_us = g_get_real_time();
    double guest_s = a.out ? g_ascii_strtod(a.out, NULL) : 0;
    OK(a.result && a.result->l1_hit && guest_s >= before_us / 1e6 - 1.0 &&
           guest_s <= after_us / 1e6 + 1.0,
       "a restored VM's clock is set from the host on restore (guest %.3f, host %.3f..%.3f)",
       guest_s, before_us / 1e6, after_us / 1e6);
    sbx_test_run_clear(&a);

    /* The clones map the RAM file MAP_PRIVATE and have no balloon (QEMU 7.2 would
     * punch reported pages out of the file itself): after they ran, wrote and
     * freed memory and idled past the reclaim delay, the file is unchanged. */
    {
        g_autoptr(SbxRunSpec) spec = sbx_run_spec_new(sbx_manager_get_config(mgr));
        g_autoptr(GAsyncResult) res = NULL;
        sbx_manager_create_session_async(mgr, spec, 600, NULL, sbx_test_store_result, &res);
        g_autoptr(SbxSession) sess =
            sbx_manager_create_session_finish(mgr, sbx_test_wait_result(&res), NULL);
        gint64 sess_restore_ms = sess ? sbx_session_get_start_timings(sess)->restore_ms : 0;
        g_autoptr(SbxRunResult) sr = NULL;
        if (sess) {
            g_autoptr(SbxRunSpec) ex = sbx_run_spec_new(sbx_manager_get_config(mgr));
            static const char code[] = "keep = b'y' * (64 << 20)\ndel keep\nprint(2)";
            ex->code = g_bytes_new_static(code, strlen(code));
            g_autoptr(GAsyncResult) er = NULL;
            sbx_session_exec_async(sess, ex, NULL, NULL, sbx_test_store_result, &er);
            sr = sbx_session_exec_finish(sess, sbx_test_wait_result(&er), NULL);
            sbx_test_spin_ms(8000); /* idle past SBX_SESSION_RECLAIM_IDLE_S */
            sbx_session_close(sess, SBX_SESSION_CLOSED_BY_CALLER);
            while (sbx_manager_get_n_sessions(mgr) > 0 || sbx_manager_get_n_vms(mgr) > 0)
                sbx_test_spin_ms(100);
        }
        g_autofree char *ram_sha1 = file_sha256(ram);
        OK(sess && sess_restore_ms > 0 && sr && sr->exit_code == 0 && ram_sha0 &&
               g_strcmp0(ram_sha0, ram_sha1) == 0,
           "the template's RAM file is byte-identical after its clones ran and idled "
           "(sha256 %.12s, then %.12s)",
           ram_sha0 ? ram_sha0 : "-", ram_sha1 ? ram_sha1 : "-");
    }

    /* javascript: the template keeps the warm node REPL, and every clone's random
     * sources are its own: the driver replaces Math.random on the restore's reseed,
     * and the template's node started under a clock a day back, so the restore's
     * clock step reseeds OpenSSL's DRBGs from the reseeded kernel on first use. */
    sbx_test_run(mgr, SBX_LANGUAGE_JAVASCRIPT, 0, 0, "console.log(1)", &a);
    sbx_test_run_clear(&a);
    gboolean js_built = sbx_test_wait_status(mgr, "l1_builds", 2, 900);
    before_us = g_get_real_time();
    /* a Worker and an EC key under TCG: 6-8 s here, over 30 s on a loaded host */
    sbx_test_run(mgr, SBX_LANGUAGE_JAVASCRIPT, 0, 180, JS_RANDOM, &a);
    sbx_test_run(mgr, SBX_LANGUAGE_JAVASCRIPT, 0, 180, JS_RANDOM, &b);
    after_us = g_get_real_time();
    g_autoptr(JsonObject) ja = js_fields(&a);
    g_autoptr(JsonObject) jb = js_fields(&b);
    OK(js_built && a.result && a.result->l1_hit && b.result && b.result->l1_hit && ja && jb,
       "javascript runs restore from their own template and report their random sources");
    /* a node started by the exec would have started after the restore set the clock */
    double age_a = ja ? json_object_get_double_member_with_default(ja, "age_s", 0) : 0;
    double age_b = jb ? json_object_get_double_member_with_default(jb, "age_s", 0) : 0;
    OK(age_a > 12 * 3600 && age_b > 12 * 3600,
       "the first exec of a restored VM runs in the template's node, started under its "
       "day-back clock (process ages %.0f s, %.0f s)",
       age_a, age_b);
    double now_a = ja ? json_object_get_double_member_with_default(ja, "now_ms", 0) / 1e3 : 0;
    OK(now_a >= before_us / 1e6 - 1.0 && now_a <= after_us / 1e6 + 1.0,
       "Date.now() in the restored node is the host's clock (%.3f, host %.3f..%.3f)", now_a,
       before_us / 1e6, after_us / 1e6);
    static const char *const js_sources[] = {
        "math", "math_again", "bytes", "bytes_async", "uuid", "values", "int",
        "aes_key", "ec_key", "vm_math", "worker_math",
    };
    for (guint i = 0; i < G_N_ELEMENTS(js_sources); i++) {
        g_autofree char *va = js_member(ja, js_sources[i]);
        g_autofree char *vb = js_member(jb, js_sources[i]);
        OK(va && vb && g_strcmp0(va, vb) != 0, "two restored javascript VMs differ in %s (%s, %s)",
           js_sources[i], va ? va : "-", vb ? vb : "-");
    }
    sbx_test_run_clear(&a);
    sbx_test_run_clear(&b);
    /* a restored javascript session keeps its node and state across execs */
    {
        g_autoptr(SbxRunSpec) spec = sbx_run_spec_new(sbx_manager_get_config(mgr));
        g_autoptr(GAsyncResult) res = NULL;
        spec->language = SBX_LANGUAGE_JAVASCRIPT;
        sbx_manager_create_session_async(mgr, spec, 600, NULL, sbx_test_store_result, &res);
        g_autoptr(SbxSession) sess =
            sbx_manager_create_session_finish(mgr, sbx_test_wait_result(&res), NULL);
        gint64 restore_ms = sess ? sbx_session_get_start_timings(sess)->restore_ms : 0;
        g_autofree char *o1 = NULL, *o2 = NULL;
        if (sess) {
            o1 = session_js(mgr, sess, "globalThis.kept = process.pid; console.log('set')");
            o2 = session_js(mgr, sess,
                            "console.log(kept === process.pid, "
                            "Date.now() - performance.timeOrigin > 12 * 3600e3)");
            sbx_session_close(sess, SBX_SESSION_CLOSED_BY_CALLER);
            while (sbx_manager_get_n_sessions(mgr) > 0 || sbx_manager_get_n_vms(mgr) > 0)
                sbx_test_spin_ms(100);
        }
        OK(restore_ms > 0 && g_strcmp0(o1, "set\n") == 0 && g_strcmp0(o2, "true true\n") == 0,
           "a restored javascript session keeps the template's node and its globals across "
           "execs (%s)",
           o2 ? o2 : "-");
    }

    /* 9: SCHEDULERD_L1=0 at run time */
    g_setenv("SCHEDULERD_L1", "0", TRUE);
    run_code(mgr, "print(2)", &a);
    OK(a.result && !a.result->l1_hit && a.result->timing.boot_ms > 0 &&
           g_strcmp0(a.out, "2\n") == 0,
       "SCHEDULERD_L1=0 switches L1 off without a restart (cold boot)");
    sbx_test_run_clear(&a);
    g_unsetenv("SCHEDULERD_L1");

    /* 10-12: restore failure falls back to a cold boot and is counted */
    guint64 fails0 = sbx_test_status_u64(mgr, "l1_restore_failures");
    OK(state && corrupt_keep_identity(state), "corrupted the saved device state (same size, mtime)");
    run_code(mgr, "print(3)", &a);
    OK(a.result && !a.result->l1_hit && g_strcmp0(a.out, "3\n") == 0 && a.result->timing.boot_ms > 0,
       "a failed restore falls back to a cold boot of the same request (l1_hit false)");
    OK(sbx_test_status_u64(mgr, "l1_restore_failures") == fails0 + 1,
       "the restore failure is counted in Status (l1_restore_failures)");
    sbx_test_run_clear(&a);
    (void)wait_cleanups(mgr);
    /* run VMs are vm-<pid>-<n>; a template rebuild (l1build-*) may be running now */
    g_autofree char *run_vms = g_build_filename(vms_dir, "vm-", NULL);
    guint run_dirs = 0;
    g_autoptr(GDir) vd = g_dir_open(vms_dir, 0, NULL);
    for (const char *n; vd && (n = g_dir_read_name(vd));)
        run_dirs += g_str_has_prefix(n, "vm-");
    OK(sbx_test_count_qemus(run_vms) == 0 && run_dirs == 0,
       "the failed VM is torn down (no run VM's QEMU or run dir left)");

    /* 14-15: warm pool */
    g_setenv("SCHEDULERD_WARM_POOL", "1", TRUE);
    run_code(mgr, "print(4)", &a); /* marks python as used */
    sbx_test_run_clear(&a);
    gboolean filled = sbx_test_wait_status(mgr, "warm_pool_python", 1, 600);
    OK(filled, "the warm pool fills one python VM in the background");
    (void)wait_cleanups(mgr); /* print(4)'s VM may still be on its way out */
    guint64 cleanups0 = sbx_test_status_u64(mgr, "cleanups_total");
    run_code(mgr, "print(5)", &a);
    OK(a.result && a.result->warm_pool_hit && g_strcmp0(a.out, "5\n") == 0 &&
           a.result->timing.admission_ms == 0,
       "a default run is served by the warm pool (warm_pool_hit)");
    gboolean cleaned = wait_cleanups(mgr);
    OK(a.result && a.result->timing.teardown_ms >= 1 && a.result->guest_exec_us > 0 && cleaned &&
           sbx_test_status_u64(mgr, "cleanups_total") >= cleanups0 + 1 &&
           sbx_test_status_u64(mgr, "cleanups_in_flight") == 0,
       "the warm VM is released in the background after the result (teardown_ms %" G_GINT64_FORMAT
       " before it, cleanup %" G_GUINT64_FORMAT " ms after; waited %d, cleanups +%" G_GINT64_FORMAT
       ", in flight %" G_GUINT64_FORMAT ")",
       a.result ? a.result->timing.teardown_ms : -1, sbx_test_status_u64(mgr, "cleanup_ms_last"),
       cleaned, (gint64)(sbx_test_status_u64(mgr, "cleanups_total") - cleanups0),
       sbx_test_status_u64(mgr, "cleanups_in_flight"));
    sbx_test_run_clear(&a);

    /* 16: a request that finds no capacity evicts an idle pooled VM. Fill the pool
     * again, then start as many concurrent runs as fit in the free capacity + 1. */
    gboolean refilled = sbx_test_wait_status(mgr, "warm_pool_python", 1, 600);
    g_setenv("SCHEDULERD_WARM_POOL", "0", TRUE); /* no refill from here on */
    g_setenv("SCHEDULERD_L1", "0", TRUE);        /* and no template builds */
    (void)wait_cleanups(mgr); /* released VMs give their reservations back first */
    SbxAdmissionConfig acfg;
    sbx_admission_config_init(&acfg);
    acfg.memory_overcommit_ratio = cfg->memory_overcommit_ratio;
    acfg.cpu_overcommit_ratio = cfg->cpu_overcommit_ratio;
    acfg.memory_reserve_ratio = cfg->memory_reserve_ratio;
    acfg.cpu_reserve_cores = cfg->cpu_reserve_cores;
    acfg.vm_memory_overhead_bytes = (guint64)cfg->vm_overhead_mb << 20;
    acfg.tcg_tb_cache_bytes = (guint64)cfg->tcg_cache_mb << 20;
    guint64 vm_mem, vm_cpu;
    sbx_admission_config_vm_cost(&acfg, (guint64)cfg->default_memory_mb << 20, cfg->vcpus, TRUE,
                                 &vm_mem, &vm_cpu);
    guint64 free_mem =
        ((sbx_test_status_u64(mgr, "memory_budget_mb") - sbx_test_status_u64(mgr, "memory_used_mb"))
         << 20) /
        vm_mem;
    guint64 free_cpu = (sbx_test_status_u64(mgr, "cpu_budget_millis") -
                        sbx_test_status_u64(mgr, "cpu_used_millis")) /
                       vm_cpu;
    guint k = (guint)MIN(free_mem, free_cpu) + 1;
    guint64 evict0 = sbx_test_status_u64(mgr, "warm_pool_evictions");
    if (!refilled || k > 4) {
        printf("ok %d - # SKIP eviction: pool %s, %u concurrent runs needed\n", ++test_no,
               refilled ? "full" : "not refilled", k);
    } else {
        GAsyncResult *res[4] = {NULL};
        GOutputStream *outs[4] = {NULL};
        for (guint i = 0; i < k; i++) {
            g_autoptr(SbxRunSpec) spec = sbx_run_spec_new(sbx_manager_get_config(mgr));
            spec->language = SBX_LANGUAGE_RAW;
            spec->code = g_bytes_new_static("echo r", 6);
            outs[i] = g_memory_output_stream_new_resizable();
            sbx_manager_run_async(mgr, spec, outs[i], NULL, NULL, NULL, NULL, sbx_test_store_result, &res[i]);
        }
        guint good = 0;
        for (guint i = 0; i < k; i++) {
            g_autoptr(SbxRunResult) rr = sbx_manager_run_finish(mgr, sbx_test_wait_result(&res[i]), NULL);
            g_output_stream_close(outs[i], NULL, NULL);
            GMemoryOutputStream *m = G_MEMORY_OUTPUT_STREAM(outs[i]);
            g_autofree char *o = g_strndup(g_memory_output_stream_get_data(m),
                                           g_memory_output_stream_get_data_size(m));
            good += rr && g_strcmp0(o, "r\n") == 0;
            g_object_unref(res[i]);
            g_object_unref(outs[i]);
        }
        OK(good == k && sbx_test_status_u64(mgr, "warm_pool_evictions") == evict0 + 1 &&
               sbx_test_status_u64(mgr, "warm_pool_python") == 0,
           "%u concurrent runs that did not fit evicted the idle pooled VM and all ran", k);
    }
    g_unsetenv("SCHEDULERD_L1");

    /* a shutdown cancels a template build in flight past SCHEDULERD_L1_BUILD_DRAIN_S:
     * a raw run schedules the raw template's build, shut down while it boots */
    g_setenv("SCHEDULERD_L1_BUILD_DRAIN_S", "0", TRUE);
    /* The build may start beside the run (a free slot) and, with a quick guest, finish
     * before the run does: watch for its QEMU while the run is in flight, and shut down
     * as soon as it runs (its guest is then still booting). */
    g_autoptr(SbxRunSpec) dspec = sbx_run_spec_new(sbx_manager_get_config(mgr));
    dspec->language = SBX_LANGUAGE_RAW;
    dspec->code = g_bytes_new_static("echo d", 6);
    g_autoptr(GOutputStream) dout = g_memory_output_stream_new_resizable();
    g_autoptr(GAsyncResult) dres = NULL;
    sbx_manager_run_async(mgr, dspec, dout, NULL, NULL, NULL, NULL, sbx_test_store_result, &dres);
    g_autofree char *build_vms = g_build_filename(vms_dir, "l1build-", NULL);
    gboolean building = FALSE;
    for (guint i = 0; i < 6000 && !building; i++) { /* up to ~120 s */
        building = sbx_test_status_u64(mgr, "l1_builds_running") >= 1 &&
                   sbx_test_count_qemus(build_vms) > 0;
        if (!building)
            sbx_test_spin_ms(20);
    }
    OK(building, "a raw run schedules a raw template build (its QEMU runs)");

    /* shutdown leaves nothing behind (and cancelled the build: no half entry) */
    g_autoptr(GAsyncResult) down = NULL;
    sbx_manager_shutdown_async(mgr, sbx_test_store_result, &down);
    gboolean stopped = sbx_manager_shutdown_finish(mgr, sbx_test_wait_result(&down), NULL);
    /* the run finished or the shutdown cancelled it: either way it has an answer */
    g_autoptr(GError) derr = NULL;
    g_autoptr(SbxRunResult) drr = sbx_manager_run_finish(mgr, sbx_test_wait_result(&dres), &derr);
    OK(stopped && (drr != NULL) != (derr != NULL) && sbx_test_count_qemus(rt) == 0 &&
           sbx_test_count_files(vms_dir, NULL, NULL) == 0,
       "after shutdown: the run answered (%s), no QEMU, no VM run dir (%u left)",
       drr    ? "finished"
       : derr ? derr->message
              : "-",
       sbx_test_count_files(vms_dir, NULL, NULL));
    guint raw_files = 0;
    g_autoptr(GDir) ld = g_dir_open(l1_dir, 0, NULL);
    for (const char *n; ld && (n = g_dir_read_name(ld));)
        raw_files += g_str_has_prefix(n, "l1-raw-") && !g_str_has_suffix(n, ".lock");
    OK(sbx_test_count_files(l1_dir, NULL, ".tmp") == 0 && raw_files == 0,
       "the cancelled build left no entry and no half-written file (%u raw files)", raw_files);

    g_clear_object(&mgr);
    g_autofree char *rm = g_strdup_printf("rm -rf '%s'", rt);
    if (system(rm) != 0)
        printf("# could not remove %s\n", rt);
    return failures ? 1 : 0;
}
