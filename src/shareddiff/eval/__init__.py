"""The paper's analyses as functions on any model: LM loss with the AR-Hit split, multi-needle
retrieval, attention mass, MQAR recall, many-shot ICL, scaling fits. ``shareddiff eval <analysis>`` runs them."""

from shareddiff.eval.attention_allocation import attention_eval, attention_mass
from shareddiff.eval.icl import icl_eval, load_examples, synthetic_intents
from shareddiff.eval.lm import ar_hit_mask, lm_loss
from shareddiff.eval.mqar import mqar_eval, mqar_summary
from shareddiff.eval.needle import needle_eval
from shareddiff.eval.scaling import fit_power_law, scaling_eval


def __getattr__(name: str):
    """``NeedleBuilder`` moved to ``shareddiff.data`` (training builds its mixture from it); the old name warns."""
    if name == "NeedleBuilder":
        import warnings

        from shareddiff.data.needle import NeedleBuilder

        message = "shareddiff.eval.NeedleBuilder is deprecated; import it from shareddiff.data"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return NeedleBuilder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ar_hit_mask",
    "attention_eval",
    "attention_mass",
    "fit_power_law",
    "icl_eval",
    "lm_loss",
    "load_examples",
    "mqar_eval",
    "mqar_summary",
    "needle_eval",
    "scaling_eval",
    "synthetic_intents",
]
