"""MQAR accuracy (Zoology, Arora et al. 2023): on a model, along training, and summarised over a grid.

Accuracy is Zoology's: the fraction of answer positions (the last token of each query) where the
argmax of the logits is the key's value; the loss is the mean cross-entropy over the same positions.
Evaluation sets are fixed (``mqar_eval_set``: the same sequences for every run and device). A model
trained at length N is also evaluated at 2N (same pairs and queries, a longer stretch of blanks) when
its ``max_seq_len`` allows: its length extrapolation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shareddiff.config import MQARConfig
from shareddiff.data.mqar import mqar_eval_set
from shareddiff.train.probes import mqar_scores

THRESHOLDS = (0.5, 0.99)  # accuracy levels whose first step the summary reports


def mqar_eval(
    model, config: MQARConfig, lengths: Iterable[int], samples: int, seed: int = 0, batch_size: int = 64
) -> dict[str, Any]:
    """Loss and accuracy at each sequence length of ``lengths`` over ``samples`` fixed sequences (seed
    ``seed``). Raises ``ValueError`` for a length beyond the model's context or too short for the task."""
    from shareddiff.eval.common import check_context

    rows = []
    for length in lengths:
        check_context(model, length, f"MQAR at length {length}")
        scores = mqar_scores(model, *mqar_eval_set(config, length, samples, seed), batch_size)
        rows.append({"seq_len": length, **scores})
    task = dataclasses.asdict(config)  # every setting of the task (updates, shared_prefix, key_len, ...)
    task.pop("eval_samples", None)
    return {
        "pairs": config.pairs,
        "queries": config.n_queries(),
        "samples": samples,
        "seed": seed,
        "task": task,
        "rows": rows,
    }


def steps_to(curve: list[tuple[int, float]], level: float) -> int | None:
    """The first step of ``curve`` ((step, accuracy) pairs, in step order) whose accuracy is ≥ ``level``."""
    return next((step for step, accuracy in curve if accuracy >= level), None)


def mqar_run_record(run_dir: str | Path) -> dict[str, Any]:
    """One MQAR training run as the summary needs it, from its folder (run_config.json, metrics.jsonl):
    variant, width, length, pairs, learning rate, the accuracy curve and the final accuracies. A run that
    stopped early (``train.early_stop_accuracy``) ends its curve at the stop: its final accuracies are the
    stop's, and ``early_stop`` holds the trainer's record of it (step, reason, ...; None for a full run)."""
    from shareddiff.train.metrics import read_metrics
    from shareddiff.train.trainer import RUN_CONFIG

    run_dir = Path(run_dir)
    saved = json.loads((run_dir / RUN_CONFIG).read_text())
    run, model = saved["run"], saved["model_config"]
    if run["data"].get("source") != "mqar":
        raise ValueError(f"{run_dir} is not an MQAR run (data.source={run['data'].get('source')!r})")
    rows = read_metrics(run_dir)
    evals = [r for r in rows if "mqar_accuracy" in r]
    if not evals:
        raise ValueError(f"{run_dir} has no MQAR evaluation in its metrics.jsonl yet")
    last = evals[-1]
    return {
        "run": run_dir.name,
        "variant": model["attention"],
        "d_model": model["d_model"],
        "seq_len": run["data"]["seq_len"],
        "pairs": run["mqar"]["pairs"],
        "lr": run["optim"]["lr"],
        "steps": last["step"],
        "curve": [(r["step"], r["mqar_accuracy"]) for r in evals],
        "accuracy": last["mqar_accuracy"],
        "accuracy_2x": last.get("mqar_accuracy_2x"),
        "early_stop": _final_early_stop(rows),
    }


def _final_early_stop(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trainer's early stop record that ended the run, or None: an early stop counts only at the run's last
    step (a run continued after it, ``--resume train.early_stop_accuracy=0``, keeps the old record mid-file)."""
    stops = [r for r in rows if "early_stop" in r]
    if not stops or stops[-1]["step"] < max(r.get("step", 0) for r in rows):
        return None
    return stops[-1]["early_stop"]


def _rank(run: dict) -> tuple:
    """Sort key of the best run: highest final accuracy, then first to 99 %, then first to 50 %."""
    firsts = [steps_to(run["curve"], level) for level in reversed(THRESHOLDS)]
    return (-run["accuracy"], *(math.inf if s is None else s for s in firsts))


def _best_entry(group: list[dict[str, Any]]) -> dict[str, Any]:
    """The best run of ``group`` (``_rank``): its accuracies, width, rate and steps to each threshold."""
    best = min(group, key=_rank)
    return {
        "seq_len": best["seq_len"],
        "pairs": best["pairs"],
        "d_model": best["d_model"],
        "variant": best["variant"],
        "accuracy": best["accuracy"],
        "accuracy_2x": best["accuracy_2x"],
        "lr": best["lr"],
        "steps": best["steps"],
        "stopped_early": (best.get("early_stop") or {}).get("step"),
        **{f"steps_to_{round(level * 100)}": steps_to(best["curve"], level) for level in THRESHOLDS},
        "runs": len(group),
    }


def _by_rate(group: list[dict[str, Any]]) -> dict[str, dict[str, float | int]]:
    """Each learning rate's final accuracy over its runs (the seeds of one setting): ``lrs`` the mean,
    ``lr_seeds`` how many runs, ``lr_runs`` each run's (in the order of the run names: seed 1, 2, ...), all
    keyed by the rate as ``f"{lr:g}"`` in increasing order."""
    accuracies: dict[float, list[float]] = {}
    for run in sorted(group, key=lambda r: r.get("run", "")):
        accuracies.setdefault(run["lr"], []).append(run["accuracy"])
    rates = sorted(accuracies.items())
    return {
        "lrs": {f"{lr:g}": statistics.fmean(values) for lr, values in rates},
        "lr_seeds": {f"{lr:g}": len(values) for lr, values in rates},
        "lr_runs": {f"{lr:g}": values for lr, values in rates},
    }


def mqar_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The grid's summary from ``mqar_run_record`` dicts: per (cell, variant) the best run over widths and
    learning rates (``best``), and per (cell, width, variant) the best over learning rates (``cells``),
    each with its steps to 50 % and 99 % accuracy and its accuracy at 2× the training length.

    The best run is the one of highest final accuracy (ties: the one that reached 99 %, then 50 %,
    first). A cell is (seq_len, pairs). ``cells`` rows also give every learning rate's final accuracy in
    ``lrs`` (the mean over that rate's seeds), the number of seeds in ``lr_seeds`` and each seed's in
    ``lr_runs``; the best run is
    still one run, so with several seeds its accuracy can exceed its rate's mean.
    Returns {"variants": [...], "best": [...], "cells": [...]}.
    """
    by_width: dict[tuple, list[dict]] = {}
    by_cell: dict[tuple, list[dict]] = {}
    for run in runs:
        by_width.setdefault((run["seq_len"], run["pairs"], run["d_model"], run["variant"]), []).append(run)
        by_cell.setdefault((run["seq_len"], run["pairs"], run["variant"]), []).append(run)
    cells = [_best_entry(group) | _by_rate(group) for _, group in sorted(by_width.items())]
    best = [_best_entry(group) for _, group in sorted(by_cell.items())]
    return {"variants": sorted({c["variant"] for c in cells}), "best": best, "cells": cells}
