#!/usr/bin/env bash
# Soak: two fanfare servers share one redis-server, which is killed (-9) and restarted ROUNDS
# times while `fanfare bench` publishes at a steady rate through A to users on both (half of
# the messages cross to B through Redis). Reports
# reconnects, whether every subscription came back after every restart, the bench's losses and
# duplicates, and each server's memory before and after. Not in CI: it runs for minutes.
#
#   benches/soak.sh                       # 50 rounds
#   ROUNDS=5 CONNECTIONS=500 benches/soak.sh
#
# Losses are expected (Redis pub/sub is at-most-once: what is published while a link is down
# does not cross machines) and counted; duplicates and reordering must be 0.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-50}
CONNECTIONS=${CONNECTIONS:-2000}
RATE=${RATE:-2000}
UP_SECONDS=${UP_SECONDS:-2}
REDIS_PORT=${REDIS_PORT:-6393}
A_PORT=${A_PORT:-9621}
B_PORT=${B_PORT:-9622}
SECRET=soak-secret
KEY=soak-key
BIN=target/release/fanfare

command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq; }
ulimit -n "$(ulimit -Hn)"
cargo build --release --quiet
pids=()
REDIS_PID=
cleanup() { for p in "${pids[@]}" $REDIS_PID; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "nothing on port $1" >&2; exit 1; }
start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
  REDIS_PID=$!; wait_port "$REDIS_PORT"
}
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'; }
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz")" = 200 ]; }
rss_kb() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }

start_redis
for node in a b; do
  port=$A_PORT; [ $node = b ] && port=$B_PORT
  $BIN serve --listen "127.0.0.1:$port" --workers 1 --redis "redis://127.0.0.1:$REDIS_PORT" \
    --redis-prefix soak: --node-id $node --token-secret $SECRET --api-key $KEY 2>/dev/null &
  pids+=($!); wait_port "$port"
done
A_PID=${pids[0]}; B_PID=${pids[1]}
until ready $A_PORT && ready $B_PORT; do sleep 0.1; done

DURATION=$(( ROUNDS * (UP_SECONDS + 1) + 5 ))
BENCH_OUT=$(mktemp)
$BIN bench --target "127.0.0.1:$A_PORT" --target "127.0.0.1:$B_PORT" \
  --publish-to "127.0.0.1:$A_PORT" \
  --token-secret $SECRET --api-key $KEY --connections "$CONNECTIONS" --rate "$RATE" \
  --duration "$DURATION" --drain 5 --json >"$BENCH_OUT" 2>/dev/null &
BENCH_PID=$!
# Wait for every connection, then take the servers' memory as the baseline.
until [ "$(( $(metric $A_PORT fanfare_connections) + $(metric $B_PORT fanfare_connections) ))" -ge "$CONNECTIONS" ]; do sleep 0.2; done
sleep 1
RSS_A0=$(rss_kb "$A_PID"); RSS_B0=$(rss_kb "$B_PID")
SUBS_A=$(metric $A_PORT fanfare_bridge_subscriptions); SUBS_B=$(metric $B_PORT fanfare_bridge_subscriptions)

restored=0; worst_ms=0
for round in $(seq "$ROUNDS"); do
  sleep "$UP_SECONDS"
  kill -9 "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true
  sleep 0.5
  started=$(date +%s%N)
  start_redis
  until ready $A_PORT && ready $B_PORT; do sleep 0.02; done
  ms=$(( ($(date +%s%N) - started) / 1000000 ))
  [ "$ms" -gt "$worst_ms" ] && worst_ms=$ms
  # Every subscription is back: the servers' gauges and Redis's own count agree with before.
  on_redis=$(redis-cli -p "$REDIS_PORT" pubsub channels 'soak:*' | wc -l)
  a=$(metric $A_PORT fanfare_bridge_subscriptions); b=$(metric $B_PORT fanfare_bridge_subscriptions)
  if [ "$a" = "$SUBS_A" ] && [ "$b" = "$SUBS_B" ] && [ "$on_redis" -ge $(( SUBS_A + SUBS_B - 2 )) ]; then
    restored=$((restored + 1))
  else
    echo "round $round: subscriptions a=$a (was $SUBS_A) b=$b (was $SUBS_B) on redis=$on_redis" >&2
  fi
  printf '\rround %d/%d, ready again after %d ms' "$round" "$ROUNDS" "$ms" >&2
done
echo >&2
wait "$BENCH_PID" || true
RSS_A1=$(rss_kb "$A_PID"); RSS_B1=$(rss_kb "$B_PID")
SUMMARY=$(tail -1 "$BENCH_OUT")

echo "## Soak: $ROUNDS Redis restarts under $RATE msg/s, $CONNECTIONS connections on two servers"
echo
echo "| what | value |"
echo "|---|---|"
echo "| Redis kill -9 + restart rounds | $ROUNDS |"
echo "| rounds with every subscription restored | $restored |"
echo "| slowest return to ready (both servers) | $worst_ms ms |"
echo "| reconnects (A publish+subscribe links) | $(metric $A_PORT fanfare_bridge_reconnects_total) |"
echo "| reconnects (B) | $(metric $B_PORT fanfare_bridge_reconnects_total) |"
echo "| published / expected / received | $(jq -r '"\(.published) / \(.expected) / \(.received)"' <<<"$SUMMARY") |"
echo "| lost (at-most-once across outages) | $(jq -r .lost <<<"$SUMMARY") |"
echo "| dropped while Redis was down (A + B, counted) | $(( $(metric $A_PORT fanfare_bridge_dropped_total) + $(metric $B_PORT fanfare_bridge_dropped_total) )) |"
echo "| duplicated | $(jq -r .duplicated <<<"$SUMMARY") |"
echo "| reordered | $(jq -r .reordered <<<"$SUMMARY") |"
echo "| client disconnects | $(jq -r .disconnects <<<"$SUMMARY") |"
echo "| RSS A before → after | $((RSS_A0 / 1024)) MiB → $((RSS_A1 / 1024)) MiB |"
echo "| RSS B before → after | $((RSS_B0 / 1024)) MiB → $((RSS_B1 / 1024)) MiB |"
