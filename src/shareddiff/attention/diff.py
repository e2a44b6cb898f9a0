"""DIFF attention (architecture §3), and the differential tail it shares with Shared DIFF.

The tail — RoPE, λ re-parameterisation, the op, per-head RMSNorm, ×(1 − λ_init), W_O — is
identical for both differential variants; they differ only in how Q1, Q2, K1, K2 are projected.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from shareddiff.config import ModelConfig
from shareddiff.layers import RMSNorm, apply_rope, init_weight, project_inputs
from shareddiff.ops import available_backends as differential_backends
from shareddiff.ops import differential_attention, eager_differential_attention

HEAD_NORM_EPS = 1e-5


class DiffAttentionBase(nn.Module):
    """The differential tail of DIFF and Shared DIFF (V1): subclasses implement ``project_qkv`` and name their
    Q/K parameters in ``qk_param_names``."""

    qk_param_names: tuple[str, ...] = ()  # the attributes that hold Q/K parameters (params.py counts them)

    available_backends = staticmethod(differential_backends)  # the names of differential_attention's registry

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        d, d_model = config.head_dim, config.d_model
        self.wv = nn.Linear(d_model, config.n_kv_heads * 2 * d, bias=False)
        self.wo = nn.Linear(d_model, d_model, bias=False)
        self.lambda_q1 = nn.Parameter(torch.empty(d))
        self.lambda_k1 = nn.Parameter(torch.empty(d))
        self.lambda_q2 = nn.Parameter(torch.empty(d))
        self.lambda_k2 = nn.Parameter(torch.empty(d))
        self.lambda_init = config.layer_lambda_init(layer_idx)
        self.head_norm = RMSNorm(2 * d, eps=HEAD_NORM_EPS, weight=config.head_norm_weight) if config.head_norm else None
        self.backend = "auto"
        self.fuse_projections = True  # one GEMM for every projection of X (project_inputs)
        self.recorder: list | None = None  # set to a list to collect (A1, A2) maps (eager, analysis only)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Q1, Q2: (B, N, h, d); K1, K2: (B, N, h_kv, d), before RoPE; V: (B, N, h_kv, 2d)."""
        raise NotImplementedError

    def lam(self) -> Tensor:
        """λ = exp(λ_q1·λ_k1) − exp(λ_q2·λ_k2) + λ_init, a scalar in float32 (float64 for a float64 model)."""
        dtype = torch.promote_types(self.lambda_q1.dtype, torch.float32)
        lam1 = torch.exp(torch.dot(self.lambda_q1.to(dtype), self.lambda_k1.to(dtype)))
        lam2 = torch.exp(torch.dot(self.lambda_q2.to(dtype), self.lambda_k2.to(dtype)))
        return lam1 - lam2 + self.lambda_init

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], cache=None, mask: Tensor | None = None) -> Tensor:
        b, n, _ = x.shape
        *qk, v = self.project_qkv(x)
        heads = [t.shape[2] for t in qk]
        rotated = apply_rope(torch.cat(qk, dim=2), *rope).transpose(1, 2)  # one rotation of all four: fewer ops
        q1, q2, k1, k2 = rotated.split(heads, dim=1)  # (B, h, N, d) twice, (B, h_kv, N, d) twice
        v = v.transpose(1, 2)  # (B, h_kv, N, 2d)
        if cache is not None:
            k1, k2, v = cache.update(self.layer_idx, k1, k2, v)
        if self.recorder is not None:
            lam = self.lam()
            out, a1, a2 = eager_differential_attention(
                q1, q2, k1, k2, v, lam, causal=mask is None, mask=mask, return_maps=True
            )
            self.recorder.append((a1.detach(), a2.detach()))  # each (B, h, N, N_k); the map is A1 − λ·A2
        else:
            out = differential_attention(
                q1, q2, k1, k2, v, self.lam(), causal=mask is None, backend=self.backend, mask=mask
            )
        if self.head_norm is not None:
            out = self.head_norm(out) * (1.0 - self.lambda_init)  # each head normalised on its own
        return self.wo(out.transpose(1, 2).reshape(b, n, -1))

    def reset_parameters(self, std: float | None, out_std: float | None) -> None:
        """Linear weights Normal(0, std²) (W_O: out_std), or PyTorch's default init where None; λ vectors
        N(0, 0.1²) as in the official DIFF code."""
        init_weight(self.wv.weight, std)
        init_weight(self.wo.weight, out_std)
        for p in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
            nn.init.normal_(p, mean=0.0, std=0.1)
        if self.head_norm is not None:
            self.head_norm.reset_parameters()


class DiffAttention(DiffAttentionBase):
    """DIFF Transformer: dense W_Q, W_K ∈ R^{D×D}; sub-heads 2i and 2i+1 are Q1_i and Q2_i (interleaved)."""

    qk_param_names = ("wq", "wk")

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        d_model = config.d_model
        self.wq = nn.Linear(d_model, d_model, bias=False)
        self.wk = nn.Linear(d_model, config.n_kv_heads * 2 * config.head_dim, bias=False)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        b, n, _ = x.shape
        q, k, v = project_inputs(x, (self.wq, self.wk, self.wv), self.fuse_projections)
        q = q.view(b, n, self.n_heads, 2, self.head_dim)  # (B, N, h, {Q1, Q2}, d)
        k = k.view(b, n, self.n_kv_heads, 2, self.head_dim)
        v = v.view(b, n, self.n_kv_heads, 2 * self.head_dim)
        return q[..., 0, :], q[..., 1, :], k[..., 0, :], k[..., 1, :], v

    def reset_parameters(self, std: float | None, out_std: float | None) -> None:
        super().reset_parameters(std, out_std)
        init_weight(self.wq.weight, std)
        init_weight(self.wk.weight, std)
