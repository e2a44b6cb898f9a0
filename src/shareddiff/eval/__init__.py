"""The paper's analyses as functions on any model: LM loss with the AR-Hit split, multi-needle
retrieval, attention mass, MQAR recall, many-shot ICL, scaling fits. ``shareddiff eval <analysis>`` runs them."""

from shareddiff.eval.attention import attention_eval, attention_mass
from shareddiff.eval.icl import icl_eval, load_examples, synthetic_intents
from shareddiff.eval.lm import ar_hit_mask, lm_loss
from shareddiff.eval.mqar import mqar_eval, mqar_summary
from shareddiff.eval.needle import NeedleBuilder, needle_eval
from shareddiff.eval.scaling import fit_power_law, scaling_eval

__all__ = [
    "NeedleBuilder",
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
