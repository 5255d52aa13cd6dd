#!/usr/bin/env bash
# The embedded default, for trying PlayPay: SQLite under var/, tasks in-process,
# sandbox carriers and demo data; serves the admin and the API on 127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements.txt
export DEBUG="${DEBUG:-true}"
.venv/bin/python manage.py migrate --noinput
.venv/bin/python manage.py migrate --noinput --database journal
.venv/bin/python manage.py seed_demo
# The periodic jobs (retries, unknown outcomes, expiry, webhooks) run in a side process.
.venv/bin/python manage.py run_scheduler &
scheduler=$!
trap 'kill "$scheduler" 2>/dev/null' EXIT
echo "Serving on http://127.0.0.1:8000/ (admin: /admin/, API docs: /api/docs/). Ctrl-C stops."
.venv/bin/python manage.py runserver 127.0.0.1:8000
