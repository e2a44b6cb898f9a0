"""`shareddiff reproduce`: the shipped experiments are well formed and matched; a tiny experiment runs end to end."""

import json
import shutil
import statistics
from pathlib import Path

import pytest

from shareddiff.cli import main
from shareddiff.config import ModelConfig, load_recipe
from shareddiff.params import count_parameters
from shareddiff.repro import experiment_names, load_experiment, reproduce, run_recipe
from shareddiff.train import train
from shareddiff.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]


def test_shipped_experiments_are_matched(tmp_path, tiny_data):
    assert experiment_names() == ["ablations", "compare", "norm_lr_cpu", "retrieval", "v2"]
    for name in experiment_names():
        exp = load_experiment(name)
        recipes = [run_recipe(exp, s, tmp_path, [f"data.path={tiny_data}"]) for s in exp.runs]
        for spec, run in zip(exp.runs, recipes, strict=True):
            assert run.train.seed == spec.seed and run.train.out_dir == str(tmp_path / name / spec.name)
            assert run.model["preset"] == spec.preset
        # Everything but the model, the seed, the folder and what a run overrides is the shared recipe.
        base = load_recipe(str(exp.recipe)).to_dict()
        for spec, run in zip(exp.runs, recipes, strict=True):
            d = run.to_dict()
            d["train"].update(seed=base["train"]["seed"], out_dir=base["train"]["out_dir"])
            d["data"]["path"] = base["data"]["path"]
            for override in spec.overrides:
                section, key = override.split("=")[0].split(".")
                if section != "model":
                    d[section][key] = base[section][key]
            assert {k: v for k, v in d.items() if k != "model"} == {k: v for k, v in base.items() if k != "model"}
    compare, data = load_experiment("compare"), [f"data.path={tiny_data}"]
    for size in ("8m", "13m", "23m", "42m"):  # each size: the three variants, only the attention differs
        configs = [
            run_recipe(compare, s, tmp_path, data).model_config() for s in compare.runs if s.preset.endswith(size)
        ]
        assert sorted(c.attention for c in configs) == ["diff"] * (3 if size == "23m" else 1) + ["shared_diff"] * (
            3 if size == "23m" else 1
        ) + ["standard"] * (3 if size == "23m" else 1)
        assert len({(c.d_model, c.n_layers, c.head_dim, c.ffn_dim, c.vocab_size) for c in configs}) == 1
    assert sorted({s.seed for s in compare.runs if s.preset == "shared_diff-23m"}) == [1, 2, 3]
    ablations = {
        s.group: run_recipe(load_experiment("ablations"), s, tmp_path, data) for s in load_experiment("ablations").runs
    }
    c = {g: r.model_config() for g, r in ablations.items()}
    assert not c["no-head-norm"].head_norm and c["lambda-0.8"].lambda_init == 0.8 and c["lambda-0.5"].lambda_init == 0.5
    assert (c["rank-12"].lowrank_rank, c["rank-48"].lowrank_rank) == (12, 48)
    assert run_recipe(load_experiment("retrieval"), load_experiment("retrieval").runs[0], tmp_path, data).data.mix
    v2 = load_experiment("v2")  # the V2 runs join compare's 23m runs: same shape, included by name
    assert {s.preset for s in v2.runs} == {"diff_v2-23m", "shared_diff_v2-23m"}
    assert {ref.split("/")[1] for ref in v2.summary["include"]} == {s.name for s in compare.runs if "23m" in s.preset}


def test_bad_experiments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no experiment 'nope'; the experiments are: ablations, compare, norm_lr_cpu"):
        load_experiment("nope")
    (tmp_path / "r.toml").write_text("[train]\nmax_steps = 2\n")
    bad = {
        "unknown evals": '[experiment]\nrecipe = "r.toml"\nevals = ["lm", "mmlu"]\n'
        '[[run]]\ngroup="a"\npreset="shared_diff-tiny"',
        "appear twice": '[experiment]\nrecipe = "r.toml"\n[[run]]\ngroup="a"\npreset="diff-tiny"\n'
        '[[run]]\ngroup="a"\npreset="shared_diff-tiny"',
        "lacks": '[experiment]\nrecipe = "r.toml"\n[[run]]\ngroup="a"',
        "not found beside it": '[experiment]\nrecipe = "missing.toml"\n[[run]]\ngroup="a"\npreset="diff-tiny"',
        "lists no": '[experiment]\nrecipe = "r.toml"',
        "needs an \\[experiment\\] table": "[[run]]\ngroup='a'",
        "\\[needle\\] has unknown keys \\['sample'\\]": '[experiment]\nrecipe = "r.toml"\n[needle]\nsample = 3\n'
        '[[run]]\ngroup="a"\npreset="diff-tiny"',
    }
    for message, text in bad.items():
        (tmp_path / "e.toml").write_text(text)
        with pytest.raises(ValueError, match=message):
            load_experiment(str(tmp_path / "e.toml"))
    exp = load_experiment("compare")
    with pytest.raises(ValueError, match=r"build_debian_docs_corpus\.py.*data prepare"):
        run_recipe(exp, exp.runs[0], tmp_path, ["data.path=does/not/exist"])
    with pytest.raises(ValueError, match="no run 'x'; its runs are: transformer-23m-s1"):
        exp.run("x")


def _tiny_experiment(folder: Path, tiny_data, tiny_tokenizer, evals: str = '["lm"]', extra: str = "") -> Path:
    (folder / "recipe.toml").write_text(
        f"""
[data]
path = "{tiny_data}"
tokenizer = "{tiny_tokenizer.path}"
seq_len = 32
val_tokens = 256
[optim]
lr = 1e-2
warmup_steps = 1
[train]
max_steps = 4
micro_batch = 2
eval_every = 2
log_every = 1
device = "cpu"
[checkpoint]
every = 2
keep_last = 1
"""
    )
    (folder / "tiny.toml").write_text(
        f"""
[experiment]
description = "tiny"
recipe = "recipe.toml"
evals = {evals}
{extra}
[[run]]
group = "transformer"
preset = "transformer-tiny"
seeds = [1, 2]
[[run]]
group = "shared_diff"
preset = "shared_diff-tiny"
seeds = [1, 2]
[[run]]
group = "shared_diff-1layer"
preset = "shared_diff-tiny"
overrides = ["model.n_layers=1"]
"""
    )
    return folder / "tiny.toml"


def test_reproduce_end_to_end_and_rerun_skips(tmp_path, tiny_data, tiny_tokenizer, capsys):
    exp = _tiny_experiment(tmp_path, tiny_data, tiny_tokenizer, extra='[summary]\nbaseline = "shared_diff"')
    out = tmp_path / "out"
    assert main(["reproduce", str(exp), "--out", str(out), "--no-progress"]) == 0
    folder = out / "tiny"
    records = {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/record.json")}
    assert sorted(records) == [
        "shared_diff-1layer-s1",
        "shared_diff-s1",
        "shared_diff-s2",
        "transformer-s1",
        "transformer-s2",
    ]
    for name, rec in records.items():
        run_dir = folder / name
        assert not (run_dir / "checkpoints").exists()  # the record is kept, the weights are not
        assert (run_dir / "eval" / "lm.json").is_file() and (run_dir / "metrics.jsonl").is_file()
        vals = [r["val_loss"] for r in read_metrics(run_dir) if "val_loss" in r]
        assert len(vals) == 2 and rec["val_loss"] == vals[-1] and rec["tokens"] == 4 * 2 * 32
        trained = ModelConfig.from_dict(json.loads((run_dir / "run_config.json").read_text())["model_config"])
        assert trained.vocab_size == tiny_tokenizer.vocab_size == 300  # not the preset's 512
        assert rec["params"] == count_parameters(trained).total
    # Seeds differ, so the runs differ; the summary's mean ± std is that of the records.
    assert records["shared_diff-s1"]["val_loss"] != records["shared_diff-s2"]["val_loss"]
    summary = json.loads((folder / "summary.json").read_text())
    losses = [records[f"shared_diff-s{s}"]["val_loss"] for s in (1, 2)]
    assert summary["groups"]["shared_diff"]["val_loss"]["mean"] == pytest.approx(statistics.fmean(losses), rel=1e-12)
    assert summary["groups"]["shared_diff"]["val_loss"]["std"] == pytest.approx(statistics.stdev(losses), rel=1e-12)
    delta = summary["groups"]["transformer"]["delta_vs_baseline"]
    assert delta == pytest.approx(summary["groups"]["transformer"]["val_loss"]["mean"] - statistics.fmean(losses))
    assert summary["groups"]["shared_diff-1layer"]["params"] < summary["groups"]["shared_diff"]["params"]
    md = (folder / "summary.md").read_text()
    assert f"{statistics.fmean(losses):.4f} ± {statistics.stdev(losses):.4f}" in md and "Δ vs shared_diff" in md
    assert (folder / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    # Running again trains nothing: every record is reused as it is.
    before = {n: (folder / n / "metrics.jsonl").read_text() for n in records}
    capsys.readouterr()
    assert main(["reproduce", str(exp), "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("done before") == 5
    assert before == {n: (folder / n / "metrics.jsonl").read_text() for n in records}
    # A finished run is never passed off as the result of another recipe.
    with pytest.raises(ValueError, match=r"another recipe \(train\.max_steps: recorded 4, now 6\); pass --out"):
        reproduce(str(exp), out=str(out), overrides=["train.max_steps=6"], progress=False)
    assert before == {n: (folder / n / "metrics.jsonl").read_text() for n in records}


def test_finished_runs_need_no_data(tmp_path, tiny_data, tiny_tokenizer):
    """Rerunning a finished experiment where its data is absent (e.g. a fresh clone) only rewrites the summary."""
    copy = tmp_path / "data-copy"
    shutil.copytree(tiny_data, copy)
    exp = _tiny_experiment(tmp_path, copy, tiny_tokenizer)
    out = tmp_path / "out"
    reproduce(str(exp), runs=["shared_diff-s1"], out=str(out), progress=False)
    shutil.rmtree(copy)
    assert "summary" in reproduce(str(exp), runs=["shared_diff-s1"], out=str(out), progress=False)
    with pytest.raises(ValueError, match=r"does not exist\. Build it"):  # an unfinished run does need it
        reproduce(str(exp), runs=["shared_diff-s2"], out=str(out), progress=False)


def test_reproduce_resumes_a_cut_off_run(tmp_path, tiny_data, tiny_tokenizer):
    exp_path = _tiny_experiment(tmp_path, tiny_data, tiny_tokenizer)
    exp, out = load_experiment(str(exp_path)), tmp_path / "out"
    spec = exp.run("shared_diff-s1")
    # The run was cut off after its step-2 checkpoint (before its record): the same command resumes it.
    train(run_recipe(exp, spec, out, ["train.max_steps=2"]), progress=False)
    (out / "tiny" / spec.name / "metrics.jsonl").open("a").write('{"step": 3, "loss": 99.0}\n')  # written after it
    reproduce(str(exp_path), runs=[spec.name], out=str(out), progress=False)
    rows = read_metrics(out / "tiny" / spec.name)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4] and all(r["loss"] < 99 for r in rows if "loss" in r)
    # Identical to an uninterrupted run of the same recipe (CPU training is deterministic).
    reproduce(str(exp_path), runs=[spec.name], out=str(tmp_path / "fresh"), progress=False)
    fresh = read_metrics(tmp_path / "fresh" / "tiny" / spec.name)
    assert [r.get("loss") for r in rows] == [r.get("loss") for r in fresh]


def test_summary_include_and_scaling(tmp_path, tiny_data, tiny_tokenizer):
    exp_path = _tiny_experiment(tmp_path, tiny_data, tiny_tokenizer)
    (tmp_path / "abl.toml").write_text(
        '[experiment]\nrecipe = "recipe.toml"\n[summary]\nbaseline = "shared_diff"\ninclude = ["tiny/shared_diff-s1"]\n'
        '[[run]]\ngroup = "no-norm"\npreset = "shared_diff-tiny"\noverrides = ["model.head_norm=false"]\n'
    )
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="includes tiny/shared_diff-s1, which has not run yet"):
        reproduce(str(tmp_path / "abl.toml"), out=str(out), progress=False)
    reproduce(str(exp_path), runs=["shared_diff-s1"], out=str(out), progress=False, summary=False)
    reproduce(str(tmp_path / "abl.toml"), out=str(out), progress=False)
    summary = json.loads((out / "abl" / "summary.json").read_text())
    assert (
        set(summary["groups"]) == {"no-norm", "shared_diff"}
        and summary["groups"]["shared_diff"]["delta_vs_baseline"] == 0
    )
    # Three depths per variant: the loss-vs-parameters fit and the matching table appear in the summary.
    (tmp_path / "scale.toml").write_text(
        '[experiment]\nrecipe = "recipe.toml"\n[summary]\nscaling = true\nreferences = ["standard"]\n'
        + "".join(
            f'[[run]]\ngroup = "{fam}-{n}"\npreset = "{fam}-tiny"\noverrides = ["model.n_layers={n}"]\n'
            for fam in ("transformer", "shared_diff")
            for n in (1, 2, 3)
        )
    )
    reproduce(str(tmp_path / "scale.toml"), out=str(out), progress=False)
    summary = json.loads((out / "scale" / "summary.json").read_text())
    assert set(summary["scaling"]["variants"]) == {"standard", "shared_diff"}
    assert all("params_fit" in v for v in summary["scaling"]["variants"].values())
    assert [m["variant"] for m in summary["scaling"]["match"]] == ["shared_diff"] * 3
    by_size = summary["scaling"]["match_by_size"]  # one reference run per size: the rows themselves
    assert [(m["reference_params"], m["runs"]) for m in by_size] == [
        (m["reference_params"], 1) for m in summary["scaling"]["match"]
    ]
    assert [m["params_needed_fraction"] for m in by_size] == pytest.approx(
        [m["params_needed_fraction"] for m in summary["scaling"]["match"]]
    )
    assert all(isinstance(m["extrapolated"], bool) for m in by_size)
    assert (out / "scale" / "scaling.png").is_file() and "params needed" in (out / "scale" / "summary.md").read_text()


@pytest.mark.slow
def test_reproduce_parallel_jobs_with_needle_evals(tmp_path, tiny_data, tiny_tokenizer):
    exp_path = _tiny_experiment(
        tmp_path,
        tiny_data,
        tiny_tokenizer,
        evals='["lm", "needle", "attention"]',
        extra="[needle]\nlengths = [300]\ndepths = [0.0, 1.0]\nconfigs = [[1, 1], [2, 2]]\nsamples = 1\n"
        "[attention]\nlength = 300\ndepths = [0.5]\nneedles = 2\nsamples = 1\n",
    )
    out = tmp_path / "out"
    overrides = ["model.max_seq_len=512", "train.max_steps=2"]
    runs = ["transformer-s1", "shared_diff-s1"]
    assert (
        main(
            [
                "reproduce",
                str(exp_path),
                "--out",
                str(out),
                "--jobs",
                "2",
                *[arg for r in runs for arg in ("--run", r)],
                *overrides,
            ]
        )
        == 0
    )
    summary = json.loads((out / "tiny" / "summary.json").read_text())
    for group in ("transformer", "shared_diff"):
        needle = summary["groups"][group]["needle"]
        assert [(r["n_needles"], r["n_queries"]) for r in needle] == [(1, 1), (2, 2)]
        assert all(0 <= r["accuracy"]["mean"] <= 1 for r in needle)
        assert 0 <= summary["groups"][group]["attention"]["answer"]["mean"] <= 1
    assert (out / "tiny" / "needle.png").is_file() and "Multi-needle accuracy" in (
        out / "tiny" / "summary.md"
    ).read_text()
    assert (out / "tiny" / "transformer-s1" / "reproduce.log").is_file()
