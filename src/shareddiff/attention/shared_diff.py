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

from shareddiff.attention.diff import DifferentialAttention
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


def _project_shared(module: DifferentialAttention, x: Tensor) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """X·W_Q, X·W_K, X·W_V and the four X·A (q1, q2, k1, k2), one GEMM when fused (either sharing)."""
    linears = (module.wq, module.wk, module.wv, *(getattr(module, f"{name}_a") for name in BRANCHES))
    q_base, k_base, v, *low = project_inputs(x, linears, module.fuse_projections)
    return q_base, k_base, v, low


class SharedDiffAttention(DifferentialAttention):
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

    def _branch(self, base: Tensor, xa: Tensor, name: str) -> Tensor:
        heads = self.n_heads if name[0] == "q" else self.n_kv_heads
        return (base + getattr(self, f"{name}_b")(xa)).unflatten(-1, (heads, self.head_dim))

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        b, n, _ = x.shape
        q_base, k_base, v, low = _project_shared(self, x)  # the bases computed once, shared by both branches
        q1, q2, k1, k2 = (
            self._branch(q_base if name[0] == "q" else k_base, xa, name) for name, xa in zip(BRANCHES, low, strict=True)
        )
        return q1, q2, k1, k2, v.view(b, n, self.n_kv_heads, 2 * self.head_dim)

    def effective_qk_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Dense (W_Q1, W_Q2, W_K1, W_K2) in ``X W`` orientation, (D, h·d); head i in columns [i·d, (i+1)·d).

        With GQA the key matrices are (D, h_kv·d).
        """
        out = []
        for name in BRANCHES:
            base = (self.wq if name[0] == "q" else self.wk).weight.t()
            a, b = getattr(self, f"{name}_a").weight.t(), getattr(self, f"{name}_b").weight.t()
            out.append(base + a @ b)
        return tuple(out)

    def reset_parameters(self, std: float | None, out_std: float | None) -> None:
        super().reset_parameters(std, out_std)
        init_weight(self.wq.weight, std)
        init_weight(self.wk.weight, std)
        for name in BRANCHES:
            a, b = getattr(self, f"{name}_a").weight, getattr(self, f"{name}_b").weight
            _init_lowrank(a, b, self.rank, std, self.lowrank_init)


class SharedDiffHeadsAttention(DifferentialAttention):
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

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        b, n, _ = x.shape
        q_base, k_base, v, low = _project_shared(self, x)  # bases: (B, N, d), shared by every head
        q1, q2, k1, k2 = (
            self._branch(q_base if name[0] == "q" else k_base, xa, name) for name, xa in zip(BRANCHES, low, strict=True)
        )
        return q1, q2, k1, k2, v.view(b, n, self.n_kv_heads, 2 * self.head_dim)

    def effective_qk_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Dense (W_Q1, W_Q2, W_K1, W_K2), (D, heads·d); head i's columns are W + A_i B_i."""
        out = []
        for name in BRANCHES:
            base = (self.wq if name[0] == "q" else self.wk).weight.t()  # (D, d)
            b_factors = getattr(self, f"{name}_b")  # (heads, r, d)
            a = getattr(self, f"{name}_a").weight.t().unflatten(-1, (b_factors.shape[0], self.rank))  # (D, heads, r)
            per_head = base.unsqueeze(1) + torch.einsum("Dhr,hrd->Dhd", a, b_factors)
            out.append(per_head.flatten(1))
        return tuple(out)

    def reset_parameters(self, std: float | None, out_std: float | None) -> None:
        super().reset_parameters(std, out_std)
        init_weight(self.wq.weight, std)
        init_weight(self.wk.weight, std)
        for name in BRANCHES:
            _init_lowrank(
                getattr(self, f"{name}_a").weight, getattr(self, f"{name}_b"), self.rank, std, self.lowrank_init
            )
