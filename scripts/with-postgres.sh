#!/usr/bin/env bash
# with-postgres.sh CMD...: runs CMD with PERLY_TEST_POSTGRES_DSN pointing at a throwaway PostgreSQL
# server on 127.0.0.1 (a fresh data directory, a free port), stopped afterwards. If the variable is
# already set, CMD runs against that server instead.
set -euo pipefail
if [ -n "${PERLY_TEST_POSTGRES_DSN:-}" ]; then exec "$@"; fi
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$pg_bin" ] || { echo "with-postgres: PostgreSQL is not installed (scripts/ensure-system-deps.sh)" >&2; exit 1; }
data=$(mktemp -d /tmp/perly-pg.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg=()
if [ "$(id -u)" = 0 ]; then chown postgres "$data"; as_pg=(runuser -u postgres --); fi
"${as_pg[@]}" "$pg_bin/initdb" -D "$data/db" -U perly --auth=trust >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$data/db" -l "$data/log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c fsync=off" start >/dev/null
trap '"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$data/db" -m fast stop >/dev/null 2>&1; rm -rf "$data"' EXIT
"${as_pg[@]}" "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U perly perly_test
export PERLY_TEST_POSTGRES_DSN="postgresql://perly@127.0.0.1:$port/perly_test"
"$@"
