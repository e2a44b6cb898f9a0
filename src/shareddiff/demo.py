"""The main job: train a tiny Shared DIFF model on the bundled corpus, compare it with the same-size
Transformer trained the same way, sample from it, and write ``report.md`` with a loss-curve PNG."""

from __future__ import annotations

import logging
import math
import platform
from pathlib import Path

import torch

from shareddiff.config import load_recipe
from shareddiff.generation import generate
from shareddiff.params import count_parameters
from shareddiff.plots import plot_loss_curves
from shareddiff.train import ScheduleChanged, load_model, train
from shareddiff.train.metrics import read_metrics, summarize_metrics

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PROMPTS = ["The ", "def ", "In Python, "]
VARIANTS = {"shared_diff": "Shared DIFF", "transformer": "Transformer"}
log = logging.getLogger(__name__)


def find_recipe(name: str) -> Path:
    for folder in (Path("configs"), REPO_CONFIGS):
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"recipe configs/{name} not found; run the demo from the repository root")


def _train_seconds(rows: list[dict]) -> float:
    """Training time from the metrics: each log window's tokens over its tokens/s, summed (validation pauses
    excluded). From the records, so a demo that reuses finished runs reports the time they took."""
    total, before = 0.0, 0
    for r in rows:
        if "loss" in r and r.get("tokens_per_s"):
            total += (r["tokens"] - before) / r["tokens_per_s"]
            before = r["tokens"]
    return total


def _overall_tokens_per_s(rows: list[dict]) -> float:
    """The whole run's training speed: the tokens of the timed log windows over their seconds (``_train_seconds``),
    which weights each window by its length; NaN without a timed window."""
    timed = [r["tokens"] for r in rows if "loss" in r and r.get("tokens_per_s")]
    seconds = _train_seconds(rows)
    return timed[-1] / seconds if timed and seconds > 0 else float("nan")


def _summary(label: str, rows: list[dict], run) -> dict:
    end = summarize_metrics(rows)
    counts = count_parameters(run.model_config(vocab_size=None))
    return {
        "label": label,
        "val_loss": float("nan") if end.val_loss is None else end.val_loss,
        "tokens": end.tokens,
        "tokens_per_s": float("nan") if end.tokens_per_s is None else end.tokens_per_s,
        "params": counts.total,
        "params_non_embedding": counts.non_embedding,
        "seconds": _train_seconds(rows),
        "overall_tokens_per_s": _overall_tokens_per_s(rows),
    }


def run_demo(out: str = "runs/demo", steps: int | None = None, baseline: str = "train", progress: bool = True) -> str:
    if baseline not in ("train", "none"):
        raise ValueError(f"baseline={baseline!r}; use 'train' (the Transformer too) or 'none' (Shared DIFF alone)")
    recipe = find_recipe("demo.toml")
    out_dir = Path(out)
    curves: dict[str, list[dict]] = {}
    summaries = []
    families = ["shared_diff", "transformer"] if baseline == "train" else ["shared_diff"]
    for family in families:
        overrides = [f"train.out_dir={out_dir / family}"] + ([f"train.max_steps={steps}"] if steps else [])
        run = load_recipe(str(recipe), f"{family}-mini", overrides)
        finished = _finished_step(run)
        if finished is None:
            log.info("== training %s (%s-mini) for %d steps", VARIANTS[family], family, run.train.max_steps)
        else:
            log.info(
                "== %s (%s-mini): reusing the finished run in %s (step %d); nothing to train (delete that folder "
                "or give --out another one to train again)",
                VARIANTS[family],
                family,
                run.train.out_dir,
                finished,
            )
        try:
            train(run, resume="if_present", progress=progress)
        except ScheduleChanged as err:
            raise ValueError(
                f"{run.train.out_dir} holds a demo run trained with other settings ({'; '.join(err.changes)}); "
                f"give --out another folder, or delete {run.train.out_dir} to train it again"
            ) from None
        rows = read_metrics(run.train.out_dir)
        curves[VARIANTS[family]] = rows
        summaries.append(_summary(VARIANTS[family], rows, run))
    cached_note = (
        "The same-size Transformer was not trained (`--baseline none`); run `shareddiff demo` to compare."
        if baseline == "none"
        else ""
    )

    model, tokenizer, _ = load_model(out_dir / "shared_diff")
    gen = torch.Generator().manual_seed(0)
    samples = []
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt)])
        new = generate(model, ids, 60, temperature=0.8, top_k=40, eos_id=tokenizer.eos_id, generator=gen)
        samples.append(prompt + tokenizer.decode([t for t in new[0, ids.shape[1] :].tolist() if t != tokenizer.eos_id]))

    png = plot_loss_curves(curves, out_dir / "loss_curve.png", title="Demo: bundled Python docs, 4K BPE")
    report = _report(summaries, samples, png.name, cached_note, recipe)
    (out_dir / "report.md").write_text(report)
    lines = [
        f"{s['label']:<34} val loss {s['val_loss']:.4f} (ppl {math.exp(s['val_loss']):.1f}), "
        f"{s['params']:,} params, {s['tokens_per_s']:,.0f} tok/s"
        for s in summaries
    ]
    return "\n".join(
        ["== result", *lines, "== samples (Shared DIFF)", *samples, f"== report: {out_dir / 'report.md'} and {png}"]
    )


def _finished_step(run) -> int | None:
    """The step of the run's newest checkpoint when it already finished this recipe's ``train.max_steps`` (the demo
    then reuses it), else None (nothing there, a run cut short, or one of other settings: ``train`` decides)."""
    from shareddiff.train.checkpoint import latest_checkpoint, read_state

    out_dir = Path(run.train.out_dir)
    ckpt = latest_checkpoint(out_dir) if out_dir.is_dir() else None
    if ckpt is None:
        return None
    state = read_state(ckpt)
    planned = state.get("run", {}).get("train", {}).get("max_steps")
    return state["step"] if planned == run.train.max_steps and state["step"] >= planned else None


def _comparison(summaries: list[dict]) -> str:
    if len(summaries) < 2:
        return ""
    ours, base = summaries[0], summaries[1]
    delta = ours["val_loss"] - base["val_loss"]
    word = "below" if delta < 0 else "above"
    return (
        f"Shared DIFF ends {abs(delta):.3f} nats/token {word} the Transformer. This demo shows the pipeline "
        f"working on {ours['tokens']:,} tokens; it is no evidence for or against the paper's claims, which "
        "concern models of 0.8–13B parameters trained on billions of tokens."
    )


def _report(summaries: list[dict], samples: list[str], png: str, cached_note: str, recipe: Path) -> str:
    def seconds(s: dict) -> str:
        return f"{s['seconds']:.0f}"

    rows = "\n".join(
        f"| {s['label']} | {s['params']:,} | {s['params_non_embedding']:,} | {s['val_loss']:.4f} | "
        f"{math.exp(s['val_loss']):.1f} | {s['tokens']:,} | {s['tokens_per_s']:,.0f} | "
        f"{s['overall_tokens_per_s']:,.0f} | {seconds(s)} |"
        for s in summaries
    )
    sample_text = "\n\n".join(f"```\n{s}\n```" for s in samples)
    return f"""# shareddiff demo

Tiny models trained on the bundled corpus (Python 3.11 documentation) with the recipe
`{recipe}`: same data, steps, optimizer and seed for every variant. Device: CPU
({platform.processor() or platform.machine()}), torch {torch.__version__}.

| model | parameters | non-embedding | validation loss | perplexity | tokens | tokens/s² | mean tok/s³ | training s¹ |
|---|---|---|---|---|---|---|---|---|
{rows}

¹ summed over the log windows (each window's tokens ÷ its tokens/s); validation and checkpoint pauses excluded.
² the median over the log windows of each window's tokens ÷ its training seconds: the steady speed, unmoved by
a slow window (the first one's warm-up, a busy machine), so it is not tokens ÷ training s.
³ the tokens of the logged windows ÷ training s¹: the whole run's mean speed, slow windows included.

{cached_note}

{_comparison(summaries)}

![loss curves]({png})

## Samples from the Shared DIFF model (temperature 0.8, top-k 40)

{sample_text}
"""
