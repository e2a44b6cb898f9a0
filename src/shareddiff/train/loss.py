"""The training loss: next-token cross-entropy, optionally weighted per target token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from shareddiff.data.loader import IGNORE
from shareddiff.precision import upcast


def token_loss(logits: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the targets that are not ``IGNORE``; with ``weights`` the weighted mean
    Σ_t w_t·ℓ_t / Σ_t w_t over those targets (the convention of ``F.cross_entropy``'s class weights), so
    weights of 1 give the plain mean and a weight W on a token counts it W times.

    ``logits``: (B, T, V), any float dtype (computed in float32; float64 logits in float64); ``targets``: (B, T)
    int64; ``weights``: (B, T) non-negative, or None. NaN when no target carries weight (no check here: that
    would cost a device sync per micro-batch; the trainer's divergence check reports it).
    """
    flat_logits = upcast(logits).flatten(0, 1)
    flat_targets = targets.flatten()
    if weights is None:
        return F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE)
    losses = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE, reduction="none")
    w = torch.where(flat_targets == IGNORE, 0.0, weights.flatten().to(losses))
    return (losses * w).sum() / w.sum()


def target_positions(targets: Tensor, count: int) -> Tensor:
    """(B, count) int64: positions of each row of ``targets`` (B, T) that hold a target (not ``IGNORE``), for
    rows with exactly ``count`` of them (MQAR: ``MQARConfig.n_queries()``, ``data.mqar.mqar_batch``), in no
    particular order. ``token_loss(model(x, logits_at=p), targets.gather(1, p))`` with ``p`` these positions
    equals ``token_loss(model(x), targets)`` (same terms, same mean) without the (B, T, vocab) logits that
    dominate a small model's step. A row with fewer targets gets some ``IGNORE`` positions, which
    ``token_loss`` skips, so the loss stays right; a row with more loses some (not checked: that would cost
    a host sync per step). No host sync: the top-``count`` of the 0/1 target mask."""
    return (targets != IGNORE).to(torch.float32).topk(count, dim=1, sorted=False).indices
