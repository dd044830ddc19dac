#!/bin/sh
# Inside AWS Lambda (AWS_LAMBDA_RUNTIME_API is set) run the runtime client alone; anywhere else put
# the Runtime Interface Emulator in front of it, listening on RIE_PORT (default 8080).
set -eu
if [ -z "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
    exec /usr/local/bin/aws-lambda-rie \
        --runtime-interface-emulator-address "0.0.0.0:${RIE_PORT:-8080}" \
        python3 -m awslambdaric "$@"
fi
exec python3 -m awslambdaric "$@"
