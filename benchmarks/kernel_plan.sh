#!/usr/bin/env bash
# The fused kernel's GPU record in one device call of at most 10 minutes on one H200 (docs/performance.md,
# "To measure"). Steps in order of importance, each time-boxed, and none running past $DEADLINE seconds
# after the start (default 550), so that a slow compile cuts only what follows:
#   1. bf16 checks of every mode against float64 in NaN-poisoned memory (a mode that fails is not timed; if
#      the sdpa path fails or no checks file is written, the plan ends: nothing timed)
#   2. the op's CUDA tests (tests/ops/test_triton.py -k cuda): the op and a tiny model's training step inside
#      torch.compile(fullgraph=True) against eager and float64; logged as passed or failed, and the plan goes
#      on either way (the timings are of the eager op)
#   3. fwd and fwd+bwd of each mode that passed step 1, at N = 8192/16384, d = 64/128 (benchmarks/attention.py)
#   4. Nsight Compute on the key-block backward (_bwd_kernel), one launch per dQ mode, N = 8192, d = 64
#      ("reduce" last: it launches the kernel once per chunk of key blocks, 16 times at this shape)
#   5. fp32 checks of every mode (the exactness path; slow to compile: 33 kernels, ~2 min of Triton 3.6 on a
#      CPU core; it gets the time left, none if every step before runs to its limit, and its JSON is rewritten
#      after each check)
# Files in $OUT (6, within what a device call brings back): kernel_plan.log (every step's output, the Nsight
# Compute details of step 4 included), kernel_tests.xml (step 2's JUnit report), attention-*.json (bf16
# checks, timings, fp32 checks; each rewritten as its rows come), bwd_kernel.ncu-rep (fwd_bwd_kernel.ncu-rep with
# NCU_FWD=1).
#
#   OUT=/path/to/results bash benchmarks/kernel_plan.sh      # default OUT: benchmarks/results
#   SMOKE=1 OUT=/tmp/smoke bash benchmarks/kernel_plan.sh    # the same plan on the CPU interpreter, tiny shapes
#   DRY=1 bash benchmarks/kernel_plan.sh                     # print each step's command, run none
# MODES="split tma" narrows the modes (default: all eight, poly and lazy included). NCU_MODES="split poly" sets step 4's modes
# (default: split atomic tma reduce); NCU_FWD=1 profiles the forward (_fwd_kernel) too, one launch of each kernel a
# mode (report fwd_bwd_kernel.ncu-rep instead of bwd_kernel.ncu-rep).
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
source benchmarks/plan_steps.sh  # step NAME SECONDS COMMAND..., check_attention_modes, refuse
read -r -a MODES <<<"${MODES:-$ATTENTION_MODES}"
read -r -a NCU_MODES <<<"${NCU_MODES:-split atomic tma reduce}"
# step 4 counts launches, so its modes are checked before step 1 (a bad one would fail minutes into the call)
check_attention_modes NCU_MODES "${NCU_MODES[@]}"
for i in "${!NCU_MODES[@]}"; do
    [[ ${NCU_MODES[i]} != reduce ]] || ((i == ${#NCU_MODES[@]} - 1)) ||
        refuse "NCU_MODES: put reduce last (it launches the key-block kernel once per chunk of key blocks, so the launches after it would not be the next modes')"
done
case ${NCU_FWD:-0} in
0) NCU_KERNELS=_bwd_kernel NCU_REPORT=bwd_kernel NCU_LAUNCHES=${#NCU_MODES[@]} ;;
1)  # the forward and the key-block backward, in launch order, for each mode
    [[ " ${NCU_MODES[*]} " == *" maps "* ]] &&
        refuse "NCU_FWD=1 with maps: its forward is _fwd_map_kernel, which step 4 does not profile; leave maps out"
    NCU_KERNELS='_fwd_kernel|_bwd_kernel' NCU_REPORT=fwd_bwd_kernel NCU_LAUNCHES=$((2 * ${#NCU_MODES[@]}))
    ;;
*) refuse "NCU_FWD=${NCU_FWD}; use 1 (profile the forward too) or 0" ;;
esac
SIZES=(8192x64 8192x128 16384x64 16384x128)
SMOKE_ARGS=()
if [[ ${SMOKE:-0} == 1 ]]; then  # the kernel on the CPU interpreter: checks the plan, not the kernel's speed
    export TRITON_INTERPRET=1
    SMOKE_ARGS=(--smoke)
    SIZES=(32x16)
fi
DEADLINE=${DEADLINE:-550}  # seconds after the start; one device call is 600
mkdir -p "$OUT"
LOG=$OUT/kernel_plan.log
TESTS_XML=$OUT/kernel_tests.xml
: >"$LOG"
[[ ${DRY:-0} == 1 ]] || rm -f "$TESTS_XML"  # a file left from an earlier run would read as this one's verdict
STARTED=$(mktemp)  # its time stamp marks the plan's start
trap 'rm -f "$STARTED"' EXIT
[[ ${DRY:-0} == 1 ]] && echo "PLAN deadline $DEADLINE s"


step versions 15 python3 -c 'import torch, triton; print(torch.__version__, triton.__version__,
    torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'
step "bf16 checks" 150 python3 benchmarks/attention.py "${SMOKE_ARGS[@]}" --checks-only --check-dtypes bf16 \
    --modes "${MODES[@]}" --out "$OUT" || echo "PLAN some bf16 checks failed or did not run: their modes are not timed" |
    tee -a "$LOG"
# the CUDA tests in this one process with Triton compiling for the GPU (tests/conftest.py); SMOKE=1: on the
# interpreter, where they skip themselves
NATIVE=()
[[ ${SMOKE:-0} == 1 ]] || NATIVE=(env SHAREDDIFF_TEST_NATIVE_TRITON=1)
step "compiled op tests" 90 "${NATIVE[@]}" python3 -m pytest -q -p no:cacheprovider tests/ops/test_triton.py \
    -k cuda --junitxml="$TESTS_XML"
if [[ ${DRY:-0} != 1 ]]; then  # the verdict, from the JUnit file (none: out of time, or no pytest)
    python3 - "$TESTS_XML" <<'EOF' 2>&1 | tee -a "$LOG"
import os
import sys
from xml.etree import ElementTree

if not os.path.exists(sys.argv[1]):
    sys.exit(print("PLAN compiled op tests did not finish (no JUnit file): the op is untested under torch.compile"))
cases = list(ElementTree.parse(sys.argv[1]).iter("testcase"))
failed = [c.get("name") for c in cases if c.find("failure") is not None or c.find("error") is not None]
skipped = len([c for c in cases if c.find("skipped") is not None])
passed = len(cases) - len(failed) - skipped
print(f"PLAN compiled op tests: {passed} passed, {len(failed)} failed, {skipped} skipped {failed or ''}")
EOF
fi
CHECKED=""  # the results file step 1 wrote: the newest one since the plan started
for f in "$OUT"/attention-*.json; do
    [[ -f $f && $f -nt $STARTED && (-z $CHECKED || $f -nt $CHECKED) ]] && CHECKED=$f
done
[[ ${DRY:-0} == 1 ]] && CHECKED=$OUT/attention-CHECKS.json
if [[ -z $CHECKED ]]; then
    echo "PLAN no checks file in $OUT: nothing timed" | tee -a "$LOG"
    exit 1
fi
step timings 200 python3 benchmarks/attention.py "${SMOKE_ARGS[@]}" --skip-checks --passed-in "$CHECKED" \
    --no-projections --modes "${MODES[@]}" --sizes "${SIZES[@]}" --out "$OUT"
if [[ ${DRY:-0} == 1 ]] || { command -v ncu >/dev/null && [[ ${SMOKE:-0} != 1 ]]; }; then
    step "Nsight Compute" 85 ncu --clock-control none --kernel-name "regex:$NCU_KERNELS" --launch-count "$NCU_LAUNCHES" \
        --set full --export "$OUT/$NCU_REPORT" --force-overwrite \
        python3 benchmarks/attention.py --profile --modes "${NCU_MODES[@]}" --sizes 8192x64 &&
        step "Nsight Compute details" 10 ncu --import "$OUT/$NCU_REPORT.ncu-rep" --page details \
            --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats
else
    echo "PLAN Nsight Compute skipped (no ncu on the PATH, or SMOKE=1)" | tee -a "$LOG"
fi
step "fp32 checks" "$DEADLINE" python3 benchmarks/attention.py "${SMOKE_ARGS[@]}" --checks-only --check-dtypes fp32 \
    --modes "${MODES[@]}" --out "$OUT"
echo "PLAN finished at +${SECONDS} s; files in $OUT:" | tee -a "$LOG"
ls -la "$OUT"
