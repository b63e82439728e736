#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Install every Debian package schedulerd needs to build, test and run.
# Idempotent: a second run with everything present prints nothing and
# touches nothing.
set -euo pipefail

pkgs=(
  # build
  build-essential autoconf automake libtool pkg-config autoconf-archive
  libglib2.0-dev libglib2.0-bin libjson-glib-dev libsystemd-dev libcmocka-dev
  clang libclang-rt-14-dev
  # runtime
  qemu-system-x86 qemu-utils qemu-block-extra passt dbus dbus-daemon dbus-user-session
  # guest image
  kmod cpio lz4 erofs-utils squashfs-tools busybox-static e2fsprogs binutils patchelf
  # guest kernel, compiled from Debian's linux-source (guest/image/kernel.config)
  bc bison flex libelf-dev libssl-dev xz-utils
  # tests
  python3 socat xfsprogs util-linux procps iproute2 file openssl
  # benchmarks (make bench): host anchor under bubblewrap, the latency plot
  bubblewrap gnuplot-nox
)

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "ci/deps.sh: installing ${#missing[@]} packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
"${sudo_cmd[@]}" apt-get update -qq >/dev/null
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
