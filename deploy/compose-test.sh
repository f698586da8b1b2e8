#!/usr/bin/env bash
# compose-test.sh: the docker compose deployment (deploy/docker-compose.yml),
# end to end, on this machine. Run by CI (.ci/run) after the unit and
# integration tests; as root on Debian 12, with Debian's archive reachable.
#
#   deploy/compose-test.sh
#
# Installs what is missing (docker.io, docker-compose, debootstrap, curl,
# python3), starts dockerd when none answers (log: $LLMRT_TEST_DIR/dockerd.log),
# makes the debian:bookworm-slim base image from Debian's archive when there
# is none (debootstrap + docker import: no registry needed), builds the
# image, brings the stack up with three chatd replicas under a project name
# of its own, and checks through the published gateway port only:
#   1. /api/health/ready is 200 and /api/metrics lists three chat instances;
#   2. 300 chats succeed and each of the three replicas served some;
#   3. after one chatd process is killed (kill -9 inside its container, so
#      the container's supervisor restarts it) chats keep succeeding and the
#      aggregated metrics show the restart;
#   4. scaling chatd to 1 and back to 3 under load fails no request that had
#      not started (nor, with the drain, any open stream), and the new
#      replicas serve;
#   5. documents and flows work in the deployment: an upload is embedded
#      through the Redis queue (ingestd's container, the redis service, the
#      shared storage volume), vector search finds it, a query-mode chat on
#      any chatd replica answers with it as a source, and an agent flow is
#      saved and run;
#   6. `down -v` leaves nothing behind but the base image.
# Prints PASS/FAIL per check and "N passed, M failed"; exits 1 on a failure.
# Whatever happens, the stack, its volumes, network and images are removed
# on exit (and a dockerd this script started is stopped).
#
# Settings: COMPOSE (default: docker-compose, else "docker compose"),
# LLMRT_TEST_DIR (scratch and logs, default a new /tmp directory),
# LLMRT_KEEP_TEST_DIR=1 (keep it).
set -uo pipefail
cd "$(dirname "$0")" || exit 1
deploy=$(pwd)
docker=/usr/bin/docker # not /usr/local/bin/docker: Debian's, with its engine
started=$(date +%s)
passed=0
failed=0
work=${LLMRT_TEST_DIR:-$(mktemp -d /tmp/llmrt-compose-test.XXXXXX)}
mkdir -p "$work"
dockerd_pid=""
project="llmrtci$(date +%s)$$"
stack_up=0
images_before=""

say() { printf '[%4ds] %s\n' $(($(date +%s) - started)) "$*"; }
pass() { passed=$((passed + 1)); say "PASS: $*"; }
fail() { failed=$((failed + 1)); say "FAIL: $*"; }
die() {
    say "ERROR: $*"
    failed=$((failed + 1))
    exit 1
}

# --- what the script needs ---------------------------------------------------
need=()
[ -x "$docker" ] || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
if [ -z "${COMPOSE:-}" ]; then
    if command -v docker-compose >/dev/null; then
        COMPOSE="docker-compose"
    elif [ -x "$docker" ] && "$docker" compose version >/dev/null 2>&1; then
        COMPOSE="$docker compose"
    else
        need+=(docker-compose)
        COMPOSE="docker-compose"
    fi
fi
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${need[@]}"; } >"$work/apt.log" 2>&1; then
        die "apt-get install ${need[*]} failed (see $work/apt.log)"
    fi
fi
# shellcheck disable=SC2206
compose=($COMPOSE -p "$project" -f "$deploy/docker-compose.yml")

# The stack's settings: a key of this run, a free port on loopback, an image
# tag of this run; streams last a few seconds (a pause per token), so that
# scaling down meets open streams.
export ADMIN_API_KEY
ADMIN_API_KEY=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
export LLMRT_TAG="$project"
export LLMRT_HTTP_PUBLISH="127.0.0.1:"
export BUILTIN_LLM_TOKEN_DELAY_MS=100
export LOG_LEVEL=info

# --- clean-up, whatever happens -------------------------------------------------
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$stack_up" = 1 ]; then
        say "clean-up: taking the stack down"
        "${compose[@]}" logs --no-color >"$work/stack.log" 2>&1 || true
        "${compose[@]}" down -v --rmi all --remove-orphans -t 30 >>"$work/down.log" 2>&1 || true
    fi
    remove_new_images
    rm -rf "$work/rootfs"
    if [ -n "$dockerd_pid" ]; then
        say "stopping the dockerd this script started (pid $dockerd_pid)"
        kill "$dockerd_pid" 2>/dev/null
        for _ in $(seq 1 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
    fi
    say "$passed passed, $failed failed (total $(($(date +%s) - started)) s)"
    if [ "$failed" -gt 0 ] || [ "$rc" -ne 0 ]; then
        say "logs in $work"
        exit 1
    fi
    [ "${LLMRT_KEEP_TEST_DIR:-0}" = 1 ] || rm -rf "$work"
    exit 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Images made by this run that nothing tags any more (the build stage):
# removed, so that only what was there before remains.
remove_new_images() {
    [ -n "$images_before" ] || return 0
    local id
    for id in $("$docker" images -q --filter dangling=true 2>/dev/null | sort -u); do
        grep -qx "$id" <<<"$images_before" || "$docker" rmi -f "$id" >/dev/null 2>&1 || true
    done
}

# --- a Docker engine ----------------------------------------------------------------
if ! "$docker" info >/dev/null 2>&1; then
    say "no Docker engine answers: starting dockerd (log: $work/dockerd.log)"
    dockerd >"$work/dockerd.log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 1 120); do
        "$docker" info >/dev/null 2>&1 && break
        kill -0 "$dockerd_pid" 2>/dev/null || die "dockerd exited (see $work/dockerd.log)"
        sleep 0.5
    done
    "$docker" info >/dev/null 2>&1 || die "dockerd did not answer within 60 s"
fi
say "Docker engine $("$docker" version --format '{{.Server.Version}}'), compose: $($COMPOSE version --short 2>/dev/null || $COMPOSE version | head -1)"

# --- the base image ---------------------------------------------------------------------
# The first Debian mirror of this machine's apt sources that serves bookworm.
debian_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1 == "deb" && $3 ~ /^bookworm$/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\//) { print $i; exit } }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822: stanzas separated by blank lines; URIs and Suites fields.
        awk 'BEGIN { RS = "" } /(^|\n)Suites:[^\n]*[ \t]bookworm([ \t]|\n|$)/ {
                 if (match($0, /URIs:[ \t]*[^ \t\n]+/)) { u = substr($0, RSTART, RLENGTH); sub(/URIs:[ \t]*/, "", u); print u; exit } }' "$f"
    done
}
if ! "$docker" image inspect debian:bookworm-slim >/dev/null 2>&1; then
    mirror=$(debian_mirror | grep -v security | head -1)
    mirror=${mirror:-http://deb.debian.org/debian}
    say "no debian:bookworm-slim image: debootstrap from $mirror (log: $work/debootstrap.log)"
    debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
        die "debootstrap failed (see $work/debootstrap.log)"
    rm -rf "$work/rootfs"/var/cache/apt/archives/*.deb "$work/rootfs"/var/lib/apt/lists/*
    tar -C "$work/rootfs" -c . | "$docker" import - debian:bookworm-slim >/dev/null ||
        die "docker import failed"
    rm -rf "$work/rootfs"
    say "made debian:bookworm-slim"
fi
images_before=$("$docker" images -aq | sort -u)

# --- build and up -----------------------------------------------------------------------------
say "building the image llmrt:$LLMRT_TAG (log: $work/build.log)"
t0=$(date +%s)
stack_up=1 # from here on, clean-up takes the project down
"${compose[@]}" build >"$work/build.log" 2>&1 || die "the build failed (see $work/build.log)"
say "built in $(($(date +%s) - t0)) s; starting the stack with 3 chatd replicas"
t0=$(date +%s)
"${compose[@]}" up -d --scale chatd=3 >"$work/up.log" 2>&1 || die "up failed (see $work/up.log)"
port=$("${compose[@]}" port gateway 3001 | tail -1)
case "$port" in
127.0.0.1:[0-9]*) ;;
*) die "the gateway's published port is '$port', not on 127.0.0.1" ;;
esac
base="http://$port"
say "gateway at $base"

# --- helpers over the published port ------------------------------------------------------------
cat >"$work/client.py" <<'EOF'
"""The test's HTTP client: chats, load, and readings of /api/metrics."""
import http.client, json, os, re, sys, threading, time

HOST, PORT = os.environ["GW"].split(":")
KEY = os.environ["ADMIN_API_KEY"]

def request(method, path, body=None, timeout=60):
    conn = http.client.HTTPConnection(HOST, int(PORT), timeout=timeout)
    try:
        headers = {"Authorization": "Bearer " + KEY}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, data, headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()

def chat(n):
    """(ok, started, why): a non-streaming chat starts only with its answer."""
    try:
        status, body = request("POST", "/api/v1/workspace/ci/chat", {"message": "hello %d" % n})
    except Exception as e:
        return False, False, "connection: %s" % e
    if status != 200:
        return False, False, "%d %s" % (status, body[:200].decode(errors="replace"))
    doc = json.loads(body)
    if doc.get("type") != "textResponse" or doc.get("error"):
        return False, True, "answer: %s" % body[:200]
    return True, True, ""

def stream(n):
    """(ok, started, why): started once the first event arrived."""
    conn = http.client.HTTPConnection(HOST, int(PORT), timeout=60)
    started = False
    try:
        conn.request("POST", "/api/v1/workspace/ci/stream-chat",
                     json.dumps({"message": "stream %d" % n}).encode(),
                     {"Authorization": "Bearer " + KEY, "Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            return False, False, "%d %s" % (resp.status, resp.read()[:200].decode(errors="replace"))
        final = False
        while True:
            line = resp.readline()
            if not line:
                break
            if not line.startswith(b"data:"):
                continue
            started = True
            event = json.loads(line[5:])
            if event.get("type") == "abort":
                return False, True, "abort: %s" % event.get("error")
            if event.get("type") == "finalizeResponseStream":
                final = True
        return (True, True, "") if final else (False, started, "stream ended without finalize")
    except Exception as e:
        return False, started, "connection: %s" % e
    finally:
        conn.close()

def load(count, concurrency, stop_file=None, mix_streams=False):
    """Run chats on concurrency threads: count of them, or until stop_file."""
    lock = threading.Lock()
    state = {"next": 0, "ok": 0, "failed_unstarted": 0, "failed_started": 0, "why": {}}
    def worker():
        while True:
            with lock:
                n = state["next"]
                if (stop_file and os.path.exists(stop_file)) or (not stop_file and n >= count):
                    return
                state["next"] += 1
            ok, started, why = (stream if mix_streams and n % 2 else chat)(n)
            with lock:
                if ok:
                    state["ok"] += 1
                else:
                    state["failed_started" if started else "failed_unstarted"] += 1
                    key = re.sub(r"[0-9a-f]{8,}", "…", why)[:120]
                    state["why"][key] = state["why"].get(key, 0) + 1
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state["total"] = state.pop("next")
    return state

def prometheus():
    """{(name, frozenset(labels.items())): value} of /api/metrics/prometheus."""
    _, body = request("GET", "/api/metrics/prometheus")
    series = {}
    for line in body.decode().splitlines():
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$', line)
        if not m:
            continue
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        series[(m.group(1), frozenset(labels.items()))] = float(m.group(3))
    return series

def chat_served():
    """{chat instance: chat requests it received}, from the per-instance series."""
    served = {}
    for (name, labels), value in prometheus().items():
        l = dict(labels)
        if (name == "llmrt_worker_requests_total" and l.get("service") == "chat"
                and "instance" in l and l.get("route", "").endswith("/chat")):
            served[l["instance"]] = served.get(l["instance"], 0) + value
    return served

def metrics_json():
    _, body = request("GET", "/api/metrics")
    return json.loads(body)

def live_chat_instances():
    """chat instances the gateway routes to (registered, not draining)."""
    for (name, labels), value in prometheus().items():
        if name == "llmrt_gateway_backend_instances" and dict(labels).get("backend") == "chat" \
                and "instance" not in dict(labels):
            return int(value)
    return -1

def upload(path, name, content, slug):
    """Multipart upload of one file; (status, body)."""
    boundary = "llmrtci%d" % int(time.time() * 1000)
    parts = [
        ("--%s\r\nContent-Disposition: form-data; name=\"addToWorkspaces\"\r\n\r\n%s\r\n"
         % (boundary, slug)).encode(),
        ("--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\n"
         "Content-Type: text/plain\r\n\r\n" % (boundary, name)).encode() + content + b"\r\n",
        ("--%s--\r\n" % boundary).encode(),
    ]
    data = b"".join(parts)
    conn = http.client.HTTPConnection(HOST, int(PORT), timeout=60)
    try:
        conn.request("POST", path, data, {
            "Authorization": "Bearer " + KEY,
            "Content-Type": "multipart/form-data; boundary=" + boundary})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()

def documents_and_flows():
    """Check 5: upload -> queue -> embedded -> search -> chat sources; a flow."""
    out = {"ok": False}
    status, body = request("POST", "/api/v1/workspace/new", {"name": "docs-ci", "chatMode": "query"})
    if status != 200:
        out["why"] = "workspace: %d %s" % (status, body[:200]); return out
    slug = json.loads(body)["workspace"]["slug"]
    text = (b"The lighthouse keeper trims the lamp wick every evening at dusk. "
            b"Foghorns warn ships when the beam cannot be seen.")
    status, body = upload("/api/v1/document/upload", "lighthouse.txt", text, slug)
    if status != 200:
        out["why"] = "upload: %d %s" % (status, body[:300]); return out
    job = json.loads(body)["documents"][0]["job"]
    out["path"] = job["path"]
    deadline = time.time() + 60
    state = None
    while time.time() < deadline:
        status, body = request("GET", "/api/v1/document/jobs/" + job["id"])
        state = json.loads(body)["job"]["state"] if status == 200 else "http %d" % status
        if state in ("completed", "failed"):
            break
        time.sleep(0.5)
    out["job"] = state
    if state != "completed":
        out["why"] = "job %s: %s" % (job["id"], body[:300]); return out
    status, body = request("POST", "/api/v1/workspace/%s/vector-search" % slug,
                           {"query": "lighthouse keeper lamp wick", "scoreThreshold": 0})
    results = json.loads(body).get("results", []) if status == 200 else []
    out["search"] = results[0]["metadata"]["title"] if results else "none (%d)" % status
    if not results or results[0]["metadata"]["title"] != "lighthouse.txt":
        out["why"] = "vector search: %s" % body[:300]; return out
    # query mode answers from the documents: every replica sees them
    sources = set()
    for n in range(6):
        status, body = request("POST", "/api/v1/workspace/%s/chat" % slug,
                               {"message": "when does the lighthouse keeper trim the lamp wick"})
        doc = json.loads(body) if status == 200 else {}
        for source in doc.get("sources") or []:
            sources.add(source.get("title"))
        if "lighthouse.txt" not in sources:
            out["why"] = "chat %d: %d %s" % (n, status, body[:300]); return out
    out["chat_sources"] = sorted(sources)
    flow = {"name": "ci flow", "steps": [
        {"type": "start", "config": {"variables": [{"name": "topic", "value": "lighthouses"}]}},
        {"type": "llmInstruction", "config": {"instruction": "Say something about ${topic}",
                                               "resultVariable": "answer"}}]}
    status, body = request("POST", "/api/v1/agent-flows", flow)
    if status != 200:
        out["why"] = "flow: %d %s" % (status, body[:300]); return out
    uuid = json.loads(body)["flow"]["uuid"]
    status, body = request("POST", "/api/v1/agent-flows/%s/run" % uuid, {})
    run = json.loads(body) if status == 200 else {}
    out["flow"] = run.get("success")
    if not run.get("success") or not run.get("variables", {}).get("answer"):
        out["why"] = "flow run: %d %s" % (status, body[:300]); return out
    out["ok"] = True
    return out

if __name__ == "__main__":
    what = sys.argv[1]
    if what == "load":
        stop = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] != "-" else None
        mix = len(sys.argv) > 5 and sys.argv[5] == "mix"
        print(json.dumps(load(int(sys.argv[2]), int(sys.argv[3]), stop, mix)))
    elif what == "served":
        print(json.dumps(chat_served()))
    elif what == "documents-and-flows":
        print(json.dumps(documents_and_flows()))
    elif what == "chat-instances":
        d = metrics_json()
        print(len([i for i in d["instances"] if i["service"] == "chat"]))
    elif what == "live-chat":
        print(live_chat_instances())
    elif what == "restarts":
        d = metrics_json()
        print(int(((d.get("supervisor") or {}).get("restarts") or {}).get("chatd", 0)))
    elif what == "active":
        active = {}
        for (name, labels), value in prometheus().items():
            l = dict(labels)
            if name == "llmrt_queue_active" and l.get("service") == "chat" and "instance" in l:
                active[l["instance"]] = active.get(l["instance"], 0) + int(value)
        print(json.dumps(active))
    elif what == "broker":
        print(int((metrics_json()["gateway"].get("broker") or {}).get(sys.argv[2], 0)))
    elif what == "prom-restarts":
        total = 0
        for (name, labels), value in prometheus().items():
            l = dict(labels)
            if name == "llmrt_supervisor_restarts_total" and l.get("program") == "chatd" \
                    and "instance" not in l:
                total += value
        print(int(total))
EOF
export GW="$port"
client() { python3 "$work/client.py" "$@"; }
http_status() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$base$1"; }
# wait_for SECONDS COMMAND...: until the command succeeds.
wait_for() {
    local until=$(($(date +%s) + $1))
    shift
    while ! "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$until" ] || return 1
        sleep 1
    done
}
is_ready() { [ "$(http_status /api/health/ready)" = 200 ]; }
chat_instances_are() { [ "$(client chat-instances)" = "$1" ]; }
live_chat_is() { [ "$(client live-chat)" = "$1" ]; }
# check_load NAME JSON: every request succeeded.
load_ok() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d["ok"] == d["total"] and d["total"] > 0 else 1)' "$1"; }

# --- 1. ready, three chat instances in the metrics --------------------------------------------------
if wait_for 120 is_ready; then
    say "ready after $(($(date +%s) - t0)) s"
    if wait_for 30 chat_instances_are 3; then
        pass "1. /api/health/ready is 200 and /api/metrics lists 3 chat instances"
    else
        fail "1. /api/metrics lists $(client chat-instances) chat instances, not 3"
    fi
else
    fail "1. /api/health/ready is $(http_status /api/health/ready) after 120 s: $(curl -s "$base/api/health/ready")"
    say "the stack is not ready: its logs go to $work/stack.log"
    exit 1
fi

# --- 2. 300 chats, every replica serves ------------------------------------------------------------------
code=$(curl -s -o "$work/ws.json" -w '%{http_code}' -H "Authorization: Bearer $ADMIN_API_KEY" \
    -d '{"name":"ci"}' "$base/api/v1/workspace/new")
[ "$code" = 200 ] || die "creating the workspace answered $code: $(cat "$work/ws.json")"
before=$(client served)
t1=$(date +%s)
result=$(client load 300 8 -)
load_s=$(($(date +%s) - t1))
# Instances report each second: wait until the 300 show in the metrics.
reported_all() {
    python3 -c '
import json, sys
b, a = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.exit(0 if sum(a[i] - b.get(i, 0) for i in a) >= 300 else 1)' "$before" "$(client served)"
}
wait_for 15 reported_all
after=$(client served)
spread=$(python3 -c '
import json, sys
b, a = json.loads(sys.argv[1]), json.loads(sys.argv[2])
d = {i: a[i] - b.get(i, 0) for i in a}
print(" ".join("%s=%d" % (i, n) for i, n in sorted(d.items())))
sys.exit(0 if len([n for n in d.values() if n > 0]) == 3 else 1)' "$before" "$after")
spread_rc=$?
if load_ok "$result" && [ $spread_rc = 0 ]; then
    pass "2. 300 chats in ${load_s} s: $result; served per replica: $spread"
else
    fail "2. 300 chats: $result; served per replica: $spread"
fi

# --- 3. a chatd process killed inside its container: restarted, chats go on -------------------------------
victim=$("${compose[@]}" ps -q chatd | head -1)
restarts_before=$(client restarts)
rm -f "$work/stop3"
client load 0 6 "$work/stop3" >"$work/load3.json" &
load3=$!
sleep 2
# kill -9 the daemon (not the container's supervisor, pid 1): a crash.
# shellcheck disable=SC2016 # expanded inside the container
"$docker" exec "$victim" sh -c 'for d in /proc/[0-9]*; do
    [ "$(cat "$d/comm" 2>/dev/null)" = chatd ] && kill -KILL "${d#/proc/}" && echo "${d#/proc/}"; done' \
    >"$work/killed.txt" 2>&1
say "killed chatd pid $(tr '\n' ' ' <"$work/killed.txt")in container ${victim:0:12}"
restarted() { [ "$(client restarts)" -gt "$restarts_before" ]; }
wait_for 30 restarted
restarts_after=$(client restarts)
prom_restarts=$(client prom-restarts)
wait_for 30 live_chat_is 3
live=$(client live-chat)
sleep 3 # chats go on after the restart too
touch "$work/stop3"
wait "$load3"
result=$(cat "$work/load3.json")
if load_ok "$result" && [ "$restarts_after" -gt "$restarts_before" ] && [ "$prom_restarts" -ge "$restarts_after" ] && [ "$live" = 3 ]; then
    pass "3. chatd killed: restarts $restarts_before -> $restarts_after (JSON supervisor.restarts.chatd; llmrt_supervisor_restarts_total{program=\"chatd\"} $prom_restarts), 3 live replicas again, chats during and after: $result"
else
    fail "3. chatd killed: restarts $restarts_before -> $restarts_after (prometheus $prom_restarts), live chat replicas $live, chats: $result"
fi

# --- 4. scale to 1 and back to 3 under load -------------------------------------------------------------------
rm -f "$work/stop4"
client load 0 8 "$work/stop4" mix >"$work/load4.json" &
load4=$!
sleep 3
# The replicas' own logs, kept past their removal: their drain.
log_pids=()
for id in $("${compose[@]}" ps -q chatd); do
    "$docker" logs -f "$id" >"$work/chatd-${id:0:12}.log" 2>&1 &
    log_pids+=($!)
done
retries_before=$(client broker retries)
# Every replica has requests running (streams among them) when it is told
# to stop.
all_busy() {
    python3 -c 'import json,sys; a=json.loads(sys.argv[1]); sys.exit(0 if len(a) == 3 and min(a.values()) > 0 else 1)' "$(client active)"
}
wait_for 20 all_busy
active_at_stop=$(client active)
t1=$(date +%s)
"${compose[@]}" up -d --no-recreate --scale chatd=1 >"$work/scale-down.log" 2>&1
down_rc=$?
down_s=$(($(date +%s) - t1))
wait_for 30 live_chat_is 1
live_down=$(client live-chat)
containers_down=$("${compose[@]}" ps -q chatd | wc -l)
sleep 2
t1=$(date +%s)
"${compose[@]}" up -d --no-recreate --scale chatd=3 >"$work/scale-up.log" 2>&1
up_rc=$?
wait_for 60 live_chat_is 3
live_up=$(client live-chat)
up_s=$(($(date +%s) - t1))
# The new replicas get work: every live chat instance serves. The mixed load
# above is slow (streams of ~3 s), so add rounds of quick chats until each
# of the three shows new requests in the hub's per-instance counters (they
# arrive one report interval late), for at most five rounds.
sleep 1
before=$(client served)
count_new_served() {
    python3 -c '
import json, sys
b, a = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(len([i for i in a if a[i] - b.get(i, 0) > 0]))' "$before" "$1"
}
for round in 1 2 3 4 5; do
    client load 20 4 - >"$work/load4b-$round.json"
    sleep 1.5
    after=$(client served)
    [ "$(count_new_served "$after")" = 3 ] && break
done
touch "$work/stop4"
wait "$load4"
result=$(cat "$work/load4.json")
retries=$(($(client broker retries) - retries_before))
kill "${log_pids[@]}" 2>/dev/null
wait "${log_pids[@]}" 2>/dev/null
# What the removed replicas' supervisors said: TERM sent, and the exit.
drains=$(python3 - "$work"/chatd-*.log <<'PY'
import datetime, re, sys
said = []
for path in sys.argv[1:]:
    term = None
    for line in open(path, errors="replace"):
        m = re.match(r"(\S+)Z ", line)
        if not m:
            continue
        t = datetime.datetime.fromisoformat(m.group(1))
        if "sending TERM to chatd" in line:
            term = t
        elif term and re.search(r"chatd\.0 pid \d+ (exited|killed)", line):
            what = line.split(": ", 1)[-1].split(" after ")[0].strip()
            said.append("%s %d ms after TERM" % (what, (t - term) / datetime.timedelta(milliseconds=1)))
print("; ".join(said) or "none")
PY
)
new_served=$(count_new_served "$after")
unstarted=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["failed_unstarted"])' "$result")
started_failed=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["failed_started"])' "$result")
if [ $down_rc = 0 ] && [ $up_rc = 0 ] && [ "$live_down" = 1 ] && [ "$containers_down" = 1 ] &&
    [ "$live_up" = 3 ] && [ "$new_served" = 3 ] && [ "$unstarted" = 0 ] && [ "$started_failed" = 0 ] &&
    [ "$(grep -o "exited with status 0" <<<"$drains" | wc -l)" = 2 ]; then
    pass "4. scaled to 1 in ${down_s} s (1 live) and back to 3 in ${up_s} s (3 live, all 3 serving) under load of chats and streams: $result; running per replica at the stop: $active_at_stop; requests re-sent by the gateway: $retries; the 2 removed replicas: $drains"
else
    fail "4. scale 3 -> 1 (rc $down_rc, ${down_s} s, live $live_down, containers $containers_down) -> 3 (rc $up_rc, ${up_s} s, live $live_up, serving $new_served; served before $before after $after); load: $result; running at the stop: $active_at_stop; re-sent: $retries; removed replicas: $drains"
fi

# --- 5. documents and flows in the deployment -----------------------------------------------------------------------
result=$(client documents-and-flows)
if python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1])["ok"] else 1)' "$result" 2>/dev/null; then
    pass "5. an upload embedded through the Redis queue, found by vector search, a source of query-mode chats on every replica; a flow saved and run: $result"
else
    fail "5. documents and flows: $result"
fi

# --- 6. down -v leaves nothing but the base image ------------------------------------------------------------------
"${compose[@]}" logs --no-color >"$work/stack.log" 2>&1
t1=$(date +%s)
"${compose[@]}" down -v --rmi all --remove-orphans -t 30 >"$work/down.log" 2>&1
down_rc=$?
stack_up=0
remove_new_images
label="label=com.docker.compose.project=$project"
left_containers=$("$docker" ps -aq --filter "$label" | wc -l)
left_volumes=$("$docker" volume ls -q --filter "$label" | wc -l)
left_networks=$("$docker" network ls -q --filter "$label" | wc -l)
left_images=$(comm -13 <(echo "$images_before") <("$docker" images -aq | sort -u) | wc -l)
base_there=0
"$docker" image inspect debian:bookworm-slim >/dev/null 2>&1 && base_there=1
if [ $down_rc = 0 ] && [ "$left_containers" = 0 ] && [ "$left_volumes" = 0 ] &&
    [ "$left_networks" = 0 ] && [ "$left_images" = 0 ] && [ $base_there = 1 ]; then
    pass "6. down -v in $(($(date +%s) - t1)) s: no container, volume, network or image of the project left; debian:bookworm-slim kept"
else
    fail "6. down -v (rc $down_rc) left $left_containers containers, $left_volumes volumes, $left_networks networks, $left_images images (base image present: $base_there)"
fi
