#!/usr/bin/env bash
# A rolling restart of a fleet under load: 3 servers through one Redis, 15,000 connections in
# the channel scenario with history, steady publishing; each server is restarted in turn
# (SIGTERM, drained, started again). The bench's connections come back as the JavaScript
# client does (--reconnect-within) on the next server, resuming. Two modes, same run:
#   spread:  --shutdown-timeout 10 (closes spread over 7.5 s), clients back within 5 s
#   at once: --shutdown-timeout 2 (no spread), clients back at once
# Reports lost/duplicated (must be 0) and the most reconnections any server took in a second.
#
#   cargo build --release
#   benches/rolling_restart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/fanfare}
CONNECTIONS=${CONNECTIONS:-15000}
REDIS_PORT=${REDIS_PORT:-9960}
PORTS=(9961 9962 9963)
redis-server --port "$REDIS_PORT" --save "" --appendonly no --dir /tmp --daemonize no \
  >/dev/null 2>&1 &
R=$!
pids=()
trap 'kill ${pids[*]:-} $R 2>/dev/null || true' EXIT
sleep 0.5

for mode in spread:10:5 at-once:2:0; do
  IFS=: read -r name timeout within <<<"$mode"
  prefix="rr-$name-$RANDOM:"
  pids=()
  for p in "${PORTS[@]}"; do
    "$BIN" serve --listen "127.0.0.1:$p" --workers 1 --token-secret s --api-key k \
      --redis "redis://127.0.0.1:$REDIS_PORT" --redis-prefix "$prefix" --node-id "n$p" \
      --history-size 1000 --shutdown-timeout "$timeout" 2>/dev/null &
    pids+=($!)
  done
  sleep 1
  out=$(mktemp)
  "$BIN" bench --target "$(printf '127.0.0.1:%s,' "${PORTS[@]}" | sed 's/,$//')" \
    --publish-to "$(printf '127.0.0.1:%s,' "${PORTS[@]}" | sed 's/,$//')" \
    --token-secret s --api-key k --json --scenario channel --channels 100 \
    --connections "$CONNECTIONS" --duration 50 --rate 200 --source-addrs 4 \
    --reconnect-within "$within" --drain 15 >"$out" 2>"$out.err" &
  B=$!
  sleep 12
  for i in 0 1 2; do
    kill -TERM "${pids[$i]}"
    wait "${pids[$i]}" 2>/dev/null || true
    p=${PORTS[$i]}
    "$BIN" serve --listen "127.0.0.1:$p" --workers 1 --token-secret s --api-key k \
      --redis "redis://127.0.0.1:$REDIS_PORT" --redis-prefix "$prefix" --node-id "n$p" \
      --history-size 1000 --shutdown-timeout "$timeout" 2>/dev/null &
    pids[$i]=$!
    sleep 3
  done
  wait "$B" || true
  line=$(tail -1 "$out")
  printf '%s\tpeak reconnects/s on one server %s\treconnects %s\tlost %s\tduplicated %s\tunrecovered %s\treceived %s of %s\n' \
    "$name" "$(jq -r .peak_reconnects_per_second <<<"$line")" "$(jq -r .reconnects <<<"$line")" \
    "$(jq -r .lost <<<"$line")" "$(jq -r .duplicated <<<"$line")" "$(jq -r .unrecovered <<<"$line")" \
    "$(jq -r .received <<<"$line")" "$(jq -r .expected <<<"$line")"
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  grep -v "^ \|^\[" "$out.err" | sort | uniq -c | sort -rn | head -5; jq -c "{publish_errors, published, disconnects, resume_ms}" <<<"$line"
  rm -f "$out" "$out.err"
done
