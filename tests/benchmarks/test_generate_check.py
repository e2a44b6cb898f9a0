"""benchmarks/generate.py's check of a decoder: its error against the exact logits (a wider-float copy of the same
weights) is judged against the reference decode's own rounding error, and an argmax flip fails only when it is
decisive. On fabricated logits, and on a real bfloat16 model with and without an injected error."""

import copy

import pytest
import torch
from generate import ERROR_FACTOR, check_decoder, compare_logits, exact_model

from shareddiff import ModelConfig, build_model
from shareddiff.static_decode import StaticDecoder

VOCAB = 10_000


def _logits(gen: torch.Generator, batch: int = 1) -> torch.Tensor:
    """(batch, VOCAB) N(0, 1) logits clipped to ±3.5 with a clear top two: 5 and 4 (unclipped, one of 10,000 draws
    passed 4.999 in about 0.3 % of rows, and the near-tie test below failed on 3 of 400 seeds)."""
    exact = torch.randn(batch, VOCAB, generator=gen, dtype=torch.float64).clamp_(-3.5, 3.5)
    exact[:, :2] = torch.tensor([5.0, 4.0])
    return exact


def _rounded(exact: torch.Tensor, gen: torch.Generator, size: float) -> torch.Tensor:
    """``exact`` plus independent noise of ``size`` per logit: a stand-in for one path's rounding."""
    return exact + size * torch.randn(exact.shape, generator=gen, dtype=torch.float64)


def test_rounding_like_the_reference_passes_and_a_larger_error_fails(seed):
    """Reference decode: noise 1e-3 per logit (relative error ≈ 1e-3); a decoder with its own noise of the same
    size passes (its error / the reference's ≈ 1 ≤ 2), one with 3e-3 fails (≈ 3 > 2) without any argmax flip."""
    gen = torch.Generator().manual_seed(seed)
    exact = [_logits(gen, 2) for _ in range(3)]  # 3 steps of batch 2
    refs = [_rounded(e, gen, 1e-3) for e in exact]
    same = compare_logits([(e, r, _rounded(e, gen, 1e-3)) for e, r in zip(exact, refs, strict=True)], ERROR_FACTOR)
    assert same["ok"] and same["max_rel_err"] == pytest.approx(same["reference_rel_err"], rel=0.3)
    worse = compare_logits([(e, r, _rounded(e, gen, 3e-3)) for e, r in zip(exact, refs, strict=True)], ERROR_FACTOR)
    assert worse["argmax_flips"] == 0 and not worse["ok"]
    assert worse["max_rel_err"] == pytest.approx(3 * worse["reference_rel_err"], rel=0.3)


def test_near_tie_flip_is_counted_and_passes(seed):
    """Exact top two 5 and 4.999 (margin 1e-3 ≤ 2 × the budget, 2 × the reference's largest logit error ≥ 2e-3):
    the decoder's 5.0005 for the runner-up flips one of 4 (step, row) pairs; agreement 75 %, one flip, none
    decisive, ok."""
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for i in range(2):
        exact = _logits(gen, 2)  # 2 steps of batch 2
        ref = _rounded(exact, gen, 1e-3)
        got = exact.clone()
        if i == 1:
            exact[1, 1] = 4.999
            got[1, 1] = 5.0005
        steps.append((exact, ref, got))
    result = compare_logits(steps, ERROR_FACTOR)
    assert result["flip_budget"] >= 2e-3
    assert result["argmax_agree"] == pytest.approx(0.75)
    assert (result["argmax_pairs"], result["argmax_flips"], result["decisive_flips"]) == (4, 1, 0)
    assert result["ok"]


def test_decisive_flip_fails_though_the_relative_error_passes(seed):
    """Margin 1 ≫ 2 × the budget (the reference's largest logit error ≈ 4e-2 for noise 1e-2 over 10,000 logits,
    × 2): the decoder's 5.5 for the runner-up (one logit off by 1.5; relative error ≈ 1.5 / 100 against the
    reference's ≈ 1e-2, within 2×) is a decisive flip, and the check fails."""
    gen = torch.Generator().manual_seed(seed)
    exact = _logits(gen)
    ref = _rounded(exact, gen, 1e-2)
    got = exact.clone()
    got[0, 1] = 5.5
    result = compare_logits([(exact, ref, got)], ERROR_FACTOR)
    assert result["max_rel_err"] <= ERROR_FACTOR * result["reference_rel_err"]
    assert (result["argmax_flips"], result["decisive_flips"]) == (1, 1)
    assert result["argmax_agree"] == 0.0 and not result["ok"]


def test_check_passes_the_decoder_and_fails_an_injected_error(seed):
    """shared_diff-tiny in bfloat16 against its float32 copy: the StaticDecoder (its own rounding) passes. A decoder
    of the same model with every weight off by a relative N(0, 2⁻⁶) (a bug of about four bfloat16 roundings per
    weight) fails: its error is several times the reference decode's (measured ≈ 7× over seeds). The float32
    model against its float64 copy passes too."""
    model = build_model(ModelConfig.from_preset("shared_diff-tiny"), dtype=torch.bfloat16).eval()
    exact = exact_model(model)
    assert next(exact.parameters()).dtype == torch.float32
    good = check_decoder(model, StaticDecoder(model, 48), 2, 9, exact)
    assert good["ok"] and good["decisive_flips"] == 0
    assert 0 < good["reference_rel_err"] < 3e-2 and good["argmax_pairs"] == 2 * 33
    bad = copy.deepcopy(model)
    with torch.no_grad():
        for p in bad.parameters():
            p.mul_(1 + 2**-6 * torch.randn_like(p))
    injected = check_decoder(model, StaticDecoder(bad, 48), 2, 9, exact)
    assert not injected["ok"] and injected["max_rel_err"] > 2 * ERROR_FACTOR * injected["reference_rel_err"]
    model32 = model.float()
    result = check_decoder(model32, StaticDecoder(model32, 48), 2, 9, exact_model(model32))
    assert result["ok"] and result["reference_rel_err"] < 1e-5
