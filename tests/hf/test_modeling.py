"""transformers wrapper: save/load round trip, generate() with the KV cache, padded batches and beam search,
resize_token_embeddings, the Trainer's gradient accumulation, bad folders."""

import json

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM

from shareddiff import ModelConfig, build_model
from shareddiff.generation import generate
from shareddiff.hf import load_pretrained, to_diffllama, wrap
from shareddiff.hf.folders import hf_tokenizer
from shareddiff.hf.modeling import CACHE_FIELD
from shareddiff.padding import left_pad
from tests.conftest import rel_err


@pytest.mark.parametrize("attention", ["standard", "diff", "shared_diff", "diff_v2", "shared_diff_v2"])
def test_round_trip_and_greedy_generate(seed, tmp_path, attention, tiny_tokenizer):
    config = ModelConfig(
        attention=attention, n_heads=4 if attention == "standard" else 2, vocab_size=300, max_seq_len=64
    )
    model = build_model(config).eval()
    wrapped = wrap(model, eos_id=None)
    wrapped.save_pretrained(tmp_path)
    hf_tokenizer(tiny_tokenizer.path).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    original = model.state_dict()
    assert all(torch.equal(v, original[k.removeprefix("model.")]) for k, v in loaded.state_dict().items())
    ids = torch.randint(0, 300, (2, 17))
    with torch.no_grad():  # same weights; BLAS may still round differently with other memory alignment
        assert rel_err(loaded(ids).logits, model(ids)) <= 1e-6
    out = loaded.generate(ids, max_new_tokens=10, do_sample=False, attention_mask=torch.ones_like(ids))
    assert torch.equal(out, generate(model, ids, 10, temperature=0))
    reloaded, tok = load_pretrained(tmp_path)
    assert tok.decode(tok("the module")["input_ids"]) == "the module"
    texts = ["the module returns a value", "a"]
    batch = tok(texts, padding=True, return_tensors="pt")  # left padding: generation continues every row
    out = reloaded.generate(**batch, max_new_tokens=5, do_sample=False)
    for row, text in enumerate(texts):
        alone = tok(text, return_tensors="pt")["input_ids"]
        assert torch.equal(out[row, -alone.shape[1] - 5 :], generate(model, alone, 5, temperature=0)[0])
    with torch.no_grad():
        assert rel_err(reloaded(ids).logits, model(ids)) <= 1e-6


def test_bad_folders(tmp_path):
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="holds a 'gpt2' model, not a shareddiff or DiffLlama one"):
        load_pretrained(tmp_path)


def test_config_disagreeing_with_weights(tmp_path):
    wrap(build_model(ModelConfig(vocab_size=50))).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["shareddiff"]["lowrank_rank"] = 16  # the saved low-rank factors have rank 8
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"do not match its config.json: .*mismatched_keys.*q1_a"):
        load_pretrained(tmp_path)


FAMILIES = ["transformer", "diff", "shared_diff", "diff_v2", "shared_diff_v2"]


def tiny_wrapped(family: str, **overrides):
    model = build_model(ModelConfig.from_preset(f"{family}-tiny", **overrides)).eval()
    return model, wrap(model)


def test_generate_feeds_only_new_positions(seed, monkeypatch):
    """The cache reaches every step, under the argument name this transformers version uses."""
    model, wrapped = tiny_wrapped("shared_diff")
    lengths = []
    forward = model.forward

    kept = []

    def recording_forward(ids, *args, **kwargs):
        lengths.append(ids.shape[1])
        at = kwargs.get("logits_at")
        kept.append(None if at is None else tuple(at.shape))
        return forward(ids, *args, **kwargs)

    monkeypatch.setattr(model, "forward", recording_forward)
    ids = torch.randint(0, 512, (1, 10))
    out = wrapped.generate(ids, max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(ids))
    assert lengths == [10, 1, 1, 1, 1, 1, 1, 1]  # the prompt, then one new token per step
    assert kept == [(1, 1)] + [None] * 7  # the prefill's head at its last position only (logits_to_keep=1)
    monkeypatch.undo()
    assert torch.equal(out, generate(model, ids, 8, temperature=0))


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_generate_equals_each_prompt_alone(seed, family):
    """Reference: the wrapper's generate() on each prompt alone: tokens equal, every step's logits ≤ 1e-5."""
    model, wrapped = tiny_wrapped(family)
    prompts = [torch.randint(0, 512, (n,)) for n in (11, 4, 7)]
    ids, mask = left_pad(prompts, pad_id=5)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=5, output_logits=True, return_dict_in_generate=True)
    batched = wrapped.generate(ids, attention_mask=mask, **kwargs)
    for row, prompt in enumerate(prompts):
        alone = wrapped.generate(prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long), **kwargs)
        assert torch.equal(batched.sequences[row, 11 - len(prompt) :], alone.sequences[0])
        for step_batched, step_alone in zip(batched.logits, alone.logits, strict=True):
            assert rel_err(step_batched[row], step_alone[0]) <= 1e-5
        assert torch.equal(alone.sequences[0], generate(model, prompt[None], 6, temperature=0)[0])


@pytest.mark.parametrize("expand", [{}, {"num_beams": 2}, {"num_return_sequences": 3, "do_sample": True}])
def test_right_padded_generate_is_refused(seed, expand):
    """The error names the prompt rows the caller gave, not the rows beam search or sampling repeats them into."""
    _, wrapped = tiny_wrapped("diff")
    ids = torch.randint(0, 512, (3, 6))
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0], [1] * 6])
    refused = r"row\(s\) \[1\] have padding after a token while a KV cache is in use.*padding_side='left'"
    with pytest.raises(ValueError, match=refused):
        wrapped.generate(ids, attention_mask=mask, max_new_tokens=3, pad_token_id=0, **{"do_sample": False} | expand)
    with torch.no_grad():  # without a cache right padding is harmless: the tokens' logits are those of each row alone
        logits = wrapped(ids, attention_mask=mask).logits
        assert rel_err(logits[1, :4], wrapped(ids[1:2, :4]).logits[0]) <= 1e-5


def test_decode_step_masks_with_holes_are_refused(seed):
    _, wrapped = tiny_wrapped("transformer")
    ids = torch.randint(0, 512, (2, 5))
    prefill_mask = torch.tensor([[0, 0, 1, 1, 1], [1] * 5])
    with torch.no_grad():
        cache = wrapped(ids, attention_mask=prefill_mask, use_cache=True)[CACHE_FIELD]
    step = ids[:, :1]
    hole_in_past = torch.cat([torch.tensor([[0, 0, 1, 0, 1], [1] * 5]), torch.ones(2, 1, dtype=torch.long)], dim=1)
    with pytest.raises(ValueError, match="changes positions already in the KV cache"):
        wrapped(step, attention_mask=hole_in_past, cache=cache)
    new_is_padding = torch.cat([prefill_mask, torch.tensor([[0], [1]])], dim=1)
    with pytest.raises(ValueError, match="padding after a token while a KV cache is in use"):
        wrapped(step, attention_mask=new_is_padding, cache=cache)
    with pytest.raises(ValueError, match=r"attention_mask must be \(B, cached \+ new\) = \(B, 5 \+ 1\)"):
        wrapped(step, attention_mask=prefill_mask, cache=cache)


@pytest.mark.parametrize("family", ["diff", "shared_diff"])
def test_beam_search_with_cache_equals_without_and_diffllama(seed, family):
    """Reference: the same beam search without a cache, and on the exported DiffLlama (transformers' own code).
    In float64, so that beams whose scores nearly tie on random weights rank the same on every path
    (DiffLlama's eager attention takes its softmax in float32, hence its looser score tolerance)."""
    model, wrapped = tiny_wrapped(family)
    model.double()
    ids = torch.randint(0, 512, (2, 7))
    kwargs = dict(
        attention_mask=torch.ones_like(ids),
        max_new_tokens=6,
        num_beams=3,
        num_return_sequences=2,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=2,  # an end-of-text id for both, so that beams ending there end alike
        return_dict_in_generate=True,
        output_scores=True,
    )
    cached = wrapped.generate(ids, use_cache=True, **kwargs)
    uncached = wrapped.generate(ids, use_cache=False, **kwargs)
    diffllama = to_diffllama(model).double().generate(ids, use_cache=True, **kwargs)
    assert cached.sequences.shape == (4, 13)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert torch.equal(cached.sequences, diffllama.sequences)
    assert rel_err(cached.sequences_scores, uncached.sequences_scores) <= 1e-10
    assert rel_err(cached.sequences_scores, diffllama.sequences_scores) <= 1e-6


@pytest.mark.parametrize("tied", [False, True])
def test_resize_token_embeddings_save_and_reload(seed, tmp_path, tied):
    model, wrapped = tiny_wrapped("shared_diff", tie_embeddings=tied)
    wrapped.resize_token_embeddings(512 + 3)
    assert wrapped.config.vocab_size == wrapped.config.shareddiff["vocab_size"] == model.config.vocab_size == 515
    ids = torch.tensor([[1, 514, 7, 513, 512]])  # the new ids
    with torch.no_grad():
        logits = wrapped(ids).logits
    assert logits.shape == (1, 5, 515) and torch.isfinite(logits).all()
    wrapped.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert rel_err(loaded(ids).logits, logits) <= 1e-6
    assert (loaded.get_output_embeddings() is None) == tied  # tied stays tied: the logits read the embeddings
    if tied:
        with torch.no_grad():
            loaded.get_input_embeddings().weight[513].add_(1.0)
            assert not torch.allclose(loaded(ids).logits[..., 513], logits[..., 513])
        with pytest.raises(ValueError, match="ties its LM head to the input embeddings"):
            loaded.set_output_embeddings(torch.nn.Linear(64, 515, bias=False))


def test_empty_input_is_refused_through_generate():
    _, wrapped = tiny_wrapped("diff")
    with pytest.raises(ValueError, match=r"input_ids has no positions \(shape \(B, 0\)\)"):
        wrapped.generate(torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2, do_sample=False)


@pytest.mark.parametrize("assisted", ["assistant_model", "prompt_lookup_num_tokens", "generation_config"])
def test_assisted_decoding_is_refused_by_name(seed, assisted):
    """Assisted decoding needs a transformers Cache it can crop; the model's KVCache is not one, so the call is
    refused by name (transformers itself would fail with "Assisted decoding requires a cache"), however it is
    asked for; the same call without it decodes greedily."""
    model, wrapped = tiny_wrapped("shared_diff")
    ids = torch.randint(0, 512, (1, 7))
    extra = {
        "assistant_model": {"assistant_model": tiny_wrapped("transformer")[1]},
        "prompt_lookup_num_tokens": {"prompt_lookup_num_tokens": 2},
        "generation_config": {},
    }[assisted]
    if assisted == "generation_config":
        wrapped.generation_config.prompt_lookup_num_tokens = 2
    with pytest.raises(ValueError, match=r"assisted decoding \(assistant_model, prompt_lookup_num_tokens.*greedily"):
        wrapped.generate(ids, max_new_tokens=4, do_sample=False, **extra)
    wrapped.generation_config.prompt_lookup_num_tokens = None
    assert torch.equal(wrapped.generate(ids, max_new_tokens=4, do_sample=False), generate(model, ids, 4, temperature=0))


def test_trainer_gradient_accumulation_equals_one_large_batch(seed, tmp_path):
    """Reference: one SGD step on the whole batch of 4 (GA = 1); GA = 4 × micro-batch 1 must give the same
    parameters (≤ 1e-6) and the same logged loss. Sequences of different lengths, right-padded with label -100,
    so a mean of per-micro-batch means (instead of Σ token losses / num_items_in_batch) would differ too."""
    from transformers import Trainer, TrainingArguments

    lengths = (9, 5, 12, 3)
    rows = [torch.randint(0, 512, (n,)) for n in lengths]
    dataset = [{"input_ids": r} for r in rows]

    def collate(batch):
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, b in enumerate(batch):
            ids[i, : len(b["input_ids"])], mask[i, : len(b["input_ids"])] = b["input_ids"], 1
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    start = build_model(ModelConfig.from_preset("shared_diff-tiny")).state_dict()
    results = {}
    for accumulation, micro_batch in ((1, 4), (4, 1)):
        model = build_model(ModelConfig.from_preset("shared_diff-tiny"))
        model.load_state_dict(start)
        args = TrainingArguments(
            output_dir=str(tmp_path / f"ga{accumulation}"),
            per_device_train_batch_size=micro_batch,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            learning_rate=1.0,
            optim="sgd",
            lr_scheduler_type="constant",
            max_grad_norm=0.0,  # no clipping: it would hide a wrongly scaled gradient
            weight_decay=0.0,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
        )
        trainer = Trainer(model=wrap(model).train(), args=args, train_dataset=dataset, data_collator=collate)
        trainer.train()
        loss = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
        results[accumulation] = (model.state_dict(), loss)
    (one, loss_one), (four, loss_four) = results[1], results[4]
    assert max((one[k] - start[k]).abs().max().item() for k in start) > 1e-3  # the step moved the parameters
    assert max((one[k] - four[k]).abs().max().item() for k in start) <= 1e-6
    assert loss_four == pytest.approx(loss_one, rel=1e-5)


def test_logits_to_keep_follows_the_transformers_convention(seed):
    """``logits_to_keep``: an int keeps the last k positions (0 and k ≥ N all of them), a 1D tensor the same
    positions of every row, a 2D one each row's own; the values are the full logits' there. Labels need every
    position, and malformed values are refused by name."""
    _, wrapped = tiny_wrapped("shared_diff")
    ids = torch.randint(0, 512, (2, 9))
    with torch.no_grad():
        full = wrapped(ids).logits
        per_row = torch.tensor([[0, 4, 8], [7, 1, 2]])
        cases = {
            3: full[:, -3:],
            0: full,
            20: full,
            torch.tensor([2, 5]): full[:, [2, 5]],
            torch.tensor([2, 5], dtype=torch.uint8): full[:, [2, 5]],
            per_row: full.gather(1, per_row[..., None].expand(-1, -1, full.shape[-1])),
        }
        for keep, expected in cases.items():
            got = wrapped(ids, logits_to_keep=keep).logits
            assert got.shape == expected.shape and rel_err(got, expected) <= 1e-6, keep
    for bad, message in (
        (-1, "must be ≥ 0"),
        (torch.ones(2, 9, dtype=torch.bool), "boolean mask is not supported"),
        (torch.tensor([[1, 2]]), "must have B = 2 rows"),
        (torch.tensor([9]), r"outside \[0, 9\)"),
        (1.5, "must be an int or an integer tensor"),
    ):
        with pytest.raises(ValueError, match=message):
            wrapped(ids, logits_to_keep=bad)
    with pytest.raises(ValueError, match="leave logits_to_keep at 0 when giving labels"):
        wrapped(ids, labels=ids, logits_to_keep=1)
