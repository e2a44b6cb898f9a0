"""DIFF attention (architecture §3), and the differential tail it shares with Shared DIFF.

The tail — RoPE, λ re-parameterisation, the op, per-head RMSNorm, ×(1 − λ_init), W_O — is
identical for both differential variants; they differ only in how Q1, Q2, K1, K2 are projected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shareddiff.config import ModelConfig
from shareddiff.layers import RMSNorm, apply_rope, fused_rms_norm, init_weight, project_inputs
from shareddiff.ops import available_backends as differential_backends
from shareddiff.ops import differential_attention, eager_differential_attention
from shareddiff.precision import compute_dtype

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
        dtype = compute_dtype(self.lambda_q1.dtype)
        lam1 = torch.exp(torch.dot(self.lambda_q1.to(dtype), self.lambda_k1.to(dtype)))
        lam2 = torch.exp(torch.dot(self.lambda_q2.to(dtype), self.lambda_k2.to(dtype)))
        return lam1 - lam2 + self.lambda_init

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], cache=None, mask: Tensor | None = None) -> Tensor:
        b, n, _ = x.shape
        h, h_kv, d = self.n_heads, self.n_kv_heads, self.head_dim
        fused = cache.fused_weights(self.layer_idx) if cache is not None else None
        if fused is None:
            *qk, v = self.project_qkv(x)
            qk, lam = torch.cat(qk, dim=2), self.lam()  # (B, N, 2h + 2h_kv, d): Q1, Q2, K1, K2 heads
        else:  # decoding with the weights merged once (fused_weights): one GEMM, Q1, Q2, K1, K2 already side by side
            qkv, lam = F.linear(x, fused["projections"]), fused["lam"]
            kernel = cache.decode_attention() if n == 1 and mask is not None and self.recorder is None else None
            if kernel is not None:  # a decode step's whole tail in one kernel (ops/triton_decode): it rotates Q1,
                # Q2, K1, K2, writes the new keys and values to the cache, attends and applies the head norm
                eps = None if self.head_norm is None else HEAD_NORM_EPS
                out = kernel(qkv, *cache.buffers(self.layer_idx), lam, mask, cache.write_at, fused["head_norm"], eps,
                             rope=rope, counters=cache.split_counters)  # fmt: skip
                return self.wo(out.transpose(1, 2).reshape(b, n, -1))  # out: (B, h, 1, 2d)
            qk, v = qkv.split([2 * (h + h_kv) * d, 2 * h_kv * d], dim=-1)
            qk, v = qk.unflatten(-1, (-1, d)), v.unflatten(-1, (h_kv, 2 * d))
        v = v.transpose(1, 2)  # (B, h_kv, N, 2d)
        rotated = apply_rope(qk, *rope).transpose(1, 2)  # one rotation of all four: fewer ops
        q1, q2, k1, k2 = rotated.split([h, h, h_kv, h_kv], dim=1)  # (B, h, N, d) twice, (B, h_kv, N, d) twice
        if cache is not None and fused is None:
            k1, k2, v = cache.update(self.layer_idx, k1, k2, v)
        elif cache is not None:  # K1 and K2 in one buffer (B, 2h_kv, N_k, d): one write per step
            k, v = cache.update(self.layer_idx, rotated[:, 2 * h :], v)
            k1, k2 = k.chunk(2, dim=1)
        if self.recorder is not None:
            out, a1, a2 = eager_differential_attention(
                q1, q2, k1, k2, v, lam, causal=mask is None, mask=mask, return_maps=True
            )
            self.recorder.append((a1.detach(), a2.detach()))  # each (B, h, N, N_k); the map is A1 − λ·A2
        else:
            out = differential_attention(q1, q2, k1, k2, v, lam, causal=mask is None, backend=self.backend, mask=mask)
        if self.head_norm is not None and fused is None:
            out = self.head_norm(out) * (1.0 - self.lambda_init)  # each head normalised on its own
        elif self.head_norm is not None:  # the same, its weight × (1 − λ_init) merged once: one kernel on CUDA
            out = fused_rms_norm(out, fused["head_norm"], HEAD_NORM_EPS)
        return self.wo(out.transpose(1, 2).reshape(b, n, -1))

    def fused_weights(self) -> dict[str, Tensor]:
        """The weights a ``StaticDecoder`` merges once. "projections": [W_Q1; W_Q2; W_K1; W_K2; W_V] (out, D), one
        GEMM whose output holds Q1, Q2, K1, K2 (heads in order) and V; the query/key maps are the dense ones of
        ``effective_qk_weights`` (Shared DIFF: W + A·B, the inference-time merge of low-rank adapters), computed in
        float32 (float64 for float64 parameters) and rounded once to the parameters' dtype. "lam": λ, a scalar in
        the parameters' dtype (the SDPA backend rounds it so anyway). "head_norm": the per-head RMSNorm's weight ×
        (1 − λ_init) (2d,), or None without a head norm. New tensors: later changes to the parameters do not reach
        them."""
        dtype = self.wv.weight.dtype
        wide = compute_dtype(dtype)
        qk = [w.t() for w in self.effective_qk_weights(wide)]
        projections = torch.cat([*qk, self.wv.weight.to(wide)]).to(dtype)
        head_norm = None
        if self.head_norm is not None:
            weight = self.head_norm.weight
            weight = weight if weight is not None else self.wv.weight.new_ones(2 * self.head_dim)
            head_norm = (weight.to(wide) * (1.0 - self.lambda_init)).to(dtype)
        return {"projections": projections, "lam": self.lam().detach().to(dtype), "head_norm": head_norm}

    def effective_qk_weights(self, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Dense (W_Q1, W_Q2, W_K1, W_K2) in ``X W`` orientation, (D, h·d) and (D, h_kv·d); head i in columns
        [i·d, (i+1)·d); computed in ``dtype`` (default: the parameters')."""
        raise NotImplementedError

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

    def effective_qk_weights(self, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """W_Q's and W_K's sub-heads 2i and 2i+1 taken apart: (W_Q1, W_Q2, W_K1, W_K2), (D, h·d) and (D, h_kv·d)."""
        d = self.head_dim
        q = self.wq.weight.t().unflatten(1, (self.n_heads, 2, d))  # (D, h, {Q1, Q2}, d)
        k = self.wk.weight.t().unflatten(1, (self.n_kv_heads, 2, d))
        maps = q[:, :, 0].flatten(1), q[:, :, 1].flatten(1), k[:, :, 0].flatten(1), k[:, :, 1].flatten(1)
        return tuple(m.to(dtype) for m in maps)

    def reset_parameters(self, std: float | None, out_std: float | None) -> None:
        super().reset_parameters(std, out_std)
        init_weight(self.wq.weight, std)
        init_weight(self.wk.weight, std)
