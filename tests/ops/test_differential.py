"""differential_attention backends against a float64 reference written here from architecture §6."""

import math

import pytest
import torch

from shareddiff.ops import differential_attention, eager_differential_attention, resolve_backend, softmax_attention
from tests.conftest import rel_err

TOL = 1e-5  # float32 relative error against float64


def reference(q1, q2, k1, k2, v, lam, causal=True, mask=None):
    """softmax(q1k1ᵀ/√d + M)v − λ·softmax(q2k2ᵀ/√d + M)v in float64; queries are the last N keys.

    M is causal, or ``mask`` (bool, broadcast to (B, h, N, N_k)) where given."""
    q1, q2, k1, k2, v = (t.double() for t in (q1, q2, k1, k2, v))
    h, n, d = q1.shape[1], q1.shape[2], q1.shape[3]
    rep = h // k1.shape[1]
    k1, k2, v = (t.repeat_interleave(rep, dim=1) for t in (k1, k2, v))
    n_k = k1.shape[2]
    allowed = torch.ones(n, n_k, dtype=torch.bool)
    if causal:
        allowed = torch.tensor([[j <= i + n_k - n for j in range(n_k)] for i in range(n)])
    if mask is not None:
        allowed = mask

    def attn(q, k):
        s = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        return torch.where(allowed, s, torch.tensor(float("-inf"), dtype=s.dtype)).softmax(-1) @ v

    lam = lam.double() if isinstance(lam, torch.Tensor) else torch.tensor(lam, dtype=torch.float64)
    lam = lam.view(1, h, 1, 1) if lam.dim() == 1 else lam
    return attn(q1, k1) - lam * attn(q2, k2)


def make_inputs(b, h, h_kv, n, n_k, d, lam_shape, dtype=torch.float32):
    q1, q2 = (torch.randn(b, h, n, d, dtype=dtype) for _ in range(2))
    k1, k2 = (torch.randn(b, h_kv, n_k, d, dtype=dtype) for _ in range(2))
    v = torch.randn(b, h_kv, n_k, 2 * d, dtype=dtype)
    lam = torch.rand(lam_shape, dtype=dtype) * 0.8 + 0.1
    return [q1, q2, k1, k2, v, lam]


SHAPES = [  # (B, h, h_kv, N, N_k, d)
    (1, 1, 1, 1, 1, 8),  # N = 1
    (2, 3, 3, 13, 13, 16),  # N not a multiple of 8
    (1, 2, 2, 64, 64, 32),
    (2, 4, 2, 37, 37, 8),  # GQA
    (1, 2, 1, 5, 29, 16),  # queries after a cache of 24 positions
    (1, 2, 2, 1, 19, 16),  # one decode step
]


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lam_shape", [(), "per_head"])
@pytest.mark.parametrize("causal", [True, False])
def test_backend_matches_float64_reference(seed, backend, shape, lam_shape, causal):
    b, h, h_kv, n, n_k, d = shape
    inputs = make_inputs(b, h, h_kv, n, n_k, d, (h,) if lam_shape == "per_head" else ())
    for t in inputs:
        t.requires_grad_(True)
    inputs64 = [t.detach().double().requires_grad_(True) for t in inputs]

    out = differential_attention(*inputs, causal=causal, backend=backend)
    ref = reference(*inputs64, causal=causal)
    assert out.shape == (b, h, n, 2 * d) and out.dtype == torch.float32
    assert rel_err(out, ref) <= TOL

    grad_out = torch.randn_like(ref)
    out.backward(grad_out.float())
    ref.backward(grad_out)
    for name, t, t64 in zip(("q1", "q2", "k1", "k2", "v"), inputs[:5], inputs64[:5], strict=True):
        assert rel_err(t.grad, t64.grad) <= TOL, f"grad of {name}"
    # dλ = −Σ g·(A2 V) is a reduction with cancellation: its error is measured against the size of
    # its terms (‖g‖·‖A2 V‖, the Cauchy–Schwarz bound of the sum), not against the sum itself.
    o2 = reference(*[t.detach() for t in inputs64[:5]], torch.ones(()), causal=causal) - reference(
        *[t.detach() for t in inputs64[:5]], torch.zeros(()), causal=causal
    )
    scale = grad_out.norm() * o2.norm()
    assert (inputs[5].grad.double() - inputs64[5].grad).norm() / scale <= TOL, "grad of lam"


def as_given(mask: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """``mask`` (bool) as the op is given it: bool, or additive in ``dtype`` (0 where True, −inf where False)."""
    return mask if kind == "bool" else torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, float("-inf"))


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3], SHAPES[4], SHAPES[5]])
@pytest.mark.parametrize("masked", [False, True])
def test_float64_inputs_are_computed_in_float64(seed, backend, shape, masked):
    """float64 inputs: output (float64) and every gradient, λ's included, ≤ 1e-12 from the float64 reference,
    causal or with a random mask; the eager maps are float64 too. (A float32 softmax would leave ~1e-7.)"""
    b, h, h_kv, n, n_k, d = shape
    inputs = [t.requires_grad_(True) for t in make_inputs(b, h, h_kv, n, n_k, d, (h,), dtype=torch.float64)]
    mask = None
    if masked:
        mask = torch.rand(b, 1, n, n_k) < 0.5
        mask[..., torch.arange(n), torch.randint(0, n_k, (n,))] = True
    out = differential_attention(*inputs, causal=not masked, backend=backend, mask=mask)
    ref_inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    ref = reference(*ref_inputs, causal=not masked, mask=mask)
    assert out.dtype == torch.float64
    assert rel_err(out, ref) <= 1e-12
    grad_out = torch.randn_like(ref)
    out.backward(grad_out)
    ref.backward(grad_out)
    for name, t, t64 in zip(("q1", "q2", "k1", "k2", "v", "lam"), inputs, ref_inputs, strict=True):
        assert rel_err(t.grad, t64.grad) <= 1e-12, f"grad of {name}"
    if backend == "eager":
        _, a1, a2 = eager_differential_attention(*inputs, causal=not masked, mask=mask, return_maps=True)
        assert a1.dtype == a2.dtype == torch.float64


@pytest.mark.parametrize("kind", ["bool", "additive"])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("shape", [(2, 2, 2, 13, 13, 16), (3, 4, 2, 6, 19, 8), (2, 2, 1, 1, 9, 16)])
def test_mask_matches_float64_reference(seed, backend, shape, kind):
    """A random (B, 1, N, N_k) mask (each query keeps at least one key), boolean or additive, forward and
    gradients; the reference applies the boolean one."""
    b, h, h_kv, n, n_k, d = shape
    inputs = make_inputs(b, h, h_kv, n, n_k, d, (h,))
    mask = torch.rand(b, 1, n, n_k) < 0.5
    mask[..., torch.arange(n), torch.randint(0, n_k, (n,))] = True
    for t in inputs:
        t.requires_grad_(True)
    inputs64 = [t.detach().double().requires_grad_(True) for t in inputs]
    out = differential_attention(*inputs, causal=False, backend=backend, mask=as_given(mask, kind, torch.float32))
    ref = reference(*inputs64, causal=False, mask=mask)
    assert rel_err(out, ref) <= TOL
    grad_out = torch.randn_like(ref)
    out.backward(grad_out.float())
    ref.backward(grad_out)
    for name, t, t64 in zip(("q1", "q2", "k1", "k2", "v"), inputs[:5], inputs64[:5], strict=True):
        assert rel_err(t.grad, t64.grad) <= TOL, f"grad of {name}"


@pytest.mark.parametrize("kind", ["bool", "additive"])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_softmax_attention_mask_matches_float64_reference(seed, backend, kind):
    """Reference: the same math with one softmax (λ = 0 and one branch of the differential reference)."""
    q, k = torch.randn(2, 4, 7, 8), torch.randn(2, 2, 12, 8)
    v = torch.randn(2, 2, 12, 16)
    mask = torch.rand(2, 1, 7, 12) < 0.5
    mask[..., 0] = True
    out = softmax_attention(q, k, v, causal=False, backend=backend, mask=as_given(mask, kind, torch.float32))
    ref = reference(q, q, k, k, v, 0.0, causal=False, mask=mask)
    assert rel_err(out, ref) <= TOL


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_softmax_attention_float64_inputs_are_computed_in_float64(seed, backend):
    """float64 q, k, v (GQA, queries after a cache): the output ≤ 1e-12 from the float64 reference."""
    q, k, v = (torch.randn(*s, dtype=torch.float64) for s in ((2, 4, 7, 8), (2, 2, 12, 8), (2, 2, 12, 16)))
    out = softmax_attention(q, k, v, backend=backend)
    assert out.dtype == torch.float64
    assert rel_err(out, reference(q, q, k, k, v, 0.0)) <= 1e-12


def test_bad_masks_are_named(seed):
    q1, q2, k1, k2, v, lam = make_inputs(2, 2, 2, 5, 5, 8, ())
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="either causal=True or a mask"):
        differential_attention(q1, q2, k1, k2, v, lam, mask=mask)
    bad_dtype = r"mask must be a bool tensor, or an additive one of the queries' dtype torch.float32, broadcastable"
    with pytest.raises(ValueError, match=bad_dtype):
        differential_attention(q1, q2, k1, k2, v, lam, causal=False, mask=mask.double())
    with pytest.raises(ValueError, match=r"mask's last two dims must be \(N, N_k\) = \(5, 5\)"):
        softmax_attention(q1, k1, v, causal=False, mask=mask[..., :4])


def test_float_lambda_and_backend_agreement(seed):
    q1, q2, k1, k2, v, _ = make_inputs(2, 2, 2, 21, 21, 16, ())
    eager = differential_attention(q1, q2, k1, k2, v, 0.35, backend="eager")
    sdpa = differential_attention(q1, q2, k1, k2, v, 0.35, backend="sdpa")
    ref = reference(q1, q2, k1, k2, v, 0.35)
    assert rel_err(eager, ref) <= TOL and rel_err(sdpa, eager) <= TOL


def test_eager_returns_maps(seed):
    q1, q2, k1, k2, v, lam = make_inputs(1, 2, 2, 11, 11, 8, ())
    out, a1, a2 = eager_differential_attention(q1, q2, k1, k2, v, lam, return_maps=True)
    assert a1.shape == a2.shape == (1, 2, 11, 11)
    torch.testing.assert_close(a1.sum(-1), torch.ones(1, 2, 11), rtol=0, atol=1e-6)
    assert torch.all(a1.triu(1) == 0) and torch.all(a2.triu(1) == 0)  # causal: nothing above the diagonal
    torch.testing.assert_close(out, (a1 - lam * a2) @ v, rtol=1e-6, atol=1e-6)


def test_bad_shapes_are_named(seed):
    q1, q2, k1, k2, v, lam = make_inputs(1, 4, 4, 8, 8, 8, ())
    with pytest.raises(ValueError, match="v must be"):
        differential_attention(q1, q2, k1, k2, v[..., :8], lam)
    with pytest.raises(ValueError, match="must divide query heads"):
        differential_attention(q1, q2, k1[:, :3], k2[:, :3], v[:, :3], lam)
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        differential_attention(q1, q2, k1, k2, v, lam, backend="nope")
    with pytest.raises(ValueError, match=r"lam must be a scalar or of shape \(h,\)"):
        differential_attention(q1, q2, k1, k2, v, torch.ones(3))


def test_auto_picks_sdpa_on_cpu():
    assert resolve_backend("auto", torch.zeros(1, 1, 1, 2)) == "sdpa"


def test_sdpa_backend_uses_a_fused_kernel_on_cpu(seed):
    """O(N) memory: the SDPA path must not fall back to PyTorch's N×N math implementation."""
    from torch.profiler import profile

    q1, q2, k1, k2, v, lam = make_inputs(1, 2, 2, 256, 256, 16, ())
    with profile() as prof:
        differential_attention(q1, q2, k1, k2, v, lam, backend="sdpa")
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::_scaled_dot_product_attention_math" not in ops
