#!/usr/bin/env bash
# The tests need a PostgreSQL and a Redis server (SeaweedFS they start themselves). Start the machine's
# own servers when they are down; fail with a clear line when they cannot be reached.
set -euo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! up 5432 && command -v pg_ctlcluster >/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
if ! up 6379 && command -v redis-server >/dev/null; then
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
for _ in $(seq 1 30); do
  if up 5432 && up 6379; then exit 0; fi
  sleep 1
done
up 5432 || echo "PostgreSQL is not reachable on 127.0.0.1:5432 (set LORAPORT_TEST_POSTGRES to another server)" >&2
up 6379 || echo "Redis is not reachable on 127.0.0.1:6379 (set LORAPORT_TEST_REDIS to another server)" >&2
exit 1
