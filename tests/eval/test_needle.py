"""Needle generator: every needle once, the answer at its depth, exact length, seeded; the training mix."""

import random

import numpy as np
import pytest
import torch

from shareddiff.data import WindowLoader, load_split
from shareddiff.data.needle import NeedleBuilder, NeedleMix, parse_mix
from shareddiff.eval.needle import needle_eval


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


def test_numbers_one_digit_per_token(tiny_tokenizer):
    from shareddiff.data import Tokenizer

    bundled = Tokenizer("bundled")
    assert [bundled.decode([t]) for t in bundled.encode(" 5202798")] == [" 5", "20", "27", "98"]  # BPE pieces
    split = Tokenizer("bundled", split_digits=True)
    assert [split.decode([t]) for t in split.encode(" 5202798.")] == [" ", *"5202798", "."]
    assert split.sha256 == bundled.sha256 and split.vocab_size == bundled.vocab_size
    text = "The magic number of Lisbon is 5202798.\nAnswer: The magic number of Lisbon is"
    assert split.decode(split.encode(text)) == text
    builder = NeedleBuilder(tiny_tokenizer, None)  # filler is not needed to encode
    assert builder.split_digits
    assert [builder.tok.decode([t]) for t in builder.answer_ids("1234567")] == [" ", *"1234567"]
    assert not NeedleBuilder(tiny_tokenizer, None, split_digits=False).tok.split_digits


def test_mix_options():
    from shareddiff.data.needle import mix_options

    assert mix_options("needle:0.2") == {
        "fraction": 0.2,
        "max_needles": 4,
        "answer_weight": 1.0,
        "min_len": None,
        "split_digits": True,
    }
    assert mix_options("needle:0.5:6:answer_weight=10:min_len=256:digits=bpe") == {
        "fraction": 0.5,
        "max_needles": 6,
        "answer_weight": 10.0,
        "min_len": 256,
        "split_digits": False,
    }
    for bad in ("needle:0.2:weight=3", "needle:0.2:digits=some", "needle", "needle:0.2:answer_weight=-1", "hay:0.2"):
        with pytest.raises(ValueError, match=r"is not understood.*answer_weight"):
            mix_options(bad)


def test_short_samples_fill_the_end_of_a_row(builder):
    for seed in range(5):
        row, (start, end) = builder.training_row(600, 2, random.Random(seed), sample_len=300)
        assert len(row) == 600
        text = builder.tok.decode(row[start:end])
        assert text[0] == " " and text[1:].isdigit() and builder.tok.decode(row[:start]).endswith(" is")
        eos = [i for i, t in enumerate(row) if t == builder.tok.eos_id]
        assert eos and 600 - 300 - 1 in eos  # the filler head closes with end-of-text right before the sample
        assert "The magic number of" not in builder.tok.decode(row[:300])


def test_a_sample_one_token_short_of_its_row_gets_only_the_end_of_text_head(builder):
    # min_len draws sample lengths up to the row's; length - 1 leaves a filler head of no tokens, which once
    # failed inside TokenData.window (np.concatenate of nothing) some thousand rows into a run
    for seed in range(3):
        row, (start, end) = builder.training_row(600, 2, random.Random(seed), sample_len=599)
        assert (
            len(row) == 600
            and row[0] == builder.tok.eos_id
            and builder.tok.decode(row[1:]).count("The magic number of") >= 3
        )
        assert builder.tok.decode(row[start:end])[1:].isdigit() and builder.tok.decode(row[:start]).endswith(" is")
    assert builder.filler.window(5, 0).dtype == np.int64 and builder.filler.window(5, 0).shape == (0,)


def test_digit_accuracy_and_answer_logprob_by_hand():
    import math

    from shareddiff.eval.needle import answer_logprob, digit_accuracy

    assert digit_accuracy("5202798", "5202798") == 1.0
    assert digit_accuracy("5202790", "5202798") == pytest.approx(6 / 7)
    assert digit_accuracy("52", "5202798") == pytest.approx(2 / 7)  # missing digits are wrong
    assert digit_accuracy("15202798", "5202798") == 0.0  # place by place: a shifted answer gets none
    assert digit_accuracy("", "5202798") == 0.0
    last = torch.tensor([0.0, 1.0, 2.0])
    teacher = torch.tensor([[2.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    norm1 = math.log(1 + math.e + math.e**2)
    norm2 = math.log(math.e**2 + 2)
    expected = (1.0 - norm1) + (0.0 - norm2) + math.log(1 / 3)  # answer tokens 1, 2, 0
    assert answer_logprob(last, teacher, [1, 2, 0]) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("queries", [1, 2])
def test_scores_match_a_full_forward_and_generate(seed, builder, queries):
    """The cached scoring equals the uncached reference: log p(answer) from one forward over prompt +
    answer (float64 log-softmax), exact match and per-digit accuracy from `generate` at temperature 0."""
    from shareddiff import ModelConfig, build_model
    from shareddiff.eval.needle import digit_accuracy, score_sample
    from shareddiff.generation import generate

    model = build_model(ModelConfig(attention="diff", vocab_size=300, max_seq_len=512)).eval()
    sample = builder.sample(300, 2, queries, 0.5, random.Random(seed))
    scores = score_sample(model, builder, sample)
    prompt = list(sample.ids)
    for i, city in enumerate(sample.queries):
        number = sample.numbers[city]
        answer = builder.answer_ids(number)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + answer])).double().log_softmax(-1)[0]
        reference = sum(logits[len(prompt) - 1 + j, token].item() for j, token in enumerate(answer))
        assert scores[i]["answer_logprob"] == pytest.approx(reference, rel=1e-4)
        max_new = len(builder.tok.encode(" 12345678.")) + 1
        out = generate(model, torch.tensor([prompt]), max_new, temperature=0)
        digits = _digits_of(builder.tok.decode(out[0, len(prompt) :].tolist()))
        assert scores[i]["correct"] == (digits == number)
        assert scores[i]["digit_accuracy"] == digit_accuracy(digits, number)
        next_city = sample.queries[i + 1] if i + 1 < len(sample.queries) else None
        prompt += builder.follow_up_ids(number, next_city)


def _digits_of(text: str) -> str:
    import re

    match = re.search(r"\d+", text)
    return match.group(0) if match else ""


@pytest.mark.parametrize("split_digits", [True, False])
def test_probe_matches_one_prompt_at_a_time(seed, tiny_tokenizer, tiny_data, split_digits):
    """The trainer's batched, padded probe equals an unbatched float64 reference per prompt."""
    from shareddiff import ModelConfig, build_model
    from shareddiff.train.probes import NeedleProbe

    builder = NeedleBuilder(tiny_tokenizer, load_split(tiny_data, "val"), split_digits=split_digits)
    probe = NeedleProbe(builder, 200, max_needles=2, samples=5, seed=seed)
    model = build_model(ModelConfig(attention="shared_diff", vocab_size=300, max_seq_len=256)).eval()
    scores = probe(model, batch_size=3)
    logprobs, hits, exact = [], [], []
    for prompt, answer in probe.rows:
        with torch.no_grad():
            logits = model(torch.tensor([prompt + answer])).double().log_softmax(-1)[0, len(prompt) - 1 : -1]
        logprobs.append(sum(logits[j, t].item() for j, t in enumerate(answer)))
        right = [int(logits[j].argmax()) == t for j, t in enumerate(answer)]
        hits += right
        exact.append(all(right))
    assert scores["needle_answer_logprob"] == pytest.approx(sum(logprobs) / 5, rel=1e-4)
    assert scores["needle_token_accuracy"] == sum(hits) / len(hits)
    assert scores["needle_accuracy"] == sum(exact) / 5
    assert model.training is False


def test_heatmap_labels_its_colour_bar(tmp_path, saved_figures):
    from shareddiff.plots import plot_needle_heatmap

    cells = [{"length": n, "depth": d, "accuracy": 0.5, "n": 2} for n in (1024, 2048) for d in (0.0, 1.0)]
    plot_needle_heatmap({"cells": cells}, tmp_path / "needle.png", "title")
    colour_bar = saved_figures[0].axes[1]
    assert colour_bar.get_ylabel() == "retrieval accuracy (queried numbers right)"
    assert (tmp_path / "needle.png").stat().st_size > 5000
