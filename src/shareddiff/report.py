"""``shareddiff report RUN_DIR...``: one markdown page with every run's curves and evaluation results."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from shareddiff.plots import plot_loss_curves, plot_mqar_curve
from shareddiff.train.metrics import read_metrics, summarize_metrics


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _eval_sections(run: Path, out_dir: Path) -> list[str]:
    folder = run / "eval"
    if not folder.is_dir():
        return []
    lines = []
    for path in sorted(folder.glob("*.json")):
        data = _load(path)
        if path.stem == "lm":
            lines += [
                f"**Language modelling** (`{path.name}`): loss {data['loss']:.4f}, ppl {data['ppl']:.2f}, "
                f"AR-Hit {data['ar_hit_loss']:.4f} ({data['ar_hit_fraction']:.1%} of tokens), "
                f"Others {data['others_loss']:.4f}.",
                "",
            ]
        elif path.stem.startswith("needle"):
            lines += [
                f"**Multi-needle retrieval** N={data['n_needles']}, R={data['n_queries']}, "
                f"{data['samples']} samples per cell: mean accuracy {data['accuracy']:.3f}.",
                "",
            ]
        elif path.stem == "attention":
            lines += [
                "**Attention mass** (answer / noise) by depth: "
                + ", ".join(f"{r['depth']:.0%} {r['answer']:.3f} / {r['noise']:.3f}" for r in data["rows"]),
                "",
            ]
        elif path.stem == "mqar":
            lines += [
                f"**MQAR evaluation** (`{path.name}`"
                + (f", the checkpoint of step {data['step']}" if data.get("step") is not None else "")
                + f", {data['pairs']} pairs, {data['samples']} sequences per length): "
                + ", ".join(f"N={r['seq_len']} accuracy {r['accuracy']:.3f}" for r in data["rows"]),
                "",
            ]
        elif path.stem == "icl":
            lines += [
                f"**Many-shot ICL** on {data['dataset']}: "
                + ", ".join(
                    f"k={r['shots']} {r['accuracy']:.3f} (std over orders "
                    f"{r['random_order']['std']:.3f} random, {r['class_alternating']['std']:.3f} "
                    "alternating)"
                    for r in data["rows"]
                ),
                "",
            ]
        png = path.with_suffix(".png") if path.with_suffix(".png").is_file() else None
        if path.stem == "attention" and (folder / "attention_map.png").is_file():
            png = folder / "attention_map.png"
        if png is not None:
            lines += [f"![{path.stem}]({os.path.relpath(png, out_dir)})", ""]
    return lines


def _kind(folder: Path) -> str:
    """ "run" (a training run folder) or "scaling" (a folder written by `eval scaling`)."""
    if (folder / "run_config.json").is_file():
        return "run"
    if (folder / "scaling.json").is_file():
        return "scaling"
    raise ValueError(
        f"{folder} is neither a training run folder (no run_config.json) nor an `eval scaling` folder (no scaling.json)"
    )


def build_report(run_dirs: list[str], out: str) -> Path:
    """``out`` (markdown) from training run folders and `eval scaling` folders, in the order given."""
    out_path = Path(out)
    out_dir = out_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# shareddiff report", ""]
    curves, table = {}, []
    folders = [Path(d) for d in run_dirs]
    kinds = {folder: _kind(folder) for folder in folders}
    for run in (f for f in folders if kinds[f] == "run"):
        config_file = run / "run_config.json"
        config = _load(config_file)["model_config"]
        rows = read_metrics(run)
        curves[run.name] = rows
        end = summarize_metrics(rows)
        val_loss = float("nan") if end.val_loss is None else end.val_loss
        table.append(
            f"| {run.name} | {config['attention']} | {config['d_model']} × {config['n_layers']} | "
            f"{end.tokens:,} | {val_loss:.4f} |"
        )
    if curves:
        png = plot_loss_curves(curves, out_dir / "report_loss_curves.png", title="Validation and training loss")
        lines += [
            "| run | attention | width × depth | tokens | validation loss |",
            "|---|---|---|---|---|",
            *table,
            "",
            f"![loss curves]({png.name})",
            "",
        ]
    for folder in folders:
        if kinds[folder] == "run":
            section = _mqar_section(folder, out_dir) + _eval_sections(folder, out_dir)
            if section:
                lines += [f"## {folder.name}", "", *section]
        else:
            lines += _scaling_section(folder, out_dir)
    out_path.write_text("\n".join(lines))
    return out_path


def _mqar_section(run: Path, out_dir: Path) -> list[str]:
    """An MQAR run's accuracy along training (at the training length N and 2N, with its plot), its steps to
    50 % and 99 %, and its early stop (docs/evaluation.md); nothing for a run of another data source or one
    not yet evaluated."""
    from shareddiff.eval.mqar import THRESHOLDS, mqar_run_record, steps_to

    saved, rows = _load(run / "run_config.json"), read_metrics(run)
    if saved.get("run", {}).get("data", {}).get("source") != "mqar" or not any("mqar_accuracy" in r for r in rows):
        return []
    record = mqar_run_record(run)
    n, stop = record["seq_len"], record["early_stop"]
    at_2x = "" if record["accuracy_2x"] is None else f", {record['accuracy_2x']:.3f} at 2N = {2 * n}"
    firsts = ", ".join(
        f"to {level:.0%}: "
        + (f"step {step}" if (step := steps_to(record["curve"], level)) is not None else "not reached")
        for level in THRESHOLDS
    )
    if stop:
        end = f"Stopped early at step {stop['step']} of {stop['max_steps']}: {stop['reason']}."
    else:
        end = f"No early stop: trained to step {rows[-1]['step']} of {saved['run']['train']['max_steps']}."
    png = plot_mqar_curve(rows, out_dir / f"{run.name}_mqar.png", f"MQAR accuracy, {run.name}", stop and stop["step"])
    return [
        f"**MQAR** (N = {n}, {record['pairs']} pairs): accuracy {record['accuracy']:.3f} at N{at_2x}, at step "
        f"{record['steps']}; steps {firsts}. {end}",
        "",
        f"![MQAR accuracy]({png.name})",
        "",
    ]


def _scaling_section(folder: Path, out_dir: Path) -> list[str]:
    """The fits and matches of an `eval scaling` folder, with its plot copied beside the report."""
    data = _load(folder / "scaling.json")
    lines = [f"## Scaling ({folder.name})", ""]
    for variant, entry in sorted(data["variants"].items()):
        sizes = len({r["params"] for r in entry["runs"]})
        fit = entry.get("params_fit")
        how = (
            f"loss = {fit['a']:.3g}·N^(−{fit['b']:.3f}) + {fit['c']:.3f}"
            if fit
            else f"no fit ({sizes} size(s); a power law with offset needs 3)"
        )
        lines.append(f"- {variant}: {len(entry['runs'])} run(s), {how}")
    for m in data["match"]:
        fraction = m.get("params_needed_fraction")
        text = f"{fraction:.2f}× its parameters" if fraction is not None else m.get("params_note", "n/a")
        lines.append(f"- {m['variant']} vs {m['reference']} at {m['reference_params']:,} parameters: {text}")
    lines += [*(f"- warning: {w}" for w in data.get("warnings", [])), ""]
    png = folder / "scaling.png"
    if png.is_file():
        shutil.copy(png, out_dir / f"{folder.name}_scaling.png")
        lines += [f"![scaling]({folder.name}_scaling.png)", ""]
    return lines
