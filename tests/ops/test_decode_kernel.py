"""The differential decode kernel (ops/triton_decode.py) under TRITON_INTERPRET=1 (CPU) against a float64 reference
written here (architecture §3: two softmaxes, their difference, the per-head RMSNorm), against the SDPA path it
replaces, under torch.compile, inside the StaticDecoder against the reference decode, and on bad input; its split-K
path (partials merged by a second kernel) likewise, and the rule that picks the split count. The CUDA tests run on
a GPU only. Skipped where Triton is absent."""

import math
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from shareddiff import ModelConfig, build_model
from shareddiff.layers import fused_rms_norm, rope_angles
from shareddiff.ops import sdpa_differential_attention
from shareddiff.ops.triton_decode import (
    BLOCK_N,
    INTERPRET,
    SHORT_BLOCK_N,
    DecodeKernelSettings,
    decode_kernel_settings,
    default_block_n,
    differential_decode_attention,
    differential_decode_step,
    short_cache,
    split_count,
    split_plan,
)
from shareddiff.static_decode import StaticDecoder
from tests.conftest import in_subprocess_without_triton_interpreter, rel_err
from tests.test_static_decode import STEPS, _batch, _teacher_forced, _trained_looking

EPS = 1e-5
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}  # ≈ 2 roundings of the output's dtype


def reference(q, k, v, lam, mask, weight, eps):
    """In float64: o = softmax(q1·k1ᵀ/√d + mask)·V − λ·softmax(q2·k2ᵀ/√d + mask)·V per query head (key head
    i // (h / h_kv)), then o / sqrt(mean(o²) + eps) × weight (no norm for eps None). Returns (B, h, 1, 2d)."""
    q, k, v, mask = (t.double() for t in (q, k, v, mask))
    h, h_kv, d = q.shape[1] // 2, k.shape[1] // 2, q.shape[3]
    heads = torch.arange(h) // (h // h_kv)  # each query head's key/value head

    def attend(q_half, k_half):
        scores = q_half @ k_half[:, heads].transpose(-1, -2) / math.sqrt(d) + mask  # (B, h, 1, N_k)
        return scores.softmax(-1) @ v[:, heads]

    o = attend(q[:, :h], k[:, :h_kv]) - lam.double() * attend(q[:, h:], k[:, h_kv:])
    if eps is None:
        return o
    o = o / (o.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return o if weight is None else o * weight.double()


def visible_keys(b: int, n_k: int, kind: str) -> torch.Tensor:
    """(B, N_k) bool: "all" keys; "padded": each row's left padding and the cache's unfilled tail hidden (a decode
    step's mask), at least one key visible, some rows with whole blocks of 16 hidden."""
    if kind == "all":
        return torch.ones(b, n_k, dtype=torch.bool)
    filled = torch.randint(1, n_k + 1, (b,))
    filled[0] = n_k  # one row at the cache's end
    pad = (torch.rand(b) * filled).long()  # < filled
    positions = torch.arange(n_k)
    return (positions >= pad[:, None]) & (positions < filled[:, None])


def make_inputs(b, h, h_kv, n_k, d, dtype, mask_kind="padded", weight=True):
    q = torch.randn(b, 2 * h, 1, d, dtype=dtype)
    k = torch.randn(b, 2 * h_kv, n_k, d, dtype=dtype)
    v = torch.randn(b, h_kv, n_k, 2 * d, dtype=dtype)
    lam = torch.rand(()) * 0.8 + 0.1
    mask = torch.where(visible_keys(b, n_k, mask_kind), 0.0, float("-inf")).to(dtype)[:, None, None, :]
    w = torch.randn(2 * d, dtype=dtype) * 0.3 + 1.0 if weight else None
    return q, k, v, lam, mask, w


SHAPES = [  # (B, h, h_kv, N_k, d)
    (1, 1, 1, 1, 16),  # a single key
    (2, 2, 2, 17, 16),  # odd N_k: a partial second block
    (3, 4, 2, 77, 32),  # GQA, five blocks
    (2, 4, 1, 40, 64),  # one key head for all (the 350m presets' d = 64)
    (2, 2, 2, 33, 8),  # d below a tile of 16
]


@pytest.mark.parametrize("norm", ["weight", "no weight", "no norm"])
@pytest.mark.parametrize("mask_kind", ["all", "padded"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_float64_reference_float32(seed, shape, mask_kind, norm):
    """Reference: ``reference`` above in float64 from the same inputs; relative error ≤ 1e-5 in float32, over the
    whole output and in every head."""
    q, k, v, lam, mask, w = make_inputs(*shape, torch.float32, mask_kind, weight=norm == "weight")
    eps = None if norm == "no norm" else EPS
    out = differential_decode_attention(q, k, v, lam, mask, w, eps)
    expected = reference(q, k, v, lam, mask, w, eps)
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert rel_err(out, expected) <= TOL[torch.float32]
    for head in range(out.shape[1]):
        assert rel_err(out[:, head], expected[:, head]) <= 4 * TOL[torch.float32]


@pytest.mark.parametrize("block_n", [64, 128])
@pytest.mark.parametrize("splits", [1, 2, 3], ids=["single", "2 splits", "3 splits"])
@pytest.mark.parametrize("n_k", [1, 40, 129, 300])
def test_kernel_at_the_gpu_block_size_matches_float64_reference(seed, n_k, splits, block_n):
    """The GPU's launch shapes (``triton_decode``'s GPU ``BLOCK_N`` and ``SHORT_BLOCK_N``: 128 and 64 keys a block,
    the interpreter's default is 16): caches shorter than a block, one key past a block, a ragged last block, with
    the single kernel and with split-K; padded rows; float32 within 1e-5 of the float64 reference."""
    q, k, v, lam, mask, w = make_inputs(2, 4, 2, n_k, 16, torch.float32)
    with decode_kernel_settings(block_n=block_n, splits=splits):
        out = differential_decode_attention(q, k, v, lam, mask, w, EPS)
    assert rel_err(out, reference(q, k, v, lam, mask, w, EPS)) <= TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES[1:4], ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_float64_reference_half(seed, shape, dtype):
    """Float16 and bfloat16 inputs (float32 inside, one rounding of the output): relative error within about two
    roundings of the dtype (2e-3 for float16, 1.5e-2 for bfloat16) of the float64 reference of the same inputs."""
    q, k, v, lam, mask, w = make_inputs(*shape, dtype)
    out = differential_decode_attention(q, k, v, lam.to(dtype), mask, w, EPS)
    assert out.dtype == dtype
    assert rel_err(out, reference(q, k, v, lam.to(dtype), mask, w, EPS)) <= TOL[dtype]


def rotate64(x, cos, sin):
    """Interleaved-pair RoPE in float64, written from its definition: (x[2j], x[2j+1]) → (x[2j]·cos_j − x[2j+1]·sin_j,
    x[2j]·sin_j + x[2j+1]·cos_j); x (B, H, 1, d), cos/sin broadcastable to (B, 1, 1, d/2)."""
    x, cos, sin = x.double(), cos.double(), sin.double()
    out = torch.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
    out[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
    return out


@pytest.mark.parametrize("splits", [1, 3], ids=["single", "3 splits"])
@pytest.mark.parametrize("per_row", [False, True], ids=["one position", "a position per row"])
def test_kernel_rotating_q_matches_float64_reference(seed, per_row, splits):
    """``rope``: q given unrotated with one position's angles, shared ((1, 1, d/2), a decode step without padding) or
    per row ((B, 1, 1, d/2), a left-padded batch); the kernel rotates Q1 and Q2 itself. Equals the float64
    reference of q rotated in float64 (≤ 1e-5 in float32), and differs from the unrotated q's output (the rotation
    is applied)."""
    b, h, h_kv, n_k, d = 3, 4, 2, 50, 16
    q, k, v, lam, mask, w = make_inputs(b, h, h_kv, n_k, d, torch.float32)
    positions = torch.randint(0, 4096, (b, 1) if per_row else (1,))
    cos, sin = rope_angles(positions, d, 10_000.0)  # (B, 1, 1, d/2) or (1, 1, d/2)
    with decode_kernel_settings(splits=splits):
        out = differential_decode_attention(q, k, v, lam, mask, w, EPS, rope=(cos, sin))
        unrotated = differential_decode_attention(q, k, v, lam, mask, w, EPS)
    expected = reference(rotate64(q, cos if per_row else cos[None], sin if per_row else sin[None]), k, v, lam, mask,
                         w, EPS)  # fmt: skip
    assert rel_err(out, expected) <= TOL[torch.float32]
    assert rel_err(unrotated, expected) > 0.01


def pack(q, k_new, v_new):
    """The step's merged projection row (B, 1, (2h + 4h_kv)·d) that ``differential_decode_step`` reads: the Q1, Q2
    heads of q (B, 2h, 1, d), the K1, K2 heads of k_new (B, 2h_kv, 1, d), then the value heads of v_new (B, h_kv,
    1, 2d), each head's d (or 2d) values side by side."""
    return torch.cat([t[:, :, 0].flatten(1) for t in (q, k_new, v_new)], dim=1)[:, None]


def _updated_cache(k, v, k_new, v_new, pos, cos, sin):
    """In float64: the cache after writing the step's key (rotated in float64 by ``rotate64``) and value at ``pos``
    (what ``StaticKVCache.update`` does), rounded to the cache's dtype as a cache write rounds them."""
    k2, v2 = k.clone(), v.clone()
    k2[:, :, pos : pos + 1] = rotate64(k_new, cos, sin).to(k.dtype)
    v2[:, :, pos : pos + 1] = v_new
    return k2, v2


@pytest.mark.parametrize("splits", [1, 3], ids=["single", "3 splits"])
@pytest.mark.parametrize("per_row", [False, True], ids=["one position", "a position per row"])
@pytest.mark.parametrize("pos", [0, 17, 47])
def test_kernel_writing_the_cache_matches_float64_reference(seed, pos, per_row, splits):
    """``differential_decode_step``: from the packed projection row, the step's new K1, K2 (unrotated) and V are
    written into the cache at ``write_at`` by the kernel, which attends to them there. Reference: the cache
    written in float64 (keys rotated by ``rotate64``), then ``reference`` on it with q rotated likewise: output
    ≤ 1e-5 relative in float32, the cache's written position equal to the rotated key and the value to 1e-6,
    every other position untouched (GQA: two query heads a key head, so one writer of each), at the first, a
    middle and the last position, with the single kernel and split-K (the write in the split that holds it; the
    partials merged in the same kernel by the last split of each head, its arrival counters left zero)."""
    b, h, h_kv, n_k, d = 3, 4, 2, 48, 16
    assert split_plan(n_k, splits, 16) == (splits, n_k // splits)  # 3 splits of 16 keys: positions in each
    q, k, v, lam, mask, w = make_inputs(b, h, h_kv, n_k, d, torch.float32)
    mask[..., pos] = 0.0  # the new position is visible
    k_new, v_new = torch.randn(b, 2 * h_kv, 1, d), torch.randn(b, h_kv, 1, 2 * d)
    cos, sin = rope_angles(torch.randint(0, 4096, (b, 1) if per_row else (1,)), d, 10_000.0)
    cos4, sin4 = (cos, sin) if per_row else (cos[None], sin[None])
    k_ref, v_ref = _updated_cache(k.double(), v.double(), k_new, v_new, pos, cos4, sin4)
    expected = reference(rotate64(q, cos4, sin4), k_ref, v_ref, lam, mask, w, EPS)
    k_cache, v_cache = k.clone(), v.clone()
    counters = torch.zeros(b * h + 3, dtype=torch.int32)  # more than B·h: the first B·h count
    with decode_kernel_settings(splits=splits, block_n=16):
        qkv = pack(q, k_new, v_new)
        out = differential_decode_step(
            qkv, k_cache, v_cache, lam, mask, torch.tensor([pos]), w, EPS, (cos, sin), counters
        )
    assert rel_err(out, expected) <= TOL[torch.float32]
    assert not counters.any()  # left zero for the next launch (split-K: merged by the last split of each head)
    assert (k_cache.double() - k_ref).abs().max().item() <= 1e-6
    assert torch.equal(v_cache[:, :, pos], v_new[:, :, 0])
    others = torch.arange(n_k) != pos
    assert torch.equal(k_cache[:, :, others], k[:, :, others]) and torch.equal(v_cache[:, :, others], v[:, :, others])
    assert not torch.equal(k_cache[:, :, pos], k[:, :, pos])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_kernel_writing_the_cache_half(seed, dtype):
    """``differential_decode_step`` in float16 and bfloat16: the key is rotated and rounded to the cache's dtype,
    then attended as stored; output within TOL of the float64 reference on the float64-written cache, the stored
    key within half that tolerance of the float64 rotation (about one rounding)."""
    b, h, h_kv, n_k, d, pos = 2, 4, 4, 40, 32, 23
    q, k, v, lam, mask, w = make_inputs(b, h, h_kv, n_k, d, dtype)
    mask[..., pos] = 0.0
    k_new, v_new = torch.randn(b, 2 * h_kv, 1, d, dtype=dtype), torch.randn(b, h_kv, 1, 2 * d, dtype=dtype)
    cos, sin = rope_angles(torch.tensor([pos]), d, 10_000.0)
    k_ref, v_ref = _updated_cache(k, v, k_new, v_new, pos, cos[None], sin[None])
    expected = reference(rotate64(q, cos[None], sin[None]), k_ref, v_ref, lam.to(dtype), mask, w, EPS)
    out = differential_decode_step(
        pack(q, k_new, v_new), k, v, lam.to(dtype), mask, torch.tensor([pos]), w, EPS, rope=(cos, sin)
    )
    assert rel_err(out, expected) <= TOL[dtype]
    exact = rotate64(k_new, cos[None], sin[None])[:, :, 0]
    assert rel_err(k[:, :, pos], exact) <= TOL[dtype] / 2
    assert torch.equal(v[:, :, pos], v_new[:, :, 0])


@pytest.mark.parametrize("splits", [1, 3], ids=["single", "3 splits"])
def test_kernel_writing_outside_the_cache_writes_nothing(seed, splits):
    """A ``write_at`` outside [0, N_k) (−1 falls in split 0 by truncating division; N_k and beyond in none) writes
    nothing (the caches stay equal) and the output equals ``differential_decode_attention`` on the same cache (the
    new key is attended nowhere), with the single kernel and with 3 splits (GQA: 2 query heads a key head; the
    queries rotated in the kernel); the counters end zero."""
    q, k, v, lam, mask, w = make_inputs(2, 4, 2, 48, 16, torch.float32)
    k_new, v_new = torch.randn(2, 4, 1, 16), torch.randn(2, 2, 1, 32)
    rope = rope_angles(torch.tensor([[3], [40]]), 16, 10_000.0)
    counters = torch.zeros(2 * 4, dtype=torch.int32)
    with decode_kernel_settings(splits=splits, block_n=16):
        expected = differential_decode_attention(q, k, v, lam, mask, w, EPS, rope)
        for pos in (-1, 48, 1000):
            k_cache, v_cache = k.clone(), v.clone()
            qkv = pack(q, k_new, v_new)
            out = differential_decode_step(
                qkv, k_cache, v_cache, lam, mask, torch.tensor([pos]), w, EPS, rope, counters
            )
            assert torch.equal(k_cache, k) and torch.equal(v_cache, v)
            assert torch.equal(out, expected)
            assert not counters.any()


def test_kernel_equals_the_sdpa_path_it_replaces(seed):
    """Reference: the decode step's current tail, ``sdpa_differential_attention`` then ``fused_rms_norm`` with the
    merged weight, on a mask broadcast over the batch ((1, 1, 1, N_k)); ≤ 1e-5 relative in float32."""
    b, h, h_kv, n_k, d = 2, 4, 2, 45, 16
    q, k, v, lam, mask, w = make_inputs(b, h, h_kv, n_k, d, torch.float32)
    mask = mask[:1]
    out = differential_decode_attention(q, k, v, lam, mask, w, EPS)
    q1, q2 = q.chunk(2, dim=1)
    k1, k2 = k.chunk(2, dim=1)
    current = fused_rms_norm(sdpa_differential_attention(q1, q2, k1, k2, v, lam, False, mask), w, EPS)
    assert rel_err(out, current) <= 1e-5


@pytest.mark.parametrize("rotate", [False, True], ids=["q rotated", "rope in the kernel"])
@pytest.mark.parametrize("splits", [None, 3], ids=["rule", "3 splits"])
def test_kernel_under_torch_compile_equals_eager(seed, splits, rotate):
    """``torch.compile(fullgraph=True)`` traces the op (no graph break; on the interpreter the opaque op's fake
    implementation gives the output's shape and dtype); the compiled call's output equals the eager one exactly, and
    torch.library.opcheck finds the op's registration consistent; with the single kernel and with split-K, with q
    rotated before and rotated inside the kernel (``rope``)."""
    inputs = make_inputs(2, 2, 1, 41, 16, torch.float32)
    rope = rope_angles(torch.tensor([[3], [40]]), 16, 10_000.0) if rotate else None
    compiled = torch.compile(differential_decode_attention, fullgraph=True, backend="aot_eager")
    tables = tuple(t.reshape(2, 8) for t in rope) if rotate else (None, None)  # the op's own (B, d/2) rows
    with decode_kernel_settings(splits=splits, block_n=16):
        eager = differential_decode_attention(*inputs, EPS, rope)
        assert torch.equal(compiled(*inputs, EPS, rope), eager)
        op = torch.ops.shareddiff.differential_decode_attention.default
        torch.library.opcheck(op, (*inputs, EPS, True, *tables))


@pytest.mark.parametrize("splits", [None, 3], ids=["rule", "3 splits"])
def test_kernel_writing_the_cache_under_torch_compile_equals_eager(seed, splits):
    """``differential_decode_step`` under ``torch.compile(fullgraph=True)``: the compiled call's output and the
    caches it writes equal the eager call's exactly, and opcheck finds the registration (k and v declared mutated)
    consistent."""
    q, k, v, lam, mask, w = make_inputs(2, 2, 1, 41, 16, torch.float32)
    mask[..., 7] = 0.0
    rope = rope_angles(torch.tensor([[3], [40]]), 16, 10_000.0)
    qkv, at = pack(q, torch.randn(2, 2, 1, 16), torch.randn(2, 1, 1, 32)), torch.tensor([7])
    compiled = torch.compile(differential_decode_step, fullgraph=True, backend="aot_eager")
    with decode_kernel_settings(splits=splits, block_n=16):
        caches = [(k.clone(), v.clone()) for _ in range(2)]
        eager = differential_decode_step(qkv, *caches[0], lam, mask, at, w, EPS, rope)
        assert torch.equal(compiled(qkv, *caches[1], lam, mask, at, w, EPS, rope), eager)
        assert all(torch.equal(a, b) for a, b in zip(caches[0], caches[1], strict=True))
        assert not torch.equal(caches[0][0], k)
        op = torch.ops.shareddiff.differential_decode_step.default
        tables = tuple(t.reshape(2, 8) for t in rope)
        counters = torch.zeros(2 * 2, dtype=torch.int32)
        torch.library.opcheck(op, (qkv, k.clone(), v.clone(), lam, mask, w, EPS, True, *tables, at, counters))


SPLIT_CASES = [  # (B, h, h_kv, N_k, d, splits requested, block_n) → the plan asserted in the test
    (2, 2, 2, 77, 16, 3, 16),  # 3 splits of 32 keys, the last ragged (13)
    (3, 4, 2, 77, 32, 5, 16),  # GQA; 5 splits of 16, the last 13 keys
    (2, 4, 1, 40, 64, 2, 8),  # one key head for all; 2 splits of 24 and 16
    (2, 2, 2, 33, 8, 8, 4),  # 8 splits of 8 keys over a tile narrower than d; the last holds 1 key
    (1, 1, 1, 5, 16, 4, 16),  # 4 requested, one block of keys: one split (the single kernel)
]


def _split_mask(b: int, n_k: int, chunk: int, dtype) -> torch.Tensor:
    """(B, 1, 1, N_k) additive: row 0 sees only keys inside its second split (its first split left padding, the
    later ones unfilled cache: splits with every key masked; where there is one split, its keys), row 1 only the
    last key, the others ``visible_keys``' padded rows."""
    visible = visible_keys(b, n_k, "padded")
    if chunk < n_k - 1:
        visible[0] = False
        visible[0, chunk : min(2 * chunk, n_k) - 1] = True
    if b > 1:
        visible[1] = False
        visible[1, -1] = True
    return torch.where(visible, 0.0, float("-inf")).to(dtype)[:, None, None, :]


@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: "x".join(map(str, c)))
def test_split_kernel_matches_float64_reference(seed, case):
    """Split-K (the keys of each head over several programs, partials merged by a second kernel) against the float64
    ``reference``: ≤ 1e-5 relative in float32, over the whole output and in every head, with splits whose keys are
    all masked (left padding, unfilled cache) and a ragged last split; the plan (split count, keys per split) is
    the one each case names."""
    b, h, h_kv, n_k, d, requested, block_n = case
    splits, chunk = split_plan(n_k, requested, block_n)
    expected_plan = {77: {3: (3, 32), 5: (5, 16)}, 40: {2: (2, 24)}, 33: {8: (5, 8)}, 5: {4: (1, 16)}}[n_k][requested]
    assert (splits, chunk) == expected_plan
    q, k, v, lam, _, w = make_inputs(b, h, h_kv, n_k, d, torch.float32)
    mask = _split_mask(b, n_k, chunk, torch.float32)
    with decode_kernel_settings(splits=requested, block_n=block_n):
        out = differential_decode_attention(q, k, v, lam, mask, w, EPS)
    expected = reference(q, k, v, lam, mask, w, EPS)
    assert rel_err(out, expected) <= TOL[torch.float32]
    for head in range(h):
        assert rel_err(out[:, head], expected[:, head]) <= 4 * TOL[torch.float32]


@pytest.mark.parametrize("norm", ["no weight", "no norm"])
def test_split_kernel_without_weight_or_norm(seed, norm):
    """Split-K's epilogue without the norm's weight, and without the norm (DIFF with ``head_norm=False``): float64
    ``reference``, ≤ 1e-5 relative (float32), 3 splits of 32 keys."""
    q, k, v, lam, mask, _ = make_inputs(2, 4, 2, 90, 16, torch.float32)
    eps = None if norm == "no norm" else EPS
    with decode_kernel_settings(splits=3, block_n=16):
        out = differential_decode_attention(q, k, v, lam, mask, None, eps)
    assert rel_err(out, reference(q, k, v, lam, mask, None, eps)) <= TOL[torch.float32]


def test_split_kernel_float16(seed):
    """Float16 inputs through split-K (float32 partials): within 2e-3 (about two float16 roundings) of the float64
    reference of the same inputs, the first split all left padding for row 0."""
    q, k, v, lam, _, w = make_inputs(3, 4, 2, 77, 32, torch.float16)
    mask = _split_mask(3, 77, 16, torch.float16)
    with decode_kernel_settings(splits=5, block_n=16):
        out = differential_decode_attention(q, k, v, lam.half(), mask, w, EPS)
    assert out.dtype == torch.float16
    assert rel_err(out, reference(q, k, v, lam.half(), mask, w, EPS)) <= TOL[torch.float16]


@pytest.mark.parametrize(
    "batch, heads, n_k, sms, expected",
    [
        (1, 8, 384, 132, 6),  # 350m at batch 1, a 384-key cache (a short one): 6 splits of ≥ 64 keys
        (1, 8, 192, 132, 3),  # 3 splits of 64
        (1, 8, 512, 132, 8),  # the longest short cache: 8 splits of 64
        (1, 8, 1024, 132, 8),  # longer: splits of ≥ 128 keys again
        (1, 8, 2048, 132, 16),  # 16 splits of 128
        (1, 8, 8192, 132, 33),  # two waves: ⌈264 / 8⌉
        (4, 8, 8192, 132, 9),  # ⌈264 / 32⌉
        (32, 8, 8192, 132, 1),  # 256 programs fill the 132 SMs already: the single kernel
        (1, 8, 100, 132, 1),  # fewer keys than one split's minimum
        (1, 8, 127, 132, 1),  # below 2 · 64: not a short cache, so splits of ≥ 128 keys: 1
        (1, 1, 1 << 20, 132, 64),  # at most MAX_SPLITS
        (2, 4, 4096, 1, 1),  # the interpreter's "device" (1 SM)
    ],
)
def test_split_count_rule(batch, heads, n_k, sms, expected):
    """The rule (``split_count``): 1 where B·h ≥ SMs, else min(⌈2·SMs / (B·h)⌉, ⌊N_k / K⌋, 64), at least 1, with
    K = 64 keys for a short cache (128 ≤ N_k ≤ 512) and 128 otherwise; the values worked out by hand."""
    assert split_count(batch, heads, n_k, sms) == expected


@pytest.mark.parametrize(
    "batch, heads, n_k, sms, short",
    [
        (1, 8, 192, 132, True),
        (1, 8, 384, 132, True),
        (1, 8, 512, 132, True),
        (1, 8, 513, 132, False),  # past SHORT_CACHE_KEYS
        (1, 8, 127, 132, False),  # under two 64-key blocks
        (32, 8, 384, 132, False),  # 256 programs fill the SMs: the single kernel and its 128-key blocks
        (2, 4, 384, 1, False),  # the interpreter's "device" (1 SM): nothing is split
    ],
)
def test_default_block_n_rule(batch, heads, n_k, sms, short):
    """``default_block_n``: ``SHORT_BLOCK_N`` (64 on a GPU) exactly where the keys are split over a cache of 128 to
    512 keys, ``BLOCK_N`` (128) elsewhere; under the interpreter both are 16."""
    assert short_cache(batch, heads, n_k, sms) is short
    assert default_block_n(batch, heads, n_k, sms) == (SHORT_BLOCK_N if short else BLOCK_N)
    assert ((16, 16) if INTERPRET else (64, 128)) == (SHORT_BLOCK_N, BLOCK_N)


def test_split_plan_covers_the_keys_with_whole_blocks():
    """``split_plan``: each split a whole number of blocks, together covering N_k, none empty (a request of 33
    splits over 8192 keys in blocks of 64 becomes 32 splits of 256)."""
    assert split_plan(8192, 33, 64) == (32, 256)
    for n_k in (1, 17, 64, 77, 384, 1000):
        for requested in (1, 2, 3, 7, 64):
            for block_n in (16, 64):
                splits, chunk = split_plan(n_k, requested, block_n)
                assert chunk % block_n == 0 and 1 <= splits <= requested
                assert (splits - 1) * chunk < n_k <= splits * chunk


def test_settings_are_checked_and_restored():
    """A block size or warp count that is not a power of two, or fewer than 1 stage or split, is refused naming
    the field; ``decode_kernel_settings`` restores the previous settings on exit, also after an error."""
    for field, value in (("block_n", 48), ("num_warps", 3), ("num_stages", 0), ("splits", 0)):
        with pytest.raises(ValueError, match=field):
            DecodeKernelSettings(**{field: value})
    with decode_kernel_settings(splits=2) as outer:
        with pytest.raises(ValueError, match="block_n"), decode_kernel_settings(block_n=12):
            pass
        with decode_kernel_settings(block_n=32) as inner:
            assert (inner.splits, inner.block_n) == (2, 32)
        from shareddiff.ops import triton_decode

        assert triton_decode._settings is outer
    assert triton_decode._settings == DecodeKernelSettings()


@pytest.mark.parametrize("preset", ["diff-tiny", "shared_diff-tiny"])
def test_decoder_with_the_split_kernel_equals_reference_decode(seed, preset):
    """StaticDecoder(decode_kernel=True) with 4 splits of 8 keys over its 32-key buffer forced: logits ≤ 1e-5 from
    the reference decode (LanguageModel.forward with a KVCache, float32) over a left-padded 13-token prefill and 8
    steps (the last split unfilled throughout, the first all padding but one key for one row), the same greedy
    tokens, and the kernel ran in every layer of every step."""
    model = _trained_looking(build_model(ModelConfig.from_preset(preset)).eval())
    decoder = StaticDecoder(model, max_len=32, decode_kernel=True)
    assert split_plan(decoder.max_len, 4, 8) == (4, 8)
    calls = []

    def counted(*args, rope=None, counters=None):
        calls.append(args[0].shape)
        assert rope is not None  # the kernel rotates the queries and the keys itself
        assert counters is not None and not counters.any()  # the decoder's own, zero between launches
        return differential_decode_step(*args, rope=rope, counters=counters)

    decoder._decode_attention = counted
    ids, mask = _batch(model.config.vocab_size, padded=True)
    with torch.no_grad(), decode_kernel_settings(splits=4, block_n=8):
        cache = model.new_cache(ids.shape[1] + 8)
        ref, got = model(ids, cache, mask)[:, -1], decoder.prefill(ids, mask, 8)
        for _ in range(8):
            token = ref.argmax(-1)
            ref, got = model(token[:, None], cache)[:, -1], decoder.step(token)
            assert (got - ref).abs().max().item() <= 1e-5
            assert torch.equal(got.argmax(-1), ref.argmax(-1))
    assert len(calls) == model.config.n_layers * 8


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset, overrides",
    [("diff-tiny", {}), ("shared_diff-tiny", {}), ("diff-tiny", {"n_kv_heads": 1, "head_norm": False})],
    ids=["diff", "shared_diff", "diff-gqa-no-head-norm"],
)
def test_decoder_with_the_kernel_equals_reference_decode(seed, preset, overrides):
    """StaticDecoder(decode_kernel=True) against the reference decode (LanguageModel.forward with a KVCache):
    logits ≤ 1e-5 (float32) over a left-padded 13-token prefill and 40 steps, the same greedy tokens, and the kernel
    ran in every layer of every step (not in the prefill)."""
    model = _trained_looking(build_model(ModelConfig.from_preset(preset, **overrides)).eval())
    decoder = StaticDecoder(model, max_len=64, decode_kernel=True)
    calls = []

    def counted(*args, rope=None, counters=None):
        calls.append(args[0].shape)
        assert rope is not None  # the kernel rotates the queries and the keys itself
        assert counters is not None and not counters.any()  # the decoder's own, zero between launches
        return differential_decode_step(*args, rope=rope, counters=counters)

    decoder._decode_attention = counted  # what the cache hands the layers from the first prefill on
    ids, mask = _batch(model.config.vocab_size, padded=True)
    ref, got = _teacher_forced(model, decoder, ids, mask)
    assert (got - ref).abs().max().item() <= 1e-5
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    assert len(calls) == model.config.n_layers * STEPS


@torch.no_grad()
def test_decoder_with_the_kernel_under_bf16_autocast_equals_reference(seed):
    """A float32 Shared DIFF model decoded under CPU bf16 autocast with the kernel: its queries, K/V and mask are
    bfloat16, λ and the merged head-norm weight float32. Reference: the KVCache decode under the same autocast;
    logits within 2e-2 relative (a few bf16 roundings, as the decoder's own autocast test) over 8 steps, and the
    kernel ran in every layer of every step."""
    model = _trained_looking(build_model(ModelConfig.from_preset("shared_diff-tiny")).eval())
    decoder = StaticDecoder(model, max_len=32, decode_kernel=True)
    dtypes = []

    def counted(*args, rope=None, counters=None):
        dtypes.append(args[0].dtype)
        return differential_decode_step(*args, rope=rope, counters=counters)

    decoder._decode_attention = counted
    ids, mask = _batch(model.config.vocab_size, padded=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache = model.new_cache(ids.shape[1] + 8)
        ref, got = model(ids, cache, mask)[:, -1], decoder.prefill(ids, mask, 8)
        for _ in range(8):
            token = ref.argmax(-1)
            ref, got = model(token[:, None], cache)[:, -1], decoder.step(token)
            assert got.dtype == ref.dtype == torch.bfloat16
            assert rel_err(got.float(), ref.float()) <= 2e-2
    assert dtypes == [torch.bfloat16] * (model.config.n_layers * 8)


def test_decode_kernel_choice():
    """None uses the kernel on CUDA only (here: not); True on the CPU uses it under the interpreter; False never;
    True where it cannot run is refused, naming the reason."""
    model = build_model(ModelConfig.from_preset("diff-tiny")).eval()
    assert StaticDecoder(model, max_len=8)._decode_attention is None
    assert StaticDecoder(model, max_len=8, decode_kernel=False)._decode_attention is None
    assert StaticDecoder(model, max_len=8, decode_kernel=True)._decode_attention is differential_decode_step
    with pytest.raises(ValueError, match=r"decode_kernel=True, but .* merged weights of fused=True"):
        StaticDecoder(model, max_len=8, fused=False, decode_kernel=True)
    with pytest.raises(ValueError, match=r"decode_kernel=True, but .* the model is torch\.float64"):
        StaticDecoder(model.double(), max_len=8, decode_kernel=True)


@pytest.mark.parametrize("preset", ["diff-tiny", "shared_diff-tiny", "transformer-tiny", "diff_v2-tiny"])
def test_decode_kernel_default_for_gpu_models(preset):
    """decode_kernel=None on a CUDA model (the device flag handed in directly: no GPU here) picks the kernel for DIFF
    and Shared DIFF (V1) while DECODE_KERNEL_BY_DEFAULT is set, nothing for the other variants or with the flag
    cleared, and nothing off CUDA; unfused decoding never gets it."""
    from shareddiff import static_decode

    model = build_model(ModelConfig.from_preset(preset)).eval()
    serves = preset in ("diff-tiny", "shared_diff-tiny")
    assert static_decode.DECODE_KERNEL_BY_DEFAULT
    chosen = static_decode._decode_kernel(model, None, fused=True, on_cuda=True)
    assert chosen is (differential_decode_step if serves else None)
    assert static_decode._decode_kernel(model, None, fused=True, on_cuda=False) is None
    assert static_decode._decode_kernel(model, None, fused=False, on_cuda=True) is None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(static_decode, "DECODE_KERNEL_BY_DEFAULT", False)
        assert static_decode._decode_kernel(model, None, fused=True, on_cuda=True) is None


@pytest.mark.parametrize("preset", ["transformer-tiny", "diff_v2-tiny", "shared_diff_v2-tiny"])
def test_decode_kernel_is_refused_for_a_model_it_does_not_serve(preset):
    """decode_kernel=True on a model without DIFF or Shared DIFF (V1) layers would run no kernel at all: refused,
    naming the attention; None leaves it off."""
    model = build_model(ModelConfig.from_preset(preset)).eval()
    attention = model.config.attention
    with pytest.raises(ValueError, match=rf"decode_kernel=True, but .*attention is '{attention}'.* leave it None"):
        StaticDecoder(model, max_len=8, decode_kernel=True)
    assert StaticDecoder(model, max_len=8)._decode_attention is None


def test_decode_kernel_refusals_name_head_dim_and_device(monkeypatch):
    """A head dim that is not a power of two, and a CPU model without Triton's interpreter: refused for True,
    naming each problem; None leaves the kernel off."""
    import shareddiff.ops.triton_decode as triton_decode

    odd = build_model(ModelConfig.from_preset("diff-tiny", d_model=96, n_heads=2)).eval()  # d = 96 / 4 = 24
    with pytest.raises(ValueError, match="the head dim 24 is not a power of two"):
        StaticDecoder(odd, max_len=8, decode_kernel=True)
    assert StaticDecoder(odd, max_len=8)._decode_attention is None
    monkeypatch.setattr(triton_decode, "INTERPRET", False)
    model = build_model(ModelConfig.from_preset("shared_diff-tiny")).eval()
    with pytest.raises(ValueError, match=r"not on CUDA .*TRITON_INTERPRET=1"):
        StaticDecoder(model, max_len=8, decode_kernel=True)
    assert StaticDecoder(model, max_len=8)._decode_attention is None


def test_bad_input_is_refused_naming_the_argument():
    q, k, v, lam, mask, w = make_inputs(2, 2, 1, 9, 16, torch.float32)
    cases = [
        (dict(q=q[:, :, 0]), r"q must be \(B, 2h, 1, d\)"),
        (dict(q=q[:, :3]), r"q must be \(B, 2h, 1, d\)"),
        (dict(q=q.repeat(1, 1, 2, 1)), r"q must be \(B, 2h, 1, d\)"),
        (dict(q=q.double(), k=k.double(), v=v.double(), mask=mask.double()), "q must be float16, bfloat16 or float32"),
        (dict(q=q[..., :12], k=k[..., :12], v=v[..., :24]), "q's head dim d=12 must be a power of two"),
        (dict(k=k[0]), r"k must be \(B, 2h_kv, N_k, d\)"),
        (dict(k=k[:, :1]), r"k must be \(B, 2h_kv, N_k, d\)"),
        (dict(k=k.half()), "k must have q's dtype"),
        (dict(v=v[..., :16]), r"v must be \(B, h_kv, N_k, 2d\)"),
        (dict(v=v.half()), "v must have q's dtype"),
        (dict(lam=lam.view(1)), "lam must be a 0-dim floating-point tensor"),
        (dict(lam=0.5), "lam must be a 0-dim floating-point tensor"),
        (dict(mask=mask[:, 0]), r"mask must be \(B or 1, 1, 1, N_k\)"),
        (dict(mask=mask[..., :5]), r"mask must be \(B or 1, 1, 1, N_k\)"),
        (dict(mask=mask == 0), "mask must be additive in q's dtype"),
        (dict(w=w[:5]), "norm_weight must be a float vector of 2d = 32 values"),
        (dict(eps=None), "norm_weight is the RMSNorm's scale: give eps too"),
        (dict(rope=(torch.ones(1, 1, 7), torch.ones(1, 1, 8))), r"rope's cos must be .* \(1, 1, d/2\)"),
        (dict(rope=(torch.ones(1, 1, 8), torch.ones(3, 1, 1, 8))), r"rope's sin must be .*\(2, 1, 1, 8\)"),
        (dict(rope=(torch.ones(1, 1, 8), torch.ones(1, 1, 8, dtype=torch.long))), "rope's sin must be a float"),
    ]
    for change, message in cases:
        args = dict(q=q, k=k, v=v, lam=lam, mask=mask, w=w, eps=EPS, rope=None) | change
        with pytest.raises(ValueError, match=message):
            differential_decode_attention(*args.values())


def test_decode_step_bad_input_is_refused_naming_the_argument():
    """``differential_decode_step``: a row that is not (B, 1, W), a width that does not fit the cache's key heads, a
    cache buffer that is not unit-stride (a copy would lose the write), a bad ``write_at``, and what
    ``differential_decode_attention`` refuses (here a cache of another dtype), each with a ``ValueError`` that names
    it."""
    q, k, v, lam, mask, w = make_inputs(2, 2, 1, 9, 16, torch.float32)
    qkv, at = pack(q, torch.randn(2, 2, 1, 16), torch.randn(2, 1, 1, 32)), torch.tensor([3])
    cases = [
        (dict(qkv=qkv[:, 0]), r"qkv must be \(B, 1, \(2h \+ 4h_kv\)·d\)"),
        (dict(qkv=qkv[..., :-16]), "qkv's width 112 does not fit k's 1 key heads of dim 16"),
        (dict(qkv=qkv[..., :64]), "qkv's width 64 does not fit"),
        (dict(k=k[0]), r"k must be \(B, 2h_kv, N_k, d\)"),
        (
            dict(k=k.transpose(-1, -2).contiguous().transpose(-1, -2)),
            "k must be the cache's buffer itself, unit stride",
        ),
        (
            dict(v=v.transpose(-1, -2).contiguous().transpose(-1, -2)),
            "v must be the cache's buffer itself, unit stride",
        ),
        (dict(k=k.half()), "k must have q's dtype"),
        (dict(at=at.int()), "write_at must be an int64 tensor of one element"),
        (dict(at=torch.tensor([1, 2])), "write_at must be an int64 tensor of one element"),
        (dict(at=3), "write_at must be an int64 tensor of one element"),
        (dict(counters=torch.zeros(3, dtype=torch.int32)), r"counters must be a contiguous int32 vector of at least"),
        (dict(counters=torch.zeros(4)), r"counters must be .* got torch.float32 \(4,\)"),
        (dict(counters=torch.zeros(8, dtype=torch.int32)[::2]), "counters must be a contiguous int32 vector"),
    ]
    for change, message in cases:
        args = dict(qkv=qkv, k=k, v=v, lam=lam, mask=mask, at=at, w=w, eps=EPS, rope=None, counters=None) | change
        with pytest.raises(ValueError, match=message):
            differential_decode_step(*args.values())


def test_kernel_compiles_for_hopper():
    """The kernels compile to sm_90 cubins (Triton's own compiler and ptxas, no GPU needed; a process without the
    interpreter) without spilling registers: the single kernel for bfloat16 and float32, with and without the
    norm and the rotation of q and with and without the cache write, and split-K's two kernels (bfloat16, with the
    norm; 128- and 64-key blocks, with and without the rotation, the cache write and the in-kernel merge), at the
    default launch
    settings, with the float arguments typed fp32 (an eager launch) and fp64 (inductor's launch from a compiled
    graph, which once changed a loop-carried variable's type and failed to compile on the GPU only): what the
    interpreter cannot check (e.g. the globals a kernel may read, a loop over a range known at run time only, type
    consistency in loops). Skipped where Triton has no ptxas."""
    code = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from shareddiff.ops.triton_decode import (
    BLOCK_N, MERGE_TILE, NUM_STAGES, NUM_WARPS, SHORT_BLOCK_N, _decode_kernel, _merge_kernel, _split_kernel,
)

def compile(kernel, pointers, ints, floats, constants):
    signature = pointers | dict.fromkeys(ints.split(), "i32") | dict.fromkeys(floats.split(), float_type)
    signature |= dict.fromkeys(constants, "constexpr")
    names = list(signature)
    source = ASTSource(kernel, signature, {(names.index(c),): x for c, x in constants.items()})
    options = {"num_warps": NUM_WARPS, "num_stages": NUM_STAGES}
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    assert "cubin" in compiled.asm and ".local" not in compiled.asm["ptx"], f"{kernel}: no cubin, or spills"

strides = "sqb sqh skb skh skn svb svh svn smb"
tables = {"Cos": "*fp32", "Sin": "*fp32"}  # the RoPE angles (rope=...)
for float_type in ("fp32", "fp64"):
    for dtype, norm, rope, update in (("bf16", True, True, True), ("bf16", True, True, False),
                                      ("bf16", True, False, False), ("fp32", False, False, True)):
        pointers = {name: f"*{dtype}" for name in ("Q", "K", "V", "Lam", "Mask", "W", "Out")} | tables
        pointers |= {"KN": f"*{dtype}", "VN": f"*{dtype}", "Pos": "*i64"}  # the cache write (update=...)
        constants = {"D": 64, "BN": BLOCK_N, "NORM": norm, "HAS_WEIGHT": norm, "ROPE": rope, "UPDATE": update}
        ints = strides + " sob soh scb sknb sknh svnb svnh kno vno H HKV GROUP NK"
        compile(_decode_kernel, pointers, ints, "scale_log2 eps", constants)
    pointers = {name: "*bf16" for name in ("Q", "K", "V", "Mask")} | {"Acc": "*fp32", "Stats": "*fp32"} | tables
    pointers |= {"KN": "*bf16", "VN": "*bf16", "Pos": "*i64", "Counter": "*i32"}
    pointers |= {"Lam": "*bf16", "W": "*bf16", "Out": "*bf16"}
    for block_n, rope, update in ((BLOCK_N, True, True), (SHORT_BLOCK_N, True, True), (SHORT_BLOCK_N, True, False),
                                  (BLOCK_N, False, False)):  # 64-key blocks: short caches
        constants = {"D": 64, "BN": block_n, "ROPE": rope, "UPDATE": update, "MERGE": update, "ST": MERGE_TILE,
                     "NORM": True, "HAS_WEIGHT": True}
        ints = strides + " scb sknb sknh svnb svnh kno vno sob soh H HKV GROUP NK CHUNK"
        compile(_split_kernel, pointers, ints, "scale_log2 eps", constants)
    pointers = {"Acc": "*fp32", "Stats": "*fp32", "Lam": "*bf16", "W": "*bf16", "Out": "*bf16"}
    constants = {"D": 64, "ST": MERGE_TILE, "NORM": True, "HAS_WEIGHT": True}
    compile(_merge_kernel, pointers, "sob soh H S", "eps", constants)
print("compiled")
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if "ptxas" in proc.stderr and proc.returncode:
        pytest.skip(f"Triton cannot run ptxas here: {proc.stderr[-300:]}")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-4000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA kernel needs a GPU")
@pytest.mark.parametrize("splits", [None, 1, 4], ids=["rule", "1 split", "4 splits"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_kernel_matches_float64_reference(seed, dtype, splits, request):
    """On the GPU (compiled by Triton, no interpreter): eager and inside torch.compile(fullgraph=True) (inductor),
    against the float64 reference, within TOL, on a 350m-like head layout (h 8, d 64) with a padded mask; the
    split count of the rule (3 rows × 8 heads on an H200: 2), the single kernel and 4 splits."""
    if in_subprocess_without_triton_interpreter(request):
        return
    inputs = [t.cuda() if t is not None else None for t in make_inputs(3, 8, 8, 300, 64, dtype)]
    expected = reference(*(t.cpu() for t in inputs), EPS)
    with decode_kernel_settings(splits=splits):
        compiled = torch.compile(differential_decode_attention, fullgraph=True)
        for fn in (differential_decode_attention, compiled):
            assert rel_err(fn(*inputs, EPS).cpu(), expected) <= TOL[dtype]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA kernel needs a GPU")
@pytest.mark.parametrize("splits", [None, 4, 8], ids=["rule", "4 splits", "8 splits"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_decode_step_matches_float64_reference(seed, dtype, splits, request):
    """On the GPU, eager and inside torch.compile(fullgraph=True) (inductor): ``differential_decode_step`` (the
    packed row, the cache write, split-K merged by the last split of each head) against the float64 reference of
    writing the cache then attending, within TOL, on a 350m-like head (h 8, d 64; GQA with 2 key heads, so one
    writer and three readers of each written row; 300 keys, a padded mask);
    40 calls in a row on one cache and one set of counters, each writing a new position, the counters zero after
    every call: a merge that reads a partial too early or a counter left non-zero shows as a wrong output."""
    if in_subprocess_without_triton_interpreter(request):
        return
    b, h, h_kv, n_k, d = 3, 8, 2, 300, 64  # GQA: 4 query heads a key head, one of them its writer
    q, k, v, lam, mask, w = (t.cuda() for t in make_inputs(b, h, h_kv, n_k, d, dtype))
    counters = torch.zeros(b * h, dtype=torch.int32, device="cuda")
    cos, sin = (t.cuda() for t in rope_angles(torch.tensor([[5], [900], [77]]), d, 10_000.0))  # a position per row
    compiled = torch.compile(differential_decode_step, fullgraph=True)
    with decode_kernel_settings(splits=splits):
        for call in range(40):
            pos = (37 * call + 11) % n_k
            mask[..., pos] = 0.0
            k_new = torch.randn(b, 2 * h_kv, 1, d, dtype=dtype, device="cuda")
            v_new = torch.randn(b, h_kv, 1, 2 * d, dtype=dtype, device="cuda")
            k_ref, v_ref = _updated_cache(k.cpu(), v.cpu(), k_new.cpu(), v_new.cpu(), pos, cos.cpu(), sin.cpu())
            expected = reference(rotate64(q.cpu(), cos.cpu(), sin.cpu()), k_ref, v_ref, lam.cpu(), mask.cpu(),
                                 w.cpu(), EPS)  # fmt: skip
            fn = differential_decode_step if call % 2 else compiled
            at = torch.tensor([pos], device="cuda")
            out = fn(pack(q, k_new, v_new), k, v, lam, mask, at, w, EPS, (cos, sin), counters)
            assert rel_err(out.cpu(), expected) <= TOL[dtype], f"call {call}"
            assert not counters.any(), f"call {call}"
            assert torch.equal(v[:, :, pos].cpu(), v_new[:, :, 0].cpu())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA kernel needs a GPU")
def test_cuda_in_kernel_merge_under_stress(seed, request):
    """The in-kernel merge against the merge kernel on the GPU: 64 splits of 64 keys for each of 2 × 8 heads (1,024
    programs racing to be a head's last), 300 launches in a row on one set of counters, each with a new packed row
    and a new position; each output equals ``differential_decode_attention`` (the two-kernel merge) on the cache
    after the write within 1e-6 relative (float32: the same partials merged in the same order, up to the order of
    the last split's arrival), and the counters are zero after every launch. A partial read before it was written
    (a lost release/acquire) or a counter left behind would show as a mismatch."""
    if in_subprocess_without_triton_interpreter(request):
        return
    b, h, h_kv, n_k, d = 2, 8, 2, 4096, 64
    q, k, v, lam, mask, w = (t.cuda() for t in make_inputs(b, h, h_kv, n_k, d, torch.float32, mask_kind="all"))
    counters = torch.zeros(b * h, dtype=torch.int32, device="cuda")
    with decode_kernel_settings(splits=64, block_n=64):
        for call in range(300):
            q = torch.randn_like(q)
            k_new = torch.randn(b, 2 * h_kv, 1, d, device="cuda")
            v_new = torch.randn(b, h_kv, 1, 2 * d, device="cuda")
            at = torch.tensor([(977 * call) % n_k], device="cuda")
            out = differential_decode_step(pack(q, k_new, v_new), k, v, lam, mask, at, w, EPS, None, counters)
            expected = differential_decode_attention(q, k, v, lam, mask, w, EPS)  # k, v written by the step
            assert rel_err(out, expected) <= 1e-6, f"launch {call}"
            assert not counters.any(), f"launch {call}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("splits", [None, 4], ids=["rule", "4 splits of 16 keys"])
@pytest.mark.parametrize("preset", ["diff-tiny", "shared_diff-tiny"])
def test_cuda_graph_decode_with_the_kernel_equals_reference(seed, preset, splits, request):
    """The decoder with the kernel (``decode_kernel=True``, the default on CUDA), compiled and
    captured in a CUDA graph (``compile=True, cuda_graph=True``): its logits are ≤ 1e-5 from the reference decode in
    float32 over a left-padded batch and 40 steps, with the same greedy tokens; with the rule's launch (one split
    at this 64-key buffer) and with split-K forced (4 splits of 16 keys, merged in the kernel on the decoder's
    counters, which end zero)."""
    if in_subprocess_without_triton_interpreter(request):
        return
    model = _trained_looking(build_model(ModelConfig.from_preset(preset), device="cuda").eval())
    decoder = StaticDecoder(model, max_len=64, compile=True, cuda_graph=True, decode_kernel=True)
    assert decoder._decode_attention is differential_decode_step
    ids, mask = (t.cuda() for t in _batch(model.config.vocab_size, padded=True))
    with decode_kernel_settings(splits=splits, block_n=16 if splits else None):
        ref, got = _teacher_forced(model, decoder, ids, mask)
    assert (got - ref).abs().max().item() <= 1e-5
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    assert not decoder.cache.split_counters.any()
