#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Build everything into build/: Debian prerequisites (ci/deps.sh), autotools,
# the programs, and the guest image (cached outside the tree by input hash, so
# a second run takes seconds). Shared by ci/demo.sh and ci/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
jobs=${JOBS:-$(nproc)}

step() { printf '==> %s\n' "$*" >&2; }

step "dependencies (Debian packages)"
bash ci/deps.sh

step "autoreconf + configure"
if [ ! -f configure ] || [ configure.ac -nt configure ] || [ Makefile.am -nt configure ]; then
    autoreconf -fi >/dev/null 2>&1 || autoreconf -fi
fi
mkdir -p build
if [ ! -f build/Makefile ] || [ configure -nt build/Makefile ]; then
    (cd build && "$top/configure" -q)
fi

step "compile"
make -C build -j"$jobs" >/dev/null

step "guest image (kernel, initramfs, root filesystem, work seed)"
make -C build guest-image >&2
