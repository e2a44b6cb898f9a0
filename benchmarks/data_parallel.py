"""Data-parallel scaling of the trainer's step: one GPU against N, DDP and FSDP2, eager and compiled, at the
same global batch; tokens/s, scaling, MFU and peak memory per GPU, and on request a profile summary.

    python3 benchmarks/data_parallel.py --gpus 2 --out OUT        # the table: launches the 1- and 2-GPU runs
    python3 benchmarks/data_parallel.py --forms single/block single/eager --out OUT                  # 1 GPU
    torchrun --standalone --nproc_per_node=2 benchmarks/data_parallel.py --forms ddp/block fsdp/block --out OUT
    python3 benchmarks/data_parallel.py --table OUT/rows.jsonl     # the table of the rows measured so far

A form is ``STRATEGY/COMPILE[,field=value...]``: STRATEGY ``single`` (one process), ``ddp`` or ``fsdp``
(under torchrun); COMPILE ``eager``, ``block`` (each block compiled before wrapping, as torchtitan does)
or ``model`` (the whole wrapped model); then [parallel] fields, e.g.
``fsdp/block,prefetch_blocks=2,reshard_after_forward=never``. One launch measures its forms one after
the other in the same processes; each row is printed and appended to OUT/rows.jsonl as soon as it is
measured, and ``--profile`` adds a profiler summary per form to OUT/profiles.json (no trace files).

The step is the trainer's (shareddiff.train.trainer): the model of ``build_model`` wrapped by
``parallelize``, bf16 autocast on CUDA, cross-entropy on float32 logits over ``grad_accum``
micro-batches under ``gradient_sync``, ``clip_grad_norm_`` (FSDP2's DTensor norm gathered), the loss
averaged across ranks and the loss and norm read with ``.item()`` as the trainer logs them, then fused
AdamW from ``build_optimizer``. The tokens are random (the corpus loader is not on the GPU's clock), the
same global batch on any number of processes (rank r takes rows r::W, as the trainer's loader does), so
every form of a preset reports the same loss up to rounding; the model is initialised on the GPU. By
default each process takes its share of the global batch in one micro-batch, as the earlier
trainer-driven version of this benchmark did: the 1-GPU row holds the activations of the whole global
batch, which is what the FSDP2 memory target compares against; ``--micro-batch`` accumulates instead.
tokens/s = global batch tokens × steps / wall time of ``--steps`` steps after ``--warmup`` (the first
step, compile included, is reported apart). MFU per GPU =
tokens/s/GPU × (6 · non-embedding params + causal attention FLOPs per token) / ``--peak-tflops``
(docs/performance.md's definition). Peak memory is ``torch.cuda.max_memory_allocated`` of every rank.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import record_function

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, table, write_result
from profile_summary import summarize
from train_throughput import attention_flops_per_token

from shareddiff.config import ModelConfig, OptimConfig, ParallelConfig, RunConfig, parse_override_value
from shareddiff.model import build_model
from shareddiff.params import count_parameters
from shareddiff.train.device import autocast_for, compute_precision
from shareddiff.train.distributed import (
    DistInfo,
    barrier,
    gradient_sync,
    init_distributed,
    mean_across_ranks,
    parallelize,
    shutdown,
)
from shareddiff.train.trainer import build_optimizer

STRATEGIES = ("single", "ddp", "fsdp")
COMPILE_MODES = ("eager", "block", "model")
TRAINING_STATE_BYTES = 16  # per parameter: fp32 weight, gradient, AdamW's two moments


@dataclass(frozen=True)
class Form:
    text: str
    strategy: str
    compile: str
    parallel: ParallelConfig


def parse_form(text: str, world: int) -> Form:
    """``STRATEGY/COMPILE[,field=value...]`` (see the module docstring) for a launch of ``world`` processes."""
    head, *options = text.split(",")
    strategy, _, compile_mode = head.partition("/")
    compile_mode = compile_mode or "eager"
    if strategy not in STRATEGIES or compile_mode not in COMPILE_MODES:
        raise ValueError(
            f"form {text!r}: write STRATEGY/COMPILE with STRATEGY in {STRATEGIES} and COMPILE in {COMPILE_MODES}"
        )
    if (strategy == "single") != (world == 1):
        raise ValueError(
            f"form {text!r} needs {'one process' if strategy == 'single' else 'torchrun with several processes'}, "
            f"this launch has {world}; launch 'single' forms with python3 and ddp/fsdp forms with torchrun"
        )
    fields = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            raise ValueError(f"form {text!r}: option {option!r} must look like field=value, e.g. prefetch_blocks=2")
        fields[key] = parse_override_value(value)
    fields.setdefault("strategy", "ddp" if strategy == "single" else strategy)
    fields.setdefault("compile_unit", "model" if compile_mode == "model" else "block")
    try:
        parallel = ParallelConfig(**fields)
    except TypeError as err:
        valid = [f.name for f in dataclasses.fields(ParallelConfig)]
        raise ValueError(f"form {text!r}: unknown [parallel] field ({err}); valid fields are {valid}") from err
    RunConfig(parallel=parallel).validate()
    return Form(text, strategy, compile_mode, parallel)


def _gather(value, dist: DistInfo) -> list:
    if not dist.enabled:
        return [value]
    values = [None] * dist.world
    torch.distributed.all_gather_object(values, value)
    return values


def _time_left(deadline: float | None, dist: DistInfo) -> float:
    """Seconds until ``deadline`` as rank 0 sees it (every rank takes the same decision)."""
    left = [math.inf if deadline is None else deadline - time.time()]
    if dist.enabled:
        torch.distributed.broadcast_object_list(left, src=0)
    return left[0]


def measure(form: Form, args, dist: DistInfo, device: torch.device) -> tuple[dict, dict | None]:
    """One row of the table (and the per-rank profile summaries with ``args.profile``)."""
    base = ModelConfig.from_preset(args.preset)
    config = ModelConfig.from_preset(
        args.preset, vocab_size=args.vocab_size, max_seq_len=max(args.seq_len, base.max_seq_len)
    )
    micro_batch = args.micro_batch or args.global_batch // dist.world
    if args.global_batch % (micro_batch * dist.world):
        raise ValueError(
            f"--global-batch {args.global_batch} is not a multiple of the micro-batch {micro_batch} × "
            f"{dist.world} processes"
        )
    accum = args.global_batch // (micro_batch * dist.world)
    counts = count_parameters(config)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = build_model(config, attn_backend=args.attn_backend, device=device)
    precision = compute_precision(args.precision, device)
    model = parallelize(model, form.parallel, dist, device, compile=form.compile != "eager", precision=precision)
    step_model = torch.compile(model) if form.compile == "model" else model
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4), device)
    autocast = autocast_for(args.precision, device)
    batch = torch.randint(0, config.vocab_size, (args.global_batch, args.seq_len + 1), generator=torch.Generator())
    rows = batch[dist.rank :: dist.world].view(accum, micro_batch, args.seq_len + 1).to(device)
    inputs, targets = rows[..., :-1].contiguous(), rows[..., 1:].contiguous()  # each step trains on this batch

    def step() -> tuple[float, float]:
        loss_sum = torch.zeros((), device=device)
        with record_function("step::forward_backward"):
            for micro in range(accum):
                with gradient_sync(model, form.parallel, micro == accum - 1):
                    with autocast():
                        logits = step_model(inputs[micro])
                    loss = F.cross_entropy(logits.float().flatten(0, 1), targets[micro].flatten()) / accum
                    loss.backward()
                loss_sum += loss.detach()
        with record_function("step::clip_grad_norm"):
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
        with record_function("step::item"):
            values = mean_across_ranks(loss_sum, dist).item(), grad_norm.item()
        with record_function("step::optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return values

    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    step()
    synchronize()
    first_step_s = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        step()
    synchronize()
    barrier(dist)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss, grad_norm = step()
    synchronize()
    elapsed = time.perf_counter() - start
    memory = (torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)) if cuda else (0, 0)
    profiles = None
    if args.profile:
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(args.profile_steps):
                step()
            synchronize()
        profiles = _gather(summarize(prof, args.profile_steps), dist)
    memory = _gather(memory, dist)
    tokens_per_s = args.global_batch * args.seq_len * args.steps / elapsed
    flops_per_token = 6 * counts.non_embedding + attention_flops_per_token(config, args.seq_len)
    from torch._dynamo.utils import counters

    row = {
        "tag": args.tag,
        "form": form.text,
        "preset": args.preset,
        "gpus": dist.world,
        "strategy": form.strategy,
        "compile": form.compile,
        "parallel": dataclasses.asdict(form.parallel),
        "precision": precision,
        "seq_len": args.seq_len,
        "vocab_size": config.vocab_size,
        "global_batch": args.global_batch,
        "micro_batch": micro_batch,
        "grad_accum": accum,
        "warmup": args.warmup,
        "steps": args.steps,
        "first_step_s": first_step_s,
        "step_s": elapsed / args.steps,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_gpu": tokens_per_s / dist.world,
        "model_flops_per_token": flops_per_token,
        "mfu": tokens_per_s / dist.world * flops_per_token / (args.peak_tflops * 1e12) if cuda else None,
        "peak_memory_gib": [m[0] / 2**30 for m in memory],
        "peak_reserved_gib": [m[1] / 2**30 for m in memory],
        "loss": loss,
        "grad_norm": grad_norm,
        "params": counts.total,
        "training_state_gib": counts.total * TRAINING_STATE_BYTES / 2**30,
        "compiled_graphs": counters["stats"]["unique_graphs"],
    }
    return row, profiles


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()


def run_forms(args) -> None:
    """Measure ``args.forms`` one after the other in this launch (one process, or every torchrun rank)."""
    dist, device = init_distributed(args.device)
    try:
        forms = [parse_form(text, dist.world) for text in args.forms]
        out = Path(args.out) if args.out else None
        if dist.is_main and out is not None:
            out.mkdir(parents=True, exist_ok=True)
        for form in forms:
            left = _time_left(args.deadline, dist)
            if left < args.reserve:
                if dist.is_main:
                    print(f"SKIP {form.text}: {left:.0f} s left, fewer than --reserve {args.reserve} s", flush=True)
                continue
            if dist.is_main:
                state = count_parameters(ModelConfig.from_preset(args.preset, vocab_size=args.vocab_size)).total
                print(
                    f"START {form.text} {args.preset} on {dist.world} process(es): training state (fp32 weights, "
                    f"gradients, AdamW moments) {state * TRAINING_STATE_BYTES / 2**30:.1f} GiB unsharded",
                    flush=True,
                )
            row, profiles = measure(form, args, dist, device)
            _release(device)
            if dist.is_main:
                _report(row, profiles, out)
            barrier(dist)
    finally:
        shutdown(dist)


def _report(row: dict, profiles: list[dict] | None, out: Path | None) -> None:
    peak = max(row["peak_memory_gib"])
    mfu = "" if row["mfu"] is None else f" MFU {row['mfu']:.1%}"
    print(
        f"ROW {row['form']} {row['preset']} gpus={row['gpus']} batch {row['global_batch']}×{row['seq_len']} "
        f"(micro {row['micro_batch']} × accum {row['grad_accum']}): {row['tokens_per_s']:,.0f} tok/s{mfu}, "
        f"peak {peak:.1f} GiB/GPU, first step {row['first_step_s']:.1f} s, loss {row['loss']:.4f}",
        flush=True,
    )
    if profiles is not None:
        main = profiles[0]
        if "nccl_ms_per_step" in main:
            print(
                f"PROFILE {row['form']} rank 0, ms per step: span {main['span_ms_per_step']:.1f}, GPU idle "
                f"{main['idle_ms_per_step']:.1f}, NCCL {main['nccl_ms_per_step']:.1f} of which exposed "
                f"{main['nccl_exposed_ms_per_step']:.1f}",
                flush=True,
            )
    if out is None:
        return
    with (out / "rows.jsonl").open("a") as f:
        f.write(json.dumps({**row, "environment": environment()}) + "\n")
    if profiles is not None:
        path = out / "profiles.json"
        summaries = json.loads(path.read_text()) if path.is_file() else {}
        summaries[f"{row['preset']} gpus={row['gpus']} {row['form']}"] = {"row": row, "ranks": profiles}
        path.write_text(json.dumps(summaries, indent=1))


def read_rows(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def table_of(rows: list[dict]) -> str:
    """The rows with their scaling and memory against the 1-GPU row of the same preset, batch and compile;
    "state GiB" is the unsharded training state (16 B/param), what one GPU would hold without sharding."""

    def baseline(r: dict) -> dict | None:
        key = (r["preset"], r["seq_len"], r["global_batch"], r["compile"])
        return next(
            (b for b in rows if b["gpus"] == 1 and (b["preset"], b["seq_len"], b["global_batch"], b["compile"]) == key),
            None,
        )

    lines = []
    for r in rows:
        b = baseline(r)
        peak = max(r["peak_memory_gib"])
        lines.append(
            [
                r.get("tag", ""),
                r["preset"],
                r["gpus"],
                r["form"],
                f"{r['global_batch']}×{r['seq_len']}",
                f"{r['micro_batch']}×{r['grad_accum']}",
                f"{r['tokens_per_s']:,.0f}",
                "" if b is None else f"{r['tokens_per_s'] / b['tokens_per_s']:.2f}",
                "" if r["mfu"] is None else f"{r['mfu']:.1%}",
                f"{peak:.1f}",
                "" if b is None or not max(b["peak_memory_gib"]) else f"{peak / max(b['peak_memory_gib']):.2f}",
                f"{r['first_step_s']:.0f}",
                f"{r['training_state_gib']:.1f}",
            ]
        )
    return table(
        [
            "tag",
            "preset",
            "GPUs",
            "form",
            "global batch",
            "micro×accum",
            "tokens/s",
            "scaling",
            "MFU/GPU",
            "peak GiB/GPU",
            "× 1-GPU mem",
            "1st step s",
            "state GiB",
        ],
        lines,
    )


def launch(args, gpus: int, forms: list[str], out: Path) -> None:
    """Run ``forms`` in a fresh process (one GPU) or a fresh torchrun group (``gpus`` > 1)."""
    passed = [
        f"--preset={args.preset}",
        f"--seq-len={args.seq_len}",
        f"--global-batch={args.global_batch}",
        *([f"--micro-batch={args.micro_batch}"] if args.micro_batch else []),
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--vocab-size={args.vocab_size}",
        f"--precision={args.precision}",
        f"--attn-backend={args.attn_backend}",
        f"--peak-tflops={args.peak_tflops}",
        f"--device={args.device}",
        f"--tag={args.tag}",
        f"--out={out}",
        *(["--profile", f"--profile-steps={args.profile_steps}"] if args.profile else []),
        *([f"--deadline={args.deadline}", f"--reserve={args.reserve}"] if args.deadline else []),
    ]
    prefix = [sys.executable]
    if gpus > 1:
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    subprocess.run([*prefix, __file__, *passed, "--forms", *forms], check=True)


def build_parser() -> argparse.ArgumentParser:
    """The command line (its own function, so tests can check the plans' arguments without running them)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forms", nargs="+", help="measure these forms in this launch (see above)")
    parser.add_argument("--table", help="print the table of a rows.jsonl and write the result JSON next to it")
    parser.add_argument("--gpus", type=int, default=2, help="without --forms: the N of the N-GPU rows")
    parser.add_argument(
        "--compile",
        nargs="+",
        default=["block", "eager"],
        choices=COMPILE_MODES,
        help="without --forms: the compile modes of the table",
    )
    parser.add_argument("--preset", default="shared_diff-350m")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--global-batch", type=int, default=32, help="sequences per optimizer step, all GPUs")
    parser.add_argument(
        "--micro-batch",
        type=int,
        help="sequences per GPU per forward (default: the global batch ÷ GPUs, no accumulation)",
    )
    parser.add_argument("--vocab-size", type=int, default=16384, help="16384: the bundled tokenizer's")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps, the first (compile) included")
    parser.add_argument("--precision", default="auto", help="train.precision: auto = bf16 autocast on CUDA")
    parser.add_argument("--attn-backend", default="auto")
    parser.add_argument("--device", default="auto", help="train.device (cpu: gloo, for testing the script)")
    parser.add_argument("--peak-tflops", type=float, default=800.0, help="for MFU (docs/performance.md: 800)")
    parser.add_argument("--profile", action="store_true", help="also profile each form, summary in profiles.json")
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--deadline", type=float, help="unix time after which no form starts (see --reserve)")
    parser.add_argument("--reserve", type=float, default=45.0, help="seconds a form needs at least before --deadline")
    parser.add_argument("--tag", default="", help="a label stored in each row (e.g. table, profile, ablation)")
    parser.add_argument("--out", help="folder for rows.jsonl / profiles.json / the result JSON")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be ≥ 1 (the first warm-up step compiles)")
    if args.forms:
        run_forms(args)
        return
    if args.table:
        rows = read_rows(args.table)
    else:
        out = Path(args.out or tempfile.mkdtemp(prefix="data_parallel-"))
        launch(args, 1, [f"single/{c}" for c in args.compile], out)
        if args.gpus > 1:
            launch(args, args.gpus, [f"{s}/{c}" for c in args.compile for s in ("ddp", "fsdp")], out)
        rows = read_rows(out / "rows.jsonl")
    print(table_of(rows))
    folder = Path(args.table).parent if args.table else Path(args.out) if args.out else None
    print(f"wrote {write_result('data_parallel', {'results': rows}, folder)}")


if __name__ == "__main__":
    main()
