#!/usr/bin/env bash
# Quick start, command 2: every test. Installs what is missing, then builds
# and runs the Criterion suites through ctest twice: a normal build (build/)
# and an AddressSanitizer + UndefinedBehaviorSanitizer build (build-asan/).
# Usage: scripts/test.sh [--quick]   (--quick: the normal build only)
set -euo pipefail
case "${1:-}" in
    "" | --quick) ;;
    -h | --help)
        sed -n '2,5s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    *)
        echo "test.sh: unknown argument '$1' (usage: scripts/test.sh [--quick])" >&2
        exit 2
        ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/deps.sh"
jobs=$(nproc)
run() {
    local dir=$1; shift
    cmake -S "$root" -B "$root/$dir" "$@" >/dev/null
    cmake --build "$root/$dir" -j"$jobs"
    (cd "$root/$dir" && ctest --output-on-failure)
}
echo "== normal build =="
run build -DCMAKE_BUILD_TYPE=RelWithDebInfo
if [ "${1:-}" != "--quick" ]; then
    echo "== AddressSanitizer + UndefinedBehaviorSanitizer build =="
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    run build-asan -DCMAKE_BUILD_TYPE=Debug -DLLMRT_SANITIZE=ON
fi
