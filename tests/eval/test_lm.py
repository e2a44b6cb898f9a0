"""AR-Hit split on a hand-made sequence, and the split losses on a model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shareddiff import ModelConfig, build_model
from shareddiff.eval.lm import ar_hit_mask, lm_loss, rare_bigrams


def test_ar_hit_mask_by_hand():
    seq = np.array([5, 7, 9, 5, 7, 1, 9, 5, 7])
    # targets 7 9 5 7 1 9 5 7: (5,7) recurs at i=4 and i=8, (9,5) at i=7
    assert ar_hit_mask(seq).tolist() == [False, False, False, True, False, False, True, True]
    rare = rare_bigrams(np.array([5, 7, 5, 7, 5, 7, 9, 5]), vocab=10, max_train_count=1)  # (5,7) is frequent
    assert ar_hit_mask(seq, rare, vocab=10).tolist() == [False] * 6 + [True, False]


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_split_losses_add_up(seed, dtype, tol):
    model = build_model(ModelConfig(vocab_size=40, max_seq_len=64), dtype=dtype).eval()
    windows = torch.randint(0, 6, (3, 33))  # a small alphabet: many repeated bigrams
    result = lm_loss(model, windows, batch_size=2)
    with torch.no_grad():
        direct = F.cross_entropy(model(windows[:, :-1]).flatten(0, 1), windows[:, 1:].flatten()).item()
    assert abs(result["loss"] - direct) < tol
    f = result["ar_hit_fraction"]
    assert 0.05 < f < 1  # both parts are non-empty
    assert abs(f * result["ar_hit_loss"] + (1 - f) * result["others_loss"] - result["loss"]) < tol
