"""Fused differential flash attention in Triton: both softmax maps in one pass over each K/V tile.

Forward: per block of queries, two running (max, sum) pairs and two accumulators over shared loads
of V; writes out = O1 − λ·O2, O1, O2 and the two log-sum-exps (for the backward), never an N×N tensor.
Backward: a small kernel computes δ1 = rowsum(dO ⊙ O1), δ2 = rowsum(dO ⊙ O2); one kernel per block of
keys (all query heads of its GQA group) in which the two maps share dP = dO·Vᵀ and
dV = (P1 − λP2)ᵀ·dO, dK accumulating in registers. dQ: by default a second kernel per block of
queries recomputes the maps and accumulates dQ in registers (FlashAttention-2's split);
``SHAREDDIFF_TRITON_DQ=atomic`` instead adds dQ from the key-block kernel with fp32 atomics.
dλ = −Σ δ2 is a reduction done in PyTorch. Every kernel runs the tiles that need no mask (inside the
keys, below the causal diagonal) through an unmasked loop body and masks only the rest.
``SHAREDDIFF_TRITON_VSPLIT=2`` splits the forward's V columns over two programs per query block
(half-width accumulators); ``SHAREDDIFF_TRITON_{FWD,BWD,DQ}_BLOCKS`` override block shapes (sweeps).

Registered as backend "triton" (head half-dims 16/32/64/128; "auto" keeps SDPA: on an H100 this kernel
is at parity with two SDPA calls, not faster, see docs/performance.md); under ``TRITON_INTERPRET=1``
it runs on CPU tensors with fixed small blocks (tests).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from shareddiff.ops.differential import _lam_view, register_backend

LOG2E = 1.4426950408889634
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
SUPPORTED_D = (16, 32, 64, 128)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a·b; exact float32 products (no TF32) when IEEE."""
    if IEEE:  # noqa: SIM108 (a statement-level branch on a constexpr: the form the kernels always used)
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _tile_grads(
    q1, q2, k1, k2, v, do, lse1, lse2, del1, del2, lam, valid, scale_log2, MASKED: tl.constexpr, IEEE: tl.constexpr
):
    """For one (query block, key block) tile: both maps rebuilt from their log-sum-exps, and the score
    gradients dS1 = P1 ⊙ (dP − δ1), dS2 = −λ·P2 ⊙ (dP − δ2) with the shared dP = dO·Vᵀ. ``valid`` is
    used only when MASKED (tiles on the causal diagonal or past the end of the queries or keys)."""
    p1 = tl.exp2(_dot(q1, tl.trans(k1), IEEE) * scale_log2 - lse1[:, None])
    p2 = tl.exp2(_dot(q2, tl.trans(k2), IEEE) * scale_log2 - lse2[:, None])
    if MASKED:
        p1 = tl.where(valid, p1, 0.0)
        p2 = tl.where(valid, p2, 0.0)
    dp = _dot(do, tl.trans(v), IEEE)
    ds1 = p1 * (dp - del1[:, None])
    ds2 = -lam * p2 * (dp - del2[:, None])
    return p1, p2, ds1, ds2


@triton.jit
def _load_kv(K1, K2, V, k_off, v_off, offs_n, offs_m, NK, shift, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    """One key block's K1, K2, V and, when MASKED, which (query, key) pairs are valid (inside the keys
    and, if causal, not after the query); unmasked blocks load without bounds and return valid = 1."""
    if MASKED:
        col_ok = offs_n < NK
        k1 = tl.load(K1 + k_off, mask=col_ok[:, None], other=0.0)
        k2 = tl.load(K2 + k_off, mask=col_ok[:, None], other=0.0)
        v = tl.load(V + v_off, mask=col_ok[:, None], other=0.0)
        valid = col_ok[None, :]
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None] + shift)
    else:
        k1 = tl.load(K1 + k_off)
        k2 = tl.load(K2 + k_off)
        v = tl.load(V + v_off)
        valid = 1
    return k1, k2, v, valid


@triton.jit
def _fwd_inner(
    acc1, acc2, l1, l2, m1, m2, q1, q2, K1, K2, V, k_base, v_base, skn, svn,
    offs_m, offs_d, offs_v, lo, hi, NK, shift, scale_log2,
    BN: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """The online-softmax update of both maps over key blocks [lo, hi). MASKED=False is for blocks every
    query of the block may see (no causal or end-of-keys test: the bulk of the work)."""
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
        p1 = tl.exp2(s1 - n1[:, None])
        p2 = tl.exp2(s2 - n2[:, None])
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
def _query_block(Q1, Q2, sqb, sqh, sqn, H, GROUP, N, NK, BN, BM: tl.constexpr, D: tl.constexpr, CAUSAL: tl.constexpr):
    """What a query-block program (forward, dQ) starts from: its batch, head and KV head, row offsets,
    its Q1/Q2 tiles, and the key range: blocks [0, full) need no mask (inside the keys and, if causal, at
    or below the block's first query), [full, hi) are masked."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < N
    q_off = b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :]
    q1 = tl.load(Q1 + q_off, mask=row_ok[:, None], other=0.0)
    q2 = tl.load(Q2 + q_off, mask=row_ok[:, None], other=0.0)
    shift = NK - N  # queries are the last N of the NK positions
    hi = NK
    full = NK // BN * BN
    if CAUSAL:
        hi = tl.minimum(NK, (pid_m + 1) * BM + shift)
        full = tl.minimum(full, (pid_m * BM + shift + 1) // BN * BN)
    return bh, b, h, h // GROUP, offs_m, offs_d, row_ok, q1, q2, shift, hi, full


@triton.jit
def _fwd_kernel(
    Q1,
    Q2,
    K1,
    K2,
    V,
    Lam,
    Out,
    O1,
    O2,
    Lse1,
    Lse2,
    sqb,
    sqh,
    sqn,
    skb,
    skh,
    skn,
    svb,
    svh,
    svn,
    sob,
    soh,
    son,
    H,
    GROUP,
    N,
    NK,
    scale_log2,
    D: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    CAUSAL: tl.constexpr,
    IEEE: tl.constexpr,
    SPLIT: tl.constexpr,
    VW: tl.constexpr,
):
    # VW: the V columns of this program (2D, or D when V's columns are split over two programs that
    # each recompute both maps: half-width accumulators, for large d where two 2D-wide ones spill)
    bh, b, h, hk, offs_m, offs_d, row_ok, q1, q2, shift, hi, full = _query_block(
        Q1, Q2, sqb, sqh, sqn, H, GROUP, N, NK, BN, BM, D, CAUSAL
    )
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
            offs_m, offs_d, offs_v, 0, full, NK, shift, scale_log2, BN, False, CAUSAL, IEEE,
        )  # fmt: skip
    acc1, acc2, l1, l2, m1, m2 = _fwd_inner(
        acc1, acc2, l1, l2, m1, m2, q1, q2, K1, K2, V, k_base, v_base, skn, svn,
        offs_m, offs_d, offs_v, full, hi, NK, shift, scale_log2, BN, True, CAUSAL, IEEE,
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
    dk1, dk2, dv, k1, k2, v, Q1, Q2, DO, Lse1, Lse2, Del1, Del2, DQ1, DQ2,
    b, h, H, sqb, sqh, sqn, sob, soh, son, offs_n, offs_d, offs_v, col_ok, lam,
    lo, hi, N, shift, scale_log2, sm_scale,
    D: tl.constexpr, BM: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
    DQ_ATOMIC: tl.constexpr,
):  # fmt: skip
    """One key block's dK1, dK2, dV accumulated over the query blocks [lo, hi) of query head h (and,
    with DQ_ATOMIC, those blocks' dQ added atomically)."""
    for start in range(lo, hi, BM):
        offs_m = start + tl.arange(0, BM)
        q_off = b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :]
        do_off = b * sob + h * soh + offs_m[:, None] * son + offs_v[None, :]
        stat = (b * H + h) * N + offs_m
        if MASKED:
            row_ok = offs_m < N
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
            row_ok = offs_m < N  # all true here; keeps the atomic add's mask below well defined
            q1 = tl.load(Q1 + q_off)
            q2 = tl.load(Q2 + q_off)
            do = tl.load(DO + do_off)
            lse1 = tl.load(Lse1 + stat)
            lse2 = tl.load(Lse2 + stat)
            del1 = tl.load(Del1 + stat)
            del2 = tl.load(Del2 + stat)
            valid = row_ok[:, None]
        p1, p2, ds1, ds2 = _tile_grads(
            q1, q2, k1, k2, v, do, lse1, lse2, del1, del2, lam, valid, scale_log2, MASKED, IEEE
        )
        pd = (p1 - lam * p2).to(do.dtype)
        dv += _dot(tl.trans(pd), do, IEEE)
        dk1 += _dot(tl.trans(ds1.to(q1.dtype)), q1, IEEE)
        dk2 += _dot(tl.trans(ds2.to(q2.dtype)), q2, IEEE)
        if DQ_ATOMIC:
            dq1 = _dot(ds1.to(k1.dtype), k1, IEEE)
            dq2 = _dot(ds2.to(k2.dtype), k2, IEEE)
            dq_off = ((b * H + h) * N + offs_m[:, None]) * D + offs_d[None, :]
            tl.atomic_add(DQ1 + dq_off, dq1 * sm_scale, mask=row_ok[:, None])
            tl.atomic_add(DQ2 + dq_off, dq2 * sm_scale, mask=row_ok[:, None])
    return dk1, dk2, dv


@triton.jit
def _bwd_kernel(
    Q1,
    Q2,
    K1,
    K2,
    V,
    Lam,
    DO,
    Lse1,
    Lse2,
    Del1,
    Del2,
    DQ1,
    DQ2,
    DK1,
    DK2,
    DV,
    sqb,
    sqh,
    sqn,
    skb,
    skh,
    skn,
    svb,
    svh,
    svn,
    sob,
    soh,
    son,
    H,
    HKV,
    GROUP,
    N,
    NK,
    scale_log2,
    sm_scale,
    D: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    CAUSAL: tl.constexpr,
    IEEE: tl.constexpr,
    SPLIT: tl.constexpr,
    DQ_ATOMIC: tl.constexpr,
):
    pid_n = tl.program_id(0)
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
        dk1, dk2, dv = _bwd_kv_inner(
            dk1, dk2, dv, k1, k2, v, Q1, Q2, DO, Lse1, Lse2, Del1, Del2, DQ1, DQ2,
            b, h, H, sqb, sqh, sqn, sob, soh, son, offs_n, offs_d, offs_v, col_ok, lam,
            lo, head_end, N, shift, scale_log2, sm_scale, D, BM, True, CAUSAL, IEEE, DQ_ATOMIC,
        )  # fmt: skip
        if SPLIT:
            dk1, dk2, dv = _bwd_kv_inner(
                dk1, dk2, dv, k1, k2, v, Q1, Q2, DO, Lse1, Lse2, Del1, Del2, DQ1, DQ2,
                b, h, H, sqb, sqh, sqn, sob, soh, son, offs_n, offs_d, offs_v, col_ok, lam,
                head_end, mid_end, N, shift, scale_log2, sm_scale, D, BM, False, CAUSAL, IEEE, DQ_ATOMIC,
            )  # fmt: skip
            dk1, dk2, dv = _bwd_kv_inner(
                dk1, dk2, dv, k1, k2, v, Q1, Q2, DO, Lse1, Lse2, Del1, Del2, DQ1, DQ2,
                b, h, H, sqb, sqh, sqn, sob, soh, son, offs_n, offs_d, offs_v, col_ok, lam,
                mid_end, N, N, shift, scale_log2, sm_scale, D, BM, True, CAUSAL, IEEE, DQ_ATOMIC,
            )  # fmt: skip
    kd_off = ((b * HKV + hk) * NK + offs_n[:, None]) * D + offs_d[None, :]
    tl.store(DK1 + kd_off, (dk1 * sm_scale).to(DK1.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DK2 + kd_off, (dk2 * sm_scale).to(DK2.dtype.element_ty), mask=col_ok[:, None])
    dv_off = ((b * HKV + hk) * NK + offs_n[:, None]) * (2 * D) + offs_v[None, :]
    tl.store(DV + dv_off, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _bwd_dq_inner(
    dq1, dq2, q1, q2, do, lse1, lse2, del1, del2, lam, K1, K2, V, k_base, v_base, skn, svn,
    offs_m, offs_d, offs_v, row_ok, lo, hi, NK, shift, scale_log2,
    BN: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
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
            q1, q2, k1, k2, v, do, lse1, lse2, del1, del2, lam, valid, scale_log2, MASKED, IEEE
        )
        dq1 += _dot(ds1.to(k1.dtype), k1, IEEE)
        dq2 += _dot(ds2.to(k2.dtype), k2, IEEE)
    return dq1, dq2


@triton.jit
def _bwd_dq_kernel(
    Q1,
    Q2,
    K1,
    K2,
    V,
    Lam,
    DO,
    Lse1,
    Lse2,
    Del1,
    Del2,
    DQ1,
    DQ2,
    sqb,
    sqh,
    sqn,
    skb,
    skh,
    skn,
    svb,
    svh,
    svn,
    sob,
    soh,
    son,
    H,
    GROUP,
    N,
    NK,
    scale_log2,
    sm_scale,
    D: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    CAUSAL: tl.constexpr,
    IEEE: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """dQ1, dQ2 of one block of queries, accumulated in registers over the key blocks it sees (no atomics)."""
    bh, b, h, hk, offs_m, offs_d, row_ok, q1, q2, shift, hi, full = _query_block(
        Q1, Q2, sqb, sqh, sqn, H, GROUP, N, NK, BN, BM, D, CAUSAL
    )
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
            offs_m, offs_d, offs_v, row_ok, 0, full, NK, shift, scale_log2, BN, False, CAUSAL, IEEE,
        )  # fmt: skip
    dq1, dq2 = _bwd_dq_inner(
        dq1, dq2, q1, q2, do, lse1, lse2, del1, del2, lam, K1, K2, V, k_base, v_base, skn, svn,
        offs_m, offs_d, offs_v, row_ok, full, hi, NK, shift, scale_log2, BN, True, CAUSAL, IEEE,
    )  # fmt: skip
    dq_off = b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :]
    tl.store(DQ1 + dq_off, (dq1 * sm_scale).to(DQ1.dtype.element_ty), mask=row_ok[:, None])
    tl.store(DQ2 + dq_off, (dq2 * sm_scale).to(DQ2.dtype.element_ty), mask=row_ok[:, None])


def dq_mode() -> str:
    """How the backward computes dQ: "split" (a second kernel per query block, the default) or "atomic"
    (inside the key-block kernel with atomic adds); ``SHAREDDIFF_TRITON_DQ`` chooses, for benchmarks."""
    mode = os.environ.get("SHAREDDIFF_TRITON_DQ", "split")
    if mode not in ("split", "atomic"):
        raise ValueError(f"SHAREDDIFF_TRITON_DQ={mode!r}; use split or atomic")
    return mode


def v_split() -> int:
    """Programs per query block over V's 2d columns in the forward: 1 (default) or 2
    (``SHAREDDIFF_TRITON_VSPLIT=2``, half-width accumulators at twice the QKᵀ work; for benchmarks)."""
    split = os.environ.get("SHAREDDIFF_TRITON_VSPLIT", "1")
    if split not in ("1", "2"):
        raise ValueError(f"SHAREDDIFF_TRITON_VSPLIT={split!r}; use 1 or 2")
    return int(split)


def split_tiles(dtype: torch.dtype) -> bool:
    """Whether the kernels run tiles that need no mask through their own loop body (the fast path).
    float32 on the GPU keeps one masked loop: speed is not its purpose and the extra bodies triple its
    compile time; the CPU interpreter always splits, so the float32 tests cover the fast path too."""
    return INTERPRET or dtype != torch.float32


def _blocks_override(kind: str) -> dict | None:
    """``SHAREDDIFF_TRITON_{FWD,BWD,DQ}_BLOCKS="BM,BN,num_warps,num_stages"`` replaces a kernel's
    block shapes (for benchmark sweeps); unset means the defaults below."""
    name = f"SHAREDDIFF_TRITON_{kind}_BLOCKS"
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        bm, bn, warps, stages = (int(x) for x in raw.split(","))
    except ValueError:
        raise ValueError(f"{name}={raw!r}; use four integers BM,BN,num_warps,num_stages, e.g. 64,64,4,2") from None
    if any(x < 16 or x & (x - 1) for x in (bm, bn)) or warps not in (1, 2, 4, 8, 16) or stages < 1:
        raise ValueError(f"{name}={raw!r}: BM and BN must be powers of two ≥ 16, num_warps 1–16, num_stages ≥ 1")
    return {"BM": bm, "BN": bn, "num_warps": warps, "num_stages": stages}


def _fwd_blocks(d: int, wide: bool, kind: str = "FWD") -> dict:
    """Block shapes per head half-dim; ``wide`` (4-byte elements) halves the tiles to fit shared memory."""
    if INTERPRET:  # the CPU interpreter: small blocks, and no autotuning (no device to time on)
        return {"BM": 16, "BN": 16}
    if (override := _blocks_override(kind)) is not None:
        return override
    if wide:
        return {"BM": 64, "BN": 32, "num_warps": 4, "num_stages": 1}
    if d >= 128:
        return {"BM": 64, "BN": 64, "num_warps": 8, "num_stages": 2}
    return {"BM": 128, "BN": 64, "num_warps": 8, "num_stages": 3}


def _bwd_blocks(d: int, wide: bool, atomic: bool = False) -> dict:
    if INTERPRET:
        return {"BM": 16, "BN": 16}
    if (override := _blocks_override("BWD")) is not None:
        return override
    if wide:
        return {"BM": 16, "BN": 64, "num_warps": 4, "num_stages": 1}
    if atomic:  # wide key blocks: fewer dQ atomics (narrow ones made this mode 2.7× slower at d = 128)
        return {"BM": 32, "BN": 64 if d >= 128 else 128, "num_warps": 8, "num_stages": 1 if d >= 128 else 2}
    # the fastest of benchmarks/attention.py --sweep on an H100 (docs/performance.md)
    if d >= 128:
        return {"BM": 64, "BN": 32, "num_warps": 4, "num_stages": 2}
    return {"BM": 64, "BN": 64, "num_warps": 4, "num_stages": 2}


def _dq_blocks(d: int, wide: bool) -> dict:
    """The dQ kernel walks keys per query block like the forward; at d = 128 narrower key tiles won."""
    if INTERPRET or wide or d < 128 or _blocks_override("DQ") is not None:
        return _fwd_blocks(d, wide, "DQ")
    return {"BM": 128, "BN": 32, "num_warps": 8, "num_stages": 2}


class _DifferentialAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q1, q2, k1, k2, v, lam, causal):
        q1, q2, k1, k2, v = (t.contiguous() for t in (q1, q2, k1, k2, v))
        lam = lam.contiguous()
        b, h, n, d = q1.shape
        h_kv, n_k = k1.shape[1], k1.shape[2]
        out = torch.empty(b, h, n, 2 * d, device=q1.device, dtype=q1.dtype)
        o1, o2 = torch.empty_like(out), torch.empty_like(out)  # both maps' outputs, for the backward's δ
        lse1 = torch.empty(b, h, n, device=q1.device, dtype=torch.float32)
        lse2 = torch.empty_like(lse1)
        sm_scale = 1.0 / math.sqrt(d)
        args = (
            q1,
            q2,
            k1,
            k2,
            v,
            lam,
            out,
            o1,
            o2,
            lse1,
            lse2,
            q1.stride(0),
            q1.stride(1),
            q1.stride(2),
            k1.stride(0),
            k1.stride(1),
            k1.stride(2),
            v.stride(0),
            v.stride(1),
            v.stride(2),
            out.stride(0),
            out.stride(1),
            out.stride(2),
            h,
            h // h_kv,
            n,
            n_k,
            sm_scale * LOG2E,
        )
        blocks = _fwd_blocks(d, q1.element_size() == 4)
        split = v_split()
        _fwd_kernel[(triton.cdiv(n, blocks["BM"]), b * h, split)](
            *args,
            D=d,
            CAUSAL=causal,
            IEEE=q1.dtype == torch.float32,
            SPLIT=split_tiles(q1.dtype),
            VW=2 * d // split,
            **blocks,
        )
        ctx.save_for_backward(q1, q2, k1, k2, v, lam, o1, o2, lse1, lse2)
        ctx.causal = causal
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q1, q2, k1, k2, v, lam, o1, o2, lse1, lse2 = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        b, h, n, d = q1.shape
        h_kv, n_k = k1.shape[1], k1.shape[2]
        del1, del2 = torch.empty_like(lse1), torch.empty_like(lse2)  # rowsum(dO ⊙ O1), rowsum(dO ⊙ O2)
        pre_bm = 16 if INTERPRET else 64
        _bwd_preprocess[(triton.cdiv(n, pre_bm), b * h)](grad_out, o1, o2, del1, del2, n, BM=pre_bm, VW=2 * d)
        dlam = -del2.sum(dim=(0, 2))  # ∂/∂λ_h of Σ dO ⊙ (O1 − λ_h O2)
        atomic = dq_mode() == "atomic"
        # atomic: fp32 buffers the key-block kernel adds into; split: written whole by the dQ kernel
        dq1, dq2 = (
            (torch.zeros(b, h, n, d, device=q1.device, dtype=torch.float32) for _ in range(2))
            if atomic
            else (torch.empty_like(q1), torch.empty_like(q2))
        )
        dk1 = torch.empty(b, h_kv, n_k, d, device=q1.device, dtype=k1.dtype)
        dk2 = torch.empty_like(dk1)
        dv = torch.empty(b, h_kv, n_k, 2 * d, device=q1.device, dtype=v.dtype)
        sm_scale = 1.0 / math.sqrt(d)
        args = (
            q1,
            q2,
            k1,
            k2,
            v,
            lam,
            grad_out,
            lse1,
            lse2,
            del1,
            del2,
            dq1,
            dq2,
            dk1,
            dk2,
            dv,
            q1.stride(0),
            q1.stride(1),
            q1.stride(2),
            k1.stride(0),
            k1.stride(1),
            k1.stride(2),
            v.stride(0),
            v.stride(1),
            v.stride(2),
            grad_out.stride(0),
            grad_out.stride(1),
            grad_out.stride(2),
            h,
            h_kv,
            h // h_kv,
            n,
            n_k,
            sm_scale * LOG2E,
            sm_scale,
        )
        ieee = q1.dtype == torch.float32
        blocks = _bwd_blocks(d, q1.element_size() == 4, atomic)
        _bwd_kernel[(triton.cdiv(n_k, blocks["BN"]), b * h_kv)](
            *args, D=d, CAUSAL=ctx.causal, IEEE=ieee, SPLIT=split_tiles(q1.dtype), DQ_ATOMIC=atomic, **blocks
        )
        if not atomic:
            dq_args = (*args[:13], *args[16:28], h, h // h_kv, n, n_k, sm_scale * LOG2E, sm_scale)
            dq_blocks = _dq_blocks(d, q1.element_size() == 4)
            _bwd_dq_kernel[(triton.cdiv(n, dq_blocks["BM"]), b * h)](
                *dq_args, D=d, CAUSAL=ctx.causal, IEEE=ieee, SPLIT=split_tiles(q1.dtype), **dq_blocks
            )
        return dq1.to(q1.dtype), dq2.to(q2.dtype), dk1, dk2, dv, dlam, None


def triton_available_for(q: Tensor) -> bool:
    return (
        (q.is_cuda or INTERPRET)
        and q.shape[-1] in SUPPORTED_D
        and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
    )


@register_backend("triton")  # not chosen by "auto": at parity with two SDPA calls, not faster (docs/performance.md)
def triton_differential_attention(q1, q2, k1, k2, v, lam, causal=True, mask=None):
    """The fused kernel. λ (scalar or per head) may require grad; returns (B, h, N, 2d) in q's dtype.

    The kernel has no mask input: a ``mask`` (padded batches) is refused with a ``ValueError``."""
    if mask is not None:
        raise ValueError(
            "the triton kernel takes no attention mask, so it cannot run padded batches; use the sdpa or eager "
            "backend for them (model.set_attention_backend('sdpa'))"
        )
    if not triton_available_for(q1):
        raise ValueError(
            f"the triton backend needs CUDA tensors (or TRITON_INTERPRET=1) with head half-dim in "
            f"{SUPPORTED_D}, got device {q1.device}, d={q1.shape[-1]}, dtype {q1.dtype}"
        )
    h = q1.shape[1]
    lam_t = lam if isinstance(lam, Tensor) else torch.tensor(float(lam), device=q1.device)
    lam_view = _lam_view(lam_t.float(), h, lam_t.float())  # validates the shape
    lam_h = (lam_view.reshape(-1) if lam_view.dim() else lam_view.reshape(1)).expand(h).float()
    return _DifferentialAttention.apply(q1, q2, k1, k2, v, lam_h, causal)
