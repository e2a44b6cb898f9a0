"""Attention mass on a hand-built map with a known answer, and the probe on a real model."""

import pytest
import torch

from shareddiff import ModelConfig, build_model
from shareddiff.data import load_split
from shareddiff.eval.attention import attention_eval, attention_mass, recording
from shareddiff.eval.needle import NeedleBuilder


def test_mass_on_hand_built_map():
    # one layer, two heads, 6 positions; query row 5; answer span [1, 3); context [0, 5)
    head0 = torch.zeros(6, 6)
    head0[5, :5] = torch.tensor([0.1, 0.4, 0.3, 0.1, 0.1])  # a softmax-like row: answer 0.7, noise 0.3
    head1 = torch.zeros(6, 6)
    head1[5, :5] = torch.tensor([-0.1, 0.5, 0.2, 0.0, 0.2])  # a differential row: |.| sums to 1.0
    result = attention_mass([torch.stack([head0, head1])], row=5, answer=(1, 3), context_end=5)
    assert result["answer"] == pytest.approx((0.7 / 1.0 + 0.7 / 1.0) / 2)
    assert result["noise"] == pytest.approx((0.3 / 1.0 + 0.1 / 1.0) / 2)


@pytest.mark.parametrize("attention", ["standard", "shared_diff", "diff_v2"])
def test_probe_runs_and_records_every_layer(seed, tiny_tokenizer, tiny_data, attention):
    model = build_model(
        ModelConfig(attention=attention, n_heads=4 if attention == "standard" else 2, vocab_size=300, max_seq_len=256)
    ).eval()
    with recording(model) as maps, torch.no_grad():
        logits = model(torch.randint(0, 300, (1, 20)))
    assert len(maps) == 2 and maps[0].shape == (1, model.config.n_heads, 20, 20)
    model.set_attention_backend("eager")
    assert torch.allclose(model(torch.randint(0, 300, (1, 3))).sum() * 0 + logits.sum(), logits.sum())
    builder = NeedleBuilder(tiny_tokenizer, load_split(tiny_data, "val"))
    result, example = attention_eval(model, builder, 200, [0.0, 1.0], 1, 2, seed=0)
    assert [r["depth"] for r in result["rows"]] == [0.0, 1.0]
    if attention == "standard":  # a softmax row puts all its (positive) mass on context or question
        assert all(0 <= r["answer"] <= 1 and r["answer"] + r["noise"] <= 1 + 1e-6 for r in result["rows"])
    assert example["map"].shape[0] == example["map"].shape[1] == 200
