"""``differential_attention``: the op every backend implements (architecture §6).

    out = softmax(q1 k1ᵀ/√d + mask) v − λ · softmax(q2 k2ᵀ/√d + mask) v

Backends live in a small registry (name → function with one signature) so that a fused kernel joins
by registering itself; ``"auto"`` picks the best one available for the inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from shareddiff.ops.common import apply_mask, causal_mask, check_mask, expand_kv
from shareddiff.precision import compute_dtype

Backend = Callable[..., Tensor]
_BACKENDS: dict[str, Backend] = {}
_AUTO_PREFERENCE: list[tuple[str, Callable[[Tensor], bool]]] = []


def register_backend(name: str, auto_when: Callable[[Tensor], bool] | None = None):
    """Register ``fn(q1, q2, k1, k2, v, lam, causal, mask) -> out`` under ``name`` (the arguments of
    ``differential_attention``; a backend without mask support raises ``ValueError`` when given one).

    ``auto_when(q1)`` says whether ``"auto"`` may pick it for these inputs; later registrations with
    a predicate are preferred over earlier ones.
    """

    def wrap(fn: Backend) -> Backend:
        _BACKENDS[name] = fn
        if auto_when is not None:
            _AUTO_PREFERENCE.insert(0, (name, auto_when))
        return fn

    return wrap


def available_backends() -> list[str]:
    return ["auto", *_BACKENDS]


def resolve_backend(backend: str, q: Tensor, mask: Tensor | None = None) -> str:
    """The concrete backend name ``backend`` stands for on inputs like ``q``; with a ``mask`` (padded
    batches) ``"auto"`` means SDPA, since the fused kernels take none."""
    if backend == "auto":
        if mask is not None:
            return "sdpa"
        return next((name for name, ok in _AUTO_PREFERENCE if ok(q)), "sdpa")
    if backend not in _BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r} (backend); use one of {available_backends()}")
    return backend


def _check_shapes(q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, v: Tensor) -> None:
    if q1.dim() != 4:
        raise ValueError(f"q1 must be (B, h, N, d), got shape {tuple(q1.shape)}")
    b, h, n, d = q1.shape
    if q2.shape != q1.shape:
        raise ValueError(f"q2 shape {tuple(q2.shape)} differs from q1 shape {tuple(q1.shape)}")
    if k1.shape != k2.shape or k1.dim() != 4 or k1.shape[0] != b or k1.shape[3] != d:
        raise ValueError(
            f"k1/k2 must both be (B, h_kv, N_k, d) = (B, h_kv, N_k, {d}); got {tuple(k1.shape)} and {tuple(k2.shape)}"
        )
    h_kv, n_k = k1.shape[1], k1.shape[2]
    if h % h_kv:
        raise ValueError(f"key/value heads {h_kv} must divide query heads {h} (GQA)")
    if v.shape != (b, h_kv, n_k, 2 * d):
        raise ValueError(f"v must be (B, h_kv, N_k, 2d) = {(b, h_kv, n_k, 2 * d)}, got {tuple(v.shape)}")
    if n_k < n:
        raise ValueError(f"fewer keys ({n_k}) than queries ({n}): queries are the last N of the keys")


def _lam_view(lam: Tensor | float, h: int, like: Tensor) -> Tensor | float:
    """λ as a scalar or broadcastable to (B, h, N, 2d)."""
    if isinstance(lam, Tensor):
        if lam.dim() == 0:
            return lam.to(like.dtype)
        if lam.shape != (h,):
            raise ValueError(f"lam must be a scalar or of shape (h,) = ({h},), got {tuple(lam.shape)}")
        return lam.to(like.dtype).view(1, h, 1, 1)
    return float(lam)


def differential_attention(
    q1: Tensor,
    q2: Tensor,
    k1: Tensor,
    k2: Tensor,
    v: Tensor,
    lam: Tensor | float,
    causal: bool = True,
    backend: str = "auto",
    mask: Tensor | None = None,
) -> Tensor:
    """Differential attention (architecture §6): ``softmax(q1k1ᵀ/√d)v − λ·softmax(q2k2ᵀ/√d)v``.

    q1, q2: (B, h, N, d); k1, k2: (B, h_kv, N_k, d); v: (B, h_kv, N_k, 2d); λ: scalar or (h,).
    With ``N < N_k`` (decoding with a cache) the queries are the last N positions. ``mask`` (padded
    batches): bool, (B or 1, h or 1, N, N_k), True where a query may attend a key, or additive in q1's dtype
    (0 there, −inf elsewhere); it replaces the causal mask (``causal`` must then be False, as in
    ``F.scaled_dot_product_attention``), must hold causality itself, and must leave every query at least one
    key (see ``shareddiff.padding``). Returns (B, h, N, 2d).
    Raises ``ValueError`` on inconsistent shapes, and from backends that take no mask ("triton").
    """
    _check_shapes(q1, q2, k1, k2, v)
    check_mask(mask, causal, q1, k1.shape[2])
    return _BACKENDS[resolve_backend(backend, q1, mask)](q1, q2, k1, k2, v, lam, causal, mask)


@register_backend("eager")
def eager_differential_attention(q1, q2, k1, k2, v, lam, causal=True, mask=None, return_maps=False):
    """Reference: both attention maps materialised, softmax in float32 (float64 for float64 inputs:
    ``precision.compute_dtype``).

    With ``return_maps=True`` returns ``(out, A1, A2)``, the maps of shape (B, h, N, N_k) in that dtype,
    for analysis (the differential map is ``A1 − λ·A2``).
    """
    h, d = q1.shape[1], q1.shape[-1]
    compute = compute_dtype(q1.dtype)
    k1, k2, v = (expand_kv(t, h) for t in (k1, k2, v))
    scale = 1.0 / math.sqrt(d)
    if causal:
        mask = causal_mask(q1.shape[2], k1.shape[2], q1.device)

    def attention_map(q: Tensor, k: Tensor) -> Tensor:
        scores = (q.to(compute) @ k.to(compute).transpose(-1, -2)) * scale  # (B, h, N, N_k)
        if mask is not None:
            scores = apply_mask(scores, mask)
        return scores.softmax(dim=-1)

    a1, a2 = attention_map(q1, k1), attention_map(q2, k2)
    lam_f = _lam_view(lam, h, a1)
    out = ((a1 - lam_f * a2) @ v.to(compute)).to(v.dtype)
    return (out, a1, a2) if return_maps else out


@register_backend("sdpa")
def sdpa_differential_attention(q1, q2, k1, k2, v, lam, causal=True, mask=None):
    """Two calls to PyTorch's fused scaled-dot-product attention: memory O(N), no N×N tensor.

    On the CPU the fused (flash) kernel needs equal q/k and v widths, so q and k are zero-padded from
    d to 2d (scores unchanged, scale kept at 1/√d); elsewhere the memory-efficient kernel takes
    v of width 2d as it is. A cache decode step (N = 1) needs no mask; other N < N_k use an explicit
    (N, N_k) mask; a given ``mask`` (padding) is passed on as SDPA's ``attn_mask``.
    """
    h, n, n_k, d = q1.shape[1], q1.shape[2], k1.shape[2], q1.shape[3]
    k1, k2, v = (expand_kv(t, h) for t in (k1, k2, v))
    if q1.device.type == "cpu":
        q1, q2, k1, k2 = (F.pad(t, (0, d)) for t in (q1, q2, k1, k2))
    is_causal = causal
    if causal and n != n_k:
        is_causal = False
        mask = None if n == 1 else causal_mask(n, n_k, q1.device)
    scale = 1.0 / math.sqrt(d)
    o1 = F.scaled_dot_product_attention(q1, k1, v, attn_mask=mask, is_causal=is_causal, scale=scale)
    o2 = F.scaled_dot_product_attention(q2, k2, v, attn_mask=mask, is_causal=is_causal, scale=scale)
    return o1 - _lam_view(lam, h, o2) * o2
