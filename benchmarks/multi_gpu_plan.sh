#!/usr/bin/env bash
# The 2-GPU record in one device call of at most 10 minutes (docs/distributed.md, "Measuring on 2 GPUs").
#
#   bash benchmarks/multi_gpu_plan.sh                      # every step, in order of importance
#   bash benchmarks/multi_gpu_plan.sh profile ablations    # only these steps (a second call)
#
# Steps: table (1 GPU, then DDP and FSDP2 on 2 GPUs, compiled per block and eager, global batch 32×2048
# of shared_diff-350m), resume (save on 2 GPUs, resume on 1, through the trainer), sharding (13.1b with
# activation checkpointing, FSDP2 on 2 GPUs: 201 GiB of training state, more than one GPU holds),
# profile (profiler summaries of FSDP2 and DDP), ablations (FSDP2 options), accumulation (grad_sync under
# gradient accumulation). Each row is printed as soon as it is measured; results go to $OUT (flat, at most
# 6 files: rows.jsonl, profiles.json, resume_world_sizes.json, data_parallel-*.json, plan.log). No step
# starts after $BUDGET seconds (default 550); a running step is stopped at that point, keeping its rows.
# SMOKE=1 runs the same plan on the CPU (gloo, tiny model) to check the script; DRY=1 prints each step's
# command and runs none (tests/benchmarks/test_plans.py checks them against the scripts' arguments).
set -u
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=src NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
OUT=${OUT:-/tmp/multi_gpu_plan}
BUDGET=${BUDGET:-550}
mkdir -p "$OUT"
START=$(date +%s)
END=$((START + BUDGET))
LOGS=$(mktemp -d)
STEPS=("$@")
((${#STEPS[@]})) || STEPS=(table resume sharding profile ablations accumulation)

BENCH=(python3 benchmarks/data_parallel.py --out "$OUT" --deadline "$((END - 15))")
TORCHRUN=(python3 -m torch.distributed.run --standalone --nproc_per_node=2)
DP=(benchmarks/data_parallel.py --out "$OUT" --deadline "$((END - 15))")
SIZE=(--preset shared_diff-350m --seq-len 2048 --global-batch 32)  # 1 GPU: 32 per forward; 2 GPUs: 16 each
ACCUMULATION=(--preset shared_diff-350m --seq-len 2048 --global-batch 64 --micro-batch 16)
SHARDED=(--preset shared_diff-13.1b --seq-len 4096 --global-batch 2 --micro-batch 1)
RESUME=(--gpus 2)
if [[ ${SMOKE:-0} == 1 ]]; then  # the same plan on CPU (gloo) with a tiny model, to check the script itself
    SIZE=(--preset shared_diff-tiny --seq-len 64 --global-batch 8 --device cpu)
    ACCUMULATION=(--preset shared_diff-tiny --seq-len 64 --global-batch 16 --micro-batch 4 --device cpu)
    SHARDED=(--preset shared_diff-tiny --seq-len 64 --global-batch 2 --micro-batch 1 --device cpu)
    RESUME=(--gpus 2 --preset shared_diff-tiny --seq-len 64 --global-batch 4 --steps 4 --resume-at 2 --device cpu)
fi

elapsed() { echo $(($(date +%s) - START)); }

# run_step NAME SECONDS_NEEDED COMMAND...: skipped when fewer seconds are left; its full output goes to
# plan.log, its ROW/PROFILE/RESUME/SKIP lines to the screen as they come, its last lines on failure.
run_step() {
    local name=$1 need=$2
    shift 2
    if [[ ${DRY:-0} == 1 ]]; then
        printf 'PLAN command:'
        printf ' %q' "$@"
        echo
        return
    fi
    local left=$((END - $(date +%s)))
    if ((left < need)); then
        echo "PLAN skip $name: ${left} s left, it needs ${need} s"
        return
    fi
    echo "PLAN $name starts at +$(elapsed) s"
    : >"$LOGS/$name.log"
    timeout -k 10 "$left" "$@" >>"$LOGS/$name.log" 2>&1 &
    local pid=$!
    tail -n +1 -f --pid="$pid" "$LOGS/$name.log" | grep --line-buffered -E "ROW |PROFILE |RESUME |SKIP |START "
    wait "$pid"
    local rc=$?
    { echo "===== $name (rc $rc)"; cat "$LOGS/$name.log"; } >>"$OUT/plan.log"
    if ((rc != 0)); then
        echo "PLAN $name failed (rc $rc; 124 = out of time); its last lines:"
        tail -n 25 "$LOGS/$name.log"
    fi
    echo "PLAN $name done at +$(elapsed) s"
}

for step in "${STEPS[@]}"; do
    case $step in
    table)
        run_step table-1gpu 120 "${BENCH[@]}" "${SIZE[@]}" --tag table --forms single/block single/eager
        run_step table-2gpu 120 "${TORCHRUN[@]}" "${DP[@]}" "${SIZE[@]}" --tag table \
            --forms ddp/block fsdp/block ddp/eager fsdp/eager
        ;;
    resume)
        run_step resume 75 python3 benchmarks/resume_world_sizes.py "${RESUME[@]}" --out "$OUT" \
            --work /tmp/resume_world_sizes
        rm -rf /tmp/resume_world_sizes
        ;;
    sharding)
        run_step sharding 60 "${TORCHRUN[@]}" "${DP[@]}" "${SHARDED[@]}" --tag sharding --warmup 1 --steps 3 \
            --reserve 30 --forms fsdp/eager,activation_checkpointing=true
        ;;
    profile)
        run_step profile 60 "${TORCHRUN[@]}" "${DP[@]}" "${SIZE[@]}" --tag profile --profile --warmup 2 --steps 3 \
            --reserve 30 --forms fsdp/block ddp/block fsdp/eager
        ;;
    ablations)
        run_step ablations 60 "${TORCHRUN[@]}" "${DP[@]}" "${SIZE[@]}" --tag ablation --warmup 2 --steps 5 \
            --reserve 30 --forms fsdp/block,prefetch_blocks=2 fsdp/block,reshard_after_forward=never \
            fsdp/block,param_dtype=fp32 fsdp/block,reshard_after_forward=always
        ;;
    accumulation)
        run_step accumulation 60 "${TORCHRUN[@]}" "${DP[@]}" "${ACCUMULATION[@]}" --tag accumulation --warmup 2 \
            --steps 4 --reserve 30 \
            --forms fsdp/block,grad_sync=last fsdp/block,grad_sync=every ddp/block
        ;;
    *)
        echo "PLAN unknown step $step (table resume sharding profile ablations accumulation)"
        ;;
    esac
done

if [[ -f $OUT/rows.jsonl ]]; then
    python3 benchmarks/data_parallel.py --table "$OUT/rows.jsonl"
fi
rm -rf "$LOGS"
echo "PLAN finished at +$(elapsed) s; files in $OUT:"
ls -la "$OUT"
