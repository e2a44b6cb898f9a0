"""Shared DIFF attention: independent reference, zero-update limit, merged weights, initialisation."""

import math

import pytest
import torch
import torch.nn.functional as F

from shareddiff import ModelConfig
from shareddiff.attention import SharedDiffAttention, SharedDiffHeadsAttention
from shareddiff.layers import apply_rope, rope_angles
from tests.attention.test_diff import TOL, randomise_extras, run_module
from tests.conftest import rel_err
from tests.reference import depth_lambda_init, differential_heads

CONFIGS = {
    "branches": dict(base_sharing="branches", lowrank_rank=4),
    "heads": dict(base_sharing="heads", lowrank_rank=3),
    "branches-gqa": dict(base_sharing="branches", lowrank_rank=4, n_heads=4, n_kv_heads=2),
    "heads-gqa": dict(base_sharing="heads", lowrank_rank=2, n_heads=4, n_kv_heads=2),
}


def make(name: str, **extra):
    config = ModelConfig(**{"attention": "shared_diff", "d_model": 48, "n_heads": 3, **CONFIGS[name], **extra})
    cls = SharedDiffAttention if config.base_sharing == "branches" else SharedDiffHeadsAttention
    module = cls(config, layer_idx=2)
    module.reset_parameters(0.2, 0.2)
    randomise_extras(module)
    return config, module


def dense_factors(module, name):
    """(W, A, B) of one branch as dense float64 matrices in X·W form, read off the parameters."""
    base = (module.wq if name[0] == "q" else module.wk).weight.detach().double().T
    a = getattr(module, f"{name}_a").weight.detach().double().T
    b = getattr(module, f"{name}_b")
    b = b.detach().double() if isinstance(b, torch.nn.Parameter) else b.weight.detach().double().T
    return base, a, b


def branch_heads(module, x64, name, heads, d, sharing):
    """Per-head (N, d) projections of one branch computed from the math of architecture §4."""
    base, a, b = dense_factors(module, name)
    if sharing == "branches":  # Q = X (W + A B); head i takes columns [i·d, (i+1)·d)
        full = x64 @ (base + a @ b)
        return [full[:, i * d : (i + 1) * d] for i in range(heads)]
    r = module.rank  # heads: head i uses W + A_i B_i with A_i = A[:, i·r:(i+1)·r], B_i = b[i]
    return [x64 @ (base + a[:, i * r : (i + 1) * r] @ b[i]) for i in range(heads)]


def shared_diff_reference(module, x64: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """The Shared DIFF layer on one sequence ``x64`` (N, D) in float64: projections from the math of §4
    (``branch_heads``), the rest from ``reference.py``."""
    h, h_kv, d = config.n_heads, config.n_kv_heads, config.head_dim
    heads = {"q": h, "k": h_kv}
    proj = {b: branch_heads(module, x64, b, heads[b[0]], d, config.base_sharing) for b in ("q1", "q2", "k1", "k2")}
    v = x64 @ module.wv.weight.detach().double().T
    group = h // h_kv  # GQA: head i reads key/value head i // group
    norm = module.head_norm
    return differential_heads(
        x64,
        proj["q1"],
        proj["q2"],
        [proj["k1"][i // group] for i in range(h)],
        [proj["k2"][i // group] for i in range(h)],
        [v[:, (i // group) * 2 * d : (i // group + 1) * 2 * d] for i in range(h)],
        [getattr(module, f"lambda_{k}").detach() for k in ("q1", "k1", "q2", "k2")],
        config.lambda_init if config.lambda_init is not None else depth_lambda_init(module.layer_idx),
        norm.weight.detach() if norm is not None and norm.weight is not None else None,
        module.wo.weight.detach().double().T,
        theta=config.rope_theta,
        head_norm=norm is not None,
    )


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layer_matches_reference(seed, name, dtype):
    """Reference: ``shared_diff_reference`` (float64); float32 within 1e-5, float64 within 1e-12."""
    config, module = make(name)
    module.to(dtype)
    x = torch.randn(1, 17, config.d_model, dtype=dtype)
    assert rel_err(run_module(module, x, config)[0], shared_diff_reference(module, x[0].double(), config)) <= TOL[dtype]


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("fused", [True, False])
def test_effective_qk_weights_reproduce_projections(seed, name, fused):
    config, module = make(name)
    x = torch.randn(2, 9, config.d_model, dtype=torch.float64)
    module.double()
    module.fuse_projections = fused
    weights = module.effective_qk_weights()
    d, h, h_kv = config.head_dim, config.n_heads, config.n_kv_heads
    assert [tuple(w.shape) for w in weights] == [(48, h * d)] * 2 + [(48, h_kv * d)] * 2
    for w, projected in zip(weights, module.project_qkv(x)[:4], strict=True):
        heads = projected.shape[2]
        torch.testing.assert_close(x @ w, projected.reshape(2, 9, heads * d), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["branches", "heads"])
@pytest.mark.parametrize("head_norm", [False, True])
def test_zero_updates_give_one_minus_lambda_single_map(seed, name, head_norm):
    """With B = 0 both branches are X W: out = (1 − λ)·softmax(q kᵀ/√d)·V (then the head norm)."""
    config, module = make(name, head_norm=head_norm)
    with torch.no_grad():
        for b in ("q1", "q2", "k1", "k2"):
            factor = getattr(module, f"{b}_b")
            (factor if isinstance(factor, torch.nn.Parameter) else factor.weight).zero_()
    bsz, n, h, d = 2, 15, config.n_heads, config.head_dim
    x = torch.randn(bsz, n, config.d_model)
    cos, sin = rope_angles(torch.arange(n), d, config.rope_theta)

    def heads_of(t):
        return t.view(bsz, n, -1, d) if t.shape[-1] == h * d else t.view(bsz, n, 1, d).expand(bsz, n, h, d)

    q = apply_rope(heads_of(module.wq(x)), cos, sin).transpose(1, 2)
    k = apply_rope(heads_of(module.wk(x)), cos, sin).transpose(1, 2)
    v = module.wv(x).view(bsz, n, h, 2 * d).transpose(1, 2)
    lam = module.lam()
    single = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # one map for both branches
    out = (1 - lam) * single
    if head_norm:
        out = module.head_norm(out) * (1 - module.lambda_init)
    expected = module.wo(out.transpose(1, 2).reshape(bsz, n, -1))
    assert rel_err(run_module(module, x, config), expected) <= 1e-5


def test_lora_init_starts_with_identical_branches(seed):
    config, _ = make("branches")
    module = SharedDiffAttention(ModelConfig(**{**config.to_dict(), "lowrank_init": "lora"}), 0)
    module.reset_parameters(0.02, 0.02)
    q1, q2, k1, k2 = module.effective_qk_weights()
    assert torch.equal(q1, q2) and torch.equal(k1, k2)


def test_random_init_update_spread(seed):
    """ "random" init: the low-rank update's output spread is ≈ 1/√3 of the base's (architecture §4)."""
    config = ModelConfig(attention="shared_diff", d_model=512, n_heads=4, lowrank_rank=32)
    module = SharedDiffAttention(config, 0)
    module.reset_parameters(0.02, 0.02)
    x = torch.randn(4096, 512)
    base = module.wq(x)
    update = module.q1_b(module.q1_a(x))
    ratio = (update.std() / base.std()).item()
    assert abs(ratio - 1 / math.sqrt(3)) < 0.05, ratio
    assert not torch.equal(module.q1_b.weight, module.q2_b.weight)
