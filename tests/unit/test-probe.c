/* SPDX-License-Identifier: MIT
 *
 * Unit tests of scheduler/sbx-probe against fake /proc and /sys trees in a
 * temporary directory: a badly tuned host (every warning with its exact fix),
 * a well tuned one (no warnings), cgroup pids.max on an ancestor, the KVM
 * decision for a missing device and for a file that is not a KVM device, the
 * JSON report, the rlimit raise on this process, the async variant, and the
 * real /dev/kvm of this machine (PVM here: must say TCG and why).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <string.h>
#include <sys/resource.h>

#include <glib/gstdio.h>

#include "scheduler/sbx-probe.h"

typedef struct {
    char *dir;
    char *proc;
    char *sys;
    char *notkvm;
    SbxProbeOptions opts;
} Tree;

static void
put(Tree *t, const char *rel, const char *contents)
{
    g_autofree char *path = g_build_filename(t->dir, rel, NULL);
    g_autofree char *parent = g_path_get_dirname(path);

    assert_int_equal(g_mkdir_with_parents(parent, 0755), 0);
    assert_true(g_file_set_contents(path, contents, -1, NULL));
}

static void
rm_rf(const char *path)
{
    if (g_file_test(path, G_FILE_TEST_IS_DIR) && !g_file_test(path, G_FILE_TEST_IS_SYMLINK)) {
        g_autoptr(GDir) d = g_dir_open(path, 0, NULL);
        const char *name;
        while (d && (name = g_dir_read_name(d))) {
            g_autofree char *child = g_build_filename(path, name, NULL);
            rm_rf(child);
        }
        g_rmdir(path);
    } else {
        g_unlink(path);
    }
}

static int
setup(void **state)
{
    Tree *t = g_new0(Tree, 1);

    t->dir = g_dir_make_tmp("sbx-probe-XXXXXX", NULL);
    assert_non_null(t->dir);
    t->proc = g_build_filename(t->dir, "proc", NULL);
    t->sys = g_build_filename(t->dir, "sys", NULL);
    t->notkvm = g_build_filename(t->dir, "dev-kvm", NULL);
    put(t, "dev-kvm", "not a device");
    t->opts.roots.proc_root = t->proc;
    t->opts.roots.sys_root = t->sys;
    t->opts.planned_slots = 100;
    t->opts.threads_per_vm = 32;
    t->opts.dev_kvm = t->notkvm;
    t->opts.test_kvm = TRUE;
    *state = t;
    return 0;
}

static int
teardown(void **state)
{
    Tree *t = *state;

    rm_rf(t->dir);
    g_free(t->dir);
    g_free(t->proc);
    g_free(t->sys);
    g_free(t->notkvm);
    g_free(t);
    return 0;
}

static void
bad_host(Tree *t)
{
    put(t, "proc/sys/vm/overcommit_memory", "0\n");
    put(t, "proc/sys/vm/max_map_count", "65530\n");
    put(t, "proc/sys/kernel/threads-max", "2000\n");
    put(t, "proc/sys/kernel/pid_max", "4096\n");
    put(t, "proc/self/cgroup", "8:pids:/user.slice/u1\n4:memory:/\n0::/\n");
    put(t, "sys/fs/cgroup/pids/user.slice/pids.max", "512\n");
    put(t, "sys/fs/cgroup/pids/user.slice/u1/pids.max", "max\n");
    put(t, "sys/kernel/mm/ksm/run", "0\n");
    put(t, "sys/module/kvm_pvm/parameters/x", "1\n");
    put(t, "proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae\n");
    /* no proc/pressure/memory */
}

static void
good_host(Tree *t)
{
    put(t, "proc/sys/vm/overcommit_memory", "1\n");
    put(t, "proc/sys/vm/max_map_count", "262144\n");
    put(t, "proc/sys/kernel/threads-max", "1000000\n");
    put(t, "proc/sys/kernel/pid_max", "4194304\n");
    put(t, "proc/self/cgroup", "0::/system.slice/schedulerd.service\n");
    put(t, "sys/fs/cgroup/cgroup.controllers", "cpu memory pids\n");
    put(t, "sys/fs/cgroup/system.slice/schedulerd.service/pids.max", "max\n");
    put(t, "sys/fs/cgroup/system.slice/pids.max", "max\n");
    put(t, "sys/kernel/mm/ksm/run", "1\n");
    put(t, "proc/pressure/memory",
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
        "full avg10=0.50 avg60=0.00 avg300=0.00 total=0\n");
}

static const SbxProbeItem *
item(SbxProbeReport *r, const char *name)
{
    const SbxProbeItem *it = sbx_probe_report_find(r, name);
    assert_non_null(it);
    assert_non_null(it->message);
    assert_true(*it->message);
    return it;
}

static void
test_bad_host_warns_with_fixes(void **state)
{
    Tree *t = *state;
    g_autoptr(SbxProbeReport) r = NULL;
    const SbxProbeItem *it;

    bad_host(t);
    r = sbx_probe_run(&t->opts);

    it = item(r, "vm.overcommit_memory");
    assert_int_equal(it->status, SBX_PROBE_WARN);
    assert_string_equal(it->value, "0");
    assert_string_equal(it->fix, "sysctl -w vm.overcommit_memory=1");

    it = item(r, "vm.max_map_count");
    assert_int_equal(it->status, SBX_PROBE_WARN);
    assert_string_equal(it->value, "65530");
    assert_string_equal(it->fix, "sysctl -w vm.max_map_count=262144");

    /* 100 slots x 32 threads + 1024 = 4224 > 2000 */
    it = item(r, "kernel.threads-max");
    assert_int_equal(it->status, SBX_PROBE_WARN);
    assert_string_equal(it->fix, "sysctl -w kernel.threads-max=8448");
    it = item(r, "kernel.pid_max");
    assert_int_equal(it->status, SBX_PROBE_WARN);
    assert_string_equal(it->value, "4096");
    assert_string_equal(it->fix, "sysctl -w kernel.pid_max=8448");

    /* the ancestor's limit counts */
    it = item(r, "cgroup.pids.max");
    assert_int_equal(it->status, SBX_PROBE_WARN);
    assert_string_equal(it->value, "512");
    assert_true(g_str_has_prefix(it->fix, "echo max > "));
    assert_true(g_str_has_suffix(it->fix, "/sys/fs/cgroup/pids/user.slice/pids.max"));

    it = item(r, "ksm");
    assert_int_equal(it->status, SBX_PROBE_WARN);
    assert_true(g_str_has_suffix(it->fix, "/sys/kernel/mm/ksm/run"));

    it = item(r, "psi");
    assert_int_equal(it->status, SBX_PROBE_WARN);
    assert_non_null(strstr(it->fix, "psi=1"));

    /* a regular file is not KVM */
    it = item(r, "accel");
    assert_int_equal(it->status, SBX_PROBE_WARN);
    assert_string_equal(it->value, "tcg");
    assert_int_equal(r->accel, SBX_ACCEL_TCG);
    assert_non_null(strstr(r->accel_reason, "not a usable KVM device"));

    assert_true(sbx_probe_report_count(r, SBX_PROBE_WARN) >= 7);
}

static void
test_good_host_is_clean(void **state)
{
    Tree *t = *state;
    g_autoptr(SbxProbeReport) r = NULL;

    good_host(t);
    t->opts.test_kvm = FALSE;
    t->opts.raise_limits = TRUE;
    r = sbx_probe_run(&t->opts);
    for (guint i = 0; i < r->items->len; i++) {
        const SbxProbeItem *it = g_ptr_array_index(r->items, i);
        /* rlimits depend on the real process; everything else must be ok */
        if (g_str_has_prefix(it->name, "rlimit_"))
            continue;
        if (it->status != SBX_PROBE_OK)
            fail_msg("%s: %s (%s)", it->name, it->value, it->message);
        assert_null(it->fix);
    }
    assert_string_equal(item(r, "psi")->value, "memory full avg10=0.50");
    assert_string_equal(item(r, "cgroup.pids.max")->value, "max");
    assert_string_equal(item(r, "ksm")->value, "1");
}

static void
test_overcommit_strict(void **state)
{
    Tree *t = *state;
    g_autoptr(SbxProbeReport) r = NULL;
    const SbxProbeItem *it;

    good_host(t);
    put(t, "proc/sys/vm/overcommit_memory", "2\n");
    r = sbx_probe_run(&t->opts);
    it = item(r, "vm.overcommit_memory");
    assert_int_equal(it->status, SBX_PROBE_WARN);
    assert_non_null(strstr(it->message, "strict"));
    assert_string_equal(it->fix, "sysctl -w vm.overcommit_memory=1");
}

static void
test_pids_limit_enough(void **state)
{
    Tree *t = *state;
    g_autoptr(SbxProbeReport) r = NULL;
    const SbxProbeItem *it;

    good_host(t);
    put(t, "sys/fs/cgroup/system.slice/pids.max", "100000\n");
    r = sbx_probe_run(&t->opts);
    it = item(r, "cgroup.pids.max");
    assert_int_equal(it->status, SBX_PROBE_OK);
    assert_string_equal(it->value, "100000");
}

static void
test_missing_kvm_device(void **state)
{
    Tree *t = *state;
    g_autofree char *reason = NULL;
    g_autofree char *missing = g_build_filename(t->dir, "no-such-kvm", NULL);

    assert_int_equal(sbx_probe_kvm(missing, &t->opts.roots, &reason), SBX_ACCEL_TCG);
    assert_non_null(strstr(reason, "does not exist"));
}

static void
test_json_report(void **state)
{
    Tree *t = *state;
    g_autoptr(SbxProbeReport) r = NULL;
    g_autofree char *text = NULL;
    g_autoptr(JsonParser) parser = json_parser_new();
    JsonObject *root;
    JsonArray *items;
    gboolean saw_map = FALSE;

    bad_host(t);
    r = sbx_probe_run(&t->opts);
    text = sbx_probe_report_to_string(r, TRUE);
    assert_true(json_parser_load_from_data(parser, text, -1, NULL));
    root = json_node_get_object(json_parser_get_root(parser));
    assert_string_equal(json_object_get_string_member(root, "accel"), "tcg");
    assert_true(strlen(json_object_get_string_member(root, "accel_reason")) > 0);
    assert_int_equal(json_object_get_int_member(root, "warnings"),
                     sbx_probe_report_count(r, SBX_PROBE_WARN));
    items = json_object_get_array_member(root, "items");
    assert_int_equal(json_array_get_length(items), r->items->len);
    for (guint i = 0; i < json_array_get_length(items); i++) {
        JsonObject *o = json_array_get_object_element(items, i);
        const char *status = json_object_get_string_member(o, "status");
        assert_true(json_object_has_member(o, "name") && json_object_has_member(o, "value") &&
                    json_object_has_member(o, "message") && json_object_has_member(o, "fix"));
        assert_true(g_strcmp0(status, "ok") == 0 || g_strcmp0(status, "warn") == 0 ||
                    g_strcmp0(status, "error") == 0);
        if (g_strcmp0(json_object_get_string_member(o, "name"), "vm.max_map_count") == 0) {
            saw_map = TRUE;
            assert_string_equal(json_object_get_string_member(o, "fix"),
                                "sysctl -w vm.max_map_count=262144");
        }
        if (g_strcmp0(status, "ok") == 0)
            assert_true(json_node_is_null(json_object_get_member(o, "fix")));
    }
    assert_true(saw_map);
}

/* raise_limits: the soft limits of this process end at the hard limits. */
static void
test_rlimits_raised(void **state)
{
    Tree *t = *state;
    g_autoptr(SbxProbeReport) r = NULL;
    struct rlimit rl;

    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur > 64) {
        rl.rlim_cur = 64; /* lower the soft limit so the probe has work to do */
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    good_host(t);
    t->opts.raise_limits = TRUE;
    r = sbx_probe_run(&t->opts);
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    assert_true(rl.rlim_cur == rl.rlim_max);
    assert_int_equal(getrlimit(RLIMIT_NPROC, &rl), 0);
    assert_true(rl.rlim_cur == rl.rlim_max);
    assert_non_null(strstr(item(r, "rlimit_nofile")->value, "soft "));
    assert_non_null(item(r, "rlimit_nproc"));
}

static void
probe_done(GObject *source, GAsyncResult *result, gpointer data)
{
    SbxProbeReport **out = data;
    g_autoptr(GError) error = NULL;

    *out = sbx_probe_run_finish(result, &error);
    assert_null(error);
}

static void
test_async(void **state)
{
    Tree *t = *state;
    g_autoptr(SbxProbeReport) r = NULL;

    bad_host(t);
    sbx_probe_run_async(&t->opts, NULL, probe_done, &r);
    while (!r)
        g_main_context_iteration(NULL, TRUE);
    assert_int_equal(item(r, "vm.max_map_count")->status, SBX_PROBE_WARN);
}

/* The real /dev/kvm of this machine. On the development machines it is PVM,
 * which must be reported as TCG with the reason; on a host with VMX/SVM the
 * test guest must run. */
static void
test_real_kvm(void **state)
{
    g_autofree char *reason = NULL;
    SbxAccel accel = sbx_probe_kvm(NULL, NULL, &reason);
    g_autofree char *cpuinfo = NULL;
    gboolean hw = FALSE;

    assert_non_null(reason);
    assert_true(*reason);
    print_message("# accel=%s: %s\n", sbx_accel_to_string(accel), reason);
    if (g_file_get_contents("/proc/cpuinfo", &cpuinfo, NULL, NULL))
        hw = strstr(cpuinfo, " vmx") || strstr(cpuinfo, " svm");
    if (!g_file_test("/dev/kvm", G_FILE_TEST_EXISTS) ||
        g_file_test("/sys/module/kvm_pvm", G_FILE_TEST_IS_DIR) || !hw)
        assert_int_equal(accel, SBX_ACCEL_TCG);
    if (g_file_test("/sys/module/kvm_pvm", G_FILE_TEST_IS_DIR) &&
        access("/dev/kvm", R_OK | W_OK) == 0 && !hw)
        /* PVM: the emulator cannot run the test guest to its end */
        assert_non_null(strstr(reason, "test guest"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bad_host_warns_with_fixes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_good_host_is_clean, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overcommit_strict, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pids_limit_enough, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_kvm_device, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_report, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rlimits_raised, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async, setup, teardown),
        cmocka_unit_test(test_real_kvm),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
