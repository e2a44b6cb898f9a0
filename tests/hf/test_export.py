"""`shareddiff export --to hf|diffllama` of a text run: a folder transformers loads by itself (auto_map and code
files; a model card), and a path that is a file refused before anything is written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from shareddiff.cli import main
from shareddiff.hf.remote_code import CONFIGURATION, MODELING
from shareddiff.train import load_model, train
from tests.conftest import rel_err

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def checkpoint(make_run):
    return train(make_run("train.max_steps=2", "checkpoint.every=2"), progress=False).checkpoint


@pytest.mark.parametrize("to", ["hf", "diffllama"])
def test_export_to_an_existing_file_is_refused_and_the_file_kept(checkpoint, tmp_path, capsys, to):
    target = tmp_path / "model.safetensors"
    target.write_text("precious")
    for path in (target, target / "inside"):
        assert main(["export", str(checkpoint), "--to", to, str(path)]) == 2
        err = capsys.readouterr().err
        assert f"{target} is a file" in err and f"--to {to} writes a folder" in err
        assert f"give a folder path, new or existing, e.g. {tmp_path / ('model-' + to)}" in err
        assert "wrote" not in err
    assert target.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "run"]


LOAD_WITHOUT_IMPORT = """
import sys
import torch
from transformers import AutoModelForCausalLM

assert not [name for name in sys.modules if name.startswith("shareddiff")]
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2])).logits, sys.argv[3])
print(type(model).__module__)
"""


@pytest.mark.slow
def test_hf_export_loads_with_trust_remote_code_alone(checkpoint, tmp_path):
    """A fresh interpreter that never imports shareddiff.hf loads the folder through its auto_map; reference: the
    checkpoint's own model, float32, rel. err ≤ 1e-5."""
    out = tmp_path / "hf"
    assert main(["export", str(checkpoint), "--to", "hf", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_shareddiff.ShareddiffConfig",
        "AutoModelForCausalLM": "modeling_shareddiff.ShareddiffForCausalLM",
    }
    card = (out / "README.md").read_text()
    assert "from_pretrained(folder, trust_remote_code=True)" in card and "Shared DIFF attention" in card
    model, _, _ = load_model(checkpoint, text=False)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.save(ids, tmp_path / "ids.pt")
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    args = [str(out), str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt")]
    done = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_IMPORT, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("transformers_modules.hf.")  # the folder's modeling_shareddiff.py
    with torch.no_grad():
        assert rel_err(torch.load(tmp_path / "logits.pt"), model(ids)) <= 1e-5


def test_diffllama_export_has_a_model_card_and_no_remote_code(checkpoint, tmp_path):
    checkpoint_model, _, _ = load_model(checkpoint, text=False)
    out = tmp_path / "diffllama"
    assert main(["export", str(checkpoint), "--to", "diffllama", str(out)]) == 0
    assert "auto_map" not in json.loads((out / "config.json").read_text())
    assert not list(out.glob("*shareddiff.py"))
    card = " ".join((out / "README.md").read_text().split())
    assert "`AutoModelForCausalLM.from_pretrained(folder)` (transformers' own DiffLlamaForCausalLM)" in card
    assert f"{checkpoint_model.config.n_layers} layers" in card and "trust_remote_code" not in card


class NotInstalled:
    """An import finder that finds no shareddiff, as Python's finders do when it is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "shareddiff":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


@pytest.mark.parametrize("source", [CONFIGURATION, MODELING])
def test_folder_code_without_shareddiff_says_how_to_install_it(monkeypatch, source):
    """As if the package were not installed: no module of it loaded, and the import system finds none."""
    for name in [name for name in sys.modules if name.startswith("shareddiff")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [NotInstalled(), *sys.meta_path])
    with pytest.raises(ImportError, match=r"shareddiff package .* is not installed: run `pip install shareddiff`"):
        exec(compile(source, "modeling_shareddiff.py", "exec"), {"__name__": "folder_code", "__package__": None})
