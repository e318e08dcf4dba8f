#!/usr/bin/env bash
# A local multi-node Ray cluster on one machine (a head and N worker nodes), for trying the
# cluster path anywhere: `ray job submit`, Tune sweeps, actors spread over nodes.
#
#   cluster/local.sh start [NUM_WORKERS]   # head + workers on 127.0.0.1 (default 1 worker)
#   cluster/local.sh status
#   cluster/local.sh stop
#
# Secure by default: everything binds to 127.0.0.1, token authentication is on
# (RAY_AUTH_MODE=token; the token is generated once into ~/.ray/auth_token), and the dashboard /
# job server listens on 127.0.0.1 only. Ports and the temp dir are configurable so a test can
# run its own cluster next to another Ray:
#   MBMPO_RAY_PORT (6390), MBMPO_DASHBOARD_PORT (8275), MBMPO_RAY_TMP (/tmp/mbmpo_ray_cluster),
#   MBMPO_CPUS_PER_NODE (1), RAY (path to the ray executable; default: ray on PATH or .venv).
set -euo pipefail

cd "$(dirname "$0")/.."
RAY=${RAY:-$(command -v ray || echo .venv/bin/ray)}
PORT=${MBMPO_RAY_PORT:-6390}
DASH_PORT=${MBMPO_DASHBOARD_PORT:-8275}
TMP=${MBMPO_RAY_TMP:-/tmp/mbmpo_ray_cluster}
CPUS=${MBMPO_CPUS_PER_NODE:-1}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}

# Every port a node opens, offset from PORT so two clusters (or a test cluster next to a local
# `ray.init`) never collide: node i (0 = head) uses PORT + 100 * (i + 1) + {0..9} and worker
# processes use a range of 50 ports above that.
node_ports() {
  local base=$((PORT + 100 * ($1 + 1)))
  echo "--node-manager-port $base --object-manager-port $((base + 1))" \
    "--dashboard-agent-listen-port $((base + 2)) --dashboard-agent-grpc-port $((base + 3))" \
    "--runtime-env-agent-port $((base + 4)) --metrics-export-port $((base + 5))" \
    "--min-worker-port $((base + 10)) --max-worker-port $((base + 60))"
}

start() {
  local workers=${1:-1}
  mkdir -p "$TMP"
  [ "$RAY_AUTH_MODE" = "token" ] && "$RAY" get-auth-token --generate >/dev/null
  "$RAY" start --head --node-ip-address 127.0.0.1 --port "$PORT" --num-cpus "$CPUS" \
    --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$DASH_PORT" \
    --ray-client-server-port $((PORT + 1)) $(node_ports 0) \
    --temp-dir "$TMP" --disable-usage-stats >/dev/null
  for i in $(seq 1 "$workers"); do
    "$RAY" start --address "127.0.0.1:$PORT" --node-ip-address 127.0.0.1 --num-cpus "$CPUS" \
      $(node_ports "$i") --disable-usage-stats >/dev/null
  done
  echo "Ray cluster: head 127.0.0.1:$PORT + $workers worker node(s), $CPUS CPU(s) each"
  echo "  jobs:   RAY_AUTH_MODE=$RAY_AUTH_MODE ray job submit --address http://127.0.0.1:$DASH_PORT --working-dir . -- mbmpo-ray train --config pendulum --variant smoke --address auto"
  echo "  stop:   cluster/local.sh stop"
}

descendants() {
  local child
  for child in $(pgrep -P "$1" || true); do echo "$child"; descendants "$child"; done
}

# Stops only THIS cluster (every process started with our temp dir, and their children), not
# other Ray instances on the machine (`ray stop` would kill them all).
stop() {
  local roots pids
  roots=$(pgrep -f -- "$TMP" || true)
  if [ -z "$roots" ]; then echo "no cluster running under $TMP"; return 0; fi
  pids=$(for p in $roots; do echo "$p"; descendants "$p"; done | sort -u)
  kill $pids 2>/dev/null || true
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    sleep 0.5
    pids=$(for p in $pids; do kill -0 "$p" 2>/dev/null && echo "$p"; done || true)
    [ -z "$pids" ] && break
  done
  [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
  echo "Ray cluster under $TMP stopped"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  status) "$RAY" status --address "127.0.0.1:$PORT" ;;
  stop) stop ;;
  *) echo "usage: $0 start [NUM_WORKERS] | status | stop" >&2; exit 2 ;;
esac
