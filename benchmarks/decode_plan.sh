#!/usr/bin/env bash
# The decode path's GPU record (issue 21) in one device call of at most 10 minutes on one H200
# (docs/performance.md, "One kernel for the differential tail of a decode step"). Steps in order of importance,
# each time-boxed, and none running past $DEADLINE seconds after the start (default 550):
#   1. the CUDA tests of the decode kernel, the CUDA-graph decode step and `shareddiff generate` (several rerun
#      themselves in a child process that compiles Triton for the GPU), before anything is timed; if a decode
#      kernel test fails or does not run (no JUnit file: out of time, no pytest), nothing with the kernel is timed
#   2. the kernel alone against the SDPA path it replaces (benchmarks/decode_kernel.py, its launch sweep)
#   3. whole decode steps, batch 1: Shared DIFF, DIFF and the Transformer, compiled-graph and graph, kernel on and
#      off (the Transformer has no kernel row); the time left less $RESERVE, no row starting in its last $LAST_ROW s
#   4. if time is left: compiled-graph without inductor's coordinate_descent_tuning (the compiled decode's default
#      on CUDA since 2026-12-01, static_decode.CUDA_COMPILE_OPTIONS), Shared DIFF (kernel on where step 1 passed)
#      then the Transformer: what the tuning gives
#   5. the operators one decode step dispatches, Transformer and Shared DIFF at 350m (seconds)
# Files in $OUT (at most 7): decode_plan.log (every step's output), decode_tests.xml, decode_kernel-*.json,
# generate-*.json (one per generate.py call: step 3 and step 4's two), decode_ops-*.json.
#
#   OUT=/path/to/results bash benchmarks/decode_plan.sh      # default OUT: benchmarks/results
#   SMOKE=1 OUT=/tmp/smoke bash benchmarks/decode_plan.sh    # the same plan on the CPU, tiny shapes
#   DRY=1 bash benchmarks/decode_plan.sh                     # print each step's command, run none
# SMOKE=1: the kernel on Triton's interpreter, the tools' --smoke settings (generate.py: tiny presets, aot_eager),
# the CUDA graph modes replaced by their CPU counterparts (compiled-graph: compiled, graph: static); the CUDA
# tests skip themselves off a GPU.
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
DEADLINE=${DEADLINE:-550}  # seconds after the start; one device call is 600
RESERVE=40                 # seconds kept for step 5 (decode_ops.py: seconds) after the generate.py steps
LAST_ROW=90                # a generate.py row's most: a 350m compiled-graph compile (tuned), its check, its calls
FAMILIES=(shared_diff diff transformer)
MODES=(compiled-graph graph)
UNTUNED=compiled-graph
GENERATE=(--batch 1 --repeats 2)
KERNEL_ARGS=(--budget-s 100)
OPS=(--size 350m)
if [[ ${SMOKE:-0} == 1 ]]; then  # checks the plan, not the speed
    export TRITON_INTERPRET=1
    MODES=(compiled static)
    UNTUNED=compiled
    GENERATE=(--smoke --repeats 1)
    KERNEL_ARGS=(--smoke --budget-s 100)
    OPS=(--size tiny --device cpu)
fi
mkdir -p "$OUT"
LOG=$OUT/decode_plan.log
TESTS_XML=$OUT/decode_tests.xml
[[ ${DRY:-0} == 1 ]] || { : >"$LOG" && rm -f "$TESTS_XML"; }
[[ ${DRY:-0} == 1 ]] && echo "PLAN deadline $DEADLINE s, reserve $RESERVE s, last row $LAST_ROW s"
source benchmarks/plan_steps.sh # step NAME SECONDS COMMAND..., time_left

# rows_step NAME COMMAND...: a generate.py step with the time left less $RESERVE, starting no row in its last
# $LAST_ROW s (--budget-s); skipped when that leaves under 10 s. DRY=1: the generate.py steps share that time.
rows_step() {
    local name=$1 limit
    shift
    limit=$(($(time_left) - RESERVE))
    if [[ ${DRY:-0} != 1 ]] && ((limit - LAST_ROW < 10)); then
        echo "PLAN $name skipped: $limit s left before step 5, a row takes up to $LAST_ROW s" | tee -a "$LOG"
        return 124
    fi
    step "$name" "$limit" "$@" --budget-s "$((limit - LAST_ROW))"
    local rc=$?
    [[ ${DRY:-0} == 1 ]] && PLANNED=$((PLANNED - limit))
    return "$rc"
}

# kernel_tested: whether the JUnit file of step 1 shows no decode kernel test failed and (on a GPU) one passed
kernel_tested() {
    [[ ${DRY:-0} == 1 ]] && return 0
    [[ -f $TESTS_XML ]] || return 1
    python3 - "$TESTS_XML" "${SMOKE:-0}" <<'EOF' 2>&1 | tee -a "$LOG"
import sys
from xml.etree import ElementTree

cases = [c for c in ElementTree.parse(sys.argv[1]).iter("testcase") if "test_decode_kernel" in c.get("classname", "")]
failed = [c.get("name") for c in cases if c.find("failure") is not None or c.find("error") is not None]
passed = [c for c in cases if not any(c.find(t) is not None for t in ("failure", "error", "skipped"))]
print(f"PLAN decode kernel tests: {len(passed)} passed, {len(failed)} failed of {len(cases)} {failed or ''}")
sys.exit(1 if failed or not (passed or sys.argv[2] == "1") else 0)
EOF
}

step versions 30 python3 -c 'import torch, triton; print(torch.__version__, triton.__version__,
    torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'
# on a GPU the tests run in this one process with Triton compiling for it (tests/conftest.py: no per-test child
# process, each of which cost ~25 s of start-up and compiles: 8 of them ran the step out of time on 2026-12-01)
NATIVE=()
[[ ${SMOKE:-0} == 1 ]] || NATIVE=(env SHAREDDIFF_TEST_NATIVE_TRITON=1)
step "CUDA tests" 210 "${NATIVE[@]}" python3 -m pytest -q -p no:cacheprovider tests/ops/test_decode_kernel.py \
    tests/test_static_decode.py tests/test_cli.py -k cuda --junitxml="$TESTS_XML"
KERNEL=(on off)
if ! kernel_tested; then
    KERNEL=(off)
    echo "PLAN the decode kernel is untested here (a test failed, or no $TESTS_XML): no kernel row is timed" |
        tee -a "$LOG"
else
    step "decode kernel" 130 python3 benchmarks/decode_kernel.py "${KERNEL_ARGS[@]}" --out "$OUT"
fi
rows_step "decode steps" python3 benchmarks/generate.py "${GENERATE[@]}" --families "${FAMILIES[@]}" \
    --modes "${MODES[@]}" --decode-kernel "${KERNEL[@]}" --out "$OUT"
rows_step "untuned shared_diff" python3 benchmarks/generate.py "${GENERATE[@]}" --families shared_diff \
    --modes "$UNTUNED" --decode-kernel "${KERNEL[0]}" --inductor-option coordinate_descent_tuning=False --out "$OUT"
rows_step "untuned transformer" python3 benchmarks/generate.py "${GENERATE[@]}" --families transformer \
    --modes "$UNTUNED" --decode-kernel off --inductor-option coordinate_descent_tuning=False --out "$OUT"
step "decode ops" "$RESERVE" python3 benchmarks/decode_ops.py "${OPS[@]}" --families transformer shared_diff \
    --out "$OUT"
[[ ${DRY:-0} == 1 ]] && exit 0
echo "PLAN finished at +${SECONDS} s; files in $OUT:" | tee -a "$LOG"
ls -la "$OUT"
