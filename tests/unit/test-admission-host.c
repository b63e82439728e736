/* SPDX-License-Identifier: MIT
 *
 * Unit tests of scheduler/sbx-hostinfo and the budgets sbx-admission derives
 * from it: host capacity from fake /proc + /sys trees written to a temporary
 * directory (plain machine, pure cgroup v2 with limits on an ancestor, a
 * hybrid v1 host like the development machines, cpuset), the PSI parser and
 * the available-memory reading with cgroup headroom.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <string.h>

#include <glib/gstdio.h>

#include "scheduler/sbx-admission.h"

#define MiB (G_GUINT64_CONSTANT(1024) * 1024)
#define GiB (MiB * 1024)

typedef struct {
    char *dir;
    char *proc;
    char *sys;
    SbxHostRoots roots;
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
mkdirs(Tree *t, const char *rel)
{
    g_autofree char *path = g_build_filename(t->dir, rel, NULL);
    assert_int_equal(g_mkdir_with_parents(path, 0755), 0);
}

static int
setup(void **state)
{
    Tree *t = g_new0(Tree, 1);

    t->dir = g_dir_make_tmp("sbx-host-XXXXXX", NULL);
    assert_non_null(t->dir);
    t->proc = g_build_filename(t->dir, "proc", NULL);
    t->sys = g_build_filename(t->dir, "sys", NULL);
    t->roots.proc_root = t->proc;
    t->roots.sys_root = t->sys;
    /* a 16 GiB, 8-CPU machine */
    put(t, "proc/meminfo",
        "MemTotal:       16777216 kB\nMemFree:         1000000 kB\n"
        "MemAvailable:    8388608 kB\nBuffers:           1234 kB\n");
    put(t, "sys/devices/system/cpu/online", "0-7\n");
    *state = t;
    return 0;
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
teardown(void **state)
{
    Tree *t = *state;

    rm_rf(t->dir);
    g_free(t->dir);
    g_free(t->proc);
    g_free(t->sys);
    g_free(t);
    return 0;
}

static void
test_machine_only(void **state)
{
    Tree *t = *state;
    g_auto(SbxHostCapacity) cap = {0};
    g_autoptr(GError) error = NULL;

    put(t, "proc/self/cgroup", "0::/\n");
    assert_true(sbx_host_capacity_read(&t->roots, &cap, &error));
    assert_null(error);
    assert_int_equal(cap.memory_bytes, 16 * GiB);
    assert_int_equal(cap.cpu_millis, 8000);
    assert_string_equal(cap.memory_source, "machine");
    assert_string_equal(cap.cpu_source, "machine");
    assert_null(cap.memory_usage_file);
}

static void
test_missing_meminfo_fails(void **state)
{
    Tree *t = *state;
    g_auto(SbxHostCapacity) cap = {0};
    g_autoptr(GError) error = NULL;
    g_autofree char *p = g_build_filename(t->dir, "proc/meminfo", NULL);

    g_unlink(p);
    assert_false(sbx_host_capacity_read(&t->roots, &cap, &error));
    assert_non_null(error);
}

/* Pure v2: the limit sits on an ancestor of the daemon's group. */
static void
test_cgroup_v2_limits(void **state)
{
    Tree *t = *state;
    g_auto(SbxHostCapacity) cap = {0};
    g_autoptr(GError) error = NULL;
    g_autoptr(SbxAdmission) adm = NULL;
    SbxAdmissionConfig cfg;
    SbxAdmissionStats st;

    put(t, "proc/self/cgroup", "0::/system.slice/schedulerd.service\n");
    put(t, "sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids\n");
    put(t, "sys/fs/cgroup/system.slice/memory.max", "4294967296\n");
    put(t, "sys/fs/cgroup/system.slice/cpu.max", "max 100000\n");
    put(t, "sys/fs/cgroup/system.slice/schedulerd.service/memory.max", "max\n");
    put(t, "sys/fs/cgroup/system.slice/schedulerd.service/memory.current", "1073741824\n");
    put(t, "sys/fs/cgroup/system.slice/memory.current", "1073741824\n");
    put(t, "sys/fs/cgroup/system.slice/schedulerd.service/cpu.max", "250000 100000\n");
    put(t, "sys/fs/cgroup/system.slice/schedulerd.service/cpuset.cpus.effective", "0-3\n");
    assert_true(sbx_host_capacity_read(&t->roots, &cap, &error));
    assert_int_equal(cap.memory_bytes, 4 * GiB);
    assert_true(g_str_has_prefix(cap.memory_source, "cgroup-v2:"));
    assert_true(g_str_has_suffix(cap.memory_source, "/sys/fs/cgroup/system.slice"));
    assert_true(g_str_has_suffix(cap.memory_usage_file, "system.slice/memory.current"));
    /* quota 2.5 CPUs beats the 4-CPU cpuset and the 8-CPU machine */
    assert_int_equal(cap.cpu_millis, 2500);
    assert_true(g_str_has_suffix(cap.cpu_source, "schedulerd.service"));

    /* budgets: 4 GiB x 0.92 x 5 and (2.5 - 0.5) x 2 */
    sbx_admission_config_init(&cfg);
    adm = sbx_admission_new_for_host(&cfg, &t->roots, &error);
    assert_non_null(adm);
    sbx_admission_get_stats(adm, &st);
    assert_int_equal(st.memory_budget_bytes, (guint64)(4.0 * GiB * 0.92 * 5.0));
    assert_int_equal(st.cpu_budget_millis, 4000);

    /* cpuset smaller than the quota */
    put(t, "sys/fs/cgroup/system.slice/schedulerd.service/cpuset.cpus.effective", "2\n");
    sbx_host_capacity_clear(&cap);
    assert_true(sbx_host_capacity_read(&t->roots, &cap, &error));
    assert_int_equal(cap.cpu_millis, 1000);
}

/* Hybrid v1 like the development machines: the memory limit on the parent
 * of the group named in /proc/self/cgroup, cpu quota in a "cpu,cpuacct"
 * hierarchy, an empty "unified" v2 hierarchy. */
static void
test_cgroup_v1_hybrid(void **state)
{
    Tree *t = *state;
    g_auto(SbxHostCapacity) cap = {0};
    g_autoptr(GError) error = NULL;
    SbxHostPressure pr;

    put(t, "proc/self/cgroup",
        "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n"
        "3:cpuset:/\n1:cpu,cpuacct:/daemon\n0::/\n");
    put(t, "sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n");
    put(t, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
    put(t, "sys/fs/cgroup/memory/process_api/memory.limit_in_bytes", "2147483648\n");
    put(t, "sys/fs/cgroup/memory/process_api/memory.usage_in_bytes", "1610612736\n");
    put(t, "sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes", "9223372036854771712\n");
    put(t, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    put(t, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    put(t, "sys/fs/cgroup/cpu,cpuacct/daemon/cpu.cfs_quota_us", "150000\n");
    put(t, "sys/fs/cgroup/cpu,cpuacct/daemon/cpu.cfs_period_us", "100000\n");
    put(t, "sys/fs/cgroup/cpuset/cpuset.effective_cpus", "0-7\n");
    mkdirs(t, "sys/fs/cgroup/pids");
    assert_true(sbx_host_capacity_read(&t->roots, &cap, &error));
    assert_int_equal(cap.memory_bytes, 2 * GiB);
    assert_true(g_str_has_prefix(cap.memory_source, "cgroup-v1:"));
    assert_true(g_str_has_suffix(cap.memory_source, "memory/process_api"));
    assert_int_equal(cap.cpu_millis, 1500);
    assert_true(g_str_has_suffix(cap.cpu_source, "cpu,cpuacct/daemon"));

    /* available = min(MemAvailable 8 GiB, limit 2 GiB - usage 1.5 GiB) */
    put(t, "proc/pressure/memory",
        "some avg10=1.50 avg60=0.00 avg300=0.00 total=10\n"
        "full avg10=12.25 avg60=3.00 avg300=0.00 total=5\n");
    sbx_host_pressure_read(&t->roots, &cap, &pr);
    assert_int_equal(pr.memory_available_bytes, 512 * MiB);
    assert_true(pr.psi_memory_full_avg10 > 12.24 && pr.psi_memory_full_avg10 < 12.26);
}

static void
test_unlimited_v1_is_machine(void **state)
{
    Tree *t = *state;
    g_auto(SbxHostCapacity) cap = {0};
    g_autoptr(GError) error = NULL;

    put(t, "proc/self/cgroup", "4:memory:/\n1:cpu:/\n0::/\n");
    put(t, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
    put(t, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n");
    put(t, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
    assert_true(sbx_host_capacity_read(&t->roots, &cap, &error));
    assert_int_equal(cap.memory_bytes, 16 * GiB);
    assert_int_equal(cap.cpu_millis, 8000);
    assert_string_equal(cap.memory_source, "machine");
}

static void
test_pressure_without_files(void **state)
{
    Tree *t = *state;
    SbxHostPressure pr;
    g_autofree char *p = g_build_filename(t->dir, "proc/meminfo", NULL);

    g_unlink(p);
    sbx_host_pressure_read(&t->roots, NULL, &pr);
    assert_true(pr.psi_memory_full_avg10 < 0);
    assert_true(pr.memory_available_bytes < 0);
}

static void
test_parsers(void **state)
{
    assert_int_equal(sbx_host_parse_cpu_list("0-3,8,10-11"), 7);
    assert_int_equal(sbx_host_parse_cpu_list("0"), 1);
    assert_int_equal(sbx_host_parse_cpu_list(" 0-1\n"), 2);
    assert_int_equal(sbx_host_parse_cpu_list(""), 0);
    assert_int_equal(sbx_host_parse_cpu_list("3-1"), 0);
    assert_int_equal(sbx_host_parse_cpu_list("x"), 0);
    assert_true(sbx_host_parse_psi_full_avg10("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
                                              "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n") ==
                0.0);
    assert_true(sbx_host_parse_psi_full_avg10("some avg10=5.00\n") < 0);
    assert_true(sbx_host_parse_psi_full_avg10("full avg10=abc\n") < 0);
    assert_true(sbx_host_parse_psi_full_avg10(NULL) < 0);
}

static void
acquired_cb(GObject *source, GAsyncResult *result, gpointer data)
{
    SbxReservation **out = data;
    g_autoptr(GError) error = NULL;

    *out = sbx_admission_acquire_finish(SBX_ADMISSION(source), result, &error);
    assert_null(error);
}

/* The daemon's gate provider reads the fake PSI file; once the pressure is
 * gone, the re-check timer admits the waiter without any release. Only the
 * outcome is asserted (the loop blocks on the GLib timers). */
static void
test_host_psi_gate(void **state)
{
    Tree *t = *state;
    g_autoptr(GError) error = NULL;
    g_autoptr(SbxAdmission) adm = NULL;
    SbxAdmissionConfig cfg;
    SbxAdmissionStats st;
    SbxReservation *res = NULL;

    put(t, "proc/self/cgroup", "0::/\n");
    put(t, "proc/pressure/memory",
        "some avg10=60.00 avg60=0.00 avg300=0.00 total=10\n"
        "full avg10=55.00 avg60=0.00 avg300=0.00 total=5\n");
    sbx_admission_config_init(&cfg);
    cfg.gate_recheck_ms = 10;
    adm = sbx_admission_new_for_host(&cfg, &t->roots, &error);
    assert_non_null(adm);
    sbx_admission_acquire_async(adm, 256 * MiB, 1000, 0, NULL, acquired_cb, &res);
    while (g_main_context_iteration(NULL, FALSE))
        ;
    assert_null(res);
    sbx_admission_get_stats(adm, &st);
    assert_int_equal(st.queue_length, 1);
    assert_true(st.gate_blocks >= 1);
    put(t, "proc/pressure/memory",
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=10\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=5\n");
    while (!res)
        g_main_context_iteration(NULL, TRUE);
    sbx_admission_get_stats(adm, &st);
    assert_int_equal(st.queue_length, 0);
    assert_int_equal(st.reservations, 1);
    sbx_reservation_free(res);
}

/* The real machine: whatever it is, the numbers are sane. */
static void
test_real_host(void **state)
{
    g_auto(SbxHostCapacity) cap = {0};
    g_autoptr(GError) error = NULL;
    SbxHostPressure pr;

    assert_true(sbx_host_capacity_read(NULL, &cap, &error));
    assert_true(cap.memory_bytes > 64 * MiB);
    assert_true(cap.cpu_millis >= 100);
    sbx_host_pressure_read(NULL, &cap, &pr);
    assert_true(pr.memory_available_bytes > 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_machine_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_meminfo_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cgroup_v2_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cgroup_v1_hybrid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unlimited_v1_is_machine, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pressure_without_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_host_psi_gate, setup, teardown),
        cmocka_unit_test(test_parsers),
        cmocka_unit_test(test_real_host),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
