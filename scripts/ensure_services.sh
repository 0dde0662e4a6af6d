#!/usr/bin/env bash
# Make sure the services the tests use are up: PostgreSQL on 127.0.0.1:5432 (started when down).
# Under CI=true a PostgreSQL that cannot be started fails here, loudly.
set -u
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
if ! pg_up; then
  if ls /etc/postgresql >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
    for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
  fi
fi
if pg_up; then
  echo "services: PostgreSQL is up on 127.0.0.1:5432"
elif [ "${CI:-}" = "true" ]; then
  echo "services: PostgreSQL is not reachable on 127.0.0.1:5432 and could not be started (CI=true)" >&2
  exit 1
else
  echo "services: PostgreSQL is not reachable; Postgres tests will be skipped (not under CI)" >&2
fi
