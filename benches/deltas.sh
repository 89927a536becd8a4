#!/usr/bin/env bash
# Bytes on the wire per delivery, side by side in one run: plain, deflate, delta, delta +
# deflate, for 2 KB documents that change a few values per message and for ~200 B chat lines.
# Channel scenario (deltas are per channel), history on, a fresh server per run, medians.
#
#   cargo build --release
#   benches/deltas.sh 3
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
BIN=${BIN:-target/release/fanfare}
CONNECTIONS=${CONNECTIONS:-2000}
PORT=${PORT:-9942}
out=$(mktemp)
trap 'kill $S 2>/dev/null || true; rm -f "$out"' EXIT

for round in $(seq "$ROUNDS"); do
  for kind in document:2000 chat:150; do
    for mode in plain deflate delta delta+deflate; do
      "$BIN" serve --listen "127.0.0.1:$PORT" --workers 2 --token-secret s --api-key k \
        --history-size 100 --compression-min-bytes 64 2>/dev/null &
      S=$!
      sleep 0.5
      ask=()
      case $mode in *deflate*) ask+=(--compression) ;; esac
      case $mode in delta*) ask+=(--delta) ;; esac
      line=$("$BIN" bench --target "127.0.0.1:$PORT" --token-secret s --api-key k --server-pid "$S" \
        --json --scenario channel --channels 10 --connections "$CONNECTIONS" --messages 500 \
        --rate 100 --payload "${kind%%:*}" --payload-bytes "${kind##*:}" "${ask[@]}" | tail -1)
      kill "$S"; wait "$S" 2>/dev/null || true
      bytes=$(jq -r .wire_bytes_per_delivery <<<"$line")
      us=$(jq -r .server_cpu_us_per_delivery <<<"$line")
      lost=$(jq -r '.lost + .duplicated' <<<"$line")
      printf '%s\t%s\t%s\t%s\t%s\n' "${kind%%:*}" "$mode" "$bytes" "$us" "$lost" | tee -a "$out"
    done
  done
done

echo "medians: payload, mode, wire bytes per delivery, share of plain, server µs per delivery"
median() { awk -F'\t' -v k="$1" -v m="$2" -v c="$3" '$1 == k && $2 == m {print $c}' "$out" |
  sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for kind in document chat; do
  plain=$(median "$kind" plain 3)
  for mode in plain deflate delta delta+deflate; do
    b=$(median "$kind" "$mode" 3)
    printf '%s\t%s\t%.0f\t%.2f\t%s\n' "$kind" "$mode" "$b" "$(echo "$b / $plain" | bc -l)" \
      "$(median "$kind" "$mode" 4)"
  done
done
