"""Export of a run trained on MQAR: its vocabulary is the task's synthetic ids, so the folder holds no text
tokenizer (none maps text to those ids) and its README says so; the model gives the run's logits."""

import json
import logging

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM

from shareddiff.cli import main
from shareddiff.config import MQARConfig, load_recipe
from shareddiff.data.mqar import mqar_eval_set
from shareddiff.hf import load_pretrained
from shareddiff.train import load_model, train
from tests.conftest import rel_err

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def mqar_checkpoint(tmp_path_factory):
    """The checkpoint of a 1-step MQAR run of DIFF attention (vocabulary 64, 4 pairs): it exports to both formats."""
    out = tmp_path_factory.mktemp("mqar") / "run"
    overrides = [
        "data.source=mqar",
        "data.seq_len=32",
        "mqar.vocab_size=64",
        "mqar.pairs=4",
        "mqar.eval_samples=8",
        "train.device=cpu",
        "train.micro_batch=4",
        "train.max_steps=1",
        "train.eval_every=1",
        "optim.warmup_steps=0",
        f"train.out_dir={out}",
    ]
    return train(load_recipe(None, "diff-mqar", overrides), progress=False).checkpoint


@pytest.mark.parametrize("to", ["hf", "diffllama"])
def test_export_of_an_mqar_run_writes_no_tokenizer_and_says_so(mqar_checkpoint, tmp_path, capsys, to):
    model, _, state = load_model(mqar_checkpoint, text=False)
    out = tmp_path / "hf"
    assert main(["export", str(mqar_checkpoint), "--to", to, str(out)]) == 0
    said = capsys.readouterr().out
    assert f"{mqar_checkpoint} was trained on MQAR: its 64 ids are the task's, so no tokenizer is written" in said
    assert not [name for name in TOKENIZER_FILES if (out / name).exists()]
    card = " ".join((out / "README.md").read_text().split())
    assert "no tokenizer" in card and "blank (0), keys (1 to 31), values (32 to 63)" in card
    assert "4 key-value pairs" in card and "32 tokens" in card
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 64 and config.get("eos_token_id") is None and config.get("pad_token_id") is None
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    inputs, _ = mqar_eval_set(MQARConfig(**state["run"]["mqar"]), 32, 4)
    with torch.no_grad():  # same weights; the reference: the project's model of the checkpoint
        assert rel_err(loaded(inputs).logits, model(inputs)) <= 1e-4
    reloaded, tokenizer = load_pretrained(out)
    assert tokenizer is None and reloaded.config.vocab_size == 64


def test_export_of_an_mqar_run_refuses_a_folder_holding_a_tokenizer(mqar_checkpoint, tmp_path, capsys):
    """An older export there (with a text tokenizer) would otherwise stay paired with the MQAR weights."""
    out = tmp_path / "hf"
    out.mkdir()
    (out / "tokenizer.json").write_text("{}")
    assert main(["export", str(mqar_checkpoint), "--to", "hf", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} already holds a tokenizer (tokenizer.json) and {mqar_checkpoint} was trained on MQAR" in err
    assert "export into a new folder, or remove those files" in err
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json"]


def test_export_of_a_text_run_still_writes_its_tokenizer(tmp_path, make_run, caplog):
    from shareddiff.hf import export

    result = train(make_run("train.max_steps=1", "model.n_layers=1"), progress=False)
    with caplog.at_level(logging.INFO, logger="shareddiff"):
        export(result.checkpoint, tmp_path / "hf", "hf")
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    card = (tmp_path / "hf" / "README.md").read_text()  # the text card, not the MQAR one
    assert "AutoTokenizer.from_pretrained(folder)" in card and "MQAR" not in card
    assert "no tokenizer" not in caplog.text
