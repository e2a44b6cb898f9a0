"""The wrapper's generate(cache_implementation="static") (the project's StaticDecoder) against transformers' own
loop with the dynamic KVCache: same ids for greedy decoding, EOS and padding, and sampling; the fallbacks."""

import logging

import pytest
import torch

pytest.importorskip("transformers")

from transformers import CompileConfig, GenerationConfig

from shareddiff import ModelConfig, build_model
from shareddiff.hf import wrap
from shareddiff.padding import left_pad
from shareddiff.presets import FAMILIES
from shareddiff.static_decode import StaticDecoder

STATIC = dict(cache_implementation="static")


def _wrapped_batch(family: str):
    model = build_model(ModelConfig.from_preset(f"{family}-tiny")).eval()
    ids, mask = left_pad([torch.randint(2, 512, (n,)) for n in (9, 4, 7)], pad_id=0)
    return wrap(model), ids, mask


def _count_steps(monkeypatch) -> list:
    calls = []
    original = StaticDecoder.step
    monkeypatch.setattr(StaticDecoder, "step", lambda self, tokens: calls.append(1) or original(self, tokens))
    return calls


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_static_generate_equals_transformers_loop(seed, family, monkeypatch):
    """Reference: transformers' loop (no cache_implementation). Greedy ids equal for a left-padded batch, and with
    an EOS that ends one row early (its later tokens are pad_token_id); the static path ran its steps."""
    wrapped, ids, mask = _wrapped_batch(family)
    steps = _count_steps(monkeypatch)
    kwargs = dict(attention_mask=mask, max_new_tokens=12, do_sample=False)
    reference = wrapped.generate(ids, **kwargs)
    assert torch.equal(wrapped.generate(ids, **kwargs, **STATIC), reference)
    assert len(steps) == 11
    eos = int(reference[0, 9 + 4])
    kwargs.update(eos_token_id=eos, pad_token_id=1)
    reference = wrapped.generate(ids, **kwargs)
    assert (reference[0, 9 + 5 :] == 1).all()
    assert torch.equal(wrapped.generate(ids, **kwargs, **STATIC), reference)


def test_static_requested_through_a_generation_config(seed, monkeypatch):
    """cache_implementation="static" in a GenerationConfig given to generate(), or in the model's own, takes the
    static path too (its steps run), with transformers' ids."""
    wrapped, ids, mask = _wrapped_batch("shared_diff")
    steps = _count_steps(monkeypatch)
    reference = wrapped.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    config = GenerationConfig(max_new_tokens=6, do_sample=False, cache_implementation="static")
    assert torch.equal(wrapped.generate(ids, config, attention_mask=mask), reference)
    wrapped.generation_config.cache_implementation = "static"
    assert torch.equal(wrapped.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False), reference)
    assert len(steps) == 10


def test_static_sampling_draws_transformers_tokens(seed):
    """Same global seed, temperature, top-k and top-p: the static path samples the ids transformers' loop does."""
    wrapped, ids, mask = _wrapped_batch("shared_diff")
    kwargs = dict(attention_mask=mask, max_new_tokens=15, do_sample=True, temperature=0.8, top_k=30, top_p=0.9)
    torch.manual_seed(seed)
    reference = wrapped.generate(ids, **kwargs)
    torch.manual_seed(seed)
    assert torch.equal(wrapped.generate(ids, **kwargs, **STATIC), reference)


def test_what_the_static_path_does_not_serve_falls_back(seed, monkeypatch, caplog):
    """Beam search and a repetition penalty go through transformers' loop (same ids as without the static
    request), with a warning naming the setting; the static path runs no step."""
    wrapped, ids, mask = _wrapped_batch("diff")
    steps = _count_steps(monkeypatch)
    for extra, name in ((dict(num_beams=2), "num_beams"), (dict(repetition_penalty=1.3), "repetition_penalty")):
        kwargs = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, **extra)
        with caplog.at_level(logging.WARNING, logger="shareddiff.hf.static_generate"):
            static = wrapped.generate(ids, **kwargs, **STATIC)
        assert torch.equal(static, wrapped.generate(ids, **kwargs))
        assert f"falls back to transformers' decoding loop: generation setting(s) ['{name}']" in caplog.text
    assert steps == []


@pytest.mark.slow
def test_compile_config_compiles_the_static_step_on_the_cpu(seed):
    """A compile_config (here the "aot_eager" backend) compiles the step on the CPU too; ids as transformers' loop."""
    wrapped, ids, mask = _wrapped_batch("transformer")
    kwargs = dict(attention_mask=mask, max_new_tokens=10, do_sample=False)
    static = wrapped.generate(ids, **kwargs, **STATIC, compile_config=CompileConfig(backend="aot_eager"))
    assert torch.equal(static, wrapped.generate(ids, **kwargs))
    (decoder,) = wrapped._static_decoders.values()
    assert decoder._step_fn is not decoder._step
