"""Plain causal softmax attention (the Transformer baseline, and DIFF V2 underneath): "eager" and SDPA backends."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from shareddiff.ops.backends import check_backend, softmax_backends
from shareddiff.ops.common import apply_mask, causal_mask, check_mask, expand_kv
from shareddiff.precision import compute_dtype


def softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = True, backend: str = "auto", mask: Tensor | None = None
) -> Tensor:
    """softmax(q kᵀ/√d + mask) v. q: (B, h, N, d); k, v: (B, h_kv, N_k, ·); queries are the last N keys.

    ``mask``: as in ``differential_attention`` (bool (B or 1, h or 1, N, N_k), True where allowed, or additive
    in q's dtype; it replaces the causal mask, so ``causal`` must be False). ``backend``: "eager" materialises
    the map (softmax in float32, float64 for float64 inputs); "sdpa" and "auto" call
    ``F.scaled_dot_product_attention``. Raises ``ValueError`` for any other name ("triton" is the fused kernel
    of ``differential_attention`` only) and for a bad mask.
    """
    check_backend(backend, softmax_backends(), "backend", "softmax_attention (standard, diff_v2, shared_diff_v2)")
    check_mask(mask, causal, q, k.shape[2])
    if backend == "eager":
        return eager_softmax_attention(q, k, v, causal, mask)[0]
    h, n, n_k = q.shape[1], q.shape[2], k.shape[2]
    k, v = expand_kv(k, h), expand_kv(v, h)
    is_causal = causal
    if causal and n != n_k:
        is_causal = False
        mask = None if n == 1 else causal_mask(n, n_k, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


def eager_softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = True, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Reference path returning ``(out, A)`` with the attention map A: (B, h, N, N_k) in float32 (float64 for
    float64 inputs: ``precision.compute_dtype``)."""
    h = q.shape[1]
    k, v = expand_kv(k, h), expand_kv(v, h)
    compute = compute_dtype(q.dtype)
    scores = (q.to(compute) @ k.to(compute).transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        mask = causal_mask(q.shape[2], k.shape[2], q.device)
    if mask is not None:
        scores = apply_mask(scores, mask)
    attn = scores.softmax(dim=-1)
    return (attn @ v.to(compute)).to(v.dtype), attn
