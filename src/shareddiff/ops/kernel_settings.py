"""Settings of the fused differential-attention kernel (``ops/triton_diff.py``) and the rule table ``"auto"``
consults: plain values, importable without Triton.

``KernelSettings`` holds the choices a benchmark varies (how the backward gets dQ, how the forward lays out
its programs, block shapes). They are keyword arguments of ``triton_differential_attention``; the older
``SHAREDDIFF_TRITON_*`` environment variables still set them where no keyword does (``settings_from_env``).

``AUTO_RULES`` says where ``"auto"`` picks the kernel (and with which settings) instead of SDPA: one row per
(GPU capability, dtype, head half-dim, query-length range, forward only or not), filled in from
``benchmarks/attention.py`` measurements. Its one row: the forward without gradients (evaluation, prefill,
generation) at d = 64 in bfloat16 on sm_90 from 8,192 queries, where the kernel's forward took 0.92–0.96× the two
SDPA calls; training (a forward that autograd records) keeps SDPA, where fwd+bwd is at parity.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

DQ_MODES = ("split", "atomic", "reduce", "tma")
FORWARD_MODES = ("fused", "vsplit", "maps")
EXP2_MODES = ("hardware", "poly")
RESCALE_MODES = ("eager", "lazy")
BLOCK_KINDS = ("FWD", "BWD", "DQ")
_CHOICES = {"dq": DQ_MODES, "forward": FORWARD_MODES, "exp2": EXP2_MODES, "rescale": RESCALE_MODES}  # by field


@dataclass(frozen=True)
class Blocks:
    """One kernel's launch shape: query rows per tile ``bm``, key rows per tile ``bn`` (powers of two ≥ 16),
    ``num_warps`` (1–16) and ``num_stages`` (software-pipelining depth, ≥ 1). Raises ``ValueError`` otherwise."""

    bm: int
    bn: int
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        if any(x < 16 or x & (x - 1) for x in (self.bm, self.bn)):
            raise ValueError(f"{self}: BM and BN must be powers of two ≥ 16")
        if self.num_warps not in (1, 2, 4, 8, 16) or self.num_stages < 1:
            raise ValueError(f"{self}: num_warps must be 1, 2, 4, 8 or 16 (num_warps 1–16), num_stages ≥ 1")

    @classmethod
    def parse(cls, text: str, name: str = "blocks") -> Blocks:
        """``"BM,BN,num_warps,num_stages"``, e.g. ``"64,64,4,2"`` (the form of the environment variables)."""
        try:
            bm, bn, warps, stages = (int(x) for x in text.split(","))
        except ValueError:
            raise ValueError(f"{name}={text!r}; use four integers BM,BN,num_warps,num_stages, e.g. 64,64,4,2") from None
        try:
            return cls(bm, bn, warps, stages)
        except ValueError as exc:
            raise ValueError(f"{name}={text!r}: {exc}") from None

    def launch(self, interpret: bool) -> dict:
        """Keyword arguments of a kernel launch; the CPU interpreter takes the tile sizes only."""
        tiles = {"BM": self.bm, "BN": self.bn}
        return tiles if interpret else tiles | {"num_warps": self.num_warps, "num_stages": self.num_stages}


@dataclass(frozen=True)
class KernelSettings:
    """How the fused kernel runs. Every choice computes the same function (tested against float64).

    dq: how the backward gets dQ1, dQ2.
      ``"split"`` (default): a second kernel per query block recomputes both maps and dP (14 units of N²·d
      per head pair; no atomics); ``"atomic"``: the key-block kernel adds each tile's dQ with per-element
      float32 atomics (10 units); ``"reduce"``: the key-block kernel writes each tile's dQ to a float32
      workspace indexed by key block, a second kernel sums them in a fixed order (10 units, deterministic;
      workspace 2·C·B·h·N·d·4 bytes for C key blocks per launch, C bounded by ``dq_workspace_mib``);
      ``"tma"``: the key-block kernel adds each dQ tile with one bulk tensor reduction through a Triton tensor
      descriptor (Hopper's TMA reduce-add, as FlashAttention-3; 10 units). Where descriptors cannot reduce
      (GPUs before Hopper, the CPU interpreter) ``"tma"`` runs as ``"atomic"``.
    forward: ``"fused"`` (default): one program per query block runs both maps over each K/V tile;
      ``"vsplit"``: two programs per query block, each over half of V's 2d columns (half-width accumulators,
      twice the QKᵀ work); ``"maps"``: one program per (query block, map), each a standard flash-attention
      forward with one 2d-wide accumulator, then out = O1 − λ·O2 by a small kernel.
    exp2: how the exponentials of the softmax maps are computed. ``"hardware"`` (default): ``tl.exp2``, on
      NVIDIA GPUs the special-function unit (16 results a clock per SM on Hopper against 128 FMAs); ``"poly"``:
      map 2's score exponentials (in the fused forward, the key-block backward and the dQ kernel) by a cubic
      on the FMA units (``triton_diff._exp2_fma``, relative error ≤ 1.03e-4), so that the two maps' exponentials
      run on both units at once, as FlashAttention-4 splits its own; map 1's and the per-row rescales stay on
      the hardware unit. float32 inputs (the exactness path) and ``forward="maps"``'s forward always take
      ``"hardware"``. Measured slower on an H200 (forward 20–23 %, backward 8–49 %: docs/performance.md,
      ``benchmarks/results/attention-NVIDIA_H200-20261203T122905.json``): a setting for experiments.
    rescale: how the fused forward (``"fused"``, ``"vsplit"``) keeps its online softmax. ``"eager"`` (default):
      every key block moves each row to its new max and rescales both maps' accumulators and sums (two
      multiplications of a BM × 2d accumulator a block); ``"lazy"``: a block keeps the running maxima and skips
      the rescale unless some row's max grows by more than 2^8 (FlashAttention-4's conditional rescaling; the
      exponentials stay ≤ 256, the result is the same function). ``"maps"``'s forward is always eager.
    fwd_blocks, bwd_blocks, dq_blocks: launch shapes of the forward, the key-block backward and the dQ kernel
      (``"split"``); ``None`` means the defaults of ``triton_diff`` for the head dim and dtype.
    dq_workspace_mib: the most workspace ``"reduce"`` may allocate per launch (MiB); key blocks run in chunks
      that fit (at least one per launch). ``dq_chunk``: key blocks per launch instead (None: from the budget).
    """

    dq: str = "split"
    forward: str = "fused"
    exp2: str = "hardware"
    rescale: str = "eager"
    fwd_blocks: Blocks | None = None
    bwd_blocks: Blocks | None = None
    dq_blocks: Blocks | None = None
    dq_workspace_mib: int = 1024
    dq_chunk: int | None = None

    def __post_init__(self) -> None:
        for name, modes in _CHOICES.items():
            if (value := getattr(self, name)) not in modes:
                raise ValueError(f"{name}={value!r}; use one of {', '.join(modes)}")
        for name in ("fwd_blocks", "bwd_blocks", "dq_blocks"):
            if (value := getattr(self, name)) is not None and not isinstance(value, Blocks):
                raise ValueError(f"{name} must be a Blocks(bm, bn, num_warps, num_stages) or None, got {value!r}")
        if self.dq_workspace_mib < 1:
            raise ValueError(f"dq_workspace_mib={self.dq_workspace_mib}; give at least 1 (MiB)")
        if self.dq_chunk is not None and self.dq_chunk < 1:
            raise ValueError(f"dq_chunk={self.dq_chunk}; give at least 1 key block per launch, or None")

    def replace(self, **changes) -> KernelSettings:
        """A copy with ``changes`` applied (``None`` values leave a field as it is)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def settings_from_env(base: KernelSettings | None = None) -> KernelSettings:
    """``base`` (default ``KernelSettings()``) with the environment's overrides: ``SHAREDDIFF_TRITON_DQ``
    (a dq mode), ``SHAREDDIFF_TRITON_VSPLIT`` (``1``: fused forward, ``2``: vsplit), ``SHAREDDIFF_TRITON_EXP2``
    (an exp2 mode), ``SHAREDDIFF_TRITON_RESCALE`` (a rescale mode),
    ``SHAREDDIFF_TRITON_{FWD,BWD,DQ}_BLOCKS="BM,BN,num_warps,num_stages"``. Raises ``ValueError`` naming the
    variable on a bad value."""
    settings = base or KernelSettings()
    changes: dict = {}

    def choice(field: str) -> None:  # SHAREDDIFF_TRITON_<FIELD>: one of the field's modes
        name = f"SHAREDDIFF_TRITON_{field.upper()}"
        if value := os.environ.get(name):
            if value not in _CHOICES[field]:
                raise ValueError(f"{name}={value!r}; use one of {', '.join(_CHOICES[field])}")
            changes[field] = value

    choice("dq")
    if split := os.environ.get("SHAREDDIFF_TRITON_VSPLIT"):
        if split not in ("1", "2"):
            raise ValueError(f"SHAREDDIFF_TRITON_VSPLIT={split!r}; use 1 or 2")
        if split == "2":
            changes["forward"] = "vsplit"
        elif settings.forward == "vsplit":
            changes["forward"] = "fused"
    choice("exp2")
    choice("rescale")
    for kind in BLOCK_KINDS:
        name = f"SHAREDDIFF_TRITON_{kind}_BLOCKS"
        if raw := os.environ.get(name):
            changes[f"{kind.lower()}_blocks"] = Blocks.parse(raw, name)
    return settings.replace(**changes)


@dataclass(frozen=True)
class AutoRule:
    """Where ``"auto"`` runs the fused kernel: inputs of head half-dim ``d`` and ``dtype`` with a query length
    N in [``n_min``, ``n_max``) (``n_max`` None: no bound) on a GPU of compute ``capability`` (major, minor)
    (None: any device, the CPU interpreter included), run with ``settings``; with ``forward_only`` only where no
    gradient is recorded (the queries do not require one, or grad mode is off). A row records a measurement:
    cite its benchmark file in ``note``."""

    d: int
    dtype: torch.dtype
    n_min: int
    n_max: int | None = None
    capability: tuple[int, int] | None = None
    settings: KernelSettings = KernelSettings()
    note: str = ""
    forward_only: bool = False

    def matches(
        self, d: int, dtype: torch.dtype, n: int, capability: tuple[int, int] | None, needs_grad: bool = False
    ) -> bool:
        return (
            self.d == d
            and self.dtype == dtype
            and self.n_min <= n
            and (self.n_max is None or n < self.n_max)
            and (self.capability is None or self.capability == capability)
            and not (self.forward_only and needs_grad)
        )


AUTO_RULES: list[AutoRule] = [
    AutoRule(
        64,
        torch.bfloat16,
        8192,
        None,
        (9, 0),
        KernelSettings(),
        "benchmarks/results/attention-NVIDIA_H200-20261201T102010.json (one H200, causal, width 2048, 32K tokens): "
        "the default modes' forward 3.64 ms against the two SDPA calls' 3.97 at N = 8192 (0.92x) and 7.06 against "
        "7.57 at 16384 (0.93x); 0.92-0.96x over the H200 records of docs/performance.md and 0.88x on an H100. Their "
        "fwd+bwd is 0.97-1.01x (parity): forward only. d = 128 (1.45x) and shorter N (not measured) keep SDPA.",
        forward_only=True,
    ),
]


def device_capability(t: torch.Tensor) -> tuple[int, int] | None:
    """(major, minor) of a CUDA tensor's GPU; None elsewhere."""
    return torch.cuda.get_device_capability(t.device) if t.is_cuda else None


def auto_rule_for(q: torch.Tensor, rules: list[AutoRule] | None = None) -> AutoRule | None:
    """The first of ``rules`` (default ``AUTO_RULES``) that covers queries ``q`` (B, h, N, d), or None; a query that
    autograd records (``q.requires_grad`` in grad mode) needs a row that is not ``forward_only``."""
    rules = AUTO_RULES if rules is None else rules
    if not rules:
        return None
    d, n, cap = q.shape[-1], q.shape[-2], device_capability(q)
    needs_grad = torch.is_grad_enabled() and q.requires_grad
    return next((rule for rule in rules if rule.matches(d, q.dtype, n, cap, needs_grad)), None)
