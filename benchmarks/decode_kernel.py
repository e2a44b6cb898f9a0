"""The differential decode kernel alone (``ops.triton_decode``) against the path it replaces, on the GPU.

    python3 benchmarks/decode_kernel.py --out $OUT --budget-s 100     # one H200: under 2 minutes
    python3 benchmarks/decode_kernel.py --smoke                       # CPU: a tiny config under TRITON_INTERPRET=1

For the head layout of ``--preset`` (shared_diff-350m: h = h_kv = 8, d = 64, 24 layers), bfloat16, each batch of
``--batches`` and cache length of ``--lengths`` (a left-padded mask over the static buffer, every row's cache full
to its end), it times one decode step's differential tail: the path of ``StaticDecoder`` without the kernel
(``sdpa_differential_attention``: two ``F.scaled_dot_product_attention`` calls and o1 − λ·o2, then
``fused_rms_norm`` with the merged head-norm weight, as ``DiffAttention.forward`` does), the kernel at each launch
setting of the sweep (path "kernel": ``differential_decode_attention``, split-K merged by a second kernel) and the
decode step's own call at the same settings (path "step": ``differential_decode_step``, which reads the step's
packed projection row, writes its key and value to the cache at the last position (the values already there, so
every call sees the same cache) and merges split-K in the same kernel); ``--paths`` picks. The sweep: key splits
(1, ``split_count``'s choice, half and twice it) × keys per block (``--block-n``) × warps (``--warps``). The
calls of a step (``--layers``, the preset's layer count) cycle over enough distinct caches (≥ 256 MiB in all) that
a call does not find its keys in L2, as in a real step. Before
timing, every configuration's output (layer 0) is checked against the float32 SDPA path of the same inputs
(relative error ≤ ``--tol``); a mismatch stops the run with an error.

Times, per call (µs): "eager", CUDA events around ``--iters`` passes over the layers; "graph", one CUDA graph of
the layers' calls back to back (what a captured decode step sees: no launch gaps from Python), replayed
``--replays`` times. "GB/s": the cache bytes a call reads (K1, K2, V) over its graph time. Configurations past
``--budget-s`` (wall time since the start) are skipped and listed. Writes a table and JSON (benchmarks/results/ or
``--out``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, table, write_result

HEAD_NORM_EPS = 1e-5
DISTINCT_BYTES = 256 * 2**20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="shared_diff-350m", help="whose head layout and layer count")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--lengths", type=int, nargs="+", default=[384, 2048, 8192], help="cache buffer lengths")
    parser.add_argument("--block-n", type=int, nargs="+", default=[32, 64, 128], help="keys per block")
    parser.add_argument("--warps", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--splits", type=int, nargs="+", help="default: 1, the rule's S, S // 2 and 2·S")
    parser.add_argument(
        "--paths", nargs="+", choices=["kernel", "step"], default=["kernel", "step"], help="the kernel's rows to time"
    )
    parser.add_argument("--layers", type=int, help="distinct caches per step (default: the preset's n_layers)")
    parser.add_argument("--iters", type=int, default=10, help="eager passes over the layers")
    parser.add_argument("--replays", type=int, default=10, help="replays of the captured graph")
    parser.add_argument("--tol", type=float, default=1e-2, help="relative error allowed against float32 (bf16 ≈ 4e-3)")
    parser.add_argument("--budget-s", type=float, default=100.0, help="skip configurations after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a tiny config on the CPU under TRITON_INTERPRET=1")
    parser.add_argument("--out", help="results folder (default benchmarks/results)")
    return parser


def smoke_settings(args: argparse.Namespace) -> None:
    """The tiny configuration of ``--smoke``: the plumbing, not the speed."""
    args.preset, args.batches, args.lengths, args.layers = "shared_diff-tiny", [2], [40], 2
    args.block_n, args.warps, args.splits, args.iters = [16], [4], [1, 3], 1


def make_layers(config, batch: int, n_k: int, caches: int, device, seed: int) -> list[tuple]:
    """``caches`` sets of (q, k, v, λ, mask, weight, qkv, write_at, counters) as a decode step hands the kernel,
    bfloat16, drawn on ``device``; rows left-padded by up to a quarter of the buffer (row 0 not at all), every key
    after the padding visible (the cache full). qkv: the step's packed row (``differential_decode_step``) of q and
    the cache's last key and value, which write_at (the last position) points at; counters: shared, zero."""
    h, h_kv, d, dtype = config.n_heads, config.n_kv_heads, config.head_dim, torch.bfloat16
    gen = torch.Generator(device).manual_seed(seed)
    pad = torch.randint(0, max(1, n_k // 4), (batch,), generator=gen, device=device)
    pad[0] = 0
    visible = torch.arange(n_k, device=device)[None, :] >= pad[:, None]
    mask = torch.where(visible, 0.0, float("-inf")).to(dtype)[:, None, None, :]

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    out = []
    write_at = torch.tensor([n_k - 1], device=device)
    counters = torch.zeros(batch * h, dtype=torch.int32, device=device)
    for _ in range(caches):
        q, k, v = randn(batch, 2 * h, 1, d), randn(batch, 2 * h_kv, n_k, d), randn(batch, h_kv, n_k, 2 * d)
        lam = torch.rand((), generator=gen, device=device, dtype=dtype) * 0.8 + 0.1
        weight = randn(2 * d) * 0.3 + 1.0
        qkv = torch.cat([t[:, :, -1].flatten(1) for t in (q, k, v)], dim=1)[:, None]
        out.append((q, k, v, lam, mask, weight, qkv, write_at, counters))
    return out


def distinct_caches(config, batch: int, n_k: int, calls: int) -> int:
    """How many layers' caches to allocate: enough that the calls of a step read ≥ ``DISTINCT_BYTES`` of distinct
    keys and values (more than an H200's L2: no call finds its cache there), at least 2, at most ``calls``."""
    per_layer = batch * config.n_kv_heads * n_k * config.head_dim * 4 * 2  # K1, K2 (d) and V (2d), 2 bytes each
    return min(calls, max(2, -(-DISTINCT_BYTES // per_layer)))


def sdpa_path(q, k, v, lam, mask, weight, *step):
    """The decode step's tail without the kernel: ``sdpa_differential_attention`` then ``fused_rms_norm``."""
    from shareddiff.layers import fused_rms_norm
    from shareddiff.ops import sdpa_differential_attention

    q1, q2 = q.chunk(2, dim=1)
    k1, k2 = k.chunk(2, dim=1)
    return fused_rms_norm(sdpa_differential_attention(q1, q2, k1, k2, v, lam, False, mask), weight, HEAD_NORM_EPS)


def kernel_path(q, k, v, lam, mask, weight, *step):
    from shareddiff.ops.triton_decode import differential_decode_attention

    return differential_decode_attention(q, k, v, lam, mask, weight, HEAD_NORM_EPS)


def step_path(q, k, v, lam, mask, weight, qkv, write_at, counters):
    from shareddiff.ops.triton_decode import differential_decode_step

    return differential_decode_step(qkv, k, v, lam, mask, write_at, weight, HEAD_NORM_EPS, counters=counters)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm()).item()


def time_eager(fn, layers: list[tuple], iters: int) -> float:
    """µs per call: ``iters`` passes over the layers, CUDA events (the CPU: wall clock)."""
    for inputs in layers:
        fn(*inputs)
    if not torch.cuda.is_available() or layers[0][0].device.type != "cuda":
        start = time.perf_counter()
        for _ in range(iters):
            for inputs in layers:
                fn(*inputs)
        return (time.perf_counter() - start) / (iters * len(layers)) * 1e6
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        for inputs in layers:
            fn(*inputs)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / (iters * len(layers)) * 1e3


def time_graph(fn, layers: list[tuple], replays: int) -> float:
    """µs per call: one CUDA graph of every layer's call back to back (after a warm-up on a side stream, as
    PyTorch's CUDA-graph notes do), replayed ``replays`` times between CUDA events."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for inputs in layers:
            fn(*inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for inputs in layers:
            fn(*inputs)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    del graph
    return start.elapsed_time(end) / (replays * len(layers)) * 1e3


def split_choices(args, batch: int, heads: int, n_k: int, sm_count: int) -> list[int]:
    from shareddiff.ops.triton_decode import split_count

    if args.splits:
        return list(args.splits)
    rule = split_count(batch, heads, n_k, sm_count)
    return sorted({1, rule, max(1, rule // 2), 2 * rule} if rule > 1 else {1, 2, 4}, key=lambda s: (s != rule, s))


def bench_shape(args, config, batch: int, n_k: int, device, deadline: float, sm_count: int) -> list[dict]:
    """Rows for one (batch, cache length): the SDPA path, then each kernel configuration (the rule's first)."""
    from shareddiff.ops.triton_decode import (
        NUM_WARPS,
        decode_kernel_settings,
        default_block_n,
        split_count,
        split_plan,
    )

    calls = args.layers or config.n_layers
    caches = make_layers(config, batch, n_k, distinct_caches(config, batch, n_k, calls), device, args.seed)
    layers = [caches[i % len(caches)] for i in range(calls)]  # a step's calls, cycling over the distinct caches
    q, k, v, lam, mask, weight = layers[0][:6]
    expected = sdpa_path(q.float(), k.float(), v.float(), lam.float(), mask.float(), weight.float())
    cache_bytes = (k.numel() + v.numel()) * k.element_size()
    rule = split_count(batch, config.n_heads, n_k, sm_count)
    base = {"batch": batch, "n_k": n_k, "layers": calls, "distinct_caches": len(caches), "rule_splits": rule}
    on_cuda = device.type == "cuda"

    def measure(row: dict, fn) -> dict:
        err = rel_err(fn(*layers[0]), expected)
        if err > args.tol:
            raise RuntimeError(f"{row}: relative error {err:.3g} against the float32 SDPA path > --tol {args.tol}")
        row["rel_err"] = err
        row["eager_us"] = time_eager(fn, layers, args.iters)
        if on_cuda:
            row["graph_us"] = time_graph(fn, layers, args.replays)
            row["graph_GBps"] = cache_bytes / (row["graph_us"] * 1e-6) / 1e9
        return row

    rows = [measure(base | {"path": "sdpa"}, sdpa_path)]
    configs = [(s, bn, w) for s in split_choices(args, batch, config.n_heads, n_k, sm_count)
               for bn in args.block_n for w in args.warps]  # fmt: skip
    default = (rule, default_block_n(batch, config.n_heads, n_k, sm_count), NUM_WARPS)
    configs = [default, *configs]  # the default launch first: timed whatever the budget
    seen = set()
    for splits, block_n, warps in configs:
        effective = split_plan(n_k, splits, block_n)[0]
        if (effective, block_n, warps) in seen:
            continue
        seen.add((effective, block_n, warps))
        for path in args.paths:
            row = base | {"path": path, "splits": effective, "block_n": block_n, "warps": warps}
            row["default"] = (splits, block_n, warps) == default
            if time.monotonic() > deadline and not row["default"]:
                rows.append(row | {"skipped": "budget"})
                continue
            with decode_kernel_settings(splits=splits, block_n=block_n, num_warps=warps, num_stages=args.stages):
                rows.append(measure(row, kernel_path if path == "kernel" else step_path))
            print({k: (round(x, 4) if isinstance(x, float) else x) for k, x in rows[-1].items()}, flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per (batch, n_k) and kernel path: the SDPA path's time, the default launch's and the fastest kernel
    configuration's (graph time on CUDA, eager on the CPU)."""
    key = "graph_us" if any("graph_us" in r for r in rows) else "eager_us"
    out = []
    for shape in dict.fromkeys((r["batch"], r["n_k"]) for r in rows):
        timed = [r for r in rows if (r["batch"], r["n_k"]) == shape and key in r]
        sdpa = next(r for r in timed if r["path"] == "sdpa")
        for path in dict.fromkeys(r["path"] for r in timed if r["path"] != "sdpa"):
            kernels = [r for r in timed if r["path"] == path]
            default = next(r for r in kernels if r["default"])
            best = min(kernels, key=lambda r: r[key])
            out.append({
                "batch": shape[0], "n_k": shape[1], "path": path, "time": key, "sdpa_us": sdpa[key],
                "default_us": default[key], "default_splits": default["splits"], "best_us": best[key],
                "best": "splits {splits}, block_n {block_n}, warps {warps}".format(**best),
                "speedup_default": sdpa[key] / default[key], "speedup_best": sdpa[key] / best[key],
            })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined (their module's import)
        smoke_settings(args)
    elif not torch.cuda.is_available():
        print("benchmarks/decode_kernel.py times CUDA kernels: run it on a GPU, or --smoke on the CPU", file=sys.stderr)
        return 2
    from shareddiff import ModelConfig
    from shareddiff.ops.triton_decode import _sm_count

    started = time.monotonic()
    deadline = started + args.budget_s
    config = ModelConfig.from_preset(args.preset)
    device = torch.device("cpu" if args.smoke else "cuda")
    sm_count = _sm_count(device)
    rows = []
    with torch.no_grad():
        for batch in args.batches:
            for n_k in args.lengths:
                rows += bench_shape(args, config, batch, n_k, device, deadline, sm_count)
    headers = ["batch", "n_k", "path", "splits", "block_n", "warps", "eager µs", "graph µs", "GB/s", "rel err"]
    keys = ["batch", "n_k", "path", "splits", "block_n", "warps", "eager_us", "graph_us", "graph_GBps", "rel_err"]

    def cell(row, k):
        value = row.get(k, row.get("skipped", "") if k == "eager_us" else "")
        return f"{value:.3g}" if isinstance(value, float) else value

    print(table(headers, [[cell(r, k) for k in keys] for r in rows]))
    summary = summarise(rows)
    columns = ["batch", "n_k", "path", "time", "sdpa_us", "default_us", "default_splits", "best_us", "best"]
    columns += ["speedup_default", "speedup_best"]
    print(table(columns, [[cell(s, k) for k in columns] for s in summary]))
    skipped = sum("skipped" in r for r in rows)
    if skipped:
        print(f"{skipped} configurations skipped past --budget-s {args.budget_s}")
    layout = {"n_heads": config.n_heads, "n_kv_heads": config.n_kv_heads, "head_dim": config.head_dim}
    payload = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "environment": environment()}
    payload |= {"layout": layout | {"sm_count": sm_count}, "results": rows, "summary": summary}
    payload["wall_s"] = time.monotonic() - started
    print(f"wrote {write_result('decode_kernel', payload, args.out)} in {payload['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
