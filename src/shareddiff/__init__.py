"""shareddiff: the Shared DIFF Transformer with DIFF Transformer and Transformer baselines."""

from shareddiff.config import ModelConfig
from shareddiff.model import KVCache, LanguageModel, build_model
from shareddiff.presets import PRESET_NAMES

__version__ = "0.1.0"

__all__ = ["PRESET_NAMES", "KVCache", "LanguageModel", "ModelConfig", "build_model"]
