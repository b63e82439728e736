/* SPDX-License-Identifier: MIT
 *
 * Unit tests of scheduler/sbx-cgroup against fake trees in a temp dir: a fake
 * /proc/self/mountinfo + /proc/self/cgroup and a plain directory standing in for
 * cgroupfs (v2-only, hybrid v1 like this host, v1-only with co-mounted cpu,cpuacct,
 * no cgroups at all). Checks layout detection, the interface files written for
 * given limits, stats parsing, destroy of an empty group and the orphan sweep
 * (which must SIGKILL a real child listed in a leftover group's cgroup.procs).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <glib/gstdio.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>

#include "common/sbx-spawn.h"
#include "scheduler/sbx-cgroup.h"

typedef struct {
    char *root;
} Fixture;

static void
put(const char *root, const char *rel, const char *content)
{
    g_autofree char *path = g_build_filename(root, rel, NULL);
    g_autofree char *dir = g_path_get_dirname(path);
    assert_int_equal(g_mkdir_with_parents(dir, 0755), 0);
    assert_true(g_file_set_contents(path, content, -1, NULL));
}

static void
mkdirs(const char *root, const char *rel)
{
    g_autofree char *path = g_build_filename(root, rel, NULL);
    assert_int_equal(g_mkdir_with_parents(path, 0755), 0);
}

static char *
get(const char *root, const char *rel)
{
    g_autofree char *path = g_build_filename(root, rel, NULL);
    char *text = NULL;
    if (!g_file_get_contents(path, &text, NULL, NULL))
        return NULL;
    return text;
}

static gboolean
exists(const char *root, const char *rel)
{
    g_autofree char *path = g_build_filename(root, rel, NULL);
    return g_file_test(path, G_FILE_TEST_EXISTS);
}

#define assert_file(root, rel, want)                                                               \
    do {                                                                                           \
        g_autofree char *got_ = get((root), (rel));                                                \
        assert_non_null(got_);                                                                     \
        assert_string_equal(got_, (want));                                                         \
    } while (0)

static int
setup(void **state)
{
    Fixture *f = g_new0(Fixture, 1);
    f->root = g_dir_make_tmp("test-cgroup-XXXXXX", NULL);
    assert_non_null(f->root);
    *state = f;
    return 0;
}

static void
rm_rf(const char *path)
{
    g_autoptr(GDir) dir = g_dir_open(path, 0, NULL);
    const char *e;
    while (dir && (e = g_dir_read_name(dir)) != NULL) {
        g_autofree char *p = g_build_filename(path, e, NULL);
        if (g_file_test(p, G_FILE_TEST_IS_DIR) && !g_file_test(p, G_FILE_TEST_IS_SYMLINK))
            rm_rf(p);
        else
            (void)g_unlink(p);
    }
    (void)g_rmdir(path);
}

static int
teardown(void **state)
{
    Fixture *f = *state;
    rm_rf(f->root);
    g_free(f->root);
    g_free(f);
    return 0;
}

/* ---- fake layouts ---- */

static void
layout_v2(const char *root)
{
    put(root, "proc/self/mountinfo",
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        "30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
        "rw,nsdelegate,memory_recursiveprot\n");
    put(root, "proc/self/cgroup", "0::/system.slice/schedulerd.service\n");
    put(root, "sys/fs/cgroup/system.slice/schedulerd.service/cgroup.controllers",
        "cpuset cpu io memory hugetlb pids rdma misc\n");
}

/* Like this host: v1 controllers on a tmpfs, cgroup2 at .../unified with hugetlb only. */
static void
layout_hybrid(const char *root)
{
    put(root, "proc/self/mountinfo",
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
        "33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n"
        "34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices\n"
        "39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
        "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n");
    put(root, "proc/self/cgroup",
        "9:name=systemd:/\n8:pids:/\n6:devices:/\n4:memory:/process_api/abc\n3:cpuset:/\n"
        "2:cpuacct:/\n1:cpu:/\n0::/\n");
    mkdirs(root, "sys/fs/cgroup/cpu");
    mkdirs(root, "sys/fs/cgroup/cpuacct");
    mkdirs(root, "sys/fs/cgroup/memory/process_api/abc");
    mkdirs(root, "sys/fs/cgroup/pids");
    put(root, "sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n");
}

/* v1 only, cpu and cpuacct co-mounted, a bind-mounted hierarchy (mount root not "/")
 * and an escaped space in a mount point. */
static void
layout_v1(const char *root)
{
    put(root, "proc/self/mountinfo",
        "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "35 31 0:32 /outer /sys/fs/cgroup/mem\\040ory rw - cgroup cgroup rw,memory\n"
        "39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
        "40 31 0:36 / /mnt/pids-again rw - cgroup cgroup rw,pids\n");
    put(root, "proc/self/cgroup", "5:pids:/p\n4:memory:/outer/m\n2:cpu,cpuacct:/c\n");
    mkdirs(root, "sys/fs/cgroup/cpu,cpuacct/c");
    mkdirs(root, "sys/fs/cgroup/mem ory/m");
    mkdirs(root, "sys/fs/cgroup/pids/p");
}

static SbxCgroupManager *
manager(const char *root, GError **error)
{
    SbxCgroupConfig cfg = {.fs_root = root, .plain_fs = TRUE, .destroy_timeout_ms = 3000};
    return sbx_cgroup_manager_new(&cfg, error);
}

static const SbxCgroupLimits limits_64m = {
    .mem_max = 64 << 20,
    .mem_high = 48 << 20,
    .cpu_quota_millis = 500,
    .pids_max = 16,
};

/* ---- detection + files written ---- */

static void
test_v2_layout(void **state)
{
    Fixture *f = *state;
    g_autoptr(GError) error = NULL;
    layout_v2(f->root);
    g_autoptr(SbxCgroupManager) m = manager(f->root, &error);
    assert_non_null(m);
    assert_int_equal(sbx_cgroup_manager_get_mode(m), SBX_CGROUP_MODE_V2);
    assert_int_equal(sbx_cgroup_manager_get_controllers(m), SBX_CGROUP_CONTROLLER_MEMORY |
                                                                SBX_CGROUP_CONTROLLER_CPU |
                                                                SBX_CGROUP_CONTROLLER_PIDS);
    assert_non_null(strstr(sbx_cgroup_manager_get_reason(m), "v2"));
    /* controllers delegated down to the VM groups */
    assert_file(f->root, "sys/fs/cgroup/system.slice/schedulerd.service/cgroup.subtree_control",
                "+memory +cpu +pids");
    assert_file(f->root,
                "sys/fs/cgroup/system.slice/schedulerd.service/schedulerd/cgroup.subtree_control",
                "+memory +cpu +pids");

    g_autoptr(SbxCgroup) cg = sbx_cgroup_manager_create(m, "vm-1", &limits_64m, &error);
    assert_non_null(cg);
    const char *d = "sys/fs/cgroup/system.slice/schedulerd.service/schedulerd/vm-1/";
    g_autofree char *p;
    p = g_strconcat(d, "memory.max", NULL);
    assert_file(f->root, p, "67108864");
    g_free(p);
    p = g_strconcat(d, "memory.high", NULL);
    assert_file(f->root, p, "50331648");
    g_free(p);
    p = g_strconcat(d, "memory.oom.group", NULL);
    assert_file(f->root, p, "1");
    g_free(p);
    p = g_strconcat(d, "memory.swap.max", NULL);
    assert_file(f->root, p, "0");
    g_free(p);
    p = g_strconcat(d, "cpu.max", NULL);
    assert_file(f->root, p, "50000 100000");
    g_free(p);
    p = g_strconcat(d, "pids.max", NULL);
    assert_file(f->root, p, "16");

    GPtrArray *procs = sbx_cgroup_get_procs_files(cg);
    assert_int_equal(procs->len, 1);
    g_autofree char *want = g_build_filename(f->root, d, "cgroup.procs", NULL);
    assert_string_equal(g_ptr_array_index(procs, 0), want);

    /* the same name twice is refused while the first lives */
    g_autoptr(GError) e2 = NULL;
    assert_null(sbx_cgroup_manager_create(m, "vm-1", NULL, &e2));
    assert_true(g_error_matches(e2, G_IO_ERROR, G_IO_ERROR_EXISTS));
    assert_true(sbx_cgroup_try_destroy(cg, &error));
}

static void
test_hybrid_layout(void **state)
{
    Fixture *f = *state;
    g_autoptr(GError) error = NULL;
    layout_hybrid(f->root);
    g_autoptr(SbxCgroupManager) m = manager(f->root, &error);
    assert_non_null(m);
    assert_null(error);
    assert_int_equal(sbx_cgroup_manager_get_mode(m), SBX_CGROUP_MODE_HYBRID);
    assert_int_equal(sbx_cgroup_manager_get_controllers(m),
                     SBX_CGROUP_CONTROLLER_MEMORY | SBX_CGROUP_CONTROLLER_CPU |
                         SBX_CGROUP_CONTROLLER_CPUACCT | SBX_CGROUP_CONTROLLER_PIDS);
    /* nothing to delegate on the hugetlb-only v2 tree */
    assert_false(exists(f->root, "sys/fs/cgroup/unified/cgroup.subtree_control"));

    g_autoptr(SbxCgroup) cg = sbx_cgroup_manager_create(m, "vm-7", &limits_64m, &error);
    assert_non_null(cg);
    assert_file(f->root,
                "sys/fs/cgroup/memory/process_api/abc/schedulerd/vm-7/memory.limit_in_bytes",
                "67108864");
    assert_file(f->root,
                "sys/fs/cgroup/memory/process_api/abc/schedulerd/vm-7/memory.memsw.limit_in_bytes",
                "67108864");
    assert_file(f->root,
                "sys/fs/cgroup/memory/process_api/abc/schedulerd/vm-7/memory.soft_limit_in_bytes",
                "50331648");
    assert_file(f->root, "sys/fs/cgroup/cpu/schedulerd/vm-7/cpu.cfs_period_us", "100000");
    assert_file(f->root, "sys/fs/cgroup/cpu/schedulerd/vm-7/cpu.cfs_quota_us", "50000");
    assert_file(f->root, "sys/fs/cgroup/pids/schedulerd/vm-7/pids.max", "16");
    assert_false(exists(f->root, "sys/fs/cgroup/cpuacct/schedulerd/vm-7/cpu.cfs_quota_us"));
    assert_true(exists(f->root, "sys/fs/cgroup/unified/schedulerd/vm-7"));
    assert_false(exists(f->root, "sys/fs/cgroup/cpuset/schedulerd"));

    /* one procs file per hierarchy: unified (first), cpu, cpuacct, memory, pids */
    GPtrArray *procs = sbx_cgroup_get_procs_files(cg);
    assert_int_equal(procs->len, 5);
    g_autofree char *first =
        g_build_filename(f->root, "sys/fs/cgroup/unified/schedulerd/vm-7/cgroup.procs", NULL);
    assert_string_equal(g_ptr_array_index(procs, 0), first);
    g_autofree char *mem =
        g_build_filename(f->root, "sys/fs/cgroup/memory/process_api/abc/schedulerd/vm-7", NULL);
    assert_string_equal(sbx_cgroup_get_dir(cg, SBX_CGROUP_CONTROLLER_MEMORY), mem);
    assert_true(sbx_cgroup_try_destroy(cg, &error));
}

static void
test_v1_layout(void **state)
{
    Fixture *f = *state;
    g_autoptr(GError) error = NULL;
    layout_v1(f->root);
    g_autoptr(SbxCgroupManager) m = manager(f->root, &error);
    assert_non_null(m);
    assert_int_equal(sbx_cgroup_manager_get_mode(m), SBX_CGROUP_MODE_V1);
    g_autoptr(GPtrArray) bases = sbx_cgroup_manager_dup_base_dirs(m);
    assert_int_equal(bases->len, 3); /* cpu,cpuacct once; the second pids mount ignored */
    g_autofree char *mem = g_build_filename(f->root, "sys/fs/cgroup/mem ory/m/schedulerd", NULL);
    assert_string_equal(g_ptr_array_index(bases, 1), mem);

    SbxCgroupLimits l = {.cpu_quota_millis = 5}; /* below the kernel minimum of 1 ms */
    g_autoptr(SbxCgroup) cg = sbx_cgroup_manager_create(m, "vm-a", &l, &error);
    assert_non_null(cg);
    assert_file(f->root, "sys/fs/cgroup/cpu,cpuacct/c/schedulerd/vm-a/cpu.cfs_quota_us", "1000");
    assert_false(exists(f->root, "sys/fs/cgroup/mem ory/m/schedulerd/vm-a/memory.limit_in_bytes"));
    assert_false(exists(f->root, "sys/fs/cgroup/pids/p/schedulerd/vm-a/pids.max"));
    assert_string_equal(sbx_cgroup_get_dir(cg, SBX_CGROUP_CONTROLLER_CPU),
                        sbx_cgroup_get_dir(cg, SBX_CGROUP_CONTROLLER_CPUACCT));
    assert_int_equal(sbx_cgroup_get_procs_files(cg)->len, 3);
    assert_true(sbx_cgroup_try_destroy(cg, &error));
}

static void
test_no_cgroups(void **state)
{
    Fixture *f = *state;
    g_autoptr(GError) error = NULL;
    put(f->root, "proc/self/mountinfo", "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n");
    put(f->root, "proc/self/cgroup", "0::/\n");
    g_autoptr(SbxCgroupManager) m = manager(f->root, &error);
    assert_non_null(m);
    assert_int_equal(sbx_cgroup_manager_get_mode(m), SBX_CGROUP_MODE_NONE);
    assert_non_null(strstr(sbx_cgroup_manager_get_reason(m), "without cgroup limits"));

    /* VMs still get an (inert) group: nothing to join, nothing to read, destroy is a no-op */
    g_autoptr(SbxCgroup) cg = sbx_cgroup_manager_create(m, "vm-1", &limits_64m, &error);
    assert_non_null(cg);
    assert_int_equal(sbx_cgroup_get_procs_files(cg)->len, 0);
    SbxCgroupStats st;
    assert_false(sbx_cgroup_read_stats(cg, &st, &error));
    assert_true(g_error_matches(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED));
    g_clear_error(&error);
    guint64 cpu_ns = 0, peak = 0;
    assert_false(sbx_cgroup_read_usage(cg, &cpu_ns, &peak, &error));
    assert_true(g_error_matches(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED));
    assert_true(sbx_cgroup_try_destroy(cg, NULL));
}

/* A layout whose own group is missing (as when the tree is read-only or not ours):
 * mode NONE with the path in the reason, never an error. */
static void
test_unwritable_falls_back(void **state)
{
    Fixture *f = *state;
    g_autoptr(GError) error = NULL;
    layout_hybrid(f->root);
    put(f->root, "proc/self/cgroup", "8:pids:/\n4:memory:/gone\n2:cpuacct:/\n1:cpu:/\n0::/\n");
    g_autoptr(SbxCgroupManager) m = manager(f->root, &error);
    assert_non_null(m);
    assert_int_equal(sbx_cgroup_manager_get_mode(m), SBX_CGROUP_MODE_NONE);
    assert_non_null(strstr(sbx_cgroup_manager_get_reason(m), "memory/gone/schedulerd"));

    SbxCgroupConfig off = {.fs_root = f->root, .plain_fs = TRUE, .disable = TRUE};
    g_autoptr(SbxCgroupManager) m2 = sbx_cgroup_manager_new(&off, &error);
    assert_int_equal(sbx_cgroup_manager_get_mode(m2), SBX_CGROUP_MODE_NONE);
    assert_non_null(strstr(sbx_cgroup_manager_get_reason(m2), "disabled by configuration"));
}

static void
test_bad_config(void **state)
{
    Fixture *f = *state;
    g_autoptr(GError) error = NULL;
    layout_hybrid(f->root);
    SbxCgroupConfig cfg = {.fs_root = f->root, .plain_fs = TRUE, .root_path = "/not-there"};
    assert_null(sbx_cgroup_manager_new(&cfg, &error));
    assert_true(g_error_matches(error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND));
    g_clear_error(&error);

    SbxCgroupConfig bad = {.fs_root = f->root, .plain_fs = TRUE, .base_name = "a/b"};
    assert_null(sbx_cgroup_manager_new(&bad, &error));
    assert_true(g_error_matches(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT));
    g_clear_error(&error);

    /* a configured root replaces the daemon's own group in every hierarchy */
    mkdirs(f->root, "sys/fs/cgroup/cpu/svc");
    mkdirs(f->root, "sys/fs/cgroup/cpuacct/svc");
    mkdirs(f->root, "sys/fs/cgroup/memory/svc");
    mkdirs(f->root, "sys/fs/cgroup/pids/svc");
    mkdirs(f->root, "sys/fs/cgroup/unified/svc");
    SbxCgroupConfig rooted = {.fs_root = f->root, .plain_fs = TRUE, .root_path = "/svc"};
    g_autoptr(SbxCgroupManager) m = sbx_cgroup_manager_new(&rooted, &error);
    assert_non_null(m);
    assert_int_equal(sbx_cgroup_manager_get_mode(m), SBX_CGROUP_MODE_HYBRID);
    assert_true(exists(f->root, "sys/fs/cgroup/memory/svc/schedulerd"));

    g_autoptr(SbxCgroup) cg = sbx_cgroup_manager_create(m, "../x", NULL, &error);
    assert_null(cg);
    assert_true(g_error_matches(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT));
}

/* A failing create leaves no directory behind in any hierarchy. */
static void
test_create_rolls_back(void **state)
{
    Fixture *f = *state;
    g_autoptr(GError) error = NULL;
    layout_hybrid(f->root);
    g_autoptr(SbxCgroupManager) m = manager(f->root, &error);
    mkdirs(f->root, "sys/fs/cgroup/pids/schedulerd/vm-2"); /* stale, in the last hierarchy */
    assert_null(sbx_cgroup_manager_create(m, "vm-2", &limits_64m, &error));
    assert_true(g_error_matches(error, G_IO_ERROR, G_IO_ERROR_EXISTS));
    assert_non_null(strstr(error->message, "pids/schedulerd/vm-2"));
    assert_false(exists(f->root, "sys/fs/cgroup/unified/schedulerd/vm-2"));
    assert_false(exists(f->root, "sys/fs/cgroup/memory/process_api/abc/schedulerd/vm-2"));
    assert_false(exists(f->root, "sys/fs/cgroup/cpu/schedulerd/vm-2"));
}

/* ---- stats ---- */

static void
test_stats_v1(void **state)
{
    Fixture *f = *state;
    g_autoptr(GError) error = NULL;
    layout_hybrid(f->root);
    g_autoptr(SbxCgroupManager) m = manager(f->root, &error);
    g_autoptr(SbxCgroup) cg = sbx_cgroup_manager_create(m, "vm-s", NULL, &error);
    assert_non_null(cg);
    const char *mem = "sys/fs/cgroup/memory/process_api/abc/schedulerd/vm-s/";
    g_autofree char *a = g_strconcat(mem, "memory.max_usage_in_bytes", NULL);
    g_autofree char *b = g_strconcat(mem, "memory.usage_in_bytes", NULL);
    g_autofree char *c = g_strconcat(mem, "memory.oom_control", NULL);
    put(f->root, a, "67100672\n");
    put(f->root, b, "1048576\n");
    put(f->root, c, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
    put(f->root, "sys/fs/cgroup/cpuacct/schedulerd/vm-s/cpuacct.usage", "123456789\n");
    put(f->root, "sys/fs/cgroup/cpu/schedulerd/vm-s/cpu.stat",
        "nr_periods 10\nnr_throttled 3\nthrottled_time 5000\n");
    put(f->root, "sys/fs/cgroup/pids/schedulerd/vm-s/pids.current", "4\n");
    put(f->root, "sys/fs/cgroup/pids/schedulerd/vm-s/pids.events", "max 7\n");
    /* the v2 tracking group's usage is not used when cpuacct exists */
    put(f->root, "sys/fs/cgroup/unified/schedulerd/vm-s/cpu.stat", "usage_usec 1\n");

    SbxCgroupStats st;
    assert_true(sbx_cgroup_read_stats(cg, &st, &error));
    assert_int_equal(st.cpu_usage_ns, 123456789);
    assert_int_equal(st.memory_peak_bytes, 67100672);
    assert_int_equal(st.memory_current_bytes, 1048576);
    assert_int_equal(st.nr_throttled, 3);
    assert_int_equal(st.oom_kills, 2);
    assert_int_equal(st.pids_current, 4);
    assert_int_equal(st.pids_max_hits, 7);
    /* the two numbers of a run's result, from two files */
    guint64 cpu_ns = 0, peak = 0;
    assert_true(sbx_cgroup_read_usage(cg, &cpu_ns, &peak, &error));
    assert_int_equal(cpu_ns, 123456789);
    assert_int_equal(peak, 67100672);

    put(f->root, "sys/fs/cgroup/pids/schedulerd/vm-s/pids.current", "four\n");
    assert_false(sbx_cgroup_read_stats(cg, &st, &error));
    assert_true(g_error_matches(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA));
    assert_true(sbx_cgroup_try_destroy(cg, NULL));
}

static void
test_stats_v2(void **state)
{
    Fixture *f = *state;
    g_autoptr(GError) error = NULL;
    layout_v2(f->root);
    g_autoptr(SbxCgroupManager) m = manager(f->root, &error);
    g_autoptr(SbxCgroup) cg = sbx_cgroup_manager_create(m, "vm-s", NULL, &error);
    assert_non_null(cg);
    const char *d = "sys/fs/cgroup/system.slice/schedulerd.service/schedulerd/vm-s/";
    g_autofree char *stat = g_strconcat(d, "cpu.stat", NULL);
    g_autofree char *cur = g_strconcat(d, "memory.current", NULL);
    g_autofree char *ev = g_strconcat(d, "memory.events", NULL);
    put(f->root, stat,
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\n"
        "nr_throttled 2\nthrottled_usec 100\n");
    put(f->root, cur, "5000\n");
    put(f->root, ev, "low 0\nhigh 3\nmax 4\noom 1\noom_kill 1\noom_group_kill 1\n");

    /* no memory.peak (kernel < 5.19): the peak is the highest value polled */
    SbxCgroupStats st;
    assert_true(sbx_cgroup_read_stats(cg, &st, &error));
    assert_int_equal(st.cpu_usage_ns, 1500000);
    assert_int_equal(st.nr_throttled, 2);
    assert_int_equal(st.oom_kills, 1);
    assert_int_equal(st.memory_peak_bytes, 5000);
    put(f->root, cur, "300\n");
    assert_true(sbx_cgroup_read_stats(cg, &st, &error));
    assert_int_equal(st.memory_current_bytes, 300);
    assert_int_equal(st.memory_peak_bytes, 5000);
    guint64 cpu_ns = 0, peak = 0;
    put(f->root, cur, "7000\n");
    assert_true(sbx_cgroup_read_usage(cg, &cpu_ns, &peak, &error));
    assert_int_equal(cpu_ns, 1500000);
    assert_int_equal(peak, 7000); /* no memory.peak: the highest current seen */
    put(f->root, cur, "100\n");
    assert_true(sbx_cgroup_read_usage(cg, &cpu_ns, &peak, &error));
    assert_int_equal(peak, 7000);
    g_autofree char *pk = g_strconcat(d, "memory.peak", NULL);
    put(f->root, pk, "9000\n");
    assert_true(sbx_cgroup_read_stats(cg, &st, &error));
    assert_int_equal(st.memory_peak_bytes, 9000);
    assert_true(sbx_cgroup_read_usage(cg, &cpu_ns, &peak, &error));
    assert_int_equal(peak, 9000);
    assert_true(sbx_cgroup_try_destroy(cg, NULL));
}

/* ---- teardown ---- */

static void
destroy_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    GError **out = data;
    if (!sbx_cgroup_destroy_finish(SBX_CGROUP(src), res, out))
        g_assert(*out != NULL);
    else
        *out = g_error_new_literal(G_IO_ERROR, G_IO_ERROR_FAILED, "ok"); /* marks completion */
}

typedef struct {
    SbxCgroup *cg;
    GError *error;
    gboolean done;
} CreateResult;

static void
create_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    CreateResult *r = data;
    r->cg = sbx_cgroup_manager_create_finish(SBX_CGROUP_MANAGER(src), res, &r->error);
    r->done = TRUE;
}

static void
test_destroy_empty(void **state)
{
    Fixture *f = *state;
    g_autoptr(GError) error = NULL;
    layout_hybrid(f->root);
    g_autoptr(SbxCgroupManager) m = manager(f->root, &error);
    /* created in a worker thread, as the VM lifecycle does from the main loop */
    CreateResult cr = {0};
    sbx_cgroup_manager_create_async(m, "vm-d", &limits_64m, NULL, create_cb, &cr);
    while (!cr.done)
        g_main_context_iteration(NULL, TRUE);
    g_autoptr(SbxCgroup) cg = cr.cg;
    assert_non_null(cg);
    assert_null(cr.error);
    assert_true(exists(f->root, "sys/fs/cgroup/pids/schedulerd/vm-d"));
    assert_file(f->root, "sys/fs/cgroup/pids/schedulerd/vm-d/pids.max", "16");

    GError *done = NULL;
    sbx_cgroup_destroy_async(cg, NULL, destroy_cb, &done);
    while (done == NULL)
        g_main_context_iteration(NULL, TRUE);
    assert_string_equal(done->message, "ok");
    g_clear_error(&done);
    assert_false(exists(f->root, "sys/fs/cgroup/unified/schedulerd/vm-d"));
    assert_false(exists(f->root, "sys/fs/cgroup/cpu/schedulerd/vm-d"));
    assert_false(exists(f->root, "sys/fs/cgroup/cpuacct/schedulerd/vm-d"));
    assert_false(exists(f->root, "sys/fs/cgroup/memory/process_api/abc/schedulerd/vm-d"));
    assert_false(exists(f->root, "sys/fs/cgroup/pids/schedulerd/vm-d"));
    assert_true(exists(f->root, "sys/fs/cgroup/pids/schedulerd"));
    assert_true(sbx_cgroup_try_destroy(cg, &error)); /* idempotent */

    /* the name is free again */
    g_autoptr(SbxCgroup) again = sbx_cgroup_manager_create(m, "vm-d", NULL, &error);
    assert_non_null(again);
    assert_true(sbx_cgroup_try_destroy(again, &error));
}

static void
test_destroy_busy_reports(void **state)
{
    Fixture *f = *state;
    g_autoptr(GError) error = NULL;
    layout_v2(f->root);
    g_autoptr(SbxCgroupManager) m = manager(f->root, &error);
    g_autoptr(SbxCgroup) cg = sbx_cgroup_manager_create(m, "vm-b", NULL, &error);
    /* a member that is not a killable process of ours: pid 1 is never signalled */
    put(f->root, "sys/fs/cgroup/system.slice/schedulerd.service/schedulerd/vm-b/cgroup.procs",
        "1\n");
    assert_false(sbx_cgroup_try_destroy(cg, &error));
    assert_true(g_error_matches(error, G_IO_ERROR, G_IO_ERROR_BUSY));
    assert_true(exists(f->root, "sys/fs/cgroup/system.slice/schedulerd.service/schedulerd/vm-b"));
    /* v2: the kill went through cgroup.kill */
    assert_file(f->root,
                "sys/fs/cgroup/system.slice/schedulerd.service/schedulerd/vm-b/cgroup.kill", "1");
}

typedef struct {
    GPtrArray *removed;
    GError *error;
    gboolean done;
} SweepResult;

static void
sweep_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    SweepResult *r = data;
    r->removed = sbx_cgroup_manager_sweep_orphans_finish(SBX_CGROUP_MANAGER(src), res, &r->error);
    r->done = TRUE;
}

static void
child_gone_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    gboolean *gone = data;
    assert_true(sbx_child_wait_finish(SBX_CHILD(src), res, NULL));
    *gone = TRUE;
}

static void
test_sweep_orphans(void **state)
{
    Fixture *f = *state;
    g_autoptr(GError) error = NULL;
    layout_hybrid(f->root);
    g_autoptr(SbxCgroupManager) m = manager(f->root, &error);
    assert_non_null(m);

    /* a predecessor's leftovers: vm-old everywhere with a live process in it, vm-half
     * only in two hierarchies, and a foreign directory that must stay */
    g_autoptr(SbxSpawnSpec) spec = sbx_spawn_spec_new();
    sbx_spawn_spec_add_args(spec, "sleep", "1000", NULL);
    g_autoptr(SbxChild) child = sbx_child_spawn(spec, &error);
    assert_non_null(child);
    g_autofree char *pid = g_strdup_printf("%d\n", (int)sbx_child_get_pid(child));
    const char *hiers[] = {"unified", "cpu", "cpuacct", "memory/process_api/abc", "pids"};
    for (guint i = 0; i < G_N_ELEMENTS(hiers); i++) {
        g_autofree char *p =
            g_strdup_printf("sys/fs/cgroup/%s/schedulerd/vm-old/cgroup.procs", hiers[i]);
        put(f->root, p, i == 3 ? pid : "");
    }
    put(f->root, "sys/fs/cgroup/cpu/schedulerd/vm-half/cgroup.procs", "");
    put(f->root, "sys/fs/cgroup/pids/schedulerd/vm-half/cgroup.procs", "");
    mkdirs(f->root, "sys/fs/cgroup/pids/schedulerd/keep-me");
    g_autoptr(SbxCgroup) live = sbx_cgroup_manager_create(m, "vm-live", NULL, &error);
    assert_non_null(live);

    gboolean gone = FALSE;
    sbx_child_wait_async(child, NULL, child_gone_cb, &gone);
    SweepResult r = {0};
    sbx_cgroup_manager_sweep_orphans_async(m, NULL, NULL, sweep_cb, &r);
    /* the sweep must kill the child; the fake procs file is only emptied once it is
     * dead, as the kernel would */
    while (!gone && !r.done)
        g_main_context_iteration(NULL, TRUE);
    assert_null(r.error); /* not "still has processes" after the 3 s destroy timeout */
    assert_true(gone);
    assert_true(WIFSIGNALED(sbx_child_get_status(child)));
    assert_int_equal(WTERMSIG(sbx_child_get_status(child)), SIGKILL);
    assert_false(r.done);
    put(f->root, "sys/fs/cgroup/memory/process_api/abc/schedulerd/vm-old/cgroup.procs", "");
    while (!r.done)
        g_main_context_iteration(NULL, TRUE);
    assert_null(r.error);
    assert_non_null(r.removed);
    assert_int_equal(r.removed->len, 2);
    gboolean saw_old = FALSE, saw_half = FALSE;
    for (guint i = 0; i < r.removed->len; i++) {
        saw_old |= g_str_equal(g_ptr_array_index(r.removed, i), "vm-old");
        saw_half |= g_str_equal(g_ptr_array_index(r.removed, i), "vm-half");
    }
    assert_true(saw_old && saw_half);
    g_ptr_array_unref(r.removed);
    for (guint i = 0; i < G_N_ELEMENTS(hiers); i++) {
        g_autofree char *p = g_strdup_printf("sys/fs/cgroup/%s/schedulerd/vm-old", hiers[i]);
        assert_false(exists(f->root, p));
    }
    assert_false(exists(f->root, "sys/fs/cgroup/cpu/schedulerd/vm-half"));
    assert_true(exists(f->root, "sys/fs/cgroup/pids/schedulerd/keep-me"));
    assert_true(exists(f->root, "sys/fs/cgroup/pids/schedulerd/vm-live"));
    assert_true(sbx_cgroup_try_destroy(live, &error));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_v2_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hybrid_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_cgroups, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwritable_falls_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_rolls_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_v1, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_v2, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_busy_reports, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sweep_orphans, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
