#!/usr/bin/env bash
# Ingestion benchmark: documents through gateway and ingestd, driven by
# build/bench/ingest_bench, in three phases:
#   (a) queue:    DOCS generated text documents of SIZE bytes, uploaded
#       (multipart) CONNS at a time into one workspace, embedded by the
#       Redis `embedding-jobs` queue's workers; polled through GET
#       /api/v1/document/jobs/{id} until all completed. Documents/s and
#       MB/s end to end (first submit to the last job's end), submit
#       latency, queue wait (processedOn - timestamp) and job duration
#       (finishedOn - processedOn) percentiles, status codes.
#   (b) fallback: the same load on a suite without redis-server (REDIS_URL
#       points at a closed port): every upload is embedded at once on the
#       ingestion worker pool, the client waits for it.
#   (c) search:   more documents into the workspace of (a) until it holds
#       VSEARCH_CHUNKS chunks (default 100000; 0 skips the phase), then
#       POST /api/v1/workspace/{slug}/vector-search over HTTP: the first
#       search (loads the workspace's vectors) and 200 more, median, p90,
#       p99 (client side, one connection, one at a time).
# Usage: bench/ingest.sh [documents] [size] [connections]  (defaults 1000, 20480, 8)
# Needs: a build in build/ (or BUILD_DIR), redis-server, python3, curl.
#
# Settings: ingestd's defaults (EMBEDDING_WORKER_CONCURRENCY=2,
# INGESTION_QUEUE_CONCURRENCY=3, INGESTION_WORKER_POOL_SIZE=half the CPUs,
# the builtin embedder, 1000/20 chunks), except
# EMBEDDING_JOBS_KEEP_COMPLETED=100000, so that the queue still knows every
# job of a large run when it is asked (its default, 1000, would trim the
# oldest, and their queue figures with them). Rate limits off; LOG_LEVEL=warn;
# a generated admin key, and an API key created through the admin route as
# BENCHMARK_WORKSPACE_TOKEN.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
docs=${1:-1000}
size=${2:-20480}
conns=${3:-8}
vsearch_chunks=${VSEARCH_CHUNKS:-100000}
bench_tools redis-server python3 curl
bench_built bin/supervisor bench/ingest_bench
bench_dir ingestbench

# ingest_suite NAME CONF: a fresh suite (bench/lib.sh's start_suite) from
# suite file CONF with rate limits off and EMBEDDING_JOBS_KEEP_COMPLETED=100000;
# sets base, token (a new API key), slug (a new workspace).
ingest_suite() {
    start_suite "$1" "$2" \
        RATE_LIMIT_GLOBAL_RPS=0 RATE_LIMIT_INGESTION_RPS=0 RATE_LIMIT_KEY_RPS=0 \
        EMBEDDING_JOBS_KEEP_COMPLETED=100000
    new_api_key "ingest bench"
    new_workspace "ingest bench"
}

bench() {
    BENCHMARK_BASE_URL=$base BENCHMARK_WORKSPACE_SLUG=$slug BENCHMARK_WORKSPACE_TOKEN=$token \
        "$build/bench/ingest_bench" "$@"
}

# The ingestion series of the aggregate, Prometheus text.
ingest_metrics() {
    sleep 1.5 # the next metrics report from ingestd
    curl -sf "$base/api/metrics/prometheus" |
        grep -E '^llmrt_(ingest_jobs_total|embedding_jobs_processed_total|embedding_jobs\{)' |
        grep -v 'instance=' | sed 's/^/    /' || true
}

echo "== (a) queue path: $docs documents of $size bytes, $conns connections"
ingest_suite queue "$root/deploy/local/suite.conf"
bench --documents 20 --size "$size" --concurrency "$conns" >/dev/null # warm-up
bench --documents "$docs" --size "$size" --concurrency "$conns" | tee "$dir/a.txt" || true
ingest_metrics

if [ "$vsearch_chunks" -gt 0 ]; then
    have=$(python3 - "$dir/queue/storage/llmrt.db" <<'PY'
import sqlite3, sys
print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM document_chunks").fetchone()[0])
PY
    )
    per=$(field "$dir/a.txt" "chunks stored" 2 | tr -d '(')
    more=$(awk -v want="$vsearch_chunks" -v have="$have" -v per="$per" \
        'BEGIN { n = per > 0 ? int((want - have) / per + 0.999) : 0; print (n > 0 ? n : 0) }')
    echo "== (c) vector search: the workspace has $have chunks; adding $more documents for $vsearch_chunks"
    [ "$more" -gt 0 ] && bench --documents "$more" --size "$size" --concurrency "$conns" >"$dir/c-fill.txt" || true
    grep -E '^(end to end s|documents/s|jobs )' "$dir/c-fill.txt" 2>/dev/null | sed 's/^/    fill: /' || true
    BENCHMARK_BASE_URL=$base BENCHMARK_WORKSPACE_SLUG=$slug BENCHMARK_WORKSPACE_TOKEN=$token \
        python3 - "$dir/queue/storage/llmrt.db" <<'PY' | tee "$dir/c.txt"
import http.client, json, os, sqlite3, sys, time, urllib.parse
chunks = sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM document_chunks").fetchone()[0]
base = urllib.parse.urlparse(os.environ["BENCHMARK_BASE_URL"])
path = "/api/v1/workspace/%s/vector-search" % os.environ["BENCHMARK_WORKSPACE_SLUG"]
headers = {"Authorization": "Bearer " + os.environ["BENCHMARK_WORKSPACE_TOKEN"],
           "Content-Type": "application/json"}
conn = http.client.HTTPConnection(base.hostname, base.port, timeout=120)
words = ["queue lease worker", "vector cosine search", "breaker gateway replica",
         "durable retry backoff", "sqlite storage chunk", "stream tokens answer"]
def search(i):
    body = json.dumps({"query": words[i % len(words)], "topN": 4, "scoreThreshold": 0})
    t0 = time.perf_counter()
    conn.request("POST", path, body=body, headers=headers)
    r = conn.getresponse()
    reply = json.loads(r.read())
    ms = (time.perf_counter() - t0) * 1000
    assert r.status == 200 and reply.get("results"), (r.status, reply)
    return ms
first = search(0)
lat = sorted(search(i) for i in range(1, 201))
def pct(q): return lat[min(len(lat) - 1, max(0, int(-(-q * len(lat) // 1)) - 1))]
print("chunks in the database %d (one workspace)" % chunks)
print("vector-search ms: first %.1f (loads the vectors)" % first)
print("vector-search ms: p50 %.2f  p90 %.2f  p99 %.2f  max %.2f  (200, top 4, HTTP round trip)" %
      (pct(.5), pct(.9), pct(.99), lat[-1]))
PY
fi
stop_suite

echo "== (b) fallback path (no redis-server): $docs documents of $size bytes, $conns connections"
# The suite file without its [program:redis] section.
awk '/^\[program:/ { skip = ($0 == "[program:redis]") } !skip' \
    "$root/deploy/local/suite.conf" >"$dir/no-redis.conf"
ingest_suite fallback "$dir/no-redis.conf"
curl -s "$base/api/health" | python3 -c 'import json,sys; print("    /api/health status:", json.load(sys.stdin).get("status"))' || true
bench --documents 20 --size "$size" --concurrency "$conns" >/dev/null # warm-up
bench --documents "$docs" --size "$size" --concurrency "$conns" | tee "$dir/b.txt" || true
ingest_metrics
stop_suite

# row LABEL FILE: one line of the summary table
row() {
    printf '%-14s %9s %7s %8s %8s %8s %8s %8s %8s  %s\n' "$1" "$(field "$2" documents/s 1)" \
        "$(field "$2" MB/s 1)" "$(field "$2" "submit latency ms" 2)" \
        "$(field "$2" "submit latency ms" 6)" "$(field "$2" "queue wait ms" 2)" \
        "$(field "$2" "queue wait ms" 6)" "$(field "$2" "job duration ms" 2)" \
        "$(field "$2" "job duration ms" 6)" "$(grep '^submit status' "$2" | cut -c24-)"
}
echo
printf 'ingestion benchmark, %s CPUs, builtin embedder, %s documents of %s bytes, %s connections\n' \
    "$(nproc)" "$docs" "$size" "$conns"
printf '%-14s %9s %7s %8s %8s %8s %8s %8s %8s  %s\n' path "docs/s" "MB/s" "sub p50" "sub p99" \
    "wait p50" "wait p99" "job p50" "job p99" "submit status"
row "(a) queue" "$dir/a.txt"
row "(b) fallback" "$dir/b.txt"
echo "    (b) has no queue: a job's time is in its submit latency (job total: $(field "$dir/b.txt" "job total ms" 2) ms p50)"
if [ -s "$dir/c.txt" ]; then
    echo "(c) $(sed -n 1p "$dir/c.txt")"
    echo "    $(sed -n 3p "$dir/c.txt")"
fi
