#!/bin/sh
# Inside AWS Lambda (AWS_LAMBDA_RUNTIME_API is set) run the runtime client alone; anywhere else put
# the Runtime Interface Emulator in front of it, listening on RIE_ADDRESS:RIE_PORT (default 0.0.0.0:8080,
# for a published port; on the host's network ./build.sh passes 127.0.0.1).
set -eu
if [ -z "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
    exec /usr/local/bin/aws-lambda-rie \
        --runtime-interface-emulator-address "${RIE_ADDRESS:-0.0.0.0}:${RIE_PORT:-8080}" \
        python3 -m awslambdaric "$@"
fi
exec python3 -m awslambdaric "$@"
