"""What both attention ops (``softmax_attention``, ``differential_attention``) share: the causal mask,
the check of a given mask, and the GQA expansion of key/value heads."""

from __future__ import annotations

import torch
from torch import Tensor


def check_mask(mask: Tensor | None, causal: bool, q: Tensor, n_k: int) -> None:
    """Raises ``ValueError`` unless ``mask`` is None or a mask broadcastable to (B, h, N, N_k) given with
    ``causal=False`` (a mask replaces the causal mask and must hold causality itself): bool, True where a query
    may attend a key, or additive in the queries' dtype, 0 there and −inf elsewhere (``F.scaled_dot_product_attention``
    takes both; an additive mask made once spares every call the conversion)."""
    if mask is None:
        return
    if causal:
        raise ValueError("give either causal=True or a mask (which must then hold causality itself), not both")
    b, h, n = q.shape[:3]
    dtype_ok = mask.dtype in (torch.bool, q.dtype)
    if not dtype_ok or mask.dim() != 4 or mask.shape[0] not in (1, b) or mask.shape[1] not in (1, h):
        raise ValueError(
            f"mask must be a bool tensor, or an additive one of the queries' dtype {q.dtype}, broadcastable to "
            f"(B, h, N, N_k) = {(b, h, n, n_k)}; got {mask.dtype} of shape {tuple(mask.shape)}"
        )
    if mask.shape[2:] != (n, n_k):
        raise ValueError(f"mask's last two dims must be (N, N_k) = {(n, n_k)}, got {tuple(mask.shape[2:])}")


def expand_kv(x: Tensor, h: int) -> Tensor:
    """Repeat each of the h_kv key/value heads h / h_kv times (GQA) → (B, h, N, ·)."""
    rep = h // x.shape[1]
    return x if rep == 1 else x.repeat_interleave(rep, dim=1)


def causal_mask(n_q: int, n_k: int, device: torch.device) -> Tensor:
    """Boolean (n_q, n_k) mask, True where allowed; queries are the last ``n_q`` of ``n_k`` positions."""
    rows = torch.arange(n_q, device=device)[:, None] + (n_k - n_q)
    return torch.arange(n_k, device=device)[None, :] <= rows


def apply_mask(scores: Tensor, mask: Tensor) -> Tensor:
    """``scores`` with ``mask`` applied: −inf where a bool mask is False, or the additive mask added."""
    return scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
