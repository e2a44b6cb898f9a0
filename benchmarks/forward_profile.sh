#!/usr/bin/env bash
# What bounds the fused kernel's forward, beside standard SDPA's, in one device call on one H200
# (docs/performance.md, "The forward beside SDPA's"). Steps, each time-boxed, none past $DEADLINE s (default 400):
#   1. the forward's block shapes at N = 8192, d = 64 and 128 (attention.py --sweep FWD; the split mode's own
#      timing first; SWEEP's FWD list, the default first)
#   2. Nsight Compute, full set, on every kernel of one forward (no_grad) of standard SDPA (h heads of 2d) and of
#      the fused kernel in each of $MODES (default: split), at each size; only the kernels inside the
#      profiled calls' NVTX range, none of the inputs' creation
#   3. the report's sections (speed of light, compute workload, scheduler, warp states, instructions, occupancy,
#      launch) with their bodies, and the raw metrics behind the verdict: the stall reasons per issued
#      instruction, the pipes' utilisation, the issue rate
# Files in $OUT: forward_profile.log (every step's output), attention-*.json (step 1), forward.ncu-rep (tens of MB,
# over what a device call brings back: delete or tar it). Exit status: 2 for bad settings (before any step), 1 when
# a step failed (named on the last line), 0 otherwise.
#
#   OUT=/path/to/results bash benchmarks/forward_profile.sh
#   MODES="split lazy" OUT=... bash benchmarks/forward_profile.sh   # modes of benchmarks/attention.py to profile
#   DRY=1 bash benchmarks/forward_profile.sh       # print each step's command, run none, write nothing
#   SMOKE=1 OUT=/tmp/smoke bash benchmarks/forward_profile.sh   # steps 1-2's Python on the CPU interpreter
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
source benchmarks/plan_steps.sh  # step NAME SECONDS COMMAND..., check_attention_modes
read -r -a MODES <<<"${MODES:-split}"
check_attention_modes MODES "${MODES[@]}"  # before step 1, so that a typo does not fail minutes into the call
SIZES=(8192x64 8192x128)
SMOKE_ARGS=()
if [[ ${SMOKE:-0} == 1 ]]; then  # the Python side on the CPU interpreter: checks the plan, not the kernel
    export TRITON_INTERPRET=1
    SMOKE_ARGS=(--smoke)
    SIZES=(32x16)
fi
DEADLINE=${DEADLINE:-400}
LOG=$OUT/forward_profile.log
if [[ ${DRY:-0} == 1 ]]; then
    LOG=/dev/null  # a dry run writes nothing
else
    mkdir -p "$OUT"
    : >"$LOG"
fi
REPORT=$OUT/forward

FAILED=()  # the steps that did not end with rc 0: the plan's exit status is 1 if any
step versions 15 python3 -c 'import torch, triton; print(torch.__version__, triton.__version__,
    torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")' || FAILED+=(versions)
step "forward block shapes" 200 python3 benchmarks/attention.py "${SMOKE_ARGS[@]}" --skip-checks --no-projections \
    --modes split --sizes "${SIZES[@]}" --sweep FWD --out "$OUT" || FAILED+=("forward block shapes")
if [[ ${SMOKE:-0} == 1 ]]; then
    step "profiled passes (interpreter, no Nsight)" 60 python3 benchmarks/attention.py --smoke --profile \
        --forward-only --with-sdpa --modes "${MODES[@]}" --sizes "${SIZES[@]}" || FAILED+=("profiled passes")
elif [[ ${DRY:-0} == 1 ]] || command -v ncu >/dev/null; then
    if step "Nsight Compute" 120 ncu --clock-control none --nvtx --nvtx-include "profile/" --set full \
        --export "$REPORT" --force-overwrite \
        python3 benchmarks/attention.py --profile --forward-only --with-sdpa --modes "${MODES[@]}" --sizes "${SIZES[@]}"; then
        step "sections" 20 ncu --import "$REPORT.ncu-rep" --page details --print-details all \
            --section SpeedOfLight --section ComputeWorkloadAnalysis --section SchedulerStats \
            --section WarpStateStats --section InstructionStats --section Occupancy --section LaunchStats ||
            FAILED+=(sections)
        step "raw metrics" 20 ncu --import "$REPORT.ncu-rep" --page raw --metrics \
            "regex:^smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio$,regex:^sm__pipe_.*_cycles_active\.avg\.pct_of_peak_sustained_active$,regex:^smsp__issue_active\.avg\.pct_of_peak_sustained_active$,launch__registers_per_thread,gpu__time_duration.sum" ||
            FAILED+=("raw metrics")
    else
        FAILED+=("Nsight Compute")
    fi
else
    echo "PLAN Nsight Compute skipped (no ncu on the PATH)" | tee -a "$LOG"
fi
[[ ${DRY:-0} == 1 ]] && exit 0
echo "PLAN finished at +${SECONDS} s; files in $OUT:" | tee -a "$LOG"
ls -la "$OUT"
if ((${#FAILED[@]})); then
    echo "PLAN failed steps: ${FAILED[*]} (their output is in $LOG)" | tee -a "$LOG"
    exit 1
fi
