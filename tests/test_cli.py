"""The command line: data prepare, tokenizer train, train, generate, export."""

import json

import pytest
import torch
from safetensors.torch import load_file

from shareddiff.cli import main
from shareddiff.train import load_model
from tests.conftest import synthetic_documents


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, doc in enumerate(synthetic_documents(60, 60)):
        (folder / f"{i}.txt").write_text(doc)
    return folder


def test_prepare_train_generate_export(tmp_path, corpus, capsys):
    tok = tmp_path / "tok.json"
    assert main(["tokenizer", "train", str(corpus), "--out", str(tok), "--vocab-size", "290"]) == 0
    assert (
        main(
            [
                "data",
                "prepare",
                str(corpus),
                "--out",
                str(tmp_path / "d"),
                "--tokenizer",
                str(tok),
                "--val-fraction",
                "0.2",
            ]
        )
        == 0
    )
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] == 60
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--preset",
                "diff-tiny",
                f"data.path={tmp_path / 'd'}",
                "--no-progress",
                "--data.tokenizer",
                str(tok),
                "data.seq_len=32",
                "data.val_tokens=256",
                "train.max_steps=4",
                "train.micro_batch=2",
                "train.eval_every=2",
                "train.device=cpu",
                f"train.out_dir={run}",
            ]
        )
        == 0
    )
    assert "done: step 4" in capsys.readouterr().out
    assert (
        main(
            [
                "generate",
                str(run),
                "--prompt",
                "the module",
                "--max-new-tokens",
                "8",
                "--num-samples",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2 and "the module" in out
    assert main(["export", str(run), "--to", "safetensors", str(tmp_path / "w.safetensors")]) == 0
    model, _, _ = load_model(run)
    weights = load_file(tmp_path / "w.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["generate", str(tmp_path), "--prompt", "x"]) == 2
    assert "holds no usable checkpoint" in capsys.readouterr().err
    (tmp_path / "state.json").write_text('{"format": "something-else"}')
    assert main(["generate", str(tmp_path), "--prompt", "x"]) == 2
    assert "is not a shareddiff-checkpoint/2 checkpoint" in capsys.readouterr().err
    assert main(["train", "--preset", "shared_diff-tiny", "train.max_steps"]) == 2
    assert "must look like section.key=value" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "none.toml")]) == 2
    assert "recipe" in capsys.readouterr().err
    assert main(["data", "prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_mix_flag_and_override_forms_agree():
    from shareddiff.config import load_recipe

    assert load_recipe(None, "shared_diff-tiny", ['data.mix="needle:0.3"']).data.mix == "needle:0.3"
    assert load_recipe(None, "shared_diff-tiny", ["data.mix=needle:0.3"]).data.mix == "needle:0.3"


@pytest.mark.slow
def test_generate_compile_gives_the_eager_tokens(tmp_path, capsys):
    """`generate --compile` (a compiled StaticDecoder, inductor) prints the greedy text of the eager KV-cache path."""
    from shareddiff import ModelConfig, build_model
    from shareddiff.data.tokenizer import BUNDLED_TOKENIZERS
    from shareddiff.train import save_checkpoint

    model = build_model(ModelConfig.from_preset("diff-tiny", vocab_size=4096))
    state = {"model_config": model.config.to_dict()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path, 1, model, optimizer, state, BUNDLED_TOKENIZERS["bundled-4k"], keep_last=1)
    args = ["generate", str(tmp_path), "--prompt", "def f(x):", "--max-new-tokens", "12", "--temperature", "0"]
    outs = []
    for extra in ([], ["--compile"]):
        assert main([*args, "--device", "cpu", *extra]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].startswith("--- sample 1\ndef f(x):")
