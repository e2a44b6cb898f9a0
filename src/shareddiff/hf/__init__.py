"""Hugging Face integration (``pip install 'shareddiff[hf]'``): transformers wrappers, DiffLlama export,
lm-evaluation-harness. Importing it registers the ``shareddiff`` model type with the Auto classes."""

from shareddiff.hf.diffllama import to_diffllama
from shareddiff.hf.folders import export, hf_tokenizer, load_pretrained, wrap
from shareddiff.hf.modeling import ShareddiffConfig, ShareddiffForCausalLM

__all__ = [
    "ShareddiffConfig",
    "ShareddiffForCausalLM",
    "export",
    "hf_tokenizer",
    "load_pretrained",
    "to_diffllama",
    "wrap",
]
