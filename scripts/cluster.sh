#!/usr/bin/env bash
# Runs a local wspush cluster: Redis and RabbitMQ (installed and started if
# missing), one simulated data center, and N wspush nodes on consecutive
# ports, all on loopback. It stays in the foreground; Ctrl-C stops what it
# started (Redis and RabbitMQ keep running).
#
#   scripts/cluster.sh            # 3 nodes on :8080, :8081, :8082
#   scripts/cluster.sh 6 9000     # 6 nodes on :9000..:9005
#   WSPUSH_LOG_LEVEL=debug scripts/cluster.sh 2
#   POLLER=off scripts/cluster.sh 2 # no data center, no poller (benchmarks)
#   REDIS_CLUSTER=1 scripts/cluster.sh 2 # on a throwaway 3-primary Redis Cluster
#
# Every node also reads the WSPUSH_* environment (see wspush --help).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh

nodes=${1:-3}
base=${2:-8080}
dc_port=${DATACENTER_PORT:-9090}
poller=${POLLER:-on}
redis_url=${WSPUSH_REDIS_URL:-redis://127.0.0.1:6379/0}
amqp_url=${WSPUSH_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672}
case "$nodes" in '' | *[!0-9]*) echo "usage: $0 [nodes] [base-port]" >&2; exit 2 ;; esac
case "$poller" in on | off) ;; *) echo "POLLER=$poller: want on or off" >&2; exit 2 ;; esac

ensure_go
ensure_redis
ensure_rabbitmq
redis_cluster=${REDIS_CLUSTER:-0}
if [ "$redis_cluster" = 1 ]; then
  . scripts/redis-cluster.sh
  start_redis_cluster
  redis_url=$WSPUSH_REDIS_CLUSTER_URL
fi

bin=$(mktemp -d /tmp/wspush-cluster.XXXXXX)
pids=()
stop() {
  trap - INT TERM EXIT
  log "stopping ${#pids[@]} processes"
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  rm -f "$bin/wspush" "$bin/datacenter" # the logs stay for a look
  if [ "$redis_cluster" = 1 ]; then stop_redis_cluster; fi
}
trap stop INT TERM EXIT

log "building into $bin"
go build -o "$bin/" ./cmd/wspush ./cmd/datacenter

poll_args=()
if [ "$poller" = on ]; then
  "$bin/datacenter" --addr "127.0.0.1:$dc_port" >"$bin/datacenter.log" 2>&1 &
  pids+=($!)
  wait_port "$dc_port" 10 datacenter
  poll_args=(--datacenter-url "http://127.0.0.1:$dc_port")
fi

for ((i = 0; i < nodes; i++)); do
  port=$((base + i))
  "$bin/wspush" --addr "127.0.0.1:$port" --node-id "node-$port" \
    --redis-url "$redis_url" --amqp-url "$amqp_url" \
    "${poll_args[@]}" >"$bin/node-$port.log" 2>&1 &
  pids+=($!)
done
for ((i = 0; i < nodes; i++)); do
  wait_port $((base + i)) 20 "wspush node $((base + i))"
done

log "cluster up: $nodes nodes"
for ((i = 0; i < nodes; i++)); do
  log "  http://127.0.0.1:$((base + i))/   (ws://127.0.0.1:$((base + i))/ws, log $bin/node-$((base + i)).log)"
done
if [ "$poller" = on ]; then
  log "data center http://127.0.0.1:$dc_port (app: any, keys: any)"
fi
log "Ctrl-C stops the cluster"
wait -n "${pids[@]}" || true
log "a process exited; see the logs in $bin"
