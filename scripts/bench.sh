#!/usr/bin/env bash
# Benchmark run: builds wspush, wsbench and datacenter into a temp dir,
# starts wspush in embedded mode on a loopback port (and a second one
# polling a simulated data center), runs the three wsbench scenarios at a
# size that finishes in a few minutes, writes JSON and SVG to
# bench/results/ and prints the summaries. Everything it starts is
# stopped on exit, Ctrl-C included. Embedded mode needs no Redis or
# RabbitMQ; CLUSTER=1 adds a fourth run that does (installed and started
# if missing): two nodes sharing them, values published over AMQP.
#
#   scripts/bench.sh
#   CAPACITY=20000 STEPS=500,1500,5000,10000 scripts/bench.sh   # bigger
#   CLUSTER=1 scripts/bench.sh                                   # + AMQP on 2 nodes
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh

CAPACITY=${CAPACITY:-5000}             # capacity: connections
FANOUT_SUBS=${FANOUT_SUBS:-1000}       # fanout: subscribers on one key
FANOUT_RATE=${FANOUT_RATE:-20}         # fanout: values per second
FANOUT_DURATION=${FANOUT_DURATION:-10s}
STEPS=${STEPS:-500,1500,5000}          # table: connection counts
STEP_DURATION=${STEP_DURATION:-10s}    # table: measured time per step
RAMP=${RAMP:-2000}                     # connections opened per second
RESULTS=${RESULTS:-bench/results}
CLUSTER=${CLUSTER:-0}                  # 1: also the AMQP run on a 2-node cluster
CLUSTER_SUBS=${CLUSTER_SUBS:-1000}     # its subscribers, over both nodes
CLUSTER_RATE=${CLUSTER_RATE:-20}       # its values per second

tmp=$(mktemp -d "${TMPDIR:-/tmp}/wspush-bench.XXXXXX")
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port prints a loopback port nobody listens on, from a random start.
free_port() {
  local p=$((20000 + RANDOM % 20000))
  while port_open "$p"; do p=$((p + 1)); done
  echo "$p"
}

wait_http() { # url name
  local i
  for ((i = 0; i < 100; i++)); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  log "$2 did not answer $1 within 10s (log: $tmp/$2.log)"
  tail -n 20 "$tmp/$2.log" >&2 || true
  return 1
}

log "building wspush, wsbench and datacenter into $tmp"
for cmd in wspush wsbench datacenter; do
  go build -o "$tmp/$cmd" "./cmd/$cmd"
done
mkdir -p "$RESULTS"

push_port=$(free_port)
"$tmp/wspush" --addr "127.0.0.1:$push_port" --log-level warn >"$tmp/wspush.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$push_port/healthz" wspush
log "wspush (embedded) on 127.0.0.1:$push_port"

dc_port=$(free_port)
"$tmp/datacenter" --addr "127.0.0.1:$dc_port" >"$tmp/datacenter.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$dc_port/healthz" datacenter
poll_port=$(free_port)
"$tmp/wspush" --addr "127.0.0.1:$poll_port" --datacenter-url "http://127.0.0.1:$dc_port" --log-level warn >"$tmp/wspush-poller.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$poll_port/healthz" wspush-poller
log "datacenter on 127.0.0.1:$dc_port, wspush polling it on 127.0.0.1:$poll_port"

failed=0
bench() { # name wsbench-args...: runs one scenario into $RESULTS/name.{json,svg,txt}
  local name=$1
  shift
  log "wsbench $*"
  if ! "$tmp/wsbench" "$@" --json "$RESULTS/$name.json" --svg "$RESULTS/$name.svg" | tee "$RESULTS/$name.txt"; then
    log "$name FAILED"
    failed=1
  fi
  echo
}

url="ws://127.0.0.1:$push_port/ws"
started=$SECONDS
bench capacity capacity --url "$url" --connections "$CAPACITY" --ramp "$RAMP" --hold 10s
bench fanout fanout --url "$url" --subscribers "$FANOUT_SUBS" --rate "$FANOUT_RATE" --duration "$FANOUT_DURATION" --ramp "$RAMP"
bench table-http table --url "$url" --steps "$STEPS" --source http --duration "$STEP_DURATION" --ramp "$RAMP"
bench table-poller table --url "ws://127.0.0.1:$poll_port/ws" --steps "$STEPS" --source poller --duration "$STEP_DURATION" --ramp "$RAMP"

if [ "$CLUSTER" = 1 ]; then
  ensure_redis
  ensure_rabbitmq
  urls=()
  for node in a b; do
    port=$(free_port)
    "$tmp/wspush" --addr "127.0.0.1:$port" --node-id "bench-$node-$port" --log-level warn \
      --redis-url redis://127.0.0.1:6379/0 --amqp-url amqp://guest:guest@127.0.0.1:5672 >"$tmp/wspush-$node.log" 2>&1 &
    pids+=($!)
    wait_http "http://127.0.0.1:$port/readyz" "wspush-$node"
    urls+=(--url "ws://127.0.0.1:$port/ws")
  done
  log "cluster of 2 nodes: ${urls[*]}"
  bench cluster-amqp fanout "${urls[@]}" --source amqp --app "bench-$$" --subscribers "$CLUSTER_SUBS" \
    --rate "$CLUSTER_RATE" --duration "$FANOUT_DURATION" --ramp "$RAMP"
fi

log "done in $((SECONDS - started))s; results in $RESULTS/:"
ls -1 "$RESULTS" >&2
if [ "$failed" != 0 ]; then
  for f in "$tmp"/*.log; do
    log "last lines of $(basename "$f")"
    tail -n 20 "$f" >&2
  done
  log "some runs failed"
  exit 1
fi
