#!/usr/bin/env bash
# The one test command: installs what is missing (Go modules, Redis,
# RabbitMQ), starts the services if they are not running and a throwaway
# Redis Cluster for the cluster variants, then vets and runs every test with
# the race detector.
#
#   scripts/test.sh            # everything
#   scripts/test.sh ./proto/   # some packages (extra args go to go test)
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/services.sh
ensure_go
ensure_redis
ensure_rabbitmq
ensure_chromium || echo "== no Chromium: the browser test skips (fails under WSPUSH_REQUIRE_SERVICES=1)"
. scripts/redis-cluster.sh
if [ -z "${WSPUSH_REDIS_CLUSTER_URL:-}" ]; then # the Redis Cluster variants of the tests
  start_redis_cluster
  trap stop_redis_cluster EXIT
fi

echo "== go mod download"
go mod download
echo "== go vet ./..."
go vet ./...
echo "== go test -race ./..."
if [ "$#" -gt 0 ]; then
  go test -race -count=1 -timeout 20m "$@"
else
  go test -race -count=1 -timeout 20m ./...
fi
