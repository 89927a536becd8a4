#!/usr/bin/env bash
# fanfare through one Redis vs through a Redis Cluster of 3 masters + 3 replicas, started here
# on one machine, same run. Not in CI (it wants a release build and runs for a minute or more).
#
#   benches/cluster.sh throughput [RUNS]
#       two servers (1 worker each), every connection on B, every publish to A, so every
#       delivery crosses Redis; for each run, one Redis then the cluster: the bench's
#       deliveries/s, server CPU µs per delivery (A + B) and Redis CPU µs per delivery (every
#       redis-server of the deployment, replicas included), for the direct and batch scenarios
#   benches/cluster.sh fleet [SIZES]
#       on the cluster, fleets of SIZES (default "2 4 8") servers, each with its own 200
#       connections; a separate publisher P sends 20 direct messages to every connection; prints
#       what each server received from Redis (fanfare_bridge_received_total): flat per machine
#       however large the fleet, while P publishes more
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/fanfare
MODE=${1:-throughput}
BASE=${BASE_PORT:-7400}
DIR=$(mktemp -d)
NODES=$(seq $((BASE + 1)) $((BASE + 6)))
SERVED=()
cleanup() {
  kill "${SERVED[@]}" 2>/dev/null || true
  redis-cli -p "$BASE" shutdown nosave >/dev/null 2>&1 || true
  for p in $NODES; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT
redis-server --port "$BASE" --save "" --appendonly no --daemonize yes \
  --dir "$DIR" --pidfile "$DIR/single.pid" >/dev/null
for p in $NODES; do
  redis-server --port "$p" --save "" --appendonly no --daemonize yes --cluster-enabled yes \
    --cluster-config-file "$DIR/nodes-$p.conf" --cluster-node-timeout 2000 --dir "$DIR" \
    --pidfile "$DIR/$p.pid" >/dev/null
done
sleep 0.5
redis-cli --cluster create $(for p in $NODES; do echo "127.0.0.1:$p"; done) \
  --cluster-replicas 1 --cluster-yes >/dev/null
until redis-cli -p $((BASE + 1)) cluster info | grep -q cluster_state:ok; do sleep 0.1; done
sleep 1
SINGLE="redis://127.0.0.1:$BASE"
CLUSTER="redis+cluster://127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2))"

serve() { # port node-id url
  "$BIN" serve --listen "127.0.0.1:$1" --workers 1 --token-secret s --api-key k \
    --redis "$3" --node-id "$2" 2>/dev/null &
  SERVED+=($!)
}
ready() { for port; do until curl -sf "127.0.0.1:$port/readyz" >/dev/null; do sleep 0.1; done; done; }
stop() { kill "${SERVED[@]}" 2>/dev/null || true; wait "${SERVED[@]}" 2>/dev/null || true; SERVED=(); }
metric() { curl -s "127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
# CPU seconds the Redis processes of one deployment have used (user + sys, summed).
redis_cpu() {
  local ports=$BASE; [ "$1" = cluster ] && ports=$NODES
  for p in $ports; do redis-cli -p "$p" info cpu; done |
    awk -F: '/used_cpu_(sys|user):/ {s += $2} END {printf "%.3f", s}'
}

case "$MODE" in
throughput)
  RUNS=${2:-3}
  echo "run redis scenario deliveries/s server_cpu_us_per_delivery redis_cpu_us_per_delivery lost (dropped_by_A inbox_full_on_B)"
  for run in $(seq "$RUNS"); do
    for redis in single cluster; do
      url=$SINGLE; [ "$redis" = cluster ] && url=$CLUSTER
      serve 9811 A "$url"; A=${SERVED[-1]}
      serve 9812 B "$url"; B=${SERVED[-1]}
      ready 9811 9812
      # Closed loop (as fast as A answers), and batches at a fixed 50,000/s (B's one worker
      # would miss some of an unpaced flood: its inbox is bounded, misses are counted).
      for scenario in "direct" "batch --rate 50000"; do
        before=$(redis_cpu "$redis")
        "$BIN" bench --target 127.0.0.1:9812 --publish-to 127.0.0.1:9811 --token-secret s \
          --api-key k --server-pid "$A,$B" --scenario $scenario --connections 1000 \
          --messages 40000 --json | tail -1 > "$DIR/result.json" || true
        after=$(redis_cpu "$redis")
        python3 -c "
import json
r = json.load(open('$DIR/result.json'))
redis = ($after - $before) * 1e6 / max(r['received'], 1)
print('$run $redis ${scenario// /_} %.0f %.1f %.1f %d' % (r['deliveries_per_second'], r['server_cpu_us_per_delivery'], redis, r['lost']), end=' ')"
        echo "($(metric 9811 fanfare_bridge_dropped_total) $(metric 9812 fanfare_bridge_inbox_full_total))"
      done
      stop
    done
  done
  ;;
fleet)
  SIZES=${2:-2 4 8}
  echo "fleet_size machine connections received_from_redis"
  for size in $SIZES; do
    serve 9830 P "$CLUSTER"
    targets=()
    for i in $(seq "$size"); do serve $((9830 + i)) "M$i" "$CLUSTER"; targets+=(--target "127.0.0.1:$((9830 + i))"); done
    ready $(seq 9830 $((9830 + size)))
    "$BIN" bench "${targets[@]}" --publish-to 127.0.0.1:9830 --token-secret s --api-key k \
      --scenario direct --connections $((200 * size)) --messages $((20 * 200 * size)) \
      --json | tail -1 | python3 -c "
import json, sys
r = json.load(sys.stdin)
print('# fleet of $size: %d delivered, %d lost, %d duplicated' % (r['received'], r['lost'], r['duplicated']))"
    for i in $(seq "$size"); do
      port=$((9830 + i))
      echo "$size M$i 200 $(metric $port fanfare_bridge_received_total)"
    done
    echo "$size P 0 $(metric 9830 fanfare_bridge_received_total) (published $(metric 9830 fanfare_bridge_published_total))"
    stop
  done
  ;;
*) echo "usage: $0 throughput [runs] | fleet [sizes]" >&2; exit 2 ;;
esac
