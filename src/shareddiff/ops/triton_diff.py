"""Fused differential flash attention in Triton: both softmax maps in one pass over each K/V tile.

Forward: per block of queries, two running (max, sum) pairs and two accumulators over shared loads
of V; writes out = O1 − λ·O2, the two log-sum-exps and O2 (for the backward), never an N×N tensor.
Backward: one kernel per block of keys (all query heads of its GQA group): the two maps share
dP = dO·Vᵀ and dV = (P1 − λP2)ᵀ·dO; dK accumulate in registers. dQ: by default a second kernel per
block of queries recomputes the maps and accumulates dQ in registers (FlashAttention-2's split);
``SHAREDDIFF_TRITON_DQ=atomic`` instead adds dQ from the key-block kernel with fp32 atomics.
dλ = −Σ rowsum(dO ⊙ O2) is a cheap reduction done in PyTorch. ``SHAREDDIFF_TRITON_VSPLIT=2`` splits
the forward's V columns over two programs per query block (half-width accumulators).

Registered as backend "triton" (head half-dims 16/32/64/128; "auto" keeps SDPA until this kernel is
faster, see docs/performance.md); under ``TRITON_INTERPRET=1`` it runs on CPU tensors with fixed small
blocks (tests).
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
def _tile_grads(q1, q2, k1, k2, v, do, lse1, lse2, del1, del2, lam, valid, scale_log2, IEEE: tl.constexpr):
    """For one (query block, key block) tile: both maps rebuilt from their log-sum-exps, and the score
    gradients dS1 = P1 ⊙ (dP − δ1), dS2 = −λ·P2 ⊙ (dP − δ2) with the shared dP = dO·Vᵀ."""
    p1 = tl.where(valid, tl.exp2(_dot(q1, tl.trans(k1), IEEE) * scale_log2 - lse1[:, None]), 0.0)
    p2 = tl.where(valid, tl.exp2(_dot(q2, tl.trans(k2), IEEE) * scale_log2 - lse2[:, None]), 0.0)
    dp = _dot(do, tl.trans(v), IEEE)
    ds1 = p1 * (dp - del1[:, None])
    ds2 = -lam * p2 * (dp - del2[:, None])
    return p1, p2, ds1, ds2


@triton.jit
def _fwd_kernel(
    Q1,
    Q2,
    K1,
    K2,
    V,
    Lam,
    Out,
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
    VW: tl.constexpr,
):
    # VW: the V columns of this program (2D, or D when V's columns are split over two programs that
    # each recompute both maps: half-width accumulators, for large d where two 2D-wide ones spill)
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    pid_v = tl.program_id(2)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    offs_v = pid_v * VW + tl.arange(0, VW)
    row_ok = offs_m < N
    q_off = b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :]
    q1 = tl.load(Q1 + q_off, mask=row_ok[:, None], other=0.0)
    q2 = tl.load(Q2 + q_off, mask=row_ok[:, None], other=0.0)
    m1 = tl.full([BM], float("-inf"), tl.float32)
    m2 = tl.full([BM], float("-inf"), tl.float32)
    l1 = tl.zeros([BM], tl.float32)
    l2 = tl.zeros([BM], tl.float32)
    acc1 = tl.zeros([BM, VW], tl.float32)
    acc2 = tl.zeros([BM, VW], tl.float32)
    shift = NK - N  # queries are the last N of the NK positions
    hi = NK
    if CAUSAL:
        hi = tl.minimum(NK, (pid_m + 1) * BM + shift)
    k_base = b * skb + hk * skh
    v_base = b * svb + hk * svh
    for start in range(0, hi, BN):
        offs_n = start + tl.arange(0, BN)
        col_ok = offs_n < NK
        k_off = k_base + offs_n[:, None] * skn + offs_d[None, :]
        k1 = tl.load(K1 + k_off, mask=col_ok[:, None], other=0.0)
        k2 = tl.load(K2 + k_off, mask=col_ok[:, None], other=0.0)
        v = tl.load(V + v_base + offs_n[:, None] * svn + offs_v[None, :], mask=col_ok[:, None], other=0.0)
        valid = col_ok[None, :]
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None] + shift)
        s1 = tl.where(valid, _dot(q1, tl.trans(k1), IEEE) * scale_log2, float("-inf"))
        s2 = tl.where(valid, _dot(q2, tl.trans(k2), IEEE) * scale_log2, float("-inf"))
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
    lam = tl.load(Lam + h)
    o1 = acc1 / l1[:, None]
    o2 = acc2 / l2[:, None]
    o_off = b * sob + h * soh + offs_m[:, None] * son + offs_v[None, :]
    tl.store(Out + o_off, (o1 - lam * o2).to(Out.dtype.element_ty), mask=row_ok[:, None])
    tl.store(O2 + o_off, o2.to(O2.dtype.element_ty), mask=row_ok[:, None])
    lse_off = bh * N + offs_m
    if pid_v == 0:  # every column program has the same statistics: one writes them
        tl.store(Lse1 + lse_off, m1 + tl.log2(l1), mask=row_ok)
        tl.store(Lse2 + lse_off, m2 + tl.log2(l2), mask=row_ok)


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
    for g in range(0, GROUP):
        h = hk * GROUP + g
        lam = tl.load(Lam + h)
        for start in range(lo, N, BM):
            offs_m = start + tl.arange(0, BM)
            row_ok = offs_m < N
            q_off = b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :]
            q1 = tl.load(Q1 + q_off, mask=row_ok[:, None], other=0.0)
            q2 = tl.load(Q2 + q_off, mask=row_ok[:, None], other=0.0)
            do = tl.load(
                DO + b * sob + h * soh + offs_m[:, None] * son + offs_v[None, :], mask=row_ok[:, None], other=0.0
            )
            stat = (b * H + h) * N + offs_m
            lse1 = tl.load(Lse1 + stat, mask=row_ok, other=0.0)
            lse2 = tl.load(Lse2 + stat, mask=row_ok, other=0.0)
            del1 = tl.load(Del1 + stat, mask=row_ok, other=0.0)
            del2 = tl.load(Del2 + stat, mask=row_ok, other=0.0)
            valid = col_ok[None, :] & row_ok[:, None]
            if CAUSAL:
                valid = valid & (offs_n[None, :] <= offs_m[:, None] + shift)
            p1, p2, ds1, ds2 = _tile_grads(q1, q2, k1, k2, v, do, lse1, lse2, del1, del2, lam, valid, scale_log2, IEEE)
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
    kd_off = ((b * HKV + hk) * NK + offs_n[:, None]) * D + offs_d[None, :]
    tl.store(DK1 + kd_off, (dk1 * sm_scale).to(DK1.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DK2 + kd_off, (dk2 * sm_scale).to(DK2.dtype.element_ty), mask=col_ok[:, None])
    dv_off = ((b * HKV + hk) * NK + offs_n[:, None]) * (2 * D) + offs_v[None, :]
    tl.store(DV + dv_off, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


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
):
    """dQ1, dQ2 of one block of queries, accumulated in registers over the key blocks it sees (no atomics)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    offs_v = tl.arange(0, 2 * D)
    row_ok = offs_m < N
    q_off = b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :]
    q1 = tl.load(Q1 + q_off, mask=row_ok[:, None], other=0.0)
    q2 = tl.load(Q2 + q_off, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * sob + h * soh + offs_m[:, None] * son + offs_v[None, :], mask=row_ok[:, None], other=0.0)
    stat = bh * N + offs_m
    lse1 = tl.load(Lse1 + stat, mask=row_ok, other=0.0)
    lse2 = tl.load(Lse2 + stat, mask=row_ok, other=0.0)
    del1 = tl.load(Del1 + stat, mask=row_ok, other=0.0)
    del2 = tl.load(Del2 + stat, mask=row_ok, other=0.0)
    lam = tl.load(Lam + h)
    dq1 = tl.zeros([BM, D], tl.float32)
    dq2 = tl.zeros([BM, D], tl.float32)
    shift = NK - N
    hi = NK
    if CAUSAL:
        hi = tl.minimum(NK, (pid_m + 1) * BM + shift)
    k_base = b * skb + hk * skh
    v_base = b * svb + hk * svh
    for start in range(0, hi, BN):
        offs_n = start + tl.arange(0, BN)
        col_ok = offs_n < NK
        k_off = k_base + offs_n[:, None] * skn + offs_d[None, :]
        k1 = tl.load(K1 + k_off, mask=col_ok[:, None], other=0.0)
        k2 = tl.load(K2 + k_off, mask=col_ok[:, None], other=0.0)
        v = tl.load(V + v_base + offs_n[:, None] * svn + offs_v[None, :], mask=col_ok[:, None], other=0.0)
        valid = col_ok[None, :] & row_ok[:, None]
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None] + shift)
        _, _, ds1, ds2 = _tile_grads(q1, q2, k1, k2, v, do, lse1, lse2, del1, del2, lam, valid, scale_log2, IEEE)
        dq1 += _dot(ds1.to(k1.dtype), k1, IEEE)
        dq2 += _dot(ds2.to(k2.dtype), k2, IEEE)
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


def _fwd_blocks(d: int, wide: bool) -> dict:
    """Block shapes per head half-dim; ``wide`` (4-byte elements) halves the tiles to fit shared memory."""
    if INTERPRET:  # the CPU interpreter: small blocks, and no autotuning (no device to time on)
        return {"BM": 16, "BN": 16}
    if wide:
        return {"BM": 64, "BN": 32, "num_warps": 4, "num_stages": 1}
    if d >= 128:
        return {"BM": 64, "BN": 64, "num_warps": 8, "num_stages": 2}
    return {"BM": 128, "BN": 64, "num_warps": 8, "num_stages": 3}


def _bwd_blocks(d: int, wide: bool) -> dict:
    if INTERPRET:
        return {"BM": 16, "BN": 16}
    if wide:
        return {"BM": 16, "BN": 64, "num_warps": 4, "num_stages": 1}
    if d >= 128:
        return {"BM": 32, "BN": 64, "num_warps": 8, "num_stages": 1}
    return {"BM": 32, "BN": 128, "num_warps": 8, "num_stages": 2}  # wide key blocks: half the dQ atomics


class _DifferentialAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q1, q2, k1, k2, v, lam, causal):
        q1, q2, k1, k2, v = (t.contiguous() for t in (q1, q2, k1, k2, v))
        lam = lam.contiguous()
        b, h, n, d = q1.shape
        h_kv, n_k = k1.shape[1], k1.shape[2]
        out = torch.empty(b, h, n, 2 * d, device=q1.device, dtype=q1.dtype)
        o2 = torch.empty_like(out)
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
            *args, D=d, CAUSAL=causal, IEEE=q1.dtype == torch.float32, VW=2 * d // split, **blocks
        )
        ctx.save_for_backward(q1, q2, k1, k2, v, lam, out, o2, lse1, lse2)
        ctx.causal = causal
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q1, q2, k1, k2, v, lam, out, o2, lse1, lse2 = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        b, h, n, d = q1.shape
        h_kv, n_k = k1.shape[1], k1.shape[2]
        g32 = grad_out.float()
        o2_32 = o2.float()
        del2 = (g32 * o2_32).sum(-1)  # rowsum(dO ⊙ O2)
        del1 = (g32 * (out.float() + lam.view(1, h, 1, 1) * o2_32)).sum(-1)  # rowsum(dO ⊙ O1), O1 = out + λ·O2
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
            del1.contiguous(),
            del2.contiguous(),
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
        blocks = _bwd_blocks(d, q1.element_size() == 4)
        _bwd_kernel[(triton.cdiv(n_k, blocks["BN"]), b * h_kv)](
            *args, D=d, CAUSAL=ctx.causal, IEEE=ieee, DQ_ATOMIC=atomic, **blocks
        )
        if not atomic:
            dq_args = (*args[:13], *args[16:28], h, h // h_kv, n, n_k, sm_scale * LOG2E, sm_scale)
            dq_blocks = _fwd_blocks(d, q1.element_size() == 4)  # query-block-major like the forward
            _bwd_dq_kernel[(triton.cdiv(n, dq_blocks["BM"]), b * h)](
                *dq_args, D=d, CAUSAL=ctx.causal, IEEE=ieee, **dq_blocks
            )
        return dq1.to(q1.dtype), dq2.to(q2.dtype), dk1, dk2, dv, dlam, None


def triton_available_for(q: Tensor) -> bool:
    return (
        (q.is_cuda or INTERPRET)
        and q.shape[-1] in SUPPORTED_D
        and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
    )


@register_backend("triton")  # not chosen by "auto": slower than two SDPA calls in fwd+bwd so far (docs/performance.md)
def triton_differential_attention(q1, q2, k1, k2, v, lam, causal=True):
    """The fused kernel. λ (scalar or per head) may require grad; returns (B, h, N, 2d) in q's dtype."""
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
