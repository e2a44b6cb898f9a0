"""Scaling fits (the paper's Figure 2): loss = a · x^(−b) + c against parameters or tokens, per
variant, and how many parameters (or tokens) a variant needs to reach another's loss."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np


def fit_power_law(x, y) -> dict:
    """Least-squares fit of y = a·x^(−b) + c (b > 0, 0 ≤ c < min y): golden-section search over c,
    a and b by linear regression of log(y − c) on log x for each c."""
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
    return {"a": a, "b": b, "c": c, "sse": sse}


def predict(fit: dict, x) -> np.ndarray:
    return fit["a"] * np.asarray(x, dtype=np.float64) ** (-fit["b"]) + fit["c"]


def needed_for_loss(fit: dict, loss: float) -> float:
    """The x at which the fitted curve reaches ``loss`` (inf if below its asymptote)."""
    if loss <= fit["c"]:
        return math.inf
    return ((loss - fit["c"]) / fit["a"]) ** (-1 / fit["b"])


def collect_runs(run_dirs: list[str | Path]) -> list[dict]:
    """(variant, non-embedding parameters, validation curve) of each run folder."""
    from shareddiff.config import ModelConfig
    from shareddiff.params import count_parameters
    from shareddiff.train.metrics import read_metrics

    runs = []
    for run_dir in map(Path, run_dirs):
        config_file = run_dir / "run_config.json"
        if not config_file.is_file():
            raise ValueError(f"{run_dir} is not a training run folder (no run_config.json)")
        config = ModelConfig.from_dict(json.loads(config_file.read_text())["model_config"])
        curve = [(r["tokens"], r["val_loss"]) for r in read_metrics(run_dir) if "val_loss" in r]
        if not curve:
            raise ValueError(f"{run_dir} has no validation loss in metrics.jsonl")
        runs.append(
            {
                "run": str(run_dir),
                "variant": config.attention,
                "params": count_parameters(config).non_embedding,
                "curve": curve,
                "final_loss": curve[-1][1],
                "tokens": curve[-1][0],
            }
        )
    return runs


def scaling_eval(run_dirs: list[str | Path], reference: str = "diff") -> dict:
    """Per variant: loss-vs-parameters fit (over its runs' final losses) and loss-vs-tokens fit (over the
    validation curve of its largest run); for each reference run, the parameters (tokens) every other
    variant needs to match its loss, as a fraction of the reference's."""
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for run in collect_runs(run_dirs):
        by_variant[run["variant"]].append(run)
    out: dict = {"variants": {}, "match": []}
    for variant, runs in by_variant.items():
        entry: dict = {"runs": [{k: r[k] for k in ("run", "params", "final_loss", "tokens")} for r in runs]}
        if len({r["params"] for r in runs}) >= 3:
            entry["params_fit"] = fit_power_law([r["params"] for r in runs], [r["final_loss"] for r in runs])
        largest = max(runs, key=lambda r: r["params"])
        if len(largest["curve"]) >= 3:
            entry["tokens_fit"] = fit_power_law(*zip(*largest["curve"], strict=True))
            entry["tokens_range"] = [largest["curve"][0][0], largest["curve"][-1][0]]
        out["variants"][variant] = entry
    if reference in out["variants"]:
        for ref in out["variants"][reference]["runs"]:
            for variant, entry in out["variants"].items():
                if variant == reference:
                    continue
                row = {
                    "reference": reference,
                    "variant": variant,
                    "reference_params": ref["params"],
                    "loss": ref["final_loss"],
                }
                if "params_fit" in entry:
                    row["params_needed_fraction"] = (
                        needed_for_loss(entry["params_fit"], ref["final_loss"]) / ref["params"]
                    )
                if "tokens_fit" in entry:
                    row["tokens_needed_fraction"] = (
                        needed_for_loss(entry["tokens_fit"], ref["final_loss"]) / ref["tokens"]
                    )
                out["match"].append(row)
    return out


def plot_scaling(result: dict, out, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    for i, (variant, entry) in enumerate(sorted(result["variants"].items())):
        color = f"C{i}"
        params = [r["params"] for r in entry["runs"]]
        axes[0].scatter(params, [r["final_loss"] for r in entry["runs"]], color=color, label=variant)
        if "params_fit" in entry:
            grid = np.geomspace(min(params), max(params), 50)
            axes[0].plot(grid, predict(entry["params_fit"], grid), color=color)
        if "tokens_fit" in entry:
            grid = np.geomspace(*entry.get("tokens_range", [1e3, max(r["tokens"] for r in entry["runs"])]), 50)
            axes[1].plot(grid, predict(entry["tokens_fit"], grid), color=color, label=variant)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("non-embedding parameters")
    axes[0].set_ylabel("validation loss")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("training tokens (largest run)")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
