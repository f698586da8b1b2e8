#!/usr/bin/env bash
# Agent-flow benchmark: a small flow (start + llmInstruction with the
# built-in provider, so no network step) run through gateway and agentd at
# full speed by CONNS concurrent clients for SECS seconds. Prints flows per
# second, latency percentiles (client side) and the agent-flow queue's wait
# and run times as agentd reports them (/api/metrics: queues.<agent
# queue>.wait_seconds, run_seconds). A figure, not a test.
# Usage: bench/agent.sh [seconds] [connections]   (defaults 10, 16)
# Needs: a build in build/ (or BUILD_DIR), redis-server, python3, curl.
# Settings: AGENT_FLOW_QUEUE_CONCURRENCY=${AGENT_BENCH_CONCURRENCY:-2} (the
# default), AGENT_FLOW_QUEUE_MAX_PENDING=1024 so no run is refused (429);
# rate limits off; LOG_LEVEL=warn. The client is the same seed variables as
# chat_bench: BENCHMARK_BASE_URL and BENCHMARK_WORKSPACE_TOKEN (set here to
# the suite started and a new API key).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
secs=${1:-10}
conns=${2:-16}
concurrency=${AGENT_BENCH_CONCURRENCY:-2}
bench_tools redis-server python3 curl
bench_built bin/supervisor bin/agentd
bench_dir agentbench

start_suite suite "$root/deploy/local/suite.conf" \
    RATE_LIMIT_GLOBAL_RPS=0 RATE_LIMIT_CHAT_RPS=0 RATE_LIMIT_KEY_RPS=0 \
    AGENT_FLOW_QUEUE_CONCURRENCY="$concurrency" AGENT_FLOW_QUEUE_MAX_PENDING=1024
new_api_key "agent bench"

echo "== agent flows: start + llmInstruction (builtin), AGENT_FLOW_QUEUE_CONCURRENCY=$concurrency, $conns clients, $secs s"
BENCHMARK_BASE_URL=$base BENCHMARK_WORKSPACE_TOKEN=$token python3 - "$secs" "$conns" <<'PY'
import http.client, json, os, sys, threading, time, urllib.parse
secs, conns = float(sys.argv[1]), int(sys.argv[2])
base = urllib.parse.urlparse(os.environ["BENCHMARK_BASE_URL"])
auth = {"Authorization": "Bearer " + os.environ["BENCHMARK_WORKSPACE_TOKEN"],
        "Content-Type": "application/json"}
def connect():
    return http.client.HTTPConnection(base.hostname, base.port, timeout=60)
def call(conn, method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=auth)
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"null")
c = connect()
flow = {"name": "bench", "steps": [
    {"type": "start", "config": {"variables": [{"name": "topic", "value": "queues"}]}},
    {"type": "llmInstruction", "config": {"instruction": "Explain ${topic} in one line",
                                          "resultVariable": "answer", "directOutput": True}}]}
status, reply = call(c, "POST", "/api/v1/agent-flows", flow)
assert status == 200, (status, reply)
path = "/api/v1/agent-flows/%s/run" % reply["flow"]["uuid"]
status, reply = call(c, "POST", path, {"variables": {"topic": "warm-up"}})
assert status == 200 and reply["success"], reply
def metrics():
    status, m = call(c, "GET", "/api/metrics")
    return m
lat, codes, lock = [], {}, threading.Lock()
stop = time.monotonic() + secs
def worker():
    conn = connect()
    mine, mycodes = [], {}
    while time.monotonic() < stop:
        t0 = time.monotonic()
        try:
            status, reply = call(conn, "POST", path, {"variables": {"topic": "load"}})
            ok = status == 200 and reply.get("success")
        except Exception:
            status, ok = 0, False
            conn = connect()
        key = status if ok or status != 200 else "200-failed"
        mycodes[key] = mycodes.get(key, 0) + 1
        if ok:
            mine.append(time.monotonic() - t0)
    with lock:
        lat.extend(mine)
        for k, v in mycodes.items():
            codes[k] = codes.get(k, 0) + v
t0 = time.monotonic()
threads = [threading.Thread(target=worker) for _ in range(conns)]
for t in threads: t.start()
for t in threads: t.join()
elapsed = time.monotonic() - t0
lat.sort()
def pct(q): return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")
print("flows completed %d in %.1f s: %.0f flows/s" % (len(lat), elapsed, len(lat) / elapsed))
print("latency ms: p50 %.1f  p90 %.1f  p99 %.1f  max %.1f" % (pct(.5), pct(.9), pct(.99), pct(1)))
print("status codes:", json.dumps(codes))
time.sleep(1.5)  # the next metrics report from agentd
for name, q in (metrics().get("queues") or {}).items():
    if q.get("service") != "agent":
        continue
    w, r = q.get("wait_seconds", {}), q.get("run_seconds", {})
    print("queue %s (limit %s): tasks %s" % (name, q.get("limit"), json.dumps(q.get("tasks"))))
    print("  wait ms: p50 %.2f  p90 %.2f  p99 %.2f   run ms: p50 %.2f  p90 %.2f  p99 %.2f" % tuple(
        1000 * (d.get(k) or 0) for d in (w, r) for k in ("p50", "p90", "p99")))
PY
