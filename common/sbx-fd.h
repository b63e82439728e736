/* SPDX-License-Identifier: MIT
 *
 * File-descriptor ownership helpers. GLib 2.74 has no g_autofd, so every module
 * uses SbxFd: `g_auto(SbxFd) fd = -1;` closes on scope exit and
 * `sbx_steal_fd(&fd)` hands ownership on. Every fd in the project is created
 * with O_CLOEXEC / SOCK_CLOEXEC; inheritance into children is explicit
 * (see sbx-spawn.h).
 */
#pragma once

#include <errno.h>
#include <unistd.h>
#include <glib.h>

G_BEGIN_DECLS

typedef int SbxFd;

static inline void
sbx_fd_close(SbxFd *fd)
{
    if (*fd >= 0) {
        int saved = errno;
        (void)close(*fd);
        *fd = -1;
        errno = saved;
    }
}

G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(SbxFd, sbx_fd_close)

/* Return *fd and leave -1 behind: ownership moves to the caller. */
static inline int
sbx_steal_fd(int *fd)
{
    int ret = *fd;
    *fd = -1;
    return ret;
}

G_END_DECLS
