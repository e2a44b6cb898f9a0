"""Deterministic batches of fixed-length windows: batch ``step`` is a pure function of (seed, step).

A resumed run therefore sees exactly the batches it would have seen, and the global batch does not
depend on how many processes share it: rank ``r`` of ``W`` takes rows ``r::W`` of each micro-batch.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from shareddiff.data.shards import TokenData

IGNORE = -100  # a target that carries no loss (F.cross_entropy's ignore_index)


class WindowLoader:
    """Windows of ``seq_len + 1`` tokens at offsets drawn from a generator seeded by (seed, step)."""

    def __init__(self, data: TokenData, seq_len: int, seed: int, mix=None) -> None:
        if len(data) < seq_len + 1:
            raise ValueError(
                f"split {data.split!r} has {len(data)} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
                "use a shorter data.seq_len or more data"
            )
        self.data, self.seq_len, self.seed = data, seq_len, seed
        self.mix = mix  # optional synthetic rows: .fraction and .row(length, rng) -> (ids, weights or None)

    def offsets(self, step: int, count: int) -> np.ndarray:
        """``count`` window starts for global step ``step``: the same on every rank, every run."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        high = len(self.data) - self.seq_len  # starts in [0, high) leave room for the +1 target
        return torch.randint(0, high, (count,), generator=gen).numpy()

    def batch(
        self, step: int, micro_step: int, micro_batch: int, grad_accum: int, rank: int = 0, world: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(inputs, targets, weights) for one rank's share of one micro-step, each (micro_batch, seq_len).

        ``weights`` (float32, a loss weight per target) is None unless a row of the mix weighs its
        targets (the needle mix's ``answer_weight``); corpus rows then weigh 1 everywhere.
        """
        global_micro = micro_batch * world
        starts = self.offsets(step, global_micro * grad_accum)
        mine = range(micro_step * global_micro, (micro_step + 1) * global_micro)[rank::world]
        rows, weights = zip(*(self._row(step, i, int(starts[i])) for i in mine), strict=True)
        tokens = torch.from_numpy(np.stack(rows))
        weight = None
        if any(w is not None for w in weights):
            ones = np.ones(self.seq_len + 1, dtype=np.float32)
            weight = torch.from_numpy(np.stack([ones if w is None else w for w in weights]))[:, 1:]
        return tokens[:, :-1], tokens[:, 1:], weight

    def _row(self, step: int, index: int, start: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Row ``index`` of the global batch of ``step`` and its per-token loss weights (None: all 1): a
        corpus window, or (with a mix) a synthetic row."""
        if self.mix is not None:
            rng = random.Random(f"mix-{self.seed}-{step}-{index}")
            if rng.random() < self.mix.fraction:
                ids, weights = self.mix.row(self.seq_len + 1, rng)
                return np.asarray(ids, dtype=np.int64), weights
        return self.data.window(start, self.seq_len + 1), None


def eval_windows(data: TokenData, seq_len: int, max_tokens: int) -> torch.Tensor:
    """Fixed validation windows (rows of seq_len + 1), evenly spaced over the split, at most ``max_tokens``."""
    if len(data) < seq_len + 1:
        raise ValueError(
            f"validation split has {len(data)} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
            "use a shorter data.seq_len or a larger validation split"
        )
    n = max(1, min(max_tokens // seq_len, (len(data) - 1) // seq_len))
    starts = np.linspace(0, len(data) - seq_len - 1, n).astype(np.int64)
    return torch.from_numpy(np.stack([data.window(int(s), seq_len + 1) for s in starts]))
