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

# Progress: each stage is announced with the seconds elapsed so far, and
# the slow race build says each package as its test binary is built.
stage() { printf '== [%ds] %s\n' "$SECONDS" "$*"; }
pkgs=("$@")
[ "${#pkgs[@]}" -gt 0 ] || pkgs=(./...)

stage "go mod download"
go mod download
stage "go vet ./..."
go vet ./...
# The race build of every test binary takes minutes on a small machine:
# built here with the tests not run (-exec true), one line per package, then
# go test finds them in the build cache.
stage "building test binaries with -race: ${pkgs[*]}"
go test -race -count=1 -exec true "${pkgs[@]}" 2>&1 |
  sed -u -e 's/^ok[[:space:]]*\([^[:space:]]*\).*/   built \1/' -e '/^?[[:space:]]/d'
stage "go test -race: ${pkgs[*]} (one line per package as it finishes, in package order)"
go test -race -count=1 -timeout 20m "${pkgs[@]}"
stage "go test done"

# The JS client (userservice/client/js) against a real wspush binary. Node
# 22 has a global WebSocket, 20 has it behind a flag; on 18 the tests bring
# their own.
if [ "$#" -eq 0 ]; then
  stage "node --test userservice/client/js/test"
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
