"""The fused Triton kernel under TRITON_INTERPRET=1 (CPU) against the float64 reference: forward and
gradients, odd N, GQA, causal and not, with a cache offset. Skipped where Triton is absent."""

import pytest
import torch

pytest.importorskip("triton")

from shareddiff.ops import available_backends, differential_attention
from tests.conftest import rel_err
from tests.ops.test_differential import make_inputs, reference

SHAPES = [  # (B, h, h_kv, N, N_k, d)
    (1, 1, 1, 1, 1, 16),
    (2, 2, 2, 37, 37, 16),
    (1, 4, 2, 45, 45, 32),  # GQA
    (1, 2, 2, 7, 30, 16),  # queries after a cache
    (1, 1, 1, 70, 70, 16),  # several unmasked blocks before the diagonal, partial last blocks
    (1, 2, 1, 21, 83, 16),  # GQA after a cache: unmasked key blocks beside masked ones
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("lam_shape", [(), "per_head"])
@pytest.mark.parametrize("dq,vsplit", [("split", "1"), ("atomic", "1"), ("split", "2")])
def test_kernel_float32_matches_float64(seed, shape, causal, lam_shape, dq, vsplit, monkeypatch):
    monkeypatch.setenv("SHAREDDIFF_TRITON_DQ", dq)
    monkeypatch.setenv("SHAREDDIFF_TRITON_VSPLIT", vsplit)
    assert "triton" in available_backends()
    b, h, h_kv, n, n_k, d = shape
    inputs = make_inputs(b, h, h_kv, n, n_k, d, (h,) if lam_shape == "per_head" else ())
    for t in inputs:
        t.requires_grad_(True)
    inputs64 = [t.detach().double().requires_grad_(True) for t in inputs]
    out = differential_attention(*inputs, causal=causal, backend="triton")
    ref = reference(*inputs64, causal=causal)
    assert torch.isfinite(out).all() and rel_err(out, ref) <= 1e-5
    grad = torch.randn_like(ref)
    out.backward(grad.float())
    ref.backward(grad)
    for name, t, t64 in zip(("q1", "q2", "k1", "k2", "v"), inputs[:5], inputs64[:5], strict=True):
        assert rel_err(t.grad, t64.grad) <= 1e-5, f"grad of {name}"
    o2 = reference(*[t.detach() for t in inputs64[:5]], torch.ones(()), causal=causal) - reference(
        *[t.detach() for t in inputs64[:5]], torch.zeros(()), causal=causal
    )
    assert (inputs[5].grad.double() - inputs64[5].grad).norm() / (grad.norm() * o2.norm()) <= 1e-5


@pytest.mark.parametrize("shape", SHAPES[1:])
@pytest.mark.parametrize("causal", [True, False])
def test_kernel_all_masked_tiles_path(seed, shape, causal, monkeypatch):
    """The single masked loop that float32 takes on the GPU (split_tiles False) against float64."""
    import shareddiff.ops.triton_diff as kernels

    monkeypatch.setattr(kernels, "split_tiles", lambda dtype: False)
    inputs = [t.requires_grad_(True) for t in make_inputs(*shape, ())]
    inputs64 = [t.detach().double().requires_grad_(True) for t in inputs]
    out = differential_attention(*inputs, causal=causal, backend="triton")
    ref = reference(*inputs64, causal=causal)
    assert rel_err(out, ref) <= 1e-5
    grad = torch.randn_like(ref)
    out.backward(grad.float())
    ref.backward(grad)
    for name, t, t64 in zip(("q1", "q2", "k1", "k2", "v"), inputs[:5], inputs64[:5], strict=True):
        assert rel_err(t.grad, t64.grad) <= 1e-5, f"grad of {name}"


def test_kernel_float16(seed):
    inputs = [t.half().requires_grad_(True) for t in make_inputs(1, 2, 2, 33, 33, 32, ())]
    inputs64 = [t.detach().double().requires_grad_(True) for t in inputs]
    out = differential_attention(*inputs, backend="triton")
    ref = reference(*inputs64)
    assert out.dtype == torch.float16 and rel_err(out, ref) <= 5e-3
    grad = torch.randn_like(ref)
    out.backward(grad.half())
    ref.backward(grad)
    for name, t, t64 in zip(("q1", "q2", "k1", "k2", "v"), inputs[:5], inputs64[:5], strict=True):
        assert t.grad.dtype == torch.float16 and rel_err(t.grad, t64.grad) <= 1e-2, f"grad of {name}"


def test_single_key_query_gradient_is_zero_in_half_precision(seed):
    """With one key both maps are 1, so dQ is exactly 0: the backward's δ comes from the stored O1 and
    O2 (not from out + λ·O2, whose rounding left 2.7e-2 in bf16 on the GPU, 5e-6 relative here)."""
    inputs = [t.half().requires_grad_(True) for t in make_inputs(1, 2, 2, 1, 1, 32, ())]
    out = differential_attention(*inputs, backend="triton")
    grad = torch.randn_like(out)
    out.backward(grad)
    scale = grad.float().norm() * inputs[4].float().norm()
    for t in inputs[:2]:
        assert torch.isfinite(t.grad).all() and t.grad.float().norm() <= 2e-7 * scale  # 5e-6 before the fix
    assert inputs[4].grad.float().sub(grad.float() * (1 - inputs[5].float())).norm() <= 1e-2 * grad.float().norm()


def test_kernel_switches_are_checked(monkeypatch):
    from shareddiff.ops.triton_diff import dq_mode, v_split

    monkeypatch.setenv("SHAREDDIFF_TRITON_DQ", "fast")
    with pytest.raises(ValueError, match="use split or atomic"):
        dq_mode()
    monkeypatch.setenv("SHAREDDIFF_TRITON_VSPLIT", "4")
    with pytest.raises(ValueError, match="use 1 or 2"):
        v_split()


def test_block_overrides_are_parsed_and_checked(monkeypatch):
    from shareddiff.ops.triton_diff import _blocks_override

    assert _blocks_override("FWD") is None
    monkeypatch.setenv("SHAREDDIFF_TRITON_FWD_BLOCKS", "64,32,4,2")
    assert _blocks_override("FWD") == {"BM": 64, "BN": 32, "num_warps": 4, "num_stages": 2}
    for bad, match in (("64,32,4", "four integers"), ("48,32,4,2", "powers of two"), ("64,32,3,2", "num_warps")):
        monkeypatch.setenv("SHAREDDIFF_TRITON_BWD_BLOCKS", bad)
        with pytest.raises(ValueError, match=match):
            _blocks_override("BWD")


def test_model_with_triton_backend_matches_sdpa(seed):
    from shareddiff import ModelConfig, build_model

    model = build_model(ModelConfig(attention="shared_diff", d_model=64, n_heads=2, vocab_size=50)).eval()
    ids = torch.randint(0, 50, (2, 19))
    with torch.no_grad():
        model.set_attention_backend("sdpa")
        expected = model(ids)
        model.set_attention_backend("triton")
        assert rel_err(model(ids), expected) <= 1e-5


def test_unsupported_head_dim_is_named():
    q = torch.randn(1, 1, 4, 24)
    v = torch.randn(1, 1, 4, 48)
    with pytest.raises(ValueError, match="head half-dim in"):
        differential_attention(q, q, q, q, v, 0.5, backend="triton")


def test_mask_is_refused_with_the_fix():
    q1, q2, k1, k2, v, lam = make_inputs(1, 2, 2, 4, 4, 16, ())
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()
    with pytest.raises(ValueError, match=r"triton kernel takes no attention mask.*use the sdpa or eager backend"):
        differential_attention(q1, q2, k1, k2, v, lam, causal=False, backend="triton", mask=mask)
