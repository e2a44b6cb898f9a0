"""Scaling fits (the paper's Figure 2): loss = a · x^(−b) + c against parameters or tokens, per
variant, and how many parameters (or tokens) a variant needs to reach another's loss."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np


def fit_power_law(x, y) -> dict:
    """Least-squares fit of y = a·x^(−b) + c (0 ≤ c < min y): golden-section search over c, a and b by
    linear regression of log(y − c) on log x for each c.

    b is not constrained: b ≤ 0 (the loss does not fall with x over these points) is returned as fitted,
    and ``decreasing`` (b > 0) says whether the fit is a decreasing law at all; only such a fit can say
    what x reaches a loss (``needed_for_loss``)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3:
        raise ValueError(f"a power law with offset needs at least 3 points, got {len(x)}")

    def solve(c: float) -> tuple[float, float, float]:
        slope, intercept = np.polyfit(np.log(x), np.log(y - c), 1)
        a, b = math.exp(intercept), -slope
        return a, b, float(np.sum((a * x ** (-b) + c - y) ** 2))

    lo, hi = 0.0, float(y.min()) * (1 - 1e-9)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        c1, c2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if solve(c1)[2] < solve(c2)[2]:
            hi = c2
        else:
            lo = c1
    c = (lo + hi) / 2
    a, b, sse = solve(c)
    return {"a": a, "b": b, "c": c, "sse": sse, "decreasing": b > 0}


def predict(fit: dict, x) -> np.ndarray:
    return fit["a"] * np.asarray(x, dtype=np.float64) ** (-fit["b"]) + fit["c"]


def needed_for_loss(fit: dict, loss: float) -> float:
    """The x at which the fitted curve reaches ``loss`` (inf if below its asymptote). Raises ValueError for
    a fit that is not a decreasing law (b ≤ 0): it gives no such x."""
    if fit["b"] <= 0:
        raise ValueError(f"the fit has b = {fit['b']:.3g} ≤ 0: the loss does not fall with x, so no x reaches a loss")
    if loss <= fit["c"]:
        return math.inf
    return ((loss - fit["c"]) / fit["a"]) ** (-1 / fit["b"])


def collect_runs(run_dirs: list[str | Path]) -> list[dict]:
    """(variant, non-embedding parameters, validation curve, data) of each run folder."""
    from shareddiff.config import ModelConfig
    from shareddiff.params import count_parameters
    from shareddiff.train.metrics import read_metrics

    runs = []
    for run_dir in map(Path, run_dirs):
        config_file = run_dir / "run_config.json"
        if not config_file.is_file():
            raise ValueError(f"{run_dir} is not a training run folder (no run_config.json)")
        recorded = json.loads(config_file.read_text())
        config = ModelConfig.from_dict(recorded["model_config"])
        curve = [(r["tokens"], r["val_loss"]) for r in read_metrics(run_dir) if "val_loss" in r]
        if not curve:
            raise ValueError(f"{run_dir} has no validation loss in metrics.jsonl")
        data = recorded.get("run", {}).get("data", {})
        runs.append(
            {
                "run": str(run_dir),
                "variant": config.attention,
                "params": count_parameters(config).non_embedding,
                "curve": curve,
                "final_loss": curve[-1][1],
                "tokens": curve[-1][0],
                "data": {k: data.get(k) for k in ("path", "tokenizer", "seq_len")},
                "vocab_size": config.vocab_size,
            }
        )
    return runs


def _comparability_warnings(runs: list[dict]) -> list[str]:
    """Losses compare only on the same data, tokenizer and window: say when runs differ there."""
    warnings = []
    for key in ("path", "tokenizer", "seq_len"):
        values = {json.dumps(r["data"][key]) for r in runs}
        if len(values) > 1:
            warnings.append(
                f"runs differ in data.{key} ({', '.join(sorted(values))}): their losses are not comparable, "
                "so fits and matches across them mean little"
            )
    if len({r["vocab_size"] for r in runs}) > 1:
        warnings.append("runs differ in vocabulary size: their losses (nats/token) are not comparable")
    return warnings


def scaling_eval(run_dirs: list[str | Path], reference: str = "diff") -> dict:
    """Per variant: loss-vs-parameters fit (over its runs' final losses) and loss-vs-tokens fit (over the
    validation curve of its largest run); for each reference run, the parameters (tokens) every other
    variant needs to match its loss, as a fraction of the reference's.

    Where a number cannot be given (no fit: fewer than 3 sizes; the loss lies below a fit's asymptote)
    the fraction is None and ``params_note`` / ``tokens_note`` say why; ``warnings`` lists what weakens
    the result (fits through only 3 sizes are exact, runs trained on other data)."""
    runs = collect_runs(run_dirs)
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_variant[run["variant"]].append(run)
    out: dict = {"variants": {}, "match": [], "warnings": _comparability_warnings(runs)}
    for variant, variant_runs in by_variant.items():
        entry: dict = {"runs": [{k: r[k] for k in ("run", "params", "final_loss", "tokens")} for r in variant_runs]}
        sizes = len({r["params"] for r in variant_runs})
        if sizes >= 3:
            entry["params_fit"] = fit_power_law(
                [r["params"] for r in variant_runs], [r["final_loss"] for r in variant_runs]
            )
        if sizes < 3:
            out["warnings"].append(f"{variant}: {sizes} size(s), no loss-vs-parameters fit (a · N^(−b) + c needs 3)")
        elif sizes == 3:
            out["warnings"].append(
                f"{variant}: 3 sizes for a 3-parameter fit, which passes through every point exactly; "
                "nothing checks it, so read its matches as rough"
            )
        largest = max(variant_runs, key=lambda r: r["params"])
        largest_curve = largest["curve"]
        entry["largest_curve"] = [list(point) for point in largest_curve]
        if len(largest_curve) >= 3:
            entry["tokens_fit"] = fit_power_law(*zip(*largest_curve, strict=True))
            entry["tokens_range"] = [largest_curve[0][0], largest_curve[-1][0]]
        out["variants"][variant] = entry
    if reference in out["variants"]:
        for ref in out["variants"][reference]["runs"]:
            for variant, entry in out["variants"].items():
                if variant != reference:
                    out["match"].append(_match_row(reference, ref, variant, entry))
    return out


def _match_row(reference: str, ref: dict, variant: str, entry: dict) -> dict:
    row = {"reference": reference, "variant": variant, "reference_params": ref["params"], "loss": ref["final_loss"]}
    for axis, size in (("params", ref["params"]), ("tokens", ref["tokens"])):
        fit = entry.get(f"{axis}_fit")
        if fit is None:
            row[f"{axis}_needed_fraction"] = None
            row[f"{axis}_note"] = f"no {axis} fit for {variant}"
            continue
        if fit["b"] <= 0:
            row[f"{axis}_needed_fraction"] = None
            row[f"{axis}_note"] = f"{variant}'s loss does not fall with {axis} over these points: no multiple"
            continue
        needed = needed_for_loss(fit, ref["final_loss"])
        if math.isinf(needed):
            row[f"{axis}_needed_fraction"] = None
            row[f"{axis}_note"] = (
                f"not reached: loss {ref['final_loss']:.4f} lies below {variant}'s fitted asymptote {fit['c']:.4f}"
            )
        else:
            row[f"{axis}_needed_fraction"] = needed / size
    return row
