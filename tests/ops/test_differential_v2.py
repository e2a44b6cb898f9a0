"""differential_v2_attention against a float64 reference written here from the DIFF V2 README."""

import math

import pytest
import torch

from shareddiff.ops import differential_v2_attention, eager_differential_v2_attention
from tests.conftest import rel_err


def reference(q, k, v, lam, causal=True, mask=None):
    """O_j = softmax(q_j k_gᵀ/√d + M) v_g with g = j // (2h/h_kv); out_i = O_2i − λ_i·O_2i+1; float64 loops.

    M is causal (queries are the last N keys), none, or ``mask`` (B, 1, N, N_k) where given."""
    b, q_heads, n, d = q.shape
    n_k, group = k.shape[2], q_heads // k.shape[1]
    allowed = torch.tensor([[not causal or j <= i + n_k - n for j in range(n_k)] for i in range(n)])
    out = torch.empty(b, q_heads // 2, n, d, dtype=torch.float64)
    for batch in range(b):
        o = []
        for j in range(q_heads):
            s = q[batch, j].double() @ k[batch, j // group].double().T / math.sqrt(d)
            s = s.masked_fill(~(allowed if mask is None else mask[batch, 0]), float("-inf"))
            o.append(s.softmax(-1) @ v[batch, j // group].double())
        for i in range(q_heads // 2):
            out[batch, i] = o[2 * i] - lam[batch, i].double()[:, None] * o[2 * i + 1]
    return out


SHAPES = [  # (B, h, h_kv, N, N_k, d): h output heads, 2h query heads
    (1, 1, 1, 1, 1, 8),
    (2, 3, 3, 13, 13, 16),
    (2, 4, 2, 37, 37, 8),  # GQA: 8 query heads over 2 key/value heads
    (1, 2, 1, 5, 29, 16),  # queries after a cache of 24 positions
    (1, 2, 2, 1, 19, 16),  # one decode step
]


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [True, False])
def test_backend_matches_float64_reference(seed, backend, shape, causal):
    b, h, h_kv, n, n_k, d = shape
    q = torch.randn(b, 2 * h, n, d, requires_grad=True)
    k, v = (torch.randn(b, h_kv, n_k, d, requires_grad=True) for _ in range(2))
    # λ in [0.1, 0.9]: near 1 the difference O_2i − λ·O_2i+1 cancels (one key: (1 − λ)·v) and float32's
    # relative error grows as 1/(1 − λ)
    lam = (torch.rand(b, h, n) * 0.8 + 0.1).requires_grad_(True)
    out = differential_v2_attention(q, k, v, lam, causal=causal, backend=backend)
    inputs64 = [t.detach().double().requires_grad_(True) for t in (q, k, v, lam)]
    expected = reference(*inputs64, causal=causal)
    assert out.shape == (b, h, n, d)
    assert rel_err(out, expected) <= 1e-5
    grad = torch.randn_like(expected)
    out.backward(grad.float())
    expected.backward(grad)
    for got, want in zip((q, k, v, lam), inputs64, strict=True):
        assert rel_err(got.grad, want.grad) <= 1e-4


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("shape", [(2, 2, 2, 13, 13, 16), (3, 4, 2, 6, 19, 8), (2, 2, 1, 1, 9, 16)])
def test_mask_matches_float64_reference(seed, backend, shape):
    """A random boolean (B, 1, N, N_k) mask (each query keeps at least one key), forward and gradients."""
    b, h, h_kv, n, n_k, d = shape
    q = torch.randn(b, 2 * h, n, d, requires_grad=True)
    k, v = (torch.randn(b, h_kv, n_k, d, requires_grad=True) for _ in range(2))
    lam = (torch.rand(b, h, n) * 0.8 + 0.1).requires_grad_(True)
    mask = torch.rand(b, 1, n, n_k) < 0.5
    mask[..., torch.arange(n), torch.randint(0, n_k, (n,))] = True
    inputs64 = [t.detach().double().requires_grad_(True) for t in (q, k, v, lam)]
    out = differential_v2_attention(q, k, v, lam, causal=False, backend=backend, mask=mask)
    expected = reference(*inputs64, causal=False, mask=mask)
    assert rel_err(out, expected) <= 1e-5
    grad = torch.randn_like(expected)
    out.backward(grad.float())
    expected.backward(grad)
    for got, want in zip((q, k, v, lam), inputs64, strict=True):
        assert rel_err(got.grad, want.grad) <= 1e-4
    with pytest.raises(ValueError, match="either causal=True or a mask"):
        differential_v2_attention(q, k, v, lam, mask=mask)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[2], SHAPES[3], SHAPES[4]])
def test_float64_inputs_are_computed_in_float64(seed, backend, shape):
    """float64 inputs: output (float64) and gradients ≤ 1e-12 from the float64 reference; the eager maps are
    float64 and reproduce the output. (A float32 softmax would leave ~1e-7.)"""
    b, h, h_kv, n, n_k, d = shape
    q = torch.randn(b, 2 * h, n, d, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(b, h_kv, n_k, d, dtype=torch.float64, requires_grad=True) for _ in range(2))
    lam = (torch.rand(b, h, n, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    out = differential_v2_attention(q, k, v, lam, backend=backend)
    inputs64 = [t.detach().clone().requires_grad_(True) for t in (q, k, v, lam)]
    expected = reference(*inputs64)
    assert out.dtype == torch.float64
    assert rel_err(out, expected) <= 1e-12
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    for got, want in zip((q, k, v, lam), inputs64, strict=True):
        assert rel_err(got.grad, want.grad) <= 1e-12
    if backend == "eager":
        _, maps = eager_differential_v2_attention(q, k, v, lam)
        assert maps.dtype == torch.float64
        assert rel_err(maps @ v.repeat_interleave(h // h_kv, dim=1), out) <= 1e-12


def test_eager_maps_are_the_pair_differences(seed):
    b, h, h_kv, n, d = 2, 4, 2, 9, 8
    q, k, v = torch.randn(b, 2 * h, n, d), torch.randn(b, h_kv, n, d), torch.randn(b, h_kv, n, d)
    lam = torch.rand(b, h, n)
    out, maps = eager_differential_v2_attention(q, k, v, lam)
    assert maps.shape == (b, h, n, n)
    assert torch.equal(maps.triu(1), torch.zeros_like(maps))  # causal
    assert rel_err(maps @ v.repeat_interleave(h // h_kv, dim=1), out) <= 1e-5
    assert rel_err(maps.sum(-1), 1 - lam) <= 1e-5  # each softmax row sums to 1


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (((1, 3, 4, 8), (1, 1, 4, 8), (1, 1, 4, 8), (1, 1, 4)), "even number of query heads"),
        (((1, 4, 4, 8), (1, 3, 4, 8), (1, 3, 4, 8), (1, 2, 4)), "key/value heads 3 must divide the 2 head pairs"),
        (((1, 8, 4, 8), (1, 8, 4, 8), (1, 8, 4, 8), (1, 4, 4)), "key/value heads 8 must divide the 4 head pairs"),
        (((1, 4, 4, 8), (1, 2, 4, 8), (1, 2, 4, 16), (1, 2, 4)), "k and v must both be"),
        (((1, 4, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8), (1, 4, 4)), r"lam must be \(B, h, N\) = \(1, 2, 4\)"),
    ],
)
def test_bad_shapes_are_refused(shapes, message):
    with pytest.raises(ValueError, match=message):
        differential_v2_attention(*(torch.zeros(s) for s in shapes))
