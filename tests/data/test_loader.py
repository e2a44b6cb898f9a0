"""Deterministic window loader."""

import pytest
import torch

from shareddiff.data import WindowLoader, eval_windows, load_split


def test_batches_are_a_function_of_seed_and_step(tiny_data):
    data = load_split(tiny_data, "train")
    a, b = WindowLoader(data, 16, seed=7), WindowLoader(data, 16, seed=7)
    x1, y1, weights = a.batch(5, 1, 4, 2)
    x2, y2, _ = b.batch(5, 1, 4, 2)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and weights is None
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are inputs shifted by one
    assert not torch.equal(a.batch(6, 1, 4, 2)[0], x1)
    assert not torch.equal(WindowLoader(data, 16, seed=8).batch(5, 1, 4, 2)[0], x1)


def test_global_batch_does_not_depend_on_world_size(tiny_data):
    loader = WindowLoader(load_split(tiny_data, "train"), 16, seed=3)
    single = loader.batch(2, 1, micro_batch=4, grad_accum=2)[0]
    ranks = [loader.batch(2, 1, micro_batch=2, grad_accum=2, rank=r, world=2)[0] for r in range(2)]
    assert torch.equal(torch.stack(ranks, dim=1).flatten(0, 1), single)


def test_too_short_dataset(tiny_data):
    data = load_split(tiny_data, "val")
    with pytest.raises(ValueError, match=r"has \d+ tokens, fewer than seq_len \+ 1 = .*shorter data.seq_len"):
        WindowLoader(data, len(data), seed=0)
    with pytest.raises(ValueError, match="validation split has"):
        eval_windows(data, len(data) + 5, 1000)


def test_eval_windows_cover_the_split(tiny_data):
    data = load_split(tiny_data, "val")
    rows = eval_windows(data, 32, max_tokens=10**9)
    assert rows.shape[1] == 33 and rows.shape[0] == (len(data) - 1) // 32
    assert torch.equal(rows[0], torch.from_numpy(data.window(0, 33)))
