"""Attention variants behind a registry: ``build_attention(config, layer_idx)`` picks the class.

Every variant is an ``nn.Module`` with one call signature::

    forward(x, rope, cache=None, mask=None) -> out
    x: (B, N, D) normed input; rope: (cos, sin) from ``layers.rope_angles``, (N, 1, d/2) or per row
    (B, N, 1, d/2); cache: the model's ``KVCache`` (``cache.update(layer_idx, *new) -> all``) or None;
    mask: None (plain causal attention) or the complete boolean mask (B, 1, N, N_k) of a padded batch
    from ``padding.padded_attention_mask``, handed to the op as ``causal=mask is None, mask=mask``.
"""

from __future__ import annotations

from torch import nn

from shareddiff.attention.diff import DiffAttention, DiffAttentionBase
from shareddiff.attention.diff_v2 import DiffV2Attention, PairedDifferentialAttention
from shareddiff.attention.shared_diff import (
    SharedDiffAttention,
    SharedDiffBase,
    SharedDiffHeadsAttention,
    SharedLowRankProjection,
)
from shareddiff.attention.shared_diff_v2 import SharedDiffV2Attention
from shareddiff.attention.standard import StandardAttention
from shareddiff.config import ModelConfig

ATTENTION_REGISTRY: dict[tuple[str, str | None], type[nn.Module]] = {
    ("standard", None): StandardAttention,
    ("diff", None): DiffAttention,
    ("shared_diff", "branches"): SharedDiffAttention,
    ("shared_diff", "heads"): SharedDiffHeadsAttention,
    ("diff_v2", None): DiffV2Attention,
    ("shared_diff_v2", None): SharedDiffV2Attention,
}


def attention_class(config: ModelConfig) -> type[nn.Module]:
    sharing = config.base_sharing if config.attention == "shared_diff" else None
    return ATTENTION_REGISTRY[(config.attention, sharing)]


def build_attention(config: ModelConfig, layer_idx: int) -> nn.Module:
    return attention_class(config)(config, layer_idx)


def __getattr__(name: str):
    """``DifferentialAttention``, the old name of ``DiffAttentionBase`` (one letter from the op
    ``differential_attention``), still imports, with a ``DeprecationWarning``."""
    if name == "DifferentialAttention":
        import warnings

        warnings.warn("DifferentialAttention is deprecated; use DiffAttentionBase", DeprecationWarning, stacklevel=2)
        return DiffAttentionBase
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ATTENTION_REGISTRY",
    "DiffAttention",
    "DiffAttentionBase",
    "DiffV2Attention",
    "PairedDifferentialAttention",
    "SharedDiffAttention",
    "SharedDiffBase",
    "SharedDiffHeadsAttention",
    "SharedDiffV2Attention",
    "SharedLowRankProjection",
    "StandardAttention",
    "build_attention",
]
