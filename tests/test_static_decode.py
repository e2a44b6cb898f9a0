"""The static-shape decode (StaticDecoder) against the reference decode (LanguageModel.forward with a KVCache):
logits per step, greedy tokens, left-padded batches, recompilation under torch.compile, and bad input."""

import os

import pytest
import torch
from torch._dynamo.utils import counters

from shareddiff import ModelConfig, build_model
from shareddiff.generation import decode_tokens, generate
from shareddiff.padding import left_pad
from shareddiff.presets import FAMILIES
from shareddiff.static_decode import StaticDecoder
from tests.conftest import NATIVE_TRITON_ENV, in_subprocess_without_triton_interpreter, rel_err

STEPS = 40
LENGTHS = (13, 6, 9)  # the prefill is 13 columns wide: odd, and not a multiple of anything the step uses


def _batch(vocab_size: int, padded: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not padded:
        return torch.randint(0, vocab_size, (2, LENGTHS[0])), None
    return left_pad([torch.randint(0, vocab_size, (n,)) for n in LENGTHS], pad_id=1)


@torch.no_grad()
def _teacher_forced(model, decoder: StaticDecoder, ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, 1 + STEPS, vocab) of the reference decode and of ``decoder``, both fed the reference's greedy
    tokens (so a difference in one step cannot change the next step's input)."""
    cache = model.new_cache(ids.shape[1] + STEPS)
    ref = [model(ids, cache, mask)[:, -1]]
    got = [decoder.prefill(ids, mask, STEPS).clone()]
    for _ in range(STEPS):
        token = ref[-1].argmax(-1)
        ref.append(model(token[:, None], cache)[:, -1])
        got.append(decoder.step(token).clone())
    return torch.stack(ref, 1), torch.stack(got, 1)


def _trained_looking(model):
    """``model`` with every norm weight drawn from N(1, 0.2²) (they start at 1), so that a decoder which merges
    them (the head norm's with 1 − λ_init) is tested on values that show a mistake."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.2)
    return model


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_static_decode_equals_reference_decode(seed, family, padded, fused):
    """Reference: the KVCache decode. Logits ≤ 1e-5 apart (float32) over a 13-token prefill and 40 steps, and
    the same greedy token at every step (each path fed the reference's tokens, so greedy decoding gives the
    same sequence), with the decoder's merged weights (one GEMM per layer for the attention inputs, one for gate
    and up, λ and head-norm scale precomputed) and without; the decoder is reused, through generate(), for a
    batch of another size."""
    model = _trained_looking(build_model(ModelConfig.from_preset(f"{family}-tiny")).eval())
    decoder = StaticDecoder(model, max_len=64, fused=fused)
    ids, mask = _batch(model.config.vocab_size, padded)
    ref, got = _teacher_forced(model, decoder, ids, mask)
    assert (got - ref).abs().max().item() <= 1e-5
    _assert_same_argmax(got, ref)
    other = torch.randint(0, model.config.vocab_size, (1, 7))
    assert torch.equal(
        generate(model, other, 20, temperature=0, decoder=decoder), generate(model, other, 20, temperature=0)
    )


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_decode_to_the_last_cache_position_equals_the_reference(seed, padded):
    """A cache exactly as long as the prefill and STEPS new tokens: the last step fills its last column, and writes
    the next step's mask and RoPE rows for a position past the cache (the table's last row is read: no step runs
    there). Logits ≤ 1e-5 apart at every step; one more step is refused by name."""
    model = _trained_looking(build_model(ModelConfig.from_preset("shared_diff-tiny")).eval())
    ids, mask = _batch(model.config.vocab_size, padded)
    decoder = StaticDecoder(model, max_len=ids.shape[1] + STEPS)
    ref, got = _teacher_forced(model, decoder, ids, mask)
    assert (got - ref).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="positions are full"):
        decoder.step(got[:, -1].argmax(-1))


@pytest.mark.parametrize(
    "preset, overrides",
    [
        ("shared_diff-tiny", {"base_sharing": "heads"}),
        ("transformer-tiny", {"n_kv_heads": 1}),
        ("diff-tiny", {"n_kv_heads": 1}),
        ("shared_diff-tiny", {"n_kv_heads": 1, "lowrank_init": "lora"}),
        ("diff_v2-tiny", {"n_kv_heads": 1}),
        ("shared_diff_v2-tiny", {"n_kv_heads": 1}),
        ("diff-tiny", {"head_norm": False}),
        ("shared_diff-tiny", {"head_norm_weight": False, "tie_embeddings": True}),
    ],
)
def test_fused_decode_of_other_layouts_equals_reference_decode(seed, preset, overrides):
    """The merged weights' layouts beyond the presets: Shared DIFF's per-head low-rank factors ("heads"
    sharing), grouped-query attention (K1, K2 of one key head each in one buffer), no head norm, a weightless
    one, tied embeddings. Reference: the KVCache decode; logits ≤ 1e-5 (float32) over a left-padded 13-token
    prefill and 40 steps, the same greedy tokens."""
    model = _trained_looking(build_model(ModelConfig.from_preset(preset, **overrides)).eval())
    ids, mask = _batch(model.config.vocab_size, padded=True)
    ref, got = _teacher_forced(model, StaticDecoder(model, max_len=64), ids, mask)
    assert (got - ref).abs().max().item() <= 1e-5
    _assert_same_argmax(got, ref)


@pytest.mark.parametrize("sharing", ["branches", "heads"])
def test_merged_shared_diff_weights_equal_a_float64_hand_computation(seed, sharing):
    """Reference: in float64, by hand from the parameters in nn.Linear orientation (out, D): branch b's map is
    W + B_b A_b ("branches": B_b (h·d, r), A_b (r, D); "heads": head i's rows W + B_{b,i}ᵀ A_{b,i}); the merged
    matrix stacks Q1, Q2, K1, K2, V rows. Equal to 1e-12 in float64; in bfloat16 the merge is rounded once
    (computed in float32): within one bfloat16 rounding (2⁻⁸ relative) of the float64 value."""
    config = ModelConfig.from_preset("shared_diff-tiny", base_sharing=sharing)
    model = build_model(config, dtype=torch.float64).eval()
    attention = model.layers[1].attention
    h, d, r = config.n_heads, config.head_dim, config.lowrank_rank

    def by_hand(branch: str):
        base = (attention.wq if branch[0] == "q" else attention.wk).weight.double()
        a, b = getattr(attention, f"{branch}_a").weight.double(), getattr(attention, f"{branch}_b")
        if sharing == "branches":
            return base + b.weight.double() @ a
        heads = [base + b[i].double().t() @ a[i * r : (i + 1) * r] for i in range(h)]  # (d, D) each
        return torch.cat(heads)

    def expected():
        return torch.cat([by_hand(b) for b in ("q1", "q2", "k1", "k2")] + [attention.wv.weight.double()])

    with torch.no_grad():
        assert expected().shape == (2 * h * d + 2 * h * d + h * 2 * d, config.d_model)
        assert (attention.fused_weights()["projections"] - expected()).abs().max().item() <= 1e-12
        model.to(torch.bfloat16)  # the same modules, bfloat16 parameters
        merged = attention.fused_weights()["projections"]
        assert merged.dtype == torch.bfloat16
        exact = expected()  # of the bfloat16 parameters, in float64
        assert ((merged.double() - exact).abs() <= 2**-8 * exact.abs()).all()


def test_merged_weights_follow_the_parameters(seed):
    """The decoder's merged weights are a snapshot: after an in-place change of a parameter (an optimiser-like
    update under no_grad), the next prefill merges again, in place (the same tensors, so a captured graph keeps
    reading them), and decodes like the reference with the new weights (≤ 1e-5); a change behind autograd's
    back (``p.data.copy_``) is not seen until ``refresh()``; a model cast to float64 gets new merged tensors."""
    model = build_model(ModelConfig.from_preset("shared_diff-tiny")).eval()
    decoder = StaticDecoder(model, max_len=64)
    ids, mask = _batch(model.config.vocab_size, padded=True)
    _teacher_forced(model, decoder, ids, mask)
    merged = decoder._fused[0]["projections"]
    with torch.no_grad():
        model.layers[0].attention.q1_b.weight.add_(0.1 * torch.randn_like(model.layers[0].attention.q1_b.weight))
    ref, got = _teacher_forced(model, decoder, ids, mask)
    assert (got - ref).abs().max().item() <= 1e-5
    assert decoder._fused[0]["projections"] is merged
    model.layers[0].feed_forward.w_up.weight.data.copy_(torch.randn_like(model.layers[0].feed_forward.w_up.weight))
    ref, got = _teacher_forced(model, decoder, ids, mask)
    assert (got - ref).abs().max().item() > 1e-3  # still the old w_up
    decoder.refresh()
    ref, got = _teacher_forced(model, decoder, ids, mask)
    assert (got - ref).abs().max().item() <= 1e-5
    model.double()
    ref, got = _teacher_forced(model, decoder, ids, mask)
    assert got.dtype == torch.float64 and (got - ref).abs().max().item() <= 1e-5  # RMSNorm computes in float32
    assert decoder._fused[0]["projections"].dtype == torch.float64


@pytest.mark.filterwarnings("error::UserWarning")  # e.g. F.rms_norm's "Mismatch dtype": its unfused path
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("family", ["transformer", "shared_diff"])
def test_one_decoder_under_bf16_autocast_and_outside_it_equals_the_reference(seed, family, fused):
    """A float32 model decoded under CPU bf16 autocast, then without it, then under it again, by one decoder: its
    additive mask and K/V take the queries' dtype in each context (a new cache when autocast switches). Reference:
    the KVCache decode in the same context; bf16 logits within 2e-2 (relative, a few bf16 roundings of logits
    ~0.7), float32 ones within 1e-5 with the same greedy tokens."""
    model = _trained_looking(build_model(ModelConfig.from_preset(f"{family}-tiny")).eval())
    decoder = StaticDecoder(model, max_len=64, fused=fused)
    ids, mask = _batch(model.config.vocab_size, padded=True)
    for autocast in (True, False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            ref, got = _teacher_forced(model, decoder, ids, mask)
        if autocast:
            assert got.dtype == ref.dtype == torch.bfloat16
            assert rel_err(got.float(), ref.float()) <= 2e-2
        else:
            assert got.dtype == torch.float32
            assert (got - ref).abs().max().item() <= 1e-5
            _assert_same_argmax(got, ref)


def test_sampling_through_the_decoder_equals_the_reference(seed):
    """Same generator seed, same filters: the static path draws the same tokens as the reference path."""
    model = build_model(ModelConfig.from_preset("shared_diff-tiny")).eval()
    prompts = [torch.randint(0, 512, (n,)) for n in LENGTHS]
    kwargs = dict(temperature=0.9, top_k=40, top_p=0.9)
    ref = generate(model, prompts, 30, generator=torch.Generator().manual_seed(seed), **kwargs)
    got = generate(
        model, prompts, 30, generator=torch.Generator().manual_seed(seed), decoder=StaticDecoder(model, 64), **kwargs
    )
    for a, b in zip(ref, got, strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_compiled_step_compiles_once(seed):
    """torch.compile ("aot_eager": the graph without inductor's compile time) traces the step once: no new graph
    after the first two steps, none for a left-padded batch of the same size, none for a new decoder of the
    same shapes; the logits equal the reference ≤ 1e-5."""
    model = build_model(ModelConfig.from_preset("diff-tiny")).eval()
    decoder = StaticDecoder(model, max_len=64, compile=True, backend="aot_eager")
    ids, mask = _batch(model.config.vocab_size, padded=True)
    graphs = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        decoder.prefill(ids, mask, STEPS)
        token = ids[:, -1]
        for i in range(STEPS):
            token = decoder.step(token).argmax(-1)
            if i == 1:
                after_two = counters["stats"]["unique_graphs"]
    assert after_two == graphs + 1
    assert counters["stats"]["unique_graphs"] == after_two
    ids = torch.randint(0, model.config.vocab_size, ids.shape)
    ref, got = _teacher_forced(model, decoder, ids, None)
    assert (got - ref).abs().max().item() <= 1e-5
    second = StaticDecoder(model, max_len=64, compile=True, backend="aot_eager")
    ref, got = _teacher_forced(model, second, ids, mask)
    assert (got - ref).abs().max().item() <= 1e-5
    assert counters["stats"]["unique_graphs"] == after_two


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("compile", [False, True], ids=["eager-step", "compiled-step"])
def test_cuda_graph_decode_equals_reference(seed, compile, fused, request):
    """cuda_graph=True (the step captured once, then replayed; inductor without its own CUDA graphs when
    compiled): logits ≤ 1e-5 from the reference decode in float32 over 40 steps of a left-padded batch, the same
    greedy tokens, and the same again for a new prompt (the captured graph reused) and a new batch size (a new
    capture)."""
    if compile and in_subprocess_without_triton_interpreter(request):
        return  # inductor's CUDA kernels compiled and the test passed in a process without Triton's interpreter
    model = build_model(ModelConfig.from_preset("shared_diff-tiny"), device="cuda").eval()
    decoder = StaticDecoder(model, max_len=64, compile=compile, cuda_graph=True, fused=fused)
    ids, mask = (t.cuda() for t in _batch(model.config.vocab_size, padded=True))
    for prompt, prompt_mask in ((ids, mask), (ids.flip(0), mask.flip(0)), (ids[:1, -9:], None)):
        ref, got = _teacher_forced(model, decoder, prompt, prompt_mask)
        assert (got - ref).abs().max().item() <= 1e-5
        _assert_same_argmax(got, ref)
        assert decoder._graph is not None
    expected = generate(model, ids, STEPS, temperature=0, attention_mask=mask)
    got = generate(model, ids, STEPS, temperature=0, attention_mask=mask, decoder=decoder)
    _same_greedy_tokens(model, expected, got, mask)


@pytest.mark.slow
def test_inductor_compiled_decode_equals_reference(seed):
    """The default backend (inductor, C++ on the CPU): logits ≤ 1e-5 from the reference over 40 steps of a
    left-padded batch, the same greedy tokens, and ``generate(compile=True)`` reuses the compiled step."""
    model = build_model(ModelConfig.from_preset("shared_diff-tiny")).eval()
    decoder = StaticDecoder(model, compile=True)  # max_len = max_seq_len = 256, as compile=True rounds up to
    ids, mask = _batch(model.config.vocab_size, padded=True)
    ref, got = _teacher_forced(model, decoder, ids, mask)
    assert (got - ref).abs().max().item() <= 1e-5
    graphs = counters["stats"]["unique_graphs"]
    expected = generate(model, ids, STEPS, temperature=0, attention_mask=mask)
    got = generate(model, ids, STEPS, temperature=0, attention_mask=mask, decoder=decoder)
    _same_greedy_tokens(model, expected, got, mask)
    _same_greedy_tokens(
        model, expected, generate(model, ids, STEPS, temperature=0, attention_mask=mask, compile=True), mask
    )
    assert counters["stats"]["unique_graphs"] == graphs


def _assert_same_argmax(got: torch.Tensor, ref: torch.Tensor, tol: float = 2e-5) -> None:
    """Teacher-forced logits (…, vocab) pick the same tokens, except where the reference's two best logits lie
    within ``tol`` (twice the 1e-5 the logits are held to), where ``got`` must pick the reference's second."""
    picked, expected = got.argmax(-1), ref.argmax(-1)
    differ = picked != expected
    if differ.any():
        best = ref[differ].topk(2, dim=-1)
        assert (best.values[:, 0] - best.values[:, 1] <= tol).all(), best
        assert torch.equal(picked[differ], best.indices[:, 1])


def _same_greedy_tokens(model, ref: torch.Tensor, got: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether two greedy decodes of the same prompt agree (True); where they first part, the reference's two best
    logits must tie in float64 (|Δ| ≤ 1e-5, the float32 paths' rounding; a tiny random model's top logits are
    ~1e-2 apart) and the other path must have taken the second one, else the assertion fails; then False (the
    paths agree on everything but an argmax that float32 cannot decide, and the rest is not comparable)."""
    if torch.equal(got, ref):
        return True
    ref, got = ref.cpu(), got.cpu()
    row, col = (got != ref).nonzero()[0].tolist()
    model64 = build_model(model.config, dtype=torch.float64).eval()
    model64.load_state_dict({k: v.double().cpu() for k, v in model.state_dict().items()})
    full = (
        torch.ones_like(ref)
        if mask is None
        else torch.cat([mask.cpu(), torch.ones(ref.shape[0], ref.shape[1] - mask.shape[1], dtype=mask.dtype)], dim=1)
    )
    with torch.no_grad():
        logits = model64(ref[:, :col], None, full[:, :col])[row, -1]
    best = logits.topk(2)
    assert best.values[0] - best.values[1] <= 1e-5, (row, col, best)
    assert {int(ref[row, col]), int(got[row, col])} == set(best.indices.tolist())
    return False


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_free_running_greedy_tokens_equal_the_reference(seed, family):
    """Reference: eager generate() (KVCache). Greedy decoding of a left-padded batch through the StaticDecoder,
    each path fed its own tokens for 40 steps, gives exactly the same tokens in float32; with an EOS that one
    row produces on the way (taken from the reference's continuation), the same stop, fill and length. Where the
    reference's two best logits tie in float64 (seed 214381573, shared_diff: 0.4212 and 0.4212) the paths may part
    there, and only there (``_same_greedy_tokens``)."""
    model = build_model(ModelConfig.from_preset(f"{family}-tiny")).eval()
    ids, mask = _batch(model.config.vocab_size, padded=True)
    decoder = StaticDecoder(model, max_len=64)
    ref = generate(model, ids, STEPS, temperature=0, attention_mask=mask)
    got = generate(model, ids, STEPS, temperature=0, attention_mask=mask, decoder=decoder)
    if not _same_greedy_tokens(
        model, ref, got, mask
    ):  # parted at a tie of the two best logits: nothing more to compare
        return
    eos = int(ref[0, ids.shape[1] + STEPS // 2])
    ref = generate(model, ids, STEPS, temperature=0, eos_id=eos, attention_mask=mask)
    got = generate(model, ids, STEPS, temperature=0, eos_id=eos, attention_mask=mask, decoder=decoder)
    assert torch.equal(got, ref)
    assert ref.shape[1] <= ids.shape[1] + STEPS and (ref[0, ids.shape[1] :] == eos).any()


def _host_work(model, decoder: StaticDecoder, prompt: torch.Tensor, new: int) -> tuple[float, float]:
    """(aten ops dispatched outside the prefill and the decode steps, host syncs), per new token of a greedy
    generate() through ``decoder`` with an EOS that never comes (so the stop check runs), from the CPU profiler.
    Syncs: reads of a device value (``_local_scalar_dense``: item, bool, int) and ``nonzero``."""
    from torch.profiler import ProfilerActivity, profile, record_function

    def timed_region(fn, name):
        def wrapped(*args, **kwargs):
            with record_function(name):
                return fn(*args, **kwargs)

        return wrapped

    decoder._step_fn = timed_region(decoder._step_fn, "decode step")
    decoder.prefill = timed_region(decoder.prefill, "prefill")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = generate(model, prompt, new, temperature=0, eos_id=model.config.vocab_size, decoder=decoder)
    assert out.shape[1] == prompt.shape[1] + new

    def inside(e) -> bool:
        while e is not None:
            if e.name in ("decode step", "prefill") or e.name.startswith("aten::"):
                return True
            e = e.cpu_parent
        return False

    events = prof.events()
    outside = sum(1 for e in events if e.name.startswith("aten::") and not inside(e.cpu_parent))
    syncs = sum(1 for e in events if e.name in ("aten::_local_scalar_dense", "aten::nonzero"))
    return outside / new, syncs / new


def test_decode_loop_dispatches_a_few_ops_and_syncs_every_8_steps():
    """Per token, around the decode step: the sampling (argmax) and the copy into the step's input buffer, plus
    the stop check every 8 steps and the final fill/trim amortised (≤ 4 ops per token over 32 tokens); host
    syncs: the prompt's token-id check, the 4 stop checks and the final trim, 6 / 32 per token. A per-step sync or
    per-step bookkeeping op (a position, a mask, a cache index, a per-step "all finished") would break these bounds."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preset("transformer-tiny")).eval()
    ops, syncs = _host_work(model, StaticDecoder(model, max_len=64), torch.randint(0, 512, (2, 9)), 32)
    assert syncs == 6 / 32
    assert 2 <= ops <= 4


def test_stop_check_every_few_steps_gives_what_a_check_every_step_gives():
    """Rows finish (produce EOS = 0) at steps 3 and 10 of scripted logits: both loops return 11 tokens, each row
    EOS-filled after its end, though the loop below only syncs every 8 steps."""
    script = torch.full((2, 20), 5)
    script[0, 3], script[1, 10] = 0, 0
    calls = []

    def step(token):
        calls.append(token)
        return torch.nn.functional.one_hot(script[:, len(calls)], 8).float()

    first = torch.nn.functional.one_hot(script[:, 0], 8).float()
    results = []
    for every in (1, 8):
        calls.clear()
        results.append(decode_tokens(first, step, 20, lambda x: x.argmax(-1), torch.tensor([0]), 0, every))
    expected = script[:, :11].clone()
    expected[0, 3:] = 0
    assert torch.equal(results[0], expected) and torch.equal(results[1], expected)
    assert len(calls) == 15  # the synced loop ran to step 16 (one more check) and dropped steps 11-15
    assert decode_tokens(first, step, 0, lambda x: x.argmax(-1)).shape == (2, 0)


def test_bad_input_is_refused():
    model = build_model(ModelConfig(vocab_size=50, max_seq_len=40)).eval()
    with pytest.raises(ValueError, match=r"max_len=41 must be between 1 and the model's max_seq_len=40"):
        StaticDecoder(model, max_len=41)
    decoder = StaticDecoder(model, max_len=16)
    with pytest.raises(RuntimeError, match=r"call prefill\(\) before step\(\)"):
        decoder.step(torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"prompt \(17\) \+ max_new_tokens \(0\) = 17 positions exceed .* max_len=16"):
        decoder.prefill(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"prompt \(10\) \+ max_new_tokens \(7\) = 17 positions exceed"):
        generate(model, torch.ones(1, 10, dtype=torch.long), 7, decoder=decoder)
    with pytest.raises(ValueError, match="the prompt is empty"):
        decoder.prefill(torch.ones(1, 0, dtype=torch.long))
    with torch.no_grad():
        decoder.prefill(torch.ones(2, 15, dtype=torch.long))
        with pytest.raises(ValueError, match=r"tokens must be \(B,\) = \(2,\)"):
            decoder.step(torch.ones(2, 1, dtype=torch.long))
        decoder.step(torch.ones(2, dtype=torch.long))
        with pytest.raises(ValueError, match="the static cache's 16 positions are full"):
            decoder.step(torch.ones(2, dtype=torch.long))
    other = build_model(ModelConfig(vocab_size=50, max_seq_len=40)).eval()
    with pytest.raises(ValueError, match="decoder was built for another model"):
        generate(other, torch.ones(1, 3, dtype=torch.long), 2, decoder=decoder)
    with pytest.raises(ValueError, match="padding after a token while a KV cache is in use"):
        decoder.prefill(torch.ones(2, 4, dtype=torch.long), torch.tensor([[1, 1, 0, 0], [1] * 4]))
    with pytest.raises(ValueError, match="cuda_graph=True needs the model on a CUDA device"):
        StaticDecoder(model, cuda_graph=True)
    with pytest.raises(ValueError, match='mode="reduce-overhead" already replays CUDA graphs'):
        StaticDecoder(model, compile=True, mode="reduce-overhead", cuda_graph=True)
    with pytest.raises(ValueError, match=r"torch\.compile takes a mode or options, not both: give mode='max-autotune'"):
        StaticDecoder(model, compile=True, mode="max-autotune", compile_options={"coordinate_descent_tuning": True})


def test_compile_options_reach_torch_compile(monkeypatch):
    """``compile_options`` go to torch.compile as its options (on the CPU: alone; reduce-overhead's CUDA graphs
    join them only on CUDA), and a mode without them as the mode."""
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: calls.append(kwargs) or fn)
    model = build_model(ModelConfig.from_preset("transformer-tiny")).eval()
    StaticDecoder(model, compile=True, compile_options={"coordinate_descent_tuning": True})
    StaticDecoder(model, compile=True, mode="max-autotune-no-cudagraphs")
    assert calls[0]["options"] == {"coordinate_descent_tuning": True} and "mode" not in calls[0]
    assert calls[1]["mode"] == "max-autotune-no-cudagraphs" and "options" not in calls[1]


def test_compile_arguments_default_to_coordinate_descent_on_cuda():
    """Inductor on CUDA without a mode or options: the CUDA default options (plus reduce-overhead's CUDA graphs
    unless the decoder captures its own); ``{}`` opts out; a mode, another backend or the CPU get none."""
    from shareddiff.static_decode import CUDA_COMPILE_OPTIONS, compile_arguments

    tuned = dict(CUDA_COMPILE_OPTIONS)
    assert tuned == {"coordinate_descent_tuning": True}
    assert compile_arguments("inductor", None, None, True, True) == {"options": tuned}
    assert compile_arguments("inductor", None, None, True, False) == {"options": {"triton.cudagraphs": True} | tuned}
    assert compile_arguments("inductor", None, {}, True, True) == {}
    assert compile_arguments("inductor", None, {}, True, False) == {"mode": "reduce-overhead"}
    assert compile_arguments("inductor", "max-autotune", None, True, True) == {"mode": "max-autotune"}
    assert compile_arguments("inductor", None, None, False, False) == {}
    assert compile_arguments("aot_eager", None, None, True, True) == {}
    autotune = {"max_autotune": True}
    assert compile_arguments("inductor", None, autotune, True, True) == {"options": autotune}


def test_a_model_on_the_triton_backend_is_refused_by_name():
    """The fused kernel takes no mask: the decoder says so, and how to decode (not the kernel's padding error)."""
    model = build_model(ModelConfig.from_preset("diff-tiny")).eval()
    model.set_attention_backend("triton")
    decoder = StaticDecoder(model, max_len=32)
    with pytest.raises(ValueError, match=r"backend is 'triton'.*set_attention_backend\('auto'\)"):
        decoder.prefill(torch.randint(0, model.config.vocab_size, (1, 5)), max_new_tokens=4)
    model.set_attention_backend("auto")
    assert decoder.prefill(torch.randint(0, model.config.vocab_size, (1, 5)), max_new_tokens=4).shape == (1, 512)


def test_the_native_triton_child_runs_the_test_without_the_interpreter(request):
    """The helper the CUDA-compiled tests use: the parent (TRITON_INTERPRET=1, as conftest sets it) runs this test
    again in a child pytest process that has no TRITON_INTERPRET, and returns True only once the child passed."""
    if in_subprocess_without_triton_interpreter(request):
        assert os.environ.get("TRITON_INTERPRET") == "1"  # the parent keeps the CPU interpreter
        return
    assert "TRITON_INTERPRET" not in os.environ


@pytest.mark.slow  # a child pytest process (~5 s)
def test_the_native_triton_child_is_counted_whatever_its_terminal_output(request, monkeypatch):
    """The parent reads the child's pass from its report, not its terminal: with ``PYTEST_ADDOPTS=-q`` (the child
    then runs at -qq, which prints no "1 passed"), the helper still returns True."""
    if os.environ.get(NATIVE_TRITON_ENV) != "1":
        monkeypatch.setenv("PYTEST_ADDOPTS", "-q")
    if in_subprocess_without_triton_interpreter(request):
        return
    assert "TRITON_INTERPRET" not in os.environ


@pytest.mark.slow  # a child pytest process (~5 s)
def test_the_native_triton_child_fails_the_parent_when_it_skips(request):
    """A child that skips the test (no GPU there, say) is no pass: the parent's helper raises with the counts."""
    if os.environ.get(NATIVE_TRITON_ENV) == "1":
        pytest.skip("the child skips")
    with pytest.raises(AssertionError, match="'skipped': 1"):
        in_subprocess_without_triton_interpreter(request)
