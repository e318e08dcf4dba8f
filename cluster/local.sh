#!/usr/bin/env bash
# A local multi-node Ray cluster on one machine (a head and N worker nodes), for trying the
# cluster path anywhere: `ray job submit`, Tune sweeps, actors spread over nodes.
#
#   cluster/local.sh start [NUM_WORKERS]   # head + workers on 127.0.0.1 (default 1 worker)
#   cluster/local.sh status
#   cluster/local.sh stop
#
# Secure by default: every listener of every node (GCS, raylets, object managers, agents,
# metrics, Ray client server, dashboard / job server, workers) binds to 127.0.0.1 only, and
# token authentication is on (RAY_AUTH_MODE=token; the token is generated once into
# ~/.ray/auth_token, readable by its owner only: 0600). tests/cluster checks both with `ss`.
#
# How: Ray binds its servers to loopback only when a node's IP is exactly 127.0.0.1, but
# `ray start` replaces 127.0.0.1 by the machine's address ("remotely reachable") and refuses
# extra nodes unless multi-node clusters are enabled. So nodes are started through a small
# launcher that keeps 127.0.0.1, and every Ray process of the cluster (hence every driver it
# starts, e.g. a `ray job submit` entrypoint) runs with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
# which makes Ray resolve "127.0.0.1" to itself. Clients outside the cluster reach it through
# the dashboard (http://127.0.0.1:DASH_PORT) or `cluster/local.sh status`.
#
# Ports and the temp dir are configurable so a test can run its own cluster next to another Ray:
#   MBMPO_RAY_PORT (6390), MBMPO_DASHBOARD_PORT (8275), MBMPO_RAY_TMP (/tmp/mbmpo_ray_cluster),
#   MBMPO_CPUS_PER_NODE (1), RAY (path to the ray executable; default: .venv/bin/ray, else ray
#   on PATH).
#
# The nodes run with the directory of that ray (the venv's bin) first on PATH, so `python` in a
# `ray job submit` entrypoint is the venv's python, with the project installed.
set -euo pipefail

cd "$(dirname "$0")/.."
if [ -z "${RAY:-}" ]; then  # this checkout's venv first (make install), else ray on PATH
  if [ -x .venv/bin/ray ]; then RAY=.venv/bin/ray; else RAY=$(command -v ray || echo .venv/bin/ray); fi
fi
RAY=$(command -v "$RAY" || echo "$RAY")
[ -x "$RAY" ] || { echo "no ray executable at $RAY: run \`make install\` first" >&2; exit 1; }
RAY_BIN=$(cd "$(dirname "$RAY")" && pwd)
RAY="$RAY_BIN/$(basename "$RAY")"
PORT=${MBMPO_RAY_PORT:-6390}
DASH_PORT=${MBMPO_DASHBOARD_PORT:-8275}
TMP=${MBMPO_RAY_TMP:-/tmp/mbmpo_ray_cluster}
CPUS=${MBMPO_CPUS_PER_NODE:-1}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
# every process of the cluster resolves 127.0.0.1 to itself (see above)
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
PYTHON=${PYTHON:-$RAY_BIN/python}
[ -x "$PYTHON" ] || PYTHON=python3
TOKEN_FILE="$HOME/.ray/auth_token"

# `ray start` that keeps --node-ip-address 127.0.0.1 (and lets worker nodes join it)
ray_start() {
  "$PYTHON" -c '
import sys
from ray._private import ray_constants, services
services.resolve_ip_for_localhost = lambda host: host  # keep 127.0.0.1
ray_constants.ENABLE_RAY_CLUSTER = True  # worker nodes may join (this process only)
from ray.scripts.scripts import main
sys.argv[0] = "ray"
sys.exit(main())' start "$@"
}

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
  if [ -n "$(own_pids)" ]; then
    echo "a Ray cluster is already running under $TMP (cluster/local.sh stop)" >&2; exit 1
  fi
  mkdir -p "$TMP"
  export PATH="$RAY_BIN:$PATH"  # the nodes' (and so the jobs') python is the venv's
  if [ "$RAY_AUTH_MODE" = "token" ]; then
    mkdir -p "$(dirname "$TOKEN_FILE")"
    (umask 077 && "$RAY" get-auth-token --generate >/dev/null)
    chmod 600 "$TOKEN_FILE"  # also one generated earlier with a looser mode
  fi
  ray_start --head --node-ip-address 127.0.0.1 --port "$PORT" --num-cpus "$CPUS" \
    --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$DASH_PORT" \
    --ray-client-server-port $((PORT + 1)) $(node_ports 0) \
    --temp-dir "$TMP" --disable-usage-stats >/dev/null
  for i in $(seq 1 "$workers"); do
    ray_start --address "127.0.0.1:$PORT" --node-ip-address 127.0.0.1 --num-cpus "$CPUS" \
      $(node_ports "$i") --disable-usage-stats >/dev/null
  done
  echo "Ray cluster: head 127.0.0.1:$PORT + $workers worker node(s), $CPUS CPU(s) each"
  echo "  jobs:   RAY_AUTH_MODE=$RAY_AUTH_MODE $RAY job submit --address http://127.0.0.1:$DASH_PORT -- python -m mbmpo_ray train --config pendulum --variant smoke --address auto --output /tmp/mbmpo_smoke_job"
  echo "  stop:   cluster/local.sh stop"
}

descendants() {
  local child
  for child in $(pgrep -P "$1" || true); do echo "$child"; descendants "$child"; done
}

# $1 as an extended regular expression matching itself
re_escape() { printf '%s' "$1" | sed 's/[][\.*^$+?(){}|]/\\&/g'; }

# The Ray processes of THIS cluster and their children (workers, agents, job drivers): the
# daemons of its nodes are the processes (of this user) with an argument naming a session
# directory of our temp dir (`--log_dir=$TMP/session_...`, `--session-dir=...`,
# `--raylet_socket_name=...`), plus the Ray client server of our GCS port. A second cluster
# whose temp dir merely starts with ours, or a `less $TMP/...` reading a log, does not match.
own_pids() {
  local tmp_re roots
  tmp_re=$(re_escape "${TMP%/}")
  roots=$( { pgrep -u "$(id -u)" -f -- "=${tmp_re}/session_[^/ ]+(/| |$)" || true
             pgrep -u "$(id -u)" -f -- "=${tmp_re}( |$)" || true
             pgrep -u "$(id -u)" -f -- \
               "ray\.util\.client\.server .*--address=127\.0\.0\.1:${PORT}( |$)" || true
           } | sort -u)
  for p in $roots; do echo "$p"; descendants "$p"; done | sort -u
}

# Stops only THIS cluster (own_pids), not other Ray instances on the machine (`ray stop`
# would kill them all).
stop() {
  local pids n
  pids=$(own_pids)
  if [ -z "$pids" ]; then echo "nothing running: no Ray cluster under $TMP"; return 0; fi
  n=$(echo "$pids" | wc -l)
  kill $pids 2>/dev/null || true
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    sleep 0.5
    pids=$(for p in $pids; do kill -0 "$p" 2>/dev/null && echo "$p"; done || true)
    [ -z "$pids" ] && break
  done
  [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
  echo "Ray cluster under $TMP stopped ($n processes)"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  status) "$RAY" status --address "127.0.0.1:$PORT" ;;
  listeners)  # every listening socket of this cluster's processes (for checks)
    for p in $(own_pids); do ss -ltnpH 2>/dev/null | { grep "pid=$p," || true; } | awk '{print $4}'; done \
      | sort -u
    ;;
  stop) stop ;;
  *) echo "usage: $0 start [NUM_WORKERS] | status | listeners | stop" >&2; exit 2 ;;
esac
