#!/usr/bin/env bash
# Quick start, command 1: install what is missing, build, and run the whole
# suite in the foreground under the supervisor (Ctrl-C stops it cleanly).
# Every setting is an environment variable (README, "Configuration").
set -euo pipefail
case "${1:-}" in
    "") ;;
    -h | --help)
        sed -n '2,4s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    *)
        echo "run-local.sh: takes no arguments (settings are environment variables)" >&2
        exit 2
        ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/deps.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$root/build" -j"$(nproc)"
cd "$root"
exec "$root/build/bin/supervisor" -c "$root/deploy/local/suite.conf"
