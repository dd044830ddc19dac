#!/usr/bin/env bash
# One run of the image as Lambda's largest function would run it: a 10 GB memory limit on the container
# (podman --memory, no swap), Lambda's memory size and timeout in its environment, the data mounted
# read-only; one direct invocation through the emulator, timed by the client.  Prints the run's
# summary line, the wall, the function process's peak RSS (VmHWM) and the container cgroup's peak.
#
#   bench/ceiling.sh DATA_DIR [IMAGE] [MEMORY_MB]
#       IMAGE      default localhost/experiment-etl:test (what the container tests build; or build.sh's)
#       MEMORY_MB  default 10240
#   DATABASE_URL  default postgresql://postgres@127.0.0.1:5432/postgres (host network)
#   DB_SCHEMA     default bench_ceiling (dropped first: a first load)
set -euo pipefail
data=$(realpath "${1:?usage: bench/ceiling.sh DATA_DIR [IMAGE] [MEMORY_MB]}")
image=${2:-localhost/experiment-etl:test}
memory=${3:-10240}
url=${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
schema=${DB_SCHEMA:-bench_ceiling}
port=${RIE_PORT:-9123}
name=etl-ceiling-$port
answer=$(mktemp)

PGOPTIONS='-c client_min_messages=warning' psql "$url" -qc "DROP SCHEMA IF EXISTS \"$schema\" CASCADE"
podman rm -f "$name" >/dev/null 2>&1 || true
podman --runtime runc run -d --name "$name" --network host \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    --memory "${memory}m" --memory-swap "${memory}m" \
    -v "$data:/data:ro" \
    -e RIE_PORT="$port" -e DATABASE_URL="$url" -e DB_SCHEMA="$schema" -e DATA_DIR=/data \
    -e AWS_LAMBDA_FUNCTION_MEMORY_SIZE="$memory" -e AWS_LAMBDA_FUNCTION_TIMEOUT=900 \
    "$image" >/dev/null
trap 'podman rm -f "$name" >/dev/null 2>&1 || true; rm -f "$answer"' EXIT
for _ in $(seq 60); do
    if curl -s -o /dev/null "http://127.0.0.1:$port/"; then break; fi
    sleep 0.5
done

echo "data: $data ($(du -sb "$data/user_experiments.csv" | cut -f1) bytes of experiments), image $image, limit ${memory} MB"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
started=$(date +%s.%N)
curl -s --max-time 960 -X POST "http://127.0.0.1:$port/2015-03-31/functions/function/invocations" \
    -d '{"action": "trigger-etl", "force": true}' >"$answer"
ended=$(date +%s.%N)
python3 - "$answer" <<'PY'
import json, sys
body = json.load(open(sys.argv[1]))
if "errorMessage" in body:  # a direct invocation's error, as Lambda returns it
    print("error:", body.get("errorType"), body["errorMessage"])
else:
    print("summary:", json.dumps({k: body[k] for k in ("status", "run_id", "users_written", "seconds") if k in body}))
PY
echo "wall (client): $(python3 -c "print(round($ended - $started, 2))") s"
# the function's process is still alive after the invocation (the emulator keeps it warm)
podman exec "$name" sh -c 'for s in /proc/[0-9]*/status; do grep -q "^Name:.*python" "$s" && grep -H VmHWM "$s"; done; true' \
    || echo "VmHWM: not readable"
podman exec "$name" sh -c 'cat /sys/fs/cgroup/memory.peak 2>/dev/null || cat /sys/fs/cgroup/memory/memory.max_usage_in_bytes' \
    | awk '{printf "cgroup peak (page cache included): %.0f MB\n", $1 / 1e6}' || true
podman logs "$name" 2>&1 | grep -i "capacity\|estimate" | tail -2 || true
