#!/usr/bin/env bash
# Invoke the function through the emulator's endpoint, print the result, and exit non-zero when
# the run (or the request) failed.
#
#   ./invoke.sh                              POST /trigger-etl (events/post-trigger-etl.json)
#   ./invoke.sh METHOD PATH[?QUERY]          any route of the HTTP API, through Mangum as API Gateway
#                                            sends it (an HTTP API v2 event built here), e.g.
#                                              ./invoke.sh GET /health
#                                              ./invoke.sh POST '/trigger-etl?policy=quarantine&force=true'
#                                              ./invoke.sh GET '/runs?limit=5&status=failed'
#                                              ./invoke.sh GET /runs/1/rejects
#   ./invoke.sh ACTION [key=value ...]       a direct invocation, e.g.
#                                              ./invoke.sh trigger-etl policy=quarantine force=true
#                                              ./invoke.sh get-run run_id=1
#                                              ./invoke.sh migrate apply=false
#                                            (values that are JSON numbers or true/false are sent as such)
#   ./invoke.sh EVENT.json                   any event file, e.g. events/trigger-etl.json (the challenge's
#                                            GET /trigger-etl: served locally; the deployed API routes it
#                                            only with AllowGetTrigger=true) or events/s3-put.json
#
#   FUNCTION_URL  the invocation endpoint
#                 (default http://localhost:${RIE_PORT:-9000}/2015-03-31/functions/function/invocations)
set -euo pipefail
cd "$(dirname "$0")"
url=${FUNCTION_URL:-http://localhost:${RIE_PORT:-9000}/2015-03-31/functions/function/invocations}

# The event to send, on stdout: a file's, or one made from the arguments.
make_event() {
    python3 - "$@" <<'PY'
import json, sys
from urllib.parse import parse_qsl, urlsplit

args = sys.argv[1:]
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
if not args:
    args = ["events/post-trigger-etl.json"]
first = args[0]
if first.endswith(".json"):
    try:
        with open(first, encoding="utf-8") as f:
            sys.stdout.write(f.read())
    except OSError as exc:
        sys.exit(f"invoke.sh: no event file {first} ({exc.strerror})")
elif first.upper() in METHODS:
    if len(args) != 2 or not args[1].startswith("/"):
        sys.exit("invoke.sh: give a method and one path, e.g. ./invoke.sh GET '/runs?limit=5'")
    method, target = first.upper(), urlsplit(args[1])
    query = parse_qsl(target.query, keep_blank_values=True)
    event = {
        "version": "2.0", "routeKey": "$default", "rawPath": target.path, "rawQueryString": target.query,
        "headers": {"accept": "application/json", "host": "localhost", "user-agent": "invoke.sh"},
        "requestContext": {
            "accountId": "123456789012", "apiId": "local", "domainName": "localhost", "domainPrefix": "localhost",
            "http": {"method": method, "path": target.path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                     "userAgent": "invoke.sh"},
            "requestId": "invoke-sh", "routeKey": "$default", "stage": "$default",
            "time": "01/Jan/2026:00:00:00 +0000", "timeEpoch": 1767225600000},
        "isBase64Encoded": False,
    }
    if query:  # API Gateway joins repeated parameters with commas here; rawQueryString keeps them apart
        grouped = {}
        for key, value in query:
            grouped.setdefault(key, []).append(value)
        event["queryStringParameters"] = {key: ",".join(values) for key, values in grouped.items()}
    json.dump(event, sys.stdout)
elif first.startswith("-") or "/" in first:
    sys.exit(f"invoke.sh: cannot make an event of {first!r}: give METHOD PATH, ACTION [key=value ...] or EVENT.json")
else:
    event = {"action": first}
    for pair in args[1:]:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            sys.exit(f"invoke.sh: {pair!r} is not key=value")
        try:
            parsed = json.loads(value)
            event[key] = parsed if isinstance(parsed, (bool, int, float)) else value
        except ValueError:
            event[key] = value
    json.dump(event, sys.stdout)
PY
}

event=$(make_event "$@") || exit 64

if ! response=$(printf '%s' "$event" | curl --silent --show-error --max-time 900 -X POST "$url" \
        -H 'content-type: application/json' --data-binary @-); then
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
