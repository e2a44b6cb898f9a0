"""Attention ops behind a backend registry: eager reference, PyTorch SDPA, and fused kernels."""

import contextlib

from shareddiff.ops.backends import SOFTMAX_BACKENDS, check_backend, softmax_backends
from shareddiff.ops.differential import (
    available_backends,
    differential_attention,
    eager_differential_attention,
    register_backend,
    resolve_backend,
    sdpa_differential_attention,
)
from shareddiff.ops.differential_v2 import (
    differential_v2_attention,
    eager_differential_v2_attention,
    eager_differential_v2_pair_maps,
)
from shareddiff.ops.softmax import eager_softmax_attention, softmax_attention

with contextlib.suppress(ImportError):  # the fused kernel registers itself as "triton" where Triton exists
    from shareddiff.ops import triton_diff  # noqa: F401

__all__ = [
    "SOFTMAX_BACKENDS",
    "available_backends",
    "check_backend",
    "differential_attention",
    "differential_v2_attention",
    "eager_differential_attention",
    "eager_differential_v2_attention",
    "eager_differential_v2_pair_maps",
    "eager_softmax_attention",
    "register_backend",
    "resolve_backend",
    "sdpa_differential_attention",
    "softmax_attention",
    "softmax_backends",
]
