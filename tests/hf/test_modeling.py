"""transformers wrapper: save/load round trip, generate(), bad folders."""

import json

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM

from shareddiff import ModelConfig, build_model
from shareddiff.generation import generate
from shareddiff.hf import load_pretrained, wrap
from shareddiff.hf.io import hf_tokenizer
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
    with torch.no_grad():
        assert rel_err(reloaded(ids).logits, model(ids)) <= 1e-6


def test_left_padding_is_refused(seed):
    wrapped = wrap(build_model(ModelConfig(vocab_size=50)).eval())
    ids = torch.randint(0, 50, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match="take no padding mask: pad on the right"):
        wrapped(ids, attention_mask=mask)
    right = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    assert torch.equal(wrapped(ids, attention_mask=right).logits, wrapped(ids).logits)


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
