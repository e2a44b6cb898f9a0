"""Where attention goes (the paper's Table 5): the attention mass of the position that predicts the
answer, split into three buckets that partition its row: the answer needle, the rest of the context
(noise) and the question tokens.

For a needle prompt the last position's row a_j, j ∈ [0, N), of every layer and head is read from the
eager path: the softmax map for ``standard``, A = A1 − λ·A2 for the differential variants. Normalised
by the row's absolute mass S = Σ_j |a_j|:
    answer = Σ_{j ∈ answer needle} a_j / S      noise = Σ_{j ∈ context, ∉ answer} a_j / S
    question = Σ_{j ∈ question} a_j / S         answer + noise + question = Σ_j a_j / S (1 for softmax)
averaged over heads, layers and samples. Per layer, the same sums without normalisation for A1 and A2
on their own (softmax maps: each sums to 1 over the row) and for A1 − λ·A2 (which sums to 1 − λ),
and λ itself: the net context mass (answer + noise) of a layer is (1 − λ) − (its net question mass), so
a negative one comes from λ > 1, from net weight on the question tokens, or both.

The V2 variants (DIFF V2, Shared DIFF V2) subtract head 2i+1's softmax map from head 2i's with a λ of each
head and query token: A = A_2i − λ_i(t)·A_2i+1. Their A1 and A2 are A_2i and A_2i+1, and the layer's λ is
λ_i(t) at the predicting row, averaged over heads (and samples): still in (0, 1), and the net row sums to 1 − λ.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from shareddiff.data.needle import NeedleBuilder

BUCKETS = ("answer", "noise", "question")


@contextlib.contextmanager
def recording(model):
    """Collect every layer's attention maps (eager path) during the forwards inside the block: one tuple
    per layer and forward, (A1, A2) for DIFF and Shared DIFF, (A_2i, A_2i+1, λ) for the V2 variants (λ of
    each head and query, (B, h, N)), (softmax map,) for ``standard``; maps (B, h, N, N_k)."""
    maps: list[tuple[Tensor, ...]] = []
    attentions = [block.attention for block in model.layers]
    for att in attentions:
        att.recorder = maps
    try:
        yield maps
    finally:
        for att in attentions:
            att.recorder = None


def bucket_sums(rows: Tensor, answer: tuple[int, int], context_end: int) -> Tensor:
    """(…, 3): the sums of ``rows`` (…, N_k) over the answer span, the rest of [0, context_end) and
    [context_end, N_k) (the question)."""
    on_answer = rows[..., answer[0] : answer[1]].sum(-1)
    context = rows[..., :context_end].sum(-1)
    return torch.stack([on_answer, context - on_answer, rows[..., context_end:].sum(-1)], dim=-1)


def attention_mass(
    layers: list[tuple[Tensor, ...]], lambdas: list[float | None], row: int, answer: tuple[int, int], context_end: int
) -> dict:
    """The three buckets of query ``row`` (keys [0, row]), averaged over layers and heads, and per layer.

    ``layers``: per layer (A1, A2) with its λ (DIFF, Shared DIFF), (A_2i, A_2i+1, λ (h, N)) with λ None (the V2
    variants: λ per head and query, read at ``row``) or (A,) with λ None (softmax), each map (h, N, N);
    ``answer``: the answer needle's token span; ``context_end``: where the question starts.
    Returns {"answer", "noise", "question", "total", "layers": [...]}, see the module docstring; a V2 layer's
    "lambda" is its λ at ``row`` averaged over heads.
    """
    normalised, per_layer = [], []
    for maps, lam in zip(layers, lambdas, strict=True):
        rows = [m[:, row, : row + 1].double() for m in maps[:2]] + [m[:, row].double() for m in maps[2:]]  # (h, ·)
        net = _net_map(rows, lam)  # (h, keys)
        if len(maps) == 3:  # V2: λ of each head at this query, averaged over heads
            lam = float(rows[2].mean())
        norm = net.abs().sum(-1, keepdim=True).clamp_min(1e-30)
        normalised.append(bucket_sums(net / norm, answer, context_end).mean(0))  # (3,) over heads
        layer = {"lambda": lam, "net": _named(bucket_sums(net, answer, context_end).mean(0))}
        if lam is not None:
            layer["a1"] = _named(bucket_sums(rows[0], answer, context_end).mean(0))
            layer["a2"] = _named(bucket_sums(rows[1], answer, context_end).mean(0))
        per_layer.append(layer)
    mean = torch.stack(normalised).mean(0)
    return {**_named(mean), "total": float(mean.sum()), "layers": per_layer}


def _net_map(maps: Sequence[Tensor], lam: float | None) -> Tensor:
    """A layer's head maps (h, N, N_k), or one query's rows (h, N_k), from its recorded tuple (see ``recording``;
    V2's λ (h, N) or (h,) to match): A, A1 − λ·A2, or V2's A_2i − λ_i(t)·A_2i+1 with λ of each head and query."""
    if len(maps) == 3:
        return maps[0] - maps[2][..., None] * maps[1]
    return maps[0] if lam is None else maps[0] - lam * maps[1]


def _named(sums: Tensor) -> dict[str, float]:
    return {name: float(value) for name, value in zip(BUCKETS, sums.tolist(), strict=True)}


def _mean_layers(samples: list[list[dict]]) -> list[dict]:
    """Per layer, the mean over samples of every number of ``attention_mass``'s layer records."""
    out = []
    for records in zip(*samples, strict=True):
        lams = [r["lambda"] for r in records]  # DIFF's λ does not depend on the input; V2's does (its mean)
        layer = {"lambda": lams[0] if lams[0] is None or len(set(lams)) == 1 else float(np.mean(lams))}
        for part in ("net", "a1", "a2"):
            if part in records[0]:
                layer[part] = {b: float(np.mean([r[part][b] for r in records])) for b in BUCKETS}
        out.append(layer)
    return out


@torch.no_grad()
def attention_eval(
    model, builder: NeedleBuilder, length: int, depths: list[float], n_needles: int, samples: int, seed: int
) -> tuple[dict, dict]:
    """Per depth, the mean bucket masses over ``samples`` needle prompts (and per layer: λ, and the
    unnormalised masses of A1, A2 and the net map); also one example's map for the plot."""
    from shareddiff.eval.common import check_context
    from shareddiff.train.trainer import layer_lambdas

    check_context(model, length, f"the attention probe at length {length}")
    device = next(model.parameters()).device
    lambdas = layer_lambdas(model) or [None] * len(model.layers)  # None: softmax attention has no λ
    rows, example = [], {}
    for depth in depths:
        rng = random.Random(f"attention-{seed}-{length}-{depth}-{n_needles}")
        masses = []
        for _ in range(samples):
            sample = builder.sample(length, n_needles, 1, depth, rng)
            question_len = len(builder.question_ids(sample.queries))
            with recording(model) as maps:
                model(torch.tensor([sample.ids], device=device))
            per_layer = [tuple(m[0].cpu() for m in layer) for layer in maps]  # float32; float64 for a float64 model
            masses.append(
                attention_mass(
                    per_layer, lambdas, len(sample.ids) - 1, sample.answer_span(), len(sample.ids) - question_len
                )
            )
            if not example and depth == depths[len(depths) // 2]:
                nets = [_net_map(m, lam) for m, lam in zip(per_layer, lambdas, strict=True)]
                example = {"map": torch.stack(nets).mean(dim=(0, 1)), "answer": sample.answer_span(), "depth": depth}
        rows.append(
            {
                "depth": depth,
                **{key: float(np.mean([m[key] for m in masses])) for key in (*BUCKETS, "total")},
                "layers": _mean_layers([m["layers"] for m in masses]),
                "samples": samples,
            }
        )
    return {"length": length, "n_needles": n_needles, "lambdas": lambdas, "rows": rows}, example
