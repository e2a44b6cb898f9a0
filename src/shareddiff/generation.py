"""Sampling with the KV cache: temperature, top-k and top-p (nucleus)."""

from __future__ import annotations

import torch
from torch import Tensor

from shareddiff.model import LanguageModel


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
    prompt: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Continue ``prompt`` (B, T) by up to ``max_new_tokens``; temperature 0 is greedy. Returns (B, T + new)."""
    if prompt.shape[1] == 0:
        raise ValueError("the prompt is empty; give at least one token")
    total = prompt.shape[1] + max_new_tokens
    if total > model.config.max_seq_len:
        raise ValueError(
            f"prompt ({prompt.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
            f"max_seq_len={model.config.max_seq_len}; shorten one of them"
        )
    cache = model.new_cache(total)
    logits = model(prompt, cache)[:, -1]
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
