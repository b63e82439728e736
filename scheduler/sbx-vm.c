/* SPDX-License-Identifier: MIT
 *
 * sbx-vm: boot and destroy one microVM. Talks to common/sbx-spawn (the QEMU
 * child), scheduler/sbx-qemu (its command line), qmp/ (the monitor),
 * scheduler/sbx-guest (the agent channel) and scheduler/sbx-cgroup. Sockets
 * are socketpairs created before the spawn and handed over as fds 3 (QMP) and
 * 4 (agent); readiness is the agent's hello, never a sleep or a polled path.
 * A record of the live VM (its pid and start time) stays in its run dir so a
 * restarted scheduler can reap the orphans of a crashed one (sbx-orphans.c).
 */
#define G_LOG_DOMAIN "sbx-vm"

#include "scheduler/sbx-vm.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/sbx-fd.h"
#include "common/sbx-spawn.h"
#include "qmp/qmp-client.h"
#include "qmp/qmp-commands.h"
#include "scheduler/sbx-orphans.h"

#define SBX_VM_QMP_TIMEOUT_MS 10000
#define SBX_VM_QUIT_DEADLINE_MS 300
/* A boot channel (QMP or agent) that fails while QEMU is still alive: wait
 * this long for QEMU's exit, whose status and console say why. */
#define SBX_VM_DEATH_GRACE_MS 250
#define SBX_VM_CONSOLE_BYTES (64 * 1024)

G_DEFINE_QUARK(sbx-vm-error-quark, sbx_vm_error)

struct _SbxVm {
    GObject parent_instance;
    char *id;
    SbxVmState state;
    char *run_dir;
    char *work_disk;
    SbxChild *child;
    QmpClient *qmp;
    SbxGuest *guest;
    SbxCgroup *cgroup;
    gint64 spawn_us;
    gint64 boot_ms;
    gboolean balloon;      /* virtio-balloon with free page reporting (anonymous RAM only) */
    /* L1 (sbx_vm_prestart/restore/save_state) */
    gboolean prestarted;   /* QEMU waits in -incoming defer with capabilities set */
    gint64 restore_us;     /* restore started */
    gint64 restore_ms;
    GTask *mig_task;       /* save or incoming migration waiting for its MIGRATION event */
    gulong mig_event_id;
    guint mig_timer;
    /* boot */
    GTask *boot_task;
    guint boot_pending; /* qmp handshake + agent hello */
    guint boot_timer;
    GError *boot_error;  /* a channel failed: held for the death grace */
    guint death_grace;
    GCancellable *cancellable;
    /* destroy */
    GQueue destroy_waiters;
    gboolean destroying;
    gboolean killed;   /* sbx_vm_kill: SIGKILL sent, no QMP quit */
    guint kill_timer;
    gint64 destroy_us; /* destroy started (debug timeline) */
};

enum { SIGNAL_DIED, N_SIGNALS };
static guint signals[N_SIGNALS];

G_DEFINE_FINAL_TYPE(SbxVm, sbx_vm, G_TYPE_OBJECT)

SbxVm *
sbx_vm_new(const char *id)
{
    SbxVm *self = g_object_new(SBX_TYPE_VM, NULL);
    self->id = g_strdup(id);
    return self;
}

const char *
sbx_vm_get_id(SbxVm *self)
{
    return self->id;
}

SbxVmState
sbx_vm_get_state(SbxVm *self)
{
    return self->state;
}

GPid
sbx_vm_get_pid(SbxVm *self)
{
    return self->child ? sbx_child_get_pid(self->child) : 0;
}

SbxGuest *
sbx_vm_get_guest(SbxVm *self)
{
    return self->guest;
}

SbxCgroup *
sbx_vm_get_cgroup(SbxVm *self)
{
    return self->cgroup;
}

gint64
sbx_vm_get_boot_ms(SbxVm *self)
{
    return self->boot_ms;
}

gint64
sbx_vm_get_restore_ms(SbxVm *self)
{
    return self->restore_ms;
}

gboolean
sbx_vm_is_prestarted(SbxVm *self)
{
    return self->prestarted && self->state == SBX_VM_STATE_BOOTING && self->boot_task == NULL;
}

char *
sbx_vm_dup_exit_description(SbxVm *self)
{
    if (self->child == NULL || !sbx_child_has_exited(self->child))
        return NULL;
    return sbx_child_describe_exit(self->child);
}

char *
sbx_vm_dup_console_tail(SbxVm *self, guint n)
{
    return self->child ? sbx_child_dup_console_tail(self->child, n) : g_strdup("");
}

static void
boot_complete(SbxVm *self, GError *error)
{
    g_autoptr(GTask) task = g_steal_pointer(&self->boot_task);
    g_clear_handle_id(&self->death_grace, g_source_remove);
    g_clear_error(&self->boot_error);
    if (task == NULL) {
        if (error)
            g_error_free(error);
        return;
    }
    g_clear_handle_id(&self->boot_timer, g_source_remove);
    if (error) {
        g_cancellable_cancel(self->cancellable);
        g_task_return_error(task, error);
        return;
    }
    if (g_task_get_source_tag(task) == sbx_vm_prestart_async) {
        self->prestarted = TRUE; /* stays BOOTING until restored */
    } else if (g_task_get_source_tag(task) == sbx_vm_restore_async) {
        self->state = SBX_VM_STATE_READY;
        self->restore_ms = (g_get_monotonic_time() - self->restore_us) / 1000;
    } else {
        self->state = SBX_VM_STATE_READY;
        self->boot_ms = (g_get_monotonic_time() - self->spawn_us) / 1000;
    }
    g_task_return_boolean(task, TRUE);
}

static void mig_complete(SbxVm *self, GError *error);

static GError *
died_error(SbxVm *self)
{
    g_autofree char *how = sbx_child_describe_exit(self->child);
    g_autofree char *tail = sbx_child_dup_console_tail(self->child, 10);
    return g_error_new(SBX_VM_ERROR, SBX_VM_ERROR_DIED, "QEMU %s; last console lines:\n%s", how,
                       *tail ? tail : "(none)");
}

static void
child_exited_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(SbxVm) self = user_data;
    if (!sbx_child_wait_finish(SBX_CHILD(source), res, NULL))
        return;
    if (self->destroying || self->killed)
        return;
    if (self->mig_task)
        mig_complete(self, died_error(self));
    if (self->state == SBX_VM_STATE_BOOTING) {
        self->state = SBX_VM_STATE_DEAD;
        boot_complete(self, died_error(self));
        return;
    }
    if (self->state == SBX_VM_STATE_READY) {
        self->state = SBX_VM_STATE_DEAD;
        g_autofree char *how = sbx_child_describe_exit(self->child);
        g_signal_emit(self, signals[SIGNAL_DIED], 0, how);
    }
}

static gboolean
boot_timeout_cb(gpointer user_data)
{
    SbxVm *self = user_data;
    self->boot_timer = 0;
    g_autofree char *tail = sbx_vm_dup_console_tail(self, 10);
    boot_complete(self, g_error_new(SBX_VM_ERROR, SBX_VM_ERROR_BOOT_TIMEOUT,
                                    "the guest agent did not say hello within the boot timeout; "
                                    "last console lines:\n%s",
                                    *tail ? tail : "(none)"));
    return G_SOURCE_REMOVE;
}

static gboolean
death_grace_cb(gpointer user_data)
{
    SbxVm *self = user_data;
    self->death_grace = 0;
    boot_complete(self, g_steal_pointer(&self->boot_error));
    return G_SOURCE_REMOVE;
}

static void
boot_part_done(SbxVm *self, GError *error)
{
    if (self->boot_task == NULL || self->boot_error) {
        if (error)
            g_error_free(error);
        return;
    }
    if (error) {
        /* If QEMU died, its exit (with the console) is the better error. Its
         * channels close before GLib reaps it: give the exit a moment to be
         * seen (child_exited_cb or the boot timer complete the boot first). */
        if (self->child && sbx_child_has_exited(self->child)) {
            g_error_free(error);
            error = died_error(self);
        } else if (self->child) {
            self->boot_error = error;
            self->death_grace = g_timeout_add(SBX_VM_DEATH_GRACE_MS, death_grace_cb, self);
            return;
        }
        boot_complete(self, error);
        return;
    }
    if (--self->boot_pending == 0)
        boot_complete(self, NULL);
}

static void
qmp_connected_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(SbxVm) self = user_data;
    GError *error = NULL;
    if (!qmp_client_connect_finish(QMP_CLIENT(source), res, NULL, &error))
        g_prefix_error(&error, "QMP: ");
    boot_part_done(self, error);
}

static void
hello_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(SbxVm) self = user_data;
    GError *error = NULL;
    if (!sbx_guest_wait_hello_finish(SBX_GUEST(source), res, &error))
        g_prefix_error(&error, "guest agent: ");
    boot_part_done(self, error);
}

static gboolean
socketpair_cloexec(int sv[2], GError **error)
{
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0)
        return TRUE;
    int e = errno;
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "socketpair: %s", g_strerror(e));
    return FALSE;
}

static gboolean
boot_spawn(SbxVm *self, const SbxVmParams *params, GError **error)
{
    int qmp_sv[2], agent_sv[2];
    SbxQemuConfig qcfg = params->qemu_cfg;

    if (g_mkdir_with_parents(params->run_dir, 0700) != 0) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "%s: %s", params->run_dir,
                    g_strerror(e));
        return FALSE;
    }
    self->run_dir = g_strdup(params->run_dir);
    self->work_disk = g_strdup(params->work_disk);

    if (params->cgroup)
        self->cgroup = g_object_ref(params->cgroup);
    if (!socketpair_cloexec(qmp_sv, error))
        return FALSE;
    g_auto(SbxFd) qmp_ours = qmp_sv[0];
    g_auto(SbxFd) qmp_theirs = qmp_sv[1];
    if (!socketpair_cloexec(agent_sv, error))
        return FALSE;
    g_auto(SbxFd) agent_ours = agent_sv[0];
    g_auto(SbxFd) agent_theirs = agent_sv[1];

    qcfg.vm_id = self->id;
    qcfg.work_disk = params->work_disk;
    qcfg.work_format = params->work_format;
    g_auto(SbxFd) mem_fd = -1;
    char mem_path[32];
    if (params->mem_fd > 0) {
        mem_fd = fcntl(params->mem_fd, F_DUPFD_CLOEXEC, 3);
        if (mem_fd < 0) {
            int e = errno;
            g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "RAM file fd: %s",
                        g_strerror(e));
            return FALSE;
        }
        g_snprintf(mem_path, sizeof mem_path, "/proc/self/fd/%d", SBX_QEMU_FD_MEM);
        qcfg.mem_path = mem_path;
    }
    self->balloon = sbx_qemu_has_balloon(&qcfg);
    g_auto(GStrv) argv = sbx_qemu_build_argv(params->qemu, &qcfg);
    g_autoptr(SbxSpawnSpec) spec = sbx_spawn_spec_new();
    for (guint i = 0; argv[i]; i++)
        sbx_spawn_spec_add_arg(spec, argv[i]);
    sbx_spawn_spec_take_fd(spec, sbx_steal_fd(&qmp_theirs), SBX_QEMU_FD_QMP);
    sbx_spawn_spec_take_fd(spec, sbx_steal_fd(&agent_theirs), SBX_QEMU_FD_AGENT);
    if (mem_fd >= 0)
        sbx_spawn_spec_take_fd(spec, sbx_steal_fd(&mem_fd), SBX_QEMU_FD_MEM);
    if (qcfg.with_netdev) {
        int net_fd = fcntl(params->net_fd, F_DUPFD_CLOEXEC, 3);
        if (net_fd < 0) {
            int e = errno;
            g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "network fd: %s",
                        g_strerror(e));
            return FALSE;
        }
        sbx_spawn_spec_take_fd(spec, net_fd, SBX_QEMU_FD_NET);
    }
    sbx_spawn_spec_set_console_size(spec, SBX_VM_CONSOLE_BYTES);
    if (self->cgroup) {
        GPtrArray *procs = sbx_cgroup_get_procs_files(self->cgroup);
        for (guint i = 0; i < procs->len; i++)
            sbx_spawn_spec_add_cgroup(spec, g_ptr_array_index(procs, i));
    }

    self->spawn_us = g_get_monotonic_time();
    self->child = sbx_child_spawn(spec, error);
    if (self->child == NULL) {
        g_prefix_error(error, "starting QEMU: ");
        return FALSE;
    }
    /* Record the live VM for orphan reaping after a crash of this process. */
    if (!sbx_orphans_record(self->run_dir, "qemu", sbx_child_get_pid(self->child), error))
        return FALSE;
    sbx_child_wait_async(self->child, NULL, child_exited_cb, g_object_ref(self));

    self->qmp = qmp_client_new_for_fd(sbx_steal_fd(&qmp_ours), error);
    if (self->qmp == NULL)
        return FALSE;
    self->guest = sbx_guest_new(sbx_steal_fd(&agent_ours));
    return TRUE;
}

void
sbx_vm_boot_async(SbxVm *self, const SbxVmParams *params, GCancellable *cancellable,
                  GAsyncReadyCallback callback, gpointer user_data)
{
    GError *error = NULL;
    g_return_if_fail(self->state == SBX_VM_STATE_NEW);

    self->boot_task = g_task_new(self, cancellable, callback, user_data);
    g_task_set_source_tag(self->boot_task, sbx_vm_boot_async);
    self->state = SBX_VM_STATE_BOOTING;
    if (!boot_spawn(self, params, &error)) {
        boot_complete(self, error);
        return;
    }
    if (cancellable)
        g_cancellable_connect(cancellable, G_CALLBACK(g_cancellable_cancel),
                              g_object_ref(self->cancellable), g_object_unref);
    self->boot_pending = 2;
    self->boot_timer = g_timeout_add(params->boot_timeout_ms, boot_timeout_cb, self);
    qmp_client_connect_async(self->qmp, SBX_VM_QMP_TIMEOUT_MS, self->cancellable, qmp_connected_cb,
                             g_object_ref(self));
    sbx_guest_wait_hello_async(self->guest, params->boot_timeout_ms, self->cancellable, hello_cb,
                               g_object_ref(self));
}

gboolean
sbx_vm_boot_finish(SbxVm *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

gboolean
sbx_vm_has_balloon(SbxVm *self)
{
    return self->balloon;
}

static void
give_back_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autofree char *id = user_data;
    g_autoptr(GError) error = NULL;
    if (!sbx_guest_reclaim_finish(SBX_GUEST(source), res, &error) &&
        !g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
        g_debug("VM %s: reclaim: %s", id, error->message);
}

void
sbx_vm_give_back_memory(SbxVm *self)
{
    if (!self->balloon || self->state != SBX_VM_STATE_READY || self->guest == NULL)
        return;
    sbx_guest_reclaim_async(self->guest, self->cancellable, give_back_cb, g_strdup(self->id));
}

/* ---- L1 templates: prestart, restore, save -------------------------------- */

#define SBX_VM_MIG_FDNAME "sbx-l1-state"

static const char *const mig_caps[] = {"x-ignore-shared", "events", NULL};

static void
mig_complete(SbxVm *self, GError *error)
{
    g_autoptr(GTask) task = g_steal_pointer(&self->mig_task);
    g_clear_handle_id(&self->mig_timer, g_source_remove);
    if (self->mig_event_id && self->qmp)
        g_signal_handler_disconnect(self->qmp, self->mig_event_id);
    self->mig_event_id = 0;
    if (task == NULL) {
        if (error)
            g_error_free(error);
        return;
    }
    if (error)
        g_task_return_error(task, error);
    else
        g_task_return_boolean(task, TRUE);
}

static void
mig_event_cb(QmpClient *qmp, const char *name, JsonObject *data, gint64 ts, gpointer user_data)
{
    SbxVm *self = user_data;
    const char *status = json_object_get_string_member_with_default(data, "status", "");
    if (g_str_equal(status, "completed"))
        mig_complete(self, NULL);
    else if (g_str_equal(status, "failed") || g_str_equal(status, "cancelled"))
        mig_complete(self, g_error_new(SBX_VM_ERROR, SBX_VM_ERROR_MIGRATION,
                                       "migration %s", status));
}

static gboolean
mig_timeout_cb(gpointer user_data)
{
    SbxVm *self = user_data;
    self->mig_timer = 0;
    mig_complete(self, g_error_new_literal(SBX_VM_ERROR, SBX_VM_ERROR_MIGRATION,
                                           "migration did not complete within the timeout"));
    return G_SOURCE_REMOVE;
}

static void mig_getfd_cb(GObject *source, GAsyncResult *res, gpointer user_data);
static void mig_started_cb(GObject *source, GAsyncResult *res, gpointer user_data);

/* getfd @fd, then migrate (out) or migrate-incoming (in) over it; the task
 * completes on the MIGRATION event "completed". */
static void
mig_start(SbxVm *self, int fd, gboolean incoming, guint timeout_ms, GAsyncReadyCallback callback,
          gpointer user_data)
{
    GTask *task = g_task_new(self, self->cancellable, callback, user_data);
    g_task_set_task_data(task, GINT_TO_POINTER(incoming), NULL);
    if (self->mig_task != NULL || self->qmp == NULL) {
        g_task_return_new_error(task, G_IO_ERROR, G_IO_ERROR_BUSY, "a migration is already running");
        g_object_unref(task);
        return;
    }
    self->mig_task = task;
    self->mig_event_id = g_signal_connect(self->qmp, "event::MIGRATION", G_CALLBACK(mig_event_cb),
                                          self);
    self->mig_timer = g_timeout_add(timeout_ms, mig_timeout_cb, self);
    qmp_getfd_async(self->qmp, fd, SBX_VM_MIG_FDNAME, self->cancellable, mig_getfd_cb,
                    g_object_ref(self));
}

static void
mig_getfd_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(SbxVm) self = user_data;
    GError *error = NULL;
    if (!qmp_getfd_finish(QMP_CLIENT(source), res, &error)) {
        g_prefix_error(&error, "getfd: ");
        mig_complete(self, error);
        return;
    }
    if (self->mig_task == NULL)
        return;
    gboolean incoming = GPOINTER_TO_INT(g_task_get_task_data(self->mig_task));
    if (incoming)
        qmp_migrate_incoming_async(self->qmp, "fd:" SBX_VM_MIG_FDNAME, self->cancellable,
                                   mig_started_cb, g_object_ref(self));
    else
        qmp_migrate_async(self->qmp, "fd:" SBX_VM_MIG_FDNAME, self->cancellable, mig_started_cb,
                          g_object_ref(self));
}

static void
mig_started_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(SbxVm) self = user_data;
    GError *error = NULL;
    /* migrate and migrate-incoming share the void reply shape */
    if (!qmp_migrate_finish(QMP_CLIENT(source), res, &error)) {
        g_prefix_error(&error, "migrate: ");
        mig_complete(self, error);
    }
}

static gboolean
mig_finish(SbxVm *self, GAsyncResult *res, GError **error)
{
    return g_task_propagate_boolean(G_TASK(res), error);
}

/* -- prestart: spawn with -incoming defer, QMP, capabilities -- */

static void
prestart_caps_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(SbxVm) self = user_data;
    GError *error = NULL;
    if (!qmp_migrate_set_capabilities_finish(QMP_CLIENT(source), res, &error))
        g_prefix_error(&error, "migrate-set-capabilities: ");
    boot_complete(self, error);
}

static void
prestart_qmp_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(SbxVm) self = user_data;
    GError *error = NULL;
    if (!qmp_client_connect_finish(QMP_CLIENT(source), res, NULL, &error)) {
        g_prefix_error(&error, "QMP: ");
        boot_part_done(self, error);
        return;
    }
    if (self->boot_task == NULL)
        return;
    qmp_migrate_set_capabilities_async(self->qmp, mig_caps, TRUE, self->cancellable,
                                       prestart_caps_cb, g_object_ref(self));
}

static void
prestart_begin(SbxVm *self, const SbxVmParams *params, GTask *task)
{
    GError *error = NULL;
    SbxVmParams p = *params;
    self->boot_task = task;
    self->state = SBX_VM_STATE_BOOTING;
    p.qemu_cfg.incoming_defer = TRUE;
    if (!boot_spawn(self, &p, &error)) {
        boot_complete(self, error);
        return;
    }
    self->boot_pending = 1;
    self->boot_timer = g_timeout_add(params->boot_timeout_ms, boot_timeout_cb, self);
    qmp_client_connect_async(self->qmp, SBX_VM_QMP_TIMEOUT_MS, self->cancellable, prestart_qmp_cb,
                             g_object_ref(self));
}

void
sbx_vm_prestart_async(SbxVm *self, const SbxVmParams *params, GCancellable *cancellable,
                      GAsyncReadyCallback callback, gpointer user_data)
{
    g_return_if_fail(self->state == SBX_VM_STATE_NEW);
    GTask *task = g_task_new(self, cancellable, callback, user_data);
    g_task_set_source_tag(task, sbx_vm_prestart_async);
    if (cancellable)
        g_cancellable_connect(cancellable, G_CALLBACK(g_cancellable_cancel),
                              g_object_ref(self->cancellable), g_object_unref);
    prestart_begin(self, params, task);
}

gboolean
sbx_vm_prestart_finish(SbxVm *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

/* -- restore: migrate-incoming, cont, agent ping + CRNG reseed -- */

typedef struct {
    int state_fd;
    guint timeout_ms;
    guint agent_pending;
} RestoreData;

static void
restore_data_free(RestoreData *r)
{
    if (r->state_fd >= 0)
        close(r->state_fd);
    g_free(r);
}

static void restore_incoming(SbxVm *self);

static void
restore_agent_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(SbxVm) self = user_data;
    GError *error = NULL;
    gboolean ok = g_task_get_source_tag(G_TASK(res)) == sbx_guest_ping_async
                      ? sbx_guest_ping_finish(SBX_GUEST(source), res, &error)
                      : sbx_guest_reseed_finish(SBX_GUEST(source), res, &error);
    if (!ok)
        g_prefix_error(&error, "guest agent after restore: ");
    boot_part_done(self, error);
}

static void
restore_cont_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(SbxVm) self = user_data;
    GError *error = NULL;
    if (!qmp_cont_finish(QMP_CLIENT(source), res, &error)) {
        g_prefix_error(&error, "cont: ");
        boot_part_done(self, error);
        return;
    }
    if (self->boot_task == NULL)
        return;
    /* The template's agent was connected when saved and still is: it answers
     * at once (it sends a hello first only if it had seen a disconnect). The
     * reseed goes before any exec: clones of one template share CRNG state,
     * and the clock step it makes is what reseeds a cloned node's OpenSSL
     * DRBGs (docs/snapshots.md), so it must be set. */
    self->boot_pending = 2;
    sbx_guest_ping_async(self->guest, self->cancellable, restore_agent_cb, g_object_ref(self));
    sbx_guest_reseed_clock_async(self->guest, g_get_real_time() * 1000, self->cancellable,
                                 restore_agent_cb, g_object_ref(self));
}

static void
restore_migrated_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    g_autoptr(SbxVm) self = user_data;
    GError *error = NULL;
    if (!mig_finish(self, res, &error)) {
        g_prefix_error(&error, "loading the template's device state: ");
        boot_part_done(self, error);
        return;
    }
    if (self->boot_task == NULL)
        return;
    qmp_cont_async(self->qmp, self->cancellable, restore_cont_cb, g_object_ref(self));
}

static void
restore_incoming(SbxVm *self)
{
    RestoreData *r = g_task_get_task_data(self->boot_task);
    mig_start(self, r->state_fd, TRUE, r->timeout_ms, restore_migrated_cb, g_object_ref(self));
}

static void
restore_prestarted_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GTask *task = user_data; /* the restore task, owned here */
    SbxVm *self = g_task_get_source_object(task);
    GError *error = NULL;
    if (!sbx_vm_prestart_finish(self, res, &error)) {
        g_task_return_error(task, error);
        g_object_unref(task);
        return;
    }
    self->boot_task = task;
    self->boot_timer = g_timeout_add(((RestoreData *)g_task_get_task_data(task))->timeout_ms,
                                     boot_timeout_cb, self);
    restore_incoming(self);
}

void
sbx_vm_restore_async(SbxVm *self, const SbxVmParams *params, int state_fd,
                     GCancellable *cancellable, GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = g_task_new(self, cancellable, callback, user_data);
    g_task_set_source_tag(task, sbx_vm_restore_async);
    RestoreData *r = g_new0(RestoreData, 1);
    r->state_fd = fcntl(state_fd, F_DUPFD_CLOEXEC, 3);
    r->timeout_ms = params ? params->boot_timeout_ms : 30000;
    g_task_set_task_data(task, r, (GDestroyNotify)restore_data_free);
    self->restore_us = g_get_monotonic_time();
    if (r->state_fd < 0) {
        int e = errno;
        g_task_return_new_error(task, G_IO_ERROR, g_io_error_from_errno(e), "dup: %s",
                                g_strerror(e));
        g_object_unref(task);
        return;
    }
    if (cancellable)
        g_cancellable_connect(cancellable, G_CALLBACK(g_cancellable_cancel),
                              g_object_ref(self->cancellable), g_object_unref);
    if (self->state == SBX_VM_STATE_NEW) {
        g_return_if_fail(params != NULL);
        /* not pre-started: spawn now, then restore */
        GTask *pre = g_task_new(self, NULL, restore_prestarted_cb, task);
        g_task_set_source_tag(pre, sbx_vm_prestart_async);
        prestart_begin(self, params, pre);
        return;
    }
    if (!sbx_vm_is_prestarted(self)) {
        g_task_return_new_error(task, SBX_VM_ERROR, SBX_VM_ERROR_DIED,
                                "the pre-started QEMU is not waiting for a migration");
        g_object_unref(task);
        return;
    }
    self->boot_task = task;
    self->boot_timer = g_timeout_add(r->timeout_ms, boot_timeout_cb, self);
    restore_incoming(self);
}

gboolean
sbx_vm_restore_finish(SbxVm *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

/* -- save: stop, capabilities, migrate fd: -- */

static void
save_migrated_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GTask *task = user_data;
    GError *error = NULL;
    if (!mig_finish(SBX_VM(source), res, &error))
        g_task_return_error(task, error);
    else
        g_task_return_boolean(task, TRUE);
    g_object_unref(task);
}

static void
save_caps_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GTask *task = user_data;
    SbxVm *self = g_task_get_source_object(task);
    GError *error = NULL;
    if (!qmp_migrate_set_capabilities_finish(QMP_CLIENT(source), res, &error)) {
        g_prefix_error(&error, "migrate-set-capabilities: ");
        g_task_return_error(task, error);
        g_object_unref(task);
        return;
    }
    mig_start(self, GPOINTER_TO_INT(g_task_get_task_data(task)), FALSE, 60000, save_migrated_cb,
              task);
}

static void
save_stopped_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    GTask *task = user_data;
    SbxVm *self = g_task_get_source_object(task);
    GError *error = NULL;
    if (!qmp_stop_finish(QMP_CLIENT(source), res, &error)) {
        g_prefix_error(&error, "stop: ");
        g_task_return_error(task, error);
        g_object_unref(task);
        return;
    }
    qmp_migrate_set_capabilities_async(self->qmp, mig_caps, TRUE, self->cancellable, save_caps_cb,
                                       task);
}

void
sbx_vm_save_state_async(SbxVm *self, int fd, GCancellable *cancellable,
                        GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = g_task_new(self, cancellable, callback, user_data);
    g_task_set_source_tag(task, sbx_vm_save_state_async);
    g_task_set_task_data(task, GINT_TO_POINTER(fd), NULL);
    if (self->state != SBX_VM_STATE_READY || self->qmp == NULL) {
        g_task_return_new_error(task, SBX_VM_ERROR, SBX_VM_ERROR_DIED, "the VM is not running");
        g_object_unref(task);
        return;
    }
    qmp_stop_async(self->qmp, self->cancellable, save_stopped_cb, task);
}

gboolean
sbx_vm_save_state_finish(SbxVm *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

/* ---- destroy ------------------------------------------------------------ */

/* Debug timeline of a destroy (G_MESSAGES_DEBUG=sbx-vm). */
static void
destroy_trace(SbxVm *self, const char *step)
{
    if (g_log_writer_default_would_drop(G_LOG_LEVEL_DEBUG, G_LOG_DOMAIN))
        return;
    g_debug("%s: destroy +%" G_GINT64_FORMAT " us %s", self->id,
            g_get_monotonic_time() - self->destroy_us, step);
}

static void
remove_files(SbxVm *self)
{
    if (self->work_disk) {
        (void)unlink(self->work_disk);
        g_clear_pointer(&self->work_disk, g_free);
    }
    if (self->run_dir) {
        sbx_orphans_forget(self->run_dir);
        g_autoptr(GDir) d = g_dir_open(self->run_dir, 0, NULL);
        const char *name;
        while (d && (name = g_dir_read_name(d)) != NULL) {
            g_autofree char *p = g_build_filename(self->run_dir, name, NULL);
            (void)unlink(p);
        }
        (void)rmdir(self->run_dir);
    }
}

static void
destroy_complete(SbxVm *self, GError *error)
{
    GTask *task;
    destroy_trace(self, "cgroup removed, destroy complete");
    self->state = SBX_VM_STATE_DESTROYED;
    while ((task = g_queue_pop_head(&self->destroy_waiters)) != NULL) {
        if (error)
            g_task_return_error(task, g_error_copy(error));
        else
            g_task_return_boolean(task, TRUE);
        g_object_unref(task);
    }
    if (error)
        g_error_free(error);
    g_object_unref(self); /* the ref taken when destroy started */
}

static void
cgroup_destroyed_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    SbxVm *self = user_data;
    GError *error = NULL;
    if (!sbx_cgroup_destroy_finish(SBX_CGROUP(source), res, &error))
        g_prefix_error(&error, "removing the VM's cgroup: ");
    destroy_complete(self, error);
}

static void
destroy_after_death(SbxVm *self)
{
    g_clear_handle_id(&self->kill_timer, g_source_remove);
    destroy_trace(self, "QEMU death confirmed");
    remove_files(self);
    destroy_trace(self, "files removed");
    if (self->cgroup) {
        sbx_cgroup_destroy_async(self->cgroup, NULL, cgroup_destroyed_cb, self);
        return;
    }
    destroy_complete(self, NULL);
}

static void
destroy_exited_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    SbxVm *self = user_data;
    (void)sbx_child_wait_finish(SBX_CHILD(source), res, NULL);
    destroy_after_death(self);
}

static gboolean
kill_timeout_cb(gpointer user_data)
{
    SbxVm *self = user_data;
    self->kill_timer = 0;
    sbx_child_kill(self->child, SIGKILL);
    return G_SOURCE_REMOVE;
}

static void
quit_cb(GObject *source, GAsyncResult *res, gpointer user_data)
{
    /* QEMU may exit before it answers: its death is what counts. */
    (void)qmp_quit_finish(QMP_CLIENT(source), res, NULL);
}

void
sbx_vm_destroy_async(SbxVm *self, GAsyncReadyCallback callback, gpointer user_data)
{
    GTask *task = g_task_new(self, NULL, callback, user_data);
    g_task_set_source_tag(task, sbx_vm_destroy_async);
    if (self->state == SBX_VM_STATE_DESTROYED) {
        g_task_return_boolean(task, TRUE);
        g_object_unref(task);
        return;
    }
    g_queue_push_tail(&self->destroy_waiters, task);
    if (self->destroying)
        return;
    self->destroying = TRUE;
    if (!self->killed)
        self->destroy_us = g_get_monotonic_time();
    g_object_ref(self);
    if (self->boot_task)
        boot_complete(self, g_error_new_literal(G_IO_ERROR, G_IO_ERROR_CANCELLED,
                                                "the VM was destroyed while booting"));
    if (self->mig_task)
        mig_complete(self, g_error_new_literal(G_IO_ERROR, G_IO_ERROR_CANCELLED,
                                               "the VM was destroyed during a migration"));
    g_cancellable_cancel(self->cancellable);

    /* 1. guest channel */
    if (self->guest)
        sbx_guest_close(self->guest);
    if (self->child == NULL || sbx_child_has_exited(self->child)) {
        if (self->qmp)
            qmp_client_close(self->qmp);
        destroy_after_death(self);
        return;
    }
    /* 2. QMP quit with a short deadline, then SIGKILL (at once after
     * sbx_vm_kill); 3. confirmed death */
    if (!self->killed && self->qmp &&
        qmp_client_get_state(self->qmp) == QMP_CLIENT_STATE_RUNNING) {
        qmp_quit_async(self->qmp, NULL, quit_cb, NULL);
        destroy_trace(self, "QMP quit sent");
        self->kill_timer = g_timeout_add(SBX_VM_QUIT_DEADLINE_MS, kill_timeout_cb, self);
    } else {
        sbx_child_kill(self->child, SIGKILL);
    }
    sbx_child_wait_async(self->child, NULL, destroy_exited_cb, self);
}

gboolean
sbx_vm_destroy_finish(SbxVm *self, GAsyncResult *result, GError **error)
{
    g_return_val_if_fail(g_task_is_valid(result, self), FALSE);
    return g_task_propagate_boolean(G_TASK(result), error);
}

void
sbx_vm_kill(SbxVm *self)
{
    if (self->child == NULL || sbx_child_has_exited(self->child) || self->killed)
        return;
    self->killed = TRUE;
    self->destroy_us = g_get_monotonic_time();
    sbx_child_kill(self->child, SIGKILL);
    destroy_trace(self, "SIGKILL sent");
}

static void
sbx_vm_dispose(GObject *object)
{
    SbxVm *self = SBX_VM(object);
    g_cancellable_cancel(self->cancellable);
    g_clear_handle_id(&self->boot_timer, g_source_remove);
    g_clear_handle_id(&self->death_grace, g_source_remove);
    g_clear_error(&self->boot_error);
    mig_complete(self, NULL);
    /* Last line of defence: a VM dropped without destroy still dies. */
    if (self->child && !sbx_child_has_exited(self->child))
        sbx_child_kill(self->child, SIGKILL);
    if (self->qmp)
        qmp_client_close(self->qmp);
    g_clear_object(&self->qmp);
    g_clear_object(&self->guest);
    g_clear_object(&self->child);
    g_clear_object(&self->cgroup);
    G_OBJECT_CLASS(sbx_vm_parent_class)->dispose(object);
}

static void
sbx_vm_finalize(GObject *object)
{
    SbxVm *self = SBX_VM(object);
    g_free(self->id);
    g_free(self->run_dir);
    g_free(self->work_disk);
    g_clear_object(&self->cancellable);
    G_OBJECT_CLASS(sbx_vm_parent_class)->finalize(object);
}

static void
sbx_vm_init(SbxVm *self)
{
    self->cancellable = g_cancellable_new();
    g_queue_init(&self->destroy_waiters);
}

static void
sbx_vm_class_init(SbxVmClass *klass)
{
    GObjectClass *oc = G_OBJECT_CLASS(klass);
    oc->dispose = sbx_vm_dispose;
    oc->finalize = sbx_vm_finalize;
    signals[SIGNAL_DIED] = g_signal_new("died", G_TYPE_FROM_CLASS(klass), G_SIGNAL_RUN_LAST, 0,
                                        NULL, NULL, NULL, G_TYPE_NONE, 1, G_TYPE_STRING);
}
