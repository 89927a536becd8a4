#!/usr/bin/env bash
# Runs fanfare and the Node.js design it grew from (benches/peers/node-seed) side by side, with
# the same number of workers and the same Redis, drives both with `fanfare bench`, and writes
# a Markdown table (also saved under benches/results/).
#
#   benches/compare.sh                    # defaults below
#   WORKERS=2 CONNECTIONS=1000 MESSAGES=20000 BROADCAST_CONNECTIONS=10000 benches/compare.sh
#
# Needs: cargo, node + npm, redis-server. Installs the peer's dependencies itself.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=${WORKERS:-2}
CONNECTIONS=${CONNECTIONS:-1000}
MESSAGES=${MESSAGES:-20000}
BROADCAST_CONNECTIONS=${BROADCAST_CONNECTIONS:-10000}
BROADCASTS=${BROADCASTS:-100}
IDLE=${IDLE:-15000}
SECRET=compare-secret
KEY=compare-key
REDIS_PORT=${REDIS_PORT:-6391}
FANFARE_PORT=${FANFARE_PORT:-9611}
NODE_PORT=${NODE_PORT:-9612}

command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq; }
# The peer keeps one descriptor per connection too.
ulimit -n "$(ulimit -Hn)"
cargo build --release --quiet
(cd benches/peers/node-seed && npm ci --no-audit --no-fund --silent)
BIN=target/release/fanfare
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
pids+=($!)

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "nothing on port $1" >&2; exit 1; }
wait_port "$REDIS_PORT"

start_fanfare() { # $1: extra flags
  # shellcheck disable=SC2086
  $BIN serve --listen "127.0.0.1:$FANFARE_PORT" --workers "$WORKERS" --token-secret $SECRET --api-key $KEY $1 2>/dev/null &
  FANFARE_PID=$!; pids+=("$FANFARE_PID"); wait_port "$FANFARE_PORT"; sleep 0.5
}
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }

start_node() {
  (cd benches/peers/node-seed && PORT=$NODE_PORT WORKERS=$WORKERS REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    TOKEN_SECRET=$SECRET API_KEY=$KEY exec node server.js 2>/dev/null) &
  NODE_PID=$!; pids+=("$NODE_PID"); wait_port "$NODE_PORT"; sleep 0.5
  NODE_PIDS="$NODE_PID,$(pgrep -P "$NODE_PID" | paste -sd,)"
}

bench() { # $1: port, $2: server pids, rest: bench flags; prints the JSON line
  local port=$1 spids=$2; shift 2
  $BIN bench --target "127.0.0.1:$port" --token-secret $SECRET --api-key $KEY --server-pid "$spids" --json "$@" 2>/dev/null | tail -1
}

declare -A R
run_all() { # $1: name, $2: port, $3: pids
  # Idle memory first, on the fresh server: later runs leave freed heap that new connections
  # would reuse without growing RSS.
  R[$1.idle]=$(bench "$2" "$3" --scenario direct --connections "$IDLE" --messages 0 --source-addrs 4)
  R[$1.direct]=$(bench "$2" "$3" --scenario direct --connections "$CONNECTIONS" --messages "$MESSAGES")
  R[$1.direct_rate]=$(bench "$2" "$3" --scenario direct --connections "$CONNECTIONS" --messages $((MESSAGES / 4)) --rate 1000)
  R[$1.broadcast]=$(bench "$2" "$3" --scenario broadcast --connections "$BROADCAST_CONNECTIONS" --messages "$BROADCASTS" --concurrency 16)
}

start_fanfare ""
run_all fanfare "$FANFARE_PORT" "$FANFARE_PID"
stop "$FANFARE_PID"
start_fanfare "--redis redis://127.0.0.1:$REDIS_PORT"
R[fanfare_redis.direct]=$(bench "$FANFARE_PORT" "$FANFARE_PID" --scenario direct --connections "$CONNECTIONS" --messages "$MESSAGES")
stop "$FANFARE_PID"
start_node
run_all node "$NODE_PORT" "$NODE_PIDS"

get() { jq -r "$2" <<<"${R[$1]}"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.1f×", a / b }'; }
row() { # label, key, jq expr, higher-is-better (1), lower-is-better (0) or no ratio (-)
  local f n r; f=$(get "fanfare.$2" "$3"); n=$(get "node.$2" "$3")
  case "$4" in 1) r=$(ratio "$f" "$n") ;; 0) r=$(ratio "$n" "$f") ;; *) r="" ;; esac
  printf '| %s | %.2f | %.2f | %s |\n' "$1" "$f" "$n" "$r"
}

out=$(mktemp)
{
  echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores, $WORKERS workers each, redis-server $(redis-server --version | grep -o 'v=[0-9.]*'), node $(node --version)."
  echo
  echo "| measure | fanfare | node peer | fanfare advantage |"
  echo "|---|---|---|---|"
  row "direct, closed loop: deliveries/s" direct .deliveries_per_second 1
  row "direct: deliveries per server CPU-second" direct .deliveries_per_server_cpu_second 1
  row "direct: server CPU µs per delivery" direct .server_cpu_us_per_delivery 0
  row "direct: p99 latency ms" direct .latency_ms.p99 0
  row "direct, open loop 1000/s: p50 ms" direct_rate .latency_ms.p50 0
  row "direct, open loop 1000/s: p99 ms" direct_rate .latency_ms.p99 0
  row "direct, open loop 1000/s: p99.9 ms" direct_rate .latency_ms.p999 0
  row "direct, open loop 1000/s: server CPU µs per delivery" direct_rate .server_cpu_us_per_delivery 0
  row "direct: bench CPU µs per delivery" direct .bench_cpu_us_per_delivery 0
  row "direct: bench share of bench + server CPU" direct .bench_cpu_share -
  row "broadcast to $BROADCAST_CONNECTIONS: deliveries/s" broadcast .deliveries_per_second 1
  row "broadcast: deliveries per server CPU-second" broadcast .deliveries_per_server_cpu_second 1
  row "broadcast: p99 latency ms" broadcast .latency_ms.p99 0
  row "broadcast: bench CPU µs per delivery" broadcast .bench_cpu_us_per_delivery 0
  row "broadcast: bench share of bench + server CPU" broadcast .bench_cpu_share -
  row "idle connection ($IDLE): server RSS bytes" idle .server_rss_bytes_per_connection 0
  echo
  echo "fanfare with --redis (every message also published to Redis), direct: $(get fanfare_redis.direct .deliveries_per_second | xargs printf '%.0f') deliveries/s, $(get fanfare_redis.direct .server_cpu_us_per_delivery | xargs printf '%.1f') µs server CPU per delivery, p99 $(get fanfare_redis.direct .latency_ms.p99) ms."
  for k in "${!R[@]}"; do
    lost=$(get "$k" .lost); dup=$(get "$k" .duplicated)
    if [ "$lost" != 0 ] || [ "$dup" != 0 ]; then echo; echo "WARNING: $k lost $lost, duplicated $dup"; fi
  done
} >"$out"
mkdir -p benches/results
cp "$out" "benches/results/compare-$(date -u +%Y%m%d-%H%M%S).md"
cat "$out"
