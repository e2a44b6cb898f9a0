"""Data-parallel scaling of the real trainer: 1 GPU, then N GPUs with DDP and FSDP2, same global batch.

    python benchmarks/data_parallel.py --preset shared_diff-350m --gpus 2 --seq-len 2048 --global-batch 16

Each run trains ``--steps`` steps on the bundled corpus through `shareddiff train` (torchrun for N > 1);
tokens/s is the median over logged windows after the first, peak memory is rank 0's
``torch.cuda.max_memory_allocated``. Writes JSON to benchmarks/results/ and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_result


def run(preset: str, gpus: int, strategy: str, seq_len: int, global_batch: int, steps: int, out: Path) -> dict:
    micro = global_batch // gpus
    args = [
        "--preset",
        preset,
        "--no-progress",
        f"train.out_dir={out}",
        f"data.seq_len={seq_len}",
        f"train.micro_batch={micro}",
        f"train.max_steps={steps}",
        "train.log_every=5",
        f"train.eval_every={10 * steps}",
        f"checkpoint.every={10 * steps}",
        f"parallel.strategy={strategy}",
        f"model.max_seq_len={seq_len}",
    ]
    prefix = [sys.executable, "-m", "shareddiff.cli", "train"]
    if gpus > 1:
        prefix = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={gpus}",
            "-m",
            "shareddiff.cli",
            "train",
        ]
    subprocess.run(prefix + args, check=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "tokens_per_s" in r][1:]
    return {
        "preset": preset,
        "gpus": gpus,
        "strategy": strategy if gpus > 1 else "single",
        "seq_len": seq_len,
        "global_batch": global_batch,
        "micro_batch": micro,
        "steps": steps,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in logged),
        "peak_memory_gib_rank0": max(r["peak_memory_gib"] for r in logged),
        "final_loss": [r for r in rows if "loss" in r][-1]["loss"],
        "metrics": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="shared_diff-350m")
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        configs = [(1, "ddp")] + ([(args.gpus, s) for s in ("ddp", "fsdp")] if args.gpus > 1 else [])
        for gpus, strategy in configs:
            results.append(
                run(
                    args.preset,
                    gpus,
                    strategy,
                    args.seq_len,
                    args.global_batch,
                    args.steps,
                    Path(tmp) / f"{gpus}-{strategy}",
                )
            )
    path = write_result("data_parallel", {"results": results}, args.out)
    base = results[0]["tokens_per_s"]
    print(
        table(
            ["preset", "GPUs", "strategy", "global batch", "tokens/s", "scaling", "peak GiB/GPU", "loss"],
            [
                [
                    r["preset"],
                    r["gpus"],
                    r["strategy"],
                    f"{r['global_batch']}×{r['seq_len']}",
                    f"{r['tokens_per_s']:,.0f}",
                    f"{r['tokens_per_s'] / base:.2f}",
                    f"{r['peak_memory_gib_rank0']:.1f}",
                    f"{r['final_loss']:.4f}",
                ]
                for r in results
            ],
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
