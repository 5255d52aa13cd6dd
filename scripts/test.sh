#!/usr/bin/env bash
# Sets up and runs the whole check: formatting, lint, types, the direction of dependencies, migrations, and the
# test suite against PostgreSQL and a real Celery broker (Redis).
# Extra arguments go to pytest, e.g. scripts/test.sh -k idempotency
# The suite runs on every core (pytest-xdist, a test database per worker; PYTEST_WORKERS=0 for one
# process) and in random order (pytest-randomly; -p no:randomly or --randomly-seed=N to repeat an order).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements-dev.txt
scripts/services.sh
scripts/browser.sh

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/playpay}"
export CELERY_BROKER_URL="${CELERY_BROKER_URL:-redis://127.0.0.1:6379/0}"
export JOURNAL_URL="${JOURNAL_URL:-postgres://postgres@127.0.0.1:5432/playpay_journal}"
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff format --check"; ruff format --check .
echo "== ruff check"; ruff check .
echo "== mypy"; mypy .
echo "== lint-imports (dependencies run one way)"; lint-imports
echo "== makemigrations --check"; python manage.py makemigrations --check --dry-run
echo "== pytest (DATABASE_URL=${DATABASE_URL%%@*}@…, broker ${CELERY_BROKER_URL%%:*})"
# load: each worker takes the next tests in the suite's order as it finishes, so every worker runs the
# database tests that flush the tables (transactional, browser) after those that rely on the rows the
# migrations seed (staff roles, countries). worksteal broke that order: a worker that had run its own
# flushing tests took plain ones from another's queue, and found the roles gone.
pytest -n "${PYTEST_WORKERS:-auto}" --dist load "$@"
