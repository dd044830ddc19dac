#!/usr/bin/env bash
# Show the features table with psql, as it is (every column), and the latest runs.
#
#   DATABASE_URL  the database to read (default: the one ./build.sh started the function with,
#                 else postgresql://postgres@127.0.0.1:5432/postgres; PG* variables work too)
#   DB_SCHEMA     schema of the tables (default: the one ./build.sh started the function with, else public)
set -euo pipefail
cd "$(dirname "$0")"
url=${DATABASE_URL:-}
if [ -z "$url" ] && [ -s .run/database_url ]; then url=$(cat .run/database_url); fi
if [ -z "$url" ] && [ -z "${PGHOST:-}" ]; then url="postgresql://postgres@127.0.0.1:5432/postgres"; fi
schema=${DB_SCHEMA:-}
if [ -z "$schema" ] && [ -s .run/db_schema ]; then schema=$(cat .run/db_schema); fi
schema=${schema:-public}
command -v psql >/dev/null || { echo "query.sh: psql is not installed (Debian: apt-get install postgresql-client)" >&2; exit 2; }

args=()
[ -z "$url" ] || args+=("$url")
psql "${args[@]}" -X --set ON_ERROR_STOP=1 --set schema="$schema" <<'SQL'
SELECT * FROM :"schema".user_features ORDER BY user_id LIMIT 50;
SELECT id AS run_id, status, policy, users_written,
       round(extract(epoch FROM finished_at - started_at)::numeric, 2) AS seconds
  FROM :"schema".etl_runs
 ORDER BY id DESC
 LIMIT 5;
SQL
