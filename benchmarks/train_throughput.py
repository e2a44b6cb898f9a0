"""Training throughput (tokens/s, MFU) of the variants side by side, on random tokens.

    python benchmarks/train_throughput.py --sizes tiny small --seq-len 256 --batch 8           # CPU
    python benchmarks/train_throughput.py --sizes small 125m --seq-len 2048 --batch 16 --compile  # GPU

One step = forward + backward + AdamW on a (batch, seq_len) batch, bf16 autocast on CUDA. Median over
``--steps`` timed steps after ``--warmup``. MFU = tokens/s × (6·non-embedding params + causal
attention FLOPs per token) / peak, the definition of docs/performance.md.

Each row is printed when measured and the rows so far are rewritten to OUT/partial.json; a row that fails
(out of memory, a compile error) is recorded with its error and the rest still run (exit status 1 at the
end); ``--budget-s`` starts no row after that many seconds. With ``--compile on``, dynamo's caches are
reset before each row, so every row compiles its own model (without the reset, the ninth model of a run
hit ``recompile_limit`` and ran eager: benchmarks/results/logs/h200-20261130-tp23.log), and each row
records the graphs it compiled (``compiled_graphs``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_result

from shareddiff import ModelConfig, build_model
from shareddiff.params import count_parameters
from shareddiff.presets import FAMILIES

WIDTH_UNITS = {"standard": 4, "diff": 6, "shared_diff": 6, "diff_v2": 8, "shared_diff_v2": 8}


def attention_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Causal attention FLOPs per token, forward + backward (3× forward), all layers.

    Standard: QKᵀ and PV over width D → 4·N·D per token non-causal. DIFF, Shared DIFF: two QKᵀ of
    width D/2 and two PV of width D → 6·N·D. The V2 variants: QKᵀ and PV over 2h query heads of
    width d = D/h → 8·N·D. Causal halves all of them.
    """
    return 3 * config.n_layers * WIDTH_UNITS[config.attention] * seq_len * config.d_model / 2


def bench(
    preset: str,
    seq_len: int,
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    compile_model: bool,
    backend: str,
    fused: bool = True,
) -> dict:
    config = ModelConfig.from_preset(preset, max_seq_len=max(seq_len, ModelConfig.from_preset(preset).max_seq_len))
    torch._dynamo.reset()  # this row's model compiles afresh, not as a recompile of the rows before
    counters.clear()
    torch.manual_seed(0)
    model = build_model(config).to(device)
    if backend not in model.layers[0].attention.available_backends():
        # e.g. --backend triton over several families: the fused kernel is the differential op's only;
        # the others run their default (SDPA), and the result says so.
        print(f"{preset}: attention backend {backend!r} is not one of its own; it runs 'auto' (SDPA)", flush=True)
        backend = "auto"
    model.set_attention_backend(backend)
    model.set_fused_projections(fused)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step_model = torch.compile(model) if compile_model else model
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    )
    x = torch.randint(0, config.vocab_size, (batch, seq_len + 1), device=device)

    def step():
        with autocast():
            logits = step_model(x[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    counts = count_parameters(config)
    tokens_per_s = batch * seq_len / median
    flops_per_token = 6 * counts.non_embedding + attention_flops_per_token(config, seq_len)
    return {
        "preset": preset,
        "seq_len": seq_len,
        "batch": batch,
        "compile": compile_model,
        "backend": backend,
        "fused_projections": fused,
        "params": counts.total,
        "params_non_embedding": counts.non_embedding,
        "step_s_median": median,
        "step_s_all": times,
        "tokens_per_s": tokens_per_s,
        "model_flops_per_token": flops_per_token,
        "achieved_tflops": tokens_per_s * flops_per_token / 1e12,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "compiled_graphs": counters["stats"]["unique_graphs"],
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line (its own function, so tests can check the documented commands without running them)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--seq-len", type=int, nargs="+", default=[256])
    parser.add_argument("--batch", type=int, nargs="+", default=[8], help="one per --seq-len, or one for all")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", choices=["off", "on", "both"], default="off")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--backend", default="auto")
    parser.add_argument(
        "--projections",
        choices=["fused", "separate", "both"],
        default="fused",
        help="attention input projections as one GEMM (default) or one per weight",
    )
    parser.add_argument("--peak-tflops", type=float, default=800.0, help="for MFU (H100 bf16 dense: 800 measured)")
    parser.add_argument("--out", help="results folder (default benchmarks/results)")
    parser.add_argument("--budget-s", type=float, help="start no row after this many seconds")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batches = args.batch * len(args.seq_len) if len(args.batch) == 1 else args.batch
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    fusings = {"fused": [True], "separate": [False], "both": [True, False]}[args.projections]
    results, failures, began = [], [], time.perf_counter()
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        for seq_len, batch in zip(args.seq_len, batches, strict=True):
            for compile_model in compiles:
                for family, fused in ((f, u) for f in args.families for u in fusings):
                    label = (
                        f"{family}-{size} seq {seq_len} batch {batch} compile {compile_model} "
                        f"projections {'fused' if fused else 'separate'}"
                    )
                    if args.budget_s is not None and time.perf_counter() - began > args.budget_s:
                        print(f"{label}: skipped (--budget-s {args.budget_s:g})", flush=True)
                        continue
                    try:
                        r = bench(
                            f"{family}-{size}",
                            seq_len,
                            batch,
                            args.steps,
                            args.warmup,
                            device,
                            compile_model,
                            args.backend,
                            fused,
                        )
                    except Exception as exc:  # out of memory, a compile error: recorded, and the next row runs
                        traceback.print_exc()
                        failures.append({"row": label, "error": f"{type(exc).__name__}: {str(exc)[:500]}"})
                        print(f"{label}: FAILED {failures[-1]['error'][:200]}", flush=True)
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                        continue
                    r["mfu"] = r["achieved_tflops"] / args.peak_tflops if device.type == "cuda" else None
                    results.append(r)
                    if args.out:  # keep what is done if the run is cut short
                        Path(args.out, "partial.json").write_text(json.dumps(results, indent=1))
                    print(f"{label}: {r['tokens_per_s']:,.0f} tok/s", flush=True)
    payload = {"results": results, "peak_tflops": args.peak_tflops, "failures": failures}
    path = write_result("train_throughput", payload, args.out)
    rows = []
    for r in results:
        base = next(
            (
                b
                for b in results
                if b["preset"].startswith("transformer-")
                and b["preset"].split("-", 1)[1] == r["preset"].split("-", 1)[1]
                and (b["seq_len"], b["compile"]) == (r["seq_len"], r["compile"])
                and b.get("fused_projections") == r.get("fused_projections")
            ),
            None,
        )
        rows.append(
            [
                r["preset"],
                r["seq_len"],
                r["batch"],
                "yes" if r["compile"] else "no",
                "fused" if r["fused_projections"] else "separate",
                f"{r['tokens_per_s']:,.0f}",
                "" if base is None else f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}",
                "" if r["mfu"] is None else f"{r['mfu']:.1%}",
                "" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}",
            ]
        )
    print(
        table(
            ["preset", "seq", "batch", "compile", "projections", "tokens/s", "vs Transformer", "MFU", "peak GiB"], rows
        )
    )
    print(f"wrote {path}")
    if failures:
        sys.exit(f"{len(failures)} rows failed: " + "; ".join(f["row"] for f in failures))


if __name__ == "__main__":
    main()
