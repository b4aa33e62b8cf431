# Sourced by the other scripts: start_redis_cluster runs a throwaway Redis
# Cluster of three primaries (no replicas, no persistence) on free loopback
# ports, and sets WSPUSH_REDIS_CLUSTER_URL to its seed URLs separated by
# commas, the form --redis-url takes. stop_redis_cluster stops it and removes
# its files. Needs scripts/services.sh sourced first (log, port_open,
# ensure_redis).
#
#   . scripts/services.sh; . scripts/redis-cluster.sh
#   start_redis_cluster && trap stop_redis_cluster EXIT

redis_cluster_dir=
redis_cluster_ports=()

# free_port_pair prints a port p such that p and p+10000 (the cluster bus)
# are both closed.
free_port_pair() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 10000))
    if ! port_open "$p" && ! port_open $((p + 10000)); then
      echo "$p"
      return 0
    fi
  done
  log "no free port pair found"
  return 1
}

start_redis_cluster() {
  ensure_redis
  redis_cluster_dir=$(mktemp -d /tmp/wspush-redis-cluster.XXXXXX)
  redis_cluster_ports=()
  local p i addrs=() urls=()
  for ((i = 0; i < 3; i++)); do
    p=$(free_port_pair) || return 1
    mkdir -p "$redis_cluster_dir/$p"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$p" --cluster-enabled yes \
      --cluster-config-file "$redis_cluster_dir/$p/nodes.conf" --cluster-node-timeout 5000 \
      --save "" --appendonly no --dir "$redis_cluster_dir/$p" \
      --pidfile "$redis_cluster_dir/$p/redis.pid" --logfile "$redis_cluster_dir/$p/redis.log"
    redis_cluster_ports+=("$p")
    addrs+=("127.0.0.1:$p")
    urls+=("redis://127.0.0.1:$p")
  done
  for p in "${redis_cluster_ports[@]}"; do wait_port "$p" 10 "redis cluster node $p" || return 1; done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$redis_cluster_dir/create.log" 2>&1 || {
    log "redis cluster create failed: $(tail -5 "$redis_cluster_dir/create.log")"
    return 1
  }
  for ((i = 0; i < 100; i++)); do
    if redis-cli -p "${redis_cluster_ports[0]}" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
      WSPUSH_REDIS_CLUSTER_URL=$(IFS=,; echo "${urls[*]}")
      export WSPUSH_REDIS_CLUSTER_URL
      log "redis cluster up: $WSPUSH_REDIS_CLUSTER_URL"
      return 0
    fi
    sleep 0.1
  done
  log "redis cluster did not reach cluster_state:ok"
  return 1
}

stop_redis_cluster() {
  local p
  for p in "${redis_cluster_ports[@]}"; do
    redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true
  done
  [ -n "$redis_cluster_dir" ] && rm -rf "$redis_cluster_dir"
  redis_cluster_ports=()
  redis_cluster_dir=
}
