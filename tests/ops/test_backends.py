"""One backend rule for both ops: every name an op cannot run is refused with a ValueError that names the
field, the value and the allowed names; at the op, at the model and at recipe validation."""

import pytest
import torch

from shareddiff import ModelConfig, build_model
from shareddiff.config import RunConfig
from shareddiff.ops import differential_attention, differential_v2_attention, softmax_attention

SOFTMAX_VARIANTS = ["standard", "diff_v2", "shared_diff_v2"]
REFUSED_BY_SOFTMAX = {
    "triton": r"backend='triton': attention backend 'triton' is not supported by softmax_attention.*'eager', 'sdpa'",
    "flash9": r"unknown attention backend 'flash9' \(backend\); use one of \['auto', 'eager', 'sdpa'\]",
    "SDPA": r"unknown attention backend 'SDPA'",  # names are exact, as in the registry
    "": r"unknown attention backend ''",
}


@pytest.mark.parametrize("name", list(REFUSED_BY_SOFTMAX))
def test_softmax_op_refuses_names_it_cannot_run(name):
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match=REFUSED_BY_SOFTMAX[name]):
        softmax_attention(q, q, q, backend=name)


@pytest.mark.parametrize("name", list(REFUSED_BY_SOFTMAX))
def test_diff_v2_op_refuses_names_it_cannot_run(name):
    q, k, lam = torch.randn(1, 4, 4, 8), torch.randn(1, 2, 4, 8), torch.rand(1, 2, 4)
    with pytest.raises(ValueError, match=REFUSED_BY_SOFTMAX[name]):
        differential_v2_attention(q, k, k, lam, backend=name)


@pytest.mark.parametrize("name", ["flash9", "SDPA", ""])
def test_differential_op_refuses_unknown_names(name):
    q, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 16)
    message = rf"unknown attention backend '{name}' \(backend\); use one of \['auto', 'eager', 'sdpa'"
    with pytest.raises(ValueError, match=message):
        differential_attention(q, q, q, q, v, 0.5, backend=name)


@pytest.mark.parametrize("attention", SOFTMAX_VARIANTS)
@pytest.mark.parametrize("name", ["triton", "flash9"])
def test_model_refuses_a_backend_its_op_cannot_run(attention, name):
    model = build_model(ModelConfig(attention=attention, d_model=64, n_heads=2, n_layers=1, vocab_size=50))
    with pytest.raises(ValueError, match=rf"attention backend '{name}'.*use one of \['auto', 'eager', 'sdpa'\]"):
        model.set_attention_backend(name)
    assert all(block.attention.backend == "auto" for block in model.layers)  # left as it was


def test_softmax_backends_give_the_same_output(seed):
    """ "auto" is SDPA: bitwise; "eager" (float32 softmax) agrees to 1e-6."""
    q, k, v = torch.randn(2, 4, 9, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    sdpa = softmax_attention(q, k, v, backend="sdpa")
    assert torch.equal(softmax_attention(q, k, v, backend="auto"), sdpa)
    torch.testing.assert_close(softmax_attention(q, k, v, backend="eager"), sdpa, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("preset", "name", "message"),
    [
        ("transformer-tiny", "triton", r"train.attn_backend='triton'.*model.attention='standard'"),
        ("diff_v2-tiny", "triton", r"train.attn_backend='triton'.*model.attention='diff_v2'"),
        ("shared_diff_v2-tiny", "triton", r"train.attn_backend='triton'.*model.attention='shared_diff_v2'"),
        ("shared_diff-tiny", "flash9", r"unknown attention backend 'flash9' \(train.attn_backend\)"),
        ("transformer-tiny", "flash9", r"unknown attention backend 'flash9' \(train.attn_backend\)"),
    ],
)
def test_recipe_validation_refuses_the_backend(preset, name, message):
    run = RunConfig(model={"preset": preset})
    run.train.attn_backend = name
    with pytest.raises(ValueError, match=message):
        run.validate()


@pytest.mark.parametrize("preset", ["transformer-tiny", "diff-tiny", "shared_diff-tiny", "diff_v2-tiny"])
@pytest.mark.parametrize("name", ["auto", "eager", "sdpa"])
def test_recipe_validation_accepts_the_common_names(preset, name):
    run = RunConfig(model={"preset": preset})
    run.train.attn_backend = name
    run.validate()
