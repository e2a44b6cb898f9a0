"""Sampling: cache-based generation against a naive loop, padded batches against each prompt alone, and the
top-k / top-p filters by hand."""

import numpy as np
import pytest
import torch

from shareddiff import ModelConfig, build_model
from shareddiff.generation import filter_logits, generate, next_token
from shareddiff.padding import left_pad
from tests.conftest import rel_err


def test_greedy_generation_equals_naive_argmax_loop(seed):
    model = build_model(ModelConfig(attention="shared_diff", vocab_size=50, max_seq_len=40)).eval()
    prompt = torch.randint(0, 50, (2, 5))
    out = generate(model, prompt, 12, temperature=0)
    naive = prompt
    with torch.no_grad():
        for _ in range(12):
            naive = torch.cat([naive, model(naive)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, naive)


def test_sampling_is_reproducible_and_stops_at_eos(seed):
    model = build_model(ModelConfig(attention="diff", vocab_size=50, max_seq_len=40)).eval()
    prompt = torch.randint(0, 50, (3, 4))
    a = generate(model, prompt, 20, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(1))
    b = generate(model, prompt, 20, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    eos = int(a[0, 6])
    c = generate(model, prompt, 20, temperature=1.0, top_k=10, eos_id=eos, generator=torch.Generator().manual_seed(1))
    assert c[0, 6] == eos and torch.all(c[0, 6:] == eos)  # once finished, a row only repeats EOS


def test_filters_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    inf = float("-inf")
    assert filter_logits(logits, top_k=2).tolist() == [[2.0, 1.0, inf, inf]]
    # softmax ≈ [0.644, 0.237, 0.087, 0.032]: the first alone is < 0.7, the first two reach 0.88
    assert filter_logits(logits, top_p=0.7).tolist() == [[2.0, 1.0, inf, inf]]
    assert filter_logits(logits, top_p=0.5).tolist() == [[2.0, inf, inf, inf]]
    assert filter_logits(logits, top_p=0.9).tolist() == [[2.0, 1.0, 0.0, inf]]


@pytest.mark.parametrize("family", ["transformer", "diff", "shared_diff", "diff_v2", "shared_diff_v2"])
def test_prompts_of_different_lengths_equal_each_prompt_alone(seed, family):
    """Reference: generate() on each prompt alone (batch of one, no padding): greedy tokens equal."""
    model = build_model(ModelConfig.from_preset(f"{family}-tiny")).eval()
    prompts = [torch.randint(0, 512, (n,)) for n in (11, 4, 7)]
    batched = generate(model, prompts, 9, temperature=0, pad_id=3)
    ids, mask = left_pad(prompts, pad_id=3)
    padded = generate(model, ids, 9, temperature=0, attention_mask=mask)
    for row, prompt in enumerate(prompts):
        alone = generate(model, prompt[None], 9, temperature=0)[0]
        assert torch.equal(batched[row], alone)
        assert torch.equal(padded[row, 11 - len(prompt) :], alone)


def test_bad_prompts_are_refused():
    model = build_model(ModelConfig(vocab_size=50, max_seq_len=40)).eval()
    with pytest.raises(ValueError, match=r"padding after a token while a KV cache is in use.*Pad prompts on the left"):
        generate(model, torch.ones(2, 4, dtype=torch.long), 3, attention_mask=torch.tensor([[1, 1, 0, 0], [1] * 4]))
    with pytest.raises(ValueError, match=r"prompt\(s\) \[1\] are empty"):
        generate(model, [torch.ones(3, dtype=torch.long), torch.ones(0, dtype=torch.long)], 3)
    with pytest.raises(ValueError, match="the prompt is empty"):
        generate(model, torch.ones(2, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"token id 50 is outside the model's vocabulary \[0, 50\)"):
        generate(model, torch.tensor([[1, 2, 50]]), 3)
    with pytest.raises(ValueError, match=r"token id -1 is outside"):
        generate(model, [[1, -1]], 3)
    with pytest.raises(ValueError, match=r"prompt 1 must be a 1-D tensor or a list of integer token ids"):
        generate(model, [[1, 2], [3, 4.5]], 3)  # a float would be truncated silently
    with pytest.raises(ValueError, match=r"prompt 0 must be a 1-D tensor"):
        generate(model, [torch.ones(2, 2, dtype=torch.long)], 3)
    with pytest.raises(ValueError, match=r"prompt of shape \(3,\) .*give integer token ids of shape \(B, T\)"):
        generate(model, torch.ones(3, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"token id 99 is outside .*padded with an id past the vocabulary"):
        generate(model, [[1, 2], [3]], 3, pad_id=99)  # the model embeds padding positions too


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(max_new_tokens=-1), r"max_new_tokens=-1 must be an integer ≥ 0"),
        (dict(max_new_tokens=2.0), r"max_new_tokens=2.0 must be an integer"),
        (dict(temperature=-0.5), r"temperature=-0.5 must be ≥ 0"),
        (dict(temperature=float("nan")), r"temperature=nan must be ≥ 0"),
        (dict(top_k=-1), r"top_k=-1 must be ≥ 0 \(0 or None = no top-k filter\)"),
        (dict(top_p=0.0), r"top_p=0.0 must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p=1.5 must be in \(0, 1\]"),
    ],
)
def test_sampling_options_out_of_range_are_named(options, message):
    """A negative temperature would sample the least likely tokens; a negative max_new_tokens failed as a cache
    error: each is refused by name before any work."""
    model = build_model(ModelConfig(vocab_size=50, max_seq_len=40)).eval()
    options = {"max_new_tokens": 3} | options
    with pytest.raises(ValueError, match=message):
        generate(model, torch.ones(1, 4, dtype=torch.long), **options)


def test_list_prompts_of_ints_equal_tensor_prompts(seed):
    model = build_model(ModelConfig(vocab_size=50, max_seq_len=40)).eval()
    as_tensors = generate(model, [torch.tensor([1, 2, 3]), torch.tensor([4, 5])], 4, temperature=0)
    as_lists = generate(model, [[1, 2, 3], [4, 5]], 4, temperature=0)
    assert all(torch.equal(a, b) for a, b in zip(as_tensors, as_lists, strict=True))
    assert generate(model, torch.ones(1, 4, dtype=torch.long), 0).shape == (1, 4)  # nothing new to make
    assert generate(model, torch.ones(1, 4, dtype=torch.long), np.int64(2)).shape == (1, 6)  # any integral type


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_sampling_probabilities_are_float32_or_the_logits_float64(seed, dtype, monkeypatch):
    """Reference: softmax(logits / T) in float64 from the same (rounded) logits. bf16/fp32 logits are sampled from
    float32 probabilities (≤ 1e-6), float64 logits from float64 ones (≤ 1e-14)."""
    logits = torch.randn(3, 50).to(dtype)
    drawn_from = []
    multinomial = torch.multinomial
    monkeypatch.setattr(
        torch, "multinomial", lambda probs, *a, **k: drawn_from.append(probs) or multinomial(probs, *a, **k)
    )
    next_token(logits, temperature=0.7)
    expected = (logits.double() / 0.7).softmax(-1)
    assert drawn_from[0].dtype == torch.promote_types(dtype, torch.float32)
    assert rel_err(drawn_from[0], expected) <= (1e-14 if dtype == torch.float64 else 1e-6)


@pytest.mark.parametrize("static", [False, True], ids=["kv-cache", "static-decoder"])
def test_prefill_computes_the_head_at_the_last_position_only(seed, static):
    """The prefill's final norm and head run on one position per row (the (B, N, vocab) logits of a long prompt
    are never built), and the tokens are those of the naive loop over full forwards."""
    from shareddiff.static_decode import StaticDecoder

    model = build_model(ModelConfig.from_preset("shared_diff-tiny")).eval()
    shapes = []
    model.norm.register_forward_hook(lambda _m, args, _out: shapes.append(tuple(args[0].shape[:2])))
    prompt = torch.randint(0, model.config.vocab_size, (2, 9))
    decoder = StaticDecoder(model, max_len=32) if static else None
    out = generate(model, prompt, 4, temperature=0, decoder=decoder)
    assert shapes == [(2, 1)] * 4  # the prefill, then three one-token steps
    ids = prompt
    with torch.no_grad():
        for _ in range(4):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)
