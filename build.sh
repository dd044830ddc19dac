#!/usr/bin/env bash
# Build and start the ETL function, served by the Lambda Runtime Interface Emulator (RIE).
#
#   ./build.sh            build the image, start PostgreSQL and the function in containers
#                         (docker, or podman), the emulator on localhost:${RIE_PORT:-9000}
#   ./build.sh --local    no containers: a venv, the RIE on the host in front of
#                         `python -m awslambdaric`, on 127.0.0.1:${RIE_PORT:-9000}, against DATABASE_URL
#   ./build.sh --local --s3   the same, reading from a local S3 server (moto's, on 127.0.0.1:${S3_PORT:-5900})
#                         that holds data/ as s3://experiment-etl-lab-data/exports/, the bucket and key of
#                         events/s3-put.json:  ./invoke.sh events/s3-put.json
#   ./build.sh stop       stop whatever this script started
#   ./build.sh clean      stop it, and drop the schema the function wrote its tables to (DROP SCHEMA ...
#                         CASCADE; never public: its tables are dropped by hand)
#   ./build.sh --help
#
#   --local first checks the settings, the database and the data location (python -m etl_core check)
#   and does not start when a run could not succeed; --no-check starts anyway.  Flags go in any order.
#
# Environment (all optional):
#   DATABASE_URL / PG*    the database the function writes to (default for --local: the local server,
#                         postgresql://postgres@127.0.0.1:5432/postgres; for containers: a PostgreSQL
#                         container started here unless DATABASE_URL is given)
#   DATA_DIR              the CSV directory (default: the repo's data/; in the image, the baked-in copy;
#                         for containers a directory of this machine, mounted read-only as /data)
#   DB_SCHEMA             the schema the function writes to (default for --local: experiment_etl, a schema
#                         of its own that ./build.sh clean drops; in the containers' own database: public)
#   RIE_PORT              the emulator's port on this machine (default 9000)
#   S3_PORT               the local S3 server's port with --s3 (default 5900)
#   CONTAINER_ENGINE      docker or podman (default: the first one that works)
#   BASE_IMAGE            base image for the build (default in the Dockerfile: python:3.12-slim)
#   IMAGE                 image name (default experiment-etl:latest)
#   HOST_NETWORK=1        run the function container on the host network (then it reaches a
#                         database on 127.0.0.1 directly); implied when DATABASE_URL points to loopback
#   ENGINE_FLAGS          extra flags for `build` and `run` (e.g. podman here:
#                         "--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024")
#   POSTGRES_IMAGE        image for the database container (default postgres:16-alpine)
set -euo pipefail

cd "$(dirname "$0")"
ROOT=$(pwd)
RUN_DIR="$ROOT/.run"
CACHE_DIR="$ROOT/.cache"
RIE_PORT=${RIE_PORT:-9000}
IMAGE=${IMAGE:-experiment-etl:latest}
NAME=experiment-etl
SAM_CLI_VERSION=1.170.0
LOCAL_DB_URL="postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_SCHEMA=experiment_etl
S3_PORT=${S3_PORT:-5900}
S3_DATA_URL="s3://experiment-etl-lab-data/exports/"  # where events/s3-put.json's manifest is

say() { printf '%s\n' "$*" >&2; }
die() { say "build.sh: $*"; exit 1; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

# --- the emulator binary: from the aws-sam-cli wheel on PyPI (no GitHub download needed)
fetch_rie() {
    local bin="$CACHE_DIR/rie/aws-lambda-rie" name
    if [ -x "$bin" ]; then printf '%s\n' "$bin"; return; fi
    case "$(uname -m)" in aarch64|arm64) name=aws-lambda-rie-arm64 ;; *) name=aws-lambda-rie-x86_64 ;; esac
    mkdir -p "$CACHE_DIR/rie"
    say "fetching the Runtime Interface Emulator from the aws-sam-cli $SAM_CLI_VERSION wheel on PyPI"
    "$ROOT/.venv/bin/pip" download --quiet --no-deps --dest "$CACHE_DIR/rie/wheel" "aws-sam-cli==$SAM_CLI_VERSION" >&2
    "$ROOT/.venv/bin/python" - "$CACHE_DIR/rie/wheel" "$name" "$bin" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "aws_sam_cli-*.whl"))[0]
with open(sys.argv[3], "wb") as out:
    out.write(zipfile.ZipFile(wheel).read("samcli/local/rapid/" + sys.argv[2]))
os.chmod(sys.argv[3], 0o755)
PY
    printf '%s\n' "$bin"
}

make_venv() {
    if [ ! -x .venv/bin/python ]; then
        say "creating .venv"
        python3 -m venv .venv
    fi
    if [ ! -f .venv/.requirements ] || ! cmp -s requirements.txt .venv/.requirements; then
        say "installing requirements.txt into .venv"
        .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
        cp requirements.txt .venv/.requirements
    fi
}

wait_for_port() {  # host port seconds
    local deadline=$((SECONDS + $3))
    until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

check_port_free() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$RIE_PORT") 2>/dev/null; then
        die "port $RIE_PORT is already in use (a previous ./build.sh? run ./build.sh stop, or set RIE_PORT)"
    fi
}

start_local() {
    make_venv
    local rie
    rie=$(fetch_rie)
    stop_local quiet
    check_port_free
    mkdir -p "$RUN_DIR"
    if [ $s3 = 1 ]; then start_s3; fi
    export DATABASE_URL=${DATABASE_URL:-}
    if [ -z "$DATABASE_URL" ] && [ -z "${PGHOST:-}" ]; then DATABASE_URL=$LOCAL_DB_URL; fi
    [ -n "$DATABASE_URL" ] || unset DATABASE_URL
    export DATA_DIR=${DATA_DIR:-$ROOT/data}
    export DB_SCHEMA=${DB_SCHEMA:-$LOCAL_SCHEMA}  # a schema of its own: ./build.sh clean drops it
    # the runtime's JSON log lines (request id on each), as the template's LoggingConfig and the image have
    export AWS_LAMBDA_LOG_FORMAT=${AWS_LAMBDA_LOG_FORMAT:-JSON}
    # the emulator's Runtime API on a free port of its own: its default, 127.0.0.1:9001, is one for every
    # emulator on the machine, and a second one would fail to start
    local api_port
    api_port=$("$ROOT/.venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    export AWS_LAMBDA_LOG_LEVEL=${AWS_LAMBDA_LOG_LEVEL:-INFO}  # the template's LogLevel: Mangum's access lines too
    if [ $check = 1 ]; then preflight; fi
    # the emulator passes its own environment on to the runtime client it starts
    PYTHONPATH="$ROOT" nohup "$rie" --runtime-interface-emulator-address "127.0.0.1:$RIE_PORT" \
        --runtime-api-address "127.0.0.1:$api_port" \
        "$ROOT/.venv/bin/python" -m awslambdaric handler.lambda_function.handler \
        >"$RUN_DIR/function.log" 2>&1 &
    echo $! >"$RUN_DIR/local.pid"
    printf '%s\n' "${DATABASE_URL:-}" >"$RUN_DIR/database_url"
    printf '%s\n' "$DB_SCHEMA" >"$RUN_DIR/db_schema"
    wait_for_port 127.0.0.1 "$RIE_PORT" 20 || { cat "$RUN_DIR/function.log" >&2; die "the emulator did not start"; }
    say "function running (emulator pid $(cat "$RUN_DIR/local.pid")), log: .run/function.log"
    say "invoke it:  ./invoke.sh     stop it:  ./build.sh stop"
}

preflight() {  # the settings, the database and the data location, as the function would see them
    if PYTHONPATH="$ROOT" .venv/bin/python -m etl_core check --text >&2; then
        return
    fi
    stop_local quiet
    die "not starting: every invocation would fail; fix what is NOT OK above (./build.sh --local --no-check starts anyway)"
}

drop_schema() {  # the schema the function wrote to, in the database it wrote to
    [ -s "$RUN_DIR/db_schema" ] || { say "nothing to clean: no schema recorded by ./build.sh"; return; }
    local schema url
    schema=$(cat "$RUN_DIR/db_schema")
    if [ "$schema" = public ]; then
        say "not dropping schema public (other tables may live there): drop user_features, its history and the etl_ tables by hand"
        return
    fi
    url=$(cat "$RUN_DIR/database_url" 2>/dev/null || true)
    command -v psql >/dev/null || die "clean needs psql (Debian: apt-get install postgresql-client)"
    local -a args=()
    [ -z "$url" ] || args+=("$url")
    printf '%s\n' 'SET client_min_messages = warning;' 'DROP SCHEMA IF EXISTS :"schema" CASCADE;' \
        | psql "${args[@]}" -X -q --set ON_ERROR_STOP=1 --set schema="$schema" || die "could not drop schema $schema"
    say "dropped schema $schema (its tables: user_features and the job's ledger)"
}

stop_local() {
    stop_pid "$RUN_DIR/local.pid" "the local function" "${1:-}"
    stop_pid "$RUN_DIR/s3.pid" "the local S3 server" "${1:-}"
}

stop_pid() {  # pidfile what [quiet]
    local pidfile=$1
    [ -f "$pidfile" ] || return 0
    local pid
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        [ "${3:-}" = quiet ] || say "stopped $2 (pid $pid)"
    fi
    rm -f "$pidfile"
}

start_s3() {
    # moto's server is a test dependency, pinned in requirements-dev.txt; never in the image
    local moto
    moto=$(grep -oE '^moto\[server\]==[^ ]+' requirements-dev.txt)
    if ! .venv/bin/python -c 'import moto.server' 2>/dev/null; then
        say "installing $moto into .venv (the local S3 server)"
        .venv/bin/pip install --quiet --disable-pip-version-check "$moto"
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null; then
        die "port $S3_PORT is taken: set S3_PORT to a free one"
    fi
    PYTHONPATH="$ROOT" nohup .venv/bin/python -m tests.s3server --port "$S3_PORT" \
        --upload "${DATA_DIR:-$ROOT/data}" "$S3_DATA_URL" >"$RUN_DIR/s3.log" 2>&1 &
    echo $! >"$RUN_DIR/s3.pid"
    local deadline=$((SECONDS + 30))
    until grep -q '^http://' "$RUN_DIR/s3.log" 2>/dev/null; do  # it prints its endpoint once the set is uploaded
        if [ $SECONDS -ge $deadline ] || ! kill -0 "$(cat "$RUN_DIR/s3.pid")" 2>/dev/null; then
            cat "$RUN_DIR/s3.log" >&2
            die "the local S3 server did not start"
        fi
        sleep 0.2
    done
    # the function reads the set from there, with the server's dummy credentials
    export DATA_URL=$S3_DATA_URL DATA_S3_ENDPOINT="http://127.0.0.1:$S3_PORT" AWS_ACCESS_KEY_ID=testing \
        AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
    say "local S3 server on http://127.0.0.1:$S3_PORT (pid $(cat "$RUN_DIR/s3.pid")) holds ${DATA_DIR:-data/} as $S3_DATA_URL"
    say "a run from it:  ./invoke.sh events/s3-put.json   (the upload's notification of exports/_manifest.json)"
}

pick_engine() {
    local engine
    for engine in ${CONTAINER_ENGINE:-docker podman}; do
        if command -v "$engine" >/dev/null 2>&1 && "$engine" info >/dev/null 2>&1; then
            printf '%s\n' "$engine"
            return
        fi
    done
    say "build.sh: no working container engine (tried: ${CONTAINER_ENGINE:-docker podman})."
    say "Run without containers instead:  ./build.sh --local"
    exit 2
}

is_loopback_url() { case "${1:-}" in *@127.*|*@localhost*|*//127.*|*//localhost*|*@\[::1\]*) return 0 ;; *) return 1 ;; esac; }

start_containers() {
    local engine
    engine=$(pick_engine)
    local -a flags=()
    read -r -a flags <<<"${ENGINE_FLAGS:-}"
    local -a build_args=()
    [ -z "${BASE_IMAGE:-}" ] || build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    say "building $IMAGE with $engine"
    "$engine" build "${flags[@]}" --network host "${build_args[@]}" -t "$IMAGE" . ||
        die "the image did not build (above: $engine's words); where no registry answers, build on a local base image: README, \"Containers without a registry\""
    stop_containers "$engine" quiet
    mkdir -p "$RUN_DIR"

    local db_url=${DATABASE_URL:-} host_url
    if [ -z "$db_url" ]; then
        say "starting PostgreSQL (${POSTGRES_IMAGE:-postgres:16-alpine}) as $NAME-db on 127.0.0.1:5433"
        "$engine" network create "$NAME" >/dev/null 2>&1 || true
        if ! "$engine" run -d "${flags[@]}" --name "$NAME-db" --network "$NAME" -p 127.0.0.1:5433:5432 \
            -e POSTGRES_HOST_AUTH_METHOD=trust "${POSTGRES_IMAGE:-postgres:16-alpine}" >/dev/null; then
            stop_containers "$engine" quiet
            die "PostgreSQL's container did not start (above: $engine's words); give DATABASE_URL of a server of yours instead (README, \"Containers without a registry\")"
        fi
        for _ in $(seq 60); do
            "$engine" exec "$NAME-db" pg_isready -U postgres >/dev/null 2>&1 && break
            sleep 1
        done
        db_url="postgresql://postgres@$NAME-db:5432/postgres"
        host_url="postgresql://postgres@127.0.0.1:5433/postgres"
    else
        host_url=$db_url
    fi

    local -a net
    if [ "${HOST_NETWORK:-}" = 1 ] || is_loopback_url "$db_url"; then
        # on the host's network the emulator listens where --local's does: loopback only
        net=(--network host -e "RIE_PORT=$RIE_PORT" -e "RIE_ADDRESS=127.0.0.1")
    elif [ -z "${DATABASE_URL:-}" ]; then
        net=(--network "$NAME" -p "127.0.0.1:$RIE_PORT:8080")
    else
        net=(-p "127.0.0.1:$RIE_PORT:8080")
    fi
    local -a env=(-e "DATABASE_URL=$db_url")
    if [ -n "${DATA_DIR:-}" ]; then  # a directory of this machine: the container sees it as /data
        [ -d "$DATA_DIR" ] || die "DATA_DIR=$DATA_DIR is not a directory on this machine"
        env+=(-v "$(cd "$DATA_DIR" && pwd -P):/data:ro" -e "DATA_DIR=/data")
    fi
    [ -z "${DB_SCHEMA:-}" ] || env+=(-e "DB_SCHEMA=$DB_SCHEMA")
    check_port_free
    "$engine" run -d "${flags[@]}" --name "$NAME" "${net[@]}" "${env[@]}" "$IMAGE" >/dev/null
    printf '%s\n' "$engine" >"$RUN_DIR/engine"
    printf '%s\n' "$host_url" >"$RUN_DIR/database_url"
    printf '%s\n' "${DB_SCHEMA:-public}" >"$RUN_DIR/db_schema"  # for ./query.sh and ./build.sh clean
    wait_for_port 127.0.0.1 "$RIE_PORT" 30 || { "$engine" logs "$NAME" >&2; die "the function container did not start"; }
    say "function running in container $NAME on 127.0.0.1:$RIE_PORT; logs: $engine logs $NAME"
    say "invoke it:  ./invoke.sh     stop it:  ./build.sh stop"
}

stop_containers() {
    local engine=$1 name
    for name in "$NAME" "$NAME-db"; do
        if [ -n "$("$engine" ps -a --filter "name=^$name\$" --format '{{.Names}}' 2>/dev/null)" ]; then
            "$engine" rm -f "$name" >/dev/null 2>&1 || true
            [ "${2:-}" = quiet ] || say "removed container $name ($engine)"
        fi
    done
    "$engine" network rm "$NAME" >/dev/null 2>&1 || true  # the database container's network, if made
}

local_mode=0 s3=0 stop=0 check=1 clean=0
for arg in "$@"; do
    case "$arg" in
        --local) local_mode=1 ;;
        --s3) s3=1 local_mode=1 ;;  # the local S3 server serves the function run on the host
        --no-check) check=0 ;;
        stop) stop=1 ;;
        clean) stop=1 clean=1 ;;
        -h|--help) usage; exit 0 ;;
        *) say "build.sh: unknown argument '$arg'"; usage >&2; exit 64 ;;
    esac
done
if [ $stop = 1 ]; then
    [ $# = 1 ] || die "$1 takes no other argument"
    [ $clean = 0 ] || drop_schema
    stop_local
    if [ -f "$RUN_DIR/engine" ]; then stop_containers "$(cat "$RUN_DIR/engine")"; rm -f "$RUN_DIR/engine"; fi
    rm -f "$RUN_DIR/database_url" "$RUN_DIR/db_schema"
elif [ $local_mode = 1 ]; then
    start_local
else
    [ $check = 1 ] || die "--no-check applies to --local only"
    start_containers
fi
