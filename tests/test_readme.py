"""The README's evaluation examples, read from README.md and run as written on demo-sized models (the
`mini` presets: context 256), with only flags that cut their sample counts added."""

import re
import shlex
from pathlib import Path

import pytest

from shareddiff.cli import main
from shareddiff.hf.harness import hub_mode
from shareddiff.train import train

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

FASTER = {  # sample counts only: every length, depth, dataset and shape stays as the README has it
    "lm": ["--max-tokens", "2048"],
    "needle": ["--samples", "1"],
    "attention": ["--samples", "1"],
    "icl": ["--test-examples", "2", "--permutations", "1"],
    "harness": ["--limit", "2"],
}
NEEDS_THE_HUB = ["arc_challenge,arc_easy"]  # these lines download their tasks' data: not run here


def readme_commands(heading: str) -> list[str]:
    """The `shareddiff ...` lines of the first bash block under ``heading``, comments dropped."""
    section = README.split(f"## {heading}\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("shareddiff ")]


def test_readme_lists_the_evaluation_examples():
    verbs = [shlex.split(c)[1:3] for c in readme_commands("Evaluate")]
    assert verbs == [["eval", v] for v in ("lm", "needle", "attention", "icl", "scaling")] + [["report", "runs/a"]]


@pytest.fixture(scope="module")
def demo_tokenized(tmp_path_factory):
    """The tests' synthetic text tokenized with the demo's tokenizer (bundled-4k)."""
    from shareddiff.data import Tokenizer, prepare_splits
    from tests.conftest import synthetic_documents

    out = tmp_path_factory.mktemp("demo-data")
    docs = {"train": synthetic_documents(150, 100, seed=2), "val": synthetic_documents(20, 100, seed=3)}
    prepare_splits(docs, out, Tokenizer("bundled-4k"))
    return out


@pytest.mark.slow
def test_readme_evaluation_examples_run_on_the_demo_model(make_run, demo_tokenized, tmp_path, monkeypatch, capsys):
    runs = {}
    for name, preset in (("a", "shared_diff-mini"), ("b", "diff-mini"), ("c", "transformer-mini")):
        demo = (f"model.preset={preset}", f"data.path={demo_tokenized}", "data.tokenizer=bundled-4k")
        recipe = make_run(*demo, "train.max_steps=2", "checkpoint.every=2", out=name)
        assert recipe.model_config().max_seq_len == 256  # the demo's context
        runs[name] = str(train(recipe, progress=False).run_dir)
    paths = {
        "RUN": runs["a"],
        "CKPT": runs["a"],
        "runs/demo/shared_diff": runs["a"],
        "runs/a": runs["a"],
        "runs/b": runs["b"],
        "runs/c": runs["c"],
        "runs/scaling": str(tmp_path / "scaling"),
        "runs/report.md": str(tmp_path / "report.md"),
    }
    monkeypatch.chdir(REPO)  # the harness task's YAML names its data relative to the repository
    lines = readme_commands("Evaluate") + readme_commands("Hugging Face, DiffLlama, lm-evaluation-harness")
    ran = []
    for line in lines:
        args = [paths.get(a, a) for a in shlex.split(line)[1:]]
        if args[0] != "eval" and args[0] != "report":
            continue
        if any(hub in line for hub in NEEDS_THE_HUB):
            assert not hub_mode(args[args.index("--tasks") + 1].split(","), None, {})[0]  # said to be online
            continue
        extra = FASTER.get(args[1], []) if args[0] == "eval" else []
        code = main([*args, *extra, *(["--device", "cpu"] if args[1] in FASTER else [])])
        captured = capsys.readouterr()
        assert code == 0, f"{line}\n{captured.err}"
        ran.append((line, captured.out))
    assert len(ran) == 7, [r[0] for r in ran]
    needle = next(out for line, out in ran if " needle " in line)
    assert "note: the model's context is 256 tokens, below 1K: testing at length" in needle
    attention = next(out for line, out in ran if " attention " in line)
    assert "note: the model's context is 256 tokens: probing at that length instead of 1024" in attention
    evals = Path(runs["a"]) / "eval"
    assert sorted(p.name for p in evals.glob("*.json"))[:2] == ["attention.json", "icl.json"]
    assert any(p.name.startswith("needle_N4_R2_L") for p in evals.glob("*.png"))
    assert "trec" in (evals / "icl.json").read_text()
    report = (tmp_path / "report.md").read_text()
    assert "## Scaling (scaling)" in report and "Many-shot ICL" in report
