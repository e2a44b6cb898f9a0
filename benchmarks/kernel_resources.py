"""The fused kernel's Triton kernels compiled for a GPU without one: registers, spills, shared memory, and
the instructions that say which path the compiler took. Runs on any machine with Triton (no GPU needed).

    python benchmarks/kernel_resources.py [--d 64 128] [--modes dq=split "dq=tma;bwd_blocks=64,64,4,2"]

Each mode runs the op's forward and backward on CPU tensors with the kernel launches recorded instead of
run (so the launch shapes, block sizes and arguments are exactly those a GPU run would use), then compiles
every recorded kernel with ``triton.compile`` for the target (default sm_90: H100/H200) and reads
``ptxas -v``. Columns: registers per thread, spill stores / loads (bytes), shared memory (bytes), and
counts in the PTX of ``wgmma`` (Hopper tensor-core MMA), ``mma.sync`` (the pre-Hopper MMA), per-element
global atomics/reductions, ``cp.reduce.async.bulk.tensor`` (TMA reduce-add), and the signs of software
pipelining and warp specialisation: ``cp.async`` copies (one per pipelined load and stage), ``wgmma.wait_group``
waits, ``setmaxnreg`` (per-partition register budgets) and, in the TTGIR, ``ttg.warp_specialize`` regions;
and in the machine code (SASS, from the cubin by the ``nvdisasm`` that Triton's wheel ships; static counts, each
loop body once): all instructions, ``MUFU`` (special-function unit), ``FFMA``/``FMUL``/``FADD`` (float32 FMA
pipe), ``HGMMA`` (Hopper tensor-core MMA) and ``LDL``/``STL`` (local memory: the spills).
``--kernels _fwd_kernel`` compiles only the kernels named. Writes JSON beside the other results (or to --out).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction
from triton.tools.tensor_descriptor import TensorDescriptor

from shareddiff.ops.kernel_settings import Blocks, KernelSettings

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_result

TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
PTX_COUNTS = {
    "wgmma": r"wgmma\.mma_async",
    "mma.sync": r"\bmma\.sync",
    "atomics": r"\b(red|atom)\.global",
    "tma_reduce": r"cp\.reduce\.async\.bulk\.tensor",
    "cp.async": r"\bcp\.async\.c[ag]\b",
    "wgmma_wait": r"wgmma\.wait_group",
    "setmaxnreg": r"\bsetmaxnreg\b",
    "ex2": r"\bex2\.approx",  # exponentials on the special-function unit (exp2="poly" moves map 2's off it)
    "fma.f32": r"\bfma\.rn\.f32",
}
TTGIR_COUNTS = {"warp_specialize": r"\bttg\.warp_specialize\b"}
SASS_COUNTS = {  # opcode prefixes in nvdisasm's listing (an opcode's modifiers follow a dot: MUFU.EX2)
    "sass_mufu": ("MUFU",),
    "sass_fp32": ("FFMA", "FMUL", "FADD"),
    "sass_hgmma": ("HGMMA",),
    "sass_local": ("LDL", "STL"),
}
_SASS_LINE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(?:\.[\w.]+)?\b")


def parse_sass(listing: str) -> dict:
    """Static instruction counts from an ``nvdisasm`` listing: ``sass_instructions`` (every instruction, NOPs
    excluded) and the opcode groups of ``SASS_COUNTS``. Predicated instructions (``@P0 FFMA ...``) count."""
    opcodes = [m.group(1) for m in _SASS_LINE.finditer(listing)]
    counts = {"sass_instructions": sum(op != "NOP" for op in opcodes)}
    for name, prefixes in SASS_COUNTS.items():
        counts[name] = sum(op in prefixes for op in opcodes)
    return counts


def sass_report(cubin: bytes) -> dict:
    """``parse_sass`` of the cubin's listing by the wheel's ``nvdisasm`` (the counts None without one)."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    if not tool.is_file():
        return {"sass_instructions": None} | dict.fromkeys(SASS_COUNTS)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        listing = subprocess.run([str(tool), "-c", str(path)], capture_output=True, text=True, check=True).stdout
    return parse_sass(listing)


SMEM_PER_BLOCK = {80: 166_912, 86: 101_376, 87: 166_912, 89: 101_376, 90: 232_448, 100: 232_448, 120: 101_376}
"""The shared memory (bytes) a block may opt into, by compute capability ×10 (CUDA's per-architecture limits):
what ``triton_diff.device_smem_per_block`` reads on such a GPU, and so what the launch shapes depend on."""


def record_launches(
    settings: KernelSettings, d: int, dtype: torch.dtype, n: int, h: int, capability: int = 90
) -> list[tuple]:
    """(kernel, grid, arguments by name with num_warps and num_stages) of every launch of one causal forward +
    backward at (1, h, n, d) in ``dtype``, recorded instead of run, as on a GPU of ``capability``: from sm_90 on
    ``"tma"`` stays ``"tma"``, and the shapes that depend on the device's shared memory take that GPU's
    (``SMEM_PER_BLOCK``). Raises ``ValueError`` for a capability without a known limit."""
    if capability not in SMEM_PER_BLOCK:
        raise ValueError(f"capability {capability}: no shared-memory limit known; use one of {sorted(SMEM_PER_BLOCK)}")
    from shareddiff.ops import triton_diff  # after main() unset TRITON_INTERPRET

    if triton_diff.INTERPRET:
        raise RuntimeError("unset TRITON_INTERPRET: the launches must be the GPU's, not the interpreter's")
    launches = []

    def run(self, *args, grid, warmup, **kwargs):
        bound = dict(zip(self.arg_names, args, strict=False)) | kwargs
        launches.append((self, grid, bound))

    q1, q2, k1, k2 = (torch.randn(1, h, n, d, dtype=dtype, requires_grad=True) for _ in range(4))
    v = torch.randn(1, h, n, 2 * d, dtype=dtype, requires_grad=True)
    lam = torch.full((h,), 0.5)
    with (
        mock.patch.object(JITFunction, "run", run),
        mock.patch.object(triton_diff, "descriptor_reduce_available", lambda device: capability >= 90),
        mock.patch.object(triton_diff, "device_smem_per_block", lambda device: SMEM_PER_BLOCK[capability]),
    ):
        out = triton_diff._FusedDifferentialAttentionFunction.apply(q1, q2, k1, k2, v, lam, True, settings)
        out.backward(torch.ones_like(out))
    return launches


def signature_of(kernel, bound: dict, float_type: str = "fp32") -> tuple[dict, dict, dict]:
    """Triton's signature, constexprs and divisibility hints for ``bound`` (as the JIT would specialise: an int
    equal to 1 becomes a constexpr). Python floats are typed ``float_type``: "fp32" as an eager launch types them,
    "fp64" as inductor's launch from a compiled graph does."""
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(kernel.arg_names):
        value = bound[name]
        if kernel.params[i].is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, TensorDescriptor):
            block = ",".join(map(str, value.block_shape))
            signature[name] = f"tensordesc<{TYPES[value.base.dtype]}[{block}]>"
        elif isinstance(value, torch.Tensor):
            signature[name] = f"*{TYPES[value.dtype]}"
            if value.data_ptr() % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int) and value == 1:
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, int):
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = float_type
    return signature, constexprs, attrs


def parse_ptxas(text: str) -> dict:
    """Registers per thread and spill stores / loads / stack frame (bytes) from ``ptxas -v`` output (None
    where a figure is missing)."""
    found = {
        "registers": re.search(r"Used (\d+) registers", text),
        "spill_stores": re.search(r"(\d+) bytes spill stores", text),
        "spill_loads": re.search(r"(\d+) bytes spill loads", text),
        "stack_frame": re.search(r"(\d+) bytes stack frame", text),
    }
    return {k: int(m.group(1)) if m else None for k, m in found.items()}


def ptxas_report(ptx: str, capability: int) -> dict:
    """Registers, spills and stack from ``ptxas -v`` on the kernel's PTX (the ptxas Triton itself uses)."""
    ptxas = get_ptxas(capability).path
    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        proc = subprocess.run(
            [str(ptxas), f"-arch={arch}", "-v", str(src), "-o", str(Path(tmp) / "kernel.cubin")],
            capture_output=True,
            text=True,
            check=True,
        )
    return parse_ptxas(proc.stdout + proc.stderr)


def compile_one(kernel, bound: dict, capability: int) -> dict:
    """One recorded launch compiled for ``capability``: its resources and PTX instruction counts.

    Registers and spills come from the ``ptxas -v`` log of Triton's own build of the cubin (compiled afresh, not
    from Triton's cache), so that they describe the binary the SASS counts read and the GPU runs, with Triton's
    ptxas flags (Triton 3.9 adds ``--regAllocOptLevel=2``, 3.6 does not); ``ptxas_report`` on the PTX is the
    fallback where that log is empty."""
    signature, constexprs, attrs = signature_of(kernel, bound)
    options = {k: bound[k] for k in ("num_warps", "num_stages") if k in bound}
    began = time.perf_counter()
    log = io.StringIO()
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True  # make_cubin prints ptxas's -v log
        knobs.compilation.always_compile = True  # a cached kernel runs no ptxas, so prints no log
        compiled = triton.compile(
            ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", capability, 32), options=options
        )
    ptx = compiled.asm["ptx"]
    resources = parse_ptxas(log.getvalue())
    source = "triton"
    if resources["registers"] is None:
        resources, source = ptxas_report(ptx, capability), "ptxas on the PTX"
    return {
        "kernel": kernel.__name__,
        "blocks": {k: constexprs[k] for k in ("BM", "BN", "VW") if k in constexprs} | options,
        "compile_s": round(time.perf_counter() - began, 1),
        "shared_bytes": compiled.metadata.shared,
        **resources,
        "ptxas_log": source,
        **{name: len(re.findall(pattern, ptx)) for name, pattern in PTX_COUNTS.items()},
        **{name: len(re.findall(pattern, compiled.asm["ttgir"])) for name, pattern in TTGIR_COUNTS.items()},
        **sass_report(compiled.asm["cubin"]),
    }


def parse_mode(text: str) -> KernelSettings:
    """``"dq=tma;bwd_blocks=64,64,4,2"`` → KernelSettings(dq="tma", bwd_blocks=Blocks(64, 64, 4, 2))."""
    try:
        fields = dict(part.split("=", 1) for part in text.split(";"))
    except ValueError:
        raise ValueError(f"mode {text!r}; give KernelSettings fields as name=value joined by ';'") from None
    names = list(KernelSettings.__dataclass_fields__)
    if unknown := fields.keys() - set(names):
        raise ValueError(f"mode {text!r}: unknown fields {sorted(unknown)}; use {names}")
    for name in ("dq_workspace_mib", "dq_chunk"):
        if name in fields:
            fields[name] = int(fields[name])
    return KernelSettings(**{k: Blocks.parse(v, k) if k.endswith("_blocks") else v for k, v in fields.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, nargs="+", default=[64, 128], help="head half-dims")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["dq=split", "dq=atomic", "dq=reduce", "dq=tma", "forward=maps", "forward=vsplit"],
        help='KernelSettings fields per run, ";"-separated: "dq=tma;bwd_blocks=64,64,4,2"',
    )
    parser.add_argument("--kernels", nargs="+", help="compile only these kernels (e.g. _fwd_kernel); default all")
    parser.add_argument("--capability", type=int, default=90, help="compute capability ×10 (90: H100/H200)")
    parser.add_argument("--out", help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret (before the kernels are imported)
    dtype = getattr(torch, args.dtype)
    rows, seen = [], set()
    for d in args.d:
        for mode in args.modes:
            settings = parse_mode(mode)
            for kernel, grid, bound in record_launches(settings, d, dtype, n=1024, h=2, capability=args.capability):
                if args.kernels and kernel.__name__ not in args.kernels:
                    continue
                _, constexprs, _ = signature_of(kernel, bound)
                shape = (bound.get("num_warps"), bound.get("num_stages"))
                key = (kernel.__name__, tuple(sorted(constexprs.items())), shape)
                if key in seen:  # the same compiled kernel as in an earlier mode
                    continue
                seen.add(key)
                try:
                    row = compile_one(kernel, bound, args.capability)
                except Exception as exc:  # a kernel that does not compile is the finding
                    row = {"kernel": kernel.__name__, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                row |= {"d": d, "dtype": args.dtype, "mode": mode, "grid_at_n1024_h2": list(grid)}
                rows.append(row)
                print(row, flush=True)
    path = write_result(f"kernel_resources-sm{args.capability}", {"kernels": rows}, args.out)
    headers = ["d", "mode", "kernel", "blocks", "regs", "spill st/ld", "smem", "wgmma", "mma.sync", "atom", "tma red"]
    headers += ["cp.async", "wgmma wait", "setmaxnreg", "ex2", "fma.f32", "ws regions", "SASS", "MUFU", "FP32"]
    headers += ["HGMMA", "LDL/STL"]
    cells = []
    for r in rows:
        spills = f"{r.get('spill_stores', '-')}/{r.get('spill_loads', '-')}"
        shape = r.get("error", "")[:60] or r["blocks"]
        cells.append([r["d"], r["mode"], r["kernel"], shape, r.get("registers", "-"), spills])
        counts = ("shared_bytes", "wgmma", "mma.sync", "atomics", "tma_reduce", "cp.async", "wgmma_wait", "setmaxnreg")
        counts += ("ex2", "fma.f32")
        cells[-1] += [r.get(k, "-") for k in (*counts, "warp_specialize", "sass_instructions", *SASS_COUNTS)]
    print(table(headers, cells))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
