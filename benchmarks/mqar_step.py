"""One MQAR training step with the head over every position against the head at the answer positions only.

    python benchmarks/mqar_step.py                      # the grid's four cells, 3 variants, on the GPU if any
    python benchmarks/mqar_step.py --device cpu --batch-scale 0.125 --threads 1   # a CPU-sized version
    python benchmarks/mqar_step.py --smoke               # CPU: one tiny cell, a check of the script

An MQAR row has a target at its answers only (``pairs`` of ``seq_len`` positions, ``data.mqar.mqar_batch``),
and the trainer computes the final norm, the head and the cross-entropy there only
(``train.loss.target_positions``, ``LanguageModel.forward(logits_at=...)``): the same loss and gradients,
without the (batch, seq_len, vocabulary) logits that dominate a 2-layer model's step at vocabulary 8192.
This script times both forms of one forward + backward in the cells of ``configs/repro/mqar.toml`` (the
recipe's batch, times ``--batch-scale``), after ``--warmup`` steps, as the median of ``--repeats`` timings
of ``--steps`` steps each, eager or compiled (``--compile``), in the recipe's precision (bf16 autocast on
CUDA, float32 on the CPU). Before timing, each cell checks that the two forms give the same loss (relative
difference ≤ 1e-4 in float32, 2e-2 under bf16). Results: a table and ``mqar_step-DEVICE-DATE.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, table, write_result

from shareddiff import ModelConfig, build_model
from shareddiff.config import MQARConfig
from shareddiff.data.mqar import mqar_batch
from shareddiff.train.loss import target_positions, token_loss

CELLS = ((64, 4, 512), (128, 8, 512), (256, 16, 256), (512, 64, 128))  # (seq_len, pairs, batch) of the recipe
WIDTHS = {64: 64, 128: 128, 256: 256, 512: 256}  # the width timed per cell (the grid sweeps 64, 128, 256)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(args: argparse.Namespace, variant: str, cell: tuple[int, int, int], device: torch.device) -> dict:
    seq_len, pairs, batch = cell
    batch = max(1, round(batch * args.batch_scale))
    d_model = args.d_model or WIDTHS[seq_len]
    config = ModelConfig.from_preset(
        f"{variant}-mqar", d_model=d_model, vocab_size=args.vocab_size, max_seq_len=max(2 * seq_len, 64)
    )
    model = build_model(config, device=device)
    step_model = torch.compile(model) if args.compile else model
    task = MQARConfig(vocab_size=args.vocab_size, pairs=pairs)
    inputs, targets = mqar_batch(task, seq_len, batch, torch.Generator(device).manual_seed(0))
    at = target_positions(targets, task.n_queries())
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step(sparse: bool) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        with autocast:
            logits = step_model(inputs, logits_at=at) if sparse else step_model(inputs)
        loss = token_loss(logits, targets.gather(1, at)) if sparse else token_loss(logits, targets)
        loss.backward()
        return loss.detach()

    full, sparse = step(False).item(), step(True).item()
    tolerance = 2e-2 if device.type == "cuda" else 1e-4
    rel = abs(full - sparse) / abs(full)
    row = {
        "variant": variant,
        "seq_len": seq_len,
        "pairs": pairs,
        "batch": batch,
        "d_model": d_model,
        "loss_rel_diff": rel,
        "check_ok": rel <= tolerance,
    }
    for name, form in (("full", False), ("answers", True)):
        for _ in range(args.warmup):
            step(form)
        times = []
        for _ in range(args.repeats):
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step(form)
            sync(device)
            times.append((time.perf_counter() - start) / args.steps * 1000)
        row[f"{name}_ms"] = statistics.median(times)
    row["speedup"] = row["full_ms"] / row["answers_ms"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU: one tiny cell, 1 step (checks the script)")
    parser.add_argument("--variants", nargs="+", default=["transformer", "diff", "shared_diff"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--d-model", type=int, help="one width for every cell (default: 64/128/256/256 by cell)")
    parser.add_argument("--batch-scale", type=float, default=1.0, help="× the recipe's batch of each cell")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (as train.compile=true)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU runs)")
    parser.add_argument("--out", help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    cells = CELLS
    if args.smoke:
        args.device, args.vocab_size, args.d_model, args.batch_scale = "cpu", 256, 32, 1 / 64
        args.steps, args.warmup, args.repeats = 1, 0, 1
        cells = CELLS[:1]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for cell in cells:
        for variant in args.variants:
            row = measure(args, variant, cell, device)
            rows.append(row)
            check = "ok" if row["check_ok"] else "FAIL"
            print(
                f"{variant:>12} N={row['seq_len']:<4} pairs={row['pairs']:<3} batch={row['batch']:<4} "
                f"D={row['d_model']:<4} full {row['full_ms']:8.2f} ms  answers only {row['answers_ms']:8.2f} ms  "
                f"x{row['speedup']:.2f}  loss rel diff {row['loss_rel_diff']:.1e} {check}",
                flush=True,
            )
    headers = ["variant", "N", "pairs", "batch", "D", "full ms", "answers ms", "speedup"]
    lines = []
    for r in rows:
        times = [f"{r['full_ms']:.2f}", f"{r['answers_ms']:.2f}", f"{r['speedup']:.2f}"]
        lines.append([r["variant"], r["seq_len"], r["pairs"], r["batch"], r["d_model"], *times])
    print(table(headers, lines))
    env = environment()
    name = "mqar_step-smoke" if args.smoke else "mqar_step"
    path = write_result(name, {"environment": env, "args": vars(args), "results": rows}, args.out)
    print(f"wrote {path}")
    return 0 if all(r["check_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
