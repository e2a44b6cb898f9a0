"""Building blocks shared by the model and the attention variants: RMSNorm, RoPE, SwiGLU."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shareddiff.precision import compute_dtype, upcast


class RMSNorm(nn.Module):
    """x / rms(x) · w, computed in float32 (float64 for a float64 ``x``: ``precision.compute_dtype``, so that float64
    references stay float64 throughout); ``weight=False`` gives the weightless form."""

    def __init__(self, dim: int, eps: float = 1e-5, weight: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None

    def forward(self, x: Tensor) -> Tensor:
        compute = compute_dtype(x.dtype)
        xf = x.to(compute)
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            out = out * self.weight.to(compute)
        return out.to(x.dtype)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)


def fused_rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """``F.rms_norm`` over the last axis (one kernel on CUDA) with ``weight`` in ``x``'s dtype: under autocast a
    bf16 ``x`` meets a float32 weight, which would send torch to its unfused path. The decode path's norm
    (``StaticDecoder``); the same value as ``RMSNorm`` up to rounding."""
    if weight is not None and weight.dtype != x.dtype:
        weight = weight.to(x.dtype)
    return F.rms_norm(x, x.shape[-1:], weight, eps)


def rope_angles(positions: Tensor, dim: int, theta: float, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotary angles, each (..., N, 1, dim/2) (the 1 broadcasts over heads), for integer
    ``positions`` (N,) shared by every row or (B, N) per row (padded batches). ``dtype``: the model's; the
    table is computed in ``precision.compute_dtype(dtype)``: float32 for bf16/fp16/fp32 models,
    float64 for a float64 one (so that float64 references stay float64)."""
    compute = compute_dtype(dtype)
    inv_freq = theta ** (-torch.arange(0, dim, 2, device=positions.device, dtype=compute) / dim)
    angles = positions.to(compute).view(*positions.shape, 1, 1) * inv_freq
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs (x[2j], x[2j+1]) as the official DIFF code does, in float32 or wider (the
    wider of x's and the table's dtypes). x: (B, N, H, dim); cos, sin: (N, 1, dim/2) or (B, N, 1, dim/2)
    from ``rope_angles``."""
    xf = upcast(x)
    even, odd = xf.unflatten(-1, (-1, 2)).unbind(-1)  # (B, N, H, dim/2) each
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def init_weight(weight: Tensor, std: float | None) -> None:
    """Normal(0, std²), or PyTorch's default ``nn.Linear`` init (Kaiming-uniform, bound 1/√fan_in) when
    ``std`` is None (the DIFF authors' code lineage; ``ModelConfig.init_scheme``)."""
    if std is None:
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    else:
        nn.init.normal_(weight, std=std)


FUSE_MIN_TOKENS = 128  # below this, concatenating the weights costs more than the GEMMs it merges


def project_inputs(x: Tensor, linears: tuple[nn.Linear, ...], fused: bool = True) -> tuple[Tensor, ...]:
    """``x`` through each bias-free Linear. Fused: one GEMM over the concatenated weights, so X is read
    once and one large matmul replaces several thin ones (Shared DIFF's X·[W_Q | W_K | W_V | A…]), then
    split; the parameters stay separate (checkpoints and exports are unchanged). The outputs are
    views of one buffer, contiguous along the last dimension only. Inputs of fewer than
    ``FUSE_MIN_TOKENS`` tokens (decoding) take the separate GEMMs: there the weight copy would cost
    about as much memory traffic as the projections themselves."""
    if not fused or len(linears) == 1 or x.numel() < FUSE_MIN_TOKENS * x.shape[-1]:
        return tuple(lin(x) for lin in linears)
    weight = torch.cat([lin.weight for lin in linears])
    return F.linear(x, weight).split([lin.out_features for lin in linears], dim=-1)


class SwiGLU(nn.Module):
    """(swish(x W_g) ⊙ x W_1) W_2, no biases."""

    def __init__(self, d_model: int, ffn_dim: int) -> None:
        super().__init__()
        self.w_gate = nn.Linear(d_model, ffn_dim, bias=False)
        self.w_up = nn.Linear(d_model, ffn_dim, bias=False)
        self.w_down = nn.Linear(ffn_dim, d_model, bias=False)

    def forward(self, x: Tensor, gate_up: Tensor | None = None) -> Tensor:
        """``gate_up``: [W_g; W_1] (2·ffn_dim, D) from ``gate_up_weight()``, for one GEMM in place of two
        (``StaticDecoder``); None: the two Linears."""
        if gate_up is None:
            return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))
        gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
        return self.w_down(F.silu(gate) * up)

    def gate_up_weight(self) -> Tensor:
        """[W_g; W_1] (2·ffn_dim, D), a new tensor."""
        return torch.cat([self.w_gate.weight, self.w_up.weight])

    def reset_parameters(self, std: float | None, out_std: float | None) -> None:
        init_weight(self.w_gate.weight, std)
        init_weight(self.w_up.weight, std)
        init_weight(self.w_down.weight, out_std)
