/* SPDX-License-Identifier: MIT
 *
 * Unit tests of scheduler/sbx-qemu: the microVM command line for TCG and KVM,
 * optional work disk / RAM file / netdev, option escaping, TSC frequency parsing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <string.h>

#include "scheduler/sbx-qemu.h"

/* Index of the value following option @opt, or -1. */
static int
opt_index(GStrv argv, const char *opt)
{
    for (int i = 0; argv[i]; i++)
        if (strcmp(argv[i], opt) == 0 && argv[i + 1])
            return i + 1;
    return -1;
}

static gboolean
has_pair(GStrv argv, const char *opt, const char *value)
{
    for (int i = 0; argv[i] && argv[i + 1]; i++)
        if (strcmp(argv[i], opt) == 0 && strcmp(argv[i + 1], value) == 0)
            return TRUE;
    return FALSE;
}

static SbxQemuConfig
base_config(void)
{
    SbxQemuConfig cfg = {
        .vm_id = "vm-1",
        .accel = SBX_ACCEL_TCG,
        .memory_mb = 512,
        .vcpus = 1,
        .tb_size_mb = 64,
        .kernel = "/img/vmlinux",
        .initrd = "/img/initramfs.cpio",
        .cmdline = "console=ttyS0 quiet",
        .tsc_khz = 2100000,
        .rootfs = "/img/rootfs.erofs",
    };
    return cfg;
}

static void
test_tcg_defaults(void **state)
{
    SbxQemuConfig cfg = base_config();
    g_auto(GStrv) argv = sbx_qemu_build_argv("qemu-system-x86_64", &cfg);
    assert_string_equal(argv[0], "qemu-system-x86_64");
    assert_true(has_pair(argv, "-accel", "tcg,thread=single,tb-size=64"));
    assert_true(has_pair(argv, "-m", "512M"));
    assert_true(has_pair(argv, "-smp", "1,maxcpus=1"));
    assert_true(has_pair(argv, "-append", "console=ttyS0 quiet tsc_early_khz=2100000"));
    assert_true(has_pair(argv, "-chardev", "socket,id=qmp,fd=3"));
    assert_true(has_pair(argv, "-chardev", "socket,id=agent,fd=4"));
    assert_true(has_pair(argv, "-nic", "none"));
    assert_true(has_pair(argv, "-device", "virtio-rng-device,rng=rng0"));
    assert_true(has_pair(argv, "-device", "virtserialport,chardev=agent,name=" SBX_AGENT_PORT_NAME));
    assert_int_equal(opt_index(argv, "-cpu"), -1);
    assert_int_equal(opt_index(argv, "-sandbox"), -1);
    assert_int_equal(opt_index(argv, "-incoming"), -1);
    /* no work disk: only the root drive */
    int drives = 0;
    for (int i = 0; argv[i]; i++)
        drives += strcmp(argv[i], "-drive") == 0;
    assert_int_equal(drives, 1);
    int m = opt_index(argv, "-M");
    assert_true(m > 0);
    assert_true(g_str_has_prefix(argv[m], "microvm,"));
    assert_null(strstr(argv[m], "memory-backend"));
}

static void
test_kvm_hides_nested_virt(void **state)
{
    SbxQemuConfig cfg = base_config();
    cfg.accel = SBX_ACCEL_KVM;
    cfg.vcpus = 2;
    g_auto(GStrv) argv = sbx_qemu_build_argv("qemu", &cfg);
    assert_true(has_pair(argv, "-accel", "kvm"));
    assert_true(has_pair(argv, "-cpu", "host,-vmx,-svm"));
    assert_true(has_pair(argv, "-smp", "2,maxcpus=2"));
}

static void
test_work_disk_ram_file_and_netdev(void **state)
{
    SbxQemuConfig cfg = base_config();
    cfg.work_disk = "/run/x/work,1.qcow2";
    cfg.work_format = "qcow2";
    cfg.mem_path = "/dev/shm/tpl.ram";
    cfg.mem_share = FALSE;
    cfg.incoming_defer = TRUE;
    cfg.with_netdev = TRUE;
    cfg.sandbox = TRUE;
    g_auto(GStrv) argv = sbx_qemu_build_argv("qemu", &cfg);
    gboolean found_work = FALSE;
    for (int i = 0; argv[i]; i++)
        if (g_str_has_prefix(argv[i], "file=/run/x/work,,1.qcow2,format=qcow2,"))
            found_work = TRUE;
    assert_true(found_work);
    assert_true(has_pair(argv, "-device", "virtio-blk-device,drive=work,serial=sbx-work"));
    assert_true(has_pair(argv, "-object",
                         "memory-backend-file,id=mem0,size=512M,mem-path=/dev/shm/tpl.ram,"
                         "share=off"));
    int m = opt_index(argv, "-M");
    assert_non_null(strstr(argv[m], "memory-backend=mem0"));
    assert_true(has_pair(argv, "-incoming", "defer"));
    assert_true(has_pair(argv, "-netdev", "stream,id=net0,addr.type=fd,addr.str=5"));
    assert_int_equal(opt_index(argv, "-nic"), -1);
    assert_true(opt_index(argv, "-sandbox") > 0);
}

static gboolean
has_balloon(GStrv argv)
{
    return has_pair(argv, "-device", "virtio-balloon-device,free-page-reporting=on");
}

/* The balloon (free page reporting) only where guest RAM is anonymous: QEMU 7.2
 * would punch holes into a template's RAM file through a MAP_PRIVATE clone. */
static void
test_balloon_only_with_anonymous_ram(void **state)
{
    SbxQemuConfig cfg = base_config();
    {
        g_auto(GStrv) argv = sbx_qemu_build_argv("qemu", &cfg);
        assert_false(has_balloon(argv)); /* not asked for */
    }
    cfg.balloon = TRUE;
    {
        g_auto(GStrv) argv = sbx_qemu_build_argv("qemu", &cfg);
        assert_true(sbx_qemu_has_balloon(&cfg));
        assert_true(has_balloon(argv));
    }
    cfg.mem_path = "/run/l1/tpl.ram.tmp"; /* template build: share=on */
    cfg.mem_share = TRUE;
    {
        g_auto(GStrv) argv = sbx_qemu_build_argv("qemu", &cfg);
        assert_false(sbx_qemu_has_balloon(&cfg));
        assert_false(has_balloon(argv));
    }
    cfg.mem_share = FALSE; /* restore: MAP_PRIVATE over the template */
    {
        g_auto(GStrv) argv = sbx_qemu_build_argv("qemu", &cfg);
        assert_false(has_balloon(argv));
    }
    cfg.mem_path = NULL;
    cfg.incoming_defer = TRUE;
    {
        g_auto(GStrv) argv = sbx_qemu_build_argv("qemu", &cfg);
        assert_false(has_balloon(argv));
    }
}

static void
test_tsc_khz(void **state)
{
    g_autofree char *path = NULL;
    int fd = g_file_open_tmp("cpuinfo-XXXXXX", &path, NULL);
    assert_true(fd >= 0);
    close(fd);
    assert_true(g_file_set_contents(path, "processor\t: 0\nmodel name\t: X\ncpu MHz\t\t: 2596.132\n", -1,
                                    NULL));
    assert_int_equal(sbx_qemu_read_tsc_khz(path), 2596132);
    assert_true(g_file_set_contents(path, "processor\t: 0\n", -1, NULL));
    assert_int_equal(sbx_qemu_read_tsc_khz(path), 0);
    assert_int_equal(sbx_qemu_read_tsc_khz("/nonexistent"), 0);
    unlink(path);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tcg_defaults),
        cmocka_unit_test(test_kvm_hides_nested_virt),
        cmocka_unit_test(test_work_disk_ram_file_and_netdev),
        cmocka_unit_test(test_balloon_only_with_anonymous_ram),
        cmocka_unit_test(test_tsc_khz),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
