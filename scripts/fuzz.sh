#!/usr/bin/env bash
# fuzz.sh: search for inputs that crash or break a parser of outside input
# (tests/fuzz, one target per parser), with clang's libFuzzer under
# AddressSanitizer and UndefinedBehaviorSanitizer. Not part of the test
# suite: ctest replays the committed corpus (tests/fuzz/corpus) in every
# build instead.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]    default 60 s each, all targets
#   FUZZ_MERGE=1 scripts/fuzz.sh ...         then add the new inputs that
#                                            reach new code to tests/fuzz/corpus
#
# New inputs go to build-fuzz/corpus/TARGET; a failing input is written to
# build-fuzz/crashes/TARGET-* and the script exits 1. To keep it as a
# regression, copy it into tests/fuzz/corpus/TARGET/ once it is fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
case $seconds in '' | *[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, not '$seconds'" >&2; exit 2 ;; esac
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^llmrt_fuzz (\([a-z_]*\) .*/\1/p' tests/fuzz/CMakeLists.txt)
fi
./scripts/deps.sh

build=build-fuzz
CC=clang cmake -S . -B $build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLLMRT_FUZZ=ON >/dev/null
cmake --build $build -j"$(nproc)" --target "${targets[@]/#/fuzz_}" >/dev/null
mkdir -p $build/crashes

status=0
for target in "${targets[@]}"; do
    seeds=tests/fuzz/corpus/$target
    found=$build/corpus/$target
    mkdir -p "$found"
    echo "== $target: ${seconds} s"
    if ! "$build/fuzz/fuzz_$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$build/crashes/$target-" "$found" "$seeds" \
        >"$build/$target.log" 2>&1; then
        status=1
        echo "   FAILED: $(grep -m1 -E 'ERROR|check failed|runtime error' "$build/$target.log" || tail -1 "$build/$target.log")"
        ls "$build/crashes/$target-"* 2>/dev/null | sed 's/^/   input: /'
        continue
    fi
    grep -E 'stat::number_of_executed_units|stat::new_units_added' "$build/$target.log" |
        sed 's/^/   /'
    grep -m1 -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' \
        <(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$build/$target.log" | tail -1) | sed 's/^/   /' || true
    if [ "${FUZZ_MERGE:-0}" = 1 ]; then
        "$build/fuzz/fuzz_$target" -merge=1 "$seeds" "$found" >>"$build/$target.log" 2>&1
        echo "   corpus: $(ls "$seeds" | wc -l) inputs in $seeds"
    fi
done
exit $status
