/* SPDX-License-Identifier: MIT
 *
 * libFuzzer target for qmp/qmp-parser.c (framing + classification), built
 * with clang -fsanitize=fuzzer,address,undefined by `make fuzz` and run for
 * 60 s by `make fuzz-run`. The first input byte picks the read-chunk size and
 * the line cap, so partial reads, several messages per read and over-long
 * lines are all explored; criticals are fatal, so a g_return_if_fail hit
 * inside json-glib counts as a crash.
 */
#include <stdint.h>
#include <stddef.h>

#include "qmp/qmp-parser.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    g_log_set_always_fatal(G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING | G_LOG_LEVEL_ERROR);
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    gsize chunk = 1 + (data[0] & 0x0f) * 37;            /* 1 .. 556 bytes per "read" */
    gsize max_line = 64 + (gsize)(data[0] >> 4) * 4096; /* small caps reach the limit */
    QmpParser *p = qmp_parser_new(max_line);
    gboolean broken = FALSE;

    data++;
    size--;
    for (gsize off = 0; off < size && !broken; off += chunk) {
        qmp_parser_feed(p, data + off, MIN(chunk, size - off));
        for (;;) {
            JsonObject *msg = NULL;
            GError *error = NULL;
            if (!qmp_parser_next(p, &msg, &error)) {
                if (error) {
                    g_assert(error->domain == QMP_ERROR && error->code == QMP_ERROR_PROTOCOL);
                    g_error_free(error);
                    broken = TRUE;
                }
                break;
            }
            QmpMessageKind kind;
            gint64 id;
            if (qmp_message_classify(msg, &kind, &id, &error)) {
                if (kind == QMP_MESSAGE_EVENT) {
                    (void)qmp_message_get_timestamp(msg);
                } else if (kind == QMP_MESSAGE_ERROR) {
                    GError *e =
                        qmp_error_new_from_reply(qmp_json_peek_object(msg, "error"), "fuzz");
                    g_assert(qmp_error_get_class(e) != QMP_ERROR_CLASS_NONE);
                    g_error_free(e);
                } else if (kind == QMP_MESSAGE_RETURN) {
                    g_assert(id >= 0);
                }
            } else {
                g_error_free(error);
            }
            json_object_unref(msg);
        }
    }
    qmp_parser_free(p);
    return 0;
}
