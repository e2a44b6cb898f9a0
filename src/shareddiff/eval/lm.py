"""Validation loss and perplexity, split into "AR-Hit" and "Others" (the paper's Table 6).

AR-Hit (Zoology's associative-recall definition): the target token x[i] completes a bigram
(x[i-1], x[i]) that already occurred earlier in the same evaluation window, i.e. there is a j < i
with (x[j-1], x[j]) = (x[i-1], x[i]). Every other target token is "Others". The optional filter of
Zoology keeps only bigrams seen at most ``max_train_count`` times in the training split (rare bigrams
that the model cannot know by heart); off by default.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from shareddiff.precision import upcast


def ar_hit_mask(window: np.ndarray, rare: set[int] | None = None, vocab: int = 0) -> np.ndarray:
    """Boolean mask over the targets x[1:] of one window: True where (x[i-1], x[i]) was seen before."""
    seen: set[tuple[int, int]] = set()
    out = np.zeros(len(window) - 1, dtype=bool)
    for i in range(1, len(window)):
        bigram = (int(window[i - 1]), int(window[i]))
        if bigram in seen and (rare is None or bigram[0] * vocab + bigram[1] in rare):
            out[i - 1] = True
        seen.add(bigram)
    return out


def rare_bigrams(tokens: np.ndarray, vocab: int, max_train_count: int) -> set[int]:
    """Bigram codes (a·V + b) seen at most ``max_train_count`` times in ``tokens``."""
    codes = tokens[:-1].astype(np.int64) * vocab + tokens[1:].astype(np.int64)
    values, counts = np.unique(codes, return_counts=True)
    return set(values[counts <= max_train_count].tolist()) | {-1}


@torch.no_grad()
def lm_loss(model, windows: torch.Tensor, batch_size: int = 8, rare: set[int] | None = None) -> dict:
    """Loss over every target of ``windows`` (rows of seq_len + 1 tokens), with the AR-Hit / Others split."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    sums = {"all": 0.0, "ar_hit": 0.0, "others": 0.0}
    counts = {"all": 0, "ar_hit": 0, "others": 0}
    for i in range(0, len(windows), batch_size):
        rows = windows[i : i + batch_size]
        logits = model(rows[:, :-1].to(device))
        logits = upcast(logits)
        losses = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten().to(device), reduction="none")
        losses = losses.view(rows.shape[0], -1).cpu()
        masks = torch.from_numpy(np.stack([ar_hit_mask(r.numpy(), rare, vocab) for r in rows]))
        for name, mask in (("all", torch.ones_like(masks)), ("ar_hit", masks), ("others", ~masks)):
            sums[name] += losses[mask].sum().item()
            counts[name] += int(mask.sum())
    mean = {k: sums[k] / counts[k] if counts[k] else float("nan") for k in sums}
    return {
        "loss": mean["all"],
        "ppl": math.exp(min(mean["all"], 50)),
        "ar_hit_loss": mean["ar_hit"],
        "others_loss": mean["others"],
        "ar_hit_fraction": counts["ar_hit"] / max(counts["all"], 1),
        "tokens": counts["all"],
    }
