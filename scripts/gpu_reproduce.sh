#!/usr/bin/env bash
# Run reproduction runs on a GPU machine within a wall-clock budget, then pack their records.
#
#   scripts/gpu_reproduce.sh EXPERIMENT SECONDS OUT_DIR [reproduce options and --run RUN ...]
#
# Runs `python3 -m shareddiff.cli reproduce EXPERIMENT --out runs/repro --no-progress --no-summary ...` in its
# own process group (python3 from PATH, or $PYTHON; it must import torch and shareddiff). The whole script
# stays within SECONDS: at SECONDS - 45 s it sends SIGINT to the group (each run finishes its step, saves a
# checkpoint and exits; a cut-off run resumes from it when the same command runs again on the same
# machine), waits up to 40 s, then kills what is left. It then writes OUT_DIR/EXPERIMENT-records.tgz: the
# record, metrics, run_config, evaluation JSON/PNG and log of the runs named by --run (names or shell patterns;
# every run of the experiment when no --run is given), without checkpoints or .lock files. Unpack it at the repository root,
# move runs/repro/EXPERIMENT/* to results/repro/EXPERIMENT/, then `shareddiff reproduce EXPERIMENT
# --summary-only`. Exits 0 when the runs finished or were stopped by the budget, nonzero when the
# reproduce command failed. In a session's last call, `--start-by S` (passed on to reproduce) starts no run
# afresh after S seconds, so that the runs under way can finish within the budget.
set -u
if [ $# -lt 3 ]; then
    echo "usage: $0 EXPERIMENT SECONDS OUT_DIR [reproduce options and --run RUN ...]" >&2
    exit 2
fi
experiment=$1 seconds=$2 out=$3
shift 3
margin=45  # the SIGINT wait (40 s) and the packing
grace=40
name=$(basename "$experiment" .toml)  # a name from configs/repro/ or a path to an experiment file
python=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
if ! "$python" -c "import torch, shareddiff" >>"$out/$name.log" 2>&1; then
    echo "error: $(command -v "$python" || echo "$python") cannot import torch and shareddiff (see $out/$name.log);" \
        "put the environment's python3 first in PATH or set PYTHON=/path/to/python" | tee -a "$out/$name.log" >&2
    exit 2
fi
echo "python: $(command -v "$python") ($("$python" -c 'import torch; print("torch", torch.__version__)'))" \
    >>"$out/$name.log"
runs=()  # the runs named by --run: the only ones packed
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
    --run) runs+=("${args[i + 1]:-}") ;;
    --run=*) runs+=("${args[i]#--run=}") ;;
    esac
done
start=$SECONDS
# a background command of a script starts with SIGINT ignored: restore it, so the stop below reaches the runs
(trap - INT && exec setsid "$python" -m shareddiff.cli reproduce "$experiment" --out runs/repro --no-progress \
    --no-summary "$@") >>"$out/$name.log" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null && [ $((SECONDS - start)) -lt $((seconds - margin)) ]; do
    sleep 1
done
stopped=0
if kill -0 "$pid" 2>/dev/null; then
    stopped=1
    echo "budget of $seconds s: stopping ${runs[*]:-the runs of $name} with SIGINT (each saves a checkpoint;" \
        "the same command resumes them)" >>"$out/$name.log"
    kill -INT -- "-$pid" 2>/dev/null
    for _ in $(seq "$grace"); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "no exit $grace s after SIGINT: killing them (they resume from their last checkpoint)" >>"$out/$name.log"
        kill -KILL -- "-$pid" 2>/dev/null
    fi
fi
wait "$pid" 2>/dev/null
code=$?
paths=()
if [ ${#runs[@]} -eq 0 ]; then
    paths=("runs/repro/$name")
else
    for run in "${runs[@]}"; do
        for dir in runs/repro/"$name"/$run; do  # unquoted: a pattern (--run '*-n64-p4-*') expands here
            [ -d "$dir" ] && paths+=("$dir")
        done
    done
fi
existing=()
for p in "${paths[@]}"; do [ -e "$p" ] && existing+=("$p"); done
if [ ${#existing[@]} -gt 0 ]; then
    tar czf "$out/$name-records.tgz" --exclude=checkpoints --exclude=tensorboard --exclude=.lock "${existing[@]}"
fi
grep -h "val loss\|failed\|finished\|Error\|^error:\|budget of\|killing" "$out/$name.log" | tail -n 40
if [ "$stopped" -eq 0 ] && [ "$code" -ne 0 ]; then
    echo "error: the reproduce command failed (exit $code); see $out/$name.log" >&2
    exit "$code"
fi
exit 0
