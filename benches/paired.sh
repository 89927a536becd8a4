#!/usr/bin/env bash
# Paired runs of two builds of `fanfare serve`, alternating (A B A B …), for a before/after
# claim: idle bytes per connection, server CPU per delivery for direct messages, broadcasts and
# direct messages with history (in this process). Fresh server per run, 2 workers, the NEW
# build's `fanfare bench` as the load generator. Not in CI (minutes, wants release builds).
#
#   git worktree add /tmp/before <commit> && (cd /tmp/before && cargo build --release)
#   cargo build --release
#   benches/paired.sh /tmp/before/target/release/fanfare target/release/fanfare 3
#   SCENARIOS="direct-us" benches/paired.sh OLD NEW 7    # some scenarios only
#
# Prints one line per run and scenario, then the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 ROUNDS=${3:-3}
SCENARIOS=${SCENARIOS:-idle-bytes direct-us broadcast-us history-direct-us}
BENCH=$NEW
PORT=${PORT:-9931}
out=$(mktemp)
trap 'kill $S 2>/dev/null || true; rm -f "$out"' EXIT

run() { # run <label> <binary> <metric> <serve args…> -- <bench args…>
  local label=$1 bin=$2 metric=$3; shift 3
  case " $SCENARIOS " in *" $label "*) ;; *) return ;; esac
  local serve=() bench=()
  while [ "$1" != -- ]; do serve+=("$1"); shift; done; shift
  bench=("$@")
  "$bin" serve --listen "127.0.0.1:$PORT" --workers 2 --token-secret s --api-key k \
    "${serve[@]}" 2>/dev/null &
  S=$!
  sleep 0.5
  local v
  v=$("$BENCH" bench --target "127.0.0.1:$PORT" --token-secret s --api-key k \
    --server-pid "$S" --json "${bench[@]}" | tail -1 | jq -r ".$metric")
  kill "$S"; wait "$S" 2>/dev/null || true
  printf '%s\t%s\t%s\n' "$label" "$bin" "$v" | tee -a "$out"
}

for round in $(seq "$ROUNDS"); do
  for bin in "$OLD" "$NEW"; do
    run idle-bytes "$bin" server_rss_bytes_per_connection -- \
      --connections 15000 --messages 0 --source-addrs 4
    run direct-us "$bin" server_cpu_us_per_delivery -- --connections 1000 --messages 30000
    run broadcast-us "$bin" server_cpu_us_per_delivery -- \
      --scenario broadcast --connections 10000 --messages 50 --rate 5
    run history-direct-us "$bin" server_cpu_us_per_delivery --history-size 100 -- \
      --connections 1000 --messages 30000
  done
done

echo "medians (old, new, new/old):"
for label in $SCENARIOS; do
  median() { grep -P "^$label\t$1\t" "$out" | cut -f3 | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  o=$(median "$OLD"); n=$(median "$NEW")
  printf '%s\t%s\t%s\t%.3f\n' "$label" "$o" "$n" "$(echo "$n / $o" | bc -l)"
done
