#!/usr/bin/env bash
# fanfare beside sockudo 5.2 on the same Pusher-protocol load, alternating, fresh servers:
# deliveries per server CPU-second, p99 latency, server RSS per connection. Not in CI.
#
#   cargo install sockudo --version 5.2.0 --features redis   # needs protoc (protobuf-compiler)
#   cargo build --release
#   benches/vs_sockudo.sh 2 --connections 5000 --channels 100 --messages 2000
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}; shift || true
ARGS=("$@")
BIN=target/release/fanfare
SOCKUDO=${SOCKUDO:-$(command -v sockudo)}
FANFARE_PORT=9971 SOCKUDO_PORT=9972
trap 'kill $S 2>/dev/null || true' EXIT

run() { # run <name> <port> : bench against the server whose pid is $S
  sleep 1
  "$BIN" bench --protocol pusher --app-id 4242 --api-key bench-key --secret bench-secret \
    --target "127.0.0.1:$2" --scenario channel --server-pid "$S" --json "${ARGS[@]}" 2>/dev/null |
    tail -1 | jq -c --arg name "$1" '{server: $name, lost, duplicated,
      deliveries_per_server_cpu_second: (.deliveries_per_server_cpu_second | floor),
      p99_ms: .latency_ms.p99, rss_bytes_per_connection: (.server_rss_bytes_per_connection | floor)}'
  kill "$S"; wait "$S" 2>/dev/null || true
}

for _ in $(seq "$ROUNDS"); do
  "$BIN" serve --listen "127.0.0.1:$FANFARE_PORT" --workers 2 --token-secret unused --api-key unused \
    --pusher-app-id 4242 --pusher-key bench-key --pusher-secret bench-secret 2>/dev/null &
  S=$!
  run fanfare "$FANFARE_PORT"
  HOST=127.0.0.1 PORT=$SOCKUDO_PORT SOCKUDO_DEFAULT_APP_ID=4242 SOCKUDO_DEFAULT_APP_KEY=bench-key \
    SOCKUDO_DEFAULT_APP_SECRET=bench-secret SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=1000000 \
    SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=100000000 RATE_LIMITER_ENABLED=false METRICS_ENABLED=false \
    "$SOCKUDO" >/dev/null 2>&1 &
  S=$!
  run sockudo "$SOCKUDO_PORT"
done
