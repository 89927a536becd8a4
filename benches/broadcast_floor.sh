#!/usr/bin/env bash
# Broadcast to 10,000 connections beside the write floor (benches/write_floor.rs), in one run:
# at 5 broadcasts/s, and closed loop (16 publishers) against the floor at the frames per write
# fanfare reached. Fresh server per row, $WORKERS workers (default 2); FANFARE_BIN=another build
# compares builds. Not in CI (a release build, ~1 min per run).
#
#   benches/broadcast_floor.sh [runs]     # default 3; prints one line per row and run
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
BIN=${FANFARE_BIN:-target/release/fanfare}
cargo build --release -q
cargo bench --bench write_floor --no-run -q 2>/dev/null
FLOOR=$(ls -t target/release/deps/write_floor-* | grep -v '\.d$' | head -1)
PORT=9910
fanfare() { # bench args...; prints "µs-per-delivery frames-per-write"
  "$BIN" serve --listen 127.0.0.1:$PORT --workers "${WORKERS:-2}" --token-secret s --api-key k \
    2>/dev/null &
  local pid=$!
  sleep 0.5
  "$BIN" bench --target 127.0.0.1:$PORT --token-secret s --api-key k --scenario broadcast \
    --connections 10000 --server-pid $pid --json "$@" 2>/dev/null | tail -1 |
    python3 -c 'import json,sys; s=json.load(sys.stdin); print("%.2f %.2f" % (s["server_cpu_us_per_delivery"], s["server_frames_per_write"]))'
  kill $pid; wait $pid 2>/dev/null || true
}
floor() { # write_floor args...; prints µs per frame
  "$FLOOR" --connections 10000 "$@" | sed -n 's/.* µs per write, \([0-9.]*\) µs per frame.*/\1/p'
}
for run in $(seq 1 "$RUNS"); do
  read -r low low_fpw < <(fanfare --messages 50 --rate 5)
  low_floor=$(floor --rounds 50 --rate 5)
  read -r high high_fpw < <(fanfare --messages 400 --concurrency 16)
  k=$(python3 -c "print(max(1, round($high_fpw)))")
  high_floor=$(floor --rounds $((400 / k)) --frames-per-write "$k")
  python3 - "$run" "$low" "$low_fpw" "$low_floor" "$high" "$high_fpw" "$k" "$high_floor" <<'PY'
import sys
run, low, lfpw, lfloor, high, hfpw, k, hfloor = sys.argv[1:]
print(f"run {run}  5/s: fanfare {low} µs/delivery ({lfpw} frames/write), floor {lfloor} µs/frame, ratio {float(low)/float(lfloor):.2f}"
      f"  |  closed loop: fanfare {high} µs/delivery ({hfpw} frames/write), floor at {k}/write {hfloor} µs/frame, ratio {float(high)/float(hfloor):.2f}")
PY
done
