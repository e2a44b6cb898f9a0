"""benchmarks/generate.py's check of a decoder against the reference decode, on fabricated logits: the argmax
agreement is the mean over (step, row) pairs, a near-tie flip is counted but passes, a decisive flip fails."""

import pytest
import torch
from generate import argmax_agreement, compare_logits

TOL = 2e-2
VOCAB = 10_000


def _logits(gen: torch.Generator) -> torch.Tensor:
    """One row (1, VOCAB) of N(0, 1) logits with a clear top two: 5 and 4."""
    ref = torch.randn(1, VOCAB, generator=gen, dtype=torch.float64)
    ref[0, :2] = torch.tensor([5.0, 4.0])
    return ref


def test_near_tie_flip_is_counted_and_passes(seed):
    """Reference top two 5 and 4.95 (margin 0.05 ≤ 2 × 2e-2 × 5 = 0.2): the decoder's 5.01 for the runner-up
    flips the argmax of one of 4 (step, row) pairs; agreement 75 %, one flip, none decisive, ok."""
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for i in range(2):
        ref = torch.cat([_logits(gen), _logits(gen)])  # (2, VOCAB): 2 steps of batch 2
        got = ref.clone()
        if i == 1:
            ref[1, 1] = 4.95
            got[1, 1] = 5.01
        steps.append((ref, got))
    result = compare_logits(steps, TOL)
    assert result["argmax_agree"] == pytest.approx(0.75)
    assert (result["argmax_pairs"], result["argmax_flips"], result["decisive_flips"]) == (4, 1, 0)
    assert result["max_rel_err"] < 1e-3 and result["ok"]


def test_decisive_flip_fails_though_the_relative_error_passes(seed):
    """Margin 1 > 0.2: the decoder's 5.5 for the runner-up (one logit off by 1.5, relative error ≈ 1.5 / 100 =
    1.5e-2 ≤ 2e-2 over the 10,000-logit row) is a decisive flip, and the check fails."""
    gen = torch.Generator().manual_seed(seed)
    ref = _logits(gen)
    got = ref.clone()
    got[0, 1] = 5.5
    result = compare_logits([(ref, got)], TOL)
    assert result["max_rel_err"] <= TOL
    assert (result["argmax_flips"], result["decisive_flips"]) == (1, 1)
    assert result["argmax_agree"] == 0.0 and not result["ok"]


def test_argmax_agreement_per_row():
    """Row 0 agrees; row 1 flips inside the budget (margin 0.1 ≤ 2 × 0.1 × 1); row 2 flips outside it (margin 1);
    a relative error beyond the tolerance fails the check without any flip."""
    ref = torch.tensor([[1.0, 0.0, -1.0], [1.0, 0.9, 0.0], [1.0, 0.0, -1.0]])
    got = torch.tensor([[1.0, 0.1, -1.0], [0.95, 1.0, 0.0], [0.0, 1.0, -1.0]])
    agree, decisive = argmax_agreement(ref, got, 0.1)
    assert agree.tolist() == [True, False, False]
    assert decisive.tolist() == [False, False, True]
    off = compare_logits([(ref[:1], ref[:1] * 1.5)], 0.1)
    assert off["argmax_flips"] == 0 and not off["ok"]
