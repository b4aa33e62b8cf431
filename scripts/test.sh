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
ensure_node
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

# The JS client (userservice/client/js) against a real wspush binary. Node
# 22 has a global WebSocket, 20 has it behind a flag; on 18 the tests bring
# their own.
if [ "$#" -eq 0 ]; then
  echo "== node --test userservice/client/js/test"
  js_tmp="$(mktemp -d)"
  go build -o "$js_tmp/wspush" ./cmd/wspush
  node_flags=()
  if ! node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null &&
    node --experimental-websocket -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null; then
    node_flags=(--experimental-websocket)
  fi
  js_rc=0
  WSPUSH_BIN="$js_tmp/wspush" timeout 300 node "${node_flags[@]}" --test userservice/client/js/test/*.test.mjs || js_rc=$?
  rm -rf "$js_tmp"
  [ "$js_rc" -eq 0 ] || { echo "== the JS client's tests failed ($js_rc)"; exit "$js_rc"; }
fi
