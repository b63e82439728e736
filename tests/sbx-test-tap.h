/* SPDX-License-Identifier: MIT
 *
 * TAP output for the integration tests that print their own plan from a plain
 * main(): OK(cond, fmt, ...) prints one "ok N - ..." / "not ok N - ..." line
 * (newlines and '#' in the description folded to '|', so it stays one TAP
 * line) and, on failure, the condition and where it is. `failures` counts the
 * failed checks for main's exit status; `test_no` the checks so far.
 */
#pragma once

#include <glib.h>
#include <stdio.h>

static int test_no;
static int failures;

#define OK(cond, ...)                                                                   \
    do {                                                                                \
        gboolean ok_ = (cond);                                                          \
        g_autofree char *d_ = g_strdup_printf(__VA_ARGS__);                             \
        g_strdelimit(d_, "\n#", '|'); /* one TAP line */                                \
        printf("%sok %d - %s\n", ok_ ? "" : "not ", ++test_no, d_);                     \
        if (!ok_) {                                                                     \
            failures++;                                                                 \
            printf("#   failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);              \
        }                                                                               \
        fflush(stdout);                                                                 \
    } while (0)
