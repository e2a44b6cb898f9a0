"""Differential attention on the GPU: correctness of the fused kernel, then its speed against SDPA.

    python3 benchmarks/attention.py [--quick] [--sweep] [--modes split atomic reduce tma vsplit maps poly]
        [--sizes 8192x64 16384x128] [--check-dtypes bf16 fp32] [--checks-only | --skip-checks]
        [--no-projections] [--profile [--forward-only] [--with-sdpa]] [--smoke]

1. Checks (bf16 and fp32, fresh random inputs, GPU memory poisoned with NaN first so an element a kernel
   leaves unwritten shows): the "sdpa" backend and the fused kernel in each of ``--modes`` (KernelSettings
   passed as keywords, see MODES) against a float64 reference, forward and every gradient. A mode that
   fails a check (or raises: a kernel that does not compile or launch) is not timed, nor is anything if
   "sdpa" fails; the exit status is then 1. ``--skip-checks --passed-in JSON`` times only the modes whose
   checks passed in an earlier ``--checks-only`` run's JSON.
2. Times, model width 2048 and 32K tokens per batch (B = 32768 / N), causal, bf16, with
   ``triton.testing.do_bench`` (median): standard SDPA (h heads of 2d), DIFF as 2 SDPA calls (v of
   width 2d), DIFF as 4 SDPA calls (v split), and the fused kernel in each of ``--modes``; forward and
   forward+backward; peak memory of each.
3. With --sweep: the kernel's block shapes (``fwd_blocks``, ``bwd_blocks``, ``dq_blocks``), one kernel at
   a time (``--sweep FWD``: the forward's alone).
4. Shared DIFF projections: separate GEMMs (W, A1, A2) vs one GEMM of X·[W | A1 | A2].
--profile instead runs one forward + backward per mode at each size and nothing else (for Nsight Compute:
``benchmarks/kernel_plan.sh``; with --forward-only and --with-sdpa, ``benchmarks/forward_profile.sh``).
Writes JSON to benchmarks/results/ (or --out), rewritten after each check and each timed size (a run cut
short keeps what it did), and prints the tables last.
--smoke is a dry run on the CPU (``TRITON_INTERPRET=1``): tiny shapes and sizes, float16 in place of bf16
(the interpreter has no bf16), wall-clock timing; it checks the plumbing, not the kernel's speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_result

from shareddiff.ops import differential_attention, triton_diff
from shareddiff.ops.kernel_settings import Blocks, KernelSettings
from shareddiff.ops.triton_diff import triton_differential_attention

WIDTH, TOKENS = 2048, 32768
DEVICE = "cuda"  # where everything runs (tests and --smoke: the CPU interpreter)
CHECK_SHAPES = ((4, 1, 64), (2, 1031, 128), (4, 777, 32), (2, 2053, 64))  # (h_kv, N, d) at B = 1, h = 4
BF16 = torch.bfloat16  # the timed dtype (--smoke: float16)
MODES = {  # the fused kernel's settings by name (KernelSettings); "split" is the default
    "split": KernelSettings(),
    "atomic": KernelSettings(dq="atomic"),
    "reduce": KernelSettings(dq="reduce"),
    "tma": KernelSettings(dq="tma"),
    "vsplit": KernelSettings(forward="vsplit"),
    "maps": KernelSettings(forward="maps"),
    "poly": KernelSettings(exp2="poly"),  # the default modes with map 2's exponentials on the FMA units
    "lazy": KernelSettings(rescale="lazy"),  # the default modes with the forward's conditional rescale
}


def kernel(settings: KernelSettings):
    """The fused kernel with ``settings`` (keywords, not the environment), as differential_attention's call."""
    return lambda *a: triton_differential_attention(*a, settings=settings)


def sdpa(*a):
    return differential_attention(*a, backend="sdpa")


def rel(a, b) -> float:
    """Relative error; absolute where the reference is exactly 0 (a query's gradient with one key)."""
    denom = b.double().norm().item()
    return (a.double() - b.double()).norm().item() / (denom if denom > 0 else 1.0)


def reference(q1, q2, k1, k2, v, lam):
    q1, q2, k1, k2, v = (t.double() for t in (q1, q2, k1, k2, v))
    rep = q1.shape[1] // k1.shape[1]
    k1, k2, v = (t.repeat_interleave(rep, 1) for t in (k1, k2, v))
    n, d = q1.shape[2], q1.shape[3]
    mask = torch.ones(n, n, dtype=torch.bool, device=q1.device).tril()

    def attn(q, k):
        return ((q @ k.transpose(-1, -2)) / math.sqrt(d)).masked_fill(~mask, float("-inf")).softmax(-1) @ v

    return attn(q1, k1) - lam.double().view(1, -1, 1, 1) * attn(q2, k2)


def poison() -> None:
    """Fill the caching allocator's free memory with NaN so unwritten outputs show (the GPU only)."""
    if DEVICE != "cuda":
        return
    free = torch.cuda.mem_get_info()[0]
    blob = torch.empty(int(free * 0.5) // 4, dtype=torch.float32, device="cuda").fill_(float("nan"))
    del blob


def check(label: str, fn, dtype: torch.dtype, b: int, h: int, h_kv: int, n: int, d: int) -> dict:
    """``fn`` (differential_attention's arguments) against float64 on fresh inputs in poisoned memory."""
    dev = DEVICE
    q1, q2 = (torch.randn(b, h, n, d, device=dev, dtype=dtype, requires_grad=True) for _ in range(2))
    k1, k2 = (torch.randn(b, h_kv, n, d, device=dev, dtype=dtype, requires_grad=True) for _ in range(2))
    v = torch.randn(b, h_kv, n, 2 * d, device=dev, dtype=dtype, requires_grad=True)
    lam = (torch.rand(h, device=dev) * 0.8 + 0.1).requires_grad_(True)
    poison()
    out = fn(q1, q2, k1, k2, v, lam)
    grad = torch.randn_like(out)
    out.backward(grad)
    leaves = [q1, q2, k1, k2, v, lam]
    ref_inputs = [t.detach().double().requires_grad_(True) for t in leaves]
    ref = reference(*ref_inputs)
    ref.backward(grad.double())
    errors = {"out": rel(out, ref)}
    for name, t, r in zip(("q1", "q2", "k1", "k2", "v", "lam"), leaves, ref_inputs, strict=True):
        errors[name] = rel(t.grad, r.grad)
    finite = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(t.grad).all()) for t in leaves)
    tol = 1e-2 if dtype != torch.float32 else 1e-4
    ok = finite and all(e <= tol for k, e in errors.items() if k != "lam") and errors["lam"] <= 10 * tol
    return {
        "backend": label,
        "dtype": str(dtype),
        "shape": [b, h, h_kv, n, d],
        "errors": errors,
        "finite": finite,
        "ok": ok,
    }


def checked(label: str, fn, dtype: torch.dtype, h_kv: int, n: int, d: int) -> dict:
    """``check`` at B = 1, h = 4; an exception (a kernel that does not compile or launch) is a failed check."""
    try:
        return check(label, fn, dtype, 1, 4, h_kv, n, d)
    except Exception as exc:
        shape = [1, 4, h_kv, n, d]
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
        return {"backend": label, "dtype": str(dtype), "shape": shape, "errors": {}, "finite": False, "ok": False,
                "error": error}  # fmt: skip


def modes_that_passed(checks: list[dict], modes: list[str]) -> list[str] | None:
    """The ``modes`` whose checks in ``checks`` all passed (a mode without checks has not passed); None if the
    "sdpa" reference path failed or was not checked."""

    def passed(label: str) -> bool:
        mine = [c for c in checks if c["backend"] == label]
        return bool(mine) and all(c["ok"] for c in mine)

    return [m for m in modes if passed(f"triton {m}")] if passed("sdpa") else None


def four_call(q1, q2, k1, k2, v, lam):
    d = q1.shape[-1]
    va, vb = v[..., :d], v[..., d:]
    o1 = torch.cat(
        [
            F.scaled_dot_product_attention(q1, k1, va, is_causal=True),
            F.scaled_dot_product_attention(q1, k1, vb, is_causal=True),
        ],
        -1,
    )
    o2 = torch.cat(
        [
            F.scaled_dot_product_attention(q2, k2, va, is_causal=True),
            F.scaled_dot_product_attention(q2, k2, vb, is_causal=True),
        ],
        -1,
    )
    return o1 - lam * o2


def time_variant(fn, inputs, backward: bool) -> tuple[float, float]:
    grad = torch.randn_like(fn(*inputs))

    def run():
        out = fn(*inputs)
        if backward:
            out.backward(grad)

    if DEVICE != "cuda":
        return time_ms(run), 0.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    ms = time_ms(run)
    return ms, torch.cuda.max_memory_allocated() / 2**30


def time_ms(fn, warmup: int = 100, rep: int = 400) -> float:
    """Median milliseconds of ``fn``: ``triton.testing.do_bench`` on the GPU (``warmup``/``rep`` in ms), the
    median of 2 wall-clock calls after one on the CPU (--smoke)."""
    if DEVICE == "cuda":
        return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
    fn()
    times = []
    for _ in range(2):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def bench(n: int, d: int, modes: list[str]) -> list[dict]:
    b, h = TOKENS // n, WIDTH // (2 * d)
    dev, dt = DEVICE, BF16

    def leaf(*shape):
        return torch.randn(*shape, device=dev, dtype=dt, requires_grad=True)

    q, k, vs = standard_inputs(b, h, n, 2 * d)
    q1, q2, k1, k2, v = leaf(b, h, n, d), leaf(b, h, n, d), leaf(b, h, n, d), leaf(b, h, n, d), leaf(b, h, n, 2 * d)
    lam = torch.tensor(0.5, device=dev, requires_grad=True)
    variants = {
        "standard SDPA": (standard_sdpa, (q, k, vs)),
        "DIFF 2 SDPA calls": (lambda *a: differential_attention(*a, backend="sdpa"), (q1, q2, k1, k2, v, lam)),
        "DIFF 4 SDPA calls": (four_call, (q1, q2, k1, k2, v, lam)),
    } | {f"fused kernel, {mode}": (kernel(MODES[mode]), (q1, q2, k1, k2, v, lam)) for mode in modes}
    rows = []
    for name, (fn, inputs) in variants.items():
        fwd, mem_f = time_variant(fn, inputs, False)
        both, mem_b = time_variant(fn, inputs, True)
        print(f"N={n} d={d} {name}: fwd {fwd:.3f} ms, fwd+bwd {both:.3f} ms, peak {mem_b:.2f} GiB", flush=True)
        rows.append(
            {
                "n": n,
                "d": d,
                "batch": b,
                "heads": h,
                "variant": name,
                "fwd_ms": fwd,
                "fwd_bwd_ms": both,
                "peak_gib_fwd": mem_f,
                "peak_gib_fwd_bwd": mem_b,
            }
        )
    return rows


SWEEP = {  # block shapes "BM,BN,num_warps,num_stages" per kernel and head half-dim; the first is the default
    # FWD at d = 128: the first is sm_90's default (3 stages: 229,376 bytes of shared memory, under the H200's 232,448;
    # 6 % faster than 2 there, 2026-12-03; sm_80 holds 2, the last); 128,64,8,4 at d = 64 timed level with 3
    ("FWD", 64): ["128,64,8,3", "64,64,4,3", "64,64,4,2", "128,128,8,2", "128,64,8,2", "128,64,8,4"],
    ("FWD", 128): ["64,64,8,3", "64,64,4,2", "128,64,8,2", "64,64,8,1", "32,64,4,2", "64,64,8,2"],
    ("BWD", 64): ["64,64,4,2", "32,128,8,2", "32,64,4,2", "64,64,8,2", "64,32,4,2", "64,64,4,3"],
    ("BWD", 128): ["64,32,4,2", "32,64,8,1", "64,64,8,1", "64,32,8,2", "32,32,4,2", "64,32,4,1"],
    ("DQ", 64): ["128,64,8,3", "64,64,4,2", "64,32,4,2", "128,32,8,2", "128,64,8,2"],
    ("DQ", 128): ["128,32,8,2", "64,32,4,2", "64,64,4,2", "128,32,8,1", "64,32,8,2"],
    ("BWD, dQ atomic", 64): ["32,128,8,2", "64,64,4,2", "64,128,8,2", "32,64,4,2"],
    ("BWD, dQ atomic", 128): ["32,64,8,1", "64,32,4,2", "64,64,8,1"],
    ("BWD, dQ reduce", 64): ["64,128,8,2", "64,64,4,2", "64,64,8,2", "128,64,8,2"],
    ("BWD, dQ reduce", 128): ["64,64,8,1", "64,32,4,2", "64,64,4,1", "128,32,8,1"],
    ("BWD, dQ tma", 64): ["64,128,8,2", "64,64,4,2", "64,64,8,2", "128,64,8,2"],
    ("BWD, dQ tma", 128): ["64,64,8,1", "64,32,4,2", "64,64,4,1", "128,32,8,1"],
}


SWEEP_KERNELS = list(dict.fromkeys(k for k, _ in SWEEP))


def sweep(n: int, d: int, kernels: list[str] = SWEEP_KERNELS) -> list[dict]:
    """The fused kernel (forward fused; dQ split unless the label names a mode) under each block shape
    of SWEEP, one kernel at a time with the others at their defaults: forward time for FWD,
    forward+backward for the rest. ``kernels``: which of SWEEP's kernels (labels) to sweep."""
    inputs = kernel_inputs(n, d)
    out = []
    for label in [k for k in SWEEP_KERNELS if k in kernels]:
        kind = label.split(",")[0]
        dq = label.split()[-1] if "dQ" in label else "split"
        if (label, d) not in SWEEP:
            print(f"sweep N={n} d={d} {label}: no shapes in SWEEP for d = {d}", flush=True)
        for blocks in SWEEP.get((label, d), []):
            settings = KernelSettings(dq=dq).replace(**{f"{kind.lower()}_blocks": Blocks.parse(blocks)})
            try:
                ms, _ = time_variant(kernel(settings), inputs, kind != "FWD")
            except Exception as exc:  # a shape that does not fit (shared memory, registers) is a finding
                ms = float("nan")
                print(f"sweep N={n} d={d} {label} {blocks}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
            timed = "fwd" if kind == "FWD" else "fwd+bwd"
            out.append({"n": n, "d": d, "kernel": label, "blocks": blocks, "ms": ms, "timed": timed})
            print(f"sweep N={n} d={d} {label} {blocks}: {ms:.3f} ms ({timed})", flush=True)
    return out


def projections(n_tokens: int = 32768, width: int = 1024, rank: int = 64) -> list[dict]:
    """Shared DIFF Q projections: X·W, X·A1, X·A2 as three GEMMs vs one GEMM of X·[W | A1 | A2]."""
    dev, dt = DEVICE, BF16
    x = torch.randn(n_tokens, width, device=dev, dtype=dt)
    w = torch.randn(width // 2, width, device=dev, dtype=dt) * 0.02
    a1, a2 = (torch.randn(rank, width, device=dev, dtype=dt) * 0.02 for _ in range(2))
    b1, b2 = (torch.randn(width // 2, rank, device=dev, dtype=dt) * 0.1 for _ in range(2))
    fused_w = torch.cat([w, a1, a2])

    def separate():
        base = x @ w.t()
        return base + (x @ a1.t()) @ b1.t(), base + (x @ a2.t()) @ b2.t()

    def fused():
        y = x @ fused_w.t()
        base, l1, l2 = y.split([width // 2, rank, rank], dim=-1)
        return base + l1 @ b1.t(), base + l2 @ b2.t()

    out = []
    for name, fn in (("separate GEMMs", separate), ("one GEMM X·[W|A1|A2]", fused)):
        out.append(
            {
                "variant": name,
                "tokens": n_tokens,
                "width": width,
                "rank": rank,
                "ms": time_ms(fn, warmup=50, rep=200),
            }
        )
    return out


def profile_once(
    sizes: list[tuple[int, int]], modes: list[str], forward_only: bool = False, with_sdpa: bool = False
) -> None:
    """One forward + backward of the fused kernel per mode, in ``modes`` order, at each of ``sizes``, for
    Nsight Compute (``benchmarks/kernel_plan.sh``, ``benchmarks/forward_profile.sh``). ``forward_only``: the
    forward alone, under ``torch.no_grad()``. ``with_sdpa``: first, at each size, the same pass of standard
    SDPA (h heads of 2d, the benchmark's "standard SDPA" row), whose kernels are the efficiency the fused op is
    measured against. On the GPU the profiled calls (not the inputs' creation) run inside an NVTX range named
    ``profile``, so ``ncu --nvtx --nvtx-include profile/`` takes their kernels and no others."""
    for n, d in sizes:
        inputs = kernel_inputs(n, d)
        b, h = TOKENS // n, WIDTH // (2 * d)
        passes = [("sdpa", standard_sdpa, standard_inputs(b, h, n, 2 * d))] if with_sdpa else []
        passes += [(f"mode {mode}", kernel(MODES[mode]), inputs) for mode in modes]
        for label, fn, args in passes:
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            with torch.cuda.nvtx.range("profile") if DEVICE == "cuda" else contextlib.nullcontext():
                if forward_only:
                    with torch.no_grad():
                        fn(*args)
                else:
                    fn(*args).sum().backward()
                if DEVICE == "cuda":
                    torch.cuda.synchronize()  # the range closes after the kernels, not after their launches
            print(f"profiled N={n} d={d} {label}{' (forward)' if forward_only else ''}", flush=True)


def standard_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The baseline of every ratio: one causal SDPA call of h heads of head dim 2d."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def standard_inputs(b: int, h: int, n: int, head_dim: int) -> tuple:
    """q, k, v of standard attention, (B, h, N, head_dim) leaves that require grad."""
    return tuple(torch.randn(b, h, n, head_dim, device=DEVICE, dtype=BF16, requires_grad=True) for _ in range(3))


def kernel_inputs(n: int, d: int) -> tuple:
    """q1, q2, k1, k2, v, λ of the timed shape (B = TOKENS / N, h = WIDTH / 2d), leaves that require grad."""
    b, h = TOKENS // n, WIDTH // (2 * d)
    leaves = [torch.randn(b, h, n, d, device=DEVICE, dtype=BF16, requires_grad=True) for _ in range(4)]
    v = torch.randn(b, h, n, 2 * d, device=DEVICE, dtype=BF16, requires_grad=True)
    return (*leaves, v, torch.tensor(0.5, device=DEVICE, requires_grad=True))


def use_smoke_settings() -> None:
    """--smoke: everything on the CPU interpreter at tiny shapes (raises SystemExit without TRITON_INTERPRET=1)."""
    global DEVICE, WIDTH, TOKENS, CHECK_SHAPES, BF16
    if not triton_diff.INTERPRET:
        sys.exit("--smoke runs the kernel on the CPU interpreter: set TRITON_INTERPRET=1 before starting python")
    DEVICE, WIDTH, TOKENS, BF16 = "cpu", 64, 64, torch.float16  # (the interpreter has no bfloat16)
    CHECK_SHAPES = ((2, 19, 16),)


def parse_size(text: str) -> tuple[int, int]:
    """``"8192x64"`` → (N, d): query length and head half-dim."""
    try:
        n, d = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}; use NxD, e.g. 8192x64") from None
    return n, d


def build_parser() -> argparse.ArgumentParser:
    """The command line (its own function, so tests can check the plans' arguments without running them)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N ∈ {8192, 16384} only")
    parser.add_argument(
        "--sweep",
        nargs="*",
        choices=SWEEP_KERNELS,
        metavar="KERNEL",
        help=f"also time the kernel's block shapes (SWEEP); with names, those alone: {', '.join(SWEEP_KERNELS)}",
    )
    parser.add_argument("--out", help="results folder (default benchmarks/results)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES), help="fused-kernel modes")
    parser.add_argument("--sizes", nargs="+", type=parse_size, help="NxD pairs, e.g. 8192x64 (overrides --quick)")
    parser.add_argument("--check-dtypes", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    parser.add_argument("--checks-only", action="store_true", help="run the checks, time nothing")
    parser.add_argument("--skip-checks", action="store_true", help="time only (after a passing --checks-only run)")
    parser.add_argument("--profile", action="store_true", help="one fwd+bwd per mode at each size, nothing else")
    parser.add_argument("--forward-only", action="store_true", help="with --profile: the forward alone (no_grad)")
    parser.add_argument("--with-sdpa", action="store_true", help="with --profile: standard SDPA first at each size")
    parser.add_argument("--no-projections", action="store_true", help="skip the projection GEMM timing")
    parser.add_argument("--passed-in", help="with --skip-checks: time only the modes that passed in this checks JSON")
    parser.add_argument("--smoke", action="store_true", help="CPU dry run under TRITON_INTERPRET=1 (tiny shapes)")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.smoke:
        use_smoke_settings()
    default_size = (32, 16) if args.smoke else (8192, 64)
    if (args.forward_only or args.with_sdpa) and not args.profile:
        parser.error("--forward-only and --with-sdpa shape --profile; add --profile")
    if args.profile:
        profile_once(args.sizes or [default_size], args.modes, args.forward_only, args.with_sdpa)
        return
    checks, rows, swept, proj = [], [], [], []
    payload = {"checks": checks, "timings": rows, "sweep": swept, "projections": proj}
    path = write_result("attention", payload, args.out)  # rewritten as results come (a run cut short keeps them)
    dtypes = [{"bf16": BF16, "fp32": torch.float32}[name] for name in args.check_dtypes]
    for label, fn in [("sdpa", sdpa)] + [(f"triton {mode}", kernel(MODES[mode])) for mode in args.modes]:
        for dt in dtypes if not args.skip_checks else []:
            for h_kv, n, d in CHECK_SHAPES:
                checks.append(c := checked(label, fn, dt, h_kv, n, d))
                worst = max(c["errors"].items(), key=lambda kv: kv[1], default=("-", math.nan))
                print(
                    f"check {c['backend']:16s} {c['dtype']:14s} {c['shape']}: worst {worst[0]} {worst[1]:.2e} "
                    f"{'ok' if c['ok'] else 'FAIL ' + c.get('error', '')}",
                    flush=True,
                )
                path.write_text(json.dumps(payload, indent=2))
    failed = [c for c in checks if not c["ok"]]
    modes, sdpa_failed = args.modes, False
    if args.passed_in or not args.skip_checks:  # time only what passed its checks
        gate = json.loads(Path(args.passed_in).read_text())["checks"] if args.passed_in else checks
        passed = modes_that_passed(gate, args.modes)
        sdpa_failed, modes = passed is None, passed or []
        if modes != args.modes and not args.checks_only:
            dropped = "anything (sdpa)" if sdpa_failed else " ".join(m for m in args.modes if m not in modes)
            print(f"not timed, a check failed or did not run: {dropped}", flush=True)
    sizes = args.sizes or (
        [default_size]
        if args.smoke
        else [(8192, 64), (16384, 64), (8192, 128)]
        if args.quick
        else [(2048, 64), (8192, 64), (16384, 64), (8192, 128), (16384, 128)]
    )
    for n, d in [] if sdpa_failed or args.checks_only else sizes:
        rows += bench(n, d, modes)
        print(f"timed N={n} d={d}", flush=True)
        path.write_text(json.dumps(payload, indent=2))
    for n, d in sizes if args.sweep is not None and not failed else []:
        swept += sweep(n, d, args.sweep or SWEEP_KERNELS)
        path.write_text(json.dumps(payload, indent=2))
    if not (args.no_projections or sdpa_failed or args.checks_only):
        proj += projections(256, 64, 8) if args.smoke else projections()
        path.write_text(json.dumps(payload, indent=2))
    print(
        table(
            ["backend", "dtype", "B,h,h_kv,N,d", "out err", "worst grad err", "ok"],
            [
                [
                    c["backend"],
                    c["dtype"].replace("torch.", ""),
                    ",".join(map(str, c["shape"])),
                    f"{c['errors'].get('out', math.nan):.1e}",
                    f"{max((v for k, v in c['errors'].items() if k != 'out'), default=math.nan):.1e}",
                    "yes" if c["ok"] else "NO",
                ]
                for c in checks
            ],
        )
    )
    table_rows = []
    for r in rows:
        two = next(x for x in rows if (x["n"], x["d"], x["variant"]) == (r["n"], r["d"], "DIFF 2 SDPA calls"))
        table_rows.append(
            [
                r["n"],
                r["d"],
                r["variant"],
                f"{r['fwd_ms']:.2f}",
                f"{r['fwd_bwd_ms']:.2f}",
                f"{r['fwd_ms'] / two['fwd_ms']:.2f}",
                f"{r['fwd_bwd_ms'] / two['fwd_bwd_ms']:.2f}",
                f"{r['peak_gib_fwd_bwd']:.2f}",
            ]
        )
    if table_rows:
        headers = ["N", "d", "variant", "fwd ms", "fwd+bwd ms", "fwd ÷ 2-call", "fwd+bwd ÷ 2-call", "peak GiB"]
        print(table(headers, table_rows))
    if swept:
        best = []
        for key in dict.fromkeys((r["n"], r["d"], r["kernel"]) for r in swept):
            group = [r for r in swept if (r["n"], r["d"], r["kernel"]) == key]
            top = min((r for r in group if r["ms"] == r["ms"]), key=lambda r: r["ms"], default=group[0])
            best += [
                [
                    *key,
                    group[0]["timed"],
                    group[0]["blocks"],
                    f"{group[0]['ms']:.3f}",
                    top["blocks"],
                    f"{top['ms']:.3f}",
                ]
            ]
        print(table(["N", "d", "kernel", "timed", "default blocks", "ms", "best blocks", "ms"], best))
    if proj:
        print(table(["projection", "ms"], [[p["variant"], f"{p['ms']:.3f}"] for p in proj]))
    print(f"wrote {path}")
    if failed:
        sys.exit(f"{len(failed)} checks failed: {'nothing' if sdpa_failed else 'their modes were not'} timed")


if __name__ == "__main__":
    main()
