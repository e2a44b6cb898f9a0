"""The decoder-only language model: pre-RMSNorm blocks, SwiGLU, RoPE, no biases (architecture §1).

The attention math lives in ``shareddiff.attention``; this file only stacks blocks and decodes with
a KV cache. The model knows nothing of training, distribution or Hugging Face.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn

from shareddiff.attention import build_attention
from shareddiff.config import ModelConfig
from shareddiff.layers import RMSNorm, SwiGLU, init_weight, rope_angles
from shareddiff.ops import available_backends


class KVCache:
    """Post-RoPE keys and values of every layer; positions ``[0, length)`` are filled.

    Buffers of ``max_len`` positions are allocated at a layer's first update, shaped like what the
    layer stores (K, V for standard attention; K1, K2, V for the differential variants).
    """

    def __init__(self, n_layers: int, max_len: int) -> None:
        self.max_len = max_len
        self.length = 0
        self._buffers: list[list[Tensor] | None] = [None] * n_layers

    def update(self, layer_idx: int, *new: Tensor) -> tuple[Tensor, ...]:
        """Store ``new`` tensors (B, H, T, ·) at positions [length, length + T); return views of [0, length + T)."""
        start, end = self.length, self.length + new[0].shape[2]
        if self._buffers[layer_idx] is None:
            self._buffers[layer_idx] = [t.new_zeros(*t.shape[:2], self.max_len, t.shape[3]) for t in new]
        stored = self._buffers[layer_idx]
        for buf, t in zip(stored, new, strict=True):
            buf[:, :, start:end] = t
        return tuple(buf[:, :, :end] for buf in stored)

    def copy(self) -> KVCache:
        """An independent cache with the same contents (to branch several continuations off one prefix)."""
        other = KVCache(len(self._buffers), self.max_len)
        other.length = self.length
        other._buffers = [None if b is None else [t.clone() for t in b] for b in self._buffers]
        return other

    def advance(self, n: int) -> None:
        self.length += n

    def bytes_per_token(self) -> int:
        """Cache bytes one position costs across all layers (0 before the first update)."""
        return sum(
            t.shape[0] * t.shape[1] * t.shape[3] * t.element_size() for layer in self._buffers if layer for t in layer
        )


class Block(nn.Module):
    """Y = X + Attn(RMSNorm(X)); X' = Y + SwiGLU(RMSNorm(Y))."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attention = build_attention(config, layer_idx)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.feed_forward = SwiGLU(config.d_model, config.ffn_dim)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], cache: KVCache | None = None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), rope, cache)
        return x + self.feed_forward(self.ffn_norm(x))


class LanguageModel(nn.Module):
    """``model(input_ids) -> logits``; pass a ``KVCache`` from ``new_cache()`` to decode incrementally."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.output = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The same scheme for all variants (``config.init_scheme``). "nanogpt": Normal(0, init_std)
        everywhere, residual-output projections scaled by 1/√(2L). "pytorch" (the DIFF authors' code
        lineage): PyTorch's default Linear init everywhere, embeddings N(0, 1/D), no depth scaling.
        λ vectors N(0, 0.1²) and norms at 1 in both."""
        if self.config.init_scheme == "pytorch":
            std = out_std = None
            embedding_std = self.config.d_model**-0.5
        else:
            std = embedding_std = self.config.init_std
            out_std = std / math.sqrt(2 * self.config.n_layers)
        nn.init.normal_(self.tok_embeddings.weight, std=embedding_std)
        if self.output is not None:
            init_weight(self.output.weight, std)
        self.norm.reset_parameters()
        for block in self.layers:
            block.attention_norm.reset_parameters()
            block.ffn_norm.reset_parameters()
            block.attention.reset_parameters(std, out_std)
            block.feed_forward.reset_parameters(std, out_std)

    def set_attention_backend(self, backend: str) -> None:
        """Choose the attention op backend ("auto", "eager", "sdpa", ...) for every layer."""
        if backend not in available_backends():
            raise ValueError(f"unknown attention backend {backend!r}; use one of {available_backends()}")
        for block in self.layers:
            block.attention.backend = backend

    def set_fused_projections(self, fused: bool) -> None:
        """One GEMM for all projections of each attention input (default) or one per weight; same
        parameters, same result up to rounding (for benchmarks and debugging)."""
        for block in self.layers:
            block.attention.fuse_projections = bool(fused)

    def new_cache(self, max_len: int | None = None) -> KVCache:
        return KVCache(self.config.n_layers, max_len or self.config.max_seq_len)

    def forward(self, input_ids: Tensor, cache: KVCache | None = None) -> Tensor:
        """Logits (B, T, vocab) for ``input_ids`` (B, T) placed after the ``cache.length`` cached positions."""
        start = cache.length if cache is not None else 0
        end = start + input_ids.shape[1]
        limit = min(self.config.max_seq_len, cache.max_len) if cache is not None else self.config.max_seq_len
        if end > limit:
            raise ValueError(
                f"sequence of {end} positions exceeds the model's max_seq_len={limit}; "
                "shorten the input or use a config with a larger max_seq_len"
            )
        positions = torch.arange(start, end, device=input_ids.device)
        rope = rope_angles(positions, self.config.head_dim, self.config.rope_theta)
        x = self.tok_embeddings(input_ids)
        for block in self.layers:
            x = block(x, rope, cache)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        x = self.norm(x)
        return self.output(x) if self.output is not None else x @ self.tok_embeddings.weight.t()


def build_model(
    config: ModelConfig,
    attn_backend: str = "auto",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LanguageModel:
    """The language model for ``config``; on ``device="meta"`` no memory is allocated."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = LanguageModel(config)
    if dtype is not None:
        model = model.to(dtype)
    model.set_attention_backend(attn_backend)
    return model
