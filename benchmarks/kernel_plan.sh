#!/usr/bin/env bash
# The fused kernel's GPU record in one device call of at most 10 minutes on one H200 (docs/performance.md,
# "To measure"). Steps in order of importance, each time-boxed so that a slow compile cuts only what follows:
#   1. bf16 checks of every mode against float64 in NaN-poisoned memory (a failure ends the plan: nothing timed)
#   2. fwd and fwd+bwd per mode at N = 8192/16384, d = 64/128 (benchmarks/attention.py, keyword settings)
#   3. Nsight Compute on the key-block backward (_bwd_kernel), one launch per dQ mode, N = 8192, d = 64
#   4. fp32 checks of every mode (the exactness path; slow to compile)
#
#   OUT=/path/to/results bash benchmarks/kernel_plan.sh      # default OUT: benchmarks/results
set -u -o pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
MODES="split atomic reduce tma vsplit maps"
mkdir -p "$OUT"
python3 -c 'import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())'
timeout 170 python3 benchmarks/attention.py --checks-only --check-dtypes bf16 --modes $MODES --out "$OUT" \
  2>&1 | tee "$OUT/kernel_checks_bf16.log" || { echo "bf16 checks failed or timed out: nothing timed"; exit 1; }
timeout 250 python3 benchmarks/attention.py --skip-checks --no-projections --modes $MODES \
  --sizes 8192x64 8192x128 16384x64 16384x128 --out "$OUT" 2>&1 | tee "$OUT/kernel_timings.log"
timeout 90 ncu --clock-control none --kernel-name regex:_bwd_kernel --launch-count 4 --set full \
  --export "$OUT/bwd_kernel" --force-overwrite \
  python3 benchmarks/attention.py --profile --modes split atomic reduce tma --sizes 8192x64 \
  > "$OUT/kernel_ncu.log" 2>&1 && ncu --import "$OUT/bwd_kernel.ncu-rep" --page details \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  > "$OUT/kernel_ncu_details.txt" 2>&1
tail -5 "$OUT/kernel_ncu.log"
timeout 60 python3 benchmarks/attention.py --checks-only --check-dtypes fp32 --modes $MODES --out "$OUT" \
  2>&1 | tee "$OUT/kernel_checks_fp32.log"
