#!/usr/bin/env bash
# permessage-deflate side by side: the same build, a fresh server per run (2 workers), the
# bench offering deflate or not, alternating (plain, deflate, plain, deflate …): server CPU per
# broadcast delivery and bytes received on the wire per delivery, medians.
#
#   cargo build --release
#   benches/compression.sh 3                                  # 2 KB documents, 10,000 connections
#   PAYLOAD=150 SERVE="--compression-min-bytes 64" benches/compression.sh 3   # ~200 B chat messages
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
BIN=${BIN:-target/release/fanfare}
PAYLOAD=${PAYLOAD:-2000}
CONNECTIONS=${CONNECTIONS:-10000}
PORT=${PORT:-9941}
out=$(mktemp)
trap 'kill $S 2>/dev/null || true; rm -f "$out"' EXIT

for round in $(seq "$ROUNDS"); do
  for mode in plain deflate; do
    # shellcheck disable=SC2086
    "$BIN" serve --listen "127.0.0.1:$PORT" --workers 2 --token-secret s --api-key k ${SERVE:-} \
      2>/dev/null &
    S=$!
    sleep 0.5
    offer=()
    [ "$mode" = deflate ] && offer=(--compression)
    line=$("$BIN" bench --target "127.0.0.1:$PORT" --token-secret s --api-key k --server-pid "$S" \
      --json --scenario broadcast --connections "$CONNECTIONS" --messages 50 --rate 5 \
      --source-addrs 4 --payload-bytes "$PAYLOAD" "${offer[@]}" | tail -1)
    kill "$S"; wait "$S" 2>/dev/null || true
    us=$(jq -r .server_cpu_us_per_delivery <<<"$line")
    bytes=$(jq -r .wire_bytes_per_delivery <<<"$line")
    lost=$(jq -r '.lost + .duplicated' <<<"$line")
    printf '%s\t%s\t%s\t%s\n' "$mode" "$us" "$bytes" "$lost" | tee -a "$out"
  done
done

echo "medians (plain, deflate, deflate/plain):"
median() { grep -P "^$1\t" "$out" | cut -f"$2" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for col in 2 3; do
  name=$([ $col = 2 ] && echo "server µs per delivery" || echo "wire bytes per delivery")
  p=$(median plain $col); d=$(median deflate $col)
  printf '%s\t%s\t%s\t%.3f\n' "$name" "$p" "$d" "$(echo "$d / $p" | bc -l)"
done
