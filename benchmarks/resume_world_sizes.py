"""Resume on another world size through the real trainer: train on N processes (FSDP2 by default), then
continue the same run from its middle checkpoint on one process, and compare the two continuations.

    python3 benchmarks/resume_world_sizes.py --gpus 2 --out OUT        # NCCL on 2 GPUs, then 1 GPU
    python3 benchmarks/resume_world_sizes.py --gpus 2 --device cpu     # the same on gloo

Step 1 trains ``--steps`` steps on ``--gpus`` processes under torchrun, a checkpoint every
``--resume-at`` steps. Step 2 copies the run folder, drops its checkpoints after ``--resume-at`` and
resumes it with ``shareddiff train --resume`` in one process (micro-batch × N, so the same global
batch). The losses of the steps after ``--resume-at`` are then compared: the same batches and the same
arithmetic up to the order of the gradient reduction (FSDP2 gathers float32 parameters here, so both
sides run the same bf16 autocast). Writes ``resume_world_sizes.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import environment

from shareddiff.train.checkpoint import list_checkpoints, read_state
from shareddiff.train.metrics import read_metrics


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def build_parser() -> argparse.ArgumentParser:
    """The command line (its own function, so tests can check the plans' arguments without running them)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=2, help="processes of the first run")
    parser.add_argument("--preset", default="shared_diff-125m")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--resume-at", type=int, default=6)
    parser.add_argument("--strategy", default="fsdp", choices=["ddp", "fsdp"])
    parser.add_argument("--device", default="auto", help="train.device; cpu runs the same on gloo")
    parser.add_argument("--tol", type=float, default=1e-2, help="largest relative loss difference accepted")
    parser.add_argument("--work", help="folder for the two run folders (default: a temporary one)")
    parser.add_argument("--out", help="folder for resume_world_sizes.json")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.global_batch % args.gpus or not 0 < args.resume_at < args.steps:
        parser.error("--global-batch must be a multiple of --gpus, and 0 < --resume-at < --steps")
    work = Path(args.work or tempfile.mkdtemp(prefix="resume_world_sizes-"))
    first, resumed = work / "first", work / "resumed"
    shutil.rmtree(first, ignore_errors=True)
    shutil.rmtree(resumed, ignore_errors=True)

    def recipe(run_dir: Path, micro_batch: int) -> list[str]:
        return [
            f"--preset={args.preset}",
            "--no-progress",
            f"train.out_dir={run_dir}",
            f"train.device={args.device}",
            f"data.seq_len={args.seq_len}",
            f"train.micro_batch={micro_batch}",
            f"train.max_steps={args.steps}",
            "train.log_every=1",
            f"train.eval_every={10 * args.steps}",
            f"checkpoint.every={args.resume_at}",
            "optim.warmup_steps=2",
            f"parallel.strategy={args.strategy}",
            "parallel.param_dtype=fp32",
        ]

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.gpus}"]
    command_first = [*torchrun, "-m", "shareddiff.cli", "train", *recipe(first, args.global_batch // args.gpus)]
    subprocess.run(command_first, check=True)
    shutil.copytree(first, resumed)
    for ckpt in list_checkpoints(resumed):
        if read_state(ckpt)["step"] > args.resume_at:
            shutil.rmtree(ckpt)
    command_resume = [sys.executable, "-m", "shareddiff.cli", "train", *recipe(resumed, args.global_batch), "--resume"]
    printed = subprocess.run(command_resume, check=True, capture_output=True, text=True).stdout
    print(printed, end="")
    full, cont = losses(first), losses(resumed)
    after = [s for s in sorted(full) if s > args.resume_at]
    if sorted(cont) != sorted(full):
        raise SystemExit(f"the resumed run logged steps {sorted(cont)}, the first run {sorted(full)}")
    differences = {s: abs(cont[s] - full[s]) / abs(full[s]) for s in after}
    saved = read_state(list_checkpoints(first)[-1])["world_size"]
    final = read_state(list_checkpoints(resumed)[-1])
    result = {
        "preset": args.preset,
        "strategy": args.strategy,
        "saved_world_size": saved,
        "resumed_world_size": final["world_size"],
        "resume_at": args.resume_at,
        "steps": args.steps,
        "losses_first": full,
        "losses_resumed": cont,
        "max_relative_difference": max(differences.values()),
        "tol": args.tol,
        "ok": max(differences.values()) <= args.tol and final["world_size"] == 1 and saved == args.gpus,
        "commands": [command_first, command_resume],
        "environment": environment(),
    }
    print(
        f"RESUME saved on {saved} process(es) at step {args.resume_at}, resumed on {final['world_size']}: "
        f"steps {after[0]}..{after[-1]}, largest relative loss difference {result['max_relative_difference']:.2e} "
        f"({'ok' if result['ok'] else 'NOT within'} tol {args.tol})",
        flush=True,
    )
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "resume_world_sizes.json").write_text(json.dumps(result, indent=1))
    if not result["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
