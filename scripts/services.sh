# Sourced by the other scripts: make sure Go, Redis and RabbitMQ are
# installed (apt-get on Debian/Ubuntu) and running on their default loopback
# ports. Nothing here is destructive: a running service is left alone.

log() { printf '== %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds name
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    port_open "$1" && return 0
    sleep 0.1
  done
  log "$3 did not open port $1 within $2s"
  return 1
}

apt_updated=
apt_install() {
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  if [ -z "$apt_updated" ]; then
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

ensure_go() {
  if ! command -v go >/dev/null 2>&1; then
    if [ -x /usr/local/go/bin/go ]; then
      export PATH="/usr/local/go/bin:$PATH"
    else
      log "installing Go (golang-go)"
      apt_install golang-go
    fi
  fi
  ensure_go_toolchain
}

# go_wanted prints go.mod's go line (1.26.8): the oldest Go that builds the
# module. go_have prints the version of the go on PATH.
go_wanted() { sed -n 's/^go \([0-9][0-9.]*\)[[:space:]]*$/\1/p' go.mod | head -n 1; }
go_have() { go version | awk '{print $3}' | sed 's/^go//'; }

# version_lt A B: version A is older than B (1.19.8 < 1.26, 1.26 < 1.26.8).
version_lt() {
  [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" = "$1" ]
}

# ensure_go_toolchain: when the go found (a distribution's golang-go, say)
# is older than go.mod asks, use Go $want from the Go module proxy rather
# than a Go that cannot build the module. Go 1.21 and later do it
# themselves with GOTOOLCHAIN=go$want; an older go downloads the toolchain
# module (golang.org/toolchain, what GOTOOLCHAIN fetches) and is replaced
# by it on PATH.
ensure_go_toolchain() {
  local want have
  want="$(go_wanted)"
  have="$(go_have)"
  if [ -z "$want" ] || ! version_lt "$have" "$want"; then return 0; fi
  if ! version_lt "$have" 1.21; then
    log "go $have is older than go.mod's $want: using GOTOOLCHAIN=go$want (from the Go module proxy)"
    export GOTOOLCHAIN="go$want"
  else
    log "go $have is older than go.mod's $want and predates GOTOOLCHAIN: fetching go$want from the Go module proxy"
    local mod dir
    mod="golang.org/toolchain@v0.0.1-go$want.$(go env GOOS)-$(go env GOARCH)"
    dir="$(cd / && GO111MODULE=on GOFLAGS=-mod=mod go mod download -json "$mod" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    if [ -z "$dir" ] || [ ! -f "$dir/bin/go" ]; then
      log "could not download $mod"
      return 1
    fi
    # Module zips carry no file modes: make the tools executable, as the go
    # command does for a toolchain it fetched.
    chmod -R u+w "$dir" && chmod +x "$dir"/bin/* "$dir"/pkg/tool/*/*
    export PATH="$dir/bin:$PATH" GOTOOLCHAIN=local
  fi
  have="$(go_have)"
  if version_lt "$have" "$want"; then
    log "still go $have after switching toolchains, want $want"
    return 1
  fi
  log "using go $have"
}

# The JS client's tests (userservice/client/js/test) run on Node.js 18 or
# later; Debian's nodejs package is recent enough.
node_ok() {
  command -v node >/dev/null 2>&1 &&
    node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' 2>/dev/null
}
ensure_node() {
  if node_ok; then return 0; fi
  log "installing Node.js (nodejs, for the JS client's tests)"
  apt_install nodejs
  node_ok || { log "node $(node --version 2>/dev/null) is older than 18"; return 1; }
}

# The browser test (cmd/wspush/browser_test.go) drives Debian's Chromium
# headless over the DevTools protocol; $WSPUSH_CHROMIUM names another
# binary. No browser download: the package comes from the distribution.
ensure_chromium() {
  if [ -n "${WSPUSH_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 ||
    command -v chromium-browser >/dev/null 2>&1; then
    return 0
  fi
  log "installing Chromium (for the browser test)"
  apt_install chromium
}

ensure_redis() {
  if port_open 6379; then return 0; fi
  if ! command -v redis-server >/dev/null 2>&1; then
    log "installing Redis"
    apt_install redis-server
  fi
  log "starting Redis on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/wspush-redis.log
  wait_port 6379 20 Redis
}

ensure_rabbitmq() {
  if ! port_open 5672; then
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
      log "installing RabbitMQ"
      apt_install rabbitmq-server
    fi
    log "starting RabbitMQ on 127.0.0.1:5672"
    rabbitmq-server -detached
    wait_port 5672 120 RabbitMQ || return 1
  fi
  ensure_rabbitmq_hash_plugin
}

# The partitioned ingest (--ingest-partitions above 1) routes through an
# exchange of the consistent-hash plugin, which ships with RabbitMQ but is
# off by default (docs/PROTOCOL.md, "Topology"). Enabling it needs the
# broker's own rabbitmq-plugins (and root for a system install); a broker
# elsewhere (a container, another host) is left to its operator.
ensure_rabbitmq_hash_plugin() {
  local plugin=rabbitmq_consistent_hash_exchange
  if ! command -v rabbitmq-plugins >/dev/null 2>&1; then
    log "rabbitmq-plugins not found: make sure the broker has $plugin enabled (rabbitmq-plugins enable $plugin)"
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  if $SUDO rabbitmq-plugins list -e -m 2>/dev/null | grep -qx "$plugin"; then return 0; fi
  log "enabling $plugin"
  $SUDO rabbitmq-plugins enable "$plugin" >/dev/null
}
