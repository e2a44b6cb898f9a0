"""``generate(..., cache_implementation="static")`` on the wrapper: the project's ``StaticDecoder`` instead of
transformers' decoding loop, where the arguments allow it.

transformers answers ``cache_implementation="static"`` with its ``StaticCache`` and, on a GPU, a decode step
compiled with ``mode="reduce-overhead"``. Its ``StaticCache`` holds one K and one V per layer, which does not
fit the differential variants (K1, K2, V), so the wrapper answers it with the project's own static decoder,
compiled the same way (on CUDA unless ``disable_compile``, or wherever a ``compile_config`` is given; its
``backend`` and ``mode`` are honoured; without one, on CUDA, CUDA graphs with the decoder's default inductor
options, ``static_decode.CUDA_COMPILE_OPTIONS``). Greedy decoding and sampling with temperature, top-k and top-p
(transformers' defaults included) go that way; anything else the call asks for (beams, other logits
processors, stopping criteria, streamers, scores in the output, ...) falls back to transformers' own loop with
the dynamic ``KVCache``, with a warning naming the reason. The result is what transformers' loop returns:
(B, T + new) ids, rows that ended (EOS) continued with ``pad_token_id``.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch
from transformers import GenerationConfig

from shareddiff.generation import decode_tokens, next_token, static_cache_len
from shareddiff.static_decode import StaticDecoder

logger = logging.getLogger(__name__)

STATIC = "static"
# Settings the static path implements; every other setting must keep transformers' global default.
HANDLED = {
    "max_length",
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "eos_token_id",
    "pad_token_id",
    "bos_token_id",
    "use_cache",
    "cache_implementation",
    "compile_config",
    "disable_compile",
    "transformers_version",
    "_from_model_config",
}
OFF = (None, False)  # a setting left unset or switched off (0 compares equal to False: disabled)
# Arguments of GenerationMixin.generate (beyond the config) that only transformers' loop serves.
LOOP_ARGUMENTS = (
    "logits_processor",
    "stopping_criteria",
    "prefix_allowed_tokens_fn",
    "synced_gpus",
    "assistant_model",
    "streamer",
    "negative_prompt_ids",
    "negative_prompt_attention_mask",
    "custom_generate",
    "tokenizer",
    "assistant_tokenizer",
)


def static_generate(wrapper, inputs: torch.Tensor | None, generation_config: GenerationConfig | None, kwargs: dict):
    """The ids ``wrapper.generate(inputs, generation_config, **kwargs)`` returns, decoded by a ``StaticDecoder``;
    None where the call does not ask for ``cache_implementation="static"`` or asks for something only
    transformers' loop does (then logged)."""
    requested = (
        kwargs.get("cache_implementation")
        or getattr(generation_config, "cache_implementation", None)
        or wrapper.generation_config.cache_implementation
    )
    if requested != STATIC:  # the usual call: transformers' loop, untouched
        return None
    config, model_kwargs = wrapper._prepare_generation_config(generation_config, **kwargs)
    if config.cache_implementation != STATIC:
        return None
    ids = inputs if inputs is not None else model_kwargs.pop("input_ids", None)
    mask = model_kwargs.pop("attention_mask", None)
    reason = _unsupported(config, model_kwargs, ids, mask)
    if reason:
        logger.warning("cache_implementation='static' falls back to transformers' decoding loop: %s", reason)
        return None
    eos = config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else None)
    new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - ids.shape[1]
    decoder = _decoder(wrapper, static_cache_len(ids.shape[1] + new, wrapper.model.config.max_seq_len), config)
    temperature = config.temperature if config.do_sample else 0.0
    sample = partial(next_token, temperature=temperature, top_k=config.top_k, top_p=config.top_p)
    with torch.no_grad():
        logits = decoder.prefill(ids, mask, new)
        eos_ids = torch.tensor(eos, device=ids.device) if eos else None
        tokens = decode_tokens(logits, decoder.step, new, sample, eos_ids, pad)
    return torch.cat([ids, tokens], dim=1)


def _unsupported(config: GenerationConfig, model_kwargs: dict[str, Any], ids, mask) -> str | None:
    """Why the static path cannot serve this call, or None."""
    loop_args = [k for k in LOOP_ARGUMENTS if model_kwargs.get(k) not in (None, False)]
    if loop_args:
        return f"argument(s) {loop_args}"
    others = sorted(k for k, v in model_kwargs.items() if v not in (None, False) and k not in LOOP_ARGUMENTS)
    if others:
        return f"model argument(s) {others}"
    defaults = GenerationConfig()
    defaults.update(**GenerationConfig._get_default_generation_params())
    expected = defaults.to_dict()
    changed = sorted(
        k
        for k, v in config.to_dict().items()
        if k not in HANDLED and v != expected.get(k) and not (v in OFF and expected.get(k) in OFF)
    )
    if changed:
        return f"generation setting(s) {changed}"
    if config.use_cache is False:
        return "use_cache=False"
    if config.do_sample and not config.temperature > 0:
        return f"do_sample with temperature={config.temperature}"
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] == 0:
        return "input_ids must be a non-empty (B, T) tensor"
    new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - ids.shape[1]
    if new < 1:
        return f"no new tokens to generate (max_length={config.max_length}, prompt of {ids.shape[1]})"
    if mask is None and config.pad_token_id is not None and bool((ids == config.pad_token_id).any()):
        return "no attention_mask while the inputs hold pad_token_id (pass the tokenizer's attention_mask)"
    return None


def _decoder(wrapper, max_len: int, config: GenerationConfig) -> StaticDecoder:
    """The wrapper's decoder for ``max_len`` and the compile settings (kept, so its compiled step is reused)."""
    model = wrapper.model
    on_cuda = next(model.parameters()).is_cuda
    compile_config = config.compile_config
    compile = not config.disable_compile and (on_cuda or compile_config is not None)
    backend = getattr(compile_config, "backend", "inductor") if compile_config is not None else "inductor"
    mode = getattr(compile_config, "mode", None) if compile_config is not None and backend == "inductor" else None
    key = (max_len, compile, backend, mode)
    decoders = wrapper.__dict__.setdefault("_static_decoders", {})
    if key not in decoders:
        decoders[key] = StaticDecoder(model, max_len, compile=compile, backend=backend, mode=mode)
    return decoders[key]
