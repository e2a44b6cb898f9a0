"""The paper's analyses as functions on any model: LM loss with the AR-Hit split, multi-needle
retrieval, attention mass, MQAR recall, many-shot ICL, scaling fits. ``shareddiff eval <analysis>`` runs them."""

import importlib

_EXPORTS = {
    "ar_hit_mask": "lm",
    "attention_eval": "attention_allocation",
    "attention_mass": "attention_allocation",
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
    """Each analysis on first use (PEP 562): ``shareddiff eval --help`` reads the commands without loading torch.
    ``NeedleBuilder`` moved to ``shareddiff.data`` (training builds its mixture from it); the old name warns."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"shareddiff.eval.{_EXPORTS[name]}"), name)
    if name == "NeedleBuilder":
        import warnings

        from shareddiff.data.needle import NeedleBuilder

        message = "shareddiff.eval.NeedleBuilder is deprecated; import it from shareddiff.data"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return NeedleBuilder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
