"""Training and evaluating the runs of an experiment: one at a time, or several processes at once.

Each run trains (resuming if it was cut off), evaluates, writes ``record.json`` atomically, then drops its
checkpoints; ``metrics.jsonl``, ``run_config.json`` and ``eval/`` stay as its record. A finished run is
reused only for the recipe it was trained with.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from shareddiff.config import RunConfig, load_recipe
from shareddiff.repro.spec import Experiment, RunSpec

RECORD = "record.json"
DEFAULT_OUT = Path("results/repro")  # reproduce's --out when none is given
CONCURRENT_ENV = "SHAREDDIFF_REPRO_JOBS"  # set for runs launched by --jobs: their speed is a shared GPU's
DATA_HINT = {
    # the compute-adequate experiments: corpus-v2 with its digit-splitting tokenizer
    "docs-16k-digits": (
        "Build it with `python scripts/build_corpus_v2.py build corpus-v2-text` (needs `pip install -e "
        "'.[corpus]'`) then `shareddiff data prepare corpus-v2-text --out {path} --tokenizer docs-16k-digits "
        "--val-fraction 0.01` (docs/data.md), or point data.path=... at a prepared folder"
    ),
    # the early experiments: the Debian-docs corpus with the bundled tokenizer
    "": (
        "Build it with `python scripts/build_debian_docs_corpus.py corpus/debian-docs` then `shareddiff data "
        "prepare corpus/debian-docs --out {path} --val-fraction 0.01` (docs/data.md), or point data.path=... at a "
        "prepared folder"
    ),
}


def data_hint(run: RunConfig) -> str:
    """How to build the prepared data a run's recipe names: corpus-v2 for a recipe with the ``docs-16k-digits``
    tokenizer, the Debian-docs corpus otherwise."""
    hint = DATA_HINT.get(run.data.tokenizer or "", DATA_HINT[""])
    return hint.format(path=run.data.path)


# Fields a run's record may differ in from the recipe without being another run: where it was written,
# and what a budget derives (train.tokens_per_param sets max_steps, optim.warmup_fraction warmup_steps).
_DERIVED = {("train", "out_dir")}
log = logging.getLogger(__name__)


def run_recipe(exp: Experiment, spec: RunSpec, out: Path, overrides: list[str], check_data: bool = True) -> RunConfig:
    """The recipe of one run: the shared recipe, the run's preset, seed and overrides, then ``overrides``."""
    run = load_recipe(
        str(exp.recipe),
        spec.preset,
        [*spec.overrides, f"train.seed={spec.seed}", f"train.out_dir={out / exp.name / spec.name}", *overrides],
    )
    if check_data and run.data.path and not Path(run.data.path).is_dir():
        raise ValueError(f"data.path={run.data.path!r} does not exist. " + data_hint(run))
    run.validate()
    return run


_RECORD_KEYS = ("run", "group", "variant", "val_loss", "tokens", "evals")  # what the summary reads from every record


def read_record(run_dir: Path) -> dict[str, Any]:
    """A finished run's record (RUN/record.json). Raises ``ValueError`` naming the file and the fix when it is not
    a JSON object holding the fields every record has (truncated, empty, edited, or another tool's file)."""
    path = Path(run_dir) / RECORD
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise ValueError(f"a JSON {type(record).__name__}, not an object")
        if missing := [key for key in _RECORD_KEYS if key not in record]:
            raise ValueError(f"no {', '.join(missing)}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{path} is not a run record ({exc}); restore it (a committed result: `git checkout -- {path}`), "
            "or delete it and run the same command again to train and evaluate that run anew"
        ) from None
    return record


def check_recorded_recipe(run: RunConfig, run_dir: Path) -> None:
    """A finished run is reused only for the recipe it was trained with; otherwise name what differs. A field
    missing from an older record counts as its default (what that run was trained with)."""
    from shareddiff.train.trainer import RUN_CONFIG

    record = json.loads((run_dir / RUN_CONFIG).read_text())
    recorded, wanted, defaults = record["run"], run.to_dict(), RunConfig().to_dict()
    derived = set(_DERIVED)
    if record.get("world_size", 1) == 1:  # one process never reads [parallel] (its dtypes, its strategy)
        derived |= {("parallel", key) for key in wanted.get("parallel", {})}
    if wanted["train"].get("tokens_per_param", 0) > 0:
        derived.add(("train", "max_steps"))
    if wanted["optim"].get("warmup_fraction", 0) > 0:
        derived.add(("optim", "warmup_steps"))
    diffs = [
        f"{section}.{key}: recorded {recorded.get(section, {}).get(key)!r}, now {value!r}"
        for section, values in wanted.items()
        for key, value in values.items()
        if (section, key) not in derived
        and recorded.get(section, {}).get(key, defaults.get(section, {}).get(key)) != value
    ]
    if diffs:
        raise ValueError(
            f"{run_dir} holds a finished run of another recipe ({'; '.join(diffs)}); pass --out to keep "
            "this variant apart, or delete that folder to redo the run"
        )


def resolve_run(exp: Experiment, spec: RunSpec, out: Path, overrides: list[str]) -> tuple[RunConfig, bool]:
    """(the run's recipe, whether it is finished). A finished run must match its recorded recipe; an
    unfinished one needs its data."""
    run = run_recipe(exp, spec, out, overrides, check_data=False)
    run_dir = Path(run.train.out_dir)
    if (run_dir / RECORD).is_file():
        check_recorded_recipe(run, run_dir)
        return run, True
    run = run_recipe(exp, spec, out, overrides)
    model_config(run)  # a model that cannot be built is named here, before any run starts (also under --jobs)
    return run, False


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str) -> Any:
    from shareddiff.data.tokenizer import Tokenizer

    return Tokenizer(path)


def model_config(run: RunConfig) -> Any:
    """The run's ModelConfig, built as the trainer builds it (the vocabulary from the recipe's tokenizer, or MQAR's;
    no data needed). Raises ValueError naming a field that does not fit."""
    from shareddiff.train.trainer import _checked_model_config

    return _checked_model_config(run, None if run.data.source == "mqar" else _tokenizer(run.data.tokenizer))


def evaluate_run(exp: Experiment, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """The experiment's evaluations of one trained run, as the evaluation functions return them. An MQAR
    run (data.source = "mqar") also keeps the accuracy its trainer measured along training (``mqar``).
    ``progress`` False: no progress bars (``reproduce --no-progress``)."""
    from shareddiff.eval import commands
    from shareddiff.eval.mqar import mqar_run_record
    from shareddiff.train.trainer import RUN_CONFIG

    results: dict[str, Any] = {}
    if json.loads((run_dir / RUN_CONFIG).read_text())["run"]["data"].get("source") == "mqar":
        results["mqar"] = mqar_run_record(run_dir)
        log.info("  MQAR accuracy %s", mqar_line(results["mqar"]))
    if "lm" in exp.evals:
        results["lm"] = commands.lm_results(str(run_dir), None, 262_144, None, "auto", None)
        log.info("  eval lm: loss %.4f, AR-Hit %.4f", results["lm"]["loss"], results["lm"]["ar_hit_loss"])
    if "needle" in exp.evals:
        cfg, rows = exp.needle, []
        for n_needles, n_queries in cfg["configs"]:
            data = commands.needle_results(
                str(run_dir),
                cfg["lengths"],
                cfg["depths"],
                n_needles,
                n_queries,
                cfg["samples"],
                cfg["seed"],
                "auto",
                None,
                progress,
            )
            by_length = {
                str(n): statistics.fmean(c["accuracy"] for c in data["cells"] if c["length"] == n)
                for n in cfg["lengths"]
            }
            rows.append(
                {"n_needles": n_needles, "n_queries": n_queries, "accuracy": data["accuracy"], "by_length": by_length}
            )
            log.info("  eval needle N=%d R=%d: accuracy %.3f", n_needles, n_queries, data["accuracy"])
        results["needle"] = rows
    if "attention" in exp.evals:
        cfg = exp.attention
        results["attention"] = commands.attention_results(
            str(run_dir), cfg["length"], cfg["depths"], cfg["needles"], cfg["samples"], cfg["seed"], "auto", None
        )
        log.info("  eval attention: done")
    return results


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


def build_record(exp: Experiment, spec: RunSpec, run_dir: Path, overrides: list[str], evals: dict) -> dict[str, Any]:
    """What a finished run leaves for the summaries: its budget, final losses, λ, speed, device."""
    import torch

    from shareddiff.config import ModelConfig
    from shareddiff.params import count_parameters
    from shareddiff.train.metrics import read_metrics, summarize_metrics
    from shareddiff.train.trainer import RUN_CONFIG

    end = summarize_metrics(read_metrics(run_dir))
    run_config = json.loads((run_dir / RUN_CONFIG).read_text())
    config = ModelConfig.from_dict(run_config["model_config"])  # as trained
    counts = count_parameters(config)
    return {
        "experiment": exp.name,
        "run": spec.name,
        "group": spec.group,
        "family": spec.family or spec.group,
        "point": dict(spec.point),
        "preset": spec.preset,
        "variant": config.attention,
        "seed": spec.seed,
        "overrides": [*spec.overrides, *overrides],
        "lr": run_config["run"]["optim"]["lr"],
        "max_steps": run_config["run"]["train"]["max_steps"],
        "params": counts.total,
        "params_non_embedding": counts.non_embedding,
        "val_loss": end.val_loss,
        "train_loss": end.train_loss,
        "train_loss_tail": end.train_loss_tail,
        "tokens": end.val_tokens,
        "tokens_per_param": end.val_tokens / counts.total,
        "passes": end.val_tokens / run_config["train_tokens"] if "train_tokens" in run_config else None,
        "train_tokens_unique": run_config.get("train_tokens"),
        "lambda": end.last_train.get("lambda"),
        "grad_norm": end.last_train.get("grad_norm"),
        "tokens_per_s": end.tokens_per_s,
        "concurrent_runs": int(os.environ.get(CONCURRENT_ENV, "1")),
        "peak_memory_gib": end.peak_memory_gib,
        "device": _device_name(),
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "evals": evals,
    }


def mqar_line(mqar: dict) -> str:
    """The per-run MQAR line: accuracy at the training length and at 2× it, three decimals each."""
    twice = mqar.get("accuracy_2x")
    return f"{mqar['accuracy']:.3f} (2× the length: {'not measured' if twice is None else f'{twice:.3f}'})"


def run_one(
    exp: Experiment, spec: RunSpec, out: Path, overrides: list[str], keep_checkpoints: bool, progress: bool
) -> dict[str, Any]:
    """Train and evaluate one run (resuming it if it was cut off); its record, also in RUN/record.json."""
    from shareddiff.train import train

    run, finished = resolve_run(exp, spec, out, overrides)
    run_dir = Path(run.train.out_dir)
    if finished:
        record = read_record(run_dir)
        log.info("%s/%s: done before (%s)", exp.name, spec.name, run_dir / RECORD)
        return record
    log.info("== %s/%s: %s, seed %d", exp.name, spec.name, spec.preset, spec.seed)
    start = time.perf_counter()
    train(run, resume="if_present", progress=progress)
    trained = time.perf_counter() - start
    record = build_record(exp, spec, run_dir, overrides, evaluate_run(exp, run_dir, progress))
    record["seconds_train"] = trained  # of this invocation (a resumed run: the rest of its steps)
    record["seconds_total"] = time.perf_counter() - start
    tmp = run_dir / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=float))
    tmp.replace(run_dir / RECORD)
    if not keep_checkpoints:  # the record is complete: the weights are no longer needed
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    log.info(
        "   %s: val loss %.4f after %s tokens (%.1f per parameter), %.0f s",
        spec.name,
        record["val_loss"],
        f"{record['tokens']:,}",
        record["tokens_per_param"],
        trained,
    )
    return record


def has_started(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` has something to reuse or resume: its record or a checkpoint folder."""
    return (run_dir / RECORD).is_file() or any((run_dir / "checkpoints").glob("step_*"))


def run_parallel(
    exp: Experiment,
    specs: list[RunSpec],
    out: Path,
    overrides: list[str],
    keep: bool,
    jobs: int,
    too_late: Callable[[RunSpec], bool] | None = None,
) -> list[str]:
    """Each run in its own process, logging to RUN/reproduce.log. With several GPUs, each process gets one
    (CUDA_VISIBLE_DEVICES), ``jobs`` at a time; on one GPU the runs share it (for the 23m models on one
    H100, three at a time took 1.4x longer in all than one after another: docs/results.md). A run for which
    ``too_late`` holds when its turn comes is not started; returns those runs' names."""
    import queue

    import torch

    slots: queue.Queue[str | None] = queue.Queue()
    gpus = torch.cuda.device_count()
    sharing = jobs if gpus <= 1 else -(-jobs // gpus)  # runs at once on one device
    for i in range(jobs):
        slots.put(str(i % gpus) if gpus > 1 else None)

    def launch(spec: RunSpec) -> tuple[str, int | None]:
        run_dir = out / exp.name / spec.name
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "shareddiff.cli", "reproduce", str(exp.path), "--run", spec.name]
        cmd += ["--out", str(out), "--no-progress", "--no-summary", *(["--keep-checkpoints"] if keep else [])]
        cmd += overrides
        gpu = slots.get()
        if too_late is not None and too_late(spec):
            slots.put(gpu)
            return spec.name, None
        env = {**os.environ, CONCURRENT_ENV: str(sharing)}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        log_path = run_dir / "reproduce.log"
        try:
            with log_path.open("a") as f:
                start = f.tell()
                code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
        finally:
            slots.put(gpu)
        if code == 0:
            outcome = "finished"
        elif code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            outcome = f"interrupted (exit {code}), see {log_path}; the same command resumes it"
        else:
            outcome = f"failed (exit {code}), see {log_path}"
            if ran_out_of_memory(log_path, start):
                out_of_memory.append(spec.name)
                outcome += f": out of GPU memory, with up to {sharing} runs sharing the device"
            elif last := last_line(log_path, start):
                outcome += f": {last}"
        log.info("%s/%s: %s", exp.name, spec.name, outcome)
        return spec.name, code

    out_of_memory: list[str] = []
    with ThreadPoolExecutor(jobs) as pool:
        codes = list(pool.map(launch, specs))
    failed = [n for n, code in codes if code not in (0, None)]
    if failed:
        hint = ""
        if out_of_memory:
            hint = (
                f"; {len(out_of_memory)} of them ran out of GPU memory ({', '.join(out_of_memory)}) with up to "
                f"{sharing} runs sharing a device: run again with fewer --jobs"
            )
        raise ValueError(
            f"runs {failed} did not finish{hint}; fix what the end of each one's reproduce.log names (logged "
            "above), then run the same command again: each resumes from its last checkpoint"
        )
    return [n for n, code in codes if code is None]


def _launch_tail(log_path: Path, start: int) -> str:
    """The end (at most 64 KiB) of what one launch wrote to a run's log from byte ``start`` on; "" if unreadable."""
    try:
        with log_path.open("rb") as f:
            f.seek(max(start, log_path.stat().st_size - (1 << 16)))  # a traceback is at the end
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def last_line(log_path: Path, start: int = 0) -> str:
    """The last non-empty line that one launch (from byte ``start`` on) wrote to a run's log: its error message,
    where it failed with one ("" when it wrote nothing)."""
    lines = _launch_tail(log_path, start).splitlines()
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def ran_out_of_memory(log_path: Path, start: int = 0) -> bool:
    """Whether the part of a run's log from byte ``start`` on (one launch's output) ends in a CUDA out-of-memory
    error (``torch.OutOfMemoryError``, or the allocator's "CUDA out of memory" message)."""
    tail = _launch_tail(log_path, start)
    return "OutOfMemoryError" in tail or "CUDA out of memory" in tail


def describe_runs(
    exp: Experiment, out: Path = DEFAULT_OUT, runs: list[str] | None = None, overrides: list[str] | None = None
) -> str:
    """The experiment's runs (``runs`` only, when given; with ``overrides``, section.key=value for every run, as
    the same command would train them) as a table a reader can check the budgets against:
    preset, learning rate, seed, tokens per parameter, steps, warmup steps and training tokens, sized as the
    trainer sizes them (:meth:`RunConfig.sized` on the model's total parameters, one process), and whether each
    is finished under ``out``; without ``runs``, then the runs of other experiments its summary includes, each
    finished or missing. Needs no data: the vocabulary comes from the recipe's tokenizer (or MQAR's). Raises
    ``ValueError`` for a name in ``runs`` that is not one of the experiment's runs."""
    from shareddiff.params import count_parameters, format_table

    rows = []
    for spec in exp.select(runs):
        run = run_recipe(exp, spec, out, list(overrides or []), check_data=False)
        n_params = count_parameters(model_config(run)).total
        sized = run.sized(n_params)
        tokens = sized.train.max_steps * sized.tokens_per_step(1)
        rows.append(
            [
                spec.name,
                spec.preset,
                f"{sized.optim.lr:g}",
                str(spec.seed),
                f"{n_params:,}",
                f"{tokens / n_params:.2f}",
                f"{sized.train.max_steps:,}",
                f"{sized.optim.warmup_steps:,} ({sized.optim.warmup_steps / sized.train.max_steps:.1%})",
                f"{tokens:,}",
                "yes" if (Path(run.train.out_dir) / RECORD).is_file() else "no",
            ]
        )
    headers = ["run", "preset", "lr", "seed", "params", "tokens/param", "steps", "warmup", "tokens", "finished"]
    table = format_table(headers, rows)
    included = [] if runs else exp.summary.get("include", [])
    if not included:
        return table
    lines = [f"  {ref} ({'finished' if (out / ref / RECORD).is_file() else 'missing'})" for ref in included]
    heading = f"included from other experiments (its summary reads their records under {out}):"
    return "\n".join([table, "", heading, *lines])
