"""DIFF V2 and Shared DIFF V2 layers against the independent float64 re-implementation in tests/reference.py."""

import pytest
import torch

from shareddiff import ModelConfig
from shareddiff.attention import DiffV2Attention, SharedDiffV2Attention
from tests.attention.test_diff import TOL, run_module
from tests.conftest import rel_err
from tests.reference import causal_softmax_head, diff_v2_heads

LAYOUTS = {  # D = 48: h heads of d = 48 / h
    "mha": dict(n_heads=3),
    "gqa": dict(n_heads=4, n_kv_heads=2),
    "mqa": dict(n_heads=4, n_kv_heads=1),
}


def make(attention: str, layout: str, **extra):
    config = ModelConfig(attention=attention, d_model=48, **LAYOUTS[layout], **extra)
    cls = DiffV2Attention if attention == "diff_v2" else SharedDiffV2Attention
    module = cls(config, layer_idx=1)
    module.reset_parameters(0.2, 0.2)  # large enough that λ = sigmoid(X W_λ) varies well away from 1/2
    return config, module


def dense(linear: torch.nn.Linear) -> torch.Tensor:
    """A Linear's weight as a float64 matrix in X·W form."""
    return linear.weight.detach().double().T


def columns(t: torch.Tensor, d: int) -> list[torch.Tensor]:
    """(N, H·d) → H heads of (N, d): head j takes columns [j·d, (j+1)·d)."""
    return list(t.split(d, dim=-1))


def query_heads(module, x64, d) -> list[torch.Tensor]:
    """The 2h query heads from the description: V2's W_Q ∈ R^{D×2h·d} read as 2h heads in order; Shared
    DIFF V2's pair i = (head i of X(W_Q + A1 B1), head i of X(W_Q + A2 B2))."""
    if isinstance(module, DiffV2Attention):
        return columns(x64 @ dense(module.wq), d)
    q1 = columns(x64 @ (dense(module.wq) + dense(module.q1_a) @ dense(module.q1_b)), d)
    q2 = columns(x64 @ (dense(module.wq) + dense(module.q2_a) @ dense(module.q2_b)), d)
    return [q for pair in zip(q1, q2, strict=True) for q in pair]


def v2_reference(module, x64: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """The DIFF V2 / Shared DIFF V2 layer on one sequence ``x64`` (N, D) in float64, from its parameters and
    ``reference.py``."""
    d = config.head_dim
    return diff_v2_heads(
        x64,
        query_heads(module, x64, d),
        columns(x64 @ dense(module.wk), d),
        columns(x64 @ dense(module.wv), d),
        dense(module.lambda_proj),
        dense(module.wo),
        theta=config.rope_theta,
    )


@pytest.mark.parametrize("attention", ["diff_v2", "shared_diff_v2"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layer_matches_reference(seed, attention, layout, dtype):
    """Reference: ``v2_reference`` (float64); float32 within 1e-5, float64 within 1e-12 (λ = sigmoid(X W_λ) too)."""
    config, module = make(attention, layout, lowrank_rank=5 if attention == "shared_diff_v2" else None)
    module.to(dtype)
    x = torch.randn(1, 17, config.d_model, dtype=dtype)
    assert rel_err(run_module(module, x, config)[0], v2_reference(module, x[0].double(), config)) <= TOL[dtype]


def test_lambda_varies_per_token_and_head(seed):
    """The reference test above only binds if λ is not constant: check its spread at this init."""
    config, module = make("diff_v2", "mha")
    lam = torch.sigmoid(module.lambda_proj(torch.randn(64, config.d_model)))
    assert lam.std(0).min() > 0.1  # over tokens, every head
    assert (lam[:, 0] - lam[:, 1]).abs().mean() > 0.1  # between heads


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_shared_v2_zero_updates_give_one_minus_lambda_single_map(seed, layout):
    """With B1 = B2 = 0 both query heads of pair i are head i of X W_Q:
    out_i = (1 − λ_i)·softmax(q_i k_iᵀ/√d)·V_i per token and head, then W_O."""
    config, module = make("shared_diff_v2", layout, lowrank_rank=5)
    with torch.no_grad():
        module.q1_b.weight.zero_()
        module.q2_b.weight.zero_()
    h, d, n = config.n_heads, config.head_dim, 15
    x = torch.randn(1, n, config.d_model)
    x64 = x[0].double()
    q, k, v = (columns(x64 @ dense(lin), d) for lin in (module.wq, module.wk, module.wv))
    group = h // config.n_kv_heads
    lam = torch.sigmoid(x64 @ dense(module.lambda_proj))  # (N, h)
    heads = [(1 - lam[:, i : i + 1]) * causal_softmax_head(q[i], k[i // group], v[i // group], 1e4) for i in range(h)]
    expected = torch.cat(heads, dim=-1) @ dense(module.wo)
    assert rel_err(run_module(module, x, config)[0], expected) <= 1e-5


def test_lora_init_starts_with_identical_pairs(seed):
    config, module = make("shared_diff_v2", "gqa", lowrank_init="lora")
    module.reset_parameters(0.02, 0.02)
    q = module.project(torch.randn(2, 7, config.d_model))[0]  # (B, N, 2h, d)
    assert torch.equal(q[:, :, 0::2], q[:, :, 1::2])


@pytest.mark.parametrize("layout", ["mha", "gqa"])
def test_effective_query_weight_gives_the_same_diff_v2(seed, layout):
    """Shared DIFF V2 merged into a dense DIFF V2 (W_Q ← effective_query_weight()) computes the same layer."""
    config, shared = make("shared_diff_v2", layout, lowrank_rank=5)
    v2 = DiffV2Attention(ModelConfig(attention="diff_v2", d_model=48, **LAYOUTS[layout]), layer_idx=1)
    with torch.no_grad():
        v2.wq.weight.copy_(shared.effective_query_weight().t())
        for name in ("wk", "wv", "wo", "lambda_proj"):
            getattr(v2, name).weight.copy_(getattr(shared, name).weight)
    x = torch.randn(2, 11, config.d_model)
    assert rel_err(run_module(v2, x, config), run_module(shared, x, config)) <= 1e-5
