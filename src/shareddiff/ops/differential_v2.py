"""DIFF V2's op: one softmax attention over 2h query heads, then each pair of heads subtracted.

    O = softmax(q kᵀ/√d + mask) v                      2h query heads, h_kv key/value heads (GQA)
    out_i = O_{2i} − λ_i ⊙ O_{2i+1}                    λ: one value per head and query token

Query heads 2i and 2i+1 lie in one GQA group (h_kv divides h), so they read the same key/value head;
this is the layout of microsoft/unilm ``Diff-Transformer-V2/multihead_flashdiffv2.py`` (its README
calls subtracting heads of different groups "wrong"). The attention itself is the standard one, so
every backend of ``softmax_attention`` serves it with a single call.
"""

from __future__ import annotations

from torch import Tensor

from shareddiff.ops.softmax import eager_softmax_attention, softmax_attention


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, lam: Tensor) -> None:
    if q.dim() != 4 or q.shape[1] % 2:
        raise ValueError(f"q must be (B, 2h, N, d) with an even number of query heads, got {tuple(q.shape)}")
    b, q_heads, n, d = q.shape
    if k.dim() != 4 or k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"k and v must both be (B, h_kv, N_k, d) with d = {d}; got {tuple(k.shape)}, {tuple(v.shape)}")
    if (q_heads // 2) % k.shape[1]:
        raise ValueError(
            f"key/value heads {k.shape[1]} must divide the {q_heads // 2} head pairs, so that both query heads "
            "of a pair share one key/value head (GQA)"
        )
    if lam.shape != (b, q_heads // 2, n):
        raise ValueError(f"lam must be (B, h, N) = {(b, q_heads // 2, n)}, got {tuple(lam.shape)}")


def _pair_difference(x: Tensor, lam: Tensor) -> Tensor:
    """x: (B, 2h, N, ·) → x[:, 2i] − λ_i ⊙ x[:, 2i+1]: (B, h, N, ·); lam: (B, h, N)."""
    pairs = x.unflatten(1, (-1, 2))  # (B, h, 2, N, ·)
    return pairs[:, :, 0] - lam.unsqueeze(-1).to(x.dtype) * pairs[:, :, 1]


def differential_v2_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lam: Tensor,
    causal: bool = True,
    backend: str = "auto",
    mask: Tensor | None = None,
) -> Tensor:
    """DIFF V2 attention. q: (B, 2h, N, d), pairs (2i, 2i+1); k, v: (B, h_kv, N_k, d) with h_kv dividing h;
    lam: (B, h, N), the weight of each pair's second head (DIFF V2: sigmoid(X W_λ)). Returns (B, h, N, d).

    With ``N < N_k`` (decoding with a cache) the queries are the last N positions. ``backend`` and
    ``mask`` (padded batches: bool (B or 1, 1, N, N_k) or additive, replacing the causal mask, so ``causal=False``)
    as for ``softmax_attention`` ("auto", "eager" or "sdpa"). Raises ``ValueError`` on shapes that do
    not fit and on any other backend name.
    """
    _check_shapes(q, k, v, lam)
    return _pair_difference(softmax_attention(q, k, v, causal, backend, mask), lam)


def eager_differential_v2_attention(
    q: Tensor, k: Tensor, v: Tensor, lam: Tensor, causal: bool = True, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Reference path returning ``(out, M)`` with the differential maps M_i = A_{2i} − λ_i ⊙ A_{2i+1}:
    (B, h, N, N_k) in the maps' float32 (float64 for float64 inputs), λ applied per query row."""
    out, first, second = eager_differential_v2_pair_maps(q, k, v, lam, causal, mask)
    return out, first - lam.unsqueeze(-1).to(first.dtype) * second


def eager_differential_v2_pair_maps(
    q: Tensor, k: Tensor, v: Tensor, lam: Tensor, causal: bool = True, mask: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Reference path returning ``(out, A_first, A_second)``: the output and each pair's two softmax maps
    A_{2i}, A_{2i+1} (B, h, N, N_k), whose difference A_{2i} − λ_i ⊙ A_{2i+1} (λ per query row) is the head's
    map (``eager_differential_v2_attention``). For the attention-mass analysis (eval ``attention``)."""
    _check_shapes(q, k, v, lam)
    out, maps = eager_softmax_attention(q, k, v, causal, mask)
    return _pair_difference(out, lam), maps[:, 0::2], maps[:, 1::2]
