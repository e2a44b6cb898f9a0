"""Where attention goes (the paper's Table 5): normalised attention mass on the answer needle and on
the rest of the context, for the differential map A1 − λ·A2 (the softmax map for ``standard``).

For the last position of a needle prompt (the one that predicts the answer) in every layer and head,
with a = that row restricted to the context (question tokens excluded):
    answer = Σ_{j ∈ answer needle} a_j / Σ_j |a_j|        noise = Σ_{j ∉ answer needle} a_j / Σ_j |a_j|
averaged over heads, layers and samples. For a softmax map answer + noise = 1; a differential map
can put negative weight, so the two need not sum to 1.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from shareddiff.eval.needle import NeedleBuilder


@contextlib.contextmanager
def recording(model):
    """Collect every layer's attention map (eager path) during the forwards inside the block."""
    maps: list[torch.Tensor] = []
    attentions = [block.attention for block in model.layers]
    for att in attentions:
        att.recorder = maps
    try:
        yield maps
    finally:
        for att in attentions:
            att.recorder = None


def attention_mass(maps: list[torch.Tensor], row: int, answer: tuple[int, int], context_end: int) -> dict:
    """Normalised mass of query ``row`` on ``answer`` and on the rest of [0, context_end), averaged over
    layers and heads. ``maps``: one (h, N, N) map per layer."""
    answers, noises = [], []
    for layer_map in maps:
        rows = layer_map[:, row, :context_end].double()  # (h, context)
        norm = rows.abs().sum(-1).clamp_min(1e-30)
        on_answer = rows[:, answer[0] : answer[1]].sum(-1)
        answers.append((on_answer / norm).mean().item())
        noises.append(((rows.sum(-1) - on_answer) / norm).mean().item())
    return {"answer": float(np.mean(answers)), "noise": float(np.mean(noises))}


@torch.no_grad()
def attention_eval(
    model, builder: NeedleBuilder, length: int, depths: list[float], n_needles: int, samples: int, seed: int
) -> tuple[dict, dict]:
    """Per depth, mean answer / noise mass over ``samples`` needle prompts; also one example's maps."""
    from shareddiff.eval.common import check_context

    check_context(model, length, f"the attention probe at length {length}")
    device = next(model.parameters()).device
    rows, example = [], {}
    for depth in depths:
        rng = random.Random(f"attention-{seed}-{length}-{depth}-{n_needles}")
        masses = []
        for _ in range(samples):
            sample = builder.sample(length, n_needles, 1, depth, rng)
            question_len = len(builder.question_ids(sample.queries))
            with recording(model) as maps:
                model(torch.tensor([sample.ids], device=device))
            per_layer = [m[0].float().cpu() for m in maps]
            masses.append(
                attention_mass(per_layer, len(sample.ids) - 1, sample.answer_span(), len(sample.ids) - question_len)
            )
            if not example and depth == depths[len(depths) // 2]:
                example = {
                    "map": torch.stack(per_layer).mean(dim=(0, 1)),
                    "answer": sample.answer_span(),
                    "depth": depth,
                }
        rows.append(
            {
                "depth": depth,
                "answer": float(np.mean([m["answer"] for m in masses])),
                "noise": float(np.mean([m["noise"] for m in masses])),
                "samples": samples,
            }
        )
    return {"length": length, "n_needles": n_needles, "rows": rows}, example


def plot_example(example: dict, out, title: str) -> None:
    """The layer- and head-averaged map of one prompt, with the answer needle's columns marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
    data = example["map"].numpy()
    limit = np.abs(data).max() or 1.0
    im = ax.imshow(data, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    for x in example["answer"]:
        ax.axvline(x - 0.5, color="k", lw=0.6, ls="--")
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    ax.set_title(f"{title}\nanswer needle at {example['depth']:.0%} (between the dashed lines)", fontsize=9)
    bar = fig.colorbar(im, ax=ax, fraction=0.046)
    bar.set_label("attention weight, mean over layers and heads\n(A1 − λ·A2 for DIFF and Shared DIFF)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
