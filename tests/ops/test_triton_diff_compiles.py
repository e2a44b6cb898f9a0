"""The fused differential-attention kernels (ops/triton_diff.py) compiled to sm_90 cubins on the CPU (Triton's own
compiler and bundled ptxas, no GPU): what the CPU interpreter cannot check. Skipped where Triton has no ptxas."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

# every kernel the op launches (the other @triton.jit functions of the file are their helpers)
LAUNCHED = {"_fwd_kernel", "_fwd_map_kernel", "_combine_kernel", "_bwd_preprocess", "_bwd_kernel", "_bwd_dq_kernel",
            "_dq_reduce_kernel"}  # fmt: skip
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

# Runs in a process without TRITON_INTERPRET (the kernels must be imported for the GPU). The launches are recorded
# from one causal forward + backward per setting (benchmarks/kernel_resources.py), so the block shapes, num_warps,
# num_stages and constexprs are those the op picks on Hopper.
CODE = r"""
import json
import re
import sys
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas_version
from triton.compiler import ASTSource

sys.path.insert(0, sys.argv[3])
from kernel_resources import record_launches, signature_of

from shareddiff.ops.kernel_settings import KernelSettings

dtype, d, report = getattr(torch, sys.argv[1]), int(sys.argv[2]), Path(sys.argv[4])
get_ptxas_version(90)  # raises (naming ptxas) where Triton cannot run it
# fp64 floats enter the math nowhere: declared as parameters and converted to fp32 once, nothing else
FP64_PARAMETER = r"\s*(\.param \.f64|cvt\.rn\.f32\.f64)"
SETTINGS = [  # together: every kernel of the file, each dQ mode, and dq_reduce's first, middle and last launches
    KernelSettings(),
    KernelSettings(forward="vsplit", dq="atomic"),
    KernelSettings(forward="maps", dq="reduce", dq_chunk=2),
    KernelSettings(dq="tma"),
    KernelSettings(exp2="poly"),  # map 2's exponentials on the FMA units: the forward and both backward kernels
    KernelSettings(rescale="lazy"),  # the forward's conditional rescale (a branch inside its key loops)
]


def innermost(exc):
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def compile_for_hopper(kernel, signature, constexprs, attrs, options):  # None, or what went wrong
    try:
        source = ASTSource(kernel, signature, constexprs, attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    except Exception as exc:
        return innermost(exc)
    f64 = [x.strip() for x in compiled.asm["ptx"].splitlines() if "f64" in x and not re.match(FP64_PARAMETER, x)]
    return None if "cubin" in compiled.asm and not f64 else f"no cubin, or fp64 arithmetic: {f64[:3]}"


outcomes, failures, compiled_kernels = {}, [], []
for settings in SETTINGS:
    for kernel, _, bound in record_launches(settings, d, dtype, n=1024, h=2):
        for float_type in ("fp32", "fp64"):  # an eager launch types Python floats fp32, inductor's launch fp64
            signature, constexprs, attrs = signature_of(kernel, bound, float_type)
            options = {k: bound[k] for k in ("num_warps", "num_stages") if k in bound}
            key = (kernel.__name__, str(signature), str(sorted(constexprs.items())), str(options))
            if key not in outcomes:  # else the same compile as an earlier launch's (or a kernel without floats)
                outcomes[key] = problem = compile_for_hopper(kernel, signature, constexprs, attrs, options)
                if problem:
                    where = f"{kernel.__name__} ({settings.forward} forward, dq {settings.dq}, floats {float_type})"
                    failures.append(f"{where}: {problem}")
            if outcomes[key] is None:
                compiled_kernels.append([kernel.__name__, float_type, constexprs])
report.write_text(json.dumps({"failures": failures, "compiled": compiled_kernels}))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dtype", "d"), [("bfloat16", 64), ("bfloat16", 128), ("float32", 64)]
)  # float32 at d = 128 compiles the same code for ~140 s more on 2 CPU cores: left out of CI's budget
def test_kernels_compile_for_hopper(dtype, d, tmp_path):
    """Every kernel the op launches (forward fused / vsplit / maps, combine, δ preprocess, the key-block backward in
    each dQ mode, the dQ kernel, the dQ reduction), causal, at the launch settings of an H100/H200, compiles to an
    sm_90 cubin with the float arguments (``scale_log2``, ``sm_scale``) typed fp32 (an eager launch) and fp64
    (inductor's launch from a compiled graph: loop-carried fp32 values became fp64 and the forward failed to
    compile; the TMA reduce-add refused fp64 tiles), and no fp64 arithmetic in the PTX. Reference: Triton's
    compiler for sm_90; tolerance: none (compiles or not)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": os.pathsep.join(sys.path)}
    report = tmp_path / "report.txt"  # the compiler prints a failing kernel's IR to stdout: its own file
    command = [sys.executable, "-c", CODE, dtype, str(d), str(BENCHMARKS), str(report)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if "ptxas" in proc.stderr and proc.returncode:
        pytest.skip(f"Triton cannot run ptxas here: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(report.read_text())
    assert not result["failures"], "\n".join(result["failures"])
    for float_type in ("fp32", "fp64"):
        compiled = [(name, constexprs) for name, typed, constexprs in result["compiled"] if typed == float_type]
        assert {name for name, _ in compiled} == LAUNCHED
        assert {c["DQ_MODE"] for name, c in compiled if name == "_bwd_kernel"} == {0, 1, 2, 3}  # every dQ mode
        reduce_launches = {(c["ACCUMULATE"], c["LAST"]) for name, c in compiled if name == "_dq_reduce_kernel"}
        assert reduce_launches == {(False, False), (True, False), (True, True)}  # first, middle, last
        if dtype != "float32":  # exp2="poly" (map 2's exponentials on the FMA units) in the forward and both backwards
            polys = {name for name, c in compiled if c.get("POLY")}
            assert polys == {"_fwd_kernel", "_bwd_kernel", "_bwd_dq_kernel"}, polys
        assert {name for name, c in compiled if c.get("LAZY")} == {"_fwd_kernel"}  # rescale="lazy", every dtype
