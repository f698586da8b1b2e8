#!/usr/bin/env bash
# Benchmark: the non-streaming chat route through gateway and chatd, against
# nginx (limit_req, reverse proxy) in front of a static upstream, in one run.
# Prints requests/s and latency percentiles for both and their ratio; ours
# twice, with the defaults and with each chatd replica pinned to its own CPU.
# Usage: bench/run.sh [seconds] [connections]    (defaults 10, 64)
# Needs: a build in build/ (or BUILD_DIR), wrk, nginx-light, redis-server.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
secs=${1:-10}
conns=${2:-64}
threads=${BENCH_WRK_THREADS:-2}
BENCH_TOOLS_HINT="apt-get install wrk nginx-light redis-server" bench_tools wrk nginx redis-server
bench_built bin/supervisor
bench_dir bench
bench_cleanup_hook() { [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true; }

# wrk output -> "rps p50 p90 p99" (latencies in ms)
summarise() {
    awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /^ +50%/ { p50 = ms($2) } /^ +90%/ { p90 = ms($2) } /^ +99%/ { p99 = ms($2) }
    /^Requests\/sec:/ { rps = $2 }
    /Non-2xx or 3xx responses:/ { bad = $NF }
    /Socket errors:/ { errs = $0 }
    END { printf "%.0f %.3f %.3f %.3f %d\n", rps, p50, p90, p99, bad + 0 }'
}

export BENCH_KEY="bench-$(date +%s)-$$"
# chat_run NAME VAR=VALUE...: a fresh suite with these settings, a bench
# workspace, a warm-up, then the measured run: sets chat_NAME ("rps p50 p90
# p99 non2xx") and cpu_NAME (its CPU per request). Leaves the suite running.
chat_run() {
    local name=$1; shift
    stop_suite
    start_suite "suite-$name" "$root/deploy/local/suite.conf" ADMIN_API_KEY="$BENCH_KEY" \
        CHAT_QUEUE_MAX_PENDING="${CHAT_QUEUE_MAX_PENDING:-1024}" \
        RATE_LIMIT_KEY_RPS="${RATE_LIMIT_KEY_RPS:-1000000}" "$@"
    curl -sf -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' \
        -d '{"name":"bench"}' "$base/api/v1/workspace/new" >/dev/null
    wrk -t"$threads" -c"$conns" -d2s -s "$here/chat.lua" "$base/api/v1/workspace/bench/chat" >/dev/null
    cpu "$dir/cpu0"
    printf -v "chat_$name" '%s' "$(wrk -t"$threads" -c"$conns" -d"${secs}s" --latency \
        -s "$here/chat.lua" "$base/api/v1/workspace/bench/chat" | tee "$dir/$name.txt" | summarise)"
    cpu "$dir/cpu1"
    printf -v "cpu_$name" '%s' "$(cpu_per_request "$dir/cpu0" "$dir/cpu1" \
        "$(awk '/requests in/ { print $1 }' "$dir/$name.txt")")"
}

# The defaults, then each chatd replica pinned to its own CPU
# (CHAT_CPU_AFFINITY=auto, docs/performance.md "CPU affinity").
chat_run pinned CHAT_CPU_AFFINITY=auto
chat_run ours
# Ceilings of the same suite (defaults), same connections, half the time:
# the gateway alone (no key, no hop), and one hop to chatd with one indexed
# read and no write. What a chat turn costs beyond the second is chatd's
# own work.
ceil_secs=$(( secs > 1 ? secs / 2 : 1 ))
ping=$(wrk -t"$threads" -c"$conns" -d"${ceil_secs}s" --latency "$base/api/ping" | summarise)
hop=$(wrk -t"$threads" -c"$conns" -d"${ceil_secs}s" --latency -s "$here/key.lua" \
    "$base/api/v1/workspace/bench" | summarise)
stop_suite

{ read -r nport; read -r uport; } < <(free_ports 2)
sed -e "s|@PORT@|$nport|; s|@UPSTREAM@|$uport|; s|@DIR@|$dir|g" "$here/nginx.conf.in" >"$dir/nginx.conf"
nginx -c "$dir/nginx.conf" -p "$dir"
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$nport/" >/dev/null 2>&1 && break; sleep 0.1; done
wrk -t"$threads" -c"$conns" -d2s -s "$here/chat.lua" "http://127.0.0.1:$nport/chat" >/dev/null
theirs=$(wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s "$here/chat.lua" \
    "http://127.0.0.1:$nport/chat" | tee "$dir/nginx.txt" | summarise)

read -r o_rps o_p50 o_p90 o_p99 o_bad <<<"$chat_ours"
read -r a_rps a_p50 a_p90 a_p99 a_bad <<<"$chat_pinned"
read -r n_rps n_p50 n_p90 n_p99 n_bad <<<"$theirs"
printf '\nnon-streaming chat, %s connections, %s s, wrk -t%s, %s CPUs\n' "$conns" "$secs" "$threads" "$(nproc)"
printf '%-34s %10s %9s %9s %9s %8s\n' "target" "req/s" "p50 ms" "p90 ms" "p99 ms" "non-2xx"
printf '%-34s %10s %9s %9s %9s %8s\n' "llmrt gateway -> chatd (builtin)" "$o_rps" "$o_p50" "$o_p90" "$o_p99" "$o_bad"
printf '%-34s %10s %9s %9s %9s %8s\n' "  the same, CHAT_CPU_AFFINITY=auto" "$a_rps" "$a_p50" "$a_p90" "$a_p99" "$a_bad"
printf '%-34s %10s %9s %9s %9s %8s\n' "nginx limit_req -> static" "$n_rps" "$n_p50" "$n_p90" "$n_p99" "$n_bad"
awk -v a="$o_rps" -v p="$a_rps" -v b="$n_rps" 'BEGIN { printf "ratio llmrt/nginx requests/s: %.2f (CHAT_CPU_AFFINITY=auto: %.2f)\n", (b > 0 ? a / b : 0), (b > 0 ? p / b : 0) }'
echo "llmrt $cpu_ours"
echo "llmrt, CHAT_CPU_AFFINITY=auto: $cpu_pinned"
read -r p_rps p_p50 p_p90 p_p99 p_bad <<<"$ping"
read -r h_rps h_p50 h_p90 h_p99 h_bad <<<"$hop"
printf 'ceilings (%s s each, same suite):\n' "$ceil_secs"
printf '%-34s %10s %9s %9s %9s %8s\n' "GET /api/ping (gateway alone)" "$p_rps" "$p_p50" "$p_p90" "$p_p99" "$p_bad"
printf '%-34s %10s %9s %9s %9s %8s\n' "GET workspace (one hop, one read)" "$h_rps" "$h_p50" "$h_p90" "$h_p99" "$h_bad"
