#!/usr/bin/env bash
# The embedded default, for trying PlayPay: SQLite under var/, tasks in-process,
# sandbox carriers and demo data; serves the admin and the API on 127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements.txt
export DEBUG="${DEBUG:-true}"
# The sandbox app (test carriers, simulators, seed_demo, demo_traffic) is what the demo runs on.
export SANDBOX="${SANDBOX:-true}"
.venv/bin/python manage.py migrate --noinput
.venv/bin/python manage.py migrate --noinput --database journal
.venv/bin/python manage.py seed_demo
# The periodic jobs (retries, unknown outcomes, expiry, webhooks) run in a side process.
.venv/bin/python manage.py run_scheduler &
scheduler=$!
# A minute of demo traffic (players paying, declines, refunds, funnel events) once the server answers,
# so that the dashboard has something live to show. Its failure never stops the server.
traffic=""
mkdir -p var
if [ "${DEMO_TRAFFIC:-true}" = "true" ]; then
  # Then the funnel's hourly rollups are brought up to date at once (the periodic job runs every 5 min).
  { .venv/bin/python manage.py demo_traffic --wait 60 --duration "${DEMO_TRAFFIC_SECONDS:-60}" &&
    .venv/bin/python manage.py refresh_funnel_rollups --days 1; } >var/demo_traffic.log 2>&1 &
  traffic=$!
  echo "Demo traffic for ${DEMO_TRAFFIC_SECONDS:-60} s once the server is up (summary in var/demo_traffic.log; DEMO_TRAFFIC=false: none)."
fi
trap 'kill $scheduler $traffic 2>/dev/null' EXIT
echo "Serving on http://127.0.0.1:8000/ (admin: /admin/, API docs: /api/docs/). Ctrl-C stops."
.venv/bin/python manage.py runserver 127.0.0.1:8000
