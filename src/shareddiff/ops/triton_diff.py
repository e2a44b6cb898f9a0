"""Fused differential flash attention in Triton: both softmax maps in one pass over each K/V tile.

Forward (``forward="fused"``, the default): per block of queries, two running (max, sum) pairs and two
accumulators over shared loads of V; writes out = O1 − λ·O2, O1, O2 and the two log-sum-exps (for the
backward), never an N×N tensor. ``"vsplit"`` splits V's 2d columns over two programs per query block
(half-width accumulators, QKᵀ done twice); ``"maps"`` runs one program per (query block, map), each with
one accumulator, and forms out = O1 − λ·O2 in a small second kernel.
Backward: a small kernel computes δ1 = rowsum(dO ⊙ O1), δ2 = rowsum(dO ⊙ O2); one kernel per block of
keys (all query heads of its GQA group) in which the two maps share dP = dO·Vᵀ and dV = (P1 − λP2)ᵀ·dO,
dK accumulating in registers. dQ (``dq=``): ``"split"`` (default) a second kernel per block of queries
recomputes the maps and accumulates dQ in registers (FlashAttention-2's split; 14 units of N²·d per head
pair); the other modes take dQ from the key-block kernel (10 units) and differ in how its per-tile
partial sums meet: ``"atomic"`` per-element float32 atomics, ``"reduce"`` a float32 workspace indexed by
key block summed in a fixed order by a second kernel (deterministic), ``"tma"`` one bulk tensor reduction
per tile through a tensor descriptor (Hopper's ``cp.reduce.async.bulk.tensor``, as FlashAttention-3).
dλ = −Σ δ2 is a reduction done in PyTorch. Every kernel runs the tiles that need no mask (inside the
keys, below the causal diagonal) through an unmasked loop body and masks only the rest. ``exp2="poly"``
computes map 2's score exponentials with a cubic on the FMA units instead of the special-function unit (as
FlashAttention-4 splits its own), in the fused forward and both backward kernels (half precision only).
``rescale="lazy"`` lets the fused forward keep a block's running maxima, and skip rescaling its accumulators,
until some row's maximum grows by more than 2^8 (FlashAttention-4's conditional rescaling).

Settings (modes, block shapes) are keyword arguments of ``triton_differential_attention``
(``shareddiff.ops.kernel_settings``); the ``SHAREDDIFF_TRITON_*`` environment variables still apply where
no keyword is given. Registered as backend "triton" (head half-dims 16/32/64/128); "auto" picks it only
where a row of ``kernel_settings.AUTO_RULES`` says so: the forward without gradients at d = 64, bfloat16, sm_90,
from 8,192 queries (0.92–0.96× the two SDPA calls there); in training the default modes are at parity with two
SDPA calls (docs/performance.md), so SDPA stays. Under ``TRITON_INTERPRET=1`` it runs on CPU tensors with small
blocks (tests).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

from shareddiff.ops.differential import _lam_view, register_backend
from shareddiff.ops.kernel_settings import Blocks, KernelSettings, auto_rule_for, settings_from_env

LOG2E = 1.4426950408889634
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
SUPPORTED_D = (16, 32, 64, 128)

# how the key-block kernel hands over dQ (the DQ_MODE constexpr)
DQ_NONE = tl.constexpr(0)  # not at all: the query-block kernel computes it ("split")
DQ_ATOMIC = tl.constexpr(1)  # per-element float32 atomic adds into a zeroed (B, h, N, d) buffer
DQ_WORKSPACE = tl.constexpr(2)  # plain stores into a workspace (key block, B·h, N', d), summed afterwards
DQ_DESCRIPTOR = tl.constexpr(3)  # one bulk reduce-add per tile through a tensor descriptor (TMA)
_DQ_CODE = {"split": 0, "atomic": 1, "reduce": 2, "tma": 3}


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a·b; exact float32 products (no TF32) when IEEE."""
    if IEEE:  # noqa: SIM108 (a statement-level branch on a constexpr: the form the kernels always used)
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


# 2^f on [0, 1] as 1 + f·(C1 + f·(C2 + f·C3)), C1 + C2 + C3 = 1 (exact at both ends, so the pieces join): the
# minimax fit of the relative error, 1.03e-4 at most (linear programming over 4,001 points of [0, 1]), below half
# a float16 ulp (4.9e-4) and a bfloat16 one (3.9e-3), the precision P is rounded to for the P·V product.
RESCALE_LOG2 = tl.constexpr(8.0)  # rescale="lazy": the growth of a running max (log2 units) that forces a rescale
EXP2_C1 = tl.constexpr(0.6954241731944334)
EXP2_C2 = tl.constexpr(0.2263083574083997)
EXP2_C3 = tl.constexpr(0.07826746939716708)


@triton.jit
def _exp2_fma(x):
    """2^x for float32 ``x`` ≤ 128 without the special-function unit: 2^⌊x⌋ placed in the exponent bits of a
    cubic for 2^(x − ⌊x⌋), all on the FMA and integer units (FlashAttention-4 computes part of its softmax
    exponentials this way, so that both units work at once). Relative error ≤ 1.03e-4 for x ≥ −126; 0 below
    (true value < 1.2e-38), −inf included. Not for NaN inputs (they give 0)."""
    xc = tl.maximum(x, -126.0)
    xi = tl.floor(xc)
    f = xc - xi
    p = (f * EXP2_C3 + EXP2_C2) * f + EXP2_C1
    p = p * f + 1.0
    y = (p.to(tl.int32, bitcast=True) + (xi.to(tl.int32) << 23)).to(tl.float32, bitcast=True)
    return tl.where(x >= -126.0, y, 0.0)


@triton.jit
def _exp2_map2(x, POLY: tl.constexpr):
    """Map 2's exponentials: on the FMA units when POLY (``exp2="poly"``), else ``tl.exp2`` (the hardware's)."""
    if POLY:  # noqa: SIM108 (as in _dot)
        y = _exp2_fma(x)
    else:
        y = tl.exp2(x)
    return y


@triton.jit
def _tile_grads(
    q1, q2, k1, k2, v, do, lse1, lse2, del1, del2, lam, valid, scale_log2,
    MASKED: tl.constexpr, IEEE: tl.constexpr, POLY: tl.constexpr,
):  # fmt: skip
    """For one (query block, key block) tile: both maps rebuilt from their log-sum-exps, and the score
    gradients dS1 = P1 ⊙ (dP − δ1), dS2 = −λ·P2 ⊙ (dP − δ2) with the shared dP = dO·Vᵀ. ``valid`` is
    used only when MASKED (tiles on the causal diagonal or past the end of the queries or keys)."""
    p1 = tl.exp2(_dot(q1, tl.trans(k1), IEEE) * scale_log2 - lse1[:, None])
    p2 = _exp2_map2(_dot(q2, tl.trans(k2), IEEE) * scale_log2 - lse2[:, None], POLY)
    if MASKED:
        p1 = tl.where(valid, p1, 0.0)
        p2 = tl.where(valid, p2, 0.0)
    dp = _dot(do, tl.trans(v), IEEE)
    ds1 = p1 * (dp - del1[:, None])
    ds2 = -lam * p2 * (dp - del2[:, None])
    return p1, p2, ds1, ds2


@triton.jit
def _hand_over_dq(ds, k, DQ, dq_base, start, offs_m, offs_d, row_ok, sm_scale,
                  D: tl.constexpr, BM: tl.constexpr, IEEE: tl.constexpr, DQ_MODE: tl.constexpr):  # fmt: skip
    """One map's dQ tile dS·K from the key-block kernel, handed over as DQ_MODE says (``dq_base``: this
    head's place in DQ). Called map after map, so one map's dQ tile is live at a time: on sm_90 that spilled
    less than both tiles at once in 5 of the 6 atomic/reduce/tma shapes (benchmarks/kernel_resources.py)."""
    dq = _dot(ds.to(k.dtype), k, IEEE)
    if DQ_MODE == DQ_ATOMIC:
        tl.atomic_add(DQ + dq_base + offs_m[:, None] * D + offs_d[None, :], dq * sm_scale, mask=row_ok[:, None])
    elif DQ_MODE == DQ_WORKSPACE:  # rows padded to whole query blocks: no mask; summed and scaled later
        tl.store(DQ + dq_base + offs_m[:, None] * D + offs_d[None, :], dq)
    else:  # DQ_DESCRIPTOR: the tile's rows past N fall outside the descriptor's bounds and are dropped
        DQ.atomic_add([dq_base, start, 0], tl.reshape(dq * sm_scale, [1, BM, D]))


@triton.jit
def _load_rows(P, off, offs_n, NK, MASKED: tl.constexpr):
    """Rows ``offs_n`` of a key-indexed tensor (K or V); when MASKED, rows past the keys read as 0."""
    if MASKED:  # noqa: SIM108 (as in _dot)
        x = tl.load(P + off, mask=(offs_n < NK)[:, None], other=0.0)
    else:
        x = tl.load(P + off)
    return x


@triton.jit
def _valid_pairs(offs_n, offs_m, NK, shift, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    """Which (query, key) pairs of a tile count: inside the keys and, if causal, not after the query;
    unmasked tiles return 1 (every pair counts)."""
    if MASKED:
        valid = (offs_n < NK)[None, :]
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None] + shift)
    else:
        valid = 1
    return valid


@triton.jit
def _load_kv(K1, K2, V, k_off, v_off, offs_n, offs_m, NK, shift, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    """One key block's K1, K2, V and which of its (query, key) pairs are valid (see ``_valid_pairs``)."""
    k1 = _load_rows(K1, k_off, offs_n, NK, MASKED)
    k2 = _load_rows(K2, k_off, offs_n, NK, MASKED)
    v = _load_rows(V, v_off, offs_n, NK, MASKED)
    return k1, k2, v, _valid_pairs(offs_n, offs_m, NK, shift, MASKED, CAUSAL)


@triton.jit
def _fwd_inner(
    acc1, acc2, l1, l2, m1, m2, q1, q2, K1, K2, V, k_base, v_base, skn, svn,
    offs_m, offs_d, offs_v, lo, hi, NK, shift, scale_log2,
    BN: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr, POLY: tl.constexpr,
    LAZY: tl.constexpr,
):  # fmt: skip
    """The online-softmax update of both maps over key blocks [lo, hi). MASKED=False is for blocks every
    query of the block may see (no causal or end-of-keys test: the bulk of the work). POLY: map 2's score
    exponentials on the FMA units (``_exp2_fma``). LAZY: the maxima m1, m2 the exponentials subtract stay as
    they are, and the accumulators and sums are not rescaled, until some row's max of either map grows by more
    than RESCALE_LOG2 (then every row moves to its own new max, as in the eager update): the exponentials stay
    ≤ 2^RESCALE_LOG2, and O = acc / l and lse = m + log2(l) are the same function of any max a row keeps."""
    for start in range(lo, hi, BN):
        offs_n = start + tl.arange(0, BN)
        k_off = k_base + offs_n[:, None] * skn + offs_d[None, :]
        v_off = v_base + offs_n[:, None] * svn + offs_v[None, :]
        k1, k2, v, valid = _load_kv(K1, K2, V, k_off, v_off, offs_n, offs_m, NK, shift, MASKED, CAUSAL)
        s1 = _dot(q1, tl.trans(k1), IEEE) * scale_log2
        s2 = _dot(q2, tl.trans(k2), IEEE) * scale_log2
        if MASKED:
            s1 = tl.where(valid, s1, float("-inf"))
            s2 = tl.where(valid, s2, float("-inf"))
        n1 = tl.maximum(m1, tl.max(s1, 1))
        n2 = tl.maximum(m2, tl.max(s2, 1))
        if LAZY:
            if tl.max(tl.maximum(n1 - m1, n2 - m2), 0) > RESCALE_LOG2:  # the first block: m = -inf, growth inf
                a1 = tl.exp2(m1 - n1)
                a2 = tl.exp2(m2 - n2)
                l1 = l1 * a1
                l2 = l2 * a2
                acc1 = acc1 * a1[:, None]
                acc2 = acc2 * a2[:, None]
                m1 = n1
                m2 = n2
            p1 = tl.exp2(s1 - m1[:, None])
            p2 = _exp2_map2(s2 - m2[:, None], POLY)
            l1 = l1 + tl.sum(p1, 1)
            l2 = l2 + tl.sum(p2, 1)
            acc1 = acc1 + _dot(p1.to(v.dtype), v, IEEE)
            acc2 = acc2 + _dot(p2.to(v.dtype), v, IEEE)
        else:
            p1 = tl.exp2(s1 - n1[:, None])
            p2 = _exp2_map2(s2 - n2[:, None], POLY)
            a1 = tl.exp2(m1 - n1)
            a2 = tl.exp2(m2 - n2)
            l1 = l1 * a1 + tl.sum(p1, 1)
            l2 = l2 * a2 + tl.sum(p2, 1)
            acc1 = acc1 * a1[:, None] + _dot(p1.to(v.dtype), v, IEEE)
            acc2 = acc2 * a2[:, None] + _dot(p2.to(v.dtype), v, IEEE)
            m1 = n1
            m2 = n2
    return acc1, acc2, l1, l2, m1, m2


@triton.jit
def _fwd_map_inner(
    acc, row_sum, row_max, q, K, V, k_base, v_base, skn, svn, offs_m, offs_d, offs_v, lo, hi, NK, shift, scale_log2,
    BN: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """``_fwd_inner`` for one map: a standard flash-attention online softmax over key blocks [lo, hi)."""
    for start in range(lo, hi, BN):
        offs_n = start + tl.arange(0, BN)
        k = _load_rows(K, k_base + offs_n[:, None] * skn + offs_d[None, :], offs_n, NK, MASKED)
        v = _load_rows(V, v_base + offs_n[:, None] * svn + offs_v[None, :], offs_n, NK, MASKED)
        s = _dot(q, tl.trans(k), IEEE) * scale_log2
        if MASKED:
            s = tl.where(_valid_pairs(offs_n, offs_m, NK, shift, MASKED, CAUSAL), s, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(s, 1))
        p = tl.exp2(s - new_max[:, None])
        alpha = tl.exp2(row_max - new_max)
        row_sum = row_sum * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        row_max = new_max
    return acc, row_sum, row_max


@triton.jit
def _query_rows(pid_m, bh, H, GROUP, N, NK, BN, BM: tl.constexpr, CAUSAL: tl.constexpr):
    """Where a query-block program (forward, dQ) stands: its batch, head and KV head, its rows, and the key
    range: blocks [0, full) need no mask (inside the keys and, if causal, at or below the block's first
    query), [full, hi) are masked."""
    b = bh // H
    h = bh % H
    offs_m = pid_m * BM + tl.arange(0, BM)
    shift = NK - N  # queries are the last N of the NK positions
    hi = NK
    full = NK // BN * BN
    if CAUSAL:
        hi = tl.minimum(NK, (pid_m + 1) * BM + shift)
        full = tl.minimum(full, (pid_m * BM + shift + 1) // BN * BN)
    return b, h, h // GROUP, offs_m, offs_m < N, shift, hi, full


@triton.jit
def _fwd_kernel(
    Q1, Q2, K1, K2, V, Lam, Out, O1, O2, Lse1, Lse2,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
    H, GROUP, N, NK, scale_log2,
    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
    SPLIT: tl.constexpr, VW: tl.constexpr, POLY: tl.constexpr, LAZY: tl.constexpr,
):  # fmt: skip
    # VW: the V columns of this program (2D, or D when V's columns are split over two programs that
    # each recompute both maps: half-width accumulators, for large d where two 2D-wide ones spill)
    scale_log2 = tl.cast(scale_log2, tl.float32)  # fp64 from a compiled graph: keep the math fp32
    bh = tl.program_id(1)
    b, h, hk, offs_m, row_ok, shift, hi, full = _query_rows(tl.program_id(0), bh, H, GROUP, N, NK, BN, BM, CAUSAL)
    offs_d = tl.arange(0, D)
    q_off = b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :]
    q1 = tl.load(Q1 + q_off, mask=row_ok[:, None], other=0.0)
    q2 = tl.load(Q2 + q_off, mask=row_ok[:, None], other=0.0)
    pid_v = tl.program_id(2)
    offs_v = pid_v * VW + tl.arange(0, VW)
    m1 = tl.full([BM], float("-inf"), tl.float32)
    m2 = tl.full([BM], float("-inf"), tl.float32)
    l1 = tl.zeros([BM], tl.float32)
    l2 = tl.zeros([BM], tl.float32)
    acc1 = tl.zeros([BM, VW], tl.float32)
    acc2 = tl.zeros([BM, VW], tl.float32)
    k_base = b * skb + hk * skh
    v_base = b * svb + hk * svh
    if not SPLIT:  # one masked loop over every tile (float32 on the GPU: a third of the compile time)
        full = 0
    else:
        acc1, acc2, l1, l2, m1, m2 = _fwd_inner(
            acc1, acc2, l1, l2, m1, m2, q1, q2, K1, K2, V, k_base, v_base, skn, svn,
            offs_m, offs_d, offs_v, 0, full, NK, shift, scale_log2, BN, False, CAUSAL, IEEE, POLY, LAZY,
        )  # fmt: skip
    acc1, acc2, l1, l2, m1, m2 = _fwd_inner(
        acc1, acc2, l1, l2, m1, m2, q1, q2, K1, K2, V, k_base, v_base, skn, svn,
        offs_m, offs_d, offs_v, full, hi, NK, shift, scale_log2, BN, True, CAUSAL, IEEE, POLY, LAZY,
    )  # fmt: skip
    lam = tl.load(Lam + h)
    o1 = acc1 / l1[:, None]
    o2 = acc2 / l2[:, None]
    o_off = b * sob + h * soh + offs_m[:, None] * son + offs_v[None, :]
    tl.store(Out + o_off, (o1 - lam * o2).to(Out.dtype.element_ty), mask=row_ok[:, None])
    tl.store(O1 + o_off, o1.to(O1.dtype.element_ty), mask=row_ok[:, None])
    tl.store(O2 + o_off, o2.to(O2.dtype.element_ty), mask=row_ok[:, None])
    lse_off = bh * N + offs_m
    if pid_v == 0:  # every column program has the same statistics: one writes them
        tl.store(Lse1 + lse_off, m1 + tl.log2(l1), mask=row_ok)
        tl.store(Lse2 + lse_off, m2 + tl.log2(l2), mask=row_ok)


@triton.jit
def _fwd_map_kernel(
    Q1, Q2, K1, K2, V, O1, O2, Lse1, Lse2,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
    H, GROUP, N, NK, scale_log2,
    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
    SPLIT: tl.constexpr,
):  # fmt: skip
    """One map of one query block (``forward="maps"``): program 2i runs map 1 of query block i and program
    2i + 1 map 2, so the two programs that read the same K/V tiles run side by side (shared in L2). Each
    keeps one (BM, 2D) accumulator instead of two; writes O1 or O2 and its log-sum-exp."""
    scale_log2 = tl.cast(scale_log2, tl.float32)  # fp64 from a compiled graph: keep the math fp32
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b, h, hk, offs_m, row_ok, shift, hi, full = _query_rows(pid // 2, bh, H, GROUP, N, NK, BN, BM, CAUSAL)
    if pid % 2 == 0:
        Qm = Q1
        Km = K1
        Om = O1
        Lsem = Lse1
    else:
        Qm = Q2
        Km = K2
        Om = O2
        Lsem = Lse2
    offs_d = tl.arange(0, D)
    offs_v = tl.arange(0, 2 * D)
    q = tl.load(Qm + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    row_max = tl.full([BM], float("-inf"), tl.float32)
    row_sum = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, 2 * D], tl.float32)
    k_base = b * skb + hk * skh
    v_base = b * svb + hk * svh
    if not SPLIT:
        full = 0
    else:
        acc, row_sum, row_max = _fwd_map_inner(
            acc, row_sum, row_max, q, Km, V, k_base, v_base, skn, svn, offs_m, offs_d, offs_v, 0, full, NK, shift,
            scale_log2, BN, False, CAUSAL, IEEE,
        )  # fmt: skip
    acc, row_sum, row_max = _fwd_map_inner(
        acc, row_sum, row_max, q, Km, V, k_base, v_base, skn, svn, offs_m, offs_d, offs_v, full, hi, NK, shift,
        scale_log2, BN, True, CAUSAL, IEEE,
    )  # fmt: skip
    o_off = b * sob + h * soh + offs_m[:, None] * son + offs_v[None, :]
    tl.store(Om + o_off, (acc / row_sum[:, None]).to(Om.dtype.element_ty), mask=row_ok[:, None])
    tl.store(Lsem + bh * N + offs_m, row_max + tl.log2(row_sum), mask=row_ok)


@triton.jit
def _combine_kernel(O1, O2, Lam, Out, H, N, BM: tl.constexpr, VW: tl.constexpr):
    """out = O1 − λ_h·O2 in float32 from the stored maps' outputs (contiguous (B, h, N, VW))."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    row_ok = offs_m < N
    off = (bh * N + offs_m[:, None]) * VW + tl.arange(0, VW)[None, :]
    o1 = tl.load(O1 + off, mask=row_ok[:, None], other=0.0).to(tl.float32)
    o2 = tl.load(O2 + off, mask=row_ok[:, None], other=0.0).to(tl.float32)
    lam = tl.load(Lam + bh % H)
    tl.store(Out + off, (o1 - lam * o2).to(Out.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _bwd_preprocess(DO, O1, O2, Del1, Del2, N, BM: tl.constexpr, VW: tl.constexpr):
    """δ1 = rowsum(dO ⊙ O1), δ2 = rowsum(dO ⊙ O2) in float32 from the stored outputs (contiguous rows)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    row_ok = offs_m < N
    off = (bh * N + offs_m[:, None]) * VW + tl.arange(0, VW)[None, :]
    do = tl.load(DO + off, mask=row_ok[:, None], other=0.0).to(tl.float32)
    o1 = tl.load(O1 + off, mask=row_ok[:, None], other=0.0).to(tl.float32)
    o2 = tl.load(O2 + off, mask=row_ok[:, None], other=0.0).to(tl.float32)
    tl.store(Del1 + bh * N + offs_m, tl.sum(do * o1, 1), mask=row_ok)
    tl.store(Del2 + bh * N + offs_m, tl.sum(do * o2, 1), mask=row_ok)


@triton.jit
def _bwd_kv_inner(
    dk1, dk2, dv, k1, k2, v, Q1, Q2, DO, Lse1, Lse2, Del1, Del2, DQ1, DQ2, dq_base,
    b, h, H, sqb, sqh, sqn, sob, soh, son, offs_n, offs_d, offs_v, col_ok, lam,
    lo, hi, N, shift, scale_log2, sm_scale,
    D: tl.constexpr, BM: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
    DQ_MODE: tl.constexpr, POLY: tl.constexpr,
):  # fmt: skip
    """One key block's dK1, dK2, dV accumulated over the query blocks [lo, hi) of query head h, and those
    blocks' dQ handed over as DQ_MODE says (``dq_base``: this head's place in DQ1/DQ2)."""
    for start in range(lo, hi, BM):
        offs_m = start + tl.arange(0, BM)
        q_off = b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :]
        do_off = b * sob + h * soh + offs_m[:, None] * son + offs_v[None, :]
        stat = (b * H + h) * N + offs_m
        row_ok = offs_m < N  # all true in unmasked tiles; keeps the atomic add's mask below well defined
        if MASKED:
            q1 = tl.load(Q1 + q_off, mask=row_ok[:, None], other=0.0)
            q2 = tl.load(Q2 + q_off, mask=row_ok[:, None], other=0.0)
            do = tl.load(DO + do_off, mask=row_ok[:, None], other=0.0)
            lse1 = tl.load(Lse1 + stat, mask=row_ok, other=0.0)
            lse2 = tl.load(Lse2 + stat, mask=row_ok, other=0.0)
            del1 = tl.load(Del1 + stat, mask=row_ok, other=0.0)
            del2 = tl.load(Del2 + stat, mask=row_ok, other=0.0)
            valid = col_ok[None, :] & row_ok[:, None]
            if CAUSAL:
                valid = valid & (offs_n[None, :] <= offs_m[:, None] + shift)
        else:
            q1 = tl.load(Q1 + q_off)
            q2 = tl.load(Q2 + q_off)
            do = tl.load(DO + do_off)
            lse1 = tl.load(Lse1 + stat)
            lse2 = tl.load(Lse2 + stat)
            del1 = tl.load(Del1 + stat)
            del2 = tl.load(Del2 + stat)
            valid = row_ok[:, None]
        p1, p2, ds1, ds2 = _tile_grads(
            q1, q2, k1, k2, v, do, lse1, lse2, del1, del2, lam, valid, scale_log2, MASKED, IEEE, POLY
        )
        pd = (p1 - lam * p2).to(do.dtype)
        dv += _dot(tl.trans(pd), do, IEEE)
        dk1 += _dot(tl.trans(ds1.to(q1.dtype)), q1, IEEE)
        dk2 += _dot(tl.trans(ds2.to(q2.dtype)), q2, IEEE)
        if DQ_MODE != DQ_NONE:
            _hand_over_dq(ds1, k1, DQ1, dq_base, start, offs_m, offs_d, row_ok, sm_scale, D, BM, IEEE, DQ_MODE)
            _hand_over_dq(ds2, k2, DQ2, dq_base, start, offs_m, offs_d, row_ok, sm_scale, D, BM, IEEE, DQ_MODE)
    return dk1, dk2, dv


@triton.jit
def _bwd_kernel(
    Q1, Q2, K1, K2, V, Lam, DO, Lse1, Lse2, Del1, Del2, DQ1, DQ2, DK1, DK2, DV,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
    H, HKV, GROUP, N, NK, NP, kb0, scale_log2, sm_scale,
    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
    SPLIT: tl.constexpr, DQ_MODE: tl.constexpr, POLY: tl.constexpr,
):  # fmt: skip
    """dK1, dK2, dV of key block ``kb0 + program_id(0)`` over every query head of its GQA group; dQ as
    DQ_MODE says (DQ1/DQ2: a zeroed float32 (B, h, N, d) buffer for DQ_ATOMIC, the workspace
    (launch's key blocks, B·h, NP, d) for DQ_WORKSPACE, tensor descriptors over (B·h, N, d) for
    DQ_DESCRIPTOR)."""
    scale_log2 = tl.cast(scale_log2, tl.float32)  # fp64 from a compiled graph: keep the math fp32
    sm_scale = tl.cast(sm_scale, tl.float32)
    pid_n = tl.program_id(0)
    if DQ_MODE == DQ_WORKSPACE:  # only "reduce" launches key blocks in chunks (split: the PTX of before)
        pid_n += kb0
    bhk = tl.program_id(1)
    b = bhk // HKV
    hk = bhk % HKV
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    offs_v = tl.arange(0, 2 * D)
    col_ok = offs_n < NK
    k_off = b * skb + hk * skh + offs_n[:, None] * skn + offs_d[None, :]
    v_off = b * svb + hk * svh + offs_n[:, None] * svn + offs_v[None, :]
    k1 = tl.load(K1 + k_off, mask=col_ok[:, None], other=0.0)
    k2 = tl.load(K2 + k_off, mask=col_ok[:, None], other=0.0)
    v = tl.load(V + v_off, mask=col_ok[:, None], other=0.0)
    dk1 = tl.zeros([BN, D], tl.float32)
    dk2 = tl.zeros([BN, D], tl.float32)
    dv = tl.zeros([BN, 2 * D], tl.float32)
    shift = NK - N
    lo = 0
    if CAUSAL:
        lo = tl.maximum(pid_n * BN - shift, 0) // BM * BM  # first query row that sees these keys
    # query blocks [lo, NK) split in three: a masked head on the causal diagonal, an unmasked middle
    # (every query sees every key of the block), a masked tail (the last, partial query block); a
    # partial key block (the last) is masked throughout
    full_n = N // BM * BM
    first_full = lo
    if CAUSAL:
        first_full = tl.cdiv(pid_n * BN + BN - 1 - shift, BM) * BM  # first query block past the diagonal
    if (pid_n + 1) * BN > NK:
        first_full = N
    head_end = tl.maximum(lo, tl.minimum(first_full, full_n))
    mid_end = tl.maximum(head_end, full_n)
    if not SPLIT:  # as in the forward: the head loop covers everything
        head_end = N
    for g in range(0, GROUP):
        h = hk * GROUP + g
        lam = tl.load(Lam + h)
        dq_base = (b * H + h) * N * D  # DQ_ATOMIC
        if DQ_MODE == DQ_WORKSPACE:
            dq_base = ((pid_n - kb0) * (tl.num_programs(1) * GROUP) + b * H + h) * NP * D
        elif DQ_MODE == DQ_DESCRIPTOR:
            dq_base = b * H + h
        dk1, dk2, dv = _bwd_kv_inner(
            dk1, dk2, dv, k1, k2, v, Q1, Q2, DO, Lse1, Lse2, Del1, Del2, DQ1, DQ2, dq_base,
            b, h, H, sqb, sqh, sqn, sob, soh, son, offs_n, offs_d, offs_v, col_ok, lam,
            lo, head_end, N, shift, scale_log2, sm_scale, D, BM, True, CAUSAL, IEEE, DQ_MODE, POLY,
        )  # fmt: skip
        if SPLIT:
            dk1, dk2, dv = _bwd_kv_inner(
                dk1, dk2, dv, k1, k2, v, Q1, Q2, DO, Lse1, Lse2, Del1, Del2, DQ1, DQ2, dq_base,
                b, h, H, sqb, sqh, sqn, sob, soh, son, offs_n, offs_d, offs_v, col_ok, lam,
                head_end, mid_end, N, shift, scale_log2, sm_scale, D, BM, False, CAUSAL, IEEE, DQ_MODE, POLY,
            )  # fmt: skip
            dk1, dk2, dv = _bwd_kv_inner(
                dk1, dk2, dv, k1, k2, v, Q1, Q2, DO, Lse1, Lse2, Del1, Del2, DQ1, DQ2, dq_base,
                b, h, H, sqb, sqh, sqn, sob, soh, son, offs_n, offs_d, offs_v, col_ok, lam,
                mid_end, N, N, shift, scale_log2, sm_scale, D, BM, True, CAUSAL, IEEE, DQ_MODE, POLY,
            )  # fmt: skip
    kd_off = ((b * HKV + hk) * NK + offs_n[:, None]) * D + offs_d[None, :]
    tl.store(DK1 + kd_off, (dk1 * sm_scale).to(DK1.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DK2 + kd_off, (dk2 * sm_scale).to(DK2.dtype.element_ty), mask=col_ok[:, None])
    dv_off = ((b * HKV + hk) * NK + offs_n[:, None]) * (2 * D) + offs_v[None, :]
    tl.store(DV + dv_off, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _dq_reduce_kernel(
    WS1, WS2, ACC1, ACC2, DQ1, DQ2, H, N, NK, NP, kb0, kb1, sm_scale,
    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr,
    ACCUMULATE: tl.constexpr, LAST: tl.constexpr,
):  # fmt: skip
    """dQ of one query block (``dq="reduce"``): the partial sums the key blocks [kb0, kb1) wrote to the
    workspace, added in key-block order (deterministic), only those of key blocks this query block sees
    (the others wrote nothing there). ACCUMULATE adds them to the running float32 sums ACC of earlier
    launches; LAST writes dQ·scale in DQ's dtype, else the running sums back to ACC."""
    sm_scale = tl.cast(sm_scale, tl.float32)  # fp64 from a compiled graph: keep the math fp32
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    row_ok = offs_m < N
    tile = offs_m[:, None] * D + tl.arange(0, D)[None, :]
    hi = NK
    if CAUSAL:
        hi = tl.minimum(NK, (pid_m + 1) * BM + NK - N)  # as in the key-block kernel's first query row
    kb_end = tl.minimum(kb1, tl.cdiv(hi, BN))
    if ACCUMULATE:
        acc1 = tl.load(ACC1 + bh * N * D + tile, mask=row_ok[:, None], other=0.0)
        acc2 = tl.load(ACC2 + bh * N * D + tile, mask=row_ok[:, None], other=0.0)
    else:
        acc1 = tl.zeros([BM, D], tl.float32)
        acc2 = tl.zeros([BM, D], tl.float32)
    for kb in range(kb0, kb_end):
        ws_off = ((kb - kb0) * tl.num_programs(1) + bh) * NP * D + tile
        acc1 += tl.load(WS1 + ws_off)
        acc2 += tl.load(WS2 + ws_off)
    if LAST:
        tl.store(DQ1 + bh * N * D + tile, (acc1 * sm_scale).to(DQ1.dtype.element_ty), mask=row_ok[:, None])
        tl.store(DQ2 + bh * N * D + tile, (acc2 * sm_scale).to(DQ2.dtype.element_ty), mask=row_ok[:, None])
    else:
        tl.store(ACC1 + bh * N * D + tile, acc1, mask=row_ok[:, None])
        tl.store(ACC2 + bh * N * D + tile, acc2, mask=row_ok[:, None])


@triton.jit
def _bwd_dq_inner(
    dq1, dq2, q1, q2, do, lse1, lse2, del1, del2, lam, K1, K2, V, k_base, v_base, skn, svn,
    offs_m, offs_d, offs_v, row_ok, lo, hi, NK, shift, scale_log2,
    BN: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr, POLY: tl.constexpr,
):  # fmt: skip
    """One query block's dQ1, dQ2 accumulated over the key blocks [lo, hi)."""
    for start in range(lo, hi, BN):
        offs_n = start + tl.arange(0, BN)
        k_off = k_base + offs_n[:, None] * skn + offs_d[None, :]
        v_off = v_base + offs_n[:, None] * svn + offs_v[None, :]
        k1, k2, v, valid = _load_kv(K1, K2, V, k_off, v_off, offs_n, offs_m, NK, shift, MASKED, CAUSAL)
        if MASKED:
            valid = valid & row_ok[:, None]
        _, _, ds1, ds2 = _tile_grads(
            q1, q2, k1, k2, v, do, lse1, lse2, del1, del2, lam, valid, scale_log2, MASKED, IEEE, POLY
        )
        dq1 += _dot(ds1.to(k1.dtype), k1, IEEE)
        dq2 += _dot(ds2.to(k2.dtype), k2, IEEE)
    return dq1, dq2


@triton.jit
def _bwd_dq_kernel(
    Q1, Q2, K1, K2, V, Lam, DO, Lse1, Lse2, Del1, Del2, DQ1, DQ2,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
    H, GROUP, N, NK, scale_log2, sm_scale,
    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
    SPLIT: tl.constexpr, POLY: tl.constexpr,
):  # fmt: skip
    """dQ1, dQ2 of one block of queries, accumulated in registers over the key blocks it sees (no atomics)."""
    scale_log2 = tl.cast(scale_log2, tl.float32)  # fp64 from a compiled graph: keep the math fp32
    sm_scale = tl.cast(sm_scale, tl.float32)
    bh = tl.program_id(1)
    b, h, hk, offs_m, row_ok, shift, hi, full = _query_rows(tl.program_id(0), bh, H, GROUP, N, NK, BN, BM, CAUSAL)
    offs_d = tl.arange(0, D)
    q_off = b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :]
    q1 = tl.load(Q1 + q_off, mask=row_ok[:, None], other=0.0)
    q2 = tl.load(Q2 + q_off, mask=row_ok[:, None], other=0.0)
    offs_v = tl.arange(0, 2 * D)
    do = tl.load(DO + b * sob + h * soh + offs_m[:, None] * son + offs_v[None, :], mask=row_ok[:, None], other=0.0)
    stat = bh * N + offs_m
    lse1 = tl.load(Lse1 + stat, mask=row_ok, other=0.0)
    lse2 = tl.load(Lse2 + stat, mask=row_ok, other=0.0)
    del1 = tl.load(Del1 + stat, mask=row_ok, other=0.0)
    del2 = tl.load(Del2 + stat, mask=row_ok, other=0.0)
    lam = tl.load(Lam + h)
    dq1 = tl.zeros([BM, D], tl.float32)
    dq2 = tl.zeros([BM, D], tl.float32)
    k_base = b * skb + hk * skh
    v_base = b * svb + hk * svh
    if not SPLIT:  # as in the forward
        full = 0
    else:
        dq1, dq2 = _bwd_dq_inner(
            dq1, dq2, q1, q2, do, lse1, lse2, del1, del2, lam, K1, K2, V, k_base, v_base, skn, svn,
            offs_m, offs_d, offs_v, row_ok, 0, full, NK, shift, scale_log2, BN, False, CAUSAL, IEEE, POLY,
        )  # fmt: skip
    dq1, dq2 = _bwd_dq_inner(
        dq1, dq2, q1, q2, do, lse1, lse2, del1, del2, lam, K1, K2, V, k_base, v_base, skn, svn,
        offs_m, offs_d, offs_v, row_ok, full, hi, NK, shift, scale_log2, BN, True, CAUSAL, IEEE, POLY,
    )  # fmt: skip
    tl.store(DQ1 + q_off, (dq1 * sm_scale).to(DQ1.dtype.element_ty), mask=row_ok[:, None])
    tl.store(DQ2 + q_off, (dq2 * sm_scale).to(DQ2.dtype.element_ty), mask=row_ok[:, None])


def split_tiles(dtype: torch.dtype) -> bool:
    """Whether the kernels run tiles that need no mask through their own loop body (the fast path).
    float32 on the GPU keeps one masked loop: speed is not its purpose and the extra bodies triple its
    compile time; the CPU interpreter always splits, so the float32 tests cover the fast path too."""
    return INTERPRET or dtype != torch.float32


FWD_DEEP_SMEM = 230_400  # bytes a block needs for the d = 128 forward at 3 stages (229,376; +1,024 with lazy)


def fwd_blocks(d: int, wide: bool, forward: str = "fused", smem_per_block: int = 0) -> Blocks:
    """Default forward launch shape per head half-dim; ``wide`` (4-byte elements) halves the tiles to fit
    shared memory. ``smem_per_block``: the shared memory (bytes) a block of the device may opt into; at
    d = 128 a device with at least ``FWD_DEEP_SMEM`` (sm_90: 232,448) gets a third pipelining stage, 6 % faster
    on an H200 (2026-12-03: 5.14 against 5.48 ms at N = 8192, 10.0-10.2 against 10.7 ms at 16,384;
    docs/performance.md, "The forward beside SDPA's"), and others keep two (163,840 bytes, which sm_80 holds).
    The CPU interpreter uses small blocks (no autotuning: no device to time on)."""
    if INTERPRET:
        return Blocks(16, 16)
    if wide:
        return Blocks(64, 32, 4, 1)
    if forward == "maps":  # one (BM, 2d) accumulator per program, as a standard forward of head dim 2d
        return Blocks(128, 64, 8, 3) if d <= 64 else Blocks(64, 64, 4, 2)
    if d >= 128:
        return Blocks(64, 64, 8, 3 if smem_per_block >= FWD_DEEP_SMEM else 2)
    return Blocks(128, 64, 8, 3)


_SMEM_PER_BLOCK: dict[torch.device, int] = {}


@torch.compiler.assume_constant_result  # under torch.compile: read once while tracing, a constant in the graph
def device_smem_per_block(device: torch.device) -> int:
    """The shared memory (bytes) one block may opt into on ``device`` (CUDA's
    ``MAX_SHARED_MEMORY_PER_BLOCK_OPTIN``: 232,448 on sm_90, 166,912 on sm_80); 0 off CUDA or where torch does not
    say. Read once per device."""
    if device not in _SMEM_PER_BLOCK:
        props = torch.cuda.get_device_properties(device) if device.type == "cuda" else None
        _SMEM_PER_BLOCK[device] = getattr(props, "shared_memory_per_block_optin", 0)
    return _SMEM_PER_BLOCK[device]


def bwd_blocks(d: int, wide: bool, dq: str = "split") -> Blocks:
    """Default key-block backward shape; the modes that take dQ from this kernel use wider key blocks (fewer
    partial dQ tiles per query block: narrow ones made "atomic" 2.7× slower at d = 128 on an H100)."""
    if INTERPRET:
        return Blocks(16, 16)
    if wide:
        return Blocks(16, 64, 4, 1)
    if dq == "atomic":
        return Blocks(32, 64, 8, 1) if d >= 128 else Blocks(32, 128, 8, 2)
    if dq in ("reduce", "tma"):  # not yet timed: the lead's sweep (benchmarks/attention.py --sweep) decides
        return Blocks(64, 64, 8, 1) if d >= 128 else Blocks(64, 128, 8, 2)
    # the fastest of benchmarks/attention.py --sweep on an H100 (docs/performance.md)
    return Blocks(64, 32, 4, 2) if d >= 128 else Blocks(64, 64, 4, 2)


def dq_blocks(d: int, wide: bool) -> Blocks:
    """The dQ kernel walks keys per query block like the forward; at d = 128 narrower key tiles won."""
    if INTERPRET or wide or d < 128:
        return fwd_blocks(d, wide)
    return Blocks(128, 32, 8, 2)


def _alloc(*shape: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every output and workspace the kernels must write in full (tests fill these with NaN, so an element
    a kernel leaves unwritten shows)."""
    return torch.empty(*shape, dtype=dtype, device=device)


def descriptor_reduce_available(device: torch.device) -> bool:
    """Whether a tile can be added through a tensor descriptor here: a GPU with TMA (compute capability
    ≥ 9), or the CPU interpreter once an emulation of the reduction is installed (Triton 3.9's interpreter
    has none; the tests install one)."""
    if INTERPRET:
        from triton.runtime.interpreter import InterpreterBuilder

        return hasattr(InterpreterBuilder, "create_descriptor_reduce")
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def dq_reduce_plan(b: int, h: int, n: int, n_k: int, d: int, blocks: Blocks, settings: KernelSettings) -> dict:
    """How ``dq="reduce"`` runs: key blocks per launch ``chunk``, ``launches``, and ``workspace_bytes``
    (2 maps × chunk × B·h × N' × d float32, N' = N rounded up to BM; the O(N²·d/BN) per head that all key
    blocks at once would take is bounded by ``settings.dq_workspace_mib`` or ``dq_chunk``). With more
    than one launch, two float32 (B, h, N, d) running sums are added (``accumulator_bytes``). Raises
    ``ValueError`` where one key block's workspace exceeds 32-bit indexing (B·h·N'·d ≥ 2³¹)."""
    n_kb = triton.cdiv(n_k, blocks.bn)
    per_block = b * h * triton.cdiv(n, blocks.bm) * blocks.bm * d  # elements per map and key block
    limit = (2**31 - 1) // per_block
    if limit < 1:
        raise ValueError(
            f"dq='reduce' at B·h·N·d = {b * h * n * d} exceeds the workspace's 32-bit indexing; use dq='split'"
        )
    chunk = settings.dq_chunk or max(1, settings.dq_workspace_mib * 2**20 // (2 * 4 * per_block))
    chunk = min(chunk, n_kb, limit)
    launches = triton.cdiv(n_kb, chunk)
    return {
        "chunk": chunk,
        "launches": launches,
        "workspace_bytes": 2 * 4 * chunk * per_block,
        "accumulator_bytes": 2 * 4 * b * h * n * d if launches > 1 else 0,
    }


# Each launched kernel's parameter names, read here once: inside ``torch.compile`` Dynamo cannot iterate a Triton
# kernel's attributes ("Unsupported hasattr call" on ``arg_names``, H200, torch 2.11, 2026-12-01), but it reads a
# module-level tuple of strings as a constant.
_PARAMETERS = {
    name: tuple(kernel.arg_names)
    for name, kernel in (
        ("fwd", _fwd_kernel), ("fwd_map", _fwd_map_kernel), ("bwd", _bwd_kernel), ("bwd_dq", _bwd_dq_kernel),
    )
}  # fmt: skip


def _poly(settings: KernelSettings, dtype: torch.dtype) -> bool:
    """Whether map 2's exponentials run on the FMA units (``exp2="poly"``): never for float32, the exactness path."""
    return settings.exp2 == "poly" and dtype != torch.float32


def _pick(kernel: str, values: dict) -> dict:
    """The entries of ``values`` that are parameters of the kernel named ``kernel`` (a key of ``_PARAMETERS``)."""
    return {name: values[name] for name in _PARAMETERS[kernel] if name in values}


def _strides(prefix: str, t: Tensor) -> dict:
    """A (B, h, N, ·) tensor's batch, head and row strides as the kernels name them (``sqb, sqh, sqn``...)."""
    return {f"{prefix}{axis}": t.stride(i) for i, axis in enumerate("bhn")}


class _FusedDifferentialAttentionFunction(torch.autograd.Function):
    """The fused kernels as one autograd op: forward saves O1, O2 and both log-sum-exps; backward runs the
    dQ/dK/dV kernels the ``settings`` choose. Called through ``triton_differential_attention``."""

    @staticmethod
    def forward(ctx, q1, q2, k1, k2, v, lam, causal, settings):
        q1, q2, k1, k2, v = (t.contiguous() for t in (q1, q2, k1, k2, v))
        lam = lam.contiguous()
        b, h, n, d = q1.shape
        h_kv, n_k = k1.shape[1], k1.shape[2]
        dev = q1.device
        out = _alloc(b, h, n, 2 * d, dtype=q1.dtype, device=dev)
        o1 = _alloc(b, h, n, 2 * d, dtype=q1.dtype, device=dev)  # both maps' outputs, for the backward's δ
        o2 = _alloc(b, h, n, 2 * d, dtype=q1.dtype, device=dev)
        lse1 = _alloc(b, h, n, dtype=torch.float32, device=dev)
        lse2 = _alloc(b, h, n, dtype=torch.float32, device=dev)
        values = {
            "Q1": q1, "Q2": q2, "K1": k1, "K2": k2, "V": v, "Lam": lam, "Out": out, "O1": o1, "O2": o2,
            "Lse1": lse1, "Lse2": lse2, **_strides("sq", q1), **_strides("sk", k1), **_strides("sv", v),
            **_strides("so", out), "H": h, "GROUP": h // h_kv, "N": n, "NK": n_k,
            "scale_log2": LOG2E / math.sqrt(d),
        }  # fmt: skip
        flags = {"D": d, "CAUSAL": causal, "IEEE": q1.dtype == torch.float32, "SPLIT": split_tiles(q1.dtype)}
        blocks = settings.fwd_blocks or fwd_blocks(
            d, q1.element_size() == 4, settings.forward, device_smem_per_block(dev)
        )
        if settings.forward == "maps":
            grid = (2 * triton.cdiv(n, blocks.bm), b * h)
            _fwd_map_kernel[grid](**_pick("fwd_map", values), **flags, **blocks.launch(INTERPRET))
            combine_bm = 16 if INTERPRET else 32
            _combine_kernel[(triton.cdiv(n, combine_bm), b * h)](o1, o2, lam, out, h, n, BM=combine_bm, VW=2 * d)
        else:
            programs = 2 if settings.forward == "vsplit" else 1
            grid = (triton.cdiv(n, blocks.bm), b * h, programs)
            _fwd_kernel[grid](
                **_pick("fwd", values), **flags, VW=2 * d // programs, POLY=_poly(settings, q1.dtype),
                LAZY=settings.rescale == "lazy", **blocks.launch(INTERPRET),
            )  # fmt: skip
        ctx.save_for_backward(q1, q2, k1, k2, v, lam, o1, o2, lse1, lse2)
        ctx.causal = causal
        ctx.settings = settings
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q1, q2, k1, k2, v, lam, o1, o2, lse1, lse2 = ctx.saved_tensors
        settings: KernelSettings = ctx.settings
        grad_out = grad_out.contiguous()
        b, h, n, d = q1.shape
        h_kv, n_k = k1.shape[1], k1.shape[2]
        dev, wide = q1.device, q1.element_size() == 4
        del1 = _alloc(b, h, n, dtype=torch.float32, device=dev)  # rowsum(dO ⊙ O1)
        del2 = _alloc(b, h, n, dtype=torch.float32, device=dev)  # rowsum(dO ⊙ O2)
        pre_bm = 16 if INTERPRET else 64
        _bwd_preprocess[(triton.cdiv(n, pre_bm), b * h)](grad_out, o1, o2, del1, del2, n, BM=pre_bm, VW=2 * d)
        dlam = -del2.sum(dim=(0, 2))  # ∂/∂λ_h of Σ dO ⊙ (O1 − λ_h O2)
        mode = settings.dq
        if mode == "tma" and not descriptor_reduce_available(dev):
            warnings.warn("dq='tma' needs tensor descriptors that reduce (a GPU of compute capability ≥ 9); "
                          "running dq='atomic' instead", stacklevel=2)  # fmt: skip
            mode = "atomic"
        dk1 = _alloc(b, h_kv, n_k, d, dtype=k1.dtype, device=dev)
        dk2 = _alloc(b, h_kv, n_k, d, dtype=k1.dtype, device=dev)
        dv = _alloc(b, h_kv, n_k, 2 * d, dtype=v.dtype, device=dev)
        blocks = settings.bwd_blocks or bwd_blocks(d, wide, mode)
        n_p = triton.cdiv(n, blocks.bm) * blocks.bm
        values = {
            "Q1": q1, "Q2": q2, "K1": k1, "K2": k2, "V": v, "Lam": lam, "DO": grad_out, "Lse1": lse1,
            "Lse2": lse2, "Del1": del1, "Del2": del2, "DK1": dk1, "DK2": dk2, "DV": dv,
            **_strides("sq", q1), **_strides("sk", k1), **_strides("sv", v), **_strides("so", grad_out),
            "H": h, "HKV": h_kv, "GROUP": h // h_kv, "N": n, "NK": n_k, "NP": n_p, "kb0": 0,
            "scale_log2": LOG2E / math.sqrt(d), "sm_scale": 1.0 / math.sqrt(d),
        }  # fmt: skip
        flags = {"D": d, "CAUSAL": ctx.causal, "IEEE": q1.dtype == torch.float32, "SPLIT": split_tiles(q1.dtype)}
        flags |= blocks.launch(INTERPRET) | {"POLY": _poly(settings, q1.dtype)}
        n_kb = triton.cdiv(n_k, blocks.bn)

        def key_blocks(first: int, count: int, dq1, dq2) -> None:
            grid = (count, b * h_kv)
            args = _pick("bwd", values | {"DQ1": dq1, "DQ2": dq2, "kb0": first})
            _bwd_kernel[grid](**args, **flags, DQ_MODE=_DQ_CODE[mode])

        if mode == "split":
            key_blocks(0, n_kb, dk1, dk2)  # (DQ1, DQ2 unused)
            dq1 = _alloc(b, h, n, d, dtype=q1.dtype, device=dev)
            dq2 = _alloc(b, h, n, d, dtype=q1.dtype, device=dev)
            dq_shape = settings.dq_blocks or dq_blocks(d, wide)
            dq_flags = flags | dq_shape.launch(INTERPRET)
            _bwd_dq_kernel[(triton.cdiv(n, dq_shape.bm), b * h)](
                **_pick("bwd_dq", values | {"DQ1": dq1, "DQ2": dq2}), **dq_flags
            )
        elif mode in ("atomic", "tma"):  # float32 sums the key-block kernel adds into, tile by tile
            dq1, dq2 = (torch.zeros(b, h, n, d, device=dev, dtype=torch.float32) for _ in range(2))
            if mode == "tma":
                key_blocks(0, n_kb, *(_tile_descriptor(t, blocks.bm) for t in (dq1, dq2)))
            else:
                key_blocks(0, n_kb, dq1, dq2)
            dq1, dq2 = dq1.to(q1.dtype), dq2.to(q2.dtype)
        else:
            dq1, dq2 = _reduce_dq(values, blocks, settings, key_blocks, q1, ctx.causal)
        return dq1, dq2, dk1, dk2, dv, dlam, None, None


def _tile_descriptor(t: Tensor, bm: int) -> TensorDescriptor:
    """A descriptor over a contiguous (B, h, N, d) float32 tensor seen as (B·h, N, d), one (1, bm, d) tile
    per access: rows past N are outside its bounds, so a tile's padding rows are dropped."""
    b, h, n, d = t.shape
    return TensorDescriptor(t, [b * h, n, d], [n * d, d, 1], [1, bm, d])


def _reduce_dq(values: dict, blocks: Blocks, settings: KernelSettings, key_blocks, q1: Tensor, causal: bool) -> tuple:
    """dq="reduce": per launch of ``chunk`` key blocks, each writes its partial dQ tiles to the workspace and
    ``_dq_reduce_kernel`` sums them per query block in key-block order (deterministic)."""
    b, h, n, d = q1.shape
    n_k, n_p = values["NK"], values["NP"]
    plan = dq_reduce_plan(b, h, n, n_k, d, blocks, settings)
    chunk, dev = plan["chunk"], q1.device
    workspace = _alloc(2, chunk, b * h, n_p, d, dtype=torch.float32, device=dev)
    dq1 = _alloc(b, h, n, d, dtype=q1.dtype, device=dev)
    dq2 = _alloc(b, h, n, d, dtype=q1.dtype, device=dev)
    if plan["launches"] > 1:
        acc1 = _alloc(b, h, n, d, dtype=torch.float32, device=dev)
        acc2 = _alloc(b, h, n, d, dtype=torch.float32, device=dev)
    else:
        acc1, acc2 = dq1, dq2  # (unused)
    n_kb = triton.cdiv(n_k, blocks.bn)
    reduce_bm = blocks.bm  # the key-block kernel's query blocks: which ones a key block wrote
    for first in range(0, n_kb, chunk):
        last = min(first + chunk, n_kb)
        key_blocks(first, last - first, workspace[0], workspace[1])
        _dq_reduce_kernel[(triton.cdiv(n, reduce_bm), b * h)](
            workspace[0], workspace[1], acc1, acc2, dq1, dq2, h, n, n_k, n_p, first, last, values["sm_scale"],
            D=d, BM=reduce_bm, BN=blocks.bn, CAUSAL=causal, ACCUMULATE=first > 0, LAST=last == n_kb,
        )  # fmt: skip
    return dq1, dq2


def triton_available_for(q: Tensor) -> bool:
    return (
        (q.is_cuda or INTERPRET)
        and q.shape[-1] in SUPPORTED_D
        and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
    )


_OPTIONS = {f.name for f in dataclasses.fields(KernelSettings)}


@register_backend("triton", auto_when=lambda q: auto_rule_for(q) is not None)
def triton_differential_attention(
    q1, q2, k1, k2, v, lam, causal=True, mask=None, *, settings: KernelSettings | None = None, **options
):
    """The fused kernel. λ (scalar or per head) may require grad; returns (B, h, N, 2d) in q's dtype.

    ``settings`` / ``options``: how it runs (``KernelSettings``, or its fields as keywords, e.g.
    ``dq="tma"``, ``forward="maps"``, ``bwd_blocks=Blocks(64, 128, 8, 2)``). A keyword wins over
    ``settings``; without ``settings``, the ``SHAREDDIFF_TRITON_*`` environment variables, then the
    ``AUTO_RULES`` row for these inputs, then the defaults decide. Every choice computes the same function.
    The kernel has no mask input: a ``mask`` (padded batches) is refused with a ``ValueError``, as are
    unknown options."""
    if mask is not None:
        raise ValueError(
            "the triton kernel takes no attention mask, so it cannot run padded batches; use the sdpa or eager "
            "backend for them (model.set_attention_backend('sdpa'))"
        )
    if not triton_available_for(q1):
        problems = []
        if not (q1.is_cuda or INTERPRET):
            problems.append(f"it runs on CUDA tensors, these are on {q1.device} (TRITON_INTERPRET=1 runs it slowly)")
        if q1.shape[-1] not in SUPPORTED_D:
            problems.append(f"head half-dim d={q1.shape[-1]} is not one of {SUPPORTED_D}")
        if not problems:
            problems.append(f"dtype {q1.dtype} is not float16, bfloat16 or float32")
        raise ValueError(
            f"the triton backend cannot run here: {'; '.join(problems)}; use attn_backend 'auto' (SDPA) or 'eager'"
        )
    if unknown := options.keys() - _OPTIONS:
        raise ValueError(f"unknown kernel options {sorted(unknown)}; use {sorted(_OPTIONS)}")
    if settings is None:
        rule = auto_rule_for(q1)
        settings = settings_from_env(rule.settings if rule else None)
    settings = settings.replace(**options)
    h = q1.shape[1]
    lam_t = lam if isinstance(lam, Tensor) else torch.tensor(float(lam), device=q1.device)
    lam_view = _lam_view(lam_t.float(), h, lam_t.float())  # validates the shape
    lam_h = (lam_view.reshape(-1) if lam_view.dim() else lam_view.reshape(1)).expand(h).float()
    return _FusedDifferentialAttentionFunction.apply(q1, q2, k1, k2, v, lam_h, causal, settings)
