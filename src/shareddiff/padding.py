"""Padded batches: which positions hold tokens, each row's positions, and the attention mask they give.

A token mask is a boolean (B, N) tensor, True where a position holds a token and False where it holds
padding (transformers' ``attention_mask`` convention, 1/0). A row may be padded on the left (padding,
then tokens: what decoder-only generation uses) and, without a KV cache, on the right. Padding is
never attended to and takes no position, so each row of a padded batch computes exactly what its
tokens alone compute. All functions here are tensor code without host syncs except
``check_token_mask``, which a compiled forward skips.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_token_mask(token_mask: Tensor, cached: bool) -> None:
    """Raise ``ValueError`` if a row has padding between tokens, or (``cached``) padding after a token.

    token_mask: (B, N_k) bool over every position so far (the cached ones and the new ones).
    """
    m = token_mask.int()
    runs = m[:, 0] + (m[:, 1:] > m[:, :-1]).sum(-1)  # runs of tokens per row
    holes = (runs > 1).nonzero().flatten().tolist()
    if holes:
        raise ValueError(
            f"attention_mask row(s) {holes[:8]} have padding between tokens (a hole); only padding before a row's "
            "tokens (left padding) or, without a KV cache, after them (right padding) is supported"
        )
    if cached:
        trailing = (m[:, 1:] < m[:, :-1]).any(-1).nonzero().flatten().tolist()
        if trailing:
            raise ValueError(
                f"attention_mask row(s) {trailing[:8]} have padding after a token while a KV cache is in use: the "
                "row's next token would follow its padding. Pad prompts on the left (padding_side='left'), and "
                "give every decoding step's new tokens as tokens (mask 1)"
            )


def token_positions(token_mask: Tensor) -> Tensor:
    """(B, N_k) int64 position of every column: the number of tokens before it in its row (RoPE
    positions start at each row's first token); padding before the first token gets 0."""
    return (token_mask.long().cumsum(-1) - 1).clamp(min=0)


def padded_attention_mask(token_mask: Tensor, start: int, n: int) -> Tensor:
    """Boolean (B, 1, n, N_k), True where query ``start + i`` may attend key ``j``: causal, and keys that
    are tokens. Every query also sees itself, so a padding query's row is never empty (its output is
    finite and unused). token_mask: (B, N_k) over all keys; the queries are columns [start, start + n)."""
    n_k = token_mask.shape[1]
    keys = torch.arange(n_k, device=token_mask.device)
    queries = torch.arange(start, start + n, device=token_mask.device)[:, None]
    allowed = (keys <= queries) & (token_mask[:, None, :] | (keys == queries))  # (B, n, N_k)
    return allowed[:, None]


def left_pad(sequences: Sequence[Tensor], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Stack 1-D token tensors of different lengths, padded on the left with ``pad_id``.

    Returns ``(ids, attention_mask)``, both (B, T) with T the longest length; the mask is 1 on tokens.
    """
    if not sequences:
        raise ValueError("no sequences to pad; give at least one")
    if any(s.dim() != 1 for s in sequences):
        raise ValueError(f"each sequence must be 1-D, got shapes {[tuple(s.shape) for s in sequences]}")
    longest = max(len(s) for s in sequences)
    ids = sequences[0].new_full((len(sequences), longest), pad_id)
    mask = torch.zeros(len(sequences), longest, dtype=torch.long, device=sequences[0].device)
    for row, s in enumerate(sequences):
        if len(s):
            ids[row, -len(s) :] = s
            mask[row, -len(s) :] = 1
    return ids, mask
