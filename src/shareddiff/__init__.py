"""shareddiff: the Shared DIFF Transformer with DIFF Transformer and Transformer baselines."""

import importlib

from shareddiff.config import ModelConfig
from shareddiff.presets import PRESET_NAMES

__version__ = "0.1.0"

__all__ = ["PRESET_NAMES", "KVCache", "LanguageModel", "ModelConfig", "build_model"]

_FROM_MODEL = ("KVCache", "LanguageModel", "build_model")


def __getattr__(name: str):
    """The model's names on first use (PEP 562), so that the command line's ``--help`` does not load torch."""
    if name in _FROM_MODEL:
        return getattr(importlib.import_module("shareddiff.model"), name)
    raise AttributeError(f"module 'shareddiff' has no attribute {name!r}")
