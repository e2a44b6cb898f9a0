"""Sampling with the KV cache: temperature, top-k and top-p (nucleus); batches of prompts of any lengths;
eager, or through a ``StaticDecoder`` whose decode step is compiled."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor

from shareddiff.model import LanguageModel
from shareddiff.padding import left_pad
from shareddiff.precision import upcast
from shareddiff.static_decode import StaticDecoder

STATIC_LEN_STEP = 256  # compile=True: static cache lengths are multiples of this (fewer distinct compiled shapes)
STOP_CHECK_EVERY = 8  # decoding steps between host syncs asking whether every row has finished
WARMUP_TOKENS = 3  # a compiled decoder's warm-up: prefill and 2 steps (CUDA graph trees record on the 2nd call)


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
    compile: bool = False,
    decoder: StaticDecoder | None = None,
) -> Tensor | list[Tensor]:
    """Continue ``prompt`` by up to ``max_new_tokens``; temperature 0 is greedy.

    ``prompt``: (B, T), optionally left-padded with ``attention_mask`` (B, T) (1 on tokens); returns
    (B, T + new) with the padding kept. Or a list of 1-D prompts of any lengths, left-padded here
    with ``pad_id``; returns a list with each prompt followed by its new tokens. Every row continues
    with the logits it would have alone (so greedy tokens are the same). Generation stops early once
    every row has produced ``eos_id``; a finished row repeats it.

    Decoding paths (the same tokens up to float rounding): by default the model's ``KVCache``, eager;
    ``decoder``, a ``StaticDecoder`` of ``model`` (fixed shapes, compiled if it was built so; keep it across
    calls to reuse its compiled step); ``compile=True`` builds a compiled ``StaticDecoder`` for this call,
    its cache rounded up to a multiple of ``STATIC_LEN_STEP`` positions so that calls of similar lengths
    reuse the compiled code. Raises ``ValueError`` for an empty prompt, a prompt that does not fit
    ``max_seq_len`` (or the decoder's ``max_len``), token ids outside [0, vocab_size), a mask with padding
    anywhere but on the left, and sampling options out of range (``max_new_tokens`` < 0, ``temperature`` < 0,
    ``top_k`` < 0 with 0 = no filter, ``top_p`` outside (0, 1] with 1 = no filter). A list prompt's items may be
    1-D tensors or lists of ints.
    """
    check_sampling_options(max_new_tokens, temperature, top_k, top_p)
    if not isinstance(prompt, Tensor):
        prompt = [_as_token_row(p, i, model) for i, p in enumerate(prompt)]
        empty = [i for i, p in enumerate(prompt) if len(p) == 0]
        if empty:
            raise ValueError(f"prompt(s) {empty} are empty; give at least one token each")
        ids, mask = left_pad(prompt, pad_id)
        out = generate(
            model,
            ids,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            eos_id,
            generator,
            mask,
            compile=compile,
            decoder=decoder,
        )
        return [row[ids.shape[1] - len(p) :] for row, p in zip(out, prompt, strict=True)]
    if prompt.dim() != 2 or prompt.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"prompt of shape {tuple(prompt.shape)} and dtype {prompt.dtype}: give integer token ids of shape "
            "(B, T), or a list of 1-D prompts"
        )
    if prompt.shape[1] == 0:
        raise ValueError("the prompt is empty; give at least one token")
    check_token_ids(prompt, model.config.vocab_size)
    total = prompt.shape[1] + max_new_tokens
    if total > model.config.max_seq_len:
        raise ValueError(
            f"prompt ({prompt.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
            f"max_seq_len={model.config.max_seq_len}; shorten one of them"
        )
    if decoder is None and compile:
        decoder = StaticDecoder(model, static_cache_len(total, model.config.max_seq_len), compile=True)
    if decoder is not None:
        if decoder.model is not model:
            raise ValueError("decoder was built for another model; build a StaticDecoder of this model")
        logits = decoder.prefill(prompt, attention_mask, max_new_tokens)
        step = decoder.step
    else:
        cache = model.new_cache(total)
        last = torch.full((prompt.shape[0], 1), prompt.shape[1] - 1, device=prompt.device)  # rows end in a token
        logits = model(prompt, cache, attention_mask, logits_at=last)[:, -1]  # the head at the last position only

        def step(token: Tensor) -> Tensor:
            return model(token[:, None], cache)[:, -1]

    eos_ids = None if eos_id is None else torch.tensor([eos_id], device=prompt.device)
    sample = partial(next_token, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    new = decode_tokens(logits, step, max_new_tokens, sample, eos_ids, eos_id)
    return torch.cat([prompt, new], dim=1)


def check_sampling_options(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raises ``ValueError`` naming the option for a ``max_new_tokens`` that is not an integer ≥ 0, a ``temperature``
    below 0 (or NaN), a ``top_k`` below 0 (0: no filter) or a ``top_p`` outside (0, 1] (1: no filter)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer ≥ 0")
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature!r} must be ≥ 0 (0 = greedy; 1 = the model's own distribution)")
    if top_k is not None and not top_k >= 0:
        raise ValueError(f"top_k={top_k!r} must be ≥ 0 (0 or None = no top-k filter)")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r} must be in (0, 1] (1 or None = no nucleus filter)")


def check_token_ids(ids: Tensor, vocab_size: int) -> None:
    """Raises ``ValueError`` naming the first token id outside [0, ``vocab_size``) (padding included: the model
    embeds every position); one device synchronisation."""
    outside = (ids < 0) | (ids >= vocab_size)
    if outside.any():
        bad = ids[outside][0].item()
        raise ValueError(
            f"token id {bad} is outside the model's vocabulary [0, {vocab_size}): was the prompt encoded with "
            "another tokenizer (or padded with an id past the vocabulary)? Encode it with the tokenizer the model "
            "was trained with"
        )


def _as_token_row(prompt, index: int, model: LanguageModel) -> Tensor:
    """One prompt of a list as a 1-D tensor of token ids on the model's device (a tensor, or a list of ints)."""
    if isinstance(prompt, Tensor):
        row = prompt
    else:
        try:
            row = torch.as_tensor(prompt, device=model.tok_embeddings.weight.device)
        except (TypeError, ValueError, RuntimeError):
            row = None
        if row is not None and row.numel() == 0:  # [] reads as float32: an empty prompt, refused by the caller
            row = row.long()
    if row is None or row.dim() != 1 or row.is_floating_point() or row.is_complex() or row.dtype == torch.bool:
        raise ValueError(f"prompt {index} must be a 1-D tensor or a list of integer token ids, got {prompt!r:.80}")
    return row


def static_cache_len(total: int, max_seq_len: int) -> int:
    """``total`` positions rounded up to a multiple of ``STATIC_LEN_STEP``, at most ``max_seq_len``."""
    return min(max_seq_len, -(-total // STATIC_LEN_STEP) * STATIC_LEN_STEP)


def next_token(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token (B,) per row of ``logits`` (B, vocab): argmax at temperature 0, else a sample of
    softmax(logits / temperature) restricted by ``filter_logits``."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = upcast(logits)  # float64 logits stay float64
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def decode_tokens(
    logits: Tensor,
    step: Callable[[Tensor], Tensor],
    max_new_tokens: int,
    sample: Callable[[Tensor], Tensor],
    eos_ids: Tensor | None = None,
    fill_id: int | None = None,
    check_every: int = STOP_CHECK_EVERY,
) -> Tensor:
    """The decoding loop: (B, new) tokens, new ≤ ``max_new_tokens``, from the prompt's last ``logits``
    (B, vocab), ``step(tokens (B,)) -> logits`` and ``sample(logits) -> tokens``.

    A row is finished once it produced one of ``eos_ids`` (1-D); its later tokens are returned as ``fill_id``.
    The loop stops after the step that finishes the last row. A step costs ``sample`` and ``step`` only: every
    ``check_every`` steps the loop asks the device whether every row has finished (the one host sync of the
    loop), and the tokens past each row's end are filled, and the steps past the last row's end dropped, once
    at the end, so the result is what a check at every step gives. (A finished row keeps decoding its own
    samples, which the fill hides; they change no other row.)
    """
    tokens: list[Tensor] = []
    finished = None if eos_ids is None else torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    for i in range(max_new_tokens):
        tokens.append(sample(logits))
        if finished is not None and (i + 1) % check_every == 0:
            finished = finished | torch.isin(torch.stack(tokens[-check_every:], dim=1), eos_ids).any(1)
            if bool(finished.all()):
                break
        if i + 1 < max_new_tokens:
            logits = step(tokens[-1])
    if not tokens:
        return torch.zeros(logits.shape[0], 0, dtype=torch.long, device=logits.device)
    new = torch.stack(tokens, dim=1)
    if eos_ids is None:
        return new
    hit = torch.isin(new, eos_ids)  # (B, new)
    new = new.masked_fill(hit.cumsum(1) > hit.long(), fill_id)  # after the row's first EOS
    last = torch.where(hit.any(1), hit.long().argmax(1), new.shape[1] - 1).max()  # where the last row ends
    return new[:, : int(last) + 1]
