"""Standard (LLaMA-style) attention layer against the independent float64 re-implementation in tests/reference.py."""

import pytest
import torch

from shareddiff import ModelConfig
from shareddiff.attention import StandardAttention
from tests.attention.test_diff import TOL, run_module
from tests.attention.test_diff_v2 import columns, dense
from tests.conftest import rel_err
from tests.reference import causal_softmax_head


def standard_reference(module: StandardAttention, x64: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Architecture §2 on one sequence ``x64`` (N, D) in float64: head i of X W_Q (columns [i·d, (i+1)·d))
    attends over key/value head i // (h / h_kv), then the heads concatenated times W_O."""
    d, group = config.head_dim, config.n_heads // config.n_kv_heads
    q, k, v = (columns(x64 @ dense(lin), d) for lin in (module.wq, module.wk, module.wv))
    heads = [causal_softmax_head(q[i], k[i // group], v[i // group], config.rope_theta) for i in range(len(q))]
    return torch.cat(heads, dim=-1) @ dense(module.wo)


@pytest.mark.parametrize("layout", [dict(n_heads=3), dict(n_heads=4, n_kv_heads=2), dict(n_heads=4, n_kv_heads=1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layer_matches_reference(seed, layout, dtype):
    """Reference: ``standard_reference`` (float64); float32 within 1e-5, float64 within 1e-12."""
    config = ModelConfig(attention="standard", d_model=48, **layout)
    module = StandardAttention(config, layer_idx=0).to(dtype)
    module.reset_parameters(0.2, 0.2)
    x = torch.randn(1, 17, config.d_model, dtype=dtype)
    assert rel_err(run_module(module, x, config)[0], standard_reference(module, x[0].double(), config)) <= TOL[dtype]
