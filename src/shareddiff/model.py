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
from shareddiff.layers import RMSNorm, SwiGLU, fused_rms_norm, init_weight, rope_angles
from shareddiff.ops import check_backend
from shareddiff.padding import check_token_mask, padded_attention_mask, token_positions


class KVCache:
    """Post-RoPE keys and values of every layer; positions ``[0, length)`` are filled.

    Buffers of ``max_len`` positions are allocated at a layer's first update, shaped like what the
    layer stores (K, V for standard attention; K1, K2, V for the differential variants).
    ``token_mask`` (B, max_len) bool records which positions hold tokens once a padded input arrives
    (None while every position is a token).
    """

    def __init__(self, n_layers: int, max_len: int) -> None:
        self.max_len = max_len
        self.length = 0
        self.token_mask: Tensor | None = None
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

    def record_tokens(self, new_mask: Tensor) -> Tensor:
        """Note which of the next N positions hold tokens (``new_mask`` (B, N) bool); return the token mask
        (B, length + N) of every position so far (earlier positions count as tokens if none was recorded)."""
        if self.token_mask is None:
            self.token_mask = new_mask.new_ones(new_mask.shape[0], self.max_len)
        end = self.length + new_mask.shape[1]
        self.token_mask[:, self.length : end] = new_mask
        return self.token_mask[:, :end]

    def reorder(self, rows: Tensor) -> None:
        """Keep batch rows ``rows`` (B',) int64 of every buffer, in that order (beam search)."""
        self._buffers = [None if b is None else [t.index_select(0, rows) for t in b] for b in self._buffers]
        if self.token_mask is not None:
            self.token_mask = self.token_mask.index_select(0, rows)

    def copy(self) -> KVCache:
        """An independent cache with the same contents (to branch several continuations off one prefix)."""
        other = KVCache(len(self._buffers), self.max_len)
        other.length = self.length
        other.token_mask = None if self.token_mask is None else self.token_mask.clone()
        other._buffers = [None if b is None else [t.clone() for t in b] for b in self._buffers]
        return other

    def advance(self, n: int) -> None:
        self.length += n

    def fused_weights(self, layer_idx: int) -> dict[str, Tensor] | None:
        """Layer ``layer_idx``'s weights merged for decoding (``Block.fused_weights``; ``StaticKVCache`` holds
        them), or None: the layers use their parameters."""
        return None

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

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], cache: KVCache | None = None, mask: Tensor | None = None
    ) -> Tensor:
        fused = cache.fused_weights(self.attention.layer_idx) if cache is not None else None
        if fused is None:
            x = x + self.attention(self.attention_norm(x), rope, cache, mask)
            return x + self.feed_forward(self.ffn_norm(x))
        # decoding with weights merged once (fused_weights): the same block in fewer kernels (F.rms_norm is one
        # on CUDA; the attention reads its own merged weights from the cache)
        normed = fused_rms_norm(x, fused["attention_norm"], self.attention_norm.eps)
        x = x + self.attention(normed, rope, cache, mask)
        normed = fused_rms_norm(x, fused["ffn_norm"], self.ffn_norm.eps)
        return x + self.feed_forward(normed, fused["gate_up"])

    @torch.no_grad()
    def fused_weights(self) -> dict[str, Tensor]:
        """This block's weights merged for decoding, new tensors (``StaticDecoder`` keeps them): the attention's
        (its ``fused_weights()``), the MLP's [W_g; W_1] (one GEMM for both) and the two norms' weights."""
        norms = {"attention_norm": self.attention_norm.weight.clone(), "ffn_norm": self.ffn_norm.weight.clone()}
        return {**self.attention.fused_weights(), "gate_up": self.feed_forward.gate_up_weight(), **norms}


class LanguageModel(nn.Module):
    """``model(input_ids) -> logits``; pass a ``KVCache`` from ``new_cache()`` to decode incrementally and
    an ``attention_mask`` for padded batches."""

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
        """Choose the attention op backend ("auto", "eager", "sdpa", ...) for every layer. Raises ``ValueError``
        for a name the variant's op does not run (its attention class's ``available_backends()``)."""
        allowed = self.layers[0].attention.available_backends()
        check_backend(backend, allowed, "attn_backend", f"attention={self.config.attention!r}")
        for block in self.layers:
            block.attention.backend = backend

    def set_fused_projections(self, fused: bool) -> None:
        """One GEMM for all projections of each attention input (default) or one per weight; same
        parameters, same result up to rounding (for benchmarks and debugging)."""
        for block in self.layers:
            block.attention.fuse_projections = bool(fused)

    def new_cache(self, max_len: int | None = None) -> KVCache:
        return KVCache(self.config.n_layers, max_len or self.config.max_seq_len)

    def _check_length(self, end: int, cache: KVCache | None) -> None:
        if end > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {end} positions exceeds the model's max_seq_len={self.config.max_seq_len}; "
                "shorten the input or use a config with a larger max_seq_len"
            )
        if cache is not None and end > cache.max_len:
            raise ValueError(
                f"sequence of {end} positions exceeds the KV cache's max_len={cache.max_len}; "
                "make the cache large enough (new_cache(max_len=...)) or shorten the input"
            )

    @staticmethod
    def _token_mask(attention_mask: Tensor | None, cache: KVCache | None, b: int, n: int) -> Tensor | None:
        """Which of the ``start + n`` positions hold tokens, (B, start + n) bool; None when all of them do."""
        if attention_mask is not None and tuple(attention_mask.shape) != (b, n):
            raise ValueError(
                f"attention_mask must be (B, N) = {(b, n)} like input_ids (the new positions only; the cache "
                f"keeps earlier ones), got {tuple(attention_mask.shape)}"
            )
        if cache is None:
            token_mask = None if attention_mask is None else attention_mask.bool()
        elif attention_mask is None and cache.token_mask is None:
            token_mask = None
        else:
            new = attention_mask.bool() if attention_mask is not None else cache.token_mask.new_ones(b, n)
            token_mask = cache.record_tokens(new)
        if attention_mask is not None and not torch.compiler.is_compiling():  # new tokens only extend a checked mask
            check_token_mask(token_mask, cached=cache is not None)
        return token_mask

    def forward(
        self,
        input_ids: Tensor,
        cache: KVCache | None = None,
        attention_mask: Tensor | None = None,
        *,
        logits_at: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, N, vocab) for ``input_ids`` (B, N) placed after the ``cache.length`` cached positions.

        ``attention_mask`` (B, N), padded batches: 1 on tokens, 0 on padding (transformers' convention),
        for these N positions only (the cache remembers earlier ones). Rows are padded on the left, or
        without a cache also on the right. Padding is never attended to and each row's RoPE positions
        count its tokens only, so every row's logits are those of its tokens alone; logits at padding
        positions mean nothing. ``logits_at`` (B, K) integer: only the logits at these positions of each
        row, (B, K, vocab), the full logits' values there; the final norm and the head then run on B·K rows
        instead of B·N (training on sparse targets such as MQAR's answer positions, where the head over the
        vocabulary is most of a small model's step; transformers' ``logits_to_keep``, with an index per
        row). Raises ``ValueError`` for an empty input, too many positions, a mask of the wrong shape, with
        holes, or with padding after a token while a cache is used, or a ``logits_at`` that is not (B, K)
        integer.
        """
        b, n = input_ids.shape
        if n == 0:
            raise ValueError("input_ids has no positions (shape (B, 0)); give at least one token per row")
        start = cache.length if cache is not None else 0
        self._check_length(start + n, cache)
        token_mask = self._token_mask(attention_mask, cache, b, n)  # (B, start + N) or None: all tokens
        if token_mask is None:
            positions, mask = torch.arange(start, start + n, device=input_ids.device), None
        else:
            positions = token_positions(token_mask)[:, start:]  # (B, N)
            mask = padded_attention_mask(token_mask, start, n)  # (B, 1, N, start + N)
        if logits_at is not None:
            integer = not (logits_at.dtype == torch.bool or logits_at.is_floating_point() or logits_at.is_complex())
            if logits_at.dim() != 2 or logits_at.shape[0] != b or not integer:
                raise ValueError(
                    f"logits_at must be (B, K) integer positions with B = {b} as input_ids, got "
                    f"{tuple(logits_at.shape)} {logits_at.dtype}"
                )
            logits_at = logits_at.long()  # gather's index type
        rope = rope_angles(positions, self.config.head_dim, self.config.rope_theta, self.tok_embeddings.weight.dtype)
        logits = self.forward_blocks(input_ids, rope, cache, mask, logits_at=logits_at)
        if cache is not None:
            cache.advance(n)
        return logits

    def forward_blocks(
        self,
        input_ids: Tensor,
        rope: tuple[Tensor, Tensor],
        cache: KVCache | None = None,
        mask: Tensor | None = None,
        *,
        logits_at: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, N, vocab) with the RoPE angles (cos, sin), each (N, 1, d/2) or (B, N, 1, d/2), and the attention
        mask (None: causal; else bool (B, 1, N, N_k)) given: embedding, blocks, final norm, head. ``forward``
        derives both from the cache's positions; ``StaticDecoder`` brings its own of fixed shapes. With
        ``logits_at`` (B, K): only those positions' logits, (B, K, vocab)."""
        x = self.tok_embeddings(input_ids)
        for block in self.layers:
            x = block(x, rope, cache, mask)
        if logits_at is not None:  # the norm is per position: gather first, then normalise B·K rows
            x = x.gather(1, logits_at[..., None].expand(-1, -1, x.shape[-1]))
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
