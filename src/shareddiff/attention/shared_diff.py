"""Shared DIFF attention (architecture §4): one shared base Q/K projection plus low-rank updates.

    Q1 = X (W_Q + A_Q1 B_Q1)    Q2 = X (W_Q + A_Q2 B_Q2)    (K likewise)

``W_Q + A B`` is never materialised: ``X W_Q`` is computed once and both branches add their
``(X A) B``; by default one GEMM computes X·[W_Q | W_K | W_V | A_Q1 | A_Q2 | A_K1 | A_K2] and the four
rank-r expansions follow. Everything after the projections is the differential tail of ``diff.py``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from shareddiff.attention.diff import DiffAttentionBase
from shareddiff.config import ModelConfig
from shareddiff.layers import init_weight, project_inputs

BRANCHES = ("q1", "q2", "k1", "k2")


def _init_lowrank(a: Tensor, b: Tensor, rank: int, std: float | None, mode: str) -> None:
    """A ~ N(0, std²); B ~ N(0, 1/(3r)) ("random") or B = 0 ("lora"). With ``std`` None (PyTorch's
    default init) A is Kaiming-uniform and a random B ~ U(±1/√r), the default of a Linear of fan-in r.

    "random" gives the update ≈ 0.58× the base product's spread, the ratio PyTorch's default
    Linear init gives (architecture §4, Initialisation), so the two branches differ from step 0.
    """
    init_weight(a, std)
    if mode == "lora":
        nn.init.zeros_(b)
    elif std is None:
        nn.init.uniform_(b, -(rank**-0.5), rank**-0.5)
    else:
        nn.init.normal_(b, std=1.0 / math.sqrt(3 * rank))


def lowrank_param_names(branches: tuple[str, ...]) -> tuple[str, ...]:
    """The attributes of the low-rank factors of ``branches``: q1_a, q1_b, q2_a, ..."""
    return tuple(f"{name}_{factor}" for name in branches for factor in "ab")


class SharedLowRankProjection:
    """The shared-base-plus-low-rank projection of Shared DIFF (§4) and Shared DIFF V2, one implementation.

    Branch ``b`` (q1, q2 and, in V1, k1, k2) projects ``X W + (X A_b) B_b``; ``X W`` is computed once for
    every branch that shares the base (W_Q for q1, q2; W_K for k1, k2) and, with ``fuse_projections``, one
    GEMM computes X·[the host's dense linears | every A_b]. The host module holds ``wq``, ``wk``,
    ``{b}_a`` (nn.Linear) and ``{b}_b``, and overrides ``_branch`` where B_b is not one Linear.
    """

    branches: tuple[str, ...] = BRANCHES

    def project_shared(self, x: Tensor, dense: tuple[nn.Linear, ...]) -> tuple[list[Tensor], list[Tensor]]:
        """(X·L for each L of ``dense``, which starts with W_Q, W_K; every branch's projection (B, N, heads, d)
        in ``branches`` order, the bases computed once)."""
        factors = tuple(getattr(self, f"{name}_a") for name in self.branches)
        outs = project_inputs(x, (*dense, *factors), self.fuse_projections)
        projected, low = outs[: len(dense)], outs[len(dense) :]
        bases = {"q": projected[0], "k": projected[1]}
        return projected, [self._branch(bases[name[0]], xa, name) for name, xa in zip(self.branches, low, strict=True)]

    def _branch(self, base: Tensor, xa: Tensor, name: str) -> Tensor:
        """X·W + (X·A)·B of branch ``name`` as (B, N, heads, d), with B an nn.Linear over all heads."""
        heads = self.n_heads if name[0] == "q" else self.n_kv_heads
        return (base + getattr(self, f"{name}_b")(xa)).unflatten(-1, (heads, self.head_dim))


class SharedDiffBase(SharedLowRankProjection, DiffAttentionBase):
    """Shared DIFF (V1) with either sharing: Q1, Q2, K1, K2 from the shared bases W_Q, W_K; the subclasses
    lay out the low-rank factors."""

    qk_param_names = ("wq", "wk", *lowrank_param_names(BRANCHES))

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        b, n, _ = x.shape
        (_, _, v), (q1, q2, k1, k2) = self.project_shared(x, (self.wq, self.wk, self.wv))
        return q1, q2, k1, k2, v.view(b, n, self.n_kv_heads, 2 * self.head_dim)

    def reset_parameters(self, std: float | None, out_std: float | None) -> None:
        super().reset_parameters(std, out_std)
        init_weight(self.wq.weight, std)
        init_weight(self.wk.weight, std)
        for name in self.branches:
            b_factor = getattr(self, f"{name}_b")
            b_factor = b_factor.weight if isinstance(b_factor, nn.Linear) else b_factor
            _init_lowrank(getattr(self, f"{name}_a").weight, b_factor, self.rank, std, self.lowrank_init)


class SharedDiffAttention(SharedDiffBase):
    """ "branches" sharing (default): W_Q, W_K cover all heads; A ∈ R^{D×r}, B ∈ R^{r×h·d} per branch."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        d_model, r = config.d_model, config.lowrank_rank
        q_dim, kv_dim = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
        self.rank, self.lowrank_init = r, config.lowrank_init
        self.wq = nn.Linear(d_model, q_dim, bias=False)  # shared base W_Q (stored as its transpose)
        self.wk = nn.Linear(d_model, kv_dim, bias=False)
        for name in BRANCHES:
            out_dim = q_dim if name[0] == "q" else kv_dim
            setattr(self, f"{name}_a", nn.Linear(d_model, r, bias=False))  # A: X → rank r
            setattr(self, f"{name}_b", nn.Linear(r, out_dim, bias=False))  # B: rank r → columns

    def effective_qk_weights(self, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Dense (W_Q1, W_Q2, W_K1, W_K2) in ``X W`` orientation, (D, h·d); head i in columns [i·d, (i+1)·d);
        computed in ``dtype`` (default: the parameters').

        With GQA the key matrices are (D, h_kv·d).
        """
        out = []
        for name in BRANCHES:
            base = (self.wq if name[0] == "q" else self.wk).weight.t().to(dtype)
            a, b = getattr(self, f"{name}_a").weight.t().to(dtype), getattr(self, f"{name}_b").weight.t().to(dtype)
            out.append(base + a @ b)
        return tuple(out)


class SharedDiffHeadsAttention(SharedDiffBase):
    """ "heads" sharing (alternative reading): one base W_Q, W_K ∈ R^{D×d} used by every head, and
    per-head factors A_i ∈ R^{D×r_h}, B_i ∈ R^{r_h×d} for each branch."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        d_model, d, r = config.d_model, config.head_dim, config.lowrank_rank
        self.rank, self.lowrank_init = r, config.lowrank_init
        self.wq = nn.Linear(d_model, d, bias=False)
        self.wk = nn.Linear(d_model, d, bias=False)
        for name in BRANCHES:
            heads = self.n_heads if name[0] == "q" else self.n_kv_heads
            setattr(self, f"{name}_a", nn.Linear(d_model, heads * r, bias=False))  # all heads' A_i at once
            setattr(self, f"{name}_b", nn.Parameter(torch.empty(heads, r, d)))  # B_i stacked: (heads, r, d)

    def _branch(self, base: Tensor, xa: Tensor, name: str) -> Tensor:
        b_factors = getattr(self, f"{name}_b")
        low = xa.unflatten(-1, (b_factors.shape[0], self.rank))  # (B, N, heads, r)
        return base.unsqueeze(2) + torch.einsum("bnhr,hrd->bnhd", low, b_factors.to(low.dtype))

    def effective_qk_weights(self, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Dense (W_Q1, W_Q2, W_K1, W_K2), (D, heads·d); head i's columns are W + A_i B_i; computed in ``dtype``
        (default: the parameters')."""
        out = []
        for name in BRANCHES:
            base = (self.wq if name[0] == "q" else self.wk).weight.t().to(dtype)  # (D, d)
            b_factors = getattr(self, f"{name}_b").to(dtype)  # (heads, r, d)
            a = getattr(self, f"{name}_a").weight.t().to(dtype)
            a = a.unflatten(-1, (b_factors.shape[0], self.rank))  # (D, heads, r)
            per_head = base.unsqueeze(1) + torch.einsum("Dhr,hrd->Dhd", a, b_factors)
            out.append(per_head.flatten(1))
        return tuple(out)
