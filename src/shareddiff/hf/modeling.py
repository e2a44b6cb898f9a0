"""Hugging Face ``transformers`` wrappers around the project's own model (no second implementation).

``import shareddiff.hf`` registers ``ShareddiffConfig`` / ``ShareddiffForCausalLM`` with ``AutoConfig`` and
``AutoModelForCausalLM``, so ``save_pretrained`` / ``from_pretrained`` (safetensors), ``generate()`` (with
the project's KV cache, left-padded batches and beam search; with ``cache_implementation="static"``, its
compiled static decoder), ``resize_token_embeddings`` and the ``Trainer`` (gradient accumulation through
``num_items_in_batch``) work as for any causal LM.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.generation import GenerationMode
from transformers.modeling_outputs import CausalLMOutputWithPast

from shareddiff.config import ModelConfig
from shareddiff.hf.static_generate import static_generate
from shareddiff.model import KVCache, LanguageModel
from shareddiff.padding import check_token_mask

# transformers renamed the cache argument and output field from ``past_key_values`` to ``cache`` during 5.x
CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


class ShareddiffConfig(PreTrainedConfig):
    """The project's ``ModelConfig`` (under ``shareddiff``) plus the standard names other tools read."""

    model_type = "shareddiff"
    shareddiff: dict | None = None
    vocab_size: int = 512
    hidden_size: int = 64
    num_hidden_layers: int = 2
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = False
    eos_token_id: int | None = None

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs: Any) -> ShareddiffConfig:
        return cls(
            shareddiff=config.to_dict(),
            vocab_size=config.vocab_size,
            hidden_size=config.d_model,
            num_hidden_layers=config.n_layers,
            max_position_embeddings=config.max_seq_len,
            tie_word_embeddings=config.tie_embeddings,
            **kwargs,
        )

    def to_model_config(self) -> ModelConfig:
        if not self.shareddiff:
            raise ValueError("this config has no 'shareddiff' section: it was not written by shareddiff")
        return ModelConfig.from_dict(self.shareddiff)


class ShareddiffForCausalLM(PreTrainedModel, GenerationMixin):
    """``PreTrainedModel`` + ``GenerationMixin`` holding a ``LanguageModel`` as ``self.model``.

    ``generate()`` decodes with the project's ``KVCache`` (under whichever name, ``cache`` or
    ``past_key_values``, the installed transformers uses), left-padded batches included, and beam
    search reorders it. The loss divides by ``num_items_in_batch`` when the ``Trainer`` gives it, so
    gradient accumulation sums token losses as one large batch would.
    """

    config_class = ShareddiffConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _supports_sdpa = True
    accepts_loss_kwargs = True  # forward consumes num_items_in_batch (Trainer then leaves the loss unscaled)

    def __init__(self, config: ShareddiffConfig, model: LanguageModel | None = None) -> None:
        super().__init__(config)
        self.model = model if model is not None else LanguageModel(config.to_model_config())
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model keeps its own KVCache (returned in the output's cache field)

    def _init_weights(self, module: torch.nn.Module) -> None:
        """The LanguageModel initialises itself; loading overwrites everything."""

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.tok_embeddings

    def set_input_embeddings(self, value: torch.nn.Embedding) -> None:
        """Swap the token embeddings (``resize_token_embeddings``); the model's config follows the new vocabulary."""
        self.model.tok_embeddings = value
        self.model.config = dataclasses.replace(self.model.config, vocab_size=value.num_embeddings)
        self.config.shareddiff = self.model.config.to_dict()
        self.config.vocab_size = value.num_embeddings

    def get_output_embeddings(self) -> torch.nn.Linear | None:
        """The LM head; None when tied (the logits then use the input embeddings' matrix itself)."""
        return self.model.output

    def set_output_embeddings(self, value: torch.nn.Linear) -> None:
        if self.model.output is None:
            raise ValueError("this model ties its LM head to the input embeddings; set_input_embeddings sets both")
        self.model.output = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        past_key_values: KVCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """transformers' causal-LM forward. ``attention_mask`` (B, cached + N) covers every position so far,
        1 on tokens; rows are left-padded (right padding too when no cache is used). The loss is the
        shifted next-token cross-entropy, summed and divided by ``num_items_in_batch`` when given, else
        averaged over tokens whose label is not -100. ``logits_to_keep`` (transformers' convention, which
        ``generate`` sets to 1 for the prefill): an int k keeps the logits of the last k positions (0: all),
        a 1D integer tensor those positions of every row, a 2D one (B, K) each row's own; the norm and head
        then run on those positions only (``LanguageModel.forward(logits_at=...)``). Raises ``ValueError``
        for ``inputs_embeds``, for ``labels`` with a ``logits_to_keep`` other than 0 (the loss needs every
        position's logits), and for a boolean or otherwise malformed ``logits_to_keep``."""
        if inputs_embeds is not None:
            raise ValueError("shareddiff models take input_ids only, not inputs_embeds")
        keep = _logits_at(logits_to_keep, *input_ids.shape, input_ids.device)
        if labels is not None and keep is not None:
            raise ValueError(
                f"labels with logits_to_keep={logits_to_keep!r}: the loss needs the logits of every position; "
                "leave logits_to_keep at 0 when giving labels"
            )
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            cache = self.model.new_cache()
        new_mask = None if attention_mask is None else _new_positions_mask(attention_mask, cache, input_ids.shape[1])
        logits = self.model(input_ids, cache, new_mask, logits_at=keep)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=logits.shape[-1], num_items_in_batch=num_items_in_batch
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: cache})

    def prepare_inputs_for_generation(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """The positions the cache has not seen yet, and the cache, which ``generate`` hands over as ``cache``
        (recent 5.x releases) or ``past_key_values`` (5.0); ``forward`` takes either name."""
        cache = kwargs.get("cache")
        if cache is None:
            cache = kwargs.get("past_key_values")
        if cache is not None:
            input_ids = input_ids[:, cache.length :]
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "cache": cache,
            "use_cache": kwargs.get("use_cache", True),
        }
        if "logits_to_keep" in kwargs:  # generate's 1: the prefill's head at its last position only
            inputs["logits_to_keep"] = kwargs["logits_to_keep"]
        return inputs

    def generate(self, inputs: torch.Tensor | None = None, generation_config: Any = None, **kwargs: Any):
        """transformers' ``generate``. With ``cache_implementation="static"``, greedy decoding and sampling
        (temperature, top-k, top-p) run the project's ``StaticDecoder``, compiled on CUDA as transformers
        compiles its static cache; other arguments fall back to transformers' loop (``hf/static_generate.py``).
        Raises ``ValueError`` naming the prompt rows whose ``attention_mask`` has padding after or between tokens
        (checked here, before beam search or ``num_return_sequences`` repeat the rows), and for assisted decoding
        (``assistant_model``, ``prompt_lookup_num_tokens``, ``assistant_early_exit``, ``use_mtp``): transformers
        crops its own ``Cache`` after rejecting draft tokens, and the model keeps the project's ``KVCache``."""
        config, _ = self._prepare_generation_config(generation_config, **kwargs)
        if config.get_generation_mode(kwargs.get("assistant_model")) == GenerationMode.ASSISTED_GENERATION:
            raise ValueError(
                "assisted decoding (assistant_model, prompt_lookup_num_tokens, assistant_early_exit or use_mtp) is not "
                "supported: transformers needs a Cache it can crop after rejecting draft tokens, and shareddiff models "
                "keep their own KVCache; decode greedily, by sampling or by beam search instead"
            )
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            check_token_mask(mask.bool(), cached=True)
        out = static_generate(self, inputs, generation_config, kwargs)
        return out if out is not None else super().generate(inputs, generation_config, **kwargs)

    def _reorder_cache(self, cache: KVCache, beam_idx: torch.LongTensor) -> KVCache:
        """Beam search: keep the cache rows of the beams that go on (``generate`` calls this by name)."""
        cache.reorder(beam_idx.to(next(self.parameters()).device))
        return cache

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any):
        """As ``PreTrainedModel.from_pretrained``, but weights that do not fit the config are an error."""
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        kwargs.update(output_loading_info=True, ignore_mismatched_sizes=True)  # reported below, by name
        model, info = super().from_pretrained(*args, **kwargs)
        check_loading_info(info, source)
        return model


def check_loading_info(info: dict, source: Any) -> None:
    """Raise ``ValueError`` naming every missing, unexpected or mis-shaped weight of a ``from_pretrained``."""
    problems = {
        k: sorted(map(str, v))[:6]
        for k, v in info.items()
        if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    if problems:
        raise ValueError(f"the weights in {source} do not match its config.json: {problems}")


def _logits_at(logits_to_keep: int | torch.Tensor, b: int, n: int, device: torch.device) -> torch.Tensor | None:
    """transformers' ``logits_to_keep`` as ``LanguageModel.forward``'s ``logits_at`` (B, K), or None for all of
    the N positions (0, or a k ≥ N). Raises ``ValueError`` for a negative int, a boolean mask, a tensor of
    another shape, or positions outside [0, N)."""
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int | torch.Tensor):
        raise ValueError(f"logits_to_keep must be an int or an integer tensor, got {logits_to_keep!r}")
    if isinstance(logits_to_keep, int):
        if logits_to_keep < 0:
            raise ValueError(f"logits_to_keep={logits_to_keep} must be ≥ 0 (0 keeps every position)")
        if logits_to_keep == 0 or logits_to_keep >= n:
            return None
        return torch.arange(n - logits_to_keep, n, device=device).expand(b, -1)
    keep = logits_to_keep.to(device)
    if keep.dtype == torch.bool or keep.is_floating_point() or keep.dim() not in (1, 2):
        raise ValueError(
            f"logits_to_keep must be integer positions, (K,) for every row or (B, K) per row, got "
            f"{tuple(keep.shape)} {keep.dtype} (a boolean mask is not supported: give the positions)"
        )
    if keep.dim() == 2 and keep.shape[0] != b:
        raise ValueError(f"logits_to_keep of shape {tuple(keep.shape)} must have B = {b} rows")
    if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= n):
        raise ValueError(f"logits_to_keep holds positions outside [0, {n}) of the {n} input positions")
    return keep.expand(b, -1) if keep.dim() == 1 else keep


def _new_positions_mask(attention_mask: torch.Tensor, cache: KVCache | None, n: int) -> torch.Tensor | None:
    """The core model's mask (B, n) of the new positions from transformers' mask of every position so far;
    None when nothing is padding. Raises ``ValueError`` if the mask has the wrong length or rewrites
    positions already in the cache (a decoding step may only add the new tokens' columns)."""
    start = cache.length if cache is not None else 0
    if attention_mask.dim() != 2 or attention_mask.shape[1] != start + n:
        raise ValueError(
            f"attention_mask must be (B, cached + new) = (B, {start} + {n}), 1 on tokens, got shape "
            f"{tuple(attention_mask.shape)}"
        )
    mask = attention_mask.bool()
    padded_before = cache is not None and cache.token_mask is not None
    recorded = cache.token_mask[:, :start] if padded_before else torch.ones_like(mask[:, :start])
    if not torch.equal(mask[:, :start], recorded):
        raise ValueError(
            f"attention_mask changes positions already in the KV cache (its first {start} columns differ from the "
            "padding the cache was filled with): a decoding step's mask may only add 1s for the new tokens"
        )
    if not padded_before and bool(mask.all()):
        return None  # no padding anywhere: the unmasked (fast) path
    return mask[:, start:]


AutoConfig.register(ShareddiffConfig.model_type, ShareddiffConfig, exist_ok=True)
AutoModelForCausalLM.register(ShareddiffConfig, ShareddiffForCausalLM, exist_ok=True)
