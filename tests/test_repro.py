"""`shareddiff reproduce`: the shipped experiments are well formed and matched; a tiny experiment runs end to end."""

import itertools
import json
import math
import os
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest

from shareddiff.cli import main
from shareddiff.config import ModelConfig, load_recipe
from shareddiff.params import count_parameters
from shareddiff.repro import experiment_names, load_experiment, reproduce, run_recipe
from shareddiff.train import train
from shareddiff.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]


def test_shipped_experiments_are_matched(tmp_path, tiny_data):
    assert set(experiment_names()) >= {"early_ablations", "early_compare", "early_retrieval", "lr_sweep", "norm_lr_cpu"}
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
    compare, data = load_experiment("early_compare"), [f"data.path={tiny_data}"]
    for size in ("8m", "13m", "23m", "42m"):  # each size: the three variants, only the attention differs
        configs = [
            run_recipe(compare, s, tmp_path, data).model_config() for s in compare.runs if s.preset.endswith(size)
        ]
        assert sorted(c.attention for c in configs) == ["diff"] * (3 if size == "23m" else 1) + ["shared_diff"] * (
            3 if size == "23m" else 1
        ) + ["standard"] * (3 if size == "23m" else 1)
        assert len({(c.d_model, c.n_layers, c.head_dim, c.ffn_dim, c.vocab_size) for c in configs}) == 1
    assert sorted({s.seed for s in compare.runs if s.preset == "shared_diff-23m"}) == [1, 2, 3]
    early = load_experiment("early_ablations")
    ablations = {s.group: run_recipe(early, s, tmp_path, data) for s in early.runs}
    c = {g: r.model_config() for g, r in ablations.items()}
    assert not c["no-head-norm"].head_norm and c["lambda-0.8"].lambda_init == 0.8 and c["lambda-0.5"].lambda_init == 0.5
    assert (c["rank-12"].lowrank_rank, c["rank-48"].lowrank_rank) == (12, 48)
    retrieval = load_experiment("early_retrieval")
    assert run_recipe(retrieval, retrieval.runs[0], tmp_path, data).data.mix
    sweep = load_experiment("lr_sweep")  # each variant at four learning rates 2x apart, 5 tokens per parameter
    for family in ("transformer-23m", "diff-23m", "shared_diff-23m", "diff_v2-23m", "shared_diff_v2-23m"):
        rates = sorted(run_recipe(sweep, s, tmp_path, data).optim.lr for s in sweep.runs if s.family == family)
        assert len(rates) >= 4 and all(b == pytest.approx(2 * a) for a, b in itertools.pairwise(rates))
    assert {run_recipe(sweep, s, tmp_path, data).train.tokens_per_param for s in sweep.runs} == {5}
    # The budget protocol (docs/results.md): every compute-adequate run at ≥ 5 tokens per parameter, the
    # headline at ≥ 10 with three seeds, warmup a fraction of the steps, each variant at lr_sweep's best rate.
    for name in ("compare", "tokens", "ablations"):
        exp = load_experiment(name)
        for spec in exp.runs:
            run = run_recipe(exp, spec, tmp_path, data)
            assert run.train.tokens_per_param >= 5 and 0.02 <= run.optim.warmup_fraction <= 0.05, spec.name
    compare = load_experiment("compare")
    for family in ("transformer", "diff", "shared_diff"):
        specs = [s for s in compare.runs if s.group == f"{family}-23m"]
        assert sorted(s.seed for s in specs) == [1, 2, 3]
        runs = [run_recipe(compare, s, tmp_path, data) for s in specs]
        assert all(r.train.tokens_per_param >= 10 for r in runs)
        sweep_best = min(
            (
                json.loads((REPO / "results/repro/lr_sweep" / s.name / "record.json").read_text())
                for s in sweep.runs
                if s.family == f"{family}-23m"
            ),
            key=lambda r: r["val_loss"],
        )["lr"]
        assert {r.optim.lr for r in runs} == {sweep_best}


def test_bad_experiments_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"no experiment 'nope'; the experiments are: .*early_compare.*lr_sweep"):
        load_experiment("nope")
    (tmp_path / "r.toml").write_text("[train]\nmax_steps = 2\n")
    bad = {
        "unknown evals": '[experiment]\nrecipe = "r.toml"\nevals = ["lm", "mmlu"]\n'
        '[[run]]\ngroup="a"\npreset="shared_diff-tiny"',
        "appear twice": '[experiment]\nrecipe = "r.toml"\n[[run]]\ngroup="a"\npreset="diff-tiny"\n'
        '[[run]]\ngroup="a"\npreset="shared_diff-tiny"',
        "lacks \\['preset'\\]": '[experiment]\nrecipe = "r.toml"\n[[run]]\ngroup="a"',
        "not found beside it": '[experiment]\nrecipe = "missing.toml"\n[[run]]\ngroup="a"\npreset="diff-tiny"',
        "lists no": '[experiment]\nrecipe = "r.toml"',
        "needs an \\[experiment\\] table": "[[run]]\ngroup='a'",
        "unknown key\\(s\\) \\['sample'\\] in .*\\[needle\\]; valid keys are": '[experiment]\nrecipe = "r.toml"\n'
        '[needle]\nsample = 3\n[[run]]\ngroup="a"\npreset="diff-tiny"',
        "unknown table\\(s\\) \\['nedle'\\]": '[experiment]\nrecipe = "r.toml"\n[nedle]\n'
        '[[run]]\ngroup="a"\npreset="diff-tiny"',
        "sweep key 'lr' needs the form \"section.key\"": '[experiment]\nrecipe = "r.toml"\n'
        '[[run]]\ngroup="a"\npreset="diff-tiny"\nsweep = { lr = [1, 2] }',
        "needs seeds = \\[integers": '[experiment]\nrecipe = "r.toml"\n[[run]]\ngroup="a"\npreset="diff-tiny"\n'
        "seeds = []",
        "'a': seeds = \\[1, 2, 1\\] repeats a seed; list each seed once": '[experiment]\nrecipe = "r.toml"\n'
        '[[run]]\ngroup="a"\npreset="diff-tiny"\nseeds = [1, 2, 1]',
        "'a': sweep optim.lr = \\[0.001, 0.001\\] repeats a value \\(as run names: \\['0.001', '0.001'\\]\\)": (
            '[experiment]\nrecipe = "r.toml"\n[[run]]\ngroup="a"\npreset="diff-tiny"\n'
            'sweep = { "optim.lr" = [1e-3, 0.001] }'
        ),
    }
    for message, text in bad.items():
        (tmp_path / "e.toml").write_text(text)
        with pytest.raises(ValueError, match=message):
            load_experiment(str(tmp_path / "e.toml"))
    exp = load_experiment("early_compare")
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


def test_no_run_starts_afresh_past_start_by(tmp_path, tiny_data, tiny_tokenizer, monkeypatch, caplog):
    """--start-by: past it a finished run is still reused and a run with a checkpoint would still resume, but no
    run starts afresh, one after another or in parallel; the runs left out are named, and a negative value is
    refused."""
    import subprocess

    from shareddiff.repro.runner import has_started

    exp = _tiny_experiment(tmp_path, tiny_data, tiny_tokenizer)
    out = tmp_path / "out"
    reproduce(str(exp), runs=["shared_diff-s1"], out=str(out), progress=False, summary=False)
    caplog.set_level("INFO")
    message = reproduce(str(exp), out=str(out), progress=False, summary=False, start_by=0)
    left = "; 4 not started (past --start-by 0 s)"
    assert message.endswith(f"1 run(s) of tiny done under {out / 'tiny'}{left}")
    assert "shared_diff-s1: done before" in caplog.text
    assert "4 run(s) of tiny not started, past --start-by 0 s: transformer-s1, transformer-s2, shared_diff-s2" in (
        caplog.text
    )
    assert sorted(p.parent.name for p in (out / "tiny").glob("*/record.json")) == ["shared_diff-s1"]
    assert not (out / "tiny" / "transformer-s1").exists() or not has_started(out / "tiny" / "transformer-s1")
    # a run with a checkpoint counts as started (it resumes); one with an empty folder does not
    run_dir = out / "tiny" / "shared_diff-s2"
    (run_dir / "checkpoints").mkdir(parents=True)
    assert not has_started(run_dir)
    (run_dir / "checkpoints" / "step_00000002").mkdir()
    assert has_started(run_dir) and has_started(out / "tiny" / "shared_diff-s1")
    shutil.rmtree(run_dir)
    # in parallel (--jobs): a process only for the run that has something to reuse
    launched = []

    def fake_run(cmd, **kwargs):
        launched.append(cmd[cmd.index("--run") + 1])
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    message = reproduce(str(exp), out=str(out), progress=False, summary=False, jobs=2, start_by=0)
    assert launched == ["shared_diff-s1"] and message.endswith(left)
    with pytest.raises(ValueError, match=r"--start-by -1 must be ≥ 0 seconds"):
        reproduce(str(exp), out=str(out), progress=False, start_by=-1)


def test_parallel_runs_out_of_gpu_memory_are_named_with_the_fix(
    tmp_path, tiny_data, tiny_tokenizer, monkeypatch, caplog
):
    """A run whose launch ends in a CUDA out-of-memory error is named as such, with the number of runs that
    shared the device and the fix (fewer --jobs); an out-of-memory error left in its log by an earlier launch
    does not count for a later failure of another cause."""
    import subprocess

    exp = _tiny_experiment(tmp_path, tiny_data, tiny_tokenizer)
    out = tmp_path / "out"
    earlier = out / "tiny" / "transformer-s2" / "reproduce.log"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 128.00 MiB\n")
    oom = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1024.00 MiB. GPU 0 has ...\n"

    def fake_run(cmd, stdout, **kwargs):
        name = cmd[cmd.index("--run") + 1]
        if name == "transformer-s1":
            stdout.write(f"Traceback (most recent call last):\n{oom}")
            return subprocess.CompletedProcess(cmd, 1)
        if name == "transformer-s2":
            stdout.write("ValueError: something else\n")
            return subprocess.CompletedProcess(cmd, 1)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    caplog.set_level("INFO")
    with pytest.raises(ValueError) as info:
        reproduce(str(exp), out=str(out), progress=False, summary=False, jobs=3)
    message = str(info.value)
    assert (
        "runs ['transformer-s1', 'transformer-s2'] did not finish; 1 of them ran out of GPU memory (transformer-s1)"
    ) in message
    assert "with up to 3 runs sharing a device: run again with fewer --jobs" in message
    assert "transformer-s1: failed (exit 1)" in caplog.text and "out of GPU memory, with up to 3 runs" in caplog.text
    assert f"transformer-s2: failed (exit 1), see {earlier}: ValueError: something else" in caplog.text
    from shareddiff.repro.runner import last_line

    assert last_line(earlier, earlier.stat().st_size) == "" and last_line(tmp_path / "missing.log") == ""
    from shareddiff.repro.runner import ran_out_of_memory

    assert ran_out_of_memory(earlier) and not ran_out_of_memory(earlier, earlier.stat().st_size - 5)
    assert not ran_out_of_memory(tmp_path / "missing.log")


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"run": "transformer-s1", "gro', "Unterminated string"),
        ("", "Expecting value"),
        ("[1, 2]", "a JSON list, not an object"),
        ("{}", "no run, group, variant, val_loss, tokens, evals"),
        (b"\xff\xfe", "can't decode"),
    ],
)
def test_a_damaged_record_is_named_with_the_fix(tmp_path, tiny_data, tiny_tokenizer, text, why):
    """A record.json that is not a run's record (truncated, empty, another JSON value, undecodable) stops the run
    and the summary with a message naming the file, what is wrong and the fix; the file is left as it was."""
    exp = _tiny_experiment(tmp_path, tiny_data, tiny_tokenizer)
    out = tmp_path / "out"
    path = out / "tiny" / "transformer-s1" / "record.json"
    path.parent.mkdir(parents=True)
    experiment = load_experiment(str(exp))
    run = run_recipe(experiment, experiment.runs[0], out, [], check_data=False)  # a finished run's own run config
    (path.parent / "run_config.json").write_text(json.dumps({"run": run.to_dict(), "world_size": 1}))
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    for summary_only in (True, False):
        with pytest.raises(ValueError) as info:
            reproduce(str(exp), runs=["transformer-s1"], out=str(out), progress=False, summary_only=summary_only)
        message = str(info.value)
        assert message.startswith(f"{path} is not a run record (") and why in message
        assert "or delete it and run the same command again to train and evaluate that run anew" in message
    assert path.read_bytes() == (text if isinstance(text, bytes) else text.encode())


def test_parallel_runs_refuse_a_model_that_cannot_be_built_and_name_an_interrupt(
    tmp_path, tiny_data, tiny_tokenizer, monkeypatch, caplog
):
    """Under --jobs a model override that cannot be built is refused before any run starts (as one after another),
    and a run stopped by Ctrl-C or SIGTERM is reported as interrupted, which the same command resumes."""
    import signal
    import subprocess

    exp = _tiny_experiment(tmp_path, tiny_data, tiny_tokenizer)
    out = tmp_path / "out"
    launched = []

    def fake_run(cmd, stdout, **kwargs):
        launched.append(cmd[cmd.index("--run") + 1])
        stdout.write("interrupted at step 3 of 4; ...\n")
        return subprocess.CompletedProcess(cmd, 128 + signal.SIGINT)

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(ValueError, match=r"^d_model=33 is not divisible by n_heads"):
        reproduce(str(exp), out=str(out), progress=False, summary=False, jobs=2, overrides=["model.d_model=33"])
    assert launched == []
    caplog.set_level("INFO")
    with pytest.raises(ValueError, match=r"^runs \['transformer-s1'\] did not finish; fix what the end"):
        reproduce(str(exp), runs=["transformer-s1"], out=str(out), progress=False, summary=False, jobs=2)
    log_path = out / "tiny" / "transformer-s1" / "reproduce.log"
    assert f"transformer-s1: interrupted (exit 130), see {log_path}; the same command resumes it" in caplog.text


def test_a_summary_refuses_records_of_another_experiment_of_the_same_name(tmp_path, tiny_data, tiny_tokenizer):
    """--summary-only from an experiment file whose run of that name has another preset (or other overrides) than
    the record under --out: refused, naming both, instead of summarising another experiment's run as its own."""
    exp = _tiny_experiment(tmp_path, tiny_data, tiny_tokenizer)
    out = tmp_path / "out"
    run_dir = out / "tiny" / "shared_diff-1layer-s1"
    run_dir.mkdir(parents=True)
    experiment = load_experiment(str(exp))
    spec = next(s for s in experiment.runs if s.name == "shared_diff-1layer-s1")
    run = run_recipe(experiment, spec, out, [], check_data=False)
    (run_dir / "run_config.json").write_text(json.dumps({"run": run.to_dict(), "world_size": 1}))
    record = {
        "run": spec.name, "group": spec.group, "variant": "shared_diff", "val_loss": 5.0, "tokens": 256, "evals": {},
        "preset": spec.preset, "overrides": [*spec.overrides, "train.compile=true"], "seed": 1, "params": 1000,
        "params_non_embedding": 500, "train_loss": 5.1, "tokens_per_s": 1e4, "concurrent_runs": 1, "device": "CPU",
    }  # fmt: skip
    (run_dir / "record.json").write_text(json.dumps(record))
    reproduce(str(exp), out=str(out), progress=False, summary_only=True)  # its own run, a command override added
    (run_dir / "record.json").write_text(json.dumps(record | {"overrides": ["model.n_layers=2"]}))
    with pytest.raises(
        ValueError, match=r"holds a run of preset shared_diff-tiny with overrides \['model.n_layers=2'\]"
    ):
        reproduce(str(exp), out=str(out), progress=False, summary_only=True)
    (run_dir / "record.json").write_text(json.dumps(record | {"preset": "transformer-tiny"}))
    with pytest.raises(ValueError) as info:
        reproduce(str(exp), out=str(out), progress=False, summary_only=True)
    assert "defines shared_diff-1layer-s1 as preset shared_diff-tiny with ['model.n_layers=1']" in str(info.value)
    assert str(info.value).endswith("another experiment of the same name wrote it; pass --out to keep the two apart")


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


def test_reproduce_resumes_a_cut_off_run(tmp_path, tiny_data, tiny_tokenizer, monkeypatch):
    from shareddiff.data import WindowLoader

    exp_path = _tiny_experiment(tmp_path, tiny_data, tiny_tokenizer)
    exp, out = load_experiment(str(exp_path)), tmp_path / "out"
    spec = exp.run("shared_diff-s1")
    # The run was cut off after its step-2 checkpoint (before its record): the same command resumes it.
    real_batch = WindowLoader.batch

    def cut_off(self, step, *args, **kwargs):
        if step == 2:  # during step 3
            raise KeyboardInterrupt
        return real_batch(self, step, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(WindowLoader, "batch", cut_off)
        with pytest.raises(KeyboardInterrupt):
            train(run_recipe(exp, spec, out, []), progress=False)
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
    fit = summary["params_fit"]
    assert set(fit["points"]) == {"standard", "shared_diff"} and set(fit["fits"]) == {"standard", "shared_diff"}
    groups = summary["groups"]
    for variant, points in fit["points"].items():  # one seed per size: the points are the groups' losses
        expected = sorted(
            (e["params_non_embedding"], e["val_loss"]["mean"]) for e in groups.values() if e["variant"] == variant
        )
        assert [p[0] for p in points] == [x for x, _ in expected]
        assert [p[1] for p in points] == pytest.approx([y for _, y in expected], rel=1e-12)
    assert [m["variant"] for m in fit["match"]] == ["shared_diff"] * 3
    from shareddiff.eval.scaling import needed_for_loss
    from shareddiff.repro.summary import EXACT_FIT_NATS

    md = (out / "scale" / "summary.md").read_text()
    for m in fit["match"]:  # the multiple is where shared_diff's fitted curve reaches the reference's loss
        if fit["fits"]["shared_diff"]["b"] <= 0:  # tiny models' losses need not fall with depth
            assert m["needed_fraction"] is None and "no multiple" in md
            continue
        need = needed_for_loss(fit["fits"]["shared_diff"], m["loss"])
        assert m["needed_fraction"] == pytest.approx(need / m["reference_x"])
        assert isinstance(m["extrapolated"], bool)
    assert fit["exact"]  # three sizes per variant: the summary says whether the fit passes through them
    miss = max(abs(r) for f in fit["fits"].values() for r in f["residuals"])
    note = "passes through every point" if miss < EXACT_FIT_NATS else "no residual degree of freedom"
    assert (out / "scale" / "scaling.png").is_file() and "needed (× ref)" in md and note in md


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


def test_sweep_expands_into_named_groups(tmp_path):
    (tmp_path / "r.toml").write_text("[train]\nmax_steps = 2\n")
    (tmp_path / "s.toml").write_text(
        '[experiment]\nrecipe = "r.toml"\n[[run]]\ngroup = "t"\npreset = "transformer-tiny"\nseeds = [1, 2]\n'
        'overrides = ["train.micro_batch=2"]\nsweep = { "optim.lr" = [1e-3, 0.002], "model.d_model" = [32, 64] }\n'
    )
    exp = load_experiment(str(tmp_path / "s.toml"))
    assert exp.run_names() == ", ".join(
        f"t-lr{lr}-d_model{d}-s{s}" for lr in ("0.001", "0.002") for d in (32, 64) for s in (1, 2)
    )
    spec = exp.run("t-lr0.002-d_model64-s2")
    assert (spec.family, spec.group, dict(spec.point)) == (
        "t",
        "t-lr0.002-d_model64",
        {"optim.lr": 0.002, "model.d_model": 64},
    )
    run = run_recipe(exp, spec, tmp_path, [])
    assert (run.optim.lr, run.model["d_model"], run.train.micro_batch, run.train.seed) == (0.002, 64, 2, 2)


def test_tiny_lr_sweep_with_a_budget_end_to_end(tmp_path, tiny_data, tiny_tokenizer):
    """Two learning rates of one variant, sized by tokens per parameter: records, the best rate, the summary."""
    exp_path = _tiny_experiment(tmp_path, tiny_data, tiny_tokenizer)
    (tmp_path / "sweep.toml").write_text(
        '[experiment]\nrecipe = "recipe.toml"\n[summary]\nselect = "optim.lr"\n'
        '[[run]]\ngroup = "sd"\npreset = "shared_diff-tiny"\n'
        'overrides = ["train.tokens_per_param=0.004", "optim.warmup_fraction=0.25"]\n'
        'sweep = { "optim.lr" = [1e-3, 1e-2] }\n'
    )
    out = tmp_path / "out"
    assert exp_path.is_file()
    reproduce(str(tmp_path / "sweep.toml"), out=str(out), progress=False)
    folder = out / "sweep"
    records = {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/record.json")}
    assert sorted(records) == ["sd-lr0.001-s1", "sd-lr0.01-s1"]
    for rec in records.values():
        steps = -(-0.004 * rec["params"] // (2 * 32))  # ⌈tokens_per_param · params / tokens per step⌉
        assert rec["max_steps"] == steps and rec["tokens"] == steps * 2 * 32
        assert rec["tokens_per_param"] == pytest.approx(rec["tokens"] / rec["params"])
        assert rec["passes"] == pytest.approx(rec["tokens"] / rec["train_tokens_unique"])
        assert len(rec["lambda"]) == 2 and rec["grad_norm"] > 0
        rows = read_metrics(folder / rec["run"])
        assert all("lambda" in r and "grad_norm" in r for r in rows if "loss" in r)
        # The record's end-of-run figures are those of metrics.jsonl: the last training and held-out rows,
        # the median of the logged tokens/s.
        last, held_out = [r for r in rows if "loss" in r][-1], [r for r in rows if "val_loss" in r][-1]
        assert (rec["train_loss"], rec["grad_norm"], rec["lambda"]) == (last["loss"], last["grad_norm"], last["lambda"])
        assert (rec["val_loss"], rec["tokens"]) == (held_out["val_loss"], held_out["tokens"])
        assert held_out["tokens"] == last["tokens"]  # held out after the last step
        speeds = [r["tokens_per_s"] for r in rows if "loss" in r]
        assert rec["tokens_per_s"] == statistics.median(speeds) and min(speeds) > 0
    summary = json.loads((folder / "summary.json").read_text())
    select = summary["select"]["sd"]
    best = min(records.values(), key=lambda r: r["val_loss"])
    assert select["values"] == [1e-3, 1e-2] and select["best"] == best["lr"] and not select["interior"]
    md = (folder / "summary.md").read_text()
    assert "extend the sweep" in md and "Final λ per layer" in md and (folder / "sweep.png").is_file()
    # The records are reused although the recipe's max_steps (1000 by default) is not what was trained:
    # with a tokens-per-parameter budget the step count is derived.
    assert "done before" in main_output(["reproduce", str(tmp_path / "sweep.toml"), "--out", str(out), "--no-progress"])


def main_output(argv):
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(argv) == 0
    return buffer.getvalue()


def test_efficiency_fit_recovers_a_known_token_multiple():
    """Variant B reaches every loss with 1/1.5 of A's tokens (an exact power law): the fit says 0.667×."""
    from shareddiff.repro.summary import efficiency

    def loss(tokens):
        return 2.0 + 30.0 * tokens**-0.2

    groups = {}
    for variant, scale in (("standard", 1.0), ("shared_diff", 1.5)):
        for tokens in (1e6, 3e6, 9e6, 27e6):
            groups[f"{variant}-{tokens:g}"] = {
                "variant": variant,
                "tokens": tokens,
                "val_loss": {"mean": loss(tokens * scale), "std": 0.0, "n": 1},
            }
    result = efficiency(groups, "tokens", ["standard"], sigma=0.0)
    assert [m["needed_fraction"] for m in result["match"]] == pytest.approx([1 / 1.5] * 4, rel=2e-3)
    assert [m["extrapolated"] for m in result["match"]] == [True, False, False, False]  # 1e6/1.5 < 1e6
    noisy = efficiency(groups, "tokens", ["standard"], sigma=0.01)
    for m in noisy["match"]:
        lo, hi = m["interval"]
        assert lo < m["needed_fraction"] < hi  # the seed spread widens the multiple into an interval


def test_fit_interval_carries_seed_errors_and_the_law_misfit():
    """Each point's standard error is σ/√seeds; a fit whose residuals exceed that noise widens its bootstrap by
    √(χ²/dof) (computed here by hand), and the summary says the law misses its points."""
    from shareddiff.eval.scaling import fit_power_law, predict
    from shareddiff.repro.summary import _efficiency_rows, efficiency

    rng = np.random.default_rng()
    a, b, c = rng.uniform(20, 40), rng.uniform(0.15, 0.3), rng.uniform(1.5, 2.0)
    xs = [1e6, 3e6, 9e6, 27e6]
    bump = [0.0, 0.03, -0.03, 0.0]  # a shape effect the law cannot follow
    groups = {}
    for variant, scale in (("standard", 1.0), ("diff", 1.3)):
        for x, d, n in zip(xs, bump, (1, 1, 3, 1), strict=True):
            groups[f"{variant}-{x:g}"] = {
                "variant": variant,
                "params_non_embedding": x,
                "val_loss": {"mean": c + a * (x * scale) ** -b + d, "std": 0.0, "n": n},
            }
    sigma = 0.004
    result = efficiency(groups, "params_non_embedding", ["standard"], sigma=sigma)
    fit = result["fits"]["diff"]
    ys = [groups[f"diff-{x:g}"]["val_loss"]["mean"] for x in xs]
    by_hand = fit_power_law(xs, ys)
    residuals = np.asarray(ys) - predict(by_hand, xs)
    errors = np.array([sigma, sigma, sigma / 3**0.5, sigma])
    chi2 = float(np.sum((residuals / errors) ** 2))
    assert fit["residuals"] == pytest.approx(residuals.tolist(), abs=1e-9)
    assert fit["chi2"] == pytest.approx(chi2, rel=1e-6) and fit["dof"] == 1
    assert fit["scale"] == pytest.approx(max(1.0, chi2**0.5), rel=1e-6) and fit["scale"] > 2
    text = "\n".join(_efficiency_rows(result, "non-embedding parameters"))
    assert "The power law misses some points" in text and "χ²/dof" in text
    # the same law without the bump: residuals within the noise, no widening, narrower intervals
    for g in groups.values():
        x = g["params_non_embedding"]
        g["val_loss"]["mean"] -= bump[xs.index(x)]
    clean = efficiency(groups, "params_non_embedding", ["standard"], sigma=sigma)
    assert clean["fits"]["diff"]["scale"] == 1.0
    width = [m["interval"][1] - m["interval"][0] for m in result["match"]]
    clean_width = [m["interval"][1] - m["interval"][0] for m in clean["match"]]
    assert all(w > 2 * cw for w, cw in zip(width, clean_width, strict=True))
    assert "The power law misses" not in "\n".join(_efficiency_rows(clean, "non-embedding parameters"))


def test_delta_standard_error_and_a_missing_fit_is_stated():
    """Δ's standard error is Welch's from the seed spreads; with fewer than three sizes the summary says so."""
    from shareddiff.repro.summary import _efficiency_rows, delta_standard_error, efficiency

    a = {"mean": 2.40, "std": 0.003, "n": 3}
    b = {"mean": 2.42, "std": 0.004, "n": 2}
    assert delta_standard_error(a, b) == pytest.approx((0.003**2 / 3 + 0.004**2 / 2) ** 0.5, rel=1e-12)
    assert delta_standard_error(a, {"mean": 2.4, "std": 0.0, "n": 1}) is None
    groups = {
        f"{v}-{n}": {"variant": v, "params_non_embedding": n, "val_loss": {"mean": 3.0 - n / 1e7, "std": 0.0, "n": 1}}
        for v in ("standard", "diff")
        for n in (1e6, 2e6)
    }
    result = efficiency(groups, "params_non_embedding", ["standard"], sigma=0.0)
    assert result["match"] == [] and result["fits"] == {}
    text = "\n".join(_efficiency_rows(result, "non-embedding parameters"))
    assert "No fit of loss against non-embedding parameters yet" in text and "diff: 2, standard: 2" in text


def test_mqar_experiment_summary_end_to_end(tmp_path):
    """A tiny MQAR grid through `shareddiff reproduce`: the summary's best run per (cell, variant) over widths
    and rates, and per width over rates, is the records' maximum; its steps to 50 % / 99 % and its 2x-length
    accuracy are that run's; `--summary-only` writes the same summary again, with the heatmap."""
    from shareddiff.eval.mqar import steps_to

    (tmp_path / "recipe.toml").write_text(
        """
[model]
max_seq_len = 32
[data]
source = "mqar"
seq_len = 16
[mqar]
vocab_size = 16
pairs = 2
eval_samples = 16
[optim]
lr = 1e-2
warmup_steps = 1
[train]
max_steps = 4
micro_batch = 8
eval_every = 2
log_every = 1
device = "cpu"
[checkpoint]
every = 4
keep_last = 1
"""
    )
    (tmp_path / "mqar.toml").write_text(
        """
[experiment]
description = "tiny MQAR"
recipe = "recipe.toml"
evals = []
[[run]]
group = "transformer-n16-p2"
preset = "transformer-mqar"
sweep = { "optim.lr" = [1e-3, 3e-2], "model.d_model" = [32, 64] }
[[run]]
group = "diff-n16-p2"
preset = "diff-mqar"
sweep = { "optim.lr" = [1e-3, 3e-2] }
[[run]]
group = "transformer-n24-p4"
preset = "transformer-mqar"
overrides = ["data.seq_len=24", "mqar.pairs=4", "model.max_seq_len=48"]
"""
    )
    out = tmp_path / "out"
    reproduce(str(tmp_path / "mqar.toml"), out=str(out), progress=False)
    folder = out / "mqar"
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*/record.json"))]
    assert len(records) == 7
    for record in records:  # the record keeps what the trainer measured
        evals = [r for r in read_metrics(folder / record["run"]) if "mqar_accuracy" in r]
        mqar = record["evals"]["mqar"]
        assert [tuple(p) for p in mqar["curve"]] == [(2, evals[0]["mqar_accuracy"]), (4, evals[1]["mqar_accuracy"])]
        assert (mqar["accuracy"], mqar["accuracy_2x"]) == (evals[1]["mqar_accuracy"], evals[1]["mqar_accuracy_2x"])
    summary = json.loads((folder / "summary.json").read_text())["mqar"]
    runs = [r["evals"]["mqar"] for r in records]
    assert summary["variants"] == ["diff", "standard"]
    assert [(b["seq_len"], b["pairs"], b["variant"], b["runs"]) for b in summary["best"]] == [
        (16, 2, "diff", 2),
        (16, 2, "standard", 4),
        (24, 4, "standard", 1),
    ]
    for best in summary["best"]:
        group = [r for r in runs if (r["seq_len"], r["variant"]) == (best["seq_len"], best["variant"])]
        assert best["accuracy"] == max(r["accuracy"] for r in group)
        chosen = next(r for r in group if (r["lr"], r["d_model"]) == (best["lr"], best["d_model"]))
        assert chosen["accuracy"] == best["accuracy"] and best["accuracy_2x"] == chosen["accuracy_2x"] is not None
        assert best["steps_to_50"] == steps_to(chosen["curve"], 0.5)
        assert best["steps_to_99"] == steps_to(chosen["curve"], 0.99)
    widths = {(c["variant"], c["seq_len"], c["d_model"]): c for c in summary["cells"]}
    assert sorted(widths) == [("diff", 16, 64), ("standard", 16, 32), ("standard", 16, 64), ("standard", 24, 64)]
    for (variant, seq_len, d_model), cell in widths.items():
        group = [r for r in runs if (r["variant"], r["seq_len"], r["d_model"]) == (variant, seq_len, d_model)]
        assert cell["lrs"] == {f"{r['lr']:g}": r["accuracy"] for r in sorted(group, key=lambda r: r["lr"])}
        assert cell["accuracy"] == max(cell["lrs"].values())
    text = (folder / "summary.md").read_text()
    assert "![MQAR](mqar.png)" in text and "| 16 | 2 | Transformer |" in text
    assert text.index("![MQAR](mqar.png)") < text.index("![MQAR by rate](mqar_rates.png)")
    png = (folder / "mqar.png").stat()
    assert png.st_size > 10_000 and (folder / "mqar_rates.png").stat().st_size > 10_000
    (folder / "summary.json").unlink()
    main_output(["reproduce", str(tmp_path / "mqar.toml"), "--out", str(out), "--summary-only"])
    assert json.loads((folder / "summary.json").read_text())["mqar"] == summary
    assert "Partial" not in text and json.loads((folder / "summary.json").read_text())["runs"]["missing"] == []
    gone = sorted(folder.glob("diff-*"))  # a summary of some of the runs says so, and which are missing
    for run in gone:
        (run / "record.json").unlink()
    main_output(["reproduce", str(tmp_path / "mqar.toml"), "--out", str(out), "--summary-only"])
    runs = json.loads((folder / "summary.json").read_text())["runs"]
    assert runs == {"finished": 5, "total": 7, "missing": [r.name for r in gone]}
    assert (
        f"**Partial: 5 of the experiment's 7 runs have records** (missing: {gone[0].name}, {gone[1].name})"
        in (folder / "summary.md").read_text()
    )


def test_pooled_seed_sigma_weights_groups_by_their_degrees_of_freedom():
    from shareddiff.repro.summary import seed_sigma

    groups = {
        "a": {"val_loss": {"std": 0.002, "n": 3}},
        "b": {"val_loss": {"std": 0.005, "n": 2}},
        "c": {"val_loss": {"std": 0.0, "n": 1}},  # one seed: no spread to pool
    }
    assert seed_sigma(groups) == pytest.approx(((2 * 0.002**2 + 1 * 0.005**2) / 3) ** 0.5, rel=1e-12)
    assert seed_sigma({"c": groups["c"]}) == 0.0


def test_group_curves_average_seeds_at_shared_steps_and_draw_the_gap(tmp_path):
    """The loss curves average each group's seeds at the steps every seed reached (mean, min, max); with panels
    and a baseline variant the figure gets a second row (the gap along training)."""
    from PIL import Image

    from shareddiff import plots

    rng = np.random.default_rng()
    dirs = {}
    for name, steps in (("t-s1", [250, 500, 750]), ("t-s2", [250, 500]), ("d-s1", [250, 500, 750])):
        folder = tmp_path / name
        folder.mkdir()
        rows = [{"step": s, "tokens": s * 64, "val_loss": float(rng.uniform(2, 4))} for s in steps]
        rows.insert(1, {"step": 300, "tokens": 300 * 64, "loss": 3.0})  # a training row: not a validation point
        (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        dirs[name] = (folder, {r["step"]: r["val_loss"] for r in rows if "val_loss" in r})
    curve = plots._mean_curve([dirs["t-s1"][0], dirs["t-s2"][0]])
    assert sorted(curve) == [250, 500]  # step 750 only one seed reached
    for step in (250, 500):
        a, b = dirs["t-s1"][1][step], dirs["t-s2"][1][step]
        assert curve[step] == pytest.approx((step * 64, (a + b) / 2, min(a, b), max(a, b)), rel=1e-12)
    one = plots.plot_group_curves({"t": [dirs["t-s1"][0]], "d": [dirs["d-s1"][0]]}, tmp_path / "one.png", "x")
    two = plots.plot_group_curves(
        {"t": [dirs["t-s1"][0], dirs["t-s2"][0]], "d": [dirs["d-s1"][0]]},
        tmp_path / "two.png",
        "x",
        variants={"t": "standard", "d": "diff"},
        panels={"t": "8m", "d": "8m"},
    )
    assert Image.open(two).size[1] > 1.6 * Image.open(one).size[1]  # the gap row below the losses


def test_gap_row_range_holds_every_gap_curve(tmp_path, monkeypatch):
    """With one baseline and one other group, the gap axis's y-range holds that group's late gaps (the first
    gap curve was once left out of the range, leaving an axis of ±0.0001)."""
    from shareddiff import plots

    rng = np.random.default_rng()
    steps = [100, 200, 300, 400, 500]
    base = rng.uniform(3, 4, len(steps))
    offset = rng.uniform(0.05, 0.2, len(steps))
    for name, losses in (("t", base), ("d", base + offset)):
        (tmp_path / name).mkdir()
        rows = [{"step": s, "tokens": s * 64, "val_loss": float(v)} for s, v in zip(steps, losses, strict=True)]
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    figures = []
    monkeypatch.setattr(plots, "_save", lambda plt, fig, out: figures.append(fig) or out)
    plots.plot_group_curves(
        {"t": [tmp_path / "t"], "d": [tmp_path / "d"]},
        tmp_path / "gap.png",
        "x",
        variants={"t": "standard", "d": "diff"},
        panels={"t": "8m", "d": "8m"},
    )
    low, high = figures[0].axes[1].get_ylim()
    late = offset[1:]  # tokens ≥ a fifth of the last
    assert low <= 0.0 and high >= late.max() and high < late.max() + 0.1  # the range fits the gaps, not ±1e-4
    assert plots.gap_limits([([1.0, 5.0], [-0.3, 0.2])]) == pytest.approx((-0.3 - 0.0501, 0.2 + 0.0501))
    assert plots.gap_limits([]) is None


def _three_point_groups(other: list[float]) -> dict[str, dict]:
    """standard on an exact law at three sizes; diff with the given losses at the same sizes."""
    groups = {}
    for i, x in enumerate((1e6, 3e6, 9e6)):
        for variant, loss in (("standard", 2.0 + 30.0 * x**-0.2), ("diff", other[i])):
            groups[f"{variant}-{x:g}"] = {
                "variant": variant,
                "params_non_embedding": x,
                "val_loss": {"mean": loss, "std": 0.0, "n": 1},
            }
    return groups


def test_a_rising_loss_gives_no_multiple():
    """A variant whose loss rises with size fits b ≤ 0: no decreasing law, so no "needed (× ref)" multiple."""
    from shareddiff.eval.scaling import fit_power_law, needed_for_loss
    from shareddiff.repro.summary import _efficiency_rows, efficiency

    rising = [3.0, 3.1, 3.3]
    fit = fit_power_law([1e6, 3e6, 9e6], rising)
    assert fit["b"] <= 0 and not fit["decreasing"]
    with pytest.raises(ValueError, match="does not fall"):
        needed_for_loss(fit, 2.5)
    result = efficiency(_three_point_groups(rising), "params_non_embedding", ["standard"], sigma=0.01)
    assert [m["needed_fraction"] for m in result["match"]] == [None] * 3
    text = "\n".join(_efficiency_rows(result, "non-embedding parameters"))
    assert text.count("loss does not fall with size over these points: no multiple") == 3


def test_three_point_note_says_whether_the_fit_passes_through_the_points():
    """The "passes through every point" note only where the residuals are ~0; a non-monotone loss cannot be
    fitted exactly by a·x^(−b) + c, and the note gives the miss."""
    from shareddiff.repro.summary import _efficiency_rows, efficiency

    exact = efficiency(
        _three_point_groups([2.0 + 30.0 * (1.3 * x) ** -0.2 for x in (1e6, 3e6, 9e6)]),
        "params_non_embedding",
        ["standard"],
        sigma=0.01,
    )
    assert "passes through every point" in "\n".join(_efficiency_rows(exact, "non-embedding parameters"))
    bumpy = efficiency(_three_point_groups([3.0, 3.2, 2.9]), "params_non_embedding", ["standard"], sigma=0.01)
    miss = max(abs(r) for r in bumpy["fits"]["diff"]["residuals"])
    assert miss > 0.01
    text = "\n".join(_efficiency_rows(bumpy, "non-embedding parameters"))
    assert "passes through every point" not in text
    assert f"no residual degree of freedom, yet the law misses them by up to {miss:.4f} nats" in text


def test_a_multiple_outside_its_interval_is_called_unstable():
    """A point estimate outside its own 16–84 % interval (e.g. 1373.63 [0.01, 46.04]) is not printed as a
    multiple with an interval: the summary says the fit is unstable."""
    from shareddiff.repro.summary import _efficiency_rows

    row = {"reference": "standard", "variant": "diff", "reference_x": 1000, "loss": 3.0, "extrapolated": False}
    result = {
        "match": [
            row | {"needed_fraction": 1373.63, "interval": [0.01, 46.04], "unstable": True},
            row | {"reference_x": 2000, "needed_fraction": 0.8, "interval": [0.7, 0.9], "unstable": False},
        ],
        "points": {},
        "fits": {},
        "sigma": 0.01,
        "exact": False,
    }
    text = "\n".join(_efficiency_rows(result, "non-embedding parameters"))
    assert "unstable fit: 1373.63 lies outside its interval [0.01, 46.04]" in text
    assert "0.80 [0.70, 0.90]" in text


def test_no_finished_runs_names_the_command_as_given(tmp_path, tiny_data, tiny_tokenizer):
    """--summary-only with no finished run names the experiment as the user gave it (a path) and its --out."""
    exp_path = _tiny_experiment(tmp_path, tiny_data, tiny_tokenizer)
    out = tmp_path / "elsewhere"
    with pytest.raises(ValueError, match="no finished runs") as err:
        reproduce(str(exp_path), out=str(out), summary_only=True)
    assert f"run `shareddiff reproduce {exp_path} --out {out}` first" in str(err.value)


def test_a_run_locked_by_another_reproduce_is_skipped_and_named(tmp_path, tiny_data, tiny_tokenizer):
    """Two reproduce commands into one --out: a run the other is training is skipped, the others train, and
    the error names the reproduce options (--out, --run), not train.out_dir."""
    from shareddiff.train.runlock import RunLock

    exp_path = _tiny_experiment(tmp_path, tiny_data, tiny_tokenizer)
    out = tmp_path / "out"
    busy = r"runs \['transformer-s1'\] of tiny are being trained"
    # the other command's run in progress holds transformer-s1's lock
    with RunLock(out / "tiny" / "transformer-s1"), pytest.raises(ValueError, match=busy) as err:
        reproduce(str(exp_path), runs=["transformer-s1", "transformer-s2"], out=str(out), progress=False)
    message = str(err.value)
    assert "--out" in message and "--run" in message and "train.out_dir" not in message
    assert f"pid {os.getpid()}" in message
    assert (out / "tiny" / "transformer-s2" / "record.json").is_file()  # the other run went on
    assert not (out / "tiny" / "transformer-s1" / "record.json").exists()


def test_summary_of_old_records_takes_lr_and_passes_from_run_config_and_names_every_preset(tmp_path):
    """Records written before lr and passes were recorded (norm_lr_cpu, early_*): the summary takes the peak lr
    from each run's run_config.json and the passes from its recorded training-split size where there is one,
    else shows "—" with a note; the preset table names every group, with "—" for no overrides."""
    from shareddiff.repro.summary import load_records, summarize

    rng = np.random.default_rng()
    exp = load_experiment("norm_lr_cpu")
    specs = {s.group: s for s in exp.runs}
    chosen = {"shared_diff-lr3e-3": None, "no-norm-lr1e-2": int(rng.integers(10**5, 10**6))}  # group → train_tokens
    lrs, tokens = {}, int(rng.integers(10**5, 10**6))
    for group, train_tokens in chosen.items():
        spec, lrs[group] = specs[group], float(rng.uniform(1e-4, 1e-2))
        run_dir = tmp_path / exp.name / spec.name
        run_dir.mkdir(parents=True)
        val_loss = float(rng.uniform(4, 6))
        rows = [{"step": s, "tokens": s * 4096, "loss": float(rng.uniform(4, 6))} for s in range(5, 155, 5)]
        rows.append({"step": 150, "tokens": tokens, "val_loss": val_loss})
        (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        config = {"run": {"optim": {"lr": lrs[group]}}, "world_size": 1}
        if train_tokens is not None:
            config["train_tokens"] = train_tokens
        (run_dir / "run_config.json").write_text(json.dumps(config))
        record = {  # an old record: no lr, passes, train_loss_tail, family or point
            "experiment": exp.name, "run": spec.name, "group": group, "preset": spec.preset, "variant": "shared_diff",
            "seed": 1, "overrides": list(spec.overrides), "params": 1861504, "params_non_embedding": 812928,
            "val_loss": val_loss, "train_loss": rows[-2]["loss"], "tokens": tokens, "tokens_per_s": 1e4,
            "concurrent_runs": 1, "device": "CPU", "evals": {},
        }  # fmt: skip
        (run_dir / "record.json").write_text(json.dumps(record))
    loaded = {r["group"]: r for r in load_records(exp, tmp_path)}
    assert {g: r["lr"] for g, r in loaded.items()} == lrs
    assert loaded["shared_diff-lr3e-3"].get("passes") is None
    assert loaded["no-norm-lr1e-2"]["passes"] == pytest.approx(tokens / chosen["no-norm-lr1e-2"], rel=1e-12)
    md = summarize(exp, tmp_path).read_text()
    groups = json.loads((tmp_path / exp.name / "summary.json").read_text())["groups"]
    assert {g: e["lr"] for g, e in groups.items()} == lrs
    cells = {line.split(" | ")[0][2:]: line.split(" | ") for line in md.splitlines() if line.count("|") == 11}
    assert cells["shared_diff-lr3e-3"][4:6] == ["—", f"{lrs['shared_diff-lr3e-3']:g}"]
    assert cells["no-norm-lr1e-2"][4:6] == [f"{tokens / chosen['no-norm-lr1e-2']:.2f}", f"{lrs['no-norm-lr1e-2']:g}"]
    assert "| passes³ |" in md and "³ passes over the training split: — where the run's run_config.json" in md
    presets = [line for line in md.splitlines() if line.startswith("| shared_diff-lr3e-3 | shared_diff-mini |")]
    assert presets == ["| shared_diff-lr3e-3 | shared_diff-mini | — |"]
    assert "| no-norm-lr1e-2 | shared_diff-mini | model.head_norm=false optim.lr=1e-2 |" in md


def test_summary_wording_follows_the_numbers():
    """The Δ note is worded by the actual seed counts; λ rows of shallower groups are padded to the header;
    small tokens/param keep two significant digits; the MQAR per-run line is rounded."""
    from shareddiff.repro.runner import mqar_line
    from shareddiff.repro.summary import _delta_note, _fmt_ratio, _lambda_table

    assert "with 2 seeds per group, |Δ| below about 4.3 standard errors" in _delta_note([2, 2])
    assert "with 2–3 seeds per group, |Δ| below about 4.3" in _delta_note([3, 2, 3])
    assert "with 3 seeds per group, |Δ| below about 2.8" in _delta_note([3, 3])
    table = _lambda_table({"deep": [0.1, 0.2, 0.3, 0.4], "shallow": [0.5, 0.6]})
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert table[-1].split("|")[1:-1] == [" shallow ", " 0.500 ", " 0.600 ", " — ", " — "]
    assert (_fmt_ratio(0.0112), _fmt_ratio(0.56), _fmt_ratio(10.04)) == ("0.011", "0.56", "10.0")
    assert mqar_line({"accuracy": 0.99765, "accuracy_2x": 0.9931640625}) == "0.998 (2× the length: 0.993)"
    assert mqar_line({"accuracy": 0.5, "accuracy_2x": None}) == "0.500 (2× the length: not measured)"


COMPUTE_ADEQUATE = ("lr_sweep", "compare", "tokens", "ablations", "init")
NOT_RUN_YET = {"init"}  # defined, its runs not yet measured  # the experiments of the budget protocol
HEADLINE = ("transformer-23m", "diff-23m", "shared_diff-23m", "diff_v2-23m", "shared_diff_v2-23m")


def test_compute_adequate_recipes_as_sized_for_their_models(tmp_path):
    """Each run as its trainer sizes it (the shipped tokenizer's vocabulary): torch.compile on, ≥ 5 tokens per
    total parameter, warmup 2–5 % of its own steps; every headline variant at ≥ 10 with three seeds."""
    from shareddiff.data import Tokenizer

    for name in COMPUTE_ADEQUATE:
        exp = load_experiment(name)
        for spec in exp.runs:
            recipe = run_recipe(exp, spec, tmp_path, [], check_data=False)
            params = count_parameters(recipe.model_config(Tokenizer(recipe.data.tokenizer).vocab_size)).total
            run = recipe.sized(params)
            tokens_per_param = run.train.max_steps * run.tokens_per_step() / params
            assert run.train.compile and tokens_per_param >= 5, spec.name
            assert 0.02 <= run.optim.warmup_steps / run.train.max_steps <= 0.05, spec.name
            if name == "compare" and spec.group in HEADLINE:
                assert tokens_per_param >= 10, spec.name
    compare = load_experiment("compare")
    for group in HEADLINE:
        assert sorted(s.seed for s in compare.runs if s.group == group) == [1, 2, 3], group


def _finished_runs(experiment: str) -> list[Path]:
    return sorted(p.parent for p in (REPO / "results/repro" / experiment).glob("*/record.json"))


def test_committed_records_hold_what_each_run_records():
    """Every finished run of the compute-adequate experiments records its budget (tokens per parameter, passes
    over corpus-v2's documented training split), train and held-out loss, λ of every layer at the end and
    along training (DIFF, Shared DIFF), gradient norm along training and tokens/s."""
    stats = json.loads((REPO / "scripts/corpus_v2/stats.json").read_text())
    unique = sum(row["tokens_train"] for row in stats["sources"].values())
    for name in COMPUTE_ADEQUATE:
        runs = _finished_runs(name)
        assert runs or name in NOT_RUN_YET, name
        for run_dir in runs:
            rec = json.loads((run_dir / "record.json").read_text())
            recorded = json.loads((run_dir / "run_config.json").read_text())
            n_layers, train_cfg = recorded["model_config"]["n_layers"], recorded["run"]["train"]
            where = f"{name}/{run_dir.name}"
            assert train_cfg["compile"] and rec["max_steps"] == train_cfg["max_steps"], where
            assert 0.02 <= recorded["run"]["optim"]["warmup_steps"] / rec["max_steps"] <= 0.05, where
            assert rec["train_tokens_unique"] == unique, where
            assert (
                rec["tokens_per_param"] == pytest.approx(rec["tokens"] / rec["params"]) and rec["tokens_per_param"] >= 5
            )
            assert rec["passes"] == pytest.approx(rec["tokens"] / unique), where
            assert rec["tokens_per_s"] > 0 and rec["grad_norm"] > 0, where
            rows = read_metrics(run_dir)
            train_rows, held_out = [r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r]
            assert train_rows[-1]["step"] == held_out[-1]["step"] == rec["max_steps"], where
            assert (rec["train_loss"], rec["val_loss"]) == (train_rows[-1]["loss"], held_out[-1]["val_loss"]), where
            assert rec["evals"]["lm"]["tokens"] > 0 and math.isfinite(rec["evals"]["lm"]["loss"]), where
            assert all(r["grad_norm"] > 0 and r["tokens_per_s"] > 0 and "passes" in r for r in train_rows), where
            if rec["variant"] in ("diff", "shared_diff"):  # one λ per layer (the V2 variants' λ is per token)
                assert all(len(r["lambda"]) == n_layers for r in train_rows), where
                assert rec["lambda"] == train_rows[-1]["lambda"], where
            else:
                assert rec["lambda"] is None and all("lambda" not in r for r in train_rows), where


def test_committed_runs_are_reused_by_their_experiment():
    """`shareddiff reproduce NAME` over the committed records trains nothing: each finished run matches the
    recipe its experiment gives it today (the 400-step experiments on the old corpus too)."""
    from shareddiff.repro.runner import resolve_run

    refused = []
    for name in (*COMPUTE_ADEQUATE, "early_compare", "early_ablations", "early_retrieval"):
        exp = load_experiment(name)
        for run_dir in _finished_runs(name):
            try:
                assert resolve_run(exp, exp.run(run_dir.name), REPO / "results/repro", [])[1]
            except ValueError as err:
                refused.append(f"{name}/{run_dir.name}: {err}")
    assert not refused, "\n".join(refused)


def test_select_best_calls_an_optimum_interior_only_inside_the_swept_range():
    """lr_sweep's rule: the best rate must have a swept rate on either side of it, else the sweep is extended."""
    from shareddiff.repro.summary import select_best

    def group(family, lr, loss):
        return {"family": family, "point": {"optim.lr": lr}, "val_loss": {"mean": loss}, "variant": "diff"}

    losses = {"inside": [2.9, 2.7, 2.6, 2.8], "low": [2.5, 2.6, 2.7, 2.8], "high": [2.9, 2.8, 2.7, 2.6]}
    lrs = [8e-3, 1e-3, 4e-3, 2e-3]  # in no order: the summary sorts them
    groups = {
        f"{family}-lr{lr}": group(family, lr, values[sorted(lrs).index(lr)])
        for family, values in losses.items()
        for lr in lrs
    }
    groups["other"] = {"family": "other", "point": {}, "val_loss": {"mean": 1.0}, "variant": "standard"}
    best = select_best(groups, "optim.lr")
    assert sorted(best) == ["high", "inside", "low"]
    assert {f: (b["best"], b["interior"]) for f, b in best.items()} == {
        "inside": (4e-3, True),
        "low": (1e-3, False),
        "high": (8e-3, False),
    }
    assert best["inside"]["values"] == sorted(lrs)


def test_lambda_plot_turns_symlog_only_when_a_lambda_runs_away(tmp_path, monkeypatch):
    """A layer whose λ ran away (10⁵ in the constant-λ_init ablations) would flatten every other layer on a
    linear axis: the λ plot switches to a symmetric-log axis then, and only then; the table gives such a λ
    with three significant digits."""
    from shareddiff import plots
    from shareddiff.repro.summary import _lambda_table

    rng = np.random.default_rng()
    ordinary = {"a": rng.uniform(0.1, 1.2, 6).tolist(), "b": rng.uniform(-0.4, 1.2, 6).tolist()}
    runaway = {**ordinary, "c": [float(rng.uniform(5e4, 2e5)), *rng.uniform(0.1, 1.0, 5).tolist()]}
    figures = []
    monkeypatch.setattr(plots, "_save", lambda plt, fig, out: figures.append(fig) or out)
    plots.plot_lambdas(ordinary, tmp_path / "l.png")
    plots.plot_lambdas(runaway, tmp_path / "l.png")
    assert figures[0].axes[0].get_yscale() == "linear"
    assert figures[1].axes[0].get_yscale() == "symlog"
    low, high = figures[1].axes[0].get_ylim()
    assert low <= min(-1.0, 2 * min(ordinary["b"])) + 1e-9 and high >= runaway["c"][0]
    table = "\n".join(_lambda_table(runaway))
    assert f"| {runaway['c'][0]:.3g} |" in table and f"| {ordinary['a'][0]:.3f} |" in table


def test_efficiency_tables_name_the_variants_as_the_papers_do():
    """The fit tables say Transformer / DIFF / Shared DIFF, not the config's variant keys."""
    from shareddiff.plots import variant_name
    from shareddiff.repro.summary import _efficiency_rows, efficiency

    assert [variant_name(v) for v in ("standard", "diff", "shared_diff", "diff_v2", "other")] == [
        "Transformer",
        "DIFF",
        "Shared DIFF",
        "DIFF V2",
        "other",
    ]
    groups = _three_point_groups([2.9, 2.6, 2.45])
    result = efficiency(groups, "params_non_embedding", ["standard"], sigma=0.01)
    text = "\n".join(_efficiency_rows(result, "non-embedding parameters"))
    assert "| Transformer |" in text and "| DIFF |" in text and "| standard |" not in text


def test_a_missing_corpus_names_the_build_of_the_recipes_own_corpus(tmp_path):
    """The compute-adequate recipe (docs-16k-digits) is told to build corpus-v2 with that tokenizer; the early
    experiments' recipe (bundled tokenizer) the Debian-docs corpus."""
    missing = tmp_path / "nowhere"
    for name, wanted, unwanted in (
        ("compare", "build_corpus_v2.py build corpus-v2", "build_debian_docs_corpus"),
        ("early_compare", "build_debian_docs_corpus.py", "build_corpus_v2"),
    ):
        exp = load_experiment(name)
        with pytest.raises(ValueError) as err:
            run_recipe(exp, exp.runs[0], tmp_path, [f"data.path={missing}"])
        text = str(err.value)
        assert f"data.path={str(missing)!r} does not exist" in text and wanted in text and unwanted not in text
        assert ("--tokenizer docs-16k-digits" in text) == (name == "compare")
        assert ("(needs `pip install -e '.[corpus]'`)" in text) == (name == "compare")  # the build's own extra


def test_data_docs_build_the_folder_the_recipe_reads():
    """docs/data.md's commands write the prepared corpus-v2 where configs/repro/recipe.toml reads it, a path
    relative to the repository, not one of the machine it was built on."""
    docs = (REPO / "docs/data.md").read_text()
    path = load_recipe(str(REPO / "configs/repro/recipe.toml"), "transformer-23m", []).data.path
    assert path == "data/corpus-v2" and f"--out {path} " in docs and f"--prepared {path} " in docs
    assert "/work/" not in docs


def test_a_one_process_record_is_reused_whatever_the_parallel_section_says(tmp_path):
    """[parallel] (strategy, dtypes) is read by data-parallel runs only: a finished one-process run is reused
    when today's defaults there differ, and still refused when a field it trained with differs."""
    from shareddiff.repro.runner import check_recorded_recipe
    from shareddiff.train.trainer import RUN_CONFIG

    exp = load_experiment("compare")
    run = load_recipe(str(exp.recipe), "transformer-8m", ["optim.lr=2e-3"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recorded = run.to_dict()
    recorded["parallel"] |= {"param_dtype": "fp32", "strategy": "fsdp"}
    for world, ok in ((1, True), (2, False)):
        (run_dir / RUN_CONFIG).write_text(json.dumps({"run": recorded, "world_size": world}))
        if ok:
            check_recorded_recipe(run, run_dir)
        else:
            with pytest.raises(ValueError, match=re.escape("parallel.param_dtype: recorded 'fp32'")):
                check_recorded_recipe(run, run_dir)
    recorded["optim"]["lr"] = 1e-3
    (run_dir / RUN_CONFIG).write_text(json.dumps({"run": recorded, "world_size": 1}))
    with pytest.raises(ValueError, match=re.escape("optim.lr: recorded 0.001")):
        check_recorded_recipe(run, run_dir)


def test_list_shows_each_runs_budget_as_the_trainer_sizes_it(capsys):
    """`reproduce EXP --list` gives every run's lr, tokens per parameter, steps and warmup: here recomputed from
    the model's own parameter count (built on the meta device) and the recipe's tokens per step."""
    from shareddiff.model import build_model

    assert main(["reproduce", "tokens", "--list"]) in (0, None)
    text = capsys.readouterr().out
    exp = load_experiment("tokens")
    for spec in exp.runs:
        run = run_recipe(exp, spec, REPO / "results/repro", [], check_data=False)
        config = run.model_config(vocab_size=16384)
        n_params = sum(p.numel() for p in build_model(config, device="meta").parameters())
        steps = math.ceil(15 * n_params / (64 * 1024))
        warmup = math.ceil(0.03 * steps)
        row = next(line for line in text.splitlines() if line.startswith(spec.name + " "))
        cells = row.split()
        assert cells[2] == "0.002" and cells[4] == f"{n_params:,}" and cells[6] == f"{steps:,}", row
        assert cells[7] == f"{warmup:,}" and cells[-2] == f"{steps * 64 * 1024:,}", row
        assert float(cells[5]) == pytest.approx(steps * 65536 / n_params, abs=0.005) and float(cells[5]) >= 15


def test_an_included_run_not_yet_run_is_named_with_the_out_given(tmp_path, monkeypatch):
    """--summary-only of an experiment whose included runs are missing: the command to make them carries --out
    when it is not the default (else they would be made where this summary does not look)."""
    out = tmp_path / "elsewhere"
    with pytest.raises(ValueError) as err:
        reproduce("ablations", out=str(out), summary_only=True)
    wanted = "run `shareddiff reproduce compare --run shared_diff-23m-s1"
    assert f"{wanted} --out {out}` first" in str(err.value)
    monkeypatch.chdir(tmp_path)  # the default results/repro, here empty
    with pytest.raises(ValueError) as err:
        reproduce("ablations", summary_only=True)
    assert f"{wanted}` first" in str(err.value)


def test_list_with_run_lists_that_run_and_refuses_an_unknown_one(capsys):
    assert main(["reproduce", "compare", "--run", "nope-s1", "--list"]) == 2
    assert "experiment 'compare' has no run 'nope-s1'; its runs are: transformer-23m-s1," in capsys.readouterr().err
    assert main(["reproduce", "compare", "--run", "diff-8m-s1", "--run", "diff-13m-s1", "--list"]) in (0, None)
    rows = capsys.readouterr().out.split("---\n")[-1].splitlines()
    assert [row.split()[0] for row in rows] == ["diff-8m-s1", "diff-13m-s1"]


def test_list_names_the_runs_included_from_other_experiments(tmp_path, capsys):
    """`reproduce tokens --list`: its own runs, then each included run, finished (a record under --out) or missing."""
    (tmp_path / "compare" / "diff-23m-s1").mkdir(parents=True)
    (tmp_path / "compare" / "diff-23m-s1" / "record.json").write_text("{}")
    assert main(["reproduce", "tokens", "--list", "--out", str(tmp_path)]) in (0, None)
    text = capsys.readouterr().out
    included = text.split(f"included from other experiments (its summary reads their records under {tmp_path}):\n")
    assert len(included) == 2 and "shared_diff-23m-tpp15-s1" in included[0]
    assert included[1].splitlines() == [
        f"  {ref} ({'finished' if ref == 'compare/diff-23m-s1' else 'missing'})"
        for ref in load_experiment("tokens").summary["include"]
    ]


def test_run_patterns_select_a_piece_of_a_grid(capsys):
    """--run takes shell patterns as well as names (a large grid such as mqar runs in pieces): one MQAR cell is
    its 36 runs (3 variants × 3 widths × 4 rates), names and patterns combine without repeats, in the
    experiment's order, and a pattern that matches nothing is refused with the run names."""
    exp = load_experiment("mqar")
    cell = exp.select(["*-n64-p4-*"])
    assert len(exp.runs) == 144 and len(cell) == 36
    assert {s.name.split("-n64")[0] for s in cell} == {"transformer", "diff", "shared_diff"}
    assert all("-n64-p4-" in s.name for s in cell)
    first = exp.runs[0].name
    both = exp.select([first, "transformer-n64-p4-*"])
    assert [s.name for s in both] == [s.name for s in exp.runs if s.name.startswith("transformer-n64-p4-")]
    assert exp.select(None) == exp.runs
    with pytest.raises(ValueError, match=r"no run matching '\*-n1024-\*'; its runs are: transformer-n64"):
        exp.select(["*-n1024-*"])
    assert main(["reproduce", "mqar", "--run", "shared_diff-n512-*-d_model256-*", "--list"]) in (0, None)
    rows = capsys.readouterr().out.split("---\n")[-1].splitlines()
    assert len(rows) == 4 and all(row.startswith("shared_diff-n512-p64-lr") for row in rows)


def test_run_patterns_that_select_nothing_say_why():
    """A list in one --run, quotes kept inside a pattern, and a pattern that matches nothing are each named; a large
    grid's error lists its first 20 runs and the command that lists them all, not all 144."""
    exp = load_experiment("mqar")
    for bad, why in (
        ("*-n64-p4-*,*-n128-*", "give each name or pattern its own --run"),
        ("*-n64-p4-* *-n128-*", "give each name or pattern its own --run"),
        ("transformer-n64-p4-lr0.001-d_model64-s1,diff-n64-p4-lr0.001-d_model64-s1", "its own --run"),
        ("'*-n64-p4-*'", "its quotes are part of it"),
        ('"transformer-n64-p4-lr0.001-d_model64-s1"', "its quotes are part of it"),
    ):
        with pytest.raises(ValueError, match=why):
            exp.select([bad])
    with pytest.raises(ValueError) as err:
        exp.select(["*-n1024-*"])
    message = str(err.value)
    assert "its own --run" not in message and "quotes" not in message
    assert message.count("-s1") == 20 and message.endswith("(144 runs; `shareddiff reproduce mqar --list` lists them)")
    short = load_experiment("retrieval")
    with pytest.raises(ValueError, match=r"no run 'x'; its runs are: transformer-s1, diff-s1, shared_diff-s1$"):
        short.run("x")  # a short list stays whole


def _inside_and_clear(fig) -> None:
    """Every legend of ``fig`` lies inside the figure and over no axes' data area, except a legend inside its own
    axes, which may lie there where it covers none of that axes' lines (sampled every pixel along each segment,
    markers included) or bands."""
    fig.canvas.draw()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert legends
    page = fig.bbox
    for legend in legends:
        box = legend.get_window_extent()
        assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1 and page.y0 - 1 <= box.y0 and box.y1 <= page.y1 + 1
        for ax in fig.axes:
            frame = ax.get_window_extent()
            within = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if legend is not ax.get_legend() or not within:
                assert not box.overlaps(frame), (legend, ax.get_title())
                continue
            for line in ax.lines:
                xy = line.get_transform().transform(line.get_xydata())
                pad = line.get_markersize() * fig.dpi / 72 / 2 + line.get_linewidth() * fig.dpi / 72 / 2
                near = box.padded(pad)
                for a, b in itertools.pairwise(xy):
                    t = np.linspace(0, 1, int(np.hypot(*(b - a))) + 2)[:, None]
                    assert not near.count_contains(a + t * (b - a)), (line.get_label(), ax.get_title())
            grid = np.stack(np.meshgrid(np.linspace(box.x0, box.x1, 20), np.linspace(box.y0, box.y1, 20)), -1)
            for band in ax.collections:
                for path in band.get_paths():
                    inside = path.contains_points(grid.reshape(-1, 2), transform=band.get_transform())
                    assert not inside.any(), (band, ax.get_title())


def _grid_names() -> list[str]:
    """36 group names of a sweep: 3 cells × 4 learning rates × 3 widths, as the MQAR grid names them."""
    return [
        f"diff-n{n}-p{n // 16}-lr{lr:g}-d_model{d} (n=1)"
        for n in (64, 128, 256)
        for lr in (3e-4, 1e-3, 3e-3, 1e-2)
        for d in (64, 128, 256)
    ]


def test_name_factors_merge_fields_that_vary_together_and_order_levels_by_value():
    """The shared structure of sweep names: fields alike everywhere are left out, the sequence length and pair
    count (always together) are one factor, and levels sort by their numbers, not as strings."""
    from shareddiff import plots

    names = _grid_names()
    factors = plots.name_factors(names)
    assert [sorted(set(f.values()), key=plots._level_key) for f in factors] == [
        ["n64-p4", "n128-p8", "n256-p16"],
        ["lr0.0003", "lr0.001", "lr0.003", "lr0.01"],
        ["d_model64", "d_model128", "d_model256"],
    ]
    assert factors[0][names[-1]] == "n256-p16" and factors[2][names[-1]] == "d_model256"
    assert plots.name_factors(["a-b", "c"]) is None  # no shared structure
    grid = plots.factor_grid(names)
    assert grid["columns"] == ["n64-p4", "n128-p8", "n256-p16"] and grid["rows"] == [""]
    assert grid["legend"][1] == ["lr0.0003", "lr0.001", "lr0.003", "lr0.01", "d_model64", "d_model128", "d_model256"]
    assert grid["title"] == "colour: lr\nline: d_model"
    styles = {(s["color"], s["ls"], s["marker"]) for s in grid["style"].values()}
    assert len(styles) == 12  # every (rate, width) of a panel drawn apart


def test_many_group_loss_curves_split_into_panels_with_one_legend_beside(tmp_path, saved_figures, recwarn):
    """36 groups per panel (the MQAR grid): one row per cell, a single legend naming the encoding that lies inside
    the figure and over no axes, no tight-layout warning; a sweep without shared structure puts its legend beside
    the axes, also inside the figure."""
    from shareddiff import plots

    rng = np.random.default_rng()
    names, dirs = _grid_names(), {}
    for variant in ("standard", "diff"):
        for name in names:
            label = name.replace("diff", variant, 1)
            folder = tmp_path / label.split(" ")[0]
            folder.mkdir()
            rows = [{"step": s, "tokens": s * 64, "val_loss": float(rng.uniform(1, 4))} for s in (100, 200, 300)]
            (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
            dirs[label] = [folder]
    panels = {g: g.split("-")[0] for g in dirs}
    plots.plot_group_curves(dirs, tmp_path / "grid.png", "x", variants=panels, panels=panels)
    fig = saved_figures[-1]
    assert len(fig.axes) == 2 * 3 and len(fig.legends) == 1
    assert {ax.get_title() for ax in fig.axes} == {
        f"{v} · n{n}-p{n // 16}" for v in ("Transformer", "DIFF") for n in (64, 128, 256)
    }
    assert all(len(ax.lines) == 12 for ax in fig.axes)
    _inside_and_clear(fig)
    unstructured = {f"run{i}" if i % 2 else f"run-{i}" for i in range(24)}
    plots.plot_group_curves({g: next(iter(dirs.values())) for g in sorted(unstructured)}, tmp_path / "u.png", "x")
    assert len(saved_figures[-1].axes[0].get_legend().get_texts()) == 24
    _inside_and_clear(saved_figures[-1])
    assert not [w for w in recwarn if "layout" in str(w.message).lower()]


def test_few_group_loss_curve_legends_cover_no_curve(tmp_path, saved_figures, recwarn):
    """9 groups in two panels (6 and 3, as norm_lr_cpu): six curves spread over the whole left panel leave its
    legend no clear corner inside, so it goes below the panel; every legend lies inside the figure and covers no
    curve or band, and every curve is named."""
    from shareddiff import plots

    rng = np.random.default_rng()
    dirs, panels = {}, {}
    starts = {"shared_diff": np.linspace(6.75, 5.8, 6), "standard": np.array([6.5, 6.2, 6.35])}
    for variant, levels in starts.items():
        for i, start in enumerate(levels):
            group = f"{variant}-lr{i} (n={1 + i % 2})"
            for seed in range(1 + i % 2):  # two seeds: a min–max band
                folder = tmp_path / f"{variant}-{i}-s{seed}"
                folder.mkdir()
                drop = rng.uniform(0.5, 0.7, 2).cumsum() + rng.uniform(0, 0.01)
                losses = [start, *(start - drop)]
                rows = [
                    {"step": s, "tokens": s * 4096, "val_loss": float(v)}
                    for s, v in zip((50, 100, 150), losses, strict=True)
                ]
                (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
                dirs.setdefault(group, []).append(folder)
            panels[group] = variant
    plots.plot_group_curves(dirs, tmp_path / "curves.png", "x", variants=panels, panels=panels)
    fig = saved_figures[-1]
    assert len(fig.axes) == 2 and [len(ax.lines) for ax in fig.axes] == [6, 3]
    assert [len(ax.get_legend().get_texts()) for ax in fig.axes] == [6, 3]
    left, frame = fig.axes[0].get_legend().get_window_extent(), fig.axes[0].get_window_extent()
    assert left.y1 <= frame.y0  # below the crowded panel
    _inside_and_clear(fig)
    assert not [w for w in recwarn if "layout" in str(w.message).lower()]


def test_many_group_lambda_plot_splits_into_panels_with_integer_layer_ticks(tmp_path, saved_figures, recwarn):
    """72 groups of a 2-layer model (2 variants × 36): a panel per variant (columns) and cell (rows), integer
    layer ticks only, one legend inside the figure and over no axes, no layout warning; a few groups keep the
    single axes with its legend inside, also with integer ticks."""
    from shareddiff import plots

    rng = np.random.default_rng()
    lambdas = {
        name.replace("diff", variant, 1).split(" ")[0]: rng.uniform(-1, 1, 2).tolist()
        for variant in ("diff", "shared_diff")
        for name in _grid_names()
    }
    lambdas["shared_diff-n64-p4-lr0.01-d_model256"] = [0.5, -3e5]  # a runaway λ: symlog in every panel
    plots.plot_lambdas(lambdas, tmp_path / "lambda.png")
    fig = saved_figures[-1]
    assert len(fig.axes) == 6 and len(fig.legends) == 1
    assert fig.axes[0].get_title() == "DIFF · n64-p4" and fig.axes[1].get_title() == "Shared DIFF · n64-p4"
    assert all(ax.get_yscale() == "symlog" for ax in fig.axes)
    _inside_and_clear(fig)
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == [1.0, 2.0]
    plots.plot_lambdas({"a": [0.2, 0.4], "b": [0.3, 0.1]}, tmp_path / "few.png")
    ax = saved_figures[-1].axes[0]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [1.0, 2.0] and len(ax.get_legend().get_texts()) == 2
    assert not [w for w in recwarn if "layout" in str(w.message).lower()]


def test_mqar_rates_plot_of_one_variant_keeps_its_title_inside_the_figure(tmp_path, saved_figures):
    """The narrowest rates figure (one variant, two cells, as mqar_budget): the two-line title, every panel
    title and the bold/plain accuracy texts lie inside the figure, and each panel counts its settings ≥ 0.99."""
    from shareddiff import plots

    rng = np.random.default_rng()
    cells = []
    for n, p in ((64, 4), (128, 8)):
        for d in (64, 128):
            lrs = {f"{lr:g}": float(rng.uniform(0, 1)) for lr in (3e-4, 1e-3, 3e-3, 1e-2)}
            lrs["0.001"] = 0.995  # at least one setting solves every cell
            cells.append({"variant": "standard", "seq_len": n, "pairs": p, "d_model": d, "lrs": lrs,
                          "lr_seeds": dict.fromkeys(lrs, 1)})  # fmt: skip
    plots.plot_mqar_rates({"cells": cells, "variants": ["standard"]}, tmp_path / "rates.png", "mqar_budget")
    fig = saved_figures[-1]
    fig.canvas.draw()
    page = fig.bbox
    texts = [fig._suptitle, *(ax.title for ax in fig.axes), *(t for ax in fig.axes for t in ax.texts)]
    for text in texts:
        box = text.get_window_extent()
        assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1 and box.y1 <= page.y1 + 1, text.get_text()
    for ax, n in zip(fig.axes[:2], (64, 128), strict=True):
        solved = sum(v >= 0.99 for c in cells if c["seq_len"] == n for v in c["lrs"].values())
        assert ax.get_title() == f"Transformer: {solved} of 8 ≥ 0.99"
        assert sum(t.get_fontweight() == "bold" for t in ax.texts) == solved


def test_the_needle_probe_summary_finds_first_crossings_and_last_values(tmp_path):
    from shareddiff.plots import plot_needle_probe
    from shareddiff.repro.summary import _attention_lines, _probe_lines, needle_probe_entry

    rng = np.random.default_rng()
    runs = []
    for seed in range(2):
        run = tmp_path / f"r{seed}"
        run.mkdir()
        exact = np.sort(rng.uniform(0, 1, 6))
        rows = [{"step": 10 * (i + 1), "loss": 3.0, "tokens": 640 * (i + 1)} for i in range(6)]
        for i, a in enumerate(exact):  # the probe on every other logged line, as the trainer writes it
            rows.append(
                {
                    "step": 10 * (i + 1),
                    "val_loss": 3.0,
                    "tokens": 640 * (i + 1),
                    "needle_accuracy": float(a),
                    "needle_token_accuracy": float(min(1.0, a + 0.1)),
                    "needle_answer_logprob": float(-5 * (1 - a)),
                }
            )
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        runs.append((run, exact))
    entry = needle_probe_entry([r for r, _ in runs])
    for got, (_, exact) in zip(entry["runs"], runs, strict=True):
        for t in (0.5, 0.9):
            hits = [i for i, a in enumerate(exact) if a >= t]
            want = None if not hits else {"step": 10 * (hits[0] + 1), "tokens": 640 * (hits[0] + 1)}
            assert got["first"][str(t)] == want
        assert got["last"]["needle_accuracy"] == pytest.approx(exact[-1])
    last = [exact[-1] for _, exact in runs]
    assert entry["last"]["needle_accuracy"]["mean"] == pytest.approx(np.mean(last))
    assert entry["last"]["needle_accuracy"]["std"] == pytest.approx(np.std(last, ddof=1))
    md = "\n".join(_probe_lines({"t": entry}))
    assert "first step ≥ 0.9" in md and "needle_probe.png" in md
    assert ("never" in md) == any(e["first"]["0.9"] is None for e in entry["runs"])
    empty = tmp_path / "none"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 3.0, "tokens": 64}) + "\n")
    assert needle_probe_entry([runs[0][0], empty]) is None  # a run without the probe: no entry
    png = plot_needle_probe({"t": [r for r, _ in runs]}, tmp_path / "probe.png", "title", {"t": "standard"})
    assert png.stat().st_size > 5000
    groups = {
        "t": {
            "attention": {
                k: {"mean": v, "std": 0.0, "n": 1}
                for k, v in {"answer": 0.02, "noise": 0.44, "question": 0.54, "total": 1.0}.items()
            }
        },
        "d": {
            "attention": {
                k: {"mean": v, "std": 0.0, "n": 1}
                for k, v in {"answer": 0.001, "noise": -0.005, "question": 0.464, "total": 0.46}.items()
            },
            "lambda": [0.2, 0.4, 0.6],
        },
    }
    table = _attention_lines(groups)
    assert (
        "| d | 0.001 | -0.005 | 0.464 | 0.460 | 0.400 |" in table
        and "| t | 0.020 | 0.440 | 0.540 | 1.000 | — |" in table
    )


def test_list_sizes_the_runs_with_the_overrides_and_jobs_below_one_is_refused(capsys):
    """`reproduce NAME --list OVERRIDES` lists the runs as that command would train them; --jobs 0 is named."""
    args = ["reproduce", "mqar_seeds", "--run", "diff_v2-*-s2", "--list"]
    assert main(args) in (0, None)
    (default,) = capsys.readouterr().out.split("---\n")[-1].splitlines()
    assert main([*args, "train.max_steps=30", "model.d_model=32"]) in (0, None)
    (small,) = capsys.readouterr().out.split("---\n")[-1].splitlines()
    assert default.split()[4:7] == ["5,933,312", "71.80", "6,500"]
    assert small.split()[6] == "30" and small.split()[4] != "5,933,312"
    assert main(["reproduce", "mqar_seeds", "--jobs", "0"]) == 2
    assert "error: --jobs 0: runs at once must be ≥ 1" in capsys.readouterr().err
