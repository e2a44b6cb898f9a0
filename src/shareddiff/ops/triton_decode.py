"""The differential tail of one decode step in one Triton kernel: both attention maps of a single query, their
difference, and the per-head RMSNorm (DIFF Transformer's differential attention, architecture §3).

    o = softmax(q1·k1ᵀ/√d + mask)·V − λ·softmax(q2·k2ᵀ/√d + mask)·V,    out = RMSNorm(o) × weight

The SDPA path of a decode step launches two attention kernels and a norm per layer (``sdpa_differential_attention``
then ``fused_rms_norm``); at batch 1 a step is bound by its number of kernels, so this kernel does the three in one.
One program per (batch row, query head) walks the keys in blocks with two online softmaxes (flash-decoding's
running max and sum, in base 2), loads each block of V once for both accumulators, and normalises in the epilogue;
everything is computed in float32. Scores are elementwise products summed over d (a one-row query is too small for
``tl.dot``). Given the position's rotary angles (``rope``), it also rotates Q1 and Q2 as it loads them, so that the
step does not write the rotated queries out first (the keys are rotated where they are written to the cache).

Split-K (flash-decoding): B·h programs leave most of a GPU idle at small batches (8 at batch 1 on the 350m presets,
132 SMs on an H200), each walking the whole cache. ``split_count`` then splits each head's keys into S contiguous
ranges of whole key blocks: a first kernel, one program per (row, head, split), writes each range's partial softmaxes
(running max m and sum l of both maps, and both unnormalised (2d,) accumulators, float32) to a workspace; a second,
one program per (row, head), merges the S partials with the log-sum-exp rescaling (m = max mₛ, l = Σ lₛ·2^(mₛ − m),
acc likewise) and runs the epilogue (o1/l1 − λ·o2/l2, the norm). S = 1 is the single kernel. S depends on the
shapes and the SM count only (the cache's buffer length, not its fill), so a compiled or captured step keeps it.
The workspace is allocated inside the op, as the output is: a CUDA graph capture or torch.compile's allocator
gives it a fixed address from the graph's pool, and callers need not know S. ``decode_kernel_settings``
overrides the launch (keys per block, warps, stages, S) for benchmarks (benchmarks/decode_kernel.py) and tests.

The decode step itself calls ``differential_decode_step``, which does more in the same launch: it reads the step's
merged projection row (Q1, Q2, K1, K2, V side by side) as one buffer, rotates the new keys as it rotates the
queries and writes them and the new values into the cache at the step's position (the cache write of
``StaticKVCache.update``), attends to them there, and merges split-K without a second kernel: the last of a head's
S programs to finish, counted on an int32 arrival counter (acquire-release atomics; the cache keeps the counters,
which each launch leaves zero), merges the partials and runs the epilogue. At batch 1 a decode step is bound by its
number of kernels (docs/performance.md, "The decode step with the cache write in the kernel").

``differential_decode_attention`` checks its inputs and calls the operator ``shareddiff::differential_decode_attention``
(``differential_decode_step``: ``shareddiff::differential_decode_step``, which mutates the cache and the counters;
``torch.library.triton_op``), which ``torch.compile(fullgraph=True)`` traces and CUDA graphs capture. Under
``TRITON_INTERPRET=1`` it runs on CPU tensors (tests), registered as an opaque ``torch.library.custom_op`` with a
fake implementation instead (triton_op's tracing runs the kernel's Python on fake tensors, which the interpreter
cannot launch on).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)  # the kernel's copy (Triton kernels read constexpr globals only)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# keys per loop iteration and the GPU launch shape: of block_n 32/64/128 × warps 2/4/8 at split_count's S on one
# H200 (bf16, 350m layout, batch 1 and 32, 384/2048/8192 keys; benchmarks/results/decode_kernel-NVIDIA_H200-
# 20261201T101152.json) 128 keys and 4 warps was the fastest at all six shapes, 15-38% less time than 64 keys and 4
# warps (the first default) and 1.03-2.64x faster than the SDPA path; 2 stages (not swept)
BLOCK_N = 16 if INTERPRET else 128
# short caches split into 64-key blocks (default_block_n): at batch 1 (350m layout, one H200, bf16, in a CUDA graph;
# benchmarks/results/decode_kernel-NVIDIA_H200-20261202T132128.json and ...20261201T101152.json) 3 splits of 64 keys
# took 6.5 us a call at 192 keys against 7.8 for 128-key blocks (1 split), and 6 splits of 64 keys 7.3 us at 384 keys
# against 7.8-8.4 for 3 of 128; at 2,048 keys 16 splits of 128 (10.6 us) beat 32 of 64 (11.3)
SHORT_BLOCK_N = 16 if INTERPRET else 64
MIN_SPLIT_KEYS, SHORT_SPLIT_KEYS = 128, 64  # split_count: the fewest keys a split walks (a GPU block of keys)
SHORT_CACHE_KEYS = 512  # the longest cache split into SHORT_SPLIT_KEYS-key splits and SHORT_BLOCK_N-key blocks
NUM_WARPS, NUM_STAGES = 4, 2
MAX_SPLITS = 64
MERGE_TILE = 16  # partials the merge kernel reads at a time
OP_NAME = "shareddiff::differential_decode_attention"
STEP_OP_NAME = "shareddiff::differential_decode_step"  # the same from the packed projection, writing the cache


@triton.jit
def _empty_state(D: tl.constexpr):
    """Both maps' online-softmax state before any key or split: (m1, l1, acc1, m2, l2, acc2) = (−inf, 0, 0 (2D,),
    −inf, 0, 0 (2D,)), typed float32 from the start (loop-carried: a type change inside a loop does not compile)."""
    m_empty = tl.full([], float("-inf"), tl.float32)
    l_empty = tl.zeros([], tl.float32)
    return m_empty, l_empty, tl.zeros([2 * D], dtype=tl.float32), m_empty, l_empty, tl.zeros([2 * D], dtype=tl.float32)


@triton.jit
def _load_query(q_row, cos_row, sin_row, scale, D: tl.constexpr, ROPE: tl.constexpr):
    """One query head (D,) in float32 × ``scale``; with ROPE, rotated first by the angles at ``cos_row``/``sin_row``
    (D/2 each): interleaved pairs (x[2j], x[2j+1]) → (x[2j]·cos_j − x[2j+1]·sin_j, x[2j]·sin_j + x[2j+1]·cos_j), as
    ``layers.apply_rope``."""
    if ROPE:
        offs_h = tl.arange(0, D // 2)
        even = tl.load(q_row + 2 * offs_h).to(tl.float32)
        odd = tl.load(q_row + 2 * offs_h + 1).to(tl.float32)
        cos = tl.load(cos_row + offs_h).to(tl.float32)
        sin = tl.load(sin_row + offs_h).to(tl.float32)
        q = tl.interleave(even * cos - odd * sin, even * sin + odd * cos)
    else:
        q = tl.load(q_row + tl.arange(0, D)).to(tl.float32)
    return q * scale


@triton.jit
def _attend_keys(
    q1, q2, k1_base, k2_base, v_base, mask_row, skn, svn, start, stop, kn1, kn2, vn, pos,
    D: tl.constexpr, BN: tl.constexpr, UPDATE: tl.constexpr,
):  # fmt: skip
    """Both online softmaxes of one query over the keys [start, stop), in base 2: (m1, l1, acc1, m2, l2, acc2), the
    running max, the sum of exp2(s − m) and the unnormalised Σ exp2(s − m)·v (2D,) of each map. With every key of
    the range masked (or none in it) m is −inf and l, acc are 0. With UPDATE the step's new key and value (kn1, kn2
    (D,), vn (2D,), float32) stand at position ``pos`` in place of what the cache holds there (which another program
    may be overwriting with them)."""
    offs_d = tl.arange(0, D)
    offs_v = tl.arange(0, 2 * D)
    m1, l1, acc1, m2, l2, acc2 = _empty_state(D)
    for block in range(start, stop, BN):
        offs_n = block + tl.arange(0, BN)
        inside = offs_n < stop
        k_off = offs_n[:, None] * skn + offs_d[None, :]
        k1 = tl.load(k1_base + k_off, mask=inside[:, None], other=0.0).to(tl.float32)
        k2 = tl.load(k2_base + k_off, mask=inside[:, None], other=0.0).to(tl.float32)
        if UPDATE:
            new = (offs_n == pos)[:, None]
            k1 = tl.where(new, kn1[None, :], k1)
            k2 = tl.where(new, kn2[None, :], k2)
        bias = tl.load(mask_row + offs_n, mask=inside, other=float("-inf")).to(tl.float32) * _LOG2E
        s1 = tl.sum(q1[None, :] * k1, 1) + bias  # (BN,)
        s2 = tl.sum(q2[None, :] * k2, 1) + bias
        n1 = tl.maximum(m1, tl.max(s1, 0))
        n2 = tl.maximum(m2, tl.max(s2, 0))
        # while every key so far is masked the running max is −inf: shift by 0 instead, so exp2 gives 0, not NaN
        c1 = tl.where(n1 == float("-inf"), 0.0, n1)
        c2 = tl.where(n2 == float("-inf"), 0.0, n2)
        p1 = tl.exp2(s1 - c1)
        p2 = tl.exp2(s2 - c2)
        a1 = tl.exp2(m1 - c1)
        a2 = tl.exp2(m2 - c2)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_v[None, :], mask=inside[:, None], other=0.0).to(tl.float32)
        if UPDATE:
            v = tl.where(new, vn[None, :], v)
        acc1 = acc1 * a1 + tl.sum(p1[:, None] * v, 0)
        acc2 = acc2 * a2 + tl.sum(p2[:, None] * v, 0)
        l1 = l1 * a1 + tl.sum(p1, 0)
        l2 = l2 * a2 + tl.sum(p2, 0)
        m1 = n1
        m2 = n2
    return m1, l1, acc1, m2, l2, acc2


@triton.jit
def _new_entry(
    K, V, KN, VN, Pos, Cos, Sin, b, kv, skb, skh, skn, svb, svh, svn, sknb, sknh, svnb, svnh, kno, vno, scb, HKV, NK,
    write, D: tl.constexpr, ROPE: tl.constexpr, UPDATE: tl.constexpr,
):  # fmt: skip
    """With UPDATE: the step's new K1, K2 (rotated here with ROPE, as the queries) and V of key/value head ``kv`` of
    row ``b``, rounded to the cache's dtype and returned in float32 with their position (kn1, kn2, vn, pos); where
    ``write`` (one program per key/value head and row) they are also stored at ``pos`` of the cache (K, V), unless
    pos lies outside its NK positions. Without UPDATE: placeholders, nothing read."""
    if UPDATE:
        pos = tl.load(Pos)
        kn1 = _load_query(KN + kno + b * sknb + kv * sknh, Cos + b * scb, Sin + b * scb, 1.0, D, ROPE)
        kn2 = _load_query(KN + kno + b * sknb + (HKV + kv) * sknh, Cos + b * scb, Sin + b * scb, 1.0, D, ROPE)
        offs_d = tl.arange(0, D)
        offs_v = tl.arange(0, 2 * D)
        vn = tl.load(VN + vno + b * svnb + kv * svnh + offs_v).to(V.dtype.element_ty)
        kn1 = kn1.to(K.dtype.element_ty)
        kn2 = kn2.to(K.dtype.element_ty)
        width = tl.where(write & (pos >= 0) & (pos < NK), D, 0)  # D: store, 0: not (a mask of one comparison)
        tl.store(K + b * skb + kv * skh + pos * skn + offs_d, kn1, mask=offs_d < width)
        tl.store(K + b * skb + (HKV + kv) * skh + pos * skn + offs_d, kn2, mask=offs_d < width)
        tl.store(V + b * svb + kv * svh + pos * svn + offs_v, vn, mask=offs_v < 2 * width)
        return kn1.to(tl.float32), kn2.to(tl.float32), vn.to(tl.float32), pos
    else:
        empty = tl.zeros([D], dtype=tl.float32)
        return empty, empty, tl.zeros([2 * D], dtype=tl.float32), tl.full([], -1, tl.int64)


@triton.jit
def _finish(acc1, l1, acc2, l2, Lam, W, out_row, eps, D: tl.constexpr, NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr):
    """o = acc1/l1 − λ·acc2/l2 (2D,), the RMSNorm × weight, stored at ``out_row``."""
    offs_v = tl.arange(0, 2 * D)
    lam = tl.load(Lam).to(tl.float32)
    o = acc1 / l1 - lam * (acc2 / l2)
    if NORM:
        o = o / tl.sqrt(tl.sum(o * o, 0) / (2 * D) + tl.cast(eps, tl.float32))
        if HAS_WEIGHT:
            o = o * tl.load(W + offs_v).to(tl.float32)
    tl.store(out_row + offs_v, o.to(out_row.dtype.element_ty))


@triton.jit
def _decode_kernel(
    Q, K, V, Lam, Mask, W, Out, Cos, Sin, KN, VN, Pos,
    sqb, sqh, skb, skh, skn, svb, svh, svn, smb, sob, soh, scb, sknb, sknh, svnb, svnh, kno, vno,
    H, HKV, GROUP, NK, scale_log2, eps,
    D: tl.constexpr, BN: tl.constexpr, NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, ROPE: tl.constexpr,
    UPDATE: tl.constexpr,
):  # fmt: skip
    """Program (b·H + head): query head ``head`` of row ``b`` against key/value head head // GROUP, all keys; with
    ROPE the query heads are rotated here by row b's angles (Cos, Sin: (·, D/2), row stride ``scb``); with UPDATE
    the step's new key and value (KN, VN) are written to the cache at Pos (by the group's first head) and attended
    there."""
    pid = tl.program_id(0)
    b = pid // H
    head = pid % H
    kv = head // GROUP
    scale = tl.cast(scale_log2, tl.float32)  # a Python float arrives as fp64 from a compiled graph: keep the math fp32
    q1 = _load_query(Q + b * sqb + head * sqh, Cos + b * scb, Sin + b * scb, scale, D, ROPE)  # scores in base 2
    q2 = _load_query(Q + b * sqb + (H + head) * sqh, Cos + b * scb, Sin + b * scb, scale, D, ROPE)
    kn1, kn2, vn, pos = _new_entry(
        K, V, KN, VN, Pos, Cos, Sin, b, kv, skb, skh, skn, svb, svh, svn, sknb, sknh, svnb, svnh, kno, vno, scb, HKV,
        NK, head % GROUP == 0, D, ROPE, UPDATE,
    )  # fmt: skip
    _m1, l1, acc1, _m2, l2, acc2 = _attend_keys(  # the maxima: only for merging partials
        q1, q2, K + b * skb + kv * skh, K + b * skb + (HKV + kv) * skh, V + b * svb + kv * svh, Mask + b * smb,
        skn, svn, 0, NK, kn1, kn2, vn, pos, D, BN, UPDATE,
    )  # fmt: skip
    _finish(acc1, l1, acc2, l2, Lam, W, Out + b * sob + head * soh, eps, D, NORM, HAS_WEIGHT)


@triton.jit
def _split_kernel(
    Q, K, V, Mask, Acc, Stats, Cos, Sin, KN, VN, Pos, Counter, Lam, W, Out,
    sqb, sqh, skb, skh, skn, svb, svh, svn, smb, scb, sknb, sknh, svnb, svnh, kno, vno, sob, soh,
    H, HKV, GROUP, NK, CHUNK, scale_log2, eps,
    D: tl.constexpr, BN: tl.constexpr, ROPE: tl.constexpr, UPDATE: tl.constexpr, MERGE: tl.constexpr,
    ST: tl.constexpr, NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr,
):  # fmt: skip
    """Program (b·H + head, split): the keys [split·CHUNK, (split + 1)·CHUNK) ∩ [0, NK) of query head ``head`` of row
    ``b``; writes its partials to row (b·H + head)·S + split of Acc (·, 2, 2D) and Stats (·, 4): m1, l1, m2, l2.
    With UPDATE the new key and value are written at Pos by the group's first head in the split holding Pos. With
    MERGE the last of a head's S programs to finish (counted in Counter[b·H + head], int32, zero before the launch
    and left zero after it) merges the S partials and writes the output: no second kernel."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = pid // H
    head = pid % H
    kv = head // GROUP
    offs_v = tl.arange(0, 2 * D)
    scale = tl.cast(scale_log2, tl.float32)  # a Python float arrives as fp64 from a compiled graph: keep the math fp32
    q1 = _load_query(Q + b * sqb + head * sqh, Cos + b * scb, Sin + b * scb, scale, D, ROPE)
    q2 = _load_query(Q + b * sqb + (H + head) * sqh, Cos + b * scb, Sin + b * scb, scale, D, ROPE)
    start = split * CHUNK
    stop = tl.minimum(start + CHUNK, NK)
    writer = head % GROUP == 0
    if UPDATE:  # of the group's first head, the split holding the new position writes it
        writer = writer & (tl.load(Pos) // CHUNK == split)
    kn1, kn2, vn, pos = _new_entry(
        K, V, KN, VN, Pos, Cos, Sin, b, kv, skb, skh, skn, svb, svh, svn, sknb, sknh, svnb, svnh, kno, vno, scb, HKV,
        NK, writer, D, ROPE, UPDATE,
    )  # fmt: skip
    m1, l1, acc1, m2, l2, acc2 = _attend_keys(
        q1, q2, K + b * skb + kv * skh, K + b * skb + (HKV + kv) * skh, V + b * svb + kv * svh, Mask + b * smb,
        skn, svn, start, stop, kn1, kn2, vn, pos, D, BN, UPDATE,
    )  # fmt: skip
    row = pid * tl.num_programs(1) + split
    tl.store(Acc + row * 4 * D + offs_v, acc1)
    tl.store(Acc + row * 4 * D + 2 * D + offs_v, acc2)
    tl.store(Stats + row * 4, m1)
    tl.store(Stats + row * 4 + 1, l1)
    tl.store(Stats + row * 4 + 2, m2)
    tl.store(Stats + row * 4 + 3, l2)
    if MERGE:
        tl.debug_barrier()  # every thread's partial stores before the release below (which publishes them)
        arrived = tl.atomic_add(Counter + pid, 1, sem="acq_rel", scope="gpu")  # splits of this head done before
        if arrived == tl.num_programs(1) - 1:  # the last: every other split's partials are visible (acquire)
            acc1, l1, acc2, l2 = _merge_partials(Acc, Stats, pid, tl.num_programs(1), D, ST)
            _finish(acc1, l1, acc2, l2, Lam, W, Out + b * sob + head * soh, eps, D, NORM, HAS_WEIGHT)
            tl.atomic_xchg(Counter + pid, 0, sem="relaxed", scope="gpu")  # zero again for the next launch


@triton.jit
def _merge_partials(Acc, Stats, pid, S, D: tl.constexpr, ST: tl.constexpr):
    """Both maps' state (acc1, l1, acc2, l2) from the S partials of program row ``pid`` of ``_split_kernel``, ST at a
    time: an online softmax over the splits (m = max mₛ, l = Σ lₛ·2^(mₛ − m), acc = Σ accₛ·2^(mₛ − m)). Loads
    bypass L1 (``.cg``): in the in-kernel merge the partials were written by other programs of the same launch."""
    offs_v = tl.arange(0, 2 * D)
    m1, l1, acc1, m2, l2, acc2 = _empty_state(D)
    for first in range(0, S, ST):
        offs_s = first + tl.arange(0, ST)
        valid = offs_s < S
        rows = pid * S + offs_s  # (ST,)
        ms1 = tl.load(Stats + rows * 4, mask=valid, other=float("-inf"), cache_modifier=".cg")
        ms2 = tl.load(Stats + rows * 4 + 2, mask=valid, other=float("-inf"), cache_modifier=".cg")
        n1 = tl.maximum(m1, tl.max(ms1, 0))
        n2 = tl.maximum(m2, tl.max(ms2, 0))
        c1 = tl.where(n1 == float("-inf"), 0.0, n1)  # a split with every key masked has m −inf, l and acc 0
        c2 = tl.where(n2 == float("-inf"), 0.0, n2)
        w1 = tl.exp2(ms1 - c1)  # (ST,)
        w2 = tl.exp2(ms2 - c2)
        a1 = tl.exp2(m1 - c1)
        a2 = tl.exp2(m2 - c2)
        l1 = l1 * a1 + tl.sum(w1 * tl.load(Stats + rows * 4 + 1, mask=valid, other=0.0, cache_modifier=".cg"), 0)
        l2 = l2 * a2 + tl.sum(w2 * tl.load(Stats + rows * 4 + 3, mask=valid, other=0.0, cache_modifier=".cg"), 0)
        part = rows[:, None] * 4 * D + offs_v[None, :]  # (ST, 2D)
        p1 = tl.load(Acc + part, mask=valid[:, None], other=0.0, cache_modifier=".cg")
        p2 = tl.load(Acc + part + 2 * D, mask=valid[:, None], other=0.0, cache_modifier=".cg")
        acc1 = acc1 * a1 + tl.sum(w1[:, None] * p1, 0)
        acc2 = acc2 * a2 + tl.sum(w2[:, None] * p2, 0)
        m1 = n1
        m2 = n2
    return acc1, l1, acc2, l2


@triton.jit
def _merge_kernel(
    Acc, Stats, Lam, W, Out, sob, soh, H, S, eps,
    D: tl.constexpr, ST: tl.constexpr, NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr,
):  # fmt: skip
    """Program (b·H + head): merges the S partials of ``_split_kernel`` (``_merge_partials``), then the epilogue."""
    pid = tl.program_id(0)
    acc1, l1, acc2, l2 = _merge_partials(Acc, Stats, pid, S, D, ST)
    _finish(acc1, l1, acc2, l2, Lam, W, Out + (pid // H) * sob + (pid % H) * soh, eps, D, NORM, HAS_WEIGHT)


@dataclass(frozen=True)
class DecodeKernelSettings:
    """How the op launches: keys per block (``block_n``, a power of two; None: ``default_block_n``'s rule), the
    Triton launch's ``num_warps`` and ``num_stages`` (of the key-walking kernel), and the key splits per head
    (``splits``; None: ``split_count``'s rule; fewer are used where the keys fill fewer whole blocks of ``block_n``).
    Raises ``ValueError`` naming a field out of range."""

    block_n: int | None = None  # None: default_block_n's rule
    num_warps: int = NUM_WARPS
    num_stages: int = NUM_STAGES
    splits: int | None = None

    def __post_init__(self) -> None:
        for name in ("block_n", "num_warps"):
            value = getattr(self, name)
            if value is not None and (value < 1 or value & (value - 1)):
                raise ValueError(f"{name} must be a power of two, got {value}")
        for name in ("num_stages", "splits"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


_settings = DecodeKernelSettings()


@contextmanager
def decode_kernel_settings(**changes) -> Iterator[DecodeKernelSettings]:
    """Within the block, the op launches with ``DecodeKernelSettings`` fields ``changes`` (benchmarks, tests). They
    are read when the op runs: a torch.compile trace or a CUDA graph capture keeps those of its trace/capture."""
    global _settings
    previous = _settings
    _settings = replace(previous, **changes)
    try:
        yield _settings
    finally:
        _settings = previous


def short_cache(batch: int, heads: int, n_k: int, sm_count: int) -> bool:
    """Whether the keys are split (B·h programs below the SM count) over a short cache (2·64 to
    ``SHORT_CACHE_KEYS`` = 512 keys): then the splits walk 64 keys each, not 128, so that a short cache still
    gets several splits of one block each."""
    return batch * heads < sm_count and 2 * SHORT_SPLIT_KEYS <= n_k <= SHORT_CACHE_KEYS


def default_block_n(batch: int, heads: int, n_k: int, sm_count: int) -> int:
    """Keys per block by default: ``SHORT_BLOCK_N`` (64 on a GPU) for a ``short_cache``, else ``BLOCK_N`` (128;
    16 for both under the interpreter). ``n_k``: the cache's buffer length (fixed per compiled step)."""
    return SHORT_BLOCK_N if short_cache(batch, heads, n_k, sm_count) else BLOCK_N


def split_count(batch: int, heads: int, n_k: int, sm_count: int) -> int:
    """Key splits per (row, head) by default: 1 (the single kernel) where the B·h programs fill the SMs once;
    otherwise enough for about two waves (2·SMs programs), but each split at least ``MIN_SPLIT_KEYS`` (128) keys,
    ``SHORT_SPLIT_KEYS`` (64) for a ``short_cache`` (so its partial is worth writing and merging), and at most
    ``MAX_SPLITS``. ``n_k``: the cache's buffer length (fixed per compiled step, not the filled length)."""
    programs = batch * heads
    if programs >= sm_count:
        return 1
    least = SHORT_SPLIT_KEYS if short_cache(batch, heads, n_k, sm_count) else MIN_SPLIT_KEYS
    return max(1, min(triton.cdiv(2 * sm_count, programs), n_k // least, MAX_SPLITS))


def split_plan(n_k: int, splits: int, block_n: int) -> tuple[int, int]:
    """(S, keys per split): ``splits`` ranges of whole blocks of ``block_n`` keys covering ``n_k``, the last one
    ragged; S < ``splits`` where fewer ranges of that size cover the keys (no split is empty)."""
    chunk = triton.cdiv(triton.cdiv(n_k, splits), block_n) * block_n
    return triton.cdiv(n_k, chunk), chunk


@functools.cache
def _sm_count(device: torch.device) -> int:
    """The device's SM count; 1 for the interpreter's CPU (its programs run one by one: nothing to fill)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def _launch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lam: Tensor,
    mask: Tensor,
    weight: Tensor | None,
    eps: float,
    norm: bool,
    cos: Tensor | None,
    sin: Tensor | None,
    k_new: Tensor | None,
    v_new: Tensor | None,
    write_at: Tensor | None,
    counters: Tensor | None,
    packed: Tensor | None = None,
) -> Tensor:
    """Launch the kernels on checked arguments (``_decode``, ``_decode_step``). ``norm``: whether to apply the
    RMSNorm; ``cos``, ``sin``: (B or 1, d/2) angles to rotate q by, or None for a q rotated already; ``k_new``,
    ``v_new``, ``write_at``: the step's new key and value to write into k and v at that position and attend there,
    or None; ``counters``: B·h zeroed int32 for split-K merged in the key-walking kernel, or None for a merge
    kernel; ``packed``: the tensor q (at its start), k_new and v_new are views of, handed to the kernel in their
    place with the views' offsets, or None. The kernels then read one buffer: a compiled graph hands a user-defined
    Triton kernel each tensor argument at fixed strides, and a view of a value it has not stored yet becomes a
    copy of its own (three copy kernels per layer, ~70 µs of a ~850 µs Shared DIFF step at batch 1 on one H200)."""
    b, two_h, _, d = q.shape
    h, h_kv, n_k = two_h // 2, v.shape[1], k.shape[2]
    settings, sm_count = _settings, _sm_count(q.device)
    block_n = settings.block_n or default_block_n(b, h, n_k, sm_count)
    requested = settings.splits or split_count(b, h, n_k, sm_count)
    splits, chunk = split_plan(n_k, requested, block_n)
    out = q.new_empty(b, h, 1, 2 * d)
    launch = {} if INTERPRET else {"num_warps": settings.num_warps, "num_stages": settings.num_stages}
    w = weight if weight is not None else lam  # W: unread without a weight
    rope = cos is not None
    cos, sin = (cos, sin) if rope else (lam, lam)  # unread without rotation
    scb = cos.stride(0) if rope and cos.shape[0] > 1 else 0  # one row of angles for every batch row: stride 0
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2))
    update = k_new is not None
    new = (k_new, v_new, write_at) if update else (lam, lam, lam)  # unread without an update
    new_strides = (k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1)) if update else (0, 0, 0, 0)
    new_offsets = (0, 0)
    if packed is not None:  # q at the packed row's start; k_new and v_new by their offsets into it
        base = packed.storage_offset()
        new_offsets = (k_new.storage_offset() - base, v_new.storage_offset() - base)
        q, new = packed, (packed, packed, write_at)
    if splits == 1:
        wrap_triton(_decode_kernel)[(b * h,)](
            q, k, v, lam, mask, w, out, cos, sin, *new,
            *strides, mask.stride(0), out.stride(0), out.stride(1), scb, *new_strides, *new_offsets,
            h, h_kv, h // h_kv, n_k, LOG2E / math.sqrt(d), eps,
            D=d, BN=block_n, NORM=norm, HAS_WEIGHT=weight is not None, ROPE=rope, UPDATE=update, **launch,
        )  # fmt: skip
        return out
    acc = torch.empty(b * h * splits, 2, 2 * d, device=q.device, dtype=torch.float32)  # both maps' partial Σ p·v
    stats = torch.empty(b * h * splits, 4, device=q.device, dtype=torch.float32)  # m1, l1, m2, l2
    merge = counters is not None  # merged by the last split of each head, in the same kernel
    wrap_triton(_split_kernel)[(b * h, splits)](
        q, k, v, mask, acc, stats, cos, sin, *new, counters if merge else lam, lam, w, out,
        *strides, mask.stride(0), scb, *new_strides, *new_offsets, out.stride(0), out.stride(1),
        h, h_kv, h // h_kv, n_k, chunk, LOG2E / math.sqrt(d), eps,
        D=d, BN=block_n, ROPE=rope, UPDATE=update, MERGE=merge, ST=MERGE_TILE, NORM=norm,
        HAS_WEIGHT=weight is not None, **launch,
    )  # fmt: skip
    if not merge:
        wrap_triton(_merge_kernel)[(b * h,)](
            acc, stats, lam, w, out, out.stride(0), out.stride(1), h, splits, eps,
            D=d, ST=MERGE_TILE, NORM=norm, HAS_WEIGHT=weight is not None, **({} if INTERPRET else {"num_warps": 4}),
        )  # fmt: skip
    return out


def _decode(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lam: Tensor,
    mask: Tensor,
    weight: Tensor | None,
    eps: float,
    norm: bool,
    cos: Tensor | None,
    sin: Tensor | None,
) -> Tensor:
    """The operator without a cache write (k and v only read)."""
    return _launch(q, k, v, lam, mask, weight, eps, norm, cos, sin, None, None, None, None)


def _decode_step(
    qkv: Tensor,
    k: Tensor,
    v: Tensor,
    lam: Tensor,
    mask: Tensor,
    weight: Tensor | None,
    eps: float,
    norm: bool,
    cos: Tensor | None,
    sin: Tensor | None,
    write_at: Tensor,
    counters: Tensor,
) -> Tensor:
    """The operator of ``differential_decode_step``: q, the new key and the new value are views of the one packed
    row ``qkv`` (so a compiled graph hands the kernel one buffer, not three copies of its slices), k and v are
    mutated (the step's entry written at ``write_at``), and so is ``counters`` (left zero)."""
    q, k_new, v_new = _unpack(qkv, k.shape[1] // 2, k.shape[3])
    if counters.numel() < q.shape[0] * q.shape[1] // 2:  # each (row, head) counts on its own counter
        raise ValueError(f"counters holds {counters.numel()} values, fewer than B·h = {q.shape[0] * q.shape[1] // 2}")
    return _launch(q, k, v, lam, mask, weight, eps, norm, cos, sin, k_new, v_new, write_at, counters, packed=qkv)


def _unpack(qkv: Tensor, h_kv: int, d: int) -> tuple[Tensor, Tensor, Tensor]:
    """Views of a packed row (B, 1, W): q (B, 2h, 1, d), k_new (B, 2h_kv, 1, d), v_new (B, h_kv, 1, 2d)."""
    row = qkv[:, 0]  # (B, W)
    two_hd = row.shape[-1] - 4 * h_kv * d
    q = row[:, :two_hd].unflatten(-1, (-1, d)).unsqueeze(2)
    k_new = row[:, two_hd : two_hd + 2 * h_kv * d].unflatten(-1, (2 * h_kv, d)).unsqueeze(2)
    v_new = row[:, two_hd + 2 * h_kv * d :].unflatten(-1, (h_kv, 2 * d)).unsqueeze(2)
    return q, k_new, v_new


def _fake_output(q: Tensor, *args) -> Tensor:
    return q.new_empty(q.shape[0], q.shape[1] // 2, 1, 2 * q.shape[3])


def _fake_step_output(qkv: Tensor, k: Tensor, *args) -> Tensor:
    return _fake_output(_unpack(qkv, k.shape[1] // 2, k.shape[3])[0])


if INTERPRET:  # the interpreter cannot launch on the fake tensors triton_op traces with: an opaque op with a fake
    _decode_op = torch.library.custom_op(OP_NAME, _decode, mutates_args=())
    _decode_op.register_fake(_fake_output)
    _decode_step_op = torch.library.custom_op(STEP_OP_NAME, _decode_step, mutates_args=("k", "v", "counters"))
    _decode_step_op.register_fake(_fake_step_output)
else:  # compiled graphs see the kernel itself (torch.library.triton_op; inductor can launch it directly)
    _decode_op = triton_op(OP_NAME, _decode, mutates_args=())
    _decode_step_op = triton_op(STEP_OP_NAME, _decode_step, mutates_args=("k", "v", "counters"))


def differential_decode_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lam: Tensor,
    mask: Tensor,
    norm_weight: Tensor | None = None,
    eps: float | None = None,
    rope: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Differential attention of one decode step with the per-head RMSNorm, in one kernel (module docstring).

    q: (B, 2h, 1, d), the rotated Q1 heads then the Q2 heads (unrotated with ``rope``); k: (B, 2h_kv, N_k, d), K1
    heads then K2 heads (the ``StaticKVCache`` buffer); v: (B, h_kv, N_k, 2d); query head i reads key/value head i
    // (h / h_kv) (GQA). λ: a 0-dim tensor (any float dtype). mask: (B or 1, 1, 1, N_k), additive in q's dtype (0
    where a key is visible, −inf elsewhere); every row must see at least one key (else its output is undefined).
    ``eps``: the RMSNorm's ε, over each head's 2d values (None: no norm, DIFF without a head norm); ``norm_weight``
    (2d,): its scale (None: 1), e.g. the head norm's weight × (1 − λ_init) merged once. d: a power of two. k and v
    in q's dtype (float16, bfloat16 or float32), all on one device (CUDA, or the CPU under ``TRITON_INTERPRET=1``).
    Returns (B, h, 1, 2d) in q's dtype, computed in float32: equal to ``sdpa_differential_attention`` then
    ``fused_rms_norm`` up to rounding.

    ``rope``: (cos, sin) of ``layers.rope_angles`` for this position, each (1, 1, d/2) or (B, 1, 1, d/2) (any float
    dtype): q is then given unrotated and rotated inside the kernel, in float32 (``layers.apply_rope``'s
    interleaved pairs), which saves the decode step the kernel that would write the rotated q (the keys are
    rotated where they are written to the cache).

    Raises ``ValueError`` naming the argument on a wrong rank, shape, dtype or device, or a ``norm_weight``
    without ``eps``.
    """
    _check(q, k, v, lam, mask, norm_weight, eps)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return _decode_op(q, k, v, *_prepare(q, lam, mask, norm_weight, eps, rope))


def differential_decode_step(
    qkv: Tensor,
    k: Tensor,
    v: Tensor,
    lam: Tensor,
    mask: Tensor,
    write_at: Tensor,
    norm_weight: Tensor | None = None,
    eps: float | None = None,
    rope: tuple[Tensor, Tensor] | None = None,
    counters: Tensor | None = None,
) -> Tensor:
    """A whole decode step of differential attention from the merged projection's output: writes the step's key
    and value into the cache and attends (both maps, their difference, the per-head RMSNorm), in one kernel.

    qkv: (B, 1, (2h + 4h_kv)·d), the step's row of the merged projection ``[W_Q1; W_Q2; W_K1; W_K2; W_V]``
    (``DiffAttentionBase.fused_weights``): the h Q1 heads, the h Q2 heads, the h_kv K1 heads and the h_kv K2 heads
    (dim d each), then the h_kv value heads of dim 2d; unrotated given ``rope`` (the kernel rotates the queries and
    the keys), rotated already without it. k: (B, 2h_kv, N_k, d) and v: (B, h_kv, N_k, 2d), the layer's cache
    buffers (``StaticKVCache.buffers``; unit stride in the last dimension, in qkv's dtype), into which the kernel
    writes the rotated key and the value at ``write_at``, an int64 tensor of one element (a position outside
    [0, N_k) writes nothing and attends nowhere new); the mask (B or 1, 1, 1, N_k) must show that position. λ,
    ``norm_weight``, ``eps`` and ``rope`` as in ``differential_decode_attention``. Returns (B, h, 1, 2d) in qkv's
    dtype: equal, up to rounding, to writing the cache (``StaticKVCache.update``) and then
    ``differential_decode_attention``. One buffer in, not three slices: a compiled step hands the kernel the
    projection's output as it is (three slices would each be copied out first, a kernel each).

    ``counters``: at least B·h int32 zeros, contiguous, on qkv's device (``StaticKVCache.split_counters``): where the
    keys are split (``split_count``), the last split of each head to finish merges the partials in the same
    kernel, counting arrivals there and leaving them zero, so one buffer serves every layer and step of a stream.
    None: a fresh one each call (an extra fill; keep one for repeated steps).

    Raises ``ValueError`` naming the argument on a wrong rank, shape, dtype or device (those of
    ``differential_decode_attention`` included), or cache buffers that are not unit-stride.
    """
    if not isinstance(qkv, Tensor) or qkv.dim() != 3 or qkv.shape[1] != 1:
        got = tuple(qkv.shape) if isinstance(qkv, Tensor) else type(qkv).__name__
        raise ValueError(f"qkv must be (B, 1, (2h + 4h_kv)·d): one step's merged projection row; got {got}")
    if not (isinstance(k, Tensor) and k.dim() == 4 and k.shape[1] % 2 == 0 and isinstance(v, Tensor)):
        raise ValueError("k must be (B, 2h_kv, N_k, d) and v (B, h_kv, N_k, 2d): the layer's cache buffers")
    h_kv, d = k.shape[1] // 2, k.shape[3]
    two_hd = qkv.shape[2] - 4 * h_kv * d
    if two_hd <= 0 or two_hd % (2 * d) or (two_hd // (2 * d)) % max(h_kv, 1):
        raise ValueError(
            f"qkv's width {qkv.shape[2]} does not fit k's {h_kv} key heads of dim {d}: it must be (2h + 4·{h_kv})·{d} "
            f"for h query heads, a multiple of {h_kv} (the merged projection of this layer's weights)"
        )
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    q = _unpack(qkv, h_kv, d)[0]
    _check(q, k, v, lam, mask, norm_weight, eps)
    for name, t in (("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(
                f"{name} must be the cache's buffer itself, unit stride in its last dimension (a copy would lose the "
                f"write); got strides {t.stride()}"
            )
    if not (isinstance(write_at, Tensor) and write_at.dtype == torch.int64 and write_at.numel() == 1):
        raise ValueError("write_at must be an int64 tensor of one element (the cache position to write)")
    if write_at.device != q.device:
        raise ValueError(f"write_at is on {write_at.device}, qkv on {q.device}: put every input on one device")
    programs = q.shape[0] * q.shape[1] // 2
    if counters is None:
        counters = torch.zeros(programs, dtype=torch.int32, device=q.device)
    elif not (
        isinstance(counters, Tensor)
        and (counters.dtype, counters.dim(), counters.device) == (torch.int32, 1, q.device)
        and counters.numel() >= programs
        and counters.is_contiguous()
    ):
        got = f"{counters.dtype} {tuple(counters.shape)} on {counters.device}" if isinstance(counters, Tensor) else ""
        raise ValueError(
            f"counters must be a contiguous int32 vector of at least B·h = {programs} zeros on {q.device}, got "
            f"{got or type(counters).__name__}; leave it None for a fresh one"
        )
    args = _prepare(q, lam, mask, norm_weight, eps, rope)
    return _decode_step_op(qkv, k, v, *args, write_at.reshape(1), counters)


def _prepare(q: Tensor, lam: Tensor, mask: Tensor, norm_weight: Tensor | None, eps, rope) -> tuple:
    """The op's arguments after k and v: (λ, mask broadcast over the batch, weight, ε, norm, cos, sin)."""
    cos = sin = None
    if rope is not None:
        cos, sin = (_rope_rows(t, name, q) for t, name in zip(rope, ("cos", "sin"), strict=True))
    if mask.stride(-1) != 1:
        mask = mask.contiguous()
    if mask.shape[0] != q.shape[0]:
        mask = mask.expand(q.shape[0], -1, -1, -1)  # batch stride 0: every row reads the one mask
    weight = None if norm_weight is None else norm_weight.contiguous()
    return lam, mask, weight, 0.0 if eps is None else float(eps), eps is not None, cos, sin


def _rope_rows(t: Tensor, name: str, q: Tensor) -> Tensor:
    """A rotary table of one position as (B or 1, d/2) rows with unit stride, from (1, 1, d/2) or (B, 1, 1, d/2);
    raises ``ValueError`` naming ``rope``'s ``name`` otherwise."""
    b, d = q.shape[0], q.shape[3]
    shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
    if not (isinstance(t, Tensor) and t.is_floating_point() and shape in ((1, 1, d // 2), (1, 1, 1, d // 2),
                                                                       (b, 1, 1, d // 2))):  # fmt: skip
        raise ValueError(
            f"rope's {name} must be a float tensor of one position's angles, (1, 1, d/2) or (B, 1, 1, d/2) = "
            f"({b}, 1, 1, {d // 2}); got {shape}"
        )
    if t.device != q.device:
        raise ValueError(f"rope's {name} is on {t.device}, q on {q.device}: put every input on one device")
    rows = t.reshape(-1, d // 2)
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _check(q: Tensor, k: Tensor, v: Tensor, lam: Tensor, mask: Tensor, weight: Tensor | None, eps) -> None:
    """Raises ``ValueError`` naming the first argument that does not fit (``differential_decode_attention``)."""
    if q.dim() != 4 or q.shape[2] != 1 or q.shape[1] % 2:
        raise ValueError(f"q must be (B, 2h, 1, d): Q1 then Q2 heads of one query; got shape {tuple(q.shape)}")
    b, two_h, _, d = q.shape
    if d & (d - 1):
        raise ValueError(f"q's head dim d={d} must be a power of two (the kernel's tile width)")
    if q.dtype not in DTYPES:
        raise ValueError(f"q must be float16, bfloat16 or float32, got {q.dtype}")
    if k.dim() != 4 or k.shape[0] != b or k.shape[1] % 2 or k.shape[3] != d:
        raise ValueError(f"k must be (B, 2h_kv, N_k, d) = ({b}, 2h_kv, N_k, {d}); got shape {tuple(k.shape)}")
    h, h_kv, n_k = two_h // 2, k.shape[1] // 2, k.shape[2]
    if h % h_kv:
        raise ValueError(f"k's {h_kv} key heads (2h_kv = {2 * h_kv}) must divide q's {h} query heads (GQA)")
    if n_k < 1:
        raise ValueError("k holds no keys (N_k = 0)")
    if v.dim() != 4 or tuple(v.shape) != (b, h_kv, n_k, 2 * d):
        raise ValueError(f"v must be (B, h_kv, N_k, 2d) = {(b, h_kv, n_k, 2 * d)}, got shape {tuple(v.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
    if not isinstance(lam, Tensor) or lam.dim() != 0 or not lam.is_floating_point():
        shape = tuple(lam.shape) if isinstance(lam, Tensor) else type(lam).__name__
        raise ValueError(f"lam must be a 0-dim floating-point tensor, got {shape}")
    if mask.dim() != 4 or mask.shape[0] not in (1, b) or tuple(mask.shape[1:]) != (1, 1, n_k):
        raise ValueError(f"mask must be (B or 1, 1, 1, N_k) = ({b}, 1, 1, {n_k}), got shape {tuple(mask.shape)}")
    if mask.dtype != q.dtype:
        raise ValueError(f"mask must be additive in q's dtype {q.dtype} (0 or −inf), got {mask.dtype}")
    if weight is not None:
        if eps is None:
            raise ValueError("norm_weight is the RMSNorm's scale: give eps too (None means no norm)")
        if weight.dim() != 1 or weight.shape[0] != 2 * d or not weight.is_floating_point():
            raise ValueError(f"norm_weight must be a float vector of 2d = {2 * d} values, got {tuple(weight.shape)}")
    tensors = {"k": k, "v": v, "lam": lam, "mask": mask} | ({"norm_weight": weight} if weight is not None else {})
    for name, t in tensors.items():
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}: put every input on one device")
    if not (q.is_cuda or INTERPRET):
        raise ValueError(f"q is on {q.device}: the kernel runs on CUDA tensors (or the CPU under TRITON_INTERPRET=1)")
