#!/usr/bin/env bash
# Show the features table with psql, laid out like the challenge's example, and the latest runs.
#
#   DATABASE_URL  the database to read (default: the one ./build.sh started the function with,
#                 else postgresql://postgres@127.0.0.1:5432/postgres; PG* variables work too)
#   DB_SCHEMA     schema of the tables (default public)
set -euo pipefail
cd "$(dirname "$0")"
url=${DATABASE_URL:-}
if [ -z "$url" ] && [ -s .run/database_url ]; then url=$(cat .run/database_url); fi
if [ -z "$url" ] && [ -z "${PGHOST:-}" ]; then url="postgresql://postgres@127.0.0.1:5432/postgres"; fi
schema=${DB_SCHEMA:-public}
command -v psql >/dev/null || { echo "query.sh: psql is not installed (Debian: apt-get install postgresql-client)" >&2; exit 2; }

args=()
[ -z "$url" ] || args+=("$url")
psql "${args[@]}" -X --set ON_ERROR_STOP=1 --set schema="$schema" <<'SQL'
SELECT user_id               AS id,
       user_name,
       total_experiments,
       most_common_compounds AS common_compound,
       average_experiments
  FROM :"schema".user_features
 ORDER BY user_id
 LIMIT 50;
SELECT id AS run_id, status, policy, users_written, started_at, finished_at - started_at AS took
  FROM :"schema".etl_runs
 ORDER BY id DESC
 LIMIT 5;
SQL
