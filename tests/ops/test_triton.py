"""The fused Triton kernel under TRITON_INTERPRET=1 (CPU) against the float64 reference: forward and every
gradient (q1, q2, k1, k2, v, λ) for every dQ mode (split, atomic, reduce in one launch and in several, tma)
and every forward mode (fused, vsplit, maps), float32 and float16, odd N, GQA, a single key, causal and not,
with a cache offset. Every output and workspace starts as NaN, so an element a kernel leaves unwritten shows.
Skipped where Triton is absent. The test_cuda_* tests (a GPU only) run the kernels compiled by Triton, inside
torch.compile(fullgraph=True) (inductor) against the same op eager: the op alone and a model's training step."""

import copy
import types
import warnings

import pytest
import torch

pytest.importorskip("triton")

import triton
import triton.language as tl

import shareddiff.ops.triton_diff as kernels
from shareddiff.ops import available_backends, differential_attention, resolve_backend
from shareddiff.ops.kernel_settings import (
    AUTO_RULES,
    AutoRule,
    Blocks,
    KernelSettings,
    auto_rule_for,
    settings_from_env,
)
from shareddiff.ops.triton_diff import triton_differential_attention
from tests.conftest import in_subprocess_without_triton_interpreter, rel_err
from tests.ops.test_differential import make_inputs, reference

SHAPES = [  # (B, h, h_kv, N, N_k, d)
    (1, 1, 1, 1, 1, 16),  # a single key
    (2, 2, 2, 37, 37, 16),  # odd N
    (1, 4, 2, 45, 45, 32),  # GQA
    (1, 2, 2, 7, 30, 16),  # queries after a cache
    (1, 1, 1, 70, 70, 16),  # several unmasked blocks before the diagonal, partial last blocks
    (1, 2, 1, 21, 83, 16),  # GQA after a cache: unmasked key blocks beside masked ones
]
MODES = {  # every dQ mode and every forward mode; "reduce, chunks": one key block per launch (running sums)
    "split/fused": {"dq": "split", "forward": "fused"},
    "atomic/vsplit": {"dq": "atomic", "forward": "vsplit"},
    "reduce/maps": {"dq": "reduce", "forward": "maps"},
    "reduce, chunks/fused": {"dq": "reduce", "forward": "fused", "dq_chunk": 1},
    "tma/maps": {"dq": "tma", "forward": "maps"},
}
POLY_MODES = {  # exp2="poly" (map 2's exponentials on the FMA units; half precision only) in two kernel paths
    "split/fused, poly": {"exp2": "poly"},
    "atomic/vsplit, poly": {"exp2": "poly", "dq": "atomic", "forward": "vsplit"},
}

LAZY_MODES = {  # rescale="lazy" (the fused forward keeps its running maxima until one grows by > 2^8) in both forwards
    "split/fused, lazy": {"rescale": "lazy"},
    "atomic/vsplit, lazy": {"rescale": "lazy", "dq": "atomic", "forward": "vsplit"},
}


@pytest.fixture(autouse=True)
def nan_outputs(monkeypatch):
    """Outputs and workspaces start as NaN (the CPU analogue of the GPU checks' poisoned memory)."""

    def alloc(*shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(kernels, "_alloc", alloc)


@pytest.fixture(autouse=True)
def descriptor_reduce(monkeypatch):
    """An emulation of Hopper's tensor-descriptor reduce-add for Triton's CPU interpreter (which has none):
    the tile's in-bounds elements added to memory, out-of-bounds ones dropped, as the TMA unit does. With
    it, dq="tma" runs its own kernel path here instead of falling back to "atomic"."""
    from triton._C.libtriton import ir
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    def create_descriptor_reduce(self, kind, desc, value, indices):
        assert kind == ir.DESCRIPTOR_REDUCE_KIND.ADD, kind
        ptrs, mask = desc.materialize_pointers(indices)
        old = self.create_masked_load(ptrs, mask, None, None, False)
        total = TensorHandle((old.data + value.data).astype(old.data.dtype), value.dtype)
        self.create_masked_store(ptrs, total, mask, None)

    monkeypatch.setattr(InterpreterBuilder, "create_descriptor_reduce", create_descriptor_reduce, raising=False)


def check_against_float64(inputs, causal, tol_out, tol_grad, **options):
    """The kernel's output and gradients (λ's included) against the float64 reference; returns them."""
    inputs = [t.requires_grad_(True) for t in inputs]
    inputs64 = [t.detach().double().requires_grad_(True) for t in inputs]
    out = triton_differential_attention(*inputs, causal=causal, **options)
    ref = reference(*inputs64, causal=causal)
    assert out.dtype == inputs[0].dtype and torch.isfinite(out).all()
    assert rel_err(out, ref) <= tol_out
    grad = torch.randn_like(ref)
    out.backward(grad.to(out.dtype))
    ref.backward(grad)
    for name, t, t64 in zip(("q1", "q2", "k1", "k2", "v"), inputs[:5], inputs64[:5], strict=True):
        assert t.grad.dtype == t.dtype and torch.isfinite(t.grad).all(), f"grad of {name}"
        assert rel_err(t.grad, t64.grad) <= tol_grad, f"grad of {name}"
    # dλ = −Σ dO ⊙ O2: relative to ‖dO‖·‖O2‖ (the reference's dλ can be near 0)
    o2 = reference(*[t.detach() for t in inputs64[:5]], torch.zeros(()), causal=causal) - reference(
        *[t.detach() for t in inputs64[:5]], torch.ones(()), causal=causal
    )
    assert (inputs[5].grad.double() - inputs64[5].grad).norm() / (grad.norm() * o2.norm()) <= tol_grad
    return out, [t.grad for t in inputs]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_kernel_float32_matches_float64(seed, shape, causal, mode):
    b, h, h_kv, n, n_k, d = shape
    lam_shape = (h,) if causal else ()  # per-head λ and scalar λ, each over every shape and mode
    check_against_float64(make_inputs(b, h, h_kv, n, n_k, d, lam_shape), causal, 1e-5, 1e-5, **MODES[mode])


@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[5]])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("mode", [*MODES, *LAZY_MODES])
def test_kernel_all_masked_tiles_path(seed, shape, causal, mode, monkeypatch):
    """The single masked loop that float32 takes on the GPU (split_tiles False) against float64."""
    monkeypatch.setattr(kernels, "split_tiles", lambda dtype: False)
    check_against_float64(make_inputs(*shape, (shape[1],)), causal, 1e-5, 1e-5, **{**MODES, **LAZY_MODES}[mode])


@pytest.mark.parametrize("mode", MODES)
def test_kernel_float16(seed, mode):
    inputs = [t.half() for t in make_inputs(1, 4, 2, 33, 33, 32, (4,))]
    check_against_float64(inputs, True, 5e-3, 1e-2, **MODES[mode])


@pytest.mark.parametrize("mode", [*MODES, *POLY_MODES, *LAZY_MODES])
def test_single_key_query_gradient_is_zero_in_half_precision(seed, mode):
    """With one key both maps are 1, so dQ is exactly 0: the backward's δ comes from the stored O1 and
    O2 (not from out + λ·O2, whose rounding left 2.7e-2 in bf16 on the GPU, 5e-6 relative here)."""
    inputs = [t.half().requires_grad_(True) for t in make_inputs(1, 2, 2, 1, 1, 32, ())]
    out = triton_differential_attention(*inputs, **{**MODES, **POLY_MODES, **LAZY_MODES}[mode])
    grad = torch.randn_like(out)
    out.backward(grad)
    scale = grad.float().norm() * inputs[4].float().norm()
    for t in inputs[:2]:
        assert torch.isfinite(t.grad).all() and t.grad.float().norm() <= 2e-7 * scale  # 5e-6 before the fix
    assert inputs[4].grad.float().sub(grad.float() * (1 - inputs[5].float())).norm() <= 1e-2 * grad.float().norm()


@triton.jit
def _exp2_fma_kernel(X, Y, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(Y + offs, kernels._exp2_fma(tl.load(X + offs)))


def test_exp2_on_the_fma_units_matches_float64(seed):
    """``_exp2_fma`` (exp2="poly") against float64 2^x: relative error ≤ 1.04e-4 (the fit's 1.03e-4) over
    [−126, 1), exact at integers (the cubic is 1 at 0 and 2 at 1), 0 below −126 and at −inf."""
    x = torch.cat([torch.linspace(-126.0, 0.999, 3000), -126 * torch.rand(966), torch.arange(-126.0, 1.0)])
    x = torch.cat([x, torch.tensor([-126.5, -300.0, float("-inf")])]).float()
    assert x.numel() == 4096  # a power of two: one tl.arange
    y = torch.empty_like(x)
    _exp2_fma_kernel[(1,)](x, y, N=x.numel())
    exact = torch.exp2(x.double())
    inside = x >= -126
    assert ((y.double() - exact).abs() / exact)[inside].max() <= 1.04e-4
    integers = inside & (x == x.round())
    assert torch.equal(y[integers].double(), exact[integers])
    assert (y[~inside] == 0).all()


@pytest.mark.parametrize(
    "shape", [(1, 4, 2, 33, 33, 32), SHAPES[0], SHAPES[5]], ids=["odd N, GQA", "single key", "GQA after a cache"]
)
@pytest.mark.parametrize("mode", POLY_MODES)
def test_poly_exp2_float16_matches_float64(seed, shape, mode):
    """Map 2's exponentials on the FMA units, forward and every gradient (the key-block backward and the dQ
    kernel; the atomic dQ with the V-split forward), odd N, GQA, a single key, queries after a cache,
    per-head λ: float16's tolerances."""
    inputs = [t.half() for t in make_inputs(*shape, (shape[1],))]
    check_against_float64(inputs, True, 5e-3, 1e-2, **POLY_MODES[mode])


def test_poly_exp2_runs_in_half_precision_only(seed):
    """exp2="poly" changes float16's results by ≤ 1e-3 relative wherever it applies, and leaves float32's bit for
    bit (the exactness path keeps the hardware exp2). The fused forward's output moves; under forward="maps" (whose
    forward keeps the hardware exp2, so both runs share O1, O2 and the log-sum-exps) dQ2 moves with the dQ kernel
    alone and dK2 with the key-block kernel alone, so each of the three kernels is seen to take the path."""
    inputs = make_inputs(1, 2, 2, 29, 29, 16, (2,))
    grad = torch.randn(1, 2, 29, 32).half()
    results = {}
    for forward in ("fused", "maps"):
        for mode in ("poly", "hardware"):
            half = [t.half().requires_grad_(True) for t in inputs]
            out = triton_differential_attention(*half, exp2=mode, forward=forward)
            out.backward(grad)
            results[forward, mode] = [out.float(), half[1].grad.float(), half[3].grad.float()]  # out, dQ2, dK2

    def moved(a, b):
        return not torch.equal(a, b) and (a - b).norm() <= 1e-3 * b.norm()

    assert moved(results["fused", "poly"][0], results["fused", "hardware"][0])
    out, dq2, dk2 = results["maps", "poly"]
    out_hw, dq2_hw, dk2_hw = results["maps", "hardware"]
    assert torch.equal(out, out_hw) and moved(dq2, dq2_hw) and moved(dk2, dk2_hw)
    assert torch.equal(triton_differential_attention(*inputs, exp2="poly"), triton_differential_attention(*inputs))


def test_modes_agree_with_the_default(seed):
    """Every mode against the default (dq split, forward fused) on the same inputs: the same function, to
    float32 rounding (the sums run in other orders)."""
    inputs = make_inputs(1, 2, 1, 35, 35, 16, (2,))
    results = {}
    for mode, options in MODES.items():
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        out = triton_differential_attention(*leaves, **options)
        out.backward(torch.ones_like(out))
        results[mode] = [out.detach()] + [t.grad for t in leaves]
    for mode, values in results.items():
        for got, want in zip(values, results["split/fused"], strict=True):
            assert rel_err(got, want) <= 1e-6, mode


def test_reduce_is_deterministic(seed):
    """dq="reduce" sums the key blocks' dQ tiles in a fixed order: two runs agree bit for bit."""
    inputs = make_inputs(1, 2, 1, 70, 70, 16, ())
    grads = []
    for _ in range(2):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        triton_differential_attention(*leaves, dq="reduce", dq_chunk=2).sum().backward()
        grads.append((leaves[0].grad, leaves[1].grad))
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_tma_without_descriptor_reduce_runs_as_atomic_and_says_so(seed, monkeypatch):
    """Where tensor descriptors cannot reduce (before Hopper; Triton 3.9's CPU interpreter) "tma" warns and
    runs "atomic": the same gradients, bit for bit."""
    from triton.runtime.interpreter import InterpreterBuilder

    monkeypatch.delattr(InterpreterBuilder, "create_descriptor_reduce")
    assert not kernels.descriptor_reduce_available(torch.device("cpu"))
    inputs = make_inputs(1, 2, 2, 37, 37, 16, ())
    grads = {}
    for dq in ("tma", "atomic"):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        out = triton_differential_attention(*leaves, dq=dq)
        if dq == "tma":
            with pytest.warns(UserWarning, match=r"dq='tma' needs tensor descriptors.*running dq='atomic' instead"):
                out.sum().backward()
        else:
            out.sum().backward()
        grads[dq] = [t.grad for t in leaves]
    assert all(torch.equal(a, b) for a, b in zip(grads["tma"], grads["atomic"], strict=True))


def test_tma_runs_its_own_path_where_descriptors_reduce(seed, monkeypatch):
    """With the emulated descriptor reduce installed, "tma" launches the descriptor path (no fallback)."""
    import warnings

    modes = []
    launch = kernels._bwd_kernel.run

    def spy(*args, **kwargs):
        modes.append(kwargs["DQ_MODE"])
        return launch(*args, **kwargs)

    monkeypatch.setattr(kernels._bwd_kernel, "run", spy)
    leaves = [t.requires_grad_(True) for t in make_inputs(1, 2, 2, 20, 20, 16, ())]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        triton_differential_attention(*leaves, dq="tma").sum().backward()
    assert modes == [kernels._DQ_CODE["tma"]] == [3]


def test_defaults_are_the_measured_algorithm(monkeypatch):
    """Without keywords, environment or AUTO_RULES rows the kernel runs dq="split", forward="fused" with the
    block shapes benchmarks/attention.py --sweep chose on an H100 (docs/performance.md), and "auto" is SDPA."""
    for name in ("DQ", "VSPLIT", "FWD_BLOCKS", "BWD_BLOCKS", "DQ_BLOCKS"):
        monkeypatch.delenv(f"SHAREDDIFF_TRITON_{name}", raising=False)
    assert KernelSettings() == settings_from_env() == KernelSettings(dq="split", forward="fused")
    seen = []
    monkeypatch.setattr(kernels._FusedDifferentialAttentionFunction, "apply", lambda *args: seen.append(args[-1]))
    q = torch.randn(1, 2, 8, 16)
    triton_differential_attention(q, q, q, q, torch.randn(1, 2, 8, 32), 0.5)
    assert seen == [KernelSettings()]
    assert resolve_backend("auto", q) == "sdpa"  # every AUTO_RULES row is a GPU's; q is on the CPU
    monkeypatch.setattr(kernels, "INTERPRET", False)  # the GPU's shapes (bf16: wide=False)
    assert [kernels.fwd_blocks(d, False) for d in (64, 128)] == [Blocks(128, 64, 8, 3), Blocks(64, 64, 8, 2)]
    # d = 128: a third stage where a block may hold it (sm_90 opts into 232,448 bytes; sm_80 into 166,912)
    hopper, ampere = 232_448, 166_912
    assert [kernels.fwd_blocks(d, False, "fused", hopper) for d in (64, 128)] == [
        Blocks(128, 64, 8, 3),
        Blocks(64, 64, 8, 3),
    ]
    assert kernels.fwd_blocks(128, False, "vsplit", hopper) == Blocks(64, 64, 8, 3)
    assert kernels.fwd_blocks(128, False, "fused", ampere) == Blocks(64, 64, 8, 2)
    assert kernels.fwd_blocks(128, False, "maps", hopper) == Blocks(64, 64, 4, 2)
    assert kernels.fwd_blocks(128, True, "fused", hopper) == Blocks(64, 32, 4, 1)  # float32 keeps its shape
    assert kernels.device_smem_per_block(torch.device("cpu")) == 0
    assert [kernels.bwd_blocks(d, False) for d in (64, 128)] == [Blocks(64, 64, 4, 2), Blocks(64, 32, 4, 2)]
    assert [kernels.dq_blocks(d, False) for d in (64, 128)] == [Blocks(128, 64, 8, 3), Blocks(128, 32, 8, 2)]
    assert kernels.bwd_blocks(64, False, "atomic") == Blocks(32, 128, 8, 2)
    assert kernels.fwd_blocks(64, True) == Blocks(64, 32, 4, 1) and kernels.bwd_blocks(64, True) == Blocks(16, 64, 4, 1)


def test_device_shared_memory_is_read_once_and_is_a_constant_when_compiled(monkeypatch):
    """``device_smem_per_block`` asks CUDA once per device, and inside ``torch.compile(fullgraph=True)`` (the op's
    launch code is traced) it is a constant: no graph break, no warning."""
    asked = []

    def properties(device):
        asked.append(device)
        return types.SimpleNamespace(shared_memory_per_block_optin=232_448)

    monkeypatch.setattr(kernels, "_SMEM_PER_BLOCK", {})
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    gpu = torch.device("cuda", 0)
    assert kernels.device_smem_per_block(gpu) == kernels.device_smem_per_block(gpu) == 232_448 and asked == [gpu]

    def uses_it(x, device):
        return x + kernels.device_smem_per_block(device)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled = torch.compile(uses_it, fullgraph=True, backend="eager")
        assert compiled(torch.zeros(2), gpu).tolist() == [232_448.0, 232_448.0]
        assert compiled(torch.zeros(2), torch.device("cpu")).tolist() == [0.0, 0.0]
    assert asked == [gpu]


def test_environment_still_sets_the_kernel_and_keywords_win(monkeypatch):
    monkeypatch.setenv("SHAREDDIFF_TRITON_DQ", "reduce")
    monkeypatch.setenv("SHAREDDIFF_TRITON_VSPLIT", "2")
    monkeypatch.setenv("SHAREDDIFF_TRITON_BWD_BLOCKS", "32,64,4,2")
    assert settings_from_env() == KernelSettings(dq="reduce", forward="vsplit", bwd_blocks=Blocks(32, 64, 4, 2))
    seen = []
    monkeypatch.setattr(kernels._FusedDifferentialAttentionFunction, "apply", lambda *args: seen.append(args[-1]))
    q, v = torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 32)
    triton_differential_attention(q, q, q, q, v, 0.5, dq="tma")
    triton_differential_attention(q, q, q, q, v, 0.5, settings=KernelSettings(forward="maps"))
    assert seen[0] == KernelSettings(dq="tma", forward="vsplit", bwd_blocks=Blocks(32, 64, 4, 2))
    assert seen[1] == KernelSettings(forward="maps")  # explicit settings: the environment is not read


@pytest.mark.parametrize(
    "env,value,match",
    [
        ("SHAREDDIFF_TRITON_DQ", "fast", "SHAREDDIFF_TRITON_DQ='fast'; use one of split, atomic, reduce, tma"),
        ("SHAREDDIFF_TRITON_VSPLIT", "4", "use 1 or 2"),
        ("SHAREDDIFF_TRITON_FWD_BLOCKS", "64,32,4", "SHAREDDIFF_TRITON_FWD_BLOCKS.*four integers"),
        ("SHAREDDIFF_TRITON_BWD_BLOCKS", "48,32,4,2", "powers of two"),
        ("SHAREDDIFF_TRITON_DQ_BLOCKS", "64,32,3,2", "num_warps"),
        ("SHAREDDIFF_TRITON_EXP2", "fast", "SHAREDDIFF_TRITON_EXP2='fast'; use one of hardware, poly"),
        ("SHAREDDIFF_TRITON_RESCALE", "never", "SHAREDDIFF_TRITON_RESCALE='never'; use one of eager, lazy"),
    ],
)
def test_bad_environment_values_are_named(monkeypatch, env, value, match):
    monkeypatch.setenv(env, value)
    with pytest.raises(ValueError, match=match):
        settings_from_env()


def test_bad_settings_are_named():
    q, v = torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 32)
    with pytest.raises(ValueError, match=r"unknown kernel options \['dq_mode'\]"):
        triton_differential_attention(q, q, q, q, v, 0.5, dq_mode="tma")
    for kwargs, match in (
        ({"dq": "fast"}, "use one of split, atomic, reduce, tma"),
        ({"forward": "split"}, "use one of fused, vsplit, maps"),
        ({"exp2": "fma"}, "exp2='fma'; use one of hardware, poly"),
        ({"rescale": "never"}, "rescale='never'; use one of eager, lazy"),
        ({"bwd_blocks": (64, 64, 4, 2)}, "must be a Blocks"),
        ({"dq_workspace_mib": 0}, "at least 1"),
        ({"dq_chunk": 0}, "at least 1 key block"),
    ):
        with pytest.raises(ValueError, match=match):
            KernelSettings(**kwargs)
    assert Blocks.parse("64,32,4,2") == Blocks(64, 32, 4, 2)


def test_reduce_plan_bounds_the_workspace():
    blocks = Blocks(64, 128)
    plan = kernels.dq_reduce_plan(4, 16, 8192, 8192, 64, blocks, KernelSettings(dq="reduce"))
    per_block = 4 * 16 * 8192 * 64  # elements per map and key block
    assert plan["chunk"] == 1024 * 2**20 // (2 * 4 * per_block) == 4
    assert plan["launches"] == 16 and plan["workspace_bytes"] == 2 * 4 * 4 * per_block <= 2**30
    assert plan["accumulator_bytes"] == 2 * 4 * per_block
    one = kernels.dq_reduce_plan(1, 2, 100, 100, 16, Blocks(16, 16), KernelSettings(dq="reduce"))
    assert one == {"chunk": 7, "launches": 1, "workspace_bytes": 2 * 4 * 7 * 2 * 112 * 16, "accumulator_bytes": 0}
    assert kernels.dq_reduce_plan(1, 2, 100, 100, 16, Blocks(16, 16), KernelSettings(dq_chunk=3))["launches"] == 3
    with pytest.raises(ValueError, match="32-bit indexing; use dq='split'"):
        kernels.dq_reduce_plan(64, 64, 2**16, 2**16, 128, blocks, KernelSettings(dq="reduce"))


def test_auto_rules_pick_the_kernel_only_where_a_row_matches():
    q = torch.randn(1, 2, 100, 64, dtype=torch.bfloat16)
    rule = AutoRule(64, torch.bfloat16, 64, 128, None, KernelSettings(dq="tma"), "test row")
    assert auto_rule_for(q, [rule]) is rule
    assert auto_rule_for(q[:, :, :50], [rule]) is None and auto_rule_for(q.float(), [rule]) is None
    assert auto_rule_for(q, [AutoRule(64, torch.bfloat16, 64, None, (9, 0))]) is None  # a GPU row; q is on CPU
    assert auto_rule_for(q) is None  # AUTO_RULES's rows are for sm_90 GPUs


def test_forward_only_rules_skip_what_autograd_records():
    """A ``forward_only`` row matches queries without gradients (no requires_grad, or under no_grad / inference
    mode) and not queries that autograd records; a plain row matches both."""
    rule = AutoRule(64, torch.bfloat16, 64, None, None, KernelSettings(), "test row", forward_only=True)
    plain = AutoRule(64, torch.bfloat16, 64)
    q = torch.randn(1, 2, 100, 64, dtype=torch.bfloat16)
    leaf = q.clone().requires_grad_()
    assert auto_rule_for(q, [rule]) is rule
    assert auto_rule_for(leaf, [rule]) is None and auto_rule_for(leaf * 2, [rule]) is None
    assert auto_rule_for(leaf, [rule, plain]) is plain
    with torch.no_grad():
        assert auto_rule_for(leaf, [rule]) is rule
    with torch.inference_mode():
        assert auto_rule_for(leaf, [rule]) is rule


def test_the_measured_auto_row():
    """AUTO_RULES's one row: d = 64, bfloat16, sm_90, N ≥ 8192, forward only, the default settings, its record
    named; it matches an H200's inference shapes and nothing else (checked through ``matches``, no GPU here)."""
    (row,) = AUTO_RULES
    assert (row.d, row.dtype, row.n_min, row.n_max, row.capability) == (64, torch.bfloat16, 8192, None, (9, 0))
    assert row.forward_only and row.settings == KernelSettings()
    assert "attention-NVIDIA_H200-20261201T102010.json" in row.note
    assert row.matches(64, torch.bfloat16, 8192, (9, 0)) and row.matches(64, torch.bfloat16, 65536, (9, 0))
    assert not row.matches(64, torch.bfloat16, 8192, (9, 0), needs_grad=True)
    assert not row.matches(64, torch.bfloat16, 4096, (9, 0)) and not row.matches(128, torch.bfloat16, 8192, (9, 0))
    assert not row.matches(64, torch.float16, 8192, (9, 0)) and not row.matches(64, torch.bfloat16, 8192, (8, 0))


def test_model_with_triton_backend_matches_sdpa(seed):
    from shareddiff import ModelConfig, build_model

    assert "triton" in available_backends()
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
    with pytest.raises(ValueError, match=r"head half-dim d=24 is not one of \(16, 32, 64, 128\)"):
        differential_attention(q, q, q, q, v, 0.5, backend="triton")


def test_mask_is_refused_with_the_fix():
    q1, q2, k1, k2, v, lam = make_inputs(1, 2, 2, 4, 4, 16, ())
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()
    with pytest.raises(ValueError, match=r"triton kernel takes no attention mask.*use the sdpa or eager backend"):
        differential_attention(q1, q2, k1, k2, v, lam, causal=False, backend="triton", mask=mask)


@pytest.mark.parametrize(
    ("interpret", "d", "dtype", "names"),
    [
        (False, 16, torch.float32, ["runs on CUDA tensors, these are on cpu"]),
        (True, 24, torch.float32, ["head half-dim d=24 is not one of"]),
        (False, 24, torch.float32, ["runs on CUDA tensors", "head half-dim d=24"]),
        (True, 16, torch.float64, ["dtype torch.float64 is not float16, bfloat16 or float32"]),
    ],
)
def test_an_unrunnable_input_names_only_what_is_wrong(monkeypatch, interpret, d, dtype, names):
    """The refusal lists the actual problems (device, head dim, dtype) and the backends to use instead."""
    monkeypatch.setattr(kernels, "INTERPRET", interpret)
    q1, q2, k1, k2, v, lam = make_inputs(1, 2, 2, 8, 8, d, (2,), dtype)
    with pytest.raises(ValueError) as err:
        triton_differential_attention(q1, q2, k1, k2, v, lam, causal=True)
    text = str(err.value)
    assert all(n in text for n in names) and "use attn_backend 'auto' (SDPA) or 'eager'" in text
    assert ("CUDA" in text) == (not interpret) and ("half-dim" in text) == (d == 24)


BF16_TOL = 1e-2  # against float64: ~2.5 bf16 roundings (2^-8 each): the output's, P's before P·V, dS's before dS·K
ROUNDING = 2**-8  # one bf16 rounding (relative)
VALUES = ("out", "q1", "q2", "k1", "k2", "v", "lam")


def causal_op(q1, q2, k1, k2, v, lam):
    return triton_differential_attention(q1, q2, k1, k2, v, lam, causal=True)


def op_and_grads(fn, inputs, grad) -> list[torch.Tensor]:
    """``fn``'s output and the gradients of all six inputs for the output gradient ``grad``, on the CPU."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    out.backward(grad)
    return [out.detach().cpu()] + [t.grad.cpu() for t in leaves]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the kernels compile for a GPU")
@pytest.mark.parametrize("d", [64, 128])
def test_cuda_compiled_op_matches_eager_and_float64(seed, d, request):
    """On the GPU (Triton compiling, no interpreter), bf16, causal, GQA (4 query heads on 2 key heads), N = 383
    (no multiple of any block: partial tiles), per-head λ, outputs and workspaces NaN-poisoned: the op inside
    ``torch.compile(fullgraph=True, dynamic=False)`` (inductor passes its floats as fp64) and eager, output and
    every gradient (q1, q2, k1, k2, v, λ). Both within BF16_TOL of the float64 reference; compiled against eager
    within one bf16 rounding (the same kernels on the same inputs: only PyTorch's side, e.g. dλ's sum, may
    reorder; a kernel that inductor mis-types or mis-strides is off by O(1))."""
    if in_subprocess_without_triton_interpreter(request):
        return
    q1, q2, k1, k2, v, lam = make_inputs(2, 4, 2, 383, 383, d, (4,))
    inputs = [t.cuda().bfloat16() for t in (q1, q2, k1, k2, v)] + [lam.cuda()]  # λ float32, as the model's
    grad = torch.randn(2, 4, 383, 2 * d, device="cuda", dtype=torch.bfloat16)
    inputs64 = [t.detach().cpu().double().requires_grad_(True) for t in inputs]  # the bf16 values, exactly
    ref = reference(*inputs64, causal=True)
    ref.backward(grad.cpu().double())
    expected = [ref.detach()] + [t.grad for t in inputs64]
    with torch.no_grad():
        o2 = reference(*inputs64[:5], torch.zeros(()), causal=True) - reference(
            *inputs64[:5], torch.ones(()), causal=True
        )
    lam_scale = grad.double().norm().item() * o2.norm().item()  # dλ = −Σ dO ⊙ O2 (as check_against_float64)

    def error(name, got, want):
        if name == "lam":
            return (got.double() - want.double()).norm().item() / lam_scale
        return rel_err(got, want)

    eager = op_and_grads(causal_op, inputs, grad)
    compiled = op_and_grads(torch.compile(causal_op, fullgraph=True, dynamic=False), inputs, grad)
    for name, e, c, want in zip(VALUES, eager, compiled, expected, strict=True):
        assert e.dtype == c.dtype and torch.isfinite(c).all(), name
        assert error(name, e, want) <= BF16_TOL and error(name, c, want) <= BF16_TOL, name
        assert error(name, c, e) <= ROUNDING, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the kernels compile for a GPU")
def test_cuda_compiled_model_step_with_the_kernel_matches_eager(seed, request):
    """A training step of shared_diff-tiny on the GPU with attention backend "triton" under bf16 autocast (the
    trainer's CUDA default): compiled (``torch.compile(model, fullgraph=True)``, inductor) its loss and gradients
    are as close to the eager step's as bf16 rounding lets two orders of the same sums be, i.e. within twice
    the eager step's own distance from the float64 step (the eager backend, no autocast); and the eager step
    is itself near that float64 step."""
    if in_subprocess_without_triton_interpreter(request):
        return
    from shareddiff import ModelConfig, build_model
    from shareddiff.train.loss import token_loss

    model = build_model(ModelConfig.from_preset("shared_diff-tiny"), attn_backend="triton", device="cuda")
    reference_model = copy.deepcopy(model).double()
    reference_model.set_attention_backend("eager")
    ids = torch.randint(0, model.config.vocab_size, (2, 101), device="cuda")  # N = 100: a partial block

    def step(forward, module, autocast=True) -> torch.Tensor:
        """The loss, then every parameter's gradient, in one float64 vector."""
        module.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = token_loss(forward(ids[:, :-1]), ids[:, 1:])
        loss.backward()
        return torch.cat([loss.detach().reshape(1)] + [p.grad.flatten() for p in module.parameters()]).double()

    expected = step(reference_model, reference_model, autocast=False)
    eager = step(model, model)
    compiled = step(torch.compile(model, fullgraph=True, dynamic=False), model)
    assert torch.isfinite(compiled).all()
    eager_err = rel_err(eager[1:], expected[1:])
    assert eager_err <= 5e-2 and abs(eager[0] - expected[0]) <= 1e-2 * expected[0]
    assert rel_err(compiled[1:], eager[1:]) <= 2 * eager_err
    assert abs(compiled[0] - eager[0]) <= 2 * abs(eager[0] - expected[0]) + ROUNDING * expected[0]


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[2], SHAPES[4], SHAPES[5]], ids=["odd N", "GQA", "blocks", "cache"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("mode", LAZY_MODES)
def test_lazy_rescale_matches_float64(seed, shape, causal, mode):
    """rescale="lazy", float32 and float16, forward and every gradient, per-head λ: the tolerances of the
    eager modes."""
    inputs = make_inputs(*shape, (shape[1],))
    halves = [t.half() for t in inputs]
    check_against_float64(inputs, causal, 1e-5, 1e-5, **LAZY_MODES[mode])
    check_against_float64(halves, causal, 5e-3, 1e-2, **LAZY_MODES[mode])


def _late_spike(inputs, key: int, size: float, map_: int):
    """The queries and keys of map ``map_`` (1 or 2) given a shared direction, and key ``key`` along it ``size``
    times: from that key's block on, the rows that see it have a running max of that map far above the one
    before."""
    spiked = [t.clone() for t in inputs]
    q, k = spiked[map_ - 1], spiked[map_ + 1]
    u = torch.nn.functional.normalize(torch.randn(q.shape[-1]), dim=0)
    q += 8 * u
    k[..., key, :] = size * u
    return spiked


# the backward exponentiates a masked tile's every pair before zeroing the invalid ones: the spike's scores for the
# queries before it (which may not see it) overflow there, in numpy, and are then dropped (inf → 0 by tl.where)
@pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning")
@pytest.mark.parametrize("map_", [1, 2])
@pytest.mark.parametrize("mode", LAZY_MODES)
def test_lazy_rescale_skips_where_it_may_and_rescales_where_it_must(seed, mode, map_):
    """The lazy forward does skip rescales (its float32 output differs from the eager one in the last bits:
    the exponentials subtract older maxima) and does rescale when a late key's scores in either map exceed
    the earlier ones by far more than 8 in log2 units (without it, exp2 of scores above 128 overflows float32;
    those of map ``map_`` reach about 430): both against float64."""
    inputs = make_inputs(1, 2, 2, 70, 70, 16, (2,))
    lazy = triton_differential_attention(*inputs, **LAZY_MODES[mode])
    eager = triton_differential_attention(*inputs, **{**LAZY_MODES[mode], "rescale": "eager"})
    assert not torch.equal(lazy, eager) and rel_err(lazy, eager) <= 1e-5
    spiked = _late_spike(inputs, key=60, size=150.0, map_=map_)
    q, k = spiked[map_ - 1], spiked[map_ + 1]
    scores = q[..., 60:, :] @ k[..., 60, :].unsqueeze(-1) / 4.0 * kernels.LOG2E  # d = 16: scale 1/4
    earlier = (q[..., 60:, :] @ k[..., :48, :].transpose(-1, -2) / 4.0 * kernels.LOG2E).amax(-1, keepdim=True)
    assert (scores - earlier).min() > 128  # in log2 units: 2^jump overflows float32 unless rescaled
    halves = [t.half() for t in spiked]
    check_against_float64(spiked, True, 1e-5, 1e-5, **LAZY_MODES[mode])
    check_against_float64(halves, True, 5e-3, 1e-2, **LAZY_MODES[mode])
