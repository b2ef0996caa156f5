#!/usr/bin/env bash
# Installs tracker with its test extras into .venv, then runs ruff, mypy and the whole suite on SQLite and
# on PostgreSQL (TEST_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/postgres).
# Under CI (CI=true) an unreachable PostgreSQL fails the run; locally the PostgreSQL pass is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
export PATH="$PWD/.venv/bin:$PATH"
# The dashboard's browser tests drive Debian's Chromium through Playwright (whose own browser download does not
# work here); as root, install it when it is missing. Without it they skip locally and fail under CI.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  echo "== installing chromium for the dashboard's browser tests"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
    > /dev/null 2>&1 || echo "could not install chromium; the browser tests will say so" >&2
fi

echo "== ruff"
ruff check tracker tests bench alembic
echo "== mypy (strict, tracker/)"
mypy tracker

echo "== pytest on SQLite"
TEST_DB_BACKEND=sqlite pytest -q -p no:cacheprovider "$@"

export TEST_POSTGRES_URL=${TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
if ! python - <<'PY'
import os, sys
import psycopg
try:
    psycopg.connect(os.environ["TEST_POSTGRES_URL"], connect_timeout=5).close()
except psycopg.Error as exc:
    print(f"PostgreSQL is not reachable at {os.environ['TEST_POSTGRES_URL']}: {exc}".strip())
    sys.exit(1)
PY
then
  if [ -n "${CI:-}" ]; then
    echo "CI requires PostgreSQL: failing." >&2
    exit 1
  fi
  echo "== PostgreSQL pass skipped (not reachable, and CI is not set)"
  exit 0
fi
echo "== pytest on PostgreSQL"
TEST_DB_BACKEND=postgres pytest -q -p no:cacheprovider "$@"
