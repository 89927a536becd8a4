#!/usr/bin/env bash
# What subscribing to and leaving many channels leaves behind: one connection sends N
# subscribe + unsubscribe pairs on distinct channels (room:0, room:1, ...); prints the server's
# RSS and Redis's keys and memory before and after. Needs redis-server, redis-cli, Node.js >= 20.
#
#   cargo build --release
#   benches/spray_channels.sh 60000                          # a fleet member (--redis), no history
#   benches/spray_channels.sh 60000 --history-size 100       # with history in Redis
#   LOCAL=1 benches/spray_channels.sh 60000 --history-size 100   # alone, history in the process
set -euo pipefail
cd "$(dirname "$0")/.."
N=$1; shift
BIN=${FANFARE_BIN:-target/release/fanfare}
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
RP=$(free_port); HP=$(free_port)
redis-server --port "$RP" --save "" --appendonly no --daemonize yes --logfile /dev/null
trap 'kill $PID 2>/dev/null; redis-cli -p $RP shutdown nosave >/dev/null 2>&1 || true' EXIT
REDIS=(--redis "redis://127.0.0.1:$RP")
[ -n "${LOCAL:-}" ] && REDIS=()
"$BIN" serve --listen "127.0.0.1:$HP" --workers 1 --token-secret s --api-key k "${REDIS[@]}" "$@" >/dev/null 2>&1 &
PID=$!
sleep 1.5
TOKEN=$("$BIN" token --secret s --sub spray --channels 'room:*')
report() {
  echo "$1: rss $(awk '/VmRSS/ {print $2}' /proc/$PID/status) KB, redis keys $(redis-cli -p "$RP" dbsize), redis $(redis-cli -p "$RP" info memory | tr -d '\r' | grep '^used_memory:')"
}
report before
node --experimental-websocket --no-warnings benches/spray_channels.mjs "ws://127.0.0.1:$HP" "$TOKEN" "$N" room:
sleep 2
report after
