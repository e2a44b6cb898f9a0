"""DIFF V2 attention (docs/architecture.md, `diff_v2`; unilm `Diff-Transformer-V2/multihead_flashdiffv2.py`).

    Q = X W_Q ∈ R^{N×2h·d}: query heads 2i, 2i+1 are the pair of output head i; K, V = X W_K, X W_V
    O = causal softmax attention of the 2h query heads over h_kv key/value heads (one call, GQA ratio)
    out_i = O_{2i} − sigmoid(X W_λ)_i ⊙ O_{2i+1}        λ per token and head, W_λ ∈ R^{D×h}
    out = concat_i(out_i) W_O                            W_O ∈ R^{h·d×D}

No per-head norm, no λ_init, value heads of dim d. The tail after the projections is shared with
Shared DIFF V2, which only changes how the 2h query heads are projected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shareddiff.config import ModelConfig
from shareddiff.layers import apply_rope, init_weight, project_inputs
from shareddiff.ops import differential_v2_attention, eager_differential_v2_pair_maps, softmax_backends
from shareddiff.precision import compute_dtype


class PairedDifferentialAttention(nn.Module):
    """Base of the V2 variants; subclasses implement ``project``."""

    available_backends = staticmethod(softmax_backends)  # the backend names its op runs (softmax attention)
    qk_param_names: tuple[str, ...] = ("wk",)  # the attributes that hold Q/K parameters; subclasses add theirs

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        d_model, kv_dim = config.d_model, config.n_kv_heads * config.head_dim
        self.wk = nn.Linear(d_model, kv_dim, bias=False)
        self.wv = nn.Linear(d_model, kv_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, d_model, bias=False)
        self.lambda_proj = nn.Linear(d_model, config.n_heads, bias=False)  # W_λ: X → one λ logit per head
        self.backend = "auto"
        self.fuse_projections = True  # one GEMM for every projection of X (project_inputs)
        self.recorder: list | None = None  # set to a list to collect (A_2i, A_2i+1, λ) (eager, analysis only)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Q: (B, N, 2h, d), pairs (2i, 2i+1); K, V: (B, N, h_kv, d); λ logits X·W_λ: (B, N, h)."""
        raise NotImplementedError

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], cache=None, mask: Tensor | None = None) -> Tensor:
        b, n, _ = x.shape
        h, h_kv, d = self.n_heads, self.n_kv_heads, self.head_dim
        fused = cache.fused_weights(self.layer_idx) if cache is not None else None
        if fused is None:
            q, k, v, lam_logits = self.project(x)
            qk = torch.cat([q, k], dim=2)  # (B, N, 2h + h_kv, d)
        else:  # decoding with [W_Q; W_K; W_V; W_λ] merged once (fused_weights): one GEMM, Q and K already side by side
            qk, v, lam_logits = F.linear(x, fused["projections"]).split([(2 * h + h_kv) * d, h_kv * d, h], dim=-1)
            qk, v = qk.unflatten(-1, (-1, d)), v.unflatten(-1, (h_kv, d))
        rotated = apply_rope(qk, *rope).transpose(1, 2)  # one rotation of both: fewer ops
        q, k = rotated.split([2 * h, h_kv], dim=1)  # (B, 2h, N, d), (B, h_kv, N, d)
        v = v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        compute = compute_dtype(lam_logits.dtype)  # float32, or float64 for a float64 model
        lam = torch.sigmoid(lam_logits.to(compute)).transpose(1, 2)  # (B, h, N)
        if self.recorder is not None:
            out, first, second = eager_differential_v2_pair_maps(q, k, v, lam, causal=mask is None, mask=mask)
            self.recorder.append((first.detach(), second.detach(), lam.detach()))  # maps (B, h, N, N_k); λ (B, h, N)
        else:
            out = differential_v2_attention(q, k, v, lam, mask is None, self.backend, mask)  # (B, h, N, d)
        return self.wo(out.transpose(1, 2).reshape(b, n, -1))

    def dense_query_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        """The dense W_Q (2h·d, D) in ``nn.Linear`` orientation, query heads 2i and 2i+1 the pair of head i;
        computed in ``dtype`` (default: the parameters')."""
        raise NotImplementedError

    def fused_weights(self) -> dict[str, Tensor]:
        """The weights a ``StaticDecoder`` merges once: "projections" [W_Q; W_K; W_V; W_λ] (out, D), one GEMM whose
        output holds the 2h query heads, K, V and the λ logits; W_Q is ``dense_query_weight`` (Shared DIFF V2: W +
        A·B merged), computed in float32 (float64 for float64 parameters) and rounded once. A new tensor: later
        changes to the parameters do not reach it."""
        dtype = self.wk.weight.dtype
        wide = compute_dtype(dtype)
        rest = (self.wk.weight, self.wv.weight, self.lambda_proj.weight)
        return {"projections": torch.cat([self.dense_query_weight(wide), *(w.to(wide) for w in rest)]).to(dtype)}

    def reset_parameters(self, std: float | None, out_std: float | None) -> None:
        """Linear weights Normal(0, std²) (W_O: out_std), or PyTorch's default init where None (W_λ too:
        the reference code leaves it at that default)."""
        for lin in (self.wk, self.wv, self.lambda_proj):
            init_weight(lin.weight, std)
        init_weight(self.wo.weight, out_std)


class DiffV2Attention(PairedDifferentialAttention):
    """DIFF V2: one dense W_Q ∈ R^{D×2h·d} whose query heads 2i and 2i+1 are Q1_i and Q2_i (interleaved)."""

    qk_param_names = ("wq", "wk")

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.wq = nn.Linear(config.d_model, 2 * config.n_heads * config.head_dim, bias=False)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b, n, _ = x.shape
        q, k, v, lam_logits = project_inputs(x, (self.wq, self.wk, self.wv, self.lambda_proj), self.fuse_projections)
        heads = (b, n, -1, self.head_dim)
        return q.view(heads), k.view(heads), v.view(heads), lam_logits

    def dense_query_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        return self.wq.weight.to(dtype)

    def reset_parameters(self, std: float | None, out_std: float | None) -> None:
        super().reset_parameters(std, out_std)
        init_weight(self.wq.weight, std)
