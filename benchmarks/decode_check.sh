#!/usr/bin/env bash
# A short GPU record of the decode step after a change to the static decoder (issue 21), in one device call:
#   1. the CUDA tests of the decode kernel and the static decoder (one process, Triton compiling for the GPU)
#   2. whole calls and decode steps at batch 1, compiled-graph, the three V1-era families (kernel on where it applies)
#   3. the same at batch 32 for Shared DIFF and the Transformer
#   4. where a step's GPU time goes (--profile, 64 new tokens), Shared DIFF and the Transformer
# Each step is time-boxed; files (JSON records, decode_check.log) go to $OUT.
#   OUT=$OUT bash benchmarks/decode_check.sh
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=src:. PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
LOG=$OUT/decode_check.log
: >"$LOG"
run() {  # run SECONDS COMMAND...
    local limit=$1
    shift
    echo "STEP +${SECONDS}s (at most ${limit}s): $*" | tee -a "$LOG"
    timeout "$limit" "$@" >>"$LOG" 2>&1
    echo "STEP rc $? at +${SECONDS}s" | tee -a "$LOG"
}
run 170 env SHAREDDIFF_TEST_NATIVE_TRITON=1 python3 -m pytest -q -p no:cacheprovider tests/ops/test_decode_kernel.py \
    tests/test_static_decode.py -k cuda --junitxml="$OUT/decode_tests.xml"
run 170 python3 benchmarks/generate.py --batch 1 --repeats 3 --families shared_diff diff transformer \
    --modes compiled-graph --out "$OUT"
run 110 python3 benchmarks/generate.py --batch 32 --repeats 2 --families shared_diff transformer \
    --modes compiled-graph --out "$OUT"
run 110 python3 benchmarks/generate.py --profile --families transformer shared_diff --modes compiled-graph \
    --batch 1 --new-tokens 64 --out "$OUT"
grep -E "tok/s|passed|failed|gpu_kernel_ms_per_token" "$LOG" | cut -c1-400
