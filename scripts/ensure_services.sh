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

# Headless Chromium for the Prefect UI check (tests/test_ui_browser.py), from Debian's packages.
# Under CI=true a Chromium that cannot be installed fails here; elsewhere the UI test is skipped.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "services: installing chromium and chromium-driver (apt-get)"
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo -n"
    $SUDO apt-get update -q >/dev/null && \
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver >/dev/null || true
  fi
fi
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  echo "services: Chromium is installed ($(/usr/bin/chromium --version 2>/dev/null | head -1))"
elif [ "${CI:-}" = "true" ]; then
  echo "services: Chromium could not be installed (apt-get install chromium chromium-driver; CI=true)" >&2
  exit 1
else
  echo "services: Chromium is missing; the Prefect UI browser test will be skipped (not under CI)" >&2
fi
