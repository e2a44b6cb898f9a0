"""The precision the numerics run in: float32 for half and single precision, float64 for float64 (so that the
float64 references of the tests stay float64 throughout: softmax, norms, RoPE, λ, losses, sampling)."""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or the wider ``dtype`` (float64): ``torch.promote_types(dtype, torch.float32)``."""
    return torch.promote_types(dtype, torch.float32)


def upcast(t: Tensor) -> Tensor:
    """``t`` in ``compute_dtype(t.dtype)`` (itself when it already is)."""
    return t.to(compute_dtype(t.dtype))
