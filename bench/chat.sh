#!/usr/bin/env bash
# Chat benchmark: the chat routes through gateway and chatd with the built-in
# provider at full speed, driven by build/bench/chat_bench, in three phases:
#   (a) sync:   --concurrency CONNS for SECS seconds (POST .../chat)
#   (b) stream: the same on .../stream-chat; SSE events/s against 100,000
#   (c) hold:   STREAMS streams open at once (a second suite start whose
#       provider paces tokens, BUILTIN_LLM_TOKEN_DELAY_MS=1000, so they stay
#       open); while all are open, the memory of the suite (PSS from
#       /proc/PID/smaps_rollup, RSS too) minus an idle baseline, per stream,
#       against 64 KiB.
# Usage: bench/chat.sh [seconds] [connections] [streams]   (defaults 10, 64, 2000)
# Needs: a build in build/ (or BUILD_DIR), redis-server, python3.
# Knobs: CHAT_BENCH_CONCURRENCY (chatd handlers per replica in a, b; default
# 4), CHAT_BENCH_HOLD_SECS (how long c holds its streams; default 15).
#
# Settings of the two suite starts (each documented where it is set):
#   phases a, b: CHAT_QUEUE_MAX_PENDING=1024, so no connection is refused
#     (429); CHAT_QUEUE_CONCURRENCY=CHAT_BENCH_CONCURRENCY per replica,
#     default 4 (chatd's own): on 2 cores, 32 per replica (none waiting)
#     measured 30-40% fewer sync requests/s and ~10% fewer events/s, as
#     more handler threads only contend for the cores and the database.
#   phase c: CHAT_QUEUE_CONCURRENCY=1024 (the most chatd accepts) per
#     replica: a chat handler is a thread, and 2 replicas x 1024 >= 2000
#     streams; CHAT_QUEUE_MAX_PENDING=1024.
#   both: rate limits off, LOG_LEVEL=warn, a generated admin key, and an API
#   key created through the admin route as BENCHMARK_WORKSPACE_TOKEN.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
secs=${1:-10}
conns=${2:-64}
streams=${3:-2000}
hold_secs=${CHAT_BENCH_HOLD_SECS:-15}
sync_concurrency=${CHAT_BENCH_CONCURRENCY:-4}
bench_tools redis-server python3 curl
bench_built bin/supervisor bench/chat_bench
# Every stream is a socket on both ends (chat_bench and the gateway).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -gt $((streams + 1000)) ] ||
    { echo "bench: ulimit -n is $(ulimit -n); $streams streams need more" >&2; exit 2; }

bench_dir chatbench
bench_pid=""
bench_cleanup_hook() { [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null || true; }

# chat_suite NAME VAR=VALUE...: a fresh suite (bench/lib.sh's start_suite)
# with rate limits off and these settings; sets base, token (a new API
# key), slug (a new workspace).
chat_suite() {
    local name=$1; shift
    start_suite "$name" "$root/deploy/local/suite.conf" \
        RATE_LIMIT_GLOBAL_RPS=0 RATE_LIMIT_CHAT_RPS=0 RATE_LIMIT_KEY_RPS=0 "$@"
    new_api_key "chat bench"
    new_workspace bench
}

bench() {
    BENCHMARK_BASE_URL=$base BENCHMARK_WORKSPACE_SLUG=$slug BENCHMARK_WORKSPACE_TOKEN=$token \
        "$build/bench/chat_bench" "$@"
}

# memory OUT: one line per process of the suite: "name pid rss_kib pss_kib threads"
memory() {
    local pid
    : >"$1"
    for pid in "$sup_pid" $(pgrep -P "$sup_pid"); do
        [ -r "/proc/$pid/smaps_rollup" ] || continue
        printf '%s %s %s %s %s\n' "$(cat "/proc/$pid/comm")" "$pid" \
            "$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")" \
            "$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup")" \
            "$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status")" >>"$1"
    done
}
# sum FILE [redis]: "rss pss" of the llmrt processes (or of redis alone)
sum() {
    awk -v want="${2:-llmrt}" '($1 ~ /redis/) == (want == "redis") { r += $3; p += $4 }
        END { print r + 0, p + 0 }' "$1"
}
# cpu_split BEFORE AFTER SECONDS CLIENT_PERCENT: one line, % of one core
cpu_split() {
    awk -v secs="$3" -v client="$4" -v hz="$(getconf CLK_TCK)" -v cores="$(nproc)" '
        FNR == 1 { f++ } f == 1 { t0[$1] += $2 } f == 2 { t1[$1] += $2; n[$1]++ }
        END { line = "CPU, % of one core:"; ours = 0
              for (k in n) { if (k == "all") continue; d = (t1[k] - t0[k]) / hz / secs * 100; ours += d
                             if (d >= 1) line = line sprintf(" %s%s %.0f,", k, n[k] > 1 ? " x" n[k] : "", d) }
              all = (t1["all"] - t0["all"]) / hz / secs * 100
              line = line sprintf(" chat_bench %.0f, everything else %.0f (of %d)", client, all - ours - client, cores * 100)
              print line }' "$1" "$2"
}

long_message="Explain how the runtime keeps many chats streaming at once: the gateway, \
the queues, the replicas, the heartbeats and what happens when one of them is slow."

# phase NAME ARGS...: run chat_bench, keep its output in $dir/NAME.txt, and
# print the CPU split of the phase.
phase() {
    local name=$1; shift
    cpu "$dir/cpu0"
    bench "$@" | tee "$dir/$name.txt" || true
    cpu "$dir/cpu1"
    cpu_split "$dir/cpu0" "$dir/cpu1" "$(field "$dir/$name.txt" "elapsed s" 1)" \
        "$(field "$dir/$name.txt" "client CPU" 1 | tr -d %)" | tee "$dir/$name.cpu"
}

echo "== suite 1: BUILTIN_LLM_TOKEN_DELAY_MS=0, CHAT_QUEUE_CONCURRENCY=$sync_concurrency x 2 replicas"
chat_suite full BUILTIN_LLM_TOKEN_DELAY_MS=0 CHAT_QUEUE_CONCURRENCY="$sync_concurrency" \
    CHAT_QUEUE_MAX_PENDING=1024
memory "$dir/mem-idle1"
echo "-- warm-up (2 s each mode)"
bench --mode sync --concurrency "$conns" --duration 2 >/dev/null
bench --mode stream --concurrency "$conns" --duration 2 >/dev/null
echo "-- (a) sync, $conns concurrent, $secs s"
phase a --mode sync --concurrency "$conns" --duration "$secs"
echo "-- (b) stream, $conns concurrent, $secs s"
phase b --mode stream --concurrency "$conns" --duration "$secs"
stop_suite

echo "== suite 2: BUILTIN_LLM_TOKEN_DELAY_MS=1000, CHAT_QUEUE_CONCURRENCY=1024 x 2 replicas"
chat_suite paced BUILTIN_LLM_TOKEN_DELAY_MS=1000 CHAT_QUEUE_CONCURRENCY=1024 \
    CHAT_QUEUE_MAX_PENDING=1024 REQUEST_TIMEOUT_MS=300000
# Warm the paths a chat takes (database, history) without waiting for paced
# tokens: non-streaming chat never waits on the token delay.
bench --mode sync --concurrency 16 --requests 200 >/dev/null
sleep 1
memory "$dir/mem-idle2"
echo "-- (c) hold $streams streams open for $hold_secs s"
bench --hold --concurrency "$streams" --duration "$hold_secs" --timeout 60 \
    --message "$long_message" >"$dir/c.txt" 2>&1 &
bench_pid=$!
for _ in $(seq 1 900); do
    grep -q '^hold: ' "$dir/c.txt" && break
    kill -0 "$bench_pid" 2>/dev/null || break
    sleep 0.1
done
open_mem=/dev/null
if grep -q '^hold: all' "$dir/c.txt"; then
    sleep 2 # the last streams' first tokens
    memory "$dir/mem-open"
    open_mem=$dir/mem-open
fi
wait "$bench_pid" || true
bench_pid=""
cat "$dir/c.txt"
stop_suite

echo
echo "memory per process, KiB: idle suite 1 | idle suite 2 | $streams streams open; threads"
printf '%-14s %9s %9s %9s %9s %9s %9s %8s %8s\n' process "rss" "pss" "rss" "pss" "rss" "pss" \
    idle open
awk 'FNR == 1 { f++ } { k = $1 }
    f == 1 { r1[k] += $3; p1[k] += $4 }
    f == 2 { n[k]++; r2[k] += $3; p2[k] += $4; t2[k] += $5 }
    f == 3 { r3[k] += $3; p3[k] += $4; t3[k] += $5 }
    END { for (k in n) printf "%-14s %9d %9d %9d %9d %9d %9d %8d %8d\n", k (n[k] > 1 ? " x" n[k] : ""),
          r1[k], p1[k], r2[k], p2[k], r3[k], p3[k], t2[k], t3[k] }' \
    "$dir/mem-idle1" "$dir/mem-idle2" "$open_mem" | sort

# row LABEL FILE: one line of the summary table from chat_bench's output
row() {
    printf '%-16s %9s %9s %9s %9s %9s %10s  %s\n' "$1" "$(field "$2" requests/s 1)" \
        "$(field "$2" "latency ms" 2)" "$(field "$2" "latency ms" 4)" \
        "$(field "$2" "latency ms" 6)" "$(field "$2" "first $3 ms" 2)" \
        "$(field "$2" "SSE events/s" 1)" "$(grep '^status' "$2" | cut -c24-)"
}
eps=$(field "$dir/b.txt" "SSE events/s" 1)
held=$(awk '/^streams held/ { print $3 }' "$dir/c.txt")
echo
printf 'chat benchmark, %s CPUs, built-in provider, %s connections, %s s\n' "$(nproc)" "$conns" "$secs"
printf '%-16s %9s %9s %9s %9s %9s %10s  %s\n' phase "req/s" "p50 ms" "p90 ms" "p99 ms" \
    "first ms" "events/s" "status"
row "(a) sync" "$dir/a.txt" byte
row "(b) stream" "$dir/b.txt" token
printf '    (a) %s\n    (b) %s\n' "$(cat "$dir/a.cpu")" "$(cat "$dir/b.cpu")"
printf '    (b) streams: %s\n' "$(awk '/^streams / { $1 = ""; print substr($0, 2) }' "$dir/b.txt")"
printf '(c) hold: %s of %s streams held open %s s; first token p50 %s ms (token delay 1000 ms)\n' \
    "${held:-0}" "$streams" "$hold_secs" "$(field "$dir/c.txt" "first token ms" 2)"
per="" all=""
if [ "$open_mem" != /dev/null ]; then
    read -r i1_rss i1_pss <<<"$(sum "$dir/mem-idle1")"
    read -r i2_rss i2_pss <<<"$(sum "$dir/mem-idle2")"
    read -r o_rss o_pss <<<"$(sum "$dir/mem-open")"
    read -r ri_rss ri_pss <<<"$(sum "$dir/mem-idle2" redis)"
    read -r ro_rss ro_pss <<<"$(sum "$dir/mem-open" redis)"
    per=$(awk -v n="$streams" -v i="$i2_pss" -v o="$o_pss" 'BEGIN { printf "%.1f", (o - i) / n }')
    all=$(awk -v n="$streams" -v i="$i1_pss" -v o="$o_pss" 'BEGIN { printf "%.1f", (o - i) / n }')
    awk -v n="$streams" -v i1="$i1_pss" -v i2="$i2_pss" -v o="$o_pss" -v i2r="$i2_rss" \
        -v or="$o_rss" -v rp="$ri_pss" -v rop="$ro_pss" -v c1="$sync_concurrency" 'BEGIN {
        printf "    suite (supervisor, gateway, chatd, ingestd, agentd) PSS: idle %d KiB, open %d KiB:\n", i2, o
        printf "      +%d KiB = %.1f KiB per open stream (RSS: %.1f)\n", o - i2, (o - i2) / n, (or - i2r) / n
        printf "    idle handler threads: suite 2 (1024 per replica) - suite 1 (%d per replica) = %d KiB, %.1f KiB per thread\n",
            c1, i2 - i1, (i2 - i1) / (2 * (1024 - c1))
        printf "    all-in, open - idle suite 1: %.1f KiB per open stream\n", (o - i1) / n
        printf "    redis (not counted above) PSS: idle %d KiB, open %d KiB\n", rp, rop }'
    awk -v n="$streams" 'FNR == 1 { f++ } $1 !~ /redis/ { d[$1] += (f == 1 ? -$4 : $4) }
        END { line = "    per open stream by process, KiB PSS:"
              for (k in d) if (d[k] / n >= 0.1 || d[k] / n <= -0.1) line = line sprintf(" %s %.1f", k, d[k] / n)
              print line }' "$dir/mem-idle2" "$dir/mem-open"
else
    echo "    the streams did not all open: no memory figure"
fi

echo
echo "verdict"
awk -v e="${eps:-0}" 'BEGIN { printf "  (b) SSE events/s through the gateway %10.0f   target >= 100000: %s\n", e, (e >= 100000 ? "MET" : "NOT MET") }'
awk -v h="${held:-0}" -v n="$streams" 'BEGIN { printf "  (c) streams held open                %10s   target %d: %s\n", h "/" n, n, (h == n ? "MET" : "NOT MET") }'
if [ -n "$per" ]; then
    awk -v p="$per" -v a="$all" -v ok="$([ "${held:-0}" = "$streams" ] && echo 1 || echo 0)" 'BEGIN {
        printf "  (c) KiB per open stream, PSS          %10.1f   target < 64: %s\n", p, (ok && p < 64 ? "MET" : "NOT MET")
        printf "      with the extra handler threads    %10.1f   target < 64: %s\n", a, (ok && a < 64 ? "MET" : "NOT MET") }'
else
    echo "  (c) KiB per open stream: no figure     NOT MET"
fi
