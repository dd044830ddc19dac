#!/usr/bin/env bash
# Invoke the function through the emulator's endpoint, print the result, and exit non-zero when
# the run failed.
#
#   ./invoke.sh                         POST /trigger-etl (events/post-trigger-etl.json, an HTTP API v2 event)
#   ./invoke.sh events/trigger-etl.json      the challenge's GET /trigger-etl (served locally; the
#                                            deployed API routes it only with AllowGetTrigger=true)
#   ./invoke.sh events/direct-trigger.json   any other event file
#
#   FUNCTION_URL  the invocation endpoint
#                 (default http://localhost:${RIE_PORT:-9000}/2015-03-31/functions/function/invocations)
set -euo pipefail
cd "$(dirname "$0")"
event=${1:-events/post-trigger-etl.json}
url=${FUNCTION_URL:-http://localhost:${RIE_PORT:-9000}/2015-03-31/functions/function/invocations}
[ -f "$event" ] || { echo "invoke.sh: no event file $event" >&2; exit 64; }

if ! response=$(curl --silent --show-error --max-time 900 -X POST "$url" \
        -H 'content-type: application/json' --data-binary "@$event"); then
    echo "invoke.sh: nothing answers at $url (is the function running? ./build.sh --local)" >&2
    exit 3
fi

# An HTTP event gives {"statusCode", "body"}; a direct invocation gives the result itself, or
# {"errorType", "errorMessage"} when it failed.
printf '%s' "$response" | python3 -c '
import json, sys
raw = sys.stdin.read()
try:
    reply = json.loads(raw)
except ValueError:
    print(raw)
    sys.exit("invoke.sh: the endpoint did not answer with JSON")
failed = False
if isinstance(reply, dict) and "statusCode" in reply:
    status = reply["statusCode"]
    body = reply.get("body") or ""
    try:
        body = json.loads(body)
    except ValueError:
        pass
    print(f"HTTP {status}")
    print(json.dumps(body, indent=2))
    failed = status >= 400
elif isinstance(reply, dict) and "errorType" in reply:
    try:
        message = json.loads(reply.get("errorMessage", ""))
    except ValueError:
        message = reply.get("errorMessage")
    print(json.dumps({"errorType": reply["errorType"], "error": message}, indent=2))
    failed = True
else:
    print(json.dumps(reply, indent=2))
sys.exit(1 if failed else 0)
'
