#!/usr/bin/env bash
# Quick start, command 1: install what is missing, build, and run the whole
# suite in the foreground under the supervisor (Ctrl-C stops it cleanly).
# Every setting is an environment variable (README, "Configuration").
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/deps.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$root/build" -j"$(nproc)"
cd "$root"
exec "$root/build/bin/supervisor" -c "$root/deploy/local/suite.conf"
