"""The token loss against a float64 hand computation: plain, ignored targets, and answer-weighted
needle rows straight from the loader."""

import math
import random

import pytest
import torch
import torch.nn.functional as F

from shareddiff import ModelConfig, build_model
from shareddiff.data import WindowLoader, load_split
from shareddiff.data.loader import IGNORE
from shareddiff.data.needle import parse_mix
from shareddiff.train.loss import target_positions, token_loss


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


@pytest.mark.parametrize("updates", [0, 3])
def test_loss_at_the_target_positions_equals_the_full_loss(seed, updates):
    """MQAR training computes the head only at each row's answers (``target_positions`` + ``logits_at``): in
    float64 the loss and every parameter's gradient equal those of the full (B, T, vocab) logits, on fresh
    MQAR batches (with and without value updates). (``token_loss`` itself works in float32: the float64
    cross-entropy is used here so that only the head's positions differ.)"""
    from shareddiff.config import MQARConfig
    from shareddiff.data.mqar import mqar_batch

    config = MQARConfig(vocab_size=64, pairs=4, updates=updates)
    inputs, targets = mqar_batch(config, 32, 6, torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()))))
    at = target_positions(targets, config.n_queries())
    assert at.shape == (6, config.n_queries())
    assert torch.equal(at.sort(dim=1).values, (targets != IGNORE).nonzero()[:, 1].view(6, -1))
    model = build_model(
        ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=32, attention="shared_diff")
    )
    model = model.double()
    losses, grads = [], []
    for sparse in (False, True):
        model.zero_grad()
        logits, y = (model(inputs, logits_at=at), targets.gather(1, at)) if sparse else (model(inputs), targets)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-12)
    assert ((grads[1] - grads[0]).norm() / grads[0].norm()).item() <= 1e-12


def test_a_row_with_fewer_targets_keeps_the_loss_right(seed):
    logits = torch.randn(2, 6, 5, dtype=torch.float64)
    targets = torch.full((2, 6), IGNORE)
    targets[0, [1, 4]] = torch.tensor([2, 3])
    targets[1, 2] = 0  # one target where two are asked for: an IGNORE position fills the row
    at = target_positions(targets, 2)
    picked = logits.gather(1, at[..., None].expand(-1, -1, 5))
    assert token_loss(picked, targets.gather(1, at)).item() == pytest.approx(
        token_loss(logits, targets).item(), rel=1e-6
    )
