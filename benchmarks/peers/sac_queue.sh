#!/usr/bin/env bash
# Issue 29, step 1: the model-free peer's 6 runs (SB3 SAC at rl-zoo3's tuned MuJoCo settings),
# one after another, each to 100k real steps at horizon 1000, on one core with one thread:
#   HalfCheetah-v5 seed 0, Hopper-v5 seed 0, HalfCheetah-v5 seed 1, Hopper-v5 seed 1, seed 2 of each.
# Resumable and idempotent: a finished run (CSV ends with "# done") is skipped, a cut-off one
# resumes from its last checkpoint (see benchmarks/peers/sb3_sac.py). Rerun it after a reboot.
# CSVs: benchmarks/results/peer_sac/<env>_sb3sac_seed<N>.csv. Setup of .venv-peers: see sb3_sac.py.
#
#   setsid nohup bash benchmarks/peers/sac_queue.sh > /tmp/peer_sac_queue.log 2>&1 &
#
# PEER_SAC_CPU: the core to pin to (default 1; "" = no pinning). PEER_SAC_STEPS: real steps.
# PEER_SAC_LEARNING_STARTS: SB3's learning_starts (default: the zoo's 10,000); with it set,
# the CSVs go to benchmarks/results/peer_sac_ls<N>/ (the second configuration of issue 29):
#   PEER_SAC_LEARNING_STARTS=5000 setsid nohup bash benchmarks/peers/sac_queue.sh > ... &
set -u
cd "$(dirname "$0")/../.."
PY=.venv-peers/bin/python
STEPS=${PEER_SAC_STEPS:-100000}
CPU=${PEER_SAC_CPU-1}
LS=${PEER_SAC_LEARNING_STARTS:-}
RESULTS=benchmarks/results/peer_sac${LS:+_ls$LS}
EXTRA=(--results "$RESULTS")
if [ -n "$LS" ]; then EXTRA+=(--learning-starts "$LS"); fi
PIN=()
if [ -n "$CPU" ] && command -v taskset > /dev/null; then PIN=(taskset -c "$CPU"); fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

echo "queue start $(date -u '+%F %T') pid $$ steps $STEPS pin '${PIN[*]}' results $RESULTS"
for seed in 0 1 2; do
  for env in HalfCheetah-v5 Hopper-v5; do
    csv="$RESULTS/${env}_sb3sac_seed${seed}.csv"
    if [ -f "$csv" ] && tail -n 1 "$csv" | grep -q '^# done'; then
      echo "skip $env seed $seed (done)"; continue
    fi
    echo "run $env seed $seed $(date -u '+%F %T')"
    "${PIN[@]}" "$PY" benchmarks/peers/sb3_sac.py --env "$env" --seed "$seed" \
      --steps "$STEPS" --threads 1 "${EXTRA[@]}"
    rc=$?
    if [ $rc -ne 0 ]; then echo "FAILED $env seed $seed rc=$rc"; continue; fi
    # rc 0 without "# done": stopped by SIGTERM/SIGINT, so the queue stops too (rerun resumes)
    if ! tail -n 1 "$csv" | grep -q '^# done'; then echo "stopped at $env seed $seed"; exit 0; fi
  done
done
echo "queue end $(date -u '+%F %T')"
