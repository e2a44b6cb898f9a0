"""Standard causal softmax attention: the LLaMA-style "Transformer" baseline (architecture §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shareddiff.config import ModelConfig
from shareddiff.layers import apply_rope, init_weight, project_inputs
from shareddiff.ops import eager_softmax_attention, softmax_attention, softmax_backends


class StandardAttention(nn.Module):
    """Multi-head (optionally grouped-query) attention with head dim D / n_heads and RoPE."""

    available_backends = staticmethod(softmax_backends)  # the backend names its op runs
    qk_param_names: tuple[str, ...] = ("wq", "wk")  # the attributes that hold Q/K parameters (params.py)

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        d_model, kv_dim = config.d_model, config.n_kv_heads * config.head_dim
        self.wq = nn.Linear(d_model, d_model, bias=False)
        self.wk = nn.Linear(d_model, kv_dim, bias=False)
        self.wv = nn.Linear(d_model, kv_dim, bias=False)
        self.wo = nn.Linear(d_model, d_model, bias=False)
        self.backend = "auto"
        self.fuse_projections = True  # one GEMM for X·[W_Q | W_K | W_V] (project_inputs)
        self.recorder: list | None = None  # set to a list to collect (softmax map,) (eager, analysis only)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], cache=None, mask: Tensor | None = None) -> Tensor:
        b, n, _ = x.shape
        h, h_kv, d = self.n_heads, self.n_kv_heads, self.head_dim
        fused = cache.fused_weights(self.layer_idx) if cache is not None else None
        if fused is None:
            q, k, v = project_inputs(x, (self.wq, self.wk, self.wv), self.fuse_projections)
            qk = torch.cat([q, k], -1).view(b, n, h + h_kv, d)
        else:  # decoding with [W_Q; W_K; W_V] merged once (fused_weights): one GEMM, Q and K already side by side
            qk, v = F.linear(x, fused["projections"]).split([(h + h_kv) * d, h_kv * d], dim=-1)
            qk = qk.unflatten(-1, (h + h_kv, d))
        q, k = apply_rope(qk, *rope).transpose(1, 2).split([h, h_kv], dim=1)  # one rotation
        v = v.unflatten(-1, (h_kv, d)).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        if self.recorder is not None:
            out, attn = eager_softmax_attention(q, k, v, causal=mask is None, mask=mask)
            self.recorder.append((attn.detach(),))  # (B, h, N, N_k)
        else:
            out = softmax_attention(q, k, v, causal=mask is None, backend=self.backend, mask=mask)  # (B, h, N, dh)
        return self.wo(out.transpose(1, 2).reshape(b, n, -1))

    def fused_weights(self) -> dict[str, Tensor]:
        """The weights a ``StaticDecoder`` merges once: "projections" [W_Q; W_K; W_V] (out, D), one GEMM whose output
        holds Q, K, V side by side. A new tensor: later changes to the parameters do not reach it."""
        return {"projections": torch.cat([self.wq.weight, self.wk.weight, self.wv.weight])}

    def reset_parameters(self, std: float | None, out_std: float | None) -> None:
        for lin in (self.wq, self.wk, self.wv):
            init_weight(lin.weight, std)
        init_weight(self.wo.weight, out_std)
