"""Shared DIFF V2 attention (docs/architecture.md, `shared_diff_v2`): DIFF V2 with the pair's query projections
built from one shared base plus low-rank updates, as Shared DIFF builds its branches.

    Q1 = X (W_Q + A1 B1)    Q2 = X (W_Q + A2 B2)    W_Q ∈ R^{D×h·d}, A ∈ R^{D×r}, B ∈ R^{r×h·d}

Keys, values, λ and the tail are DIFF V2's. ``X W_Q`` is computed once for both queries; by default
one GEMM computes X·[W_Q | W_K | W_V | W_λ | A1 | A2] and the two rank-r expansions follow
(``shared_diff.SharedLowRankProjection``, the projection both Shared DIFF versions share).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from shareddiff.attention.diff_v2 import PairedDifferentialAttention
from shareddiff.attention.shared_diff import SharedLowRankProjection, _init_lowrank, lowrank_param_names
from shareddiff.config import ModelConfig
from shareddiff.layers import init_weight


class SharedDiffV2Attention(SharedLowRankProjection, PairedDifferentialAttention):
    """Shared W_Q for both query heads of every pair, low-rank updates A1 B1 and A2 B2 per pair member
    (``SharedLowRankProjection``, as Shared DIFF builds its branches)."""

    branches = ("q1", "q2")
    qk_param_names = ("wq", "wk", *lowrank_param_names(branches))

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        d_model, r, q_dim = config.d_model, config.lowrank_rank, config.n_heads * config.head_dim
        self.rank, self.lowrank_init = r, config.lowrank_init
        self.wq = nn.Linear(d_model, q_dim, bias=False)  # shared base W_Q (stored as its transpose)
        self.q1_a = nn.Linear(d_model, r, bias=False)  # A1: X → rank r
        self.q1_b = nn.Linear(r, q_dim, bias=False)  # B1: rank r → columns
        self.q2_a = nn.Linear(d_model, r, bias=False)
        self.q2_b = nn.Linear(r, q_dim, bias=False)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b, n, _ = x.shape
        (_, k, v, lam_logits), (q1, q2) = self.project_shared(x, (self.wq, self.wk, self.wv, self.lambda_proj))
        heads = (b, n, -1, self.head_dim)
        q = torch.stack((q1, q2), dim=3).flatten(2, 3)  # (B, N, 2h, d): Q1_0, Q2_0, Q1_1, Q2_1, ...
        return q, k.view(heads), v.view(heads), lam_logits

    def effective_query_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        """The dense DIFF V2 query matrix (D, 2h·d) in ``X W`` orientation: head 2i's columns are
        (W_Q + A1 B1)'s head i, head 2i+1's (W_Q + A2 B2)'s; computed in ``dtype`` (default: the parameters')."""
        base = self.wq.weight.t().to(dtype)
        w1 = base + self.q1_a.weight.t().to(dtype) @ self.q1_b.weight.t().to(dtype)
        w2 = base + self.q2_a.weight.t().to(dtype) @ self.q2_b.weight.t().to(dtype)
        d = self.head_dim
        return torch.stack((w1.unflatten(1, (-1, d)), w2.unflatten(1, (-1, d))), dim=2).flatten(1)

    def dense_query_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        return self.effective_query_weight(dtype).t()

    def reset_parameters(self, std: float | None, out_std: float | None) -> None:
        super().reset_parameters(std, out_std)
        init_weight(self.wq.weight, std)
        _init_lowrank(self.q1_a.weight, self.q1_b.weight, self.rank, std, self.lowrank_init)
        _init_lowrank(self.q2_a.weight, self.q2_b.weight, self.rank, std, self.lowrank_init)
