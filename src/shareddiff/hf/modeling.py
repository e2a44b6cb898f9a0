"""Hugging Face ``transformers`` wrappers around the project's own model (no second implementation).

``import shareddiff.hf`` registers ``ShareddiffConfig`` / ``ShareddiffForCausalLM`` with ``AutoConfig`` and
``AutoModelForCausalLM``, so ``save_pretrained`` / ``from_pretrained`` (safetensors) and ``generate()``
(with the project's KV cache) work as for any causal LM.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from shareddiff.config import ModelConfig
from shareddiff.model import KVCache, LanguageModel


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
    """``PreTrainedModel`` + ``GenerationMixin`` holding a ``LanguageModel`` as ``self.model``."""

    config_class = ShareddiffConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(self, config: ShareddiffConfig, model: LanguageModel | None = None) -> None:
        super().__init__(config)
        self.model = model if model is not None else LanguageModel(config.to_model_config())
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model keeps its own KVCache (returned as past_key_values)

    def _init_weights(self, module: torch.nn.Module) -> None:
        """The LanguageModel initialises itself; loading overwrites everything."""

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.tok_embeddings

    def get_output_embeddings(self) -> torch.nn.Module | None:
        return self.model.output

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if attention_mask is not None and not bool(attention_mask[:, : input_ids.shape[1]].all()):
            _check_right_padding(attention_mask)
        if use_cache and past_key_values is None:
            past_key_values = self.model.new_cache()
        logits = self.model(input_ids, past_key_values if use_cache or past_key_values is not None else None)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=past_key_values)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, **kwargs):
        if past_key_values is not None and past_key_values.length:
            input_ids = input_ids[:, past_key_values.length :]
        return {
            "input_ids": input_ids,
            "past_key_values": past_key_values,
            "attention_mask": attention_mask,
            "use_cache": kwargs.get("use_cache", True),
        }

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


def _check_right_padding(attention_mask: torch.Tensor) -> None:
    """Right padding is harmless to a causal model; anything else would need a padding mask it lacks."""
    mask = attention_mask.bool()
    lengths = mask.sum(-1, keepdim=True)
    positions = torch.arange(mask.shape[1], device=mask.device)[None, :]
    if not torch.equal(mask, positions < lengths):
        raise ValueError(
            "shareddiff models take no padding mask: pad on the right (padding_side='right') "
            "or generate one sequence at a time"
        )


AutoConfig.register(ShareddiffConfig.model_type, ShareddiffConfig, exist_ok=True)
AutoModelForCausalLM.register(ShareddiffConfig, ShareddiffForCausalLM, exist_ok=True)
