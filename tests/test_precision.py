"""Precision of the whole model: a float64 model computes in float64 on every path, a bf16/fp16/fp32 model
keeps its float32 internals exactly as before.

Reference: the independent float64 layer re-implementations (``tests/reference.py`` through the layer references
of ``tests/attention/``), composed here into the model (embedding, pre-RMSNorm blocks, SwiGLU, final norm, head)
one sequence at a time. One float32 step anywhere (RoPE table or rotation, λ, softmax, a norm, the loss) leaves
~1e-7 relative error; float64 throughout leaves ~1e-15, so the 1e-12 bounds here cannot pass with a downcast.
"""

import pytest
import torch

import shareddiff.model
from shareddiff import ModelConfig, build_model, layers
from shareddiff.attention import (
    DiffAttention,
    DiffV2Attention,
    SharedDiffAttention,
    SharedDiffHeadsAttention,
    SharedDiffV2Attention,
    StandardAttention,
)
from shareddiff.padding import left_pad
from shareddiff.static_decode import StaticDecoder
from tests.attention.test_diff import diff_reference
from tests.attention.test_diff_v2 import v2_reference
from tests.attention.test_shared_diff import shared_diff_reference
from tests.attention.test_standard import standard_reference
from tests.conftest import rel_err
from tests.reference import rms_norm, swiglu
from tests.test_model import VARIANTS, tiny

TOL64 = 1e-12  # relative error of float64 logits: float64 rounding is ~1e-15, a float32 step ~1e-7

LAYER_REFERENCE = {
    StandardAttention: standard_reference,
    DiffAttention: diff_reference,
    SharedDiffAttention: shared_diff_reference,
    SharedDiffHeadsAttention: shared_diff_reference,
    DiffV2Attention: v2_reference,
    SharedDiffV2Attention: v2_reference,
}


def tiny64(name: str) -> torch.nn.Module:
    """A float64 model of ``VARIANTS[name]`` with its norm weights and λ vectors moved off their init."""
    config = ModelConfig(
        **{"d_model": 64, "n_layers": 2, "n_heads": 2, "vocab_size": 97, "max_seq_len": 64, **VARIANTS[name]}
    )
    model = build_model(config, dtype=torch.float64).eval()
    with torch.no_grad():
        for param_name, p in model.named_parameters():
            if "norm" in param_name:
                p.uniform_(0.5, 1.5)
            elif "lambda_q" in param_name or "lambda_k" in param_name:
                p.normal_(0, 0.3)
    return model


def weight(linear: torch.nn.Linear) -> torch.Tensor:
    return linear.weight.detach().double().T  # X·W form


@torch.no_grad()
def reference_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """(N, vocab) float64 logits of one unpadded sequence ``ids`` (N,), from the parameters alone."""
    c = model.config
    x = model.tok_embeddings.weight.detach().double()[ids]  # (N, D)
    for block in model.layers:
        attention = LAYER_REFERENCE[type(block.attention)]
        x = x + attention(block.attention, rms_norm(x, block.attention_norm.weight.detach(), c.norm_eps), c)
        ffn = block.feed_forward
        h = rms_norm(x, block.ffn_norm.weight.detach(), c.norm_eps)
        x = x + swiglu(h, weight(ffn.w_gate), weight(ffn.w_up), weight(ffn.w_down))
    x = rms_norm(x, model.norm.weight.detach(), c.norm_eps)
    return x @ (weight(model.output) if model.output is not None else model.tok_embeddings.weight.detach().double().T)


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_float64_model_and_cache_decode_match_the_reference(seed, name, backend):
    """Full forward and KV-cache decode (prefill, a chunk, then one token at a time) of a float64 model against
    ``reference_logits`` and against each other, ≤ 1e-12."""
    model = tiny64(name)
    model.set_attention_backend(backend)
    ids = torch.randint(0, 97, (2, 21))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        pieces = [model(ids[:, :9], cache), model(ids[:, 9:13], cache)]
        pieces += [model(ids[:, i : i + 1], cache) for i in range(13, 21)]
    decoded = torch.cat(pieces, dim=1)
    assert full.dtype == decoded.dtype == torch.float64
    expected = torch.stack([reference_logits(model, row) for row in ids])
    assert rel_err(full, expected) <= TOL64
    assert rel_err(decoded, expected) <= TOL64
    assert rel_err(decoded, full) <= TOL64


@pytest.mark.parametrize("name", list(VARIANTS))
def test_float64_eager_and_sdpa_models_agree(seed, name):
    """Logits ≤ 1e-12 and gradients ≤ 1e-12 (all parameters together) apart; each parameter's gradient ≤ 1e-9
    (the λ vectors' gradients are small sums with heavy cancellation). float32 allows 1e-5 and 1e-2
    (``test_model.test_eager_and_sdpa_models_agree``)."""
    model = tiny64(name)
    ids = torch.randint(0, 97, (2, 33))
    logits, grads = {}, {}
    for backend in ("eager", "sdpa"):
        model.set_attention_backend(backend)
        out = model(ids)
        out.logsumexp(-1).mean().backward()
        logits[backend], grads[backend] = out.detach(), [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
    assert rel_err(logits["sdpa"], logits["eager"]) <= TOL64
    flat = {k: torch.cat([g.flatten() for g in v]) for k, v in grads.items()}
    assert rel_err(flat["sdpa"], flat["eager"]) <= TOL64
    for g_sdpa, g_eager in zip(grads["sdpa"], grads["eager"], strict=True):
        assert rel_err(g_sdpa, g_eager) <= 1e-9


PADDED_VARIANTS = ["standard", "diff-gqa", "shared_diff", "diff_v2", "shared_diff_v2-mqa"]
LENGTHS = (11, 4, 7)


@pytest.mark.parametrize("name", PADDED_VARIANTS)
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_float64_left_padded_and_static_decode_match_the_reference(seed, name, backend):
    """A left-padded batch (per-row RoPE positions) through ``forward`` with a cache and through ``StaticDecoder``
    (its own RoPE table): every row's logits equal the reference of that row alone, ≤ 1e-12."""
    model = tiny64(name)
    model.set_attention_backend(backend)
    prompts = [torch.randint(0, 97, (n,)) for n in LENGTHS]
    steps = torch.randint(0, 97, (3, 5))
    ids, mask = left_pad(prompts, pad_id=7)
    decoder = StaticDecoder(model, max_len=32)
    with torch.no_grad():
        cache = model.new_cache()
        cached = [model(ids, cache, mask)] + [model(steps[:, i : i + 1], cache) for i in range(5)]
        static = [decoder.prefill(ids, mask, 5)] + [decoder.step(steps[:, i]).clone() for i in range(5)]
    assert decoder._cos.dtype == torch.float64
    for row, prompt in enumerate(prompts):
        n = len(prompt)
        expected = reference_logits(model, torch.cat([prompt, steps[row]]))  # (n + 5, vocab)
        got = torch.cat([cached[0][row, -n:]] + [c[row] for c in cached[1:]])
        assert rel_err(got, expected) <= TOL64
        assert rel_err(torch.stack([s[row] for s in static]), expected[n - 1 :]) <= TOL64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_internal_precision_follows_the_model_dtype(dtype, monkeypatch):
    """bf16/fp16/fp32 models compute the RoPE table, λ and the eager maps in float32, the table being bitwise the
    float32 one they always used (``rope_angles``' default); a float64 model computes all of them in float64."""
    internal = torch.promote_types(dtype, torch.float32)
    tables = []

    def recording_rope_angles(*args):
        tables.append(layers.rope_angles(*args))
        return tables[-1]

    monkeypatch.setattr(shareddiff.model, "rope_angles", recording_rope_angles)
    for name in ("standard", "diff", "diff_v2"):
        model = tiny(name).to(dtype)
        model.set_attention_backend("eager")
        maps = []
        for block in model.layers:
            block.attention.recorder = maps
        ids = torch.randint(0, 97, (2, 9))
        with torch.no_grad():
            logits = model(ids)
        assert logits.dtype == dtype
        assert all(m.dtype == internal for layer in maps for m in layer)
        if name == "diff":
            assert model.layers[0].attention.lam().dtype == internal
        cos, sin = tables[-1]
        assert cos.dtype == sin.dtype == internal
        decoder = StaticDecoder(model, max_len=16)
        decoder.prefill(ids)
        assert decoder._cos.dtype == internal
    if dtype != torch.float64:
        default = layers.rope_angles(torch.arange(9), model.config.head_dim, model.config.rope_theta)
        assert torch.equal(tables[-1][0], default[0]) and torch.equal(tables[-1][1], default[1])
