"""Export a ``diff`` or ``shared_diff`` model (not the V2 variants) as transformers' native ``DiffLlamaForCausalLM``.

Shared DIFF merges its low-rank updates (``effective_qk_weights()``), so any runtime that serves
DiffLlama serves it. What the exporter reconciles (architecture notes):
- head layout: DiffLlama's query sub-heads i and i + h are Q1_i and Q2_i (ours: dense Q1, Q2, or
  DIFF's interleaved 2i, 2i+1); its keys follow the same split over 2·h_kv key heads; its values
  are 2·h_kv heads of width d, the first h_kv the first half of each of our 2d-wide value heads;
- RoPE: DiffLlama rotates pairs (x[j], x[j + d/2]) where ours rotates (x[2j], x[2j+1]): the rows of
  every query/key sub-head are permuted so both sides see the same pairs (dot products unchanged);
- the per-head norm: DiffLlama's has no weight; ours (one weight of size 2d) is folded into o_proj.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DiffLlamaConfig, DiffLlamaForCausalLM

from shareddiff.attention.diff import HEAD_NORM_EPS
from shareddiff.config import DIFFERENTIAL_V2
from shareddiff.model import LanguageModel
from shareddiff.precision import compute_dtype


def _check_exportable(model: LanguageModel) -> None:
    c = model.config
    if c.attention in DIFFERENTIAL_V2:
        raise ValueError(
            f"DiffLlama holds DIFF V1 attention (two sub-heads per head, one λ per layer, a per-head norm); "
            f"attention={c.attention!r} (2h query heads, λ = sigmoid(X W_λ) per token and head, no head norm) "
            "has no DiffLlama form: export it with --to hf (the shareddiff wrapper) instead"
        )
    if not c.is_differential:
        raise ValueError("DiffLlama holds differential attention only: export a standard model with --to hf")
    if not c.head_norm:
        raise ValueError("DiffLlama always applies the per-head norm: a head_norm=False model cannot be exported")
    if c.lambda_init is not None:
        raise ValueError(f"DiffLlama uses the depth schedule of λ_init; lambda_init={c.lambda_init} cannot be exported")
    if c.norm_eps != HEAD_NORM_EPS:
        raise ValueError(
            f"DiffLlama shares one eps between RMSNorm and the head norm ({HEAD_NORM_EPS}); "
            f"norm_eps={c.norm_eps} cannot be exported exactly"
        )


def diffllama_config(model: LanguageModel, eos_id: int | None = None) -> DiffLlamaConfig:
    """The DiffLlama config of ``model``; end-of-text and padding ids ``eos_id`` (the tokenizer's), no BOS —
    not transformers' defaults (bos 1, eos 2), which name ids of no tokenizer of the project."""
    c = model.config
    return DiffLlamaConfig(
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        intermediate_size=c.ffn_dim,
        num_hidden_layers=c.n_layers,
        num_attention_heads=2 * c.n_heads,
        num_key_value_heads=2 * c.n_kv_heads,
        head_dim=c.head_dim,
        max_position_embeddings=c.max_seq_len,
        rms_norm_eps=c.norm_eps,
        tie_word_embeddings=c.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        hidden_act="silu",
        attention_bias=False,
    )


def _rope_rows(w: Tensor, d: int) -> Tensor:
    """Rows (out features) of ``w`` reordered within each d-row sub-head: interleaved pairs → half-split."""
    order = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])
    return w.unflatten(0, (-1, d))[:, order].flatten(0, 1)


@torch.no_grad()
def to_diffllama(model: LanguageModel, eos_id: int | None = None) -> DiffLlamaForCausalLM:
    """A DiffLlamaForCausalLM whose logits equal ``model``'s, in float32 (float64 for a float64 ``model``, whose
    weights, merged low-rank updates included, are then copied without rounding); ``eos_id`` (the tokenizer's
    end of text) ends generation and pads, as in ``wrap(model, eos_id)``."""
    _check_exportable(model)
    c = model.config
    d = c.head_dim
    dtype = compute_dtype(model.tok_embeddings.weight.dtype)
    out = DiffLlamaForCausalLM(diffllama_config(model, eos_id)).to(dtype).eval()
    out.generation_config.bos_token_id = None
    out.generation_config.eos_token_id = out.generation_config.pad_token_id = eos_id
    target = out.model
    target.embed_tokens.weight.copy_(model.tok_embeddings.weight)
    target.norm.weight.copy_(model.norm.weight)
    if model.output is not None:
        out.lm_head.weight.copy_(model.output.weight)
    for ours, theirs in zip(model.layers, target.layers, strict=True):
        att, tatt = ours.attention, theirs.self_attn
        q1, q2, k1, k2 = att.effective_qk_weights(dtype)  # dense maps, head i in columns [i·d, (i+1)·d)
        tatt.q_proj.weight.copy_(_rope_rows(torch.cat([q1, q2], dim=1).t(), d))
        tatt.k_proj.weight.copy_(_rope_rows(torch.cat([k1, k2], dim=1).t(), d))
        v = att.wv.weight.unflatten(0, (c.n_kv_heads, 2, d))  # (h_kv, {first, second half}, d, D)
        tatt.v_proj.weight.copy_(torch.cat([v[:, 0].flatten(0, 1), v[:, 1].flatten(0, 1)]))
        norm_weight = att.head_norm.weight if att.head_norm.weight is not None else torch.ones(2 * d)
        tatt.o_proj.weight.copy_(att.wo.weight * norm_weight.repeat(c.n_heads)[None, :])
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            getattr(tatt, name).copy_(getattr(att, name))
        theirs.input_layernorm.weight.copy_(ours.attention_norm.weight)
        theirs.post_attention_layernorm.weight.copy_(ours.ffn_norm.weight)
        theirs.mlp.gate_proj.weight.copy_(ours.feed_forward.w_gate.weight)
        theirs.mlp.up_proj.weight.copy_(ours.feed_forward.w_up.weight)
        theirs.mlp.down_proj.weight.copy_(ours.feed_forward.w_down.weight)
    return out
