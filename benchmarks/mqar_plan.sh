#!/usr/bin/env bash
# The MQAR grid's GPU cost in one device call of at most 9 minutes (docs/evaluation.md, "Retrieval runs").
#
#   OUT=$OUT bash benchmarks/mqar_plan.sh                       # every piece, in order of importance
#   OUT=$OUT bash benchmarks/mqar_plan.sh compiled-1 overhead   # only these pieces (a second call)
#   DRY=1 OUT=/tmp/mqar_plan bash benchmarks/mqar_plan.sh       # the CPU dry run that checks the script
#
# Pieces (benchmarks/mqar_plan.py `pieces`), in order: short runs (300 steps, evaluated at 150 and 300) of
# the MQAR recipe through `shareddiff reproduce --jobs J`, J = runs per GPU × GPUs, in the cells (N, batch, D)
# = (64, 512, 64), (128, 512, 128), (256, 256, 256), (512, 128, 256) of the three variants: eager with 1 run
# per GPU (smallest and largest cell); 8 runs per GPU eager, with CUDA graphs (train.compile_mode
# reduce-overhead) and compiled (torch.compile); `overhead` (a step, an evaluation, a checkpoint and a record
# of the transformer, timed in one process); 4 per GPU eager; the compiled forms with 1 and 4 per GPU. No piece starts after $BUDGET
# seconds (default 500) and each stops at its own limit (rc 124; PIECE_SECONDS sets one limit for all),
# keeping what its runs logged (a run cut off still has its speed). MQAR is synthetic: no data is needed.
# Results in $OUT: mqar_plan.json, mqar_plan.txt (speeds and the projected GPU-minutes of mqar_budget and
# mqar), overhead.json, plan.log.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/mqar_plan}
BUDGET=${BUDGET:-500}
DRY=${DRY:-0}
SCRATCH=$(mktemp -d /tmp/mqar_plan.XXXXXX)
LOGS=$SCRATCH/logs
mkdir -p "$OUT" "$LOGS"
START=$(date +%s)
END=$((START + BUDGET))
elapsed() { echo $(($(date +%s) - START)); }

# the GPUs, and the seconds a run's process needs to start (Python, torch, the package, the device), which the
# projection adds to every run
t0=$(date +%s.%N)
GPUS=$($PY -c "import torch, shareddiff.cli, shareddiff.train
torch.zeros(1, device='cuda' if torch.cuda.is_available() else 'cpu')
print(torch.cuda.device_count())")
STARTUP=$(echo "$t0 $(date +%s.%N)" | awk '{printf "%.2f", $2 - $1}')
GPUS=${GPUS:-0}
dry=()
if [[ $DRY == 1 ]]; then
    dry=(--dry)
    GPUS=0
fi
echo "PLAN $GPUS GPU(s), a process starts in $STARTUP s, budget $BUDGET s, scratch $SCRATCH"

# run_piece NAME SECONDS COMMAND: under min(SECONDS, what is left) seconds; its status to pieces.jsonl, the
# end of its output (and of its runs' logs when it failed) to plan.log
run_piece() {
    local name=$1 limit=$2 cmd=$3
    local left=$((END - $(date +%s)))
    if ((left < 20)); then
        echo "PLAN skip $name: $left s left"
        echo "{\"name\": \"$name\", \"skipped\": true, \"left_s\": $left}" >>"$SCRATCH/pieces.jsonl"
        return
    fi
    limit=${PIECE_SECONDS:-$limit}  # one limit for every piece (a quick check)
    ((limit > left)) && limit=$left
    echo "PLAN $name starts at +$(elapsed) s (limit $limit s)"
    local t0
    t0=$(date +%s)
    timeout -k 10 "$limit" bash -c "$cmd" >"$LOGS/$name.log" 2>&1
    local rc=$?
    local took=$(($(date +%s) - t0))
    echo "{\"name\": \"$name\", \"rc\": $rc, \"seconds\": $took, \"limit_s\": $limit}" >>"$SCRATCH/pieces.jsonl"
    { echo "===== $name (rc $rc, $took s; 124 = out of time)"; tail -n 40 "$LOGS/$name.log"; } >>"$OUT/plan.log"
    if ((rc != 0 && rc != 124)); then
        for log in $(grep -l -s "Error\|Traceback" "$SCRATCH"/runs/"$name"/*/reproduce.log | head -n 3); do
            { echo "----- $log"; tail -n 20 "$log"; } >>"$OUT/plan.log"
        done
    fi
    echo "PLAN $name: rc $rc after $took s"
}

mapfile -t PIECES < <($PY benchmarks/mqar_plan.py prepare --scratch "$SCRATCH" --out "$OUT" --gpus "$GPUS" \
    "${dry[@]}" --only "$@")
for line in "${PIECES[@]}"; do
    IFS=$'\t' read -r name limit cmd <<<"$line"
    run_piece "$name" "$limit" "$cmd"
done

$PY benchmarks/mqar_plan.py report --scratch "$SCRATCH" --out "$OUT" --gpus "$GPUS" --startup-s "$STARTUP" "${dry[@]}"
echo "PLAN finished at +$(elapsed) s; files in $OUT:"
ls -la "$OUT"
rm -rf "$SCRATCH"
