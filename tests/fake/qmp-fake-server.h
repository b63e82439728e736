/* SPDX-License-Identifier: MIT
 *
 * An in-process fake QMP server for component tests of qmp/: it serves one
 * end of a socketpair from the test's GMainContext, follows a script of
 * expected commands and canned replies (the reply's "id" is copied from the
 * command), can hold a command for a late or out-of-order reply, send raw
 * bytes (events, garbage, over-long lines), receive fds passed with
 * SCM_RIGHTS and hang up.
 */
#pragma once

#include <gio/gio.h>
#include <json-glib/json-glib.h>

G_BEGIN_DECLS

typedef struct _QmpFake QmpFake;

/* Serve @fd (taken) in the thread-default main context. */
QmpFake *qmp_fake_new(int fd);
void qmp_fake_free(QmpFake *self);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(QmpFake, qmp_fake_free)

/* Queue raw bytes (sent asynchronously, in order). */
void qmp_fake_send(QmpFake *self, const char *text);
void qmp_fake_send_len(QmpFake *self, const void *data, gsize len);
/* A QEMU 7.2.22-like greeting. */
void qmp_fake_send_greeting(QmpFake *self);
/* Greeting + expect qmp_capabilities -> {"return": {}}. */
void qmp_fake_handshake(QmpFake *self);

/* The next command must be @execute. Reply with @reply_json (a JSON object;
 * its "id" is set from the command), or hold the command when NULL. */
void qmp_fake_expect(QmpFake *self, const char *execute, const char *reply_json);
/* Reply to a received (held) command, @index counted from 0 over all commands. */
void qmp_fake_reply(QmpFake *self, guint index, const char *reply_json);

guint qmp_fake_get_n_received(QmpFake *self);
JsonObject *qmp_fake_peek_received(QmpFake *self, guint index);
/* The oldest fd received with SCM_RIGHTS not yet taken, or -1. */
int qmp_fake_steal_fd(QmpFake *self);
/* Script mismatch or malformed input from the client (NULL if none). */
const char *qmp_fake_get_failure(QmpFake *self);
/* TRUE once the client closed its end. */
gboolean qmp_fake_saw_eof(QmpFake *self);
/* Close our end now (queued output is dropped). */
void qmp_fake_hangup(QmpFake *self);

G_END_DECLS
