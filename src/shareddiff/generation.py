"""Sampling with the KV cache: temperature, top-k and top-p (nucleus); batches of prompts of any lengths."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from shareddiff.model import LanguageModel
from shareddiff.padding import left_pad


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set to −inf every logit outside the top ``top_k`` and outside the smallest set of mass ≥ ``top_p``."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep tokens until mass reaches top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def generate(
    model: LanguageModel,
    prompt: Tensor | Sequence[Tensor],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    attention_mask: Tensor | None = None,
    pad_id: int = 0,
) -> Tensor | list[Tensor]:
    """Continue ``prompt`` by up to ``max_new_tokens``; temperature 0 is greedy.

    ``prompt``: (B, T), optionally left-padded with ``attention_mask`` (B, T) (1 on tokens); returns
    (B, T + new) with the padding kept. Or a list of 1-D prompts of any lengths, left-padded here
    with ``pad_id``; returns a list with each prompt followed by its new tokens. Every row continues
    with the logits it would have alone (so greedy tokens are the same). Raises ``ValueError`` for an
    empty prompt, a prompt that does not fit ``max_seq_len``, or a mask with padding anywhere but on
    the left.
    """
    if not isinstance(prompt, Tensor):
        empty = [i for i, p in enumerate(prompt) if len(p) == 0]
        if empty:
            raise ValueError(f"prompt(s) {empty} are empty; give at least one token each")
        ids, mask = left_pad(prompt, pad_id)
        out = generate(model, ids, max_new_tokens, temperature, top_k, top_p, eos_id, generator, mask)
        return [row[ids.shape[1] - len(p) :] for row, p in zip(out, prompt, strict=True)]
    if prompt.shape[1] == 0:
        raise ValueError("the prompt is empty; give at least one token")
    total = prompt.shape[1] + max_new_tokens
    if total > model.config.max_seq_len:
        raise ValueError(
            f"prompt ({prompt.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
            f"max_seq_len={model.config.max_seq_len}; shorten one of them"
        )
    cache = model.new_cache(total)
    logits = model(prompt, cache, attention_mask)[:, -1]
    out = [prompt]
    finished = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    for _ in range(max_new_tokens):
        if temperature == 0:
            token = logits.argmax(-1)
        else:
            probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        out.append(token[:, None])
        if eos_id is not None and bool(finished.all()):
            break
        logits = model(token[:, None], cache)[:, -1]
    return torch.cat(out, dim=1)
