#!/usr/bin/env bash
# History in Redis on a fleet of two `fanfare serve` processes (1 worker each) and one private
# redis-server. Not in CI (it runs for tens of seconds and wants a release build).
#
#   benches/fleet_history.sh cost 0   --connections 1000 --messages 20000   # history off
#   benches/fleet_history.sh cost 100 --connections 1000 --messages 20000   # history on
#       every connection on B, every publish to A; prints the bench's summary line and the
#       CPU Redis spent during the run (INFO cpu, user + sys)
#   benches/fleet_history.sh churn --connections 10000 --rate 2000 --duration 20 --churn 5
#       connections spread over both (history on); a churned connection resumes on the other
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/fanfare
MODE=$1; shift
HISTORY=1000
if [ "$MODE" = cost ]; then HISTORY=$1; shift; fi
REDIS_PORT=${REDIS_PORT:-6601}
redis-server --port "$REDIS_PORT" --save "" --appendonly no >/dev/null &
REDIS=$!
trap 'kill $A $B $REDIS 2>/dev/null || true' EXIT
sleep 0.3
serve() {
  local args=(--listen "127.0.0.1:$1" --workers 1 --token-secret s --api-key k
    --redis "redis://127.0.0.1:$REDIS_PORT" --node-id "$2")
  [ "$HISTORY" != 0 ] && args+=(--history-size "$HISTORY")
  "$BIN" serve "${args[@]}" 2>/dev/null &
}
serve 9801 A; A=$!
serve 9802 B; B=$!
sleep 0.8
redis_cpu() {
  redis-cli -p "$REDIS_PORT" info cpu | awk -F: '/used_cpu_(sys|user):/ {s += $2} END {printf "%.3f", s}'
}
before=$(redis_cpu)
case "$MODE" in
  cost) "$BIN" bench --target 127.0.0.1:9802 --publish-to 127.0.0.1:9801 --token-secret s \
          --api-key k --server-pid "$A,$B" "$@" | tail -12 ;;
  churn) "$BIN" bench --target 127.0.0.1:9801,127.0.0.1:9802 --token-secret s --api-key k \
          --server-pid "$A,$B" --source-addrs 4 "$@" | tail -12 ;;
  *) echo "usage: $0 cost <history-size> <bench args> | churn <bench args>" >&2; exit 2 ;;
esac
awk -v a="$(redis_cpu)" -v b="$before" 'BEGIN {printf "redis CPU during the run: %.3f s\n", a - b}'
