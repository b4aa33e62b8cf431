#!/usr/bin/env bash
# The fault suite of issue 8 in its long form: 3-node clusters, 25 s runs,
# one fault each (AMQP connections closed, Redis clients killed, a Redis
# stall, the store's keys deleted, kill -9 and kill -STOP of a node, a
# burst), then the table of what every subscriber received.
#
#   scripts/chaos.sh                   # the long form
#   scripts/chaos.sh -chaos.global     # stall with CLIENT PAUSE ALL (stops every client of that Redis)
#   RUN=TestNodeKilled scripts/chaos.sh
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/services.sh
ensure_go
ensure_redis
ensure_rabbitmq # with the consistent-hash exchange the partitioned ingest needs

export WSPUSH_REQUIRE_SERVICES=1
go test -count=1 -v -timeout 30m -run "${RUN:-.}" ./internal/chaos/ -args -chaos.long "$@"
