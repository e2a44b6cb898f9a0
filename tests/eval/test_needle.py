"""Needle generator: every needle once, the answer at its depth, exact length, seeded; the training mix."""

import random

import pytest
import torch

from shareddiff.data import WindowLoader, load_split
from shareddiff.eval.needle import NeedleBuilder, NeedleMix, needle_eval, parse_mix


@pytest.fixture
def builder(tiny_tokenizer, tiny_data):
    return NeedleBuilder(tiny_tokenizer, load_split(tiny_data, "val"))


def occurrences(seq: list[int], sub: list[int]) -> int:
    return sum(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize(("needles", "queries"), [(1, 1), (4, 2), (6, 2)])
def test_samples(builder, depth, needles, queries):
    rng = random.Random(3)
    for _ in range(5):
        target = rng.choice([700, 917, 1100])
        s = builder.sample(target, needles, queries, depth, rng)
        assert abs(len(s.ids) - target) <= 0.01 * target  # built from pieces: exact
        assert len(s.cities) == needles and s.queries == s.cities[:queries]
        for city in s.cities:
            needle = builder.needle_ids(city, s.numbers[city])
            assert occurrences(s.ids, needle) == 1
            start, end = s.spans[city]
            assert s.ids[start:end] == needle
        # the answer needle sits at the sentence end nearest its depth: within one sentence of it
        budget = s.sentence_ends[-1]
        nearest = min(s.sentence_ends, key=lambda c: abs(c - depth * budget))
        assert s.answer_position == nearest
        gaps = [b - a for a, b in zip(s.sentence_ends, s.sentence_ends[1:], strict=False)]
        assert abs(s.answer_position - depth * budget) <= max(gaps)


def test_same_seed_same_samples(builder):
    a = builder.sample(400, 3, 2, 0.5, random.Random("x"))
    b = builder.sample(400, 3, 2, 0.5, random.Random("x"))
    c = builder.sample(400, 3, 2, 0.5, random.Random("y"))
    assert a.ids == b.ids and a.numbers == b.numbers and a.ids != c.ids


def test_needle_beyond_context_is_refused(builder):
    from shareddiff import ModelConfig, build_model

    model = build_model(ModelConfig(vocab_size=300, max_seq_len=256))
    with pytest.raises(
        ValueError,
        match=r"needle retrieval at length 512 needs \d+ positions but the model's "
        r"max_seq_len is 256",
    ):
        needle_eval(model, builder, [512], [0.5], 1, 1, 1, seed=0)


def test_training_mix(builder, tiny_data):
    mix = NeedleMix(builder, fraction=0.5, max_needles=2)
    row, weights = mix.row(257, random.Random(1))
    assert len(row) == 257 and weights is None
    loader = WindowLoader(load_split(tiny_data, "train"), 256, seed=5, mix=mix)
    x, _, weights = loader.batch(3, 0, 16, 1)
    assert weights is None  # no answer_weight: every target weighs 1
    assert torch.equal(x, WindowLoader(load_split(tiny_data, "train"), 256, seed=5, mix=mix).batch(3, 0, 16, 1)[0])
    plain = WindowLoader(load_split(tiny_data, "train"), 256, seed=5).batch(3, 0, 16, 1)[0]
    replaced = [i for i in range(16) if not torch.equal(x[i], plain[i])]
    assert 2 <= len(replaced) <= 14  # about half of the 16 rows are needle prompts
    text = builder.tok.decode(x[replaced[0]].tolist())
    assert "The magic number of" in text and "Answer: The magic number of" in text
    with pytest.raises(ValueError, match=r"data.mix='needle:2' is not understood"):
        parse_mix("needle:2", builder.tok, load_split(tiny_data, "train"))
