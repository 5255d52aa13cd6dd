#!/usr/bin/env bash
# Starts the local PostgreSQL and Redis if they are down (as on CI machines), and
# makes sure the `playpay` database exists. Does nothing for services already up.
set -uo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() {
  for _ in $(seq 1 60); do up "$1" && return 0; sleep 1; done
  echo "$2 did not come up on 127.0.0.1:$1" >&2; return 1
}

if ! up 5432; then
  echo "Starting PostgreSQL..."
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  wait_for 5432 PostgreSQL || exit 1
fi
if ! up 6379; then
  echo "Starting Redis..."
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  wait_for 6379 Redis || exit 1
fi
if command -v psql >/dev/null 2>&1; then
  for db in playpay playpay_journal; do
    psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
      psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db" || exit 1
  done
fi
exit 0
