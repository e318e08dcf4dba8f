#!/usr/bin/env bash
# The science runs still to do for BENCHMARKS.md (issues 11 and 13), one after the other, in
# order of priority. Every step is resumable and skips what is finished, so after a stop (a
# kill, a reboot, the end of a session) the same command goes on where it stopped:
#
#     mkdir -p runs && nohup benchmarks/science_queue.sh > runs/science_queue.log 2>&1 &
#
# With QUEUE_UNTIL set (any time `date -d` reads, e.g. QUEUE_UNTIL=06:30), a step that would
# not end by then (by its expected minutes, the first argument of `step`) is not started and
# the queue stops there: no run is left half done when a session or a machine loan ends.
#
# Each step writes its CSVs under benchmarks/results/ (commit them as they grow) and its
# BENCHMARKS.md section when it ends. On two cores what is left takes about 2.5 hours.
# Run nothing else CPU-heavy beside it: the runs' wall-clock figures would stretch.
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "no $PY: run 'make install' first" >&2; exit 1; }
until_s=
if [ -n "${QUEUE_UNTIL:-}" ]; then
    until_s=$(date -d "$QUEUE_UNTIL" +%s) || exit 1
fi

step() {  # step EXPECTED_MINUTES SCRIPT ARGS...
    local minutes=$1
    shift
    if [ -n "$until_s" ] && (( $(date +%s) + minutes * 60 > until_s )); then
        echo "=== $(date -u '+%F %T') stop: '$*' (~$minutes min) would not end by $QUEUE_UNTIL"
        exit 0
    fi
    echo "=== $(date -u '+%F %T') start: $*"
    "$PY" "$@"
    echo "=== $(date -u '+%F %T') exit $?: $*"
}

# the last real-step count of a finished run's CSV (MBPO's, for SAC's budget at the same
# steps); nothing while the run is unfinished
last_steps() {
    local csv="benchmarks/results/sample_efficiency/$1.csv"
    grep -q '^# done' "$csv" 2>/dev/null || return 0
    awk -F, 'NR > 1 && !/^#/ { s = $1 } END { print s }' "$csv"
}

sweep_part() {  # sweep_part NAME EXPECTED_MINUTES
    if "$PY" benchmarks/exp_sweeps.py "$1" --check; then
        echo "=== $1: every trial is in its CSVs, skipped"
        return
    fi
    step "$2" benchmarks/exp_sweeps.py "$1" --run
}

efficiency=benchmarks/exp_sample_efficiency.py

# issue 13, claim 2: HalfCheetah model bias, MB-MPO vs alpha = 0 (12 trials, ~2.5 h on an idle
# machine), in parts (a fresh machine keeps no Tune state; a part whose trials are all in the
# committed CSVs is skipped): b_max = 0 (4 trials, one at a time), then one seed of one b_max
# per part (2 trials, ~25 min)
sweep_part model_bias_b0 75
for part in b0.5_seed0 b0.5_seed1 b1_seed0 b1_seed1; do
    sweep_part model_bias_$part 30
done

# issue 11: MBPO (MBPO_MINUTES of wall-clock, two hours by default: the issue's cap; less where a
# session has less left), then SAC at MBPO's real steps, horizon 1000. The two envs
# run side by side, one per core: MBPO's Learner (and with it the fit and the rollouts) runs one
# torch thread by default, and SAC gets OMP_NUM_THREADS=1 here; two MBPO runs side by side
# changed neither's seconds per iteration (2026-11-24).
mbpo_minutes=${MBPO_MINUTES:-120}
env_runs() {  # env_runs ENV: its MBPO run, then its SAC run
    local env=$1 steps
    [ -n "$(last_steps "${env}_mbpo_seed0")" ] ||
        step $((mbpo_minutes + 5)) $efficiency --env "$env" --methods mbpo --seeds 0 \
            --max-minutes "$mbpo_minutes" \
            --checkpoint-s 300
    steps=$(last_steps "${env}_mbpo_seed0")
    [ -n "$steps" ] || { echo "=== ${env}_mbpo_seed0 unfinished: stop"; return 1; }
    [ -n "$(last_steps "${env}_sac_seed0")" ] ||
        OMP_NUM_THREADS=1 step 45 $efficiency --env "$env" --methods sac --seeds 0 \
            --budget "$steps" --checkpoint-s 300
}
for env in halfcheetah_h1000 hopper_h1000; do
    env_runs $env 2>&1 | sed -u "s/^/[$env] /" &
done
wait
