#!/usr/bin/env bash
# Benchmark: the non-streaming chat route through gateway and chatd, against
# nginx (limit_req, reverse proxy) in front of a static upstream, in one run.
# Prints requests/s and latency percentiles for both and their ratio.
# Usage: bench/run.sh [seconds] [connections]    (defaults 10, 64)
# Needs: a build in build/ (or BUILD_DIR), wrk, nginx-light, redis-server.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
build=${BUILD_DIR:-$root/build}
secs=${1:-10}
conns=${2:-64}
threads=${BENCH_WRK_THREADS:-2}
for tool in wrk nginx redis-server; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install wrk nginx-light redis-server)" >&2; exit 2; }
done
[ -x "$build/bin/supervisor" ] || { echo "bench: build first (cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build)" >&2; exit 2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d /tmp/llmrt-bench-XXXXXX)
sup_pid=""
cleanup() {
    [ -n "$sup_pid" ] && kill "$sup_pid" 2>/dev/null && wait "$sup_pid" 2>/dev/null || true
    [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

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
http=$(free_port); backend=$(free_port); redis=$(free_port)
RUN_DIR=$dir/run SERVER_PORT=$http SERVER_HOST=127.0.0.1 \
GATEWAY_BACKEND_BIND=tcp://127.0.0.1:$backend GATEWAY_ENDPOINT=tcp://127.0.0.1:$backend \
REDIS_URL=redis://127.0.0.1:$redis ADMIN_API_KEY=$BENCH_KEY LOG_LEVEL=warn \
SUPERVISOR_ENDPOINT=ipc://$dir/supervisor.sock \
CHAT_QUEUE_MAX_PENDING=${CHAT_QUEUE_MAX_PENDING:-1024} \
RATE_LIMIT_KEY_RPS=${RATE_LIMIT_KEY_RPS:-1000000} \
    "$build/bin/supervisor" -c "$root/deploy/local/suite.conf" >"$dir/suite.log" 2>&1 &
sup_pid=$!
for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$http/api/health/ready" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$http/api/health/ready" >/dev/null || { echo "bench: suite not ready" >&2; tail -20 "$dir/suite.log" >&2; exit 1; }
curl -sf -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' \
    -d '{"name":"bench"}' "http://127.0.0.1:$http/api/v1/workspace/new" >/dev/null

# Warm up, then measure.
wrk -t"$threads" -c"$conns" -d2s -s "$here/chat.lua" "http://127.0.0.1:$http/api/v1/workspace/bench/chat" >/dev/null
ours=$(wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s "$here/chat.lua" \
    "http://127.0.0.1:$http/api/v1/workspace/bench/chat" | tee "$dir/ours.txt" | summarise)
kill "$sup_pid"; wait "$sup_pid" 2>/dev/null || true; sup_pid=""

nport=$(free_port); uport=$(free_port)
sed -e "s|@PORT@|$nport|; s|@UPSTREAM@|$uport|; s|@DIR@|$dir|g" "$here/nginx.conf.in" >"$dir/nginx.conf"
nginx -c "$dir/nginx.conf" -p "$dir"
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$nport/" >/dev/null 2>&1 && break; sleep 0.1; done
wrk -t"$threads" -c"$conns" -d2s -s "$here/chat.lua" "http://127.0.0.1:$nport/chat" >/dev/null
theirs=$(wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s "$here/chat.lua" \
    "http://127.0.0.1:$nport/chat" | tee "$dir/nginx.txt" | summarise)

read -r o_rps o_p50 o_p90 o_p99 o_bad <<<"$ours"
read -r n_rps n_p50 n_p90 n_p99 n_bad <<<"$theirs"
printf '\nnon-streaming chat, %s connections, %s s, wrk -t%s, %s CPUs\n' "$conns" "$secs" "$threads" "$(nproc)"
printf '%-34s %10s %9s %9s %9s %8s\n' "target" "req/s" "p50 ms" "p90 ms" "p99 ms" "non-2xx"
printf '%-34s %10s %9s %9s %9s %8s\n' "llmrt gateway -> chatd (builtin)" "$o_rps" "$o_p50" "$o_p90" "$o_p99" "$o_bad"
printf '%-34s %10s %9s %9s %9s %8s\n' "nginx limit_req -> static" "$n_rps" "$n_p50" "$n_p90" "$n_p99" "$n_bad"
awk -v a="$o_rps" -v b="$n_rps" 'BEGIN { printf "ratio llmrt/nginx requests/s: %.2f\n", (b > 0 ? a / b : 0) }'
