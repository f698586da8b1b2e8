# bench/lib.sh: what the benchmark scripts share, sourced by each with
# `. "$here/lib.sh"` once it has set `here` (its own directory): the build
# and tool checks, free ports, the run directory and its clean-up, a suite
# started through the supervisor, and an API key and a workspace in it.
# Sets root (the source tree) and build (BUILD_DIR, default build/).
root=$(dirname "$here")
build=${BUILD_DIR:-$root/build}

# bench_tools TOOL...: stop (exit 2) naming the first tool not on PATH, with
# BENCH_TOOLS_HINT after it when set.
bench_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null ||
            { echo "bench: $tool is missing${BENCH_TOOLS_HINT:+ ($BENCH_TOOLS_HINT)}" >&2; exit 2; }
    done
}

# bench_built FILE...: stop (exit 2) unless each FILE under $build is an
# executable.
bench_built() {
    local file
    for file in "$@"; do
        [ -x "$build/$file" ] ||
            { echo "bench: build first (cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build)" >&2; exit 2; }
    done
}

# free_ports N: N different TCP ports free on 127.0.0.1 now, one a line,
# picked below the kernel's ephemeral range (net.ipv4.ip_local_port_range)
# as tests/lib/test_port.c does: a port from bind(0) is an ephemeral one,
# which any outgoing connection (a daemon connecting to the gateway, a
# client) may take as its local port before the server it was picked for
# binds it, and the suite then never comes up.
free_ports() {
    python3 - "$1" <<'PY'
import random, socket, sys
low = 32768
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    pass
if low <= 11000:
    low = 32768
given = []
for _ in range(10000):
    if len(given) == int(sys.argv[1]):
        break
    port = random.randrange(10000, low)
    if port in given:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        given.append(port)
    except OSError:
        pass
    finally:
        s.close()
else:
    sys.exit("bench: no free port below %d" % low)
print("\n".join(map(str, given)))
PY
}

# bench_dir NAME: a new run directory /tmp/llmrt-NAME-XXXXXX in $dir, removed
# on exit after bench_cleanup_hook (when the script defines one) and
# stop_suite.
bench_dir() {
    dir=$(mktemp -d "/tmp/llmrt-$1-XXXXXX")
    sup_pid=""
    trap bench_cleanup EXIT
}
bench_cleanup() {
    if declare -F bench_cleanup_hook >/dev/null; then bench_cleanup_hook; fi
    stop_suite
    rm -rf "$dir"
}

# start_suite NAME CONF VAR=VALUE...: a fresh suite from suite file CONF in
# $dir/NAME (its log $dir/NAME.log), on free ports, with LOG_LEVEL=warn, a
# generated admin key ($admin) and these settings (which may replace any of
# those); waits until /api/health/ready answers, or stops (exit 1) showing
# the log's end. Sets sup_pid, admin and base (http://127.0.0.1:PORT).
start_suite() {
    local name=$1 conf=$2; shift 2
    local http backend redis
    { read -r http; read -r backend; read -r redis; } < <(free_ports 3)
    admin="admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    env RUN_DIR="$dir/$name" SERVER_PORT="$http" SERVER_HOST=127.0.0.1 \
        GATEWAY_BACKEND_BIND="tcp://127.0.0.1:$backend" GATEWAY_ENDPOINT="tcp://127.0.0.1:$backend" \
        REDIS_URL="redis://127.0.0.1:$redis" ADMIN_API_KEY="$admin" LOG_LEVEL=warn \
        SUPERVISOR_ENDPOINT="ipc://$dir/$name.sock" \
        "$@" "$build/bin/supervisor" -c "$conf" >"$dir/$name.log" 2>&1 &
    sup_pid=$!
    base="http://127.0.0.1:$http"
    for _ in $(seq 1 300); do
        curl -sf "$base/api/health/ready" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -sf "$base/api/health/ready" >/dev/null ||
        { echo "bench: suite not ready" >&2; tail -20 "$dir/$name.log" >&2; exit 1; }
}

# stop_suite: stop the suite started last (if any) and wait for it.
stop_suite() {
    [ -n "$sup_pid" ] && kill "$sup_pid" 2>/dev/null && wait "$sup_pid" 2>/dev/null || true
    sup_pid=""
}

# cpu OUT: "name ticks" per process of the suite, then "all busy_ticks" of
# the machine (/proc/stat); two of these around a phase give its CPU split.
cpu() {
    local pid
    : >"$1"
    for pid in $(pgrep -P "$sup_pid"); do
        awk -v n="$(cat "/proc/$pid/comm" 2>/dev/null)" '{ print n, $14 + $15 }' "/proc/$pid/stat" >>"$1" 2>/dev/null || true
    done
    awk '/^cpu / { print "all", $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat >>"$1"
}

# cpu_per_request BEFORE AFTER REQUESTS: one line, the CPU time each program
# of the suite spent per request between two cpu snapshots (replicas
# together), in microseconds: where a request's cost is, across processes.
cpu_per_request() {
    awk -v reqs="$3" -v hz="$(getconf CLK_TCK)" '
        FNR == 1 { f++ } $1 == "all" { next }
        f == 1 { t0[$1] += $2 } f == 2 { t1[$1] += $2; n[$1]++ }
        END { line = "CPU per request, us:"
              for (k in n) { us = (t1[k] - t0[k]) / hz * 1e6 / (reqs > 0 ? reqs : 1)
                             if (us >= 1) line = line sprintf(" %s%s %.1f,", k, n[k] > 1 ? " x" n[k] : "", us) }
              sub(/,$/, "", line); print line }' "$1" "$2"
}

# new_api_key NAME: an API key named NAME, created through the admin route
# with $admin; sets token (its secret).
new_api_key() {
    token=$(curl -sf -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
        -d "{\"name\":\"$1\"}" "$base/api/v1/admin/api-keys/new" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["apiKey"]["secret"])')
}

# new_workspace NAME: a workspace named NAME, created with $token; sets slug.
new_workspace() {
    slug=$(curl -sf -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d "{\"name\":\"$1\"}" "$base/api/v1/workspace/new" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["workspace"]["slug"])')
}

# field FILE KEY N: the Nth word after "KEY " on the first line of FILE that
# starts so (the figures of chat_bench and ingest_bench).
field() { awk -v key="$2" -v n="$3" 'index($0, key " ") == 1 { split(substr($0, length(key) + 2), w, " "); print w[n]; exit }' "$1"; }
