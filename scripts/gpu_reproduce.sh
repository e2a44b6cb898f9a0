#!/usr/bin/env bash
# Run reproduction runs on a GPU machine within a wall-clock budget, then pack their records.
#
#   scripts/gpu_reproduce.sh EXPERIMENT SECONDS OUT_DIR [reproduce options and --run RUN ...]
#
# Runs `shareddiff reproduce EXPERIMENT --out runs/repro --no-progress --no-summary ...` in its own process
# group, stops the whole group after SECONDS (a cut-off run resumes from its last checkpoint when the
# same command runs again on the same machine), and writes OUT_DIR/EXPERIMENT-records.tgz: every run's
# record, metrics, run_config, evaluation JSON/PNG and log, without checkpoints. Unpack it at the
# repository root, move runs/repro/EXPERIMENT/* to results/repro/EXPERIMENT/, then
# `shareddiff reproduce EXPERIMENT --summary-only`.
set -u
experiment=$1 seconds=$2 out=$3
shift 3
name=$(basename "$experiment" .toml)  # a name from configs/repro/ or a path to an experiment file
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
setsid python3 -m shareddiff.cli reproduce "$experiment" --out runs/repro --no-progress --no-summary "$@" \
    >>"$out/$name.log" 2>&1 &
pid=$!
for _ in $(seq "$seconds"); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
done
if kill -0 "$pid" 2>/dev/null; then
    echo "budget of $seconds s spent: stopping the runs (they resume from their checkpoints)" >>"$out/$name.log"
    kill -TERM -- "-$pid" 2>/dev/null
    sleep 10
    kill -KILL -- "-$pid" 2>/dev/null
fi
wait "$pid" 2>/dev/null
tar czf "$out/$name-records.tgz" --exclude=checkpoints --exclude=tensorboard "runs/repro/$name"
grep -h "val loss\|failed\|finished\|Error" "$out/$name.log" | tail -n 40
