"""The MQAR grid's GPU cost, measured in one device call (``benchmarks/mqar_plan.sh``) and projected.

Three parts, each a subcommand:

``prepare``  writes the plan's scratch experiments (short runs of ``configs/repro/recipe-mqar.toml``: every
             variant in representative cells, ``copies`` runs of a cell at once) and prints its pieces, one
             per line: ``NAME<TAB>SECONDS<TAB>COMMAND`` (a piece is one ``shareddiff reproduce ... --jobs J``
             with J = runs per GPU × GPUs; the shell script runs each under its own time limit).
``overhead`` times the phases of an MQAR run in one process through the trainer's own methods: a training
             step, an evaluation (N and 2N), a checkpoint, a metrics record; and what fraction of a run each
             takes at the recipe's cadence.
``report``   reads the scratch runs (complete or cut off: a run's metrics.jsonl is enough), fits each piece's
             step and evaluation times per variant against the cells' FLOPs, and projects the GPU time of
             ``mqar_budget`` and of ``mqar`` at several ``train.max_steps``: an upper bound (every run to its
             last step) and a lower one (every run stopped at its first possible early stop,
             ``early_stop_patience × eval_every`` steps). Writes ``mqar_plan.json`` and ``mqar_plan.txt``.

Speeds: a run's steps/s is the median of its log windows after the first (which holds compilation and
warm-up); the trainer leaves evaluations and checkpoints out of those windows and logs each evaluation's
seconds (``eval_s``). With R runs per GPU the runs share it, so a run's GPU time is its wall time / R.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shlex
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("transformer", "diff", "shared_diff")
# (seq_len, pairs, micro_batch, d_model): every length of the grid at its batch size, every width once
CELLS = ((64, 4, 512, 64), (128, 8, 512, 128), (256, 16, 256, 256), (512, 64, 128, 256))
SMALLEST, LARGEST = CELLS[0], CELLS[-1]
DRY_CELLS = ((16, 2, 4, 32), (32, 4, 4, 64))  # the CPU dry run: vocabulary 64, tiny models
MEASURE_STEPS = 300
GRID_STEPS = (2000, 4000, 8000, 12500)  # train.max_steps of the mqar projections


@dataclass(frozen=True)
class Piece:
    """One measurement: a run of each (variant, cell) of ``configs`` (one listed twice: two runs, seeds 1
    and 2), ``per_gpu`` of them at once on each GPU."""

    name: str
    mode: str  # "eager", "compiled" (torch.compile, default mode) or "cudagraphs" (mode reduce-overhead)
    per_gpu: int
    configs: tuple[tuple[str, tuple[int, int, int, int]], ...]
    seconds: int = 120  # the piece's time limit

    def runs(self) -> int:
        return len(self.configs)


def _pairs(variants, cells) -> tuple:
    return tuple((v, c) for v in variants for c in cells)


def pieces(dry: bool = False) -> list[Piece]:
    """The plan's pieces in order of importance. On the GPU: eager with 1 run per GPU (each variant in the
    smallest and the largest cell), then 8 runs per GPU eager, with CUDA graphs and compiled (every
    variant in every cell, four of them twice), then 4 per GPU and the compiled forms with 1 and 4 per GPU:
    every piece has each variant in at least two cells, so that each fits a line per variant through its
    own cells. ``dry``: the same shape on the CPU with two tiny cells, 1 and 2 runs at once, eager only
    (the script's own check)."""
    if dry:
        both = (("transformer", DRY_CELLS[0]), ("diff", DRY_CELLS[1]))
        return [Piece("eager-1", "eager", 1, both, seconds=120), Piece("eager-2", "eager", 2, both, seconds=120)]
    ends = _pairs(VARIANTS, (SMALLEST, LARGEST))
    sixteen = _pairs(VARIANTS, CELLS) + _pairs(VARIANTS[:2], CELLS[1:3])
    eight = ends + _pairs(("transformer",), CELLS[1:3])
    return [
        Piece("eager-1", "eager", 1, ends, seconds=100),
        Piece("eager-8", "eager", 8, sixteen, seconds=90),
        Piece("cudagraphs-8", "cudagraphs", 8, sixteen, seconds=170),
        Piece("compiled-8", "compiled", 8, sixteen, seconds=170),
        Piece("eager-4", "eager", 4, eight, seconds=60),
        Piece("cudagraphs-1", "cudagraphs", 1, ends, seconds=90),
        Piece("compiled-1", "compiled", 1, ends, seconds=90),
        Piece("cudagraphs-4", "cudagraphs", 4, eight, seconds=60),
        Piece("compiled-4", "compiled", 4, eight, seconds=60),
    ]


MODE_OVERRIDES = {
    "eager": ["train.compile=false"],  # the recipe compiles
    "compiled": ["train.compile=true"],
    "cudagraphs": ["train.compile=true", "train.compile_mode=reduce-overhead"],
}


def measure_overrides(dry: bool) -> list[str]:
    """The recipe changes of every measured run: a short run with the recipe's logging, evaluation set and
    checkpoints, evaluated twice, never stopped early (its speed is what counts)."""
    if dry:
        return [
            "train.max_steps=6",
            "train.log_every=2",
            "train.eval_every=3",
            "train.early_stop_accuracy=0",
            "train.device=cpu",
            "mqar.vocab_size=64",
            "mqar.eval_samples=8",
            "model.max_seq_len=64",
        ]
    return [
        f"train.max_steps={MEASURE_STEPS}",
        "train.log_every=50",
        f"train.eval_every={MEASURE_STEPS // 2}",
        "train.early_stop_accuracy=0",
    ]


def group_name(variant: str, cell: tuple[int, int, int, int]) -> str:
    seq_len, _pairs, _batch, d_model = cell
    return f"{variant}-n{seq_len}-d{d_model}"


def experiment_toml(piece: Piece) -> str:
    """The scratch experiment of ``piece``: one [[run]] per (variant, cell), a seed per time it is listed."""
    lines = [
        "[experiment]",
        f'description = "mqar_plan.sh piece {piece.name}: speed of short MQAR runs, {piece.per_gpu} per GPU"',
        'recipe = "recipe-mqar.toml"',
        "evals = []",
    ]
    for variant, cell in dict.fromkeys(piece.configs):
        seq_len, pairs, batch, d_model = cell
        overrides = [f"data.seq_len={seq_len}", f"mqar.pairs={pairs}", f"train.micro_batch={batch}"]
        overrides += [f"model.d_model={d_model}", "optim.lr=1e-3"]
        lines += [
            "",
            "[[run]]",
            f'group = "{group_name(variant, cell)}"',
            f'preset = "{variant}-mqar"',
            f"seeds = {list(range(1, piece.configs.count((variant, cell)) + 1))}",
            f"overrides = {json.dumps(overrides)}",
        ]
    return "\n".join(lines) + "\n"


OVERHEAD_AFTER = {False: "compiled-8", True: "eager-1"}  # the timing of a run's phases runs after this piece
OVERHEAD_SECONDS = {False: 60, True: 180}  # its time limit (the dry run: a CPU shared with other work can take 60 s)


def overhead_command(scratch: Path, out: Path, dry: bool) -> list[str]:
    """``overhead`` of the transformer in every cell at the recipe's settings (dry: one tiny cell on the CPU)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "overhead", "--out", str(out / "overhead.json")]
    cmd += ["--work", str(scratch / "overhead")]
    if dry:
        cmd += ["--cells", ",".join(map(str, DRY_CELLS[0])), "--steps", "2"]
        cmd += ["train.device=cpu", "mqar.vocab_size=64", "mqar.eval_samples=8", "model.max_seq_len=64"]
    return cmd


def prepare(scratch: Path, out: Path, gpus: int, dry: bool, only: list[str]) -> list[str]:
    """Write every piece's experiment under ``scratch`` (with the recipe beside it); the piece lines, with
    the ``overhead`` timing (results to ``out``) after ``OVERHEAD_AFTER``."""
    scratch.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "configs" / "repro" / "recipe-mqar.toml", scratch / "recipe-mqar.toml")
    lines = []
    for piece in pieces(dry):
        if not only or piece.name in only:
            (scratch / f"{piece.name}.toml").write_text(experiment_toml(piece))
            jobs = piece.per_gpu * max(gpus, 1)
            cmd = [sys.executable, "-m", "shareddiff.cli", "reproduce", str(scratch / f"{piece.name}.toml")]
            cmd += ["--out", str(scratch / "runs"), "--jobs", str(jobs), "--no-progress", "--no-summary"]
            cmd += measure_overrides(dry) + MODE_OVERRIDES[piece.mode]
            lines.append(f"{piece.name}\t{piece.seconds}\t{shlex.join(cmd)}")
        if piece.name == OVERHEAD_AFTER[dry] and (not only or "overhead" in only):
            lines.append(f"overhead\t{OVERHEAD_SECONDS[dry]}\t{shlex.join(overhead_command(scratch, out, dry))}")
    return lines


# ---------------------------------------------------------------- reading the runs


def run_speed(run_dir: Path) -> dict[str, Any] | None:
    """A measured run's speed from its folder: steps done, steps/s (median of the log windows after the
    first), evaluation seconds (median), and, when it finished, the seconds of its run beyond steps and
    evaluations (``overhead_s``: building, compiling, the checkpoint, the record). None before any window."""
    from shareddiff.train.metrics import read_metrics

    config_path = run_dir / "run_config.json"
    if not config_path.is_file():
        return None
    saved = json.loads(config_path.read_text())
    rows = read_metrics(run_dir)
    tokens_per_step = saved["tokens_per_step"]
    windows = [r for r in rows if "tokens_per_s" in r]
    steady = windows[1:] or windows
    if not steady:
        return None
    steps_per_s = statistics.median(r["tokens_per_s"] / tokens_per_step for r in steady)
    evals = [r["eval_s"] for r in rows if "eval_s" in r]
    steps = max(r["step"] for r in rows)
    result = {
        "run": run_dir.name,
        "variant": saved["model_config"]["attention"],
        "cell": _cell_of(saved["run"]),
        "steps": steps,
        "steps_per_s": steps_per_s,
        "eval_s": statistics.median(evals) if evals else None,
        "evals": len(evals),
        "peak_memory_gib": max((r.get("peak_memory_gib", 0.0) for r in rows), default=0.0) or None,
        "overhead_s": None,
    }
    record = run_dir / "record.json"
    if record.is_file():
        total = json.loads(record.read_text())["seconds_total"]
        result["overhead_s"] = max(0.0, total - steps / steps_per_s - sum(evals))
    return result


def _cell_of(run: dict) -> tuple[int, int, int, int]:
    return (run["data"]["seq_len"], run["mqar"]["pairs"], run["train"]["micro_batch"], run["model"]["d_model"])


def read_piece(scratch: Path, piece: Piece, status: dict[str, Any]) -> dict[str, Any]:
    """A piece's outcome: its status line (rc, seconds; rc 124 = out of time) and every run that logged."""
    folder = scratch / "runs" / piece.name
    runs = [s for d in sorted(folder.glob("*")) if d.is_dir() and (s := run_speed(d)) is not None]
    finished = sum((d / "record.json").is_file() for d in folder.glob("*")) if folder.is_dir() else 0
    outcome = status.get("rc")
    if outcome is None:
        state = "skipped: out of budget" if status.get("skipped") else "not run"
    else:
        state = {0: "done", 124: "out of time", 137: "out of time"}.get(outcome, "failed")
    return {
        "name": piece.name,
        "mode": piece.mode,
        "per_gpu": piece.per_gpu,
        "status": state,
        "rc": outcome,
        "seconds": status.get("seconds"),
        "planned_runs": piece.runs(),
        "finished_runs": finished,
        "runs": runs,
    }


# ---------------------------------------------------------------- FLOPs, fits, projections


def _model_config(variant: str, cell: tuple[int, int, int, int], vocab_size: int, max_seq_len: int):
    from shareddiff.config import ModelConfig

    return ModelConfig.from_preset(f"{variant}-mqar", d_model=cell[3], vocab_size=vocab_size, max_seq_len=max_seq_len)


@functools.cache
def step_flops(variant: str, cell: tuple[int, int, int, int], vocab_size: int = 8192, max_seq_len: int = 1024) -> float:
    """Training FLOPs of one step (forward + backward): 6 · (non-embedding parameters + the output head) per
    token, plus causal attention (``train_throughput.attention_flops_per_token``), × micro_batch · seq_len."""
    from train_throughput import attention_flops_per_token

    from shareddiff.params import count_parameters

    seq_len, _pairs, batch, d_model = cell
    config = _model_config(variant, cell, vocab_size, max_seq_len)
    per_token = 6 * (count_parameters(config).non_embedding + d_model * vocab_size)
    return batch * seq_len * (per_token + attention_flops_per_token(config, seq_len))


@functools.cache
def eval_flops(
    variant: str, cell: tuple[int, int, int, int], samples: int, vocab_size: int = 8192, max_seq_len: int = 1024
) -> float:
    """Forward FLOPs of one evaluation: ``samples`` sequences at N and (when it fits) 2N, a third of training's
    per-token FLOPs."""
    from train_throughput import attention_flops_per_token

    from shareddiff.params import count_parameters

    seq_len, _pairs, _batch, d_model = cell
    config = _model_config(variant, cell, vocab_size, max_seq_len)
    dense = 2 * (count_parameters(config).non_embedding + d_model * vocab_size)
    lengths = [seq_len, 2 * seq_len] if 2 * seq_len <= max_seq_len else [seq_len]
    return samples * sum(n * (dense + attention_flops_per_token(config, n) / 3) for n in lengths)


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(a, b) of y = a + b·x by least squares over ``points`` (x, y), with a, b ≥ 0: a constant (the mean)
    for one point or one x, or when the slope comes out negative; through the origin when a would be < 0."""
    if not points:
        raise ValueError("fit_line needs at least one point")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return mean_y, 0.0
    b = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    if b <= 0:
        return mean_y, 0.0
    a = mean_y - b * mean_x
    if a < 0:
        return 0.0, sum(x * y for x, y in points) / sum(x * x for x in xs)
    return a, b


@dataclass
class PieceModel:
    """A piece's time model: per variant, step seconds = a + b · step FLOPs and evaluation seconds = a + b ·
    evaluation FLOPs (each under ``per_gpu`` runs per GPU), plus the seconds of a run beyond both."""

    mode: str
    per_gpu: int
    step: dict[str, tuple[float, float]]
    evaluation: dict[str, tuple[float, float]]
    overhead_s: float

    def run_seconds(self, variant: str, cell, steps: int, eval_every: int, samples: int) -> float:
        """Wall seconds of one run of ``steps`` steps (evaluated every ``eval_every`` and at the end)."""
        a, b = self.step[variant]
        ea, eb = self.evaluation[variant]
        evals = math.ceil(steps / eval_every)
        return steps * (a + b * step_flops(variant, cell)) + evals * (ea + eb * eval_flops(variant, cell, samples))

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def piece_model(piece: dict[str, Any], samples: int, startup_s: float) -> PieceModel | None:
    """The time model of a measured piece (``read_piece``) for the variants that logged a speed (None when
    none did). A variant without a timed evaluation gets 0 s per evaluation."""
    runs = piece["runs"]
    if not runs:
        return None
    step, evaluation = {}, {}
    for variant in sorted({r["variant"] for r in runs}):
        mine = [r for r in runs if r["variant"] == variant]
        name = _preset_of(variant)
        step[name] = fit_line([(step_flops(name, tuple(r["cell"])), 1 / r["steps_per_s"]) for r in mine])
        timed = [(eval_flops(name, tuple(r["cell"]), samples), r["eval_s"]) for r in mine if r["eval_s"] is not None]
        evaluation[name] = fit_line(timed) if timed else (0.0, 0.0)
    overheads = [r["overhead_s"] for r in runs if r["overhead_s"] is not None]
    overhead = (statistics.median(overheads) if overheads else 0.0) + startup_s
    return PieceModel(piece["mode"], piece["per_gpu"], step, evaluation, overhead)


def _preset_of(attention: str) -> str:
    return {"standard": "transformer"}.get(attention, attention)


def grid_runs(experiment: str, overrides: list[str]) -> list[tuple[str, tuple[int, int, int, int], int, int, int]]:
    """(variant, cell, max_steps, eval_every, early-stop patience) of every run of ``experiment`` with
    ``overrides``, as ``shareddiff reproduce`` would train it."""
    from shareddiff.repro.runner import run_recipe
    from shareddiff.repro.spec import load_experiment

    exp = load_experiment(experiment)
    rows = []
    for spec in exp.runs:
        run = run_recipe(exp, spec, Path("/tmp/mqar_plan_projection"), overrides, check_data=False)
        model = run.model_config()
        cell = (run.data.seq_len, run.mqar.pairs, run.train.micro_batch, model.d_model)
        stop = run.train.early_stop_patience if run.train.early_stop_accuracy > 0 else 0
        rows.append((_preset_of(model.attention), cell, run.train.max_steps, run.train.eval_every, stop))
    return rows


def project(model: PieceModel, runs: list[tuple], samples: int, gpus: int) -> dict[str, Any]:
    """GPU-minutes of ``runs`` (``grid_runs``) under ``model``: ``upper`` every run to its max_steps, ``lower``
    every run stopped at its first possible early stop (patience × eval_every steps; max_steps without early
    stop); the wall minutes on ``gpus`` GPUs assume the runs spread evenly."""
    upper = lower = 0.0
    for variant, cell, max_steps, eval_every, patience in runs:
        first_stop = min(max_steps, patience * eval_every) if patience else max_steps
        upper += model.run_seconds(variant, cell, max_steps, eval_every, samples) + model.overhead_s
        lower += model.run_seconds(variant, cell, first_stop, eval_every, samples) + model.overhead_s
    upper, lower = upper / model.per_gpu / 60, lower / model.per_gpu / 60
    return {
        "runs": len(runs),
        "gpu_minutes_upper": upper,
        "gpu_minutes_lower": lower,
        "wall_minutes_upper": upper / gpus,
        "wall_minutes_lower": lower / gpus,
    }


def projections(models: list[PieceModel], samples: int, gpus: int) -> list[dict[str, Any]]:
    """Every piece model's projection of mqar_budget (its own 12,500 steps) and of mqar at ``GRID_STEPS``."""
    grids = [("mqar_budget", None, grid_runs("mqar_budget", []))]
    grids += [("mqar", steps, grid_runs("mqar", [f"train.max_steps={steps}"])) for steps in GRID_STEPS]
    complete = [m for m in models if set(VARIANTS) <= set(m.step)]  # a piece cut off before a variant: none
    return [
        {
            "experiment": name,
            "max_steps": steps,
            "mode": m.mode,
            "per_gpu": m.per_gpu,
            **project(m, runs, samples, gpus),
        }
        for name, steps, runs in grids
        for m in complete
    ]


# ---------------------------------------------------------------- the report


def report(scratch: Path, out: Path, gpus: int, dry: bool, startup_s: float) -> dict[str, Any]:
    """Read every piece's runs, fit, project; write ``mqar_plan.json`` and ``mqar_plan.txt`` into ``out``."""
    from common import environment

    statuses = {}
    status_file = scratch / "pieces.jsonl"
    if status_file.is_file():
        for line in status_file.read_text().splitlines():
            entry = json.loads(line)
            statuses[entry["name"]] = entry
    samples = 8 if dry else 1000
    measured = [read_piece(scratch, p, statuses.get(p.name, {})) for p in pieces(dry)]
    models = [m for p in measured if (m := piece_model(p, samples, startup_s)) is not None]
    result = {
        "environment": environment(),
        "gpus": gpus,
        "dry_run": dry,
        "measure_steps": 6 if dry else MEASURE_STEPS,
        "startup_s": startup_s,
        "pieces": measured,
        "statuses": list(statuses.values()),  # every piece's and the overhead timing's rc and seconds
        "models": [m.to_dict() for m in models],
        "projections": [] if dry else projections(models, samples, max(gpus, 1)),
        "overhead": json.loads((out / "overhead.json").read_text()) if (out / "overhead.json").is_file() else [],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "mqar_plan.json").write_text(json.dumps(result, indent=2))
    (out / "mqar_plan.txt").write_text(text_report(result))
    return result


def text_report(result: dict[str, Any]) -> str:
    from common import table

    env, gpus = result["environment"], result["gpus"]
    lines = [f"MQAR plan on {env['device']}, {gpus} GPU(s); a run's process starts in {result['startup_s']:.1f} s"]
    rows = []
    for piece in result["pieces"]:
        for r in piece["runs"]:
            seq_len, _pairs, batch, d_model = r["cell"]
            eval_s = "—" if r["eval_s"] is None else f"{r['eval_s']:.2f}"
            over = "—" if r["overhead_s"] is None else f"{r['overhead_s']:.1f}"
            rows.append([piece["name"], r["variant"], seq_len, batch, d_model, r["steps"], f"{r['steps_per_s']:.1f}"])
            rows[-1] += [f"{r['steps_per_s'] * piece['per_gpu']:.1f}", eval_s, over]
    heads = ["piece", "variant", "N", "batch", "D", "steps", "steps/s", "steps/s/GPU", "eval s", "overhead s"]
    lines += ["", table(heads, rows) if rows else "no run logged a speed", ""]
    lines += [f"{p['name']}: {p['status']} ({p['finished_runs']}/{p['planned_runs']} runs)" for p in result["pieces"]]
    lines += [
        f"overhead: rc {s.get('rc')} ({s.get('seconds')} s)" for s in result["statuses"] if s["name"] == "overhead"
    ]
    for o in result["overhead"]:
        shares = ", ".join(f"{k} {v:.1%}" for k, v in o["fraction"].items())
        lines.append(
            f"overhead {o['variant']} {o['cell']}: step {o['step_s'] * 1e3:.1f} ms, evaluation {o['eval_s']:.2f} s, "
            f"checkpoint {o['checkpoint_s']:.2f} s; of a run at the recipe's cadence: {shares}"
        )
    if result["projections"]:
        rows = [
            [
                p["experiment"],
                p["max_steps"] or "own",
                p["mode"],
                p["per_gpu"],
                p["runs"],
                f"{p['gpu_minutes_lower']:.0f}-{p['gpu_minutes_upper']:.0f}",
                f"{p['wall_minutes_lower']:.0f}-{p['wall_minutes_upper']:.0f}",
            ]
            for p in result["projections"]
        ]
        heads = ["experiment", "max_steps", "mode", "per GPU", "runs", "GPU-min (stop-first..full)", "wall min"]
        lines += ["", "Projected cost (lower: every run stopped at its first possible early stop)", table(heads, rows)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- overhead (in one process)


def time_phases(run, steps: int = 10) -> dict[str, Any]:
    """Seconds of one training step (mean of ``steps`` after a first one), one evaluation (the second of
    two), one checkpoint (the second of two) and one metrics record of ``run`` (a RunConfig of an MQAR
    run), through ``Trainer``'s own methods; and each one's share of a run at the recipe's cadence."""
    import time

    import torch

    from shareddiff.train.distributed import init_distributed
    from shareddiff.train.trainer import Trainer, _progress

    dist, device = init_distributed(run.train.device)
    trainer = Trainer(run, dist, device, resume=False, progress=False)
    trainer._open_records()
    trainer.bar = _progress(run.train.max_steps, 0, False)

    def timed(fn, repeat: int = 1) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeat

    first_step = timed(lambda: trainer.train_step(0))
    step_s = timed(lambda: [trainer.train_step(i) for i in range(1, steps + 1)]) / steps  # each its own batch
    trainer.step = steps + 1
    timed(trainer.validate)
    eval_s = timed(trainer.validate)
    timed(trainer.save_checkpoint)
    trainer.step += 1
    checkpoint_s = timed(trainer.save_checkpoint)
    log_s = timed(lambda: trainer.log_metrics(1.0, 1.0, 1e-3), 5)
    trainer.metrics.close()
    t = run.train
    per_step = {
        "step": step_s,
        "evaluation": eval_s / t.eval_every,
        "checkpoint": checkpoint_s / run.checkpoint.every,
        "logging": log_s / t.log_every,
    }
    total = sum(per_step.values())
    return {
        "variant": trainer.model_config.attention,
        "cell": _cell_of(run.to_dict()),
        "eval_samples": run.mqar.eval_samples,
        "device": str(device),
        "first_step_s": first_step,
        "step_s": step_s,
        "eval_s": eval_s,
        "checkpoint_s": checkpoint_s,
        "log_s": log_s,
        "cadence": {"eval_every": t.eval_every, "checkpoint_every": run.checkpoint.every, "log_every": t.log_every},
        "fraction": {k: v / total for k, v in per_step.items()},
    }


def overhead(cells: list[str], variant: str, overrides: list[str], steps: int, work: Path) -> list[dict[str, Any]]:
    """``time_phases`` of the recipe at each cell ("N,pairs,batch,D"), ``overrides`` applied after the cell's."""
    from shareddiff.config import load_recipe

    results = []
    for text in cells:
        seq_len, pairs, batch, d_model = (int(v) for v in text.split(","))
        cell_overrides = [f"data.seq_len={seq_len}", f"mqar.pairs={pairs}", f"train.micro_batch={batch}"]
        cell_overrides += [f"model.d_model={d_model}", f"train.out_dir={work / text.replace(',', '-')}"]
        shutil.rmtree(work / text.replace(",", "-"), ignore_errors=True)
        recipe = str(ROOT / "configs" / "repro" / "recipe-mqar.toml")
        run = load_recipe(recipe, f"{variant}-mqar", cell_overrides + overrides)
        run.validate()
        results.append(time_phases(run, steps))
        shutil.rmtree(work / text.replace(",", "-"), ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the scratch experiments; print the pieces")
    p.add_argument("--scratch", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="where the overhead timing writes")
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--dry", action="store_true", help="the CPU dry run: tiny cells, eager, 1 and 2 runs at once")
    p.add_argument("--only", nargs="*", default=[], help="these pieces only")
    r = sub.add_parser("report", help="read the scratch runs; write mqar_plan.json and mqar_plan.txt")
    r.add_argument("--scratch", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--gpus", type=int, default=0)
    r.add_argument("--dry", action="store_true")
    r.add_argument("--startup-s", type=float, default=0.0, help="seconds a run's process takes to start")
    o = sub.add_parser("overhead", help="time a step, an evaluation, a checkpoint and a record in one process")
    o.add_argument("--cells", nargs="+", default=[",".join(map(str, c)) for c in CELLS], help="N,pairs,batch,D")
    o.add_argument("--variant", default="transformer", choices=VARIANTS)
    o.add_argument("--steps", type=int, default=10)
    o.add_argument("--work", type=Path, default=Path("/tmp/mqar_overhead"))
    o.add_argument("--out", type=Path, help="write the results here as JSON")
    o.add_argument("overrides", nargs="*", help="section.key=value after the cell's, e.g. train.device=cpu")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print("\n".join(prepare(args.scratch, args.out, args.gpus, args.dry, args.only)))
    elif args.command == "report":
        print(text_report(report(args.scratch, args.out, args.gpus, args.dry, args.startup_s)), end="")
    else:
        results = overhead(args.cells, args.variant, args.overrides, args.steps, args.work)
        text = json.dumps(results, indent=2)
        if args.out:
            args.out.write_text(text)
        print(text)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
