"""benchmarks/decode_ops.py: the operators of one decode step, counted at dispatch. The merged weights leave four
GEMMs per layer (attention inputs, W_O, gate + up, down) and the LM head, for every variant; the additive mask
is made once per step, not converted by every attention call."""

import pytest
import torch
from decode_ops import count_step

from shareddiff import ModelConfig, build_model

UNFUSED_GEMMS_PER_LAYER = {  # Q, K, V (+ W_λ; + the low-rank A and B factors), W_O, gate, up, down
    "transformer": 3 + 1 + 3,
    "diff": 3 + 1 + 3,
    "shared_diff": 3 + 4 + 4 + 1 + 3,
    "diff_v2": 4 + 1 + 3,
    "shared_diff_v2": 4 + 2 + 2 + 1 + 3,
}


@pytest.mark.parametrize("family", sorted(UNFUSED_GEMMS_PER_LAYER))
def test_fused_decode_step_runs_four_gemms_per_layer(family):
    """Reference: the GEMMs each layer's modules run, counted by hand (UNFUSED_GEMMS_PER_LAYER), + 1 for the head.
    Fused: 4 per layer + 1 whatever the variant, fewer kernels in all, the same attention calls (1 per layer, 2
    for DIFF and Shared DIFF), and one ``where`` per step (the additive mask) in both."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preset(f"{family}-tiny", n_layers=3)).eval()
    fused, unfused = count_step(model, 2, 5, fused=True), count_step(model, 2, 5, fused=False)
    assert unfused["gemm"] == 3 * UNFUSED_GEMMS_PER_LAYER[family] + 1
    assert fused["gemm"] == 3 * 4 + 1
    assert fused["kernels"] < unfused["kernels"] and fused["ops"] < unfused["ops"]
    assert fused["sdpa"] == unfused["sdpa"] == 3 * (2 if family in ("diff", "shared_diff") else 1)
    assert fused["by_op"]["where"] == unfused["by_op"]["where"] == 1
