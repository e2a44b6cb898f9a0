"""``shareddiff reproduce NAME``: the small-scale reproduction experiments of ``configs/repro/``.

An experiment file names a shared training recipe, the runs (a group, a preset, seeds, overrides) and
the evaluations every run gets. Each run trains, evaluates and then drops its checkpoints, keeping
``metrics.jsonl``, ``run_config.json``, ``eval/*.json|png`` and ``record.json`` as its record. A run
with a ``record.json`` is done and skipped; a run killed before that resumes from its last checkpoint.
After the runs, ``summary.json``/``summary.md`` and plots are written for the whole experiment.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from shareddiff.config import RunConfig, load_recipe

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECORD = "record.json"
CONCURRENT_ENV = "SHAREDDIFF_REPRO_JOBS"  # set for runs launched by --jobs: their speed is a shared GPU's
EVALS = ("lm", "needle", "attention")
DEFAULT_NEEDLE = {
    "lengths": [1024, 2048, 4096],
    "depths": [0.0, 0.25, 0.5, 0.75, 1.0],
    "configs": [[1, 1], [2, 1], [2, 2], [4, 1], [4, 2], [6, 1], [6, 2]],
    "samples": 10,
    "seed": 0,
}
DEFAULT_ATTENTION = {"length": 1024, "depths": [0.0, 0.25, 0.5, 0.75, 1.0], "needles": 4, "samples": 10, "seed": 0}
# [summary]: baseline = a group to report deltas against; include = ["EXPERIMENT/RUN", ...] runs of other
# experiments; scaling = fit loss vs parameters; references = the variants to match in that fit
SUMMARY_KEYS = {"baseline", "include", "scaling", "references"}


@dataclass(frozen=True)
class RunSpec:
    name: str  # "<group>-s<seed>", the run's folder
    group: str  # runs of one group differ only in their seed
    preset: str
    seed: int
    overrides: tuple[str, ...] = ()


@dataclass
class Experiment:
    name: str
    path: Path
    description: str
    recipe: Path
    runs: list[RunSpec]
    evals: list[str]
    needle: dict[str, Any] = field(default_factory=dict)
    attention: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def run(self, name: str) -> RunSpec:
        for spec in self.runs:
            if spec.name == name:
                return spec
        raise ValueError(f"experiment {self.name!r} has no run {name!r}; its runs are: {self.run_names()}")

    def run_names(self) -> str:
        return ", ".join(s.name for s in self.runs)


def repro_dirs() -> list[Path]:
    return [Path("configs/repro"), REPO_CONFIGS / "repro"]


def experiment_names() -> list[str]:
    """Experiment files (those with an [experiment] table) of configs/repro/."""
    for folder in repro_dirs():
        if folder.is_dir():
            return sorted(
                p.stem for p in folder.glob("*.toml") if "experiment" in tomllib.loads(p.read_text(encoding="utf-8"))
            )
    return []


def find_experiment(name: str) -> Path:
    path = Path(name)
    if path.suffix == ".toml" and path.is_file():
        return path
    for folder in repro_dirs():
        if (folder / f"{name}.toml").is_file():
            return folder / f"{name}.toml"
    raise ValueError(f"no experiment {name!r}; the experiments are: {', '.join(experiment_names()) or 'none found'}")


def load_experiment(name: str) -> Experiment:
    """Read and check ``configs/repro/NAME.toml`` (or a path to such a file)."""
    path = find_experiment(name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML ({err})") from err
    head = data.get("experiment")
    if not isinstance(head, dict) or "recipe" not in head:
        raise ValueError(f'{path} is not an experiment: it needs an [experiment] table with recipe = "..."')
    recipe = path.parent / head["recipe"]
    if not recipe.is_file():
        raise ValueError(f"{path}: recipe {head['recipe']!r} not found beside it ({recipe})")
    evals = list(head.get("evals", ["lm"]))
    unknown = sorted(set(evals) - set(EVALS))
    if unknown:
        raise ValueError(f"{path}: unknown evals {unknown}; choose from {list(EVALS)}")
    runs: list[RunSpec] = []
    for i, entry in enumerate(data.get("run", [])):
        missing = [k for k in ("group", "preset") if k not in entry]
        if missing:
            raise ValueError(f"{path}: [[run]] number {i + 1} lacks {missing}")
        seeds = entry.get("seeds", [1])
        if not seeds or not all(isinstance(s, int) for s in seeds):
            raise ValueError(f"{path}: [[run]] {entry['group']!r} needs seeds = [integers, ...]")
        for seed in seeds:
            runs.append(
                RunSpec(
                    f"{entry['group']}-s{seed}",
                    entry["group"],
                    entry["preset"],
                    seed,
                    tuple(entry.get("overrides", [])),
                )
            )
    if not runs:
        raise ValueError(f"{path} lists no [[run]] tables")
    names = [r.name for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path}: runs {duplicates} appear twice; give each [[run]] its own group")
    known = {"needle": set(DEFAULT_NEEDLE), "attention": set(DEFAULT_ATTENTION), "summary": SUMMARY_KEYS}
    for table, keys in known.items():
        extra = sorted(set(data.get(table, {})) - keys)
        if extra:
            raise ValueError(f"{path}: [{table}] has unknown keys {extra}; known keys are {sorted(keys)}")
    return Experiment(
        name=path.stem,
        path=path,
        description=head.get("description", ""),
        recipe=recipe,
        runs=runs,
        evals=evals,
        needle={**DEFAULT_NEEDLE, **data.get("needle", {})},
        attention={**DEFAULT_ATTENTION, **data.get("attention", {})},
        summary=data.get("summary", {}),
    )


def run_recipe(exp: Experiment, spec: RunSpec, out: Path, overrides: list[str], check_data: bool = True) -> RunConfig:
    """The recipe of one run: the shared recipe, the run's preset, seed and overrides, then ``overrides``."""
    run = load_recipe(
        str(exp.recipe),
        spec.preset,
        [*spec.overrides, f"train.seed={spec.seed}", f"train.out_dir={out / exp.name / spec.name}", *overrides],
    )
    if check_data and run.data.path and not Path(run.data.path).is_dir():
        raise ValueError(
            f"data.path={run.data.path!r} does not exist. Build it with `python scripts/build_debian_docs_corpus.py "
            f"corpus/debian-docs` then `shareddiff data prepare corpus/debian-docs --out {run.data.path} "
            "--val-fraction 0.01`, or point data.path=... at a prepared folder"
        )
    run.validate()
    return run


def check_recorded_recipe(run: RunConfig, run_dir: Path) -> None:
    """A finished run is reused only for the recipe it was trained with; otherwise name what differs."""
    from shareddiff.train.trainer import RUN_CONFIG

    recorded = json.loads((run_dir / RUN_CONFIG).read_text())["run"]
    wanted = run.to_dict()
    diffs = [
        f"{section}.{key}: recorded {recorded.get(section, {}).get(key)!r}, now {value!r}"
        for section, values in wanted.items()
        for key, value in values.items()
        if recorded.get(section, {}).get(key) != value
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
    return run_recipe(exp, spec, out, overrides), False


def _evaluate(exp: Experiment, run_dir: Path, echo) -> dict[str, Any]:
    from shareddiff.eval import commands

    results: dict[str, Any] = {}
    if "lm" in exp.evals:
        echo(f"  eval lm: {commands.run_lm(str(run_dir), None, 262_144, None, 'auto', None)}")
        results["lm"] = json.loads((run_dir / "eval" / "lm.json").read_text())
    if "needle" in exp.evals:
        cfg = exp.needle
        rows = []
        for n_needles, n_queries in cfg["configs"]:
            line = commands.run_needle(
                str(run_dir),
                cfg["lengths"],
                cfg["depths"],
                n_needles,
                n_queries,
                cfg["samples"],
                cfg["seed"],
                "auto",
                None,
            )
            echo(f"  eval needle N={n_needles} R={n_queries}: {line}")
            stem = commands.needle_stem(n_needles, n_queries, cfg["lengths"], cfg["depths"])
            data = json.loads((run_dir / "eval" / f"{stem}.json").read_text())
            by_length = {
                str(n): statistics.fmean(c["accuracy"] for c in data["cells"] if c["length"] == n)
                for n in cfg["lengths"]
            }
            rows.append(
                {"n_needles": n_needles, "n_queries": n_queries, "accuracy": data["accuracy"], "by_length": by_length}
            )
        results["needle"] = rows
    if "attention" in exp.evals:
        cfg = exp.attention
        line = commands.run_attention(
            str(run_dir), cfg["length"], cfg["depths"], cfg["needles"], cfg["samples"], cfg["seed"], "auto", None
        )
        echo(f"  eval attention: {line}")
        results["attention"] = json.loads((run_dir / "eval" / "attention.json").read_text())
    return results


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


def run_one(
    exp: Experiment, spec: RunSpec, out: Path, overrides: list[str], keep_checkpoints: bool, progress: bool, echo=print
) -> dict[str, Any]:
    """Train and evaluate one run (resuming it if it was cut off); its record, also in RUN/record.json."""
    import torch

    from shareddiff.params import count_parameters
    from shareddiff.train import train
    from shareddiff.train.metrics import read_metrics

    run, finished = resolve_run(exp, spec, out, overrides)
    run_dir = Path(run.train.out_dir)
    if finished:
        echo(f"{exp.name}/{spec.name}: done before ({run_dir / RECORD})")
        return json.loads((run_dir / RECORD).read_text())
    echo(f"== {exp.name}/{spec.name}: {spec.preset}, seed {spec.seed}, {run.train.max_steps} steps")
    start = time.perf_counter()
    train(run, resume=True, progress=progress, echo=echo)
    trained = time.perf_counter() - start
    evals = _evaluate(exp, run_dir, echo)
    rows = read_metrics(run_dir)
    vals = [r for r in rows if "val_loss" in r]
    speeds = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    from shareddiff.config import ModelConfig
    from shareddiff.train.trainer import RUN_CONFIG

    config = ModelConfig.from_dict(json.loads((run_dir / RUN_CONFIG).read_text())["model_config"])  # as trained
    counts = count_parameters(config)
    record = {
        "experiment": exp.name,
        "run": spec.name,
        "group": spec.group,
        "preset": spec.preset,
        "variant": config.attention,
        "seed": spec.seed,
        "overrides": [*spec.overrides, *overrides],
        "params": counts.total,
        "params_non_embedding": counts.non_embedding,
        "val_loss": vals[-1]["val_loss"],
        "train_loss": next(r["loss"] for r in reversed(rows) if "loss" in r),
        "tokens": vals[-1]["tokens"],
        "tokens_per_s": statistics.median(speeds) if speeds else None,
        "concurrent_runs": int(os.environ.get(CONCURRENT_ENV, "1")),
        "peak_memory_gib": max((r.get("peak_memory_gib", 0.0) for r in rows), default=0.0) or None,
        "seconds_train": trained,  # of this invocation (a resumed run: the rest of its steps)
        "seconds_total": time.perf_counter() - start,
        "device": _device_name(),
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "evals": evals,
    }
    tmp = run_dir / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=float))
    tmp.replace(run_dir / RECORD)
    if not keep_checkpoints:  # the record is complete: the weights are no longer needed
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    echo(f"   {spec.name}: val loss {record['val_loss']:.4f} after {record['tokens']:,} tokens, {trained:.0f} s")
    return record


def _mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def _fmt(stat: dict[str, float], digits: int = 4) -> str:
    return f"{stat['mean']:.{digits}f}" + (f" ± {stat['std']:.{digits}f}" if stat["n"] > 1 else "")


def summarize(exp: Experiment, out: Path) -> Path:
    """``summary.json``, ``summary.md`` and plots from the records of the experiment's finished runs."""
    folder = out / exp.name
    run_dirs = [folder / s.name for s in exp.runs]
    for ref in exp.summary.get("include", []):  # "EXPERIMENT/RUN": a run another experiment already made
        if not (out / ref / RECORD).is_file():
            raise ValueError(
                f"{exp.name} includes {ref}, which has not run yet; run `shareddiff reproduce {ref.split('/')[0]} "
                f"--run {ref.split('/')[-1]}` first"
            )
        run_dirs.append(out / ref)
    records = [json.loads((d / RECORD).read_text()) | {"dir": str(d)} for d in run_dirs if (d / RECORD).is_file()]
    if not records:
        raise ValueError(f"no finished runs under {folder}; run `shareddiff reproduce {exp.name}` first")
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["group"], []).append(record)
    summary: dict[str, Any] = {"experiment": exp.name, "description": exp.description, "groups": {}}
    for group, recs in groups.items():
        entry: dict[str, Any] = {
            "preset": recs[0]["preset"],
            "variant": recs[0]["variant"],
            "overrides": recs[0]["overrides"],
            "seeds": [r["seed"] for r in recs],
            "params": recs[0]["params"],
            "params_non_embedding": recs[0]["params_non_embedding"],
            "tokens": recs[0]["tokens"],
            "val_loss": _mean_std([r["val_loss"] for r in recs]),
            "tokens_per_s": _mean_std([r["tokens_per_s"] for r in recs if r["tokens_per_s"]]),
            "concurrent_runs": max(r.get("concurrent_runs", 1) for r in recs),
            "device": recs[0]["device"],
        }
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
                        n: statistics.fmean(r["evals"]["needle"][i]["by_length"][n] for r in recs)
                        for n in row["by_length"]
                    },
                }
                for i, row in enumerate(recs[0]["evals"]["needle"])
            ]
        if all("attention" in r["evals"] for r in recs):
            entry["attention"] = {
                key: _mean_std([statistics.fmean(row[key] for row in r["evals"]["attention"]["rows"]) for r in recs])
                for key in ("answer", "noise")
            }
        summary["groups"][group] = entry
    baseline = exp.summary.get("baseline")
    if baseline in summary["groups"]:
        ref = summary["groups"][baseline]["val_loss"]["mean"]
        for entry in summary["groups"].values():
            entry["delta_vs_baseline"] = entry["val_loss"]["mean"] - ref
    if exp.summary.get("scaling"):
        from shareddiff.eval.scaling import plot_scaling, scaling_eval

        run_dirs = [Path(r["dir"]) for r in records]
        references = exp.summary.get("references", ["standard", "diff"])
        summary["scaling"] = scaling_eval(run_dirs, references[0])
        for reference in references[1:]:
            summary["scaling"]["match"] += scaling_eval(run_dirs, reference)["match"]
        summary["scaling"]["match_by_size"] = _match_by_size(
            summary["scaling"]["match"], summary["scaling"]["variants"]
        )
        plot_scaling(summary["scaling"], folder / "scaling.png", f"{exp.name}: loss vs parameters and tokens")
    _plot_curves(exp, folder, groups)
    if any("needle" in e for e in summary["groups"].values()):
        _plot_needle(summary, folder / "needle.png")
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    (folder / "summary.md").write_text(_summary_markdown(exp, summary, baseline))
    return folder / "summary.md"


def _match_by_size(match: list[dict], variants: dict) -> list[dict]:
    """The matching rows averaged over the seeds of each reference size (loss and parameter fraction);
    ``extrapolated`` when the parameters needed lie outside the sizes the variant was trained at."""
    cells: dict[tuple, list[dict]] = {}
    for row in match:
        cells.setdefault((row["reference"], row["reference_params"], row["variant"]), []).append(row)
    out = []
    for (reference, params, variant), rows in cells.items():
        row = {"reference": reference, "reference_params": params, "variant": variant, "runs": len(rows)}
        row["loss"] = statistics.fmean(r["loss"] for r in rows)
        fractions = [r.get("params_needed_fraction") for r in rows]
        row["params_needed_fraction"] = None if None in fractions else statistics.fmean(fractions)
        row["params_note"] = next((r["params_note"] for r in rows if r.get("params_note")), None)
        if row["params_needed_fraction"] is not None:
            sizes = [r["params"] for r in variants[variant]["runs"]]
            needed = row["params_needed_fraction"] * params
            row["extrapolated"] = not min(sizes) <= needed <= max(sizes)
        out.append(row)
    return out


def _plot_curves(exp: Experiment, folder: Path, groups: dict[str, list[dict]]) -> None:
    from shareddiff.plots import plot_loss_curves
    from shareddiff.train.metrics import read_metrics

    curves = {}
    for group, recs in groups.items():
        per_run = [[r for r in read_metrics(rec["dir"]) if "val_loss" in r] for rec in recs]
        length = min(len(rows) for rows in per_run)
        curves[f"{group} (n={len(recs)})"] = [
            {"tokens": per_run[0][i]["tokens"], "val_loss": statistics.fmean(rows[i]["val_loss"] for rows in per_run)}
            for i in range(length)
        ]
    plot_loss_curves(curves, folder / "loss_curves.png", title=f"{exp.name}: validation loss (mean over seeds)")


def _plot_needle(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {g: e for g, e in summary["groups"].items() if "needle" in e}
    labels = [f"N={r['n_needles']}\nR={r['n_queries']}" for r in next(iter(groups.values()))["needle"]]
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(max(6, len(labels) * 1.1), 3.6), dpi=120)
    for i, (group, entry) in enumerate(groups.items()):
        xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, [r["accuracy"]["mean"] for r in entry["needle"]], width, label=group, color=f"C{i}")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (all lengths and depths)")
    ax.set_title(f"{summary['experiment']}: multi-needle retrieval")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(map(str, row)) + " |" for row in rows),
    ]


def _summary_markdown(exp: Experiment, summary: dict, baseline: str | None) -> str:
    groups = summary["groups"]
    with_delta = baseline in groups
    header = ["group", "preset", "overrides", "seeds", "params", "non-embedding", "tokens", "val loss", "tokens/s¹"]
    rows = [
        [
            group,
            e["preset"],
            " ".join(e["overrides"]) or "—",
            len(e["seeds"]),
            f"{e['params']:,}",
            f"{e['params_non_embedding']:,}",
            f"{e['tokens']:,}",
            _fmt(e["val_loss"]),
            f"{e['tokens_per_s']['mean']:,.0f}",
            *([f"{e['delta_vs_baseline']:+.4f}"] if with_delta else []),
        ]
        for group, e in groups.items()
    ]
    lines = [f"# {exp.name}", "", exp.description, "", *_md_table(header + [f"Δ vs {baseline}"] * with_delta, rows)]
    shared = max(e["concurrent_runs"] for e in groups.values())
    note = (
        f"; up to {shared} runs shared the GPU at a time, so these are not speed measurements." if shared > 1 else "."
    )
    lines += ["", "¹ training tokens/s of one run, median over its log windows" + note]
    if any("ar_hit_loss" in e for e in groups.values()):
        rows = [[g, _fmt(e["ar_hit_loss"]), _fmt(e["others_loss"])] for g, e in groups.items() if "ar_hit_loss" in e]
        lines += ["", *_md_table(["group", "AR-Hit loss", "Others loss"], rows)]
    needle_groups = {g: e for g, e in groups.items() if "needle" in e}
    if needle_groups:
        first = next(iter(needle_groups.values()))["needle"]
        cols = [f"N={r['n_needles']} R={r['n_queries']}" for r in first]
        rows = [[g, *(_fmt(r["accuracy"], 3) for r in e["needle"])] for g, e in needle_groups.items()]
        lines += ["", "Multi-needle accuracy (mean over lengths and depths):", "", *_md_table(["group", *cols], rows)]
        lengths = list(first[0]["by_length"])
        rows = [
            [g, *(f"{statistics.fmean(r['by_length'][n] for r in e['needle']):.3f}" for n in lengths)]
            for g, e in needle_groups.items()
        ]
        lines += ["", "By context length (mean over the N/R settings and depths):", ""]
        lines += _md_table(["group", *lengths], rows)
    if any("attention" in e for e in groups.values()):
        rows = [
            [g, _fmt(e["attention"]["answer"], 3), _fmt(e["attention"]["noise"], 3)]
            for g, e in groups.items()
            if "attention" in e
        ]
        lines += ["", *_md_table(["group", "attention on the answer", "attention on noise"], rows)]
    if "scaling" in summary:
        rows = []
        for m in sorted(summary["scaling"]["match_by_size"], key=lambda m: (m["reference"], m["reference_params"])):
            frac = m["params_needed_fraction"]
            needed = (m.get("params_note") or "n/a") if frac is None else f"{frac:.2f}"
            needed += " (extrapolated)" if m.get("extrapolated") else ""
            rows.append([m["reference"], f"{m['reference_params']:,}", f"{m['loss']:.4f}", m["variant"], needed])
        lines += [
            "",
            "Non-embedding parameters a variant needs to reach the reference's loss, as a multiple of the "
            "reference's (from the variant's loss-vs-parameters fit; below 1 = fewer parameters; mean over "
            "the reference's seeds):",
            "",
            *_md_table(["reference", "its non-emb. params", "its loss", "variant", "params needed (× ref)"], rows),
            "",
            "![scaling](scaling.png)",
        ]
    lines += ["", "![validation loss](loss_curves.png)"]
    if needle_groups:
        lines += ["", "![needle](needle.png)"]
    return "\n".join(lines) + "\n"


def reproduce(
    name: str,
    runs: list[str] | None = None,
    out: str = "results/repro",
    overrides: list[str] | None = None,
    keep_checkpoints: bool = False,
    jobs: int = 1,
    summary_only: bool = False,
    summary: bool = True,
    progress: bool = True,
) -> str:
    """Run (or resume) the experiment's runs, ``jobs`` at a time, then write its summary."""
    exp = load_experiment(name)
    out_path, overrides = Path(out), list(overrides or [])
    specs = [exp.run(r) for r in runs] if runs else exp.runs
    if not summary_only:
        for spec in specs:  # check every recipe before any training starts
            resolve_run(exp, spec, out_path, overrides)
        if jobs <= 1:
            for spec in specs:
                run_one(exp, spec, out_path, overrides, keep_checkpoints, progress)
        else:
            _run_parallel(exp, specs, out_path, overrides, keep_checkpoints, jobs)
    if not summary:
        return f"{len(specs)} run(s) of {exp.name} done under {out_path / exp.name}"
    return f"summary: {summarize(exp, out_path)}"


def _run_parallel(
    exp: Experiment, specs: list[RunSpec], out: Path, overrides: list[str], keep: bool, jobs: int
) -> None:
    """Each run in its own process, logging to RUN/reproduce.log. With several GPUs, each process gets one
    (CUDA_VISIBLE_DEVICES), ``jobs`` at a time; on one GPU the runs share it (for the 23m models on one
    H100, three at a time took 1.4x longer in all than one after another: docs/results.md)."""
    import queue

    import torch

    slots: queue.Queue[str | None] = queue.Queue()
    gpus = torch.cuda.device_count()
    for i in range(jobs):
        slots.put(str(i % gpus) if gpus > 1 else None)

    def launch(spec: RunSpec) -> tuple[str, int]:
        run_dir = out / exp.name / spec.name
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "shareddiff.cli",
            "reproduce",
            str(exp.path),
            "--run",
            spec.name,
            "--out",
            str(out),
        ]
        cmd += ["--no-progress", "--no-summary", *(["--keep-checkpoints"] if keep else []), *overrides]
        gpu = slots.get()
        env = {**os.environ, CONCURRENT_ENV: str(jobs if gpu is None else -(-jobs // gpus))}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        try:
            with (run_dir / "reproduce.log").open("a") as log:
                code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        finally:
            slots.put(gpu)
        outcome = "finished" if code == 0 else f"failed (exit {code}), see {run_dir}/reproduce.log"
        print(f"{exp.name}/{spec.name}: {outcome}")
        return spec.name, code

    with ThreadPoolExecutor(jobs) as pool:
        failed = [n for n, code in pool.map(launch, specs) if code != 0]
    if failed:
        raise ValueError(
            f"runs {failed} failed; see their reproduce.log, then run the same command again to resume them"
        )
