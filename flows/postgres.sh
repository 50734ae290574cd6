#!/usr/bin/env bash
# A local PostgreSQL on 127.0.0.1 for the Prefect server (SQLite can lock with a server and workers on it).
# Usage: flows/postgres.sh start|stop|url. Installs Debian's postgresql package when it is missing (root).
set -euo pipefail
PG_PORT=${PG_PORT:-5433}
PG_DATA=${PG_DATA:-/var/tmp/handloom-postgres}   # not under /root or /tmp/pytest-*: the postgres user must reach it
PG_PASSWORD=${PG_PASSWORD:-prefect}
URL="postgresql+asyncpg://prefect:${PG_PASSWORD}@127.0.0.1:${PG_PORT}/prefect"

as_pg() {  # initdb and postgres refuse to run as root
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

start() {
  if [ -z "$(pg_bin)" ]; then
    [ "$(id -u)" = 0 ] || { echo "postgresql is not installed: sudo apt-get install -y postgresql" >&2; exit 1; }
    apt-get install -y postgresql
  fi
  local bin; bin=$(pg_bin)
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    mkdir -p "$PG_DATA"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$PG_DATA" && chmod 700 "$PG_DATA"
    local pwfile; pwfile=$(mktemp); echo "$PG_PASSWORD" > "$pwfile"; chmod 644 "$pwfile"
    as_pg "$bin/initdb" -D "$PG_DATA" -U prefect --pwfile="$pwfile" --auth=scram-sha-256 -E UTF8 >/dev/null
    rm -f "$pwfile"
  fi
  if ! as_pg "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    as_pg "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DATA" start >/dev/null
  fi
  export PGPASSWORD=$PG_PASSWORD
  psql -h 127.0.0.1 -p "$PG_PORT" -U prefect -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'prefect'" \
    | grep -q 1 || createdb -h 127.0.0.1 -p "$PG_PORT" -U prefect prefect
  echo "PostgreSQL on 127.0.0.1:$PG_PORT ($PG_DATA); point the server at it with"
  echo "  export PREFECT_API_DATABASE_CONNECTION_URL=$URL"
}

stop() {
  as_pg "$(pg_bin)/pg_ctl" -D "$PG_DATA" -m fast stop
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) echo "$URL" ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
