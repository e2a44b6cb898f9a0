"""The training loss: next-token cross-entropy, optionally weighted per target token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from shareddiff.data.loader import IGNORE


def token_loss(logits: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the targets that are not ``IGNORE``; with ``weights`` the weighted mean
    Σ_t w_t·ℓ_t / Σ_t w_t over those targets (the convention of ``F.cross_entropy``'s class weights), so
    weights of 1 give the plain mean and a weight W on a token counts it W times.

    ``logits``: (B, T, V), any float dtype (computed in float32); ``targets``: (B, T) int64;
    ``weights``: (B, T) non-negative, or None. NaN when no target carries weight (no check here: that
    would cost a device sync per micro-batch; the trainer's divergence check reports it).
    """
    flat_logits, flat_targets = logits.float().flatten(0, 1), targets.flatten()
    if weights is None:
        return F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE)
    losses = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE, reduction="none")
    w = torch.where(flat_targets == IGNORE, 0.0, weights.flatten().to(losses))
    return (losses * w).sum() / w.sum()
