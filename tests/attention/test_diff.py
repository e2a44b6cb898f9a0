"""DIFF attention layer against the independent float64 re-implementation in tests/reference.py."""

import pytest
import torch

from shareddiff import ModelConfig
from shareddiff.attention import DiffAttention
from shareddiff.layers import rope_angles
from tests.conftest import rel_err
from tests.reference import depth_lambda_init, differential_heads

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}  # relative error of a layer against the float64 reference


def randomise_extras(module: torch.nn.Module) -> None:
    """Move λ vectors and the head-norm weight off their init so the test sees them."""
    with torch.no_grad():
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            getattr(module, name).normal_(0, 0.3)
        if module.head_norm is not None and module.head_norm.weight is not None:
            module.head_norm.weight.uniform_(0.5, 1.5)


def run_module(module, x, config):
    """The layer on ``x`` (B, N, D) at positions 0..N-1, the RoPE table in x's precision (as the model builds it)."""
    rope = rope_angles(torch.arange(x.shape[1]), config.head_dim, config.rope_theta, x.dtype)
    return module(x, rope)


def diff_reference(module: DiffAttention, x64: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """The DIFF layer on one sequence ``x64`` (N, D) in float64, from its parameters and ``reference.py``."""
    d, h, h_kv = config.head_dim, config.n_heads, config.n_kv_heads
    wq, wk, wv, wo = (getattr(module, k).weight.detach().double().T for k in ("wq", "wk", "wv", "wo"))
    q, k, v = x64 @ wq, x64 @ wk, x64 @ wv
    # Interleaved sub-heads: columns of sub-head j are [j·d, (j+1)·d); sub-heads 2i, 2i+1 belong to head i.
    sub = [lambda t, j=j: t[:, j * d : (j + 1) * d] for j in range(2 * h)]
    group = h // h_kv  # GQA: head i reads key/value head i // group
    lam_init = config.lambda_init if config.lambda_init is not None else depth_lambda_init(module.layer_idx)
    norm = module.head_norm
    return differential_heads(
        x64,
        [sub[2 * i](q) for i in range(h)],
        [sub[2 * i + 1](q) for i in range(h)],
        [sub[2 * (i // group)](k) for i in range(h)],
        [sub[2 * (i // group) + 1](k) for i in range(h)],
        [v[:, (i // group) * 2 * d : (i // group + 1) * 2 * d] for i in range(h)],
        [getattr(module, f"lambda_{n_}").detach() for n_ in ("q1", "k1", "q2", "k2")],
        lam_init,
        norm.weight.detach() if norm is not None and norm.weight is not None else None,
        wo,
        theta=config.rope_theta,
        head_norm=norm is not None,
    )


@pytest.mark.parametrize("layer_idx", [0, 3])
@pytest.mark.parametrize("head_norm", [True, False])
@pytest.mark.parametrize("lambda_init", [None, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diff_layer_matches_reference(seed, layer_idx, head_norm, lambda_init, dtype):
    """Reference: ``diff_reference`` (float64). A float32 layer within 1e-5; a float64 one within 1e-12 (float64
    throughout: RoPE table, λ, softmax, head norm)."""
    config = ModelConfig(attention="diff", d_model=48, n_heads=3, head_norm=head_norm, lambda_init=lambda_init)
    module = DiffAttention(config, layer_idx).to(dtype)
    module.reset_parameters(0.2, 0.2)
    randomise_extras(module)
    x = torch.randn(1, 19, config.d_model, dtype=dtype)
    expected = diff_reference(module, x[0].double(), config)
    assert rel_err(run_module(module, x, config)[0], expected) <= TOL[dtype]


def test_lambda_init_schedule_values():
    config = ModelConfig(attention="diff", n_layers=4)
    assert [round(config.layer_lambda_init(i), 6) for i in range(3)] == [0.2, 0.355509, 0.470713]
    assert ModelConfig(attention="diff", lambda_init=0.8).layer_lambda_init(5) == 0.8
