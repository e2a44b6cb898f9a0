"""The paper's analyses as functions on any model: LM loss with the AR-Hit split, multi-needle
retrieval, attention mass, MQAR recall, many-shot ICL, scaling fits. ``shareddiff eval <analysis>`` runs them."""

import importlib

_EXPORTS = {
    "NeedleBuilder": "needle",
    "ar_hit_mask": "lm",
    "attention_eval": "attention",
    "attention_mass": "attention",
    "fit_power_law": "scaling",
    "icl_eval": "icl",
    "lm_loss": "lm",
    "load_examples": "icl",
    "mqar_eval": "mqar",
    "mqar_summary": "mqar",
    "needle_eval": "needle",
    "scaling_eval": "scaling",
    "synthetic_intents": "icl",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Each analysis on first use (PEP 562): ``shareddiff eval --help`` reads the commands without loading torch."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"shareddiff.eval.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'shareddiff.eval' has no attribute {name!r}")
