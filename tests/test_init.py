"""The two initialisation schemes (ModelConfig.init_scheme) give the weight statistics they state."""

import math

import pytest
import torch
from torch import nn

from shareddiff.config import ModelConfig
from shareddiff.model import build_model

FAMILIES = ["transformer", "diff", "shared_diff", "diff_v2", "shared_diff_v2"]


def _linears(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


@pytest.mark.parametrize("family", FAMILIES)
def test_pytorch_scheme_is_the_default_linear_init(family, seed):
    config = ModelConfig.from_preset(f"{family}-small", init_scheme="pytorch", n_layers=2)
    model = build_model(config)
    emb = model.tok_embeddings.weight.double()
    assert emb.std().item() == pytest.approx(config.d_model**-0.5, rel=0.02)
    for name, lin in _linears(model).items():
        w = lin.weight.double()
        bound = 1 / math.sqrt(lin.in_features)
        assert w.abs().max().item() <= bound + 1e-7, name  # U(−1/√fan_in, 1/√fan_in)
        if w.numel() > 20_000:
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05), name  # uniform's std
    # no depth scaling: an output projection has the spread of an input projection of the same fan-in
    block = model.layers[-1]
    assert block.attention.wo.weight.std().item() == pytest.approx(
        1 / math.sqrt(3 * block.attention.wo.in_features), rel=0.05
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_nanogpt_scheme_has_normal_weights_and_depth_scaled_outputs(family, seed):
    config = ModelConfig.from_preset(f"{family}-small", n_layers=4)
    model = build_model(config)
    std, out_std = config.init_std, config.init_std / math.sqrt(2 * config.n_layers)
    assert model.tok_embeddings.weight.std().item() == pytest.approx(std, rel=0.02)
    block = model.layers[0]
    assert block.attention.wo.weight.std().item() == pytest.approx(out_std, rel=0.05)
    assert block.feed_forward.w_down.weight.std().item() == pytest.approx(out_std, rel=0.05)
    assert block.feed_forward.w_up.weight.std().item() == pytest.approx(std, rel=0.05)


def test_lora_b_stays_zero_and_lambda_vectors_keep_their_init_under_the_pytorch_scheme(seed):
    config = ModelConfig.from_preset("shared_diff-small", init_scheme="pytorch", lowrank_init="lora", n_layers=2)
    attention = build_model(config).layers[0].attention
    for name in ("q1", "q2", "k1", "k2"):
        assert torch.count_nonzero(getattr(attention, f"{name}_b").weight) == 0
        a = getattr(attention, f"{name}_a").weight
        assert a.abs().max().item() <= 1 / math.sqrt(config.d_model) + 1e-7
    lam = torch.cat([attention.lambda_q1, attention.lambda_k1, attention.lambda_q2, attention.lambda_k2])
    assert lam.std().item() == pytest.approx(0.1, rel=0.35)  # N(0, 0.1²) as in the official code, 4·d values


def test_unknown_init_scheme_is_refused():
    with pytest.raises(ValueError, match=r"init_scheme='xavier'.*nanogpt"):
        ModelConfig.from_preset("shared_diff-tiny", init_scheme="xavier")
