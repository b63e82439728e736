#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job: build everything, then run a snippet of Python in a fresh
# microVM and print its output. Pass your own code as the first argument:
#   ci/demo.sh 'print(2 ** 100)'
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/build.sh
export SBX_GUEST_DIR=$PWD/build/guest/image/current
code=${1:-'import platform, sys
print(f"Hello from Python {sys.version.split()[0]} on Linux {platform.release()}, inside a throw-away microVM")'}
printf '==> schedulerctl run (accelerator and timings follow the output)\n' >&2
exec build/schedulerctl run --embedded "$code"
