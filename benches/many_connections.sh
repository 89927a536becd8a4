#!/usr/bin/env bash
# Idle connections by the hundred thousand on this one machine, then one broadcast to all.
# A process may hold 20,000 descriptors here, so the fleet is SERVERS `fanfare serve` processes
# (1 worker each, one Redis between them) and `fanfare bench` spreads CONNECTIONS over them in
# receiver processes of 15,000, from 64 source addresses. /proc/meminfo and
# /proc/net/sockstat are sampled every second; the fullest sample is printed with the one
# before the run. Not in CI.
#
#   benches/many_connections.sh 6 100000
#   benches/many_connections.sh 55 1000000
set -euo pipefail
cd "$(dirname "$0")/.."
SERVERS=${1:-6}
CONNECTIONS=${2:-100000}
BIN=target/release/fanfare
# Two shared cores cannot connect a million clients and answer every server ping in time: at
# the default 25 s, 316,493 of 999,470 connections were closed as silent (fanfare_ping_timeouts)
# while the load generator, at 90 % of the CPU, was still connecting the rest.
PING=${PING:-600}
REDIS=${REDIS:-redis://127.0.0.1:6379}
PER_SERVER=$(( (CONNECTIONS + SERVERS - 1) / SERVERS + 100 ))
sample() {
  echo "$(date +%s) $(awk '/^(MemAvailable|Slab|SUnreclaim|Percpu):/ {printf "%s %d kB  ", $1, $2}' /proc/meminfo)" \
    "$(awk '/^(TCP|sockets):/ {printf "%s ", $0}' /proc/net/sockstat)"
}
echo "before: $(sample)"
pids=()
targets=()
SAMPLER=""
trap 'kill "${pids[@]}" "$SAMPLER" 2>/dev/null || true' EXIT
for i in $(seq 1 "$SERVERS"); do
  port=$((12000 + i))
  "$BIN" serve --listen "127.0.0.1:$port" --workers 1 --token-secret s --api-key k \
    --redis "$REDIS" --redis-prefix "many$$:" --node-id "n$i" \
    --max-connections "$PER_SERVER" --ping-interval "$PING" 2>/dev/null &
  pids+=($!)
  targets+=("127.0.0.1:$port")
done
(while true; do sample; sleep 1; done) > /tmp/many_connections.$$.log &
SAMPLER=$!
sleep 2
"$BIN" bench --target "$(IFS=,; echo "${targets[*]}")" --token-secret s --api-key k \
  --scenario broadcast --connections "$CONNECTIONS" --messages 1 --source-addrs 64 --drain 120 \
  --server-pid "$(IFS=,; echo "${pids[*]}")" 2>/tmp/many_connections.$$.err | tail -12 || true
echo "fullest: $(sort -k3,3n /tmp/many_connections.$$.log | head -1)"
# What the servers counted, summed over all of them.
for t in "${targets[@]}"; do curl -s "http://$t/metrics"; done |
  awk '/^fanfare_(ping_timeouts|slow_consumer_closes|dropped_messages|frames_delivered|frames_written|connections_opened)/ {
         split($1, k, "{"); n[k[1]] += $2 } END { for (m in n) printf "%s %d\n", m, n[m] }' | sort
