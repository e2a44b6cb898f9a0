"""Summaries of an experiment from its runs' records: ``summary.json``, ``summary.md`` and plots.

Per group (runs that differ only in their seed): mean ± std of the losses, the budget (tokens per
parameter, passes over the data), λ per layer, speed. Per sweep family: the best value of the swept key
and whether it lies inside the swept range. Fits of loss against parameters (``scaling``) and against
training tokens (``tokens_fit``), each with a parametric-bootstrap interval from the seed spread. MQAR
runs (their records' ``evals.mqar``): ``eval.mqar.mqar_summary``, its heatmap ``mqar.png`` and every width and
learning rate's accuracy ``mqar_rates.png``.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from shareddiff.plots import NEEDLE_PROBE, variant_name
from shareddiff.repro.runner import DEFAULT_OUT, RECORD, read_record
from shareddiff.repro.spec import Experiment
from shareddiff.train.metrics import TAIL_FRACTION, read_metrics, tail_mean_loss

BOOTSTRAP = 200  # refits per variant for the fits' intervals


def _mean_std(values: list[float]) -> dict[str, float]:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": math.nan, "std": 0.0, "n": 0, "sem": 0.0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values), "sem": std / math.sqrt(len(values))}


def _fmt(stat: dict[str, float], digits: int = 4) -> str:
    return f"{stat['mean']:.{digits}f}" + (f" ± {stat['std']:.{digits}f}" if stat["n"] > 1 else "")


def load_records(exp: Experiment, out: Path, command: str | None = None) -> list[dict]:
    """The records of the experiment's finished runs and of the runs it includes from other experiments.
    ``command``: the reproduce command as the user gave it, named when there is no finished run."""
    folder = out / exp.name
    run_dirs = [folder / s.name for s in exp.runs]
    out_option = "" if out == DEFAULT_OUT else f" --out {out}"
    for ref in exp.summary.get("include", []):  # "EXPERIMENT/RUN": a run another experiment already made
        if not (out / ref / RECORD).is_file():
            raise ValueError(
                f"{exp.name} includes {ref}, which has not run yet; run `shareddiff reproduce {ref.split('/')[0]} "
                f"--run {ref.split('/')[-1]}{out_option}` first"
            )
        run_dirs.append(out / ref)
    records = [read_record(d) | {"dir": str(d)} for d in run_dirs if (d / RECORD).is_file()]
    specs = {spec.name: spec for spec in exp.runs}
    for record in records:  # this experiment's own runs must be the runs its file defines
        spec = specs.get(Path(record["dir"]).name) if Path(record["dir"]).parent == folder else None
        if spec is None:
            continue
        preset, overrides = record.get("preset", spec.preset), list(record.get("overrides", spec.overrides))
        if preset != spec.preset or overrides[: len(spec.overrides)] != list(spec.overrides):  # then the command's
            raise ValueError(
                f"{record['dir']} holds a run of preset {preset} with overrides {overrides}, but {exp.path} defines "
                f"{spec.name} as preset {spec.preset} with {list(spec.overrides)}: another experiment of the same "
                "name wrote it; pass --out to keep the two apart"
            )
    for record in records:  # records written before train_loss_tail, lr and passes existed: from their run folder
        if record.get("train_loss_tail") is None:
            rows = [r for r in read_metrics(record["dir"]) if "loss" in r]
            record["train_loss_tail"] = tail_mean_loss(rows) if rows else record.get("train_loss")
        _fill_from_run_config(record)
    if not records:
        command = command or f"shareddiff reproduce {exp.name}"
        raise ValueError(f"no finished runs under {folder}; run `{command}` first")
    return records


def _fill_from_run_config(record: dict) -> None:
    """The peak learning rate (``run.optim.lr``) and the passes over the training split (training tokens over
    ``train_tokens``) of a record that lacks them, from its run's ``run_config.json``, as ``build_record`` takes
    them. Passes stay None where the run did not record its split's size (runs before that was recorded; MQAR,
    whose every batch is new)."""
    from shareddiff.train.trainer import RUN_CONFIG

    path = Path(record["dir"]) / RUN_CONFIG
    if (record.get("lr") is not None and record.get("passes") is not None) or not path.is_file():
        return
    run_config = json.loads(path.read_text())
    if record.get("lr") is None:
        record["lr"] = run_config["run"]["optim"]["lr"]
    if record.get("passes") is None and run_config.get("train_tokens"):
        record["passes"] = record["tokens"] / run_config["train_tokens"]


def group_entry(recs: list[dict]) -> dict[str, Any]:
    """One group's statistics over its seeds."""
    first = recs[0]
    entry: dict[str, Any] = {
        "family": first.get("family", first["group"]),
        "point": first.get("point", {}),
        "preset": first["preset"],
        "variant": first["variant"],
        "overrides": first["overrides"],
        "seeds": [r["seed"] for r in recs],
        "params": first["params"],
        "params_non_embedding": first["params_non_embedding"],
        "tokens": first["tokens"],
        "tokens_per_param": first.get("tokens_per_param", first["tokens"] / first["params"]),
        "passes": first.get("passes"),
        "lr": first.get("lr"),
        "val_loss": _mean_std([r["val_loss"] for r in recs]),
        "train_loss": _mean_std([r.get("train_loss_tail", r.get("train_loss")) for r in recs]),
        "tokens_per_s": _mean_std([r["tokens_per_s"] for r in recs if r.get("tokens_per_s")]),
        "concurrent_runs": max(r.get("concurrent_runs", 1) for r in recs),
        "device": first["device"],
    }
    lambdas = [r["lambda"] for r in recs if r.get("lambda")]
    if lambdas:
        entry["lambda"] = [statistics.fmean(layer) for layer in zip(*lambdas, strict=True)]
    if all("lm" in r["evals"] for r in recs):
        for key in ("ar_hit_loss", "others_loss"):
            entry[key] = _mean_std([r["evals"]["lm"][key] for r in recs])
    if all("needle" in r["evals"] for r in recs):
        entry["needle"] = [
            {
                "n_needles": row["n_needles"],
                "n_queries": row["n_queries"],
                "accuracy": _mean_std([r["evals"]["needle"][i]["accuracy"] for r in recs]),
                "by_length": {
                    n: statistics.fmean(r["evals"]["needle"][i]["by_length"][n] for r in recs) for n in row["by_length"]
                },
            }
            for i, row in enumerate(first["evals"]["needle"])
        ]
    if all("attention" in r["evals"] for r in recs):
        entry["attention"] = {
            key: _mean_std([statistics.fmean(row[key] for row in r["evals"]["attention"]["rows"]) for r in recs])
            for key in ("answer", "noise", "question", "total")
            if all(key in row for r in recs for row in r["evals"]["attention"]["rows"])
        }
    return entry


PROBE_KEYS = tuple(key for key, _ in NEEDLE_PROBE)  # exact match first


def needle_probe_entry(run_dirs: list[str | Path], thresholds: tuple[float, ...] = (0.5, 0.9)) -> dict | None:
    """The needle probe logged along training (``shareddiff.train.probes``) of one group's runs: per run the
    first step (and tokens) at which exact match reached each threshold (None: never) and its last values;
    the last values' mean ± std over the runs. None when a run logged no probe."""
    runs = []
    for d in run_dirs:
        rows = [r for r in read_metrics(d) if PROBE_KEYS[0] in r]
        if not rows:
            return None
        first = {
            str(t): next(({"step": r["step"], "tokens": r["tokens"]} for r in rows if r[PROBE_KEYS[0]] >= t), None)
            for t in thresholds
        }
        runs.append({"first": first, "last": {"step": rows[-1]["step"], **{k: rows[-1][k] for k in PROBE_KEYS}}})
    return {"runs": runs, "last": {k: _mean_std([r["last"][k] for r in runs]) for k in PROBE_KEYS}}


def select_best(groups: dict[str, dict], key: str) -> dict[str, dict]:
    """Per sweep family, the value of ``key`` (e.g. "optim.lr") with the lowest mean validation loss, and
    whether it is interior (not at either end of the swept values: else the sweep must be extended)."""
    families: dict[str, list[tuple[Any, str, dict]]] = {}
    for group, e in groups.items():
        if key in e["point"]:
            families.setdefault(e["family"], []).append((e["point"][key], group, e))
    out = {}
    for family, points in families.items():
        points.sort(key=lambda p: p[0])
        best = min(points, key=lambda p: p[2]["val_loss"]["mean"])
        out[family] = {
            "key": key,
            "values": [p[0] for p in points],
            "val_loss": [p[2]["val_loss"] for p in points],
            "best": best[0],
            "best_group": best[1],
            "best_val_loss": best[2]["val_loss"],
            "interior": points[0][0] != best[0] != points[-1][0] and len(points) >= 3,
            "variant": best[2]["variant"],
        }
    return out


def fit_with_interval(x: list[float], y: list[float], sigma: float | list[float], seed: int = 0) -> dict[str, Any]:
    """The power-law fit of y over x (``eval.scaling.fit_power_law``) plus ``BOOTSTRAP`` refits with each
    y drawn from N(y, (scale · sigma_i)²): the seed spread carried into the fit.

    ``sigma`` is each point's standard error (one value for all, or one per point: the seed σ over √seeds).
    Where the fit has residual degrees of freedom (more than three points) and its residuals are larger than
    that noise (χ² / dof > 1), every sigma_i is widened by the Birge ratio scale = √(χ² / dof), so that the
    interval also carries the law's misfit, not only the seed noise. Returns the fit's a, b, c, sse plus
    ``draws``, ``sigma`` (per point), ``residuals`` (y − fit), ``chi2``, ``dof`` and ``scale``."""
    from shareddiff.eval.scaling import fit_power_law, predict

    fit = fit_power_law(x, y)
    y_arr = np.asarray(y, dtype=np.float64)
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), y_arr.shape).copy()
    residuals = y_arr - predict(fit, x)
    dof = len(x) - 3
    chi2 = float(np.sum((residuals / sig) ** 2)) if dof > 0 and np.all(sig > 0) else math.nan
    scale = max(1.0, math.sqrt(chi2 / dof)) if not math.isnan(chi2) else 1.0
    rng = np.random.default_rng(seed)
    draws = []
    if np.all(sig > 0):
        for _ in range(BOOTSTRAP):
            noisy = y_arr + rng.normal(0.0, 1.0, len(y_arr)) * sig * scale
            try:
                draws.append(fit_power_law(x, noisy))
            except (ValueError, np.linalg.LinAlgError):
                continue
    return {
        **fit,
        "draws": draws,
        "sigma": sig.tolist(),
        "residuals": residuals.tolist(),
        "chi2": chi2,
        "dof": dof,
        "scale": scale,
    }


def needed_with_interval(fit: dict, loss: float, sigma: float, seed: int = 1) -> tuple[float, float, float]:
    """(x needed to reach ``loss``, 16th and 84th percentiles over the bootstrap, the loss itself drawn
    from N(loss, sigma²), sigma being that loss's own standard error); inf where the curve never gets there."""
    from shareddiff.eval.scaling import needed_for_loss

    point = needed_for_loss(fit, loss)
    if not fit["draws"]:
        return point, math.nan, math.nan
    rng = np.random.default_rng(seed)
    # a draw that is no decreasing law (b ≤ 0) never reaches a lower loss: "beyond", as inf
    needs = np.asarray(
        [needed_for_loss(d, loss + rng.normal(0, sigma)) if d["b"] > 0 else math.inf for d in fit["draws"]]
    )
    # draws whose curve never reaches the loss give inf: rank-based percentiles keep them as "beyond"
    lo, hi = np.percentile(needs, [16, 84], method="nearest" if np.isinf(needs).any() else "linear")
    return point, float(lo), float(hi)


def seed_sigma(groups: dict[str, dict]) -> float:
    """The pooled seed standard deviation of the groups with several seeds, each group's variance weighted by
    its degrees of freedom n − 1 (0 if no group has two seeds)."""
    parts = [(e["val_loss"]["n"] - 1, e["val_loss"]["std"] ** 2) for e in groups.values() if e["val_loss"]["n"] > 1]
    dof = sum(k for k, _ in parts)
    return math.sqrt(sum(k * v for k, v in parts) / dof) if dof else 0.0


def delta_standard_error(a: dict, b: dict) -> float | None:
    """Standard error of the difference of two groups' mean losses from their seed spreads (Welch:
    sqrt(s_a²/n_a + s_b²/n_b)); None unless both groups have two seeds or more."""
    if a["n"] < 2 or b["n"] < 2:
        return None
    return math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])


def efficiency(groups: dict[str, dict], x_key: str, references: list[str], sigma: float) -> dict[str, Any]:
    """Per variant a fit of mean validation loss against ``x_key`` ("params_non_embedding" or "tokens")
    over its groups, and for every reference group the x each other variant needs to reach its loss, as
    a multiple of the reference's x (with a 16–84 % bootstrap interval, ``fit_with_interval``).

    ``sigma`` is one seed's standard deviation of the loss; a point averaged over n seeds has standard
    error sigma / √n. Each fit's residuals, χ² and widening scale are kept in the result."""
    by_variant: dict[str, list[dict]] = {}
    for e in groups.values():
        by_variant.setdefault(e["variant"], []).append(e)
    fits, points, errors = {}, {}, {}
    for variant, entries in by_variant.items():
        xs = sorted({e[x_key] for e in entries})
        at = [[e for e in entries if e[x_key] == x] for x in xs]
        means = [statistics.fmean(e["val_loss"]["mean"] for e in es) for es in at]
        seeds = [max(1, sum(e["val_loss"]["n"] for e in es)) for es in at]
        points[variant] = list(zip(xs, means, strict=True))
        errors[variant] = [sigma / math.sqrt(n) for n in seeds]
        if len(xs) >= 3:
            fits[variant] = fit_with_interval(xs, means, errors[variant])
    rows = []
    for reference in references:
        for (x, loss), error in zip(points.get(reference, []), errors.get(reference, []), strict=True):
            for variant, fit in fits.items():
                if variant == reference:
                    continue
                row = {"reference": reference, "variant": variant, "reference_x": x, "loss": loss}
                if fit["b"] <= 0:  # not a decreasing law: no x of it reaches a loss
                    rows.append(row | {"needed_fraction": None, "interval": [math.nan, math.nan], "decreasing": False})
                    continue
                need, lo, hi = needed_with_interval(fit, loss, error)
                xs = [p[0] for p in points[variant]]
                frac = need / x
                rows.append(
                    row
                    | {
                        "needed_fraction": frac,
                        "interval": [lo / x, hi / x],
                        "extrapolated": not min(xs) <= need <= max(xs),
                        "decreasing": True,
                        # the point estimate outside its own bootstrap interval: the fit swings with the noise
                        "unstable": not math.isnan(lo) and not lo / x <= frac <= hi / x,
                    }
                )
    keys = ("a", "b", "c", "sse", "residuals", "chi2", "dof", "scale")
    clean = {v: {k: (None if k == "chi2" and math.isnan(f[k]) else f[k]) for k in keys} for v, f in fits.items()}
    exact = bool(fits) and all(len(points[v]) == 3 for v in fits)
    return {"x": x_key, "points": points, "fits": clean, "match": rows, "sigma": sigma, "exact": exact}


def summarize(exp: Experiment, out: Path, command: str | None = None) -> Path:
    """``summary.json``, ``summary.md`` and plots from the records of the experiment's finished runs
    (``command``: the reproduce command to name when there are none)."""
    from shareddiff import plots
    from shareddiff.eval.mqar import mqar_summary

    folder = out / exp.name
    records = load_records(exp, out, command)
    by_group: dict[str, list[dict]] = {}
    for record in records:
        by_group.setdefault(record["group"], []).append(record)
    groups = {group: group_entry(recs) for group, recs in by_group.items()}
    summary: dict[str, Any] = {"experiment": exp.name, "description": exp.description, "groups": groups}
    missing = [spec.name for spec in exp.runs if not (folder / spec.name / RECORD).is_file()]
    summary["runs"] = {"finished": len(exp.runs) - len(missing), "total": len(exp.runs), "missing": missing}
    baseline = exp.summary.get("baseline")
    if baseline in groups:
        ref = groups[baseline]["val_loss"]
        for entry in groups.values():
            entry["delta_vs_baseline"] = entry["val_loss"]["mean"] - ref["mean"]
            entry["delta_se"] = None if entry is groups[baseline] else delta_standard_error(entry["val_loss"], ref)
    sigma = seed_sigma(groups)
    summary["seed_sigma"] = sigma
    references = exp.summary.get("references", ["standard", "diff"])
    if exp.summary.get("select"):
        summary["select"] = select_best(groups, exp.summary["select"])
        plots.plot_sweep(
            summary["select"], folder / "sweep.png", f"{exp.name}: validation loss by {exp.summary['select']}"
        )
    if exp.summary.get("scaling"):
        summary["params_fit"] = efficiency(groups, "params_non_embedding", references, sigma)
        if summary["params_fit"]["match"]:
            plots.plot_efficiency(summary["params_fit"], folder / "scaling.png", "non-embedding parameters")
    if exp.summary.get("tokens_fit"):
        summary["tokens_fit"] = efficiency(groups, "tokens", references, sigma)
        if summary["tokens_fit"]["match"]:
            plots.plot_efficiency(
                summary["tokens_fit"], folder / "tokens.png", "training tokens (each its own schedule)"
            )
    labels = {g: f"{g} (n={len(recs)})" for g, recs in by_group.items()}
    sizes = {g: e["preset"].rsplit("-", 1)[-1] for g, e in groups.items()}
    variant_of = {labels[g]: e["variant"] for g, e in groups.items()}
    if len(set(sizes.values())) > 1:  # a column per model size, smallest first
        smallest = {size: min(e["params"] for g, e in groups.items() if sizes[g] == size) for size in sizes.values()}
        order = sorted(groups, key=lambda g: smallest[sizes[g]])
        labels = {g: labels[g] for g in order}
        panels = {labels[g]: sizes[g] for g in order}
    elif len(set(variant_of.values())) < len(groups):  # sweeps: a column per variant
        panels = {labels[g]: e["variant"] for g, e in groups.items()}
    else:
        panels = None
    plots.plot_group_curves(
        {labels[g]: [r["dir"] for r in by_group[g]] for g in labels},
        folder / "loss_curves.png",
        f"{exp.name}: validation loss (mean over seeds, band: min–max)",
        variants=variant_of,
        panels=panels,
    )
    if any("lambda" in e for e in groups.values()):
        plots.plot_lambdas({g: e["lambda"] for g, e in groups.items() if "lambda" in e}, folder / "lambda.png")
    if any("needle" in e for e in groups.values()):
        plots.plot_needle_bars(summary, folder / "needle.png")
    probes = {g: needle_probe_entry([r["dir"] for r in by_group[g]]) for g in groups}
    probes = {g: p for g, p in probes.items() if p is not None}
    if probes:
        summary["needle_probe"] = probes
        plots.plot_needle_probe(
            {g: [r["dir"] for r in by_group[g]] for g in probes},
            folder / "needle_probe.png",
            f"{exp.name}: the needle probe along training (mean over seeds)",
            variants={g: groups[g]["variant"] for g in probes},
        )
    mqar_runs = [r["evals"]["mqar"] for r in records if "mqar" in r["evals"]]
    if mqar_runs:
        summary["mqar"] = mqar_summary(mqar_runs)
        plots.plot_mqar_heatmap(summary["mqar"], folder / "mqar.png", exp.name)
        plots.plot_mqar_rates(summary["mqar"], folder / "mqar_rates.png", exp.name)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    (folder / "summary.md").write_text(summary_markdown(exp, summary, baseline))
    return folder / "summary.md"


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(map(str, header)) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(map(str, row)) + " |" for row in rows),
    ]


def _fmt_delta(entry: dict) -> str:
    se = entry.get("delta_se")
    return f"{entry['delta_vs_baseline']:+.4f}" + ("" if not se else f" ± {se:.4f}")


EXACT_FIT_NATS = 1e-4  # a 3-point fit whose residuals are all below this passes through its points


def _efficiency_rows(result: dict, unit: str) -> list[str]:
    if not result["match"]:
        have = ", ".join(f"{v}: {len(p)}" for v, p in sorted(result["points"].items()))
        return [
            "",
            f"No fit of loss against {unit} yet: it needs a reference variant and another with three sizes or more "
            f"each (sizes so far: {have}).",
        ]
    rows = []
    for m in sorted(result["match"], key=lambda m: (m["reference"], m["reference_x"], m["variant"])):
        frac, (lo, hi) = m["needed_fraction"], m["interval"]
        if frac is None:
            needed = "loss does not fall with size over these points: no multiple"
        elif math.isinf(frac):
            needed = "beyond the fit"
        elif m.get("unstable"):
            needed = f"unstable fit: {frac:.2f} lies outside its interval [{lo:.2f}, {hi:.2f}]"
        else:
            needed = f"{frac:.2f}" + ("" if math.isnan(lo) else f" [{lo:.2f}, {hi:.2f}]")
            needed += " (extrapolated)" if m["extrapolated"] else ""
        rows.append(
            [
                variant_name(m["reference"]),
                f"{m['reference_x']:,}",
                f"{m['loss']:.4f}",
                variant_name(m["variant"]),
                needed,
            ]
        )
    lines = [
        "",
        f"{unit.capitalize()} a variant needs to reach the reference's loss, as a multiple of the reference's "
        "(from the variant's power-law fit loss = a·x^(−b) + c; below 1 = fewer; in brackets the 16–84 % interval "
        "of a bootstrap that redraws every mean loss with its standard error, the seed spread "
        f"σ = {result['sigma']:.4f} (pooled over the groups with two seeds or more) over √seeds, widened by the "
        "fit's misfit where its residuals exceed that):",
        "",
        *md_table(["reference", f"its {unit}", "its loss", "variant", "needed (× ref)"], rows),
    ]
    fits = result["fits"]
    if fits:
        fit_rows = [
            [
                variant_name(v),
                f"{f['a']:.4g}",
                f"{f['b']:.3f}",
                f"{f['c']:.3f}",
                " ".join(f"{r:+.4f}" for r in f["residuals"]),
                "—" if f["chi2"] is None else f"{f['chi2'] / f['dof']:.1f}",
                f"{f['scale']:.1f}",
            ]
            for v, f in sorted(fits.items())
        ]
        lines += [
            "",
            "The fits (residuals = measured − fitted loss at each size, smallest first; χ²/dof against the seed "
            "standard errors; the interval's widening = max(1, √(χ²/dof))):",
            "",
            *md_table(["variant", "a", "b", "c", "residuals (nats)", "χ²/dof", "widening"], fit_rows),
        ]
        worst = max(fits.values(), key=lambda f: f["scale"])
        largest = max(abs(r) for f in fits.values() for r in f["residuals"])
        if worst["scale"] > 2:
            lines += [
                "",
                f"The power law misses some points by up to {largest:.3f} nats (χ²/dof up to "
                f"{worst['scale'] ** 2:.0f} against the seed standard errors): the law does not describe these "
                "points to within their noise, so the multiples above carry the misfit (wide intervals) and the "
                "same-x comparisons are the firmer reading.",
            ]
    if result.get("exact"):
        miss = max((abs(r) for f in fits.values() for r in f["residuals"]), default=0.0)
        if miss < EXACT_FIT_NATS:
            lines += ["", "With three points per variant the fit passes through every point: no residual checks it."]
        else:
            lines += [
                "",
                "With three points per variant the fit has no residual degree of freedom, yet the law misses them "
                f"by up to {miss:.4f} nats (a·x^(−b) + c cannot follow these points, e.g. a loss that does not "
                "fall monotonically): read its multiples as unsupported.",
            ]
    return lines


# two-sided 95 % quantiles of Student's t with 2(n − 1) degrees of freedom (Welch's for two groups of n seeds)
_T95 = {2: 4.30, 3: 2.78, 4: 2.45, 5: 2.31}


def _delta_note(seeds: list[int]) -> str:
    """The note under the Δ column, worded by the seed counts of the groups that have a standard error: the
    |Δ| / SE a separation needs is the t quantile for the fewest seeds (two seeds: 4.3, three: 2.8)."""
    low, high = min(seeds), max(seeds)
    counts = f"{low}" if low == high else f"{low}–{high}"
    need = _T95.get(low, 2.2)
    return (
        "Δ ± its standard error from the two groups' seed spreads (Welch), where both have two seeds or more; "
        f"with {counts} seeds per group, |Δ| below about {need:.1f} standard errors is not a separation (the "
        f"two-sided 95 % t quantile for {low} seeds a group)."
    )


def _lambda_cell(x: float) -> str:
    """One λ for the table: three decimals, or three significant digits for a λ that ran away (|λ| ≥ 1000)."""
    return f"{x:.3f}" if abs(x) < 1000 else f"{x:.3g}"


def _lambda_table(lambdas: dict[str, list[float]]) -> list[str]:
    """λ per layer, one row a group, one column a layer; shallower groups padded with — to the deepest."""
    depth = max(len(v) for v in lambdas.values())
    rows = [[g, *(_lambda_cell(x) for x in v), *["—"] * (depth - len(v))] for g, v in lambdas.items()]
    return md_table(["group", *range(1, depth + 1)], rows)


def _fmt_ratio(x: float) -> str:
    """One decimal from 1 up, two significant digits below (0.011, not 0.0)."""
    return f"{x:.1f}" if x >= 1 else f"{x:.2g}"


def summary_markdown(exp: Experiment, summary: dict, baseline: str | None) -> str:
    groups = summary["groups"]
    with_delta = baseline in groups
    unknown_passes = any(e["passes"] is None for e in groups.values())
    passes = "passes³" if unknown_passes else "passes"
    header = ["group", "params", "tokens", "tokens/param", passes, "lr", "seeds", "val loss", "train loss²"]
    header += ["tokens/s¹"] + [f"Δ vs {baseline}"] * with_delta
    rows = [
        [
            group,
            f"{e['params']:,}",
            f"{e['tokens']:,}",
            _fmt_ratio(e["tokens_per_param"]),
            "—" if e["passes"] is None else f"{e['passes']:.2f}",
            "—" if e["lr"] is None else f"{e['lr']:g}",
            len(e["seeds"]),
            _fmt(e["val_loss"]),
            _fmt(e["train_loss"]),
            f"{e['tokens_per_s']['mean']:,.0f}" if e["tokens_per_s"]["n"] else "—",
            *([_fmt_delta(e)] if with_delta else []),
        ]
        for group, e in groups.items()
    ]
    lines = [f"# {exp.name}", "", exp.description, ""]
    runs = summary.get("runs")
    if runs and runs["missing"]:  # a partial summary says so before any table
        shown = ", ".join(runs["missing"][:5]) + (", …" if len(runs["missing"]) > 5 else "")
        lines += [
            f"**Partial: {runs['finished']} of the experiment's {runs['total']} runs have records** (missing: "
            f"{shown}); the tables and plots below cover those only.",
            "",
        ]
    lines += md_table(header, rows)
    shared = max(e["concurrent_runs"] for e in groups.values())
    note = f"; up to {shared} runs shared a GPU at a time, so these are not speed measurements." if shared > 1 else "."
    lines += ["", "¹ training tokens/s: each run's median over its log windows, averaged over the group's seeds" + note]
    lines += [
        "",
        f"² training loss: the mean of the logged step losses over the last {TAIL_FRACTION:.0%} of each run's steps "
        "(one step's batch loss varies by about 0.1 nats), then mean ± std over seeds.",
    ]
    if unknown_passes and summary.get("mqar"):
        lines += ["", "³ passes over the training data: none for MQAR, which draws new sequences every step."]
    elif unknown_passes:
        lines += [
            "",
            "³ passes over the training split: — where the run's run_config.json does not record the split's size "
            "in tokens (`train_tokens`; runs from before it was recorded).",
        ]
    if with_delta and any(e.get("delta_se") for e in groups.values()):
        lines += ["", _delta_note([len(e["seeds"]) for e in groups.values() if e.get("delta_se")])]
    rows = [[g, e["preset"], " ".join(e["overrides"]) or "—"] for g, e in groups.items()]
    lines += ["", *md_table(["group", "preset", "overrides"], rows)]
    if summary["seed_sigma"]:
        lines += ["", f"Pooled seed standard deviation of the validation loss: {summary['seed_sigma']:.4f} nats."]
    if "select" in summary:
        rows = [
            [
                family,
                ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in s["values"]),
                s["best"],
                _fmt(s["best_val_loss"]),
                "yes" if s["interior"] else "**no: extend the sweep**",
            ]
            for family, s in summary["select"].items()
        ]
        key = next(iter(summary["select"].values()))["key"]
        lines += [
            "",
            f"Best {key} per family:",
            "",
            *md_table(["family", "swept", "best", "val loss", "interior"], rows),
        ]
        lines += ["", "![sweep](sweep.png)"]
    if any("ar_hit_loss" in e for e in groups.values()):
        rows = [[g, _fmt(e["ar_hit_loss"]), _fmt(e["others_loss"])] for g, e in groups.items() if "ar_hit_loss" in e]
        lines += ["", *md_table(["group", "AR-Hit loss", "Others loss"], rows)]
        lines += [
            "",
            "(AR-Hit / Others: `eval lm` at the end of each run, over its own set of validation tokens "
            "(`evals.lm.tokens` in record.json); its overall loss is not the val loss column's, which comes from "
            "the validation windows of training, so compare these two columns with each other only.)",
        ]
    lambdas = {g: e["lambda"] for g, e in groups.items() if "lambda" in e}
    if lambdas:
        lines += ["", "Final λ per layer (mean over seeds):", "", *_lambda_table(lambdas)]
        runaway = sorted({g for g, values in lambdas.items() if any(abs(x) >= 1000 for x in values)})
        if runaway:
            lines += [
                "",
                f"λ ran away (|λ| ≥ 1000) in {', '.join(runaway)}: in that layer each head computes (A₁ − λA₂)V ≈ "
                "−λA₂V, which the per-head norm rescales, so the layer acts as ordinary softmax attention (λ is "
                "unbounded: exp(λ_q1·λ_k1) − exp(λ_q2·λ_k2) + λ_init). The plot's axis is symmetric-log.",
            ]
        lines += ["", "![lambda](lambda.png)"]
    lines += _needle_lines(groups)
    lines += _probe_lines(summary.get("needle_probe"))
    lines += _mqar_lines(summary.get("mqar"))
    lines += _attention_lines(groups)
    if "params_fit" in summary:
        lines += _efficiency_rows(summary["params_fit"], "non-embedding parameters")
        lines += ["", "![scaling](scaling.png)"] if summary["params_fit"]["match"] else []
    if "tokens_fit" in summary:
        lines += _efficiency_rows(summary["tokens_fit"], "training tokens")
        lines += ["", "![tokens](tokens.png)"] if summary["tokens_fit"]["match"] else []
    lines += ["", "![validation loss](loss_curves.png)"]
    return "\n".join(lines) + "\n"


def _needle_lines(groups: dict) -> list[str]:
    needle_groups = {g: e for g, e in groups.items() if "needle" in e}
    if not needle_groups:
        return []
    first = next(iter(needle_groups.values()))["needle"]
    cols = [f"N={r['n_needles']} R={r['n_queries']}" for r in first]
    rows = [[g, *(_fmt(r["accuracy"], 3) for r in e["needle"])] for g, e in needle_groups.items()]
    lines = ["", "Multi-needle accuracy (mean over lengths and depths):", "", *md_table(["group", *cols], rows)]
    lengths = list(first[0]["by_length"])
    rows = [
        [g, *(f"{statistics.fmean(r['by_length'][n] for r in e['needle']):.3f}" for n in lengths)]
        for g, e in needle_groups.items()
    ]
    lines += [
        "",
        "By context length (mean over the N/R settings and depths):",
        "",
        *md_table(["group", *lengths], rows),
    ]
    return [*lines, "", "![needle](needle.png)"]


def _probe_lines(probes: dict | None) -> list[str]:
    """The needle probe's table: last values (mean over seeds) and, per seed, the first step at each
    exact-match threshold."""
    if not probes:
        return []
    thresholds = list(next(iter(probes.values()))["runs"][0]["first"])
    head = ["group", "exact match", "per-digit accuracy", "answer log-prob", *(f"first step ≥ {t}" for t in thresholds)]
    rows = []
    for g, p in probes.items():
        firsts = [
            " / ".join("never" if r["first"][t] is None else f"{r['first'][t]['step']:,}" for r in p["runs"])
            for t in thresholds
        ]
        rows.append([g, *(_fmt(p["last"][k], 3) for k in PROBE_KEYS), *firsts])
    return [
        "",
        "The needle probe along training (the trainer's fixed validation prompts; exact match moves in steps of "
        "1/prompts), at the last step (mean over seeds); first steps per seed:",
        "",
        *md_table(head, rows),
        "",
        "![needle probe](needle_probe.png)",
    ]


def _attention_lines(groups: dict) -> list[str]:
    """Table 5's buckets (``eval.attention_allocation``), means over depths, and each group's mean final λ."""
    att = {g: e for g, e in groups.items() if "attention" in e}
    if not att:
        return []
    keys = [k for k in ("answer", "noise", "question", "total") if all(k in e["attention"] for e in att.values())]
    rows = [
        [
            g,
            *(_fmt(e["attention"][k], 3) for k in keys),
            f"{statistics.fmean(e['lambda']):.3f}" if "lambda" in e else "—",
        ]
        for g, e in att.items()
    ]
    lines = [
        "",
        *md_table(["group", *(f"attention on the {k}" if k != "total" else "total" for k in keys), "mean λ"], rows),
    ]
    if "question" in keys:
        lines += [
            "",
            "(The row of the position that predicts the answer, per layer and head, split into the answer needle, "
            "the rest of the context (noise) and the question, each bucket's signed mass over the row's absolute "
            "mass, averaged over heads, layers, samples and depths; the differential maps are A₁ − λA₂, so their "
            "buckets can be negative and sum to less than 1: `eval/attention.json` has them per layer, with A₁ "
            "and A₂ apart.)",
        ]
    return lines


def _by_seed(accuracies: list[float]) -> str:
    """A rate's accuracy per seed in brackets, where it has several (else nothing)."""
    return f" ({', '.join(f'{a:.2f}' for a in accuracies)})" if len(accuracies) > 1 else ""


def _mqar_lines(mqar: dict | None) -> list[str]:
    """The MQAR tables: per (cell, variant) the best over widths and rates, then per width over rates."""
    if not mqar:
        return []

    def steps(step: int | None) -> str:
        return "—" if step is None else f"{step:,}"

    def row(c: dict, *first: Any) -> list[Any]:
        at_2x = "—" if c["accuracy_2x"] is None else f"{c['accuracy_2x']:.3f}"
        return [
            *first,
            f"{c['accuracy']:.3f}",
            at_2x,
            f"{c['lr']:g}",
            steps(c["steps_to_50"]),
            steps(c["steps_to_99"]),
            steps(c.get("stopped_early")),
        ]

    cell = ["length", "pairs", "variant"]
    after = ["accuracy", "at 2x length", "lr", "steps to 50 %", "steps to 99 %", "stopped early at"]
    best = [row(c, c["seq_len"], c["pairs"], variant_name(c["variant"]), c["d_model"], c["runs"]) for c in mqar["best"]]
    by_width = []
    for c in mqar["cells"]:
        seeds = c.get("lr_runs", {})  # absent from summaries written before it
        rates = ", ".join(f"{lr}: {accuracy:.2f}{_by_seed(seeds.get(lr, []))}" for lr, accuracy in c["lrs"].items())
        by_width.append([*row(c, c["seq_len"], c["pairs"], variant_name(c["variant"]), c["d_model"]), rates])
    return [
        "",
        "MQAR accuracy at the answer positions (fixed evaluation set, at the end of training or at the run's early "
        "stop), the best run over widths and learning rates per cell and variant, with that run's first evaluated "
        "step at 50 % and 99 %:",
        "",
        *md_table([*cell, "width", "runs", *after], best),
        "",
        "![MQAR](mqar.png)",
        "",
        "![MQAR by rate](mqar_rates.png)",
        "",
        "The final accuracy of every width and learning rate per cell and variant (the mean over seeds where a "
        "setting has several), each panel's title counting its settings at ≥ 0.99: how many settings solve a "
        "cell, and which rate works at each width.",
        "",
        "Per width, the best over learning rates (and each rate's final accuracy, the mean over its seeds; where a "
        "rate has several, each seed's in brackets, seed 1 first):",
        "",
        *md_table([*cell, "width", *after, "accuracy by lr"], by_width),
    ]
