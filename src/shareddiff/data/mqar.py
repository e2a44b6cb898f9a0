"""Multi-query associative recall (MQAR; Zoology, Arora et al. 2023, §3): a seeded, vectorised generator.

One sequence of ``seq_len`` tokens (``[mqar]`` of the recipe, ``shareddiff.config.MQARConfig``)::

    k1 v1 k2 v2 ... kP vP | 0 0 k2 0 0 0 k1 0 ...      inputs
    -  -  -  -  ... -  -  | - - v2 - - - v1 - ...      targets (IGNORE elsewhere)

Keys are drawn from tokens [1, V/2) (distinct within a sequence), values from [V/2, V) (distinct within
a sequence), 0 is the blank. The key-value part comes first; the rest is cut into slots of
``key_len + 1`` tokens and each queried key fills the first ``key_len`` tokens of one slot, slot i
drawn ∝ i^(power_a − 1) without replacement (Zoology's power law: most queries sit soon after the
context). The target at a query's last key token is the key's value, so loss and accuracy are taken
at the answer positions only. Distractors: ``shared_prefix`` builds the keys in twos that share their
first ``key_len − 1`` tokens, over two last tokens shared by every key (neither the prefix nor the last
token alone identifies a key); ``updates`` adds pairs that give an already written key a new value,
and the answer is the key's last value. Unlike Zoology's fixed training set, every step draws fresh
sequences, a pure function of (seed, step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from shareddiff.config import MQARConfig
from shareddiff.data.loader import IGNORE

BLANK = 0  # the token between queries


def _distinct(batch: int, count: int, high: int, gen: torch.Generator) -> Tensor:
    """(batch, count) values in [0, high), distinct within each row, in random order."""
    return torch.rand(batch, high, generator=gen, device=gen.device).topk(count, dim=1).indices


def _keys(config: MQARConfig, batch: int, gen: torch.Generator) -> Tensor:
    """(batch, pairs, key_len) key tokens in [1, V/2): keys of a sequence differ in their first token,
    or (shared_prefix) pairs of keys share a prefix and every key ends in one of two shared tokens."""
    key_tokens, k, pairs, dev = config.vocab_size // 2 - 1, config.key_len, config.pairs, gen.device
    if not config.shared_prefix:
        first = _distinct(batch, pairs, key_tokens, gen)[..., None]
        rest = torch.randint(0, key_tokens, (batch, pairs, k - 1), generator=gen, device=dev)
        return torch.cat([first, rest], dim=2) + 1
    groups = -(-pairs // 2)
    prefix_first = _distinct(batch, groups, key_tokens, gen)[..., None]
    prefix_rest = torch.randint(0, key_tokens, (batch, groups, k - 2), generator=gen, device=dev)
    prefixes = torch.cat([prefix_first, prefix_rest], dim=2)  # (B, groups, k − 1)
    last = _distinct(batch, 2, key_tokens, gen)  # (B, 2): the two last tokens every group uses
    index = torch.arange(pairs, device=dev)
    keys = torch.cat([prefixes[:, index // 2], last[:, index % 2, None]], dim=2)  # key i: group i // 2
    return keys + 1


def mqar_batch(config: MQARConfig, seq_len: int, batch: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(inputs, targets), each (batch, seq_len) int64 on ``gen``'s device; targets are ``IGNORE`` except
    at the last token of each query, where they hold the key's (last) value. Raises ``ValueError`` when
    ``config`` cannot fill ``seq_len`` (``MQARConfig.validate``)."""
    config.validate(seq_len)
    dev, k = gen.device, config.key_len
    pairs, updates, n_queries = config.pairs, config.updates, config.n_queries()
    entries = pairs + updates
    half = config.vocab_size // 2
    keys = _keys(config, batch, gen)  # (B, P, k)
    values = _distinct(batch, entries, config.vocab_size - half, gen) + half  # (B, E), all distinct
    # entry e writes key entry_key[e]; the P first writes in random order, each update after its key's write
    update_key = torch.randint(0, pairs, (batch, updates), generator=gen, device=dev)
    entry_key = torch.cat([torch.arange(pairs, device=dev).expand(batch, pairs), update_key], dim=1)
    first = torch.rand(batch, pairs, generator=gen, device=dev)
    after = first.gather(1, update_key)
    update_time = after + (1 - after) * torch.rand(batch, updates, generator=gen, device=dev)
    order = torch.cat([first, update_time], dim=1).argsort(dim=1, stable=True)
    entry_key, values = entry_key.gather(1, order), values.gather(1, order)
    positions = torch.arange(entries, device=dev).expand(batch, entries)
    last_write = torch.zeros(batch, pairs, dtype=torch.long, device=dev)
    last_write.scatter_reduce_(1, entry_key, positions, reduce="amax", include_self=False)
    answers = values.gather(1, last_write)  # (B, P): each key's value at its last write

    context = torch.cat([keys.gather(1, entry_key[..., None].expand(-1, -1, k)), values[..., None]], dim=2)
    start = config.context_len()
    slots = (seq_len - start) // (k + 1)
    weights = torch.arange(1, slots + 1, device=dev, dtype=torch.float64) ** (config.power_a - 1)
    slot = torch.multinomial(weights.expand(batch, slots), n_queries, replacement=False, generator=gen)
    queried = torch.rand(batch, pairs, generator=gen, device=dev).topk(n_queries, dim=1).indices  # (B, Q)
    query_pos = start + slot[..., None] * (k + 1) + torch.arange(k, device=dev)  # (B, Q, k)

    inputs = torch.full((batch, seq_len), BLANK, dtype=torch.long, device=dev)
    inputs[:, :start] = context.flatten(1)
    inputs.scatter_(1, query_pos.flatten(1), keys.gather(1, queried[..., None].expand(-1, -1, k)).flatten(1))
    targets = torch.full((batch, seq_len), IGNORE, dtype=torch.long, device=dev)
    targets.scatter_(1, query_pos[..., -1], answers.gather(1, queried))
    return inputs, targets


def mqar_eval_set(config: MQARConfig, seq_len: int, samples: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A fixed evaluation set on the CPU (the same on every device): ``samples`` sequences of ``seq_len``."""
    gen = torch.Generator().manual_seed(2**40 + seed * 65_537 + seq_len)  # apart from training's seeds
    return mqar_batch(config, seq_len, samples, gen)


class MQARLoader:
    """Training batches of fresh MQAR sequences: the global batch of ``step`` is a pure function of
    (seed, step), built on ``device``; rank ``r`` of ``W`` takes rows ``r::W`` of each micro-batch, so
    the global batch does not depend on the number of processes (as ``WindowLoader``)."""

    def __init__(self, config: MQARConfig, seq_len: int, seed: int, device: torch.device | str = "cpu") -> None:
        config.validate(seq_len)
        self.config, self.seq_len, self.seed, self.device = config, seq_len, seed, torch.device(device)
        self._step: tuple[int, int, Tensor, Tensor] | None = None  # (step, rows, inputs, targets) last built

    def _global(self, step: int, rows: int) -> tuple[Tensor, Tensor]:
        if self._step is None or self._step[:2] != (step, rows):
            gen = torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + step)
            self._step = (step, rows, *mqar_batch(self.config, self.seq_len, rows, gen))
        return self._step[2], self._step[3]

    def batch(
        self, step: int, micro_step: int, micro_batch: int, grad_accum: int, rank: int = 0, world: int = 1
    ) -> tuple[Tensor, Tensor, None]:
        """(inputs, targets, None) for one rank's share of one micro-step, each (micro_batch, seq_len)."""
        global_micro = micro_batch * world
        inputs, targets = self._global(step, global_micro * grad_accum)
        mine = torch.arange(micro_step * global_micro, (micro_step + 1) * global_micro, device=self.device)[rank::world]
        return inputs[mine], targets[mine], None
