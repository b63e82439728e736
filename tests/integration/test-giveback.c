/* SPDX-License-Identifier: MIT
 *
 * Integration test of idle memory give-back (docs/snapshots.md, "Idle VMs give
 * memory back") with the real scheduler core in-process (SbxManager), real QEMU
 * under TCG and the real guest image ($SBX_GUEST_DIR), cold-booted sessions only
 * (SCHEDULERD_L1=0, no warm pool):
 * - a cold-booted VM has the virtio-balloon device and its guest bound the
 *   driver (sbx-init loaded virtio_balloon); with SCHEDULERD_BALLOON=0 there is
 *   no device and the module is not loaded;
 * - free page reporting: 256 MiB the guest wrote and then freed leave the QEMU
 *   process (host RSS falls by at least 128 MiB); without reporting a guest's
 *   freed pages stay resident on the host for the VM's whole life;
 * - a session idle for SBX_SESSION_RECLAIM_IDLE_S gets the agent's `reclaim`:
 *   the guest's page cache ("Cached" in its /proc/meminfo) shrinks.
 * Prints TAP; RSS and cache sizes are printed as comments.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gio/gio.h>

#include "scheduler/sbx-manager.h"
#include "scheduler/sbx-session.h"
#include "tests/sbx-test-loop.h"
#include "tests/sbx-test-proc.h"
#include "tests/sbx-test-tap.h"


static SbxManager *mgr;

/* Sum of VmRSS (KiB) of the QEMU processes whose command line mentions @needle. */
static guint64
qemu_rss_kb(const char *needle)
{
    g_autoptr(GPtrArray) procs = sbx_test_qemu_procs(needle);
    guint64 kb = 0;
    for (guint i = 0; i < procs->len; i++) {
        g_autofree char *sp = g_strdup_printf("/proc/%s/status", (char *)procs->pdata[i]);
        g_autofree char *st = NULL;
        const char *r;
        if (g_file_get_contents(sp, &st, NULL, NULL) && (r = strstr(st, "\nVmRSS:")))
            kb += g_ascii_strtoull(r + 7, NULL, 10);
    }
    return kb;
}

static SbxSession *
new_session(void)
{
    g_autoptr(SbxRunSpec) spec = sbx_run_spec_new(sbx_manager_get_config(mgr));
    g_autoptr(GAsyncResult) res = NULL;
    g_autoptr(GError) error = NULL;
    spec->timeout_s = 300;
    sbx_manager_create_session_async(mgr, spec, 600, NULL, sbx_test_store_result, &res);
    SbxSession *s = sbx_manager_create_session_finish(mgr, sbx_test_wait_result(&res), &error);
    if (s == NULL)
        printf("# session failed: %s\n", error->message);
    return s;
}

/* Python @code in @s; its stdout (g_free), or NULL on failure. */
static char *
exec_py(SbxSession *s, const char *code)
{
    g_autoptr(SbxRunSpec) spec = sbx_run_spec_new(sbx_manager_get_config(mgr));
    g_autoptr(GOutputStream) out = g_memory_output_stream_new_resizable();
    g_autoptr(GAsyncResult) res = NULL;
    g_autoptr(GError) error = NULL;
    spec->code = g_bytes_new(code, strlen(code));
    spec->timeout_s = 300; /* a first python start under TCG on a loaded host */
    g_autoptr(GOutputStream) err = g_memory_output_stream_new_resizable();
    sbx_session_exec_async(s, spec, out, err, sbx_test_store_result, &res);
    g_autoptr(SbxRunResult) r = sbx_session_exec_finish(s, sbx_test_wait_result(&res), &error);
    g_output_stream_close(out, NULL, NULL);
    if (r == NULL) {
        printf("# exec failed: %s\n", error->message);
        return NULL;
    }
    GMemoryOutputStream *m = G_MEMORY_OUTPUT_STREAM(out);
    gsize size = g_memory_output_stream_get_data_size(m);
    if (size == 0) {
        GMemoryOutputStream *e = G_MEMORY_OUTPUT_STREAM(err);
        g_autofree char *et = g_strndup(g_memory_output_stream_get_data(e),
                                        g_memory_output_stream_get_data_size(e));
        printf("# exec printed nothing: exit %d, stderr: %s\n", r->exit_code, et ? et : "");
    }
    return g_strndup(size ? g_memory_output_stream_get_data(m) : "", size);
}

static void
close_session(SbxSession *s)
{
    sbx_session_close(s, SBX_SESSION_CLOSED_BY_CALLER);
    g_object_unref(s);
    while (sbx_manager_get_n_vms(mgr) > 0)
        sbx_test_spin_ms(100);
}

/* True when a virtio device is bound to the balloon driver (not just the driver present). */
static const char has_driver[] =
    "import os; d = '/sys/bus/virtio/drivers/virtio_balloon'; "
    "print(os.path.isdir(d) and any(n.startswith('virtio') for n in os.listdir(d)))";
static const char cached_kb[] =
    "print([int(l.split()[1]) for l in open('/proc/meminfo') if l.startswith('Cached:')][0])";

int
main(void)
{
    const char *guest = g_getenv("SBX_GUEST_DIR");
    g_autofree char *vmlinux = guest ? g_build_filename(guest, "vmlinux", NULL) : NULL;
    if (vmlinux == NULL || !g_file_test(vmlinux, G_FILE_TEST_EXISTS)) {
        printf("1..0 # SKIP no guest image in SBX_GUEST_DIR (make guest-image)\n");
        return 77;
    }
    g_autofree char *rt = g_dir_make_tmp("sbx-giveback-test-XXXXXX", NULL);
    g_autofree char *needle = g_build_filename(rt, "vms", "vm-", NULL);
    g_setenv("SCHEDULERD_WARM_POOL", "0", TRUE);
    g_setenv("SCHEDULERD_L1", "0", TRUE);
    g_unsetenv("SCHEDULERD_BALLOON");

    SbxConfig *cfg = sbx_config_new_default();
    g_free(cfg->guest_dir);
    cfg->guest_dir = g_strdup(guest);
    g_free(cfg->runtime_dir);
    cfg->runtime_dir = g_strdup(rt);
    cfg->accel = SBX_ACCEL_MODE_TCG;
    mgr = sbx_manager_new(cfg);

    printf("1..6\n");
    g_autoptr(GAsyncResult) started = NULL;
    g_autoptr(GError) error = NULL;
    sbx_manager_start_async(mgr, NULL, sbx_test_store_result, &started);
    gboolean up = sbx_manager_start_finish(mgr, sbx_test_wait_result(&started), &error);
    OK(up, "the manager starts (%s)", error ? error->message : "tcg");
    if (!up)
        return 1;

    SbxSession *s = new_session();
    g_autofree char *drv = s ? exec_py(s, has_driver) : NULL;
    OK(g_strcmp0(drv, "True\n") == 0,
       "a cold-booted VM's guest has the virtio_balloon driver bound (%s)", drv ? drv : "-");

    /* free page reporting: pages the guest wrote and freed leave the host process */
    g_autofree char *o1 = s ? exec_py(s, "keep = b'x' * (256 << 20); print(len(keep))") : NULL;
    sbx_test_spin_ms(3000);
    guint64 rss_full = qemu_rss_kb(needle);
    g_autofree char *o2 = s ? exec_py(s, "del keep; import gc; gc.collect(); print('freed')") : NULL;
    guint64 rss_freed = rss_full;
    for (int i = 0; i < 120 && rss_freed + (128 << 10) > rss_full; i++) {
        sbx_test_spin_ms(500);
        rss_freed = qemu_rss_kb(needle);
    }
    printf("# QEMU RSS with 256 MiB written in the guest %" G_GUINT64_FORMAT
           " MiB, after the guest freed it %" G_GUINT64_FORMAT " MiB\n",
           rss_full >> 10, rss_freed >> 10);
    OK(o1 && o2 && rss_full > 0 && rss_freed + (128 << 10) <= rss_full,
       "256 MiB freed in the guest are given back to the host (RSS %" G_GUINT64_FORMAT
       " -> %" G_GUINT64_FORMAT " MiB)",
       rss_full >> 10, rss_freed >> 10);

    /* an idle session's guest drops its page cache (agent `reclaim`) */
    g_autofree char *c1 = s ? exec_py(s, "import glob, os\n"
                                         "for f in glob.glob('/usr/lib/python3*/**/*.py', recursive=True)[:3000]:\n"
                                         "    open(f, 'rb').read()\n" /* fill the page cache */
                                         "print([int(l.split()[1]) for l in open('/proc/meminfo') "
                                         "if l.startswith('Cached:')][0])")
                            : NULL;
    sbx_test_spin_ms(12000); /* > SBX_SESSION_RECLAIM_IDLE_S + the reclaim itself */
    g_autofree char *c2 = s ? exec_py(s, cached_kb) : NULL;
    guint64 k1 = c1 ? g_ascii_strtoull(c1, NULL, 10) : 0, k2 = c2 ? g_ascii_strtoull(c2, NULL, 10) : 0;
    printf("# guest page cache before idling %" G_GUINT64_FORMAT " KiB, after %" G_GUINT64_FORMAT
           " KiB\n", k1, k2);
    OK(k1 > 0 && c2 && k2 < k1 / 2,
       "an idle session's guest drops its page cache (Cached %" G_GUINT64_FORMAT " -> %" G_GUINT64_FORMAT
       " KiB)", k1, k2);
    if (s)
        close_session(s);

    /* SCHEDULERD_BALLOON=0: no balloon device (virtio device id 5) in the guest, and
     * nothing bound to the driver (built into the compiled kernel; with
     * SBX_KERNEL=debian init loads the module only when the device exists) */
    g_setenv("SCHEDULERD_BALLOON", "0", TRUE);
    s = new_session();
    g_autofree char *nodrv = s ? exec_py(s, "import glob, os\n"
                                            "ids = [open(f).read().strip() for f in glob.glob('/sys/bus/virtio/devices/*/device')]\n"
                                            "d = '/sys/bus/virtio/drivers/virtio_balloon'\n"
                                            "bound = [n for n in os.listdir(d) if n.startswith('virtio')] if os.path.isdir(d) else []\n"
                                            "print(len(ids) > 0, '0x0005' in ids, len(bound))")
                               : NULL;
    OK(g_strcmp0(nodrv, "True False 0\n") == 0,
       "SCHEDULERD_BALLOON=0: no balloon device, nothing bound to virtio_balloon (%s)",
       nodrv ? nodrv : "-");
    if (s)
        close_session(s);
    g_unsetenv("SCHEDULERD_BALLOON");

    g_autoptr(GAsyncResult) down = NULL;
    sbx_manager_shutdown_async(mgr, sbx_test_store_result, &down);
    OK(sbx_manager_shutdown_finish(mgr, sbx_test_wait_result(&down), NULL) &&
           qemu_rss_kb(rt) == 0,
       "shutdown leaves no QEMU");
    g_clear_object(&mgr);
    g_autofree char *rm = g_strdup_printf("rm -rf '%s'", rt);
    if (system(rm) != 0)
        printf("# could not remove %s\n", rt);
    return failures ? 1 : 0;
}
