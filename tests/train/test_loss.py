"""The token loss against a float64 hand computation: plain, ignored targets, and answer-weighted
needle rows straight from the loader."""

import math
import random

import pytest
import torch

from shareddiff import ModelConfig, build_model
from shareddiff.data import WindowLoader, load_split
from shareddiff.data.loader import IGNORE
from shareddiff.data.needle import parse_mix
from shareddiff.train.loss import token_loss


def hand_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> float:
    """Σ w·(−log softmax(z)[y]) / Σ w over targets ≠ IGNORE, one element at a time in Python floats."""
    total, weight_sum = 0.0, 0.0
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            y = int(targets[b, t])
            if y == IGNORE:
                continue
            z = [float(v) for v in logits[b, t]]
            top = max(z)
            nll = -(z[y] - top - math.log(sum(math.exp(v - top) for v in z)))
            w = 1.0 if weights is None else float(weights[b, t])
            total, weight_sum = total + w * nll, weight_sum + w
    return total / weight_sum


def test_plain_and_weighted_loss_match_the_hand_computation(seed):
    logits = torch.randn(3, 4, 7) * 3
    targets = torch.randint(0, 7, (3, 4))
    targets[0, 1] = targets[2, 3] = IGNORE
    weights = torch.rand(3, 4) * 5
    assert token_loss(logits, targets).item() == pytest.approx(hand_loss(logits, targets, None), rel=1e-6)
    assert token_loss(logits, targets, weights).item() == pytest.approx(hand_loss(logits, targets, weights), rel=1e-6)
    ones = token_loss(logits, targets, torch.ones(3, 4))
    assert torch.allclose(ones, token_loss(logits, targets), rtol=1e-6)  # weights of 1 = the plain mean


def test_answer_weighted_needle_batch(seed, tiny_tokenizer, tiny_data):
    """A batch of the needle mix with answer_weight=5: weight 5 on exactly the answer's targets, and the
    trainer's loss on it equals the hand computation."""
    train = load_split(tiny_data, "train")
    mix = parse_mix("needle:0.5:2:answer_weight=5", tiny_tokenizer, train)
    loader = WindowLoader(train, 256, seed=3, mix=mix)  # its batch 0 has needle and corpus rows
    x, y, weights = loader.batch(0, 0, 8, 1)
    assert weights is not None and weights.shape == y.shape
    assert set(weights.unique().tolist()) <= {1.0, 5.0}
    needle_rows = [i for i in range(8) if (weights[i] == 5).any()]
    assert 0 < len(needle_rows) < 8
    tok = mix.builder.tok
    for i in range(8):
        if i not in needle_rows:
            continue
        span = (weights[i] == 5).nonzero().flatten()
        assert torch.equal(span, torch.arange(span[0], span[-1] + 1))  # one contiguous span
        answer = tok.decode(y[i, span].tolist())
        assert answer.startswith(" ") and answer[1:].isdigit() and len(answer) == 8  # " <7 digits>"
        assert tok.decode(x[i, : span[0] + 1].tolist()).endswith("is")  # right after "... is"
        assert tok.decode(x[i].tolist()).count("The magic number of") >= 2
    model = build_model(ModelConfig(attention="shared_diff", vocab_size=tiny_tokenizer.vocab_size, max_seq_len=256))
    with torch.no_grad():
        logits = model(x)
    assert token_loss(logits, y, weights).item() == pytest.approx(hand_loss(logits, y, weights), rel=1e-6)


def test_mix_row_weights_follow_the_answer(tiny_tokenizer, tiny_data):
    mix = parse_mix("needle:1:1:answer_weight=0", tiny_tokenizer, load_split(tiny_data, "train"))
    ids, weights = mix.row(300, random.Random(4))
    assert len(ids) == len(weights) == 300
    zero = (weights == 0).nonzero()[0]
    assert mix.builder.tok.decode([ids[i] for i in zero]).strip().isdigit() and len(zero) == 8


def test_trainer_with_a_weighted_needle_mix_logs_the_probe(make_run):
    from shareddiff.train import train
    from shareddiff.train.metrics import read_metrics

    run = make_run(
        "data.seq_len=256",
        'data.mix="needle:0.5:1:answer_weight=5"',
        "train.max_steps=2",
        "train.eval_every=2",
        "train.micro_batch=2",
    )
    train(run, progress=False)
    final = [r for r in read_metrics(run.train.out_dir) if "val_loss" in r][-1]
    assert {"needle_accuracy", "needle_token_accuracy", "needle_answer_logprob"} <= set(final)
    assert final["needle_answer_logprob"] < 0 and 0 <= final["needle_token_accuracy"] <= 1
