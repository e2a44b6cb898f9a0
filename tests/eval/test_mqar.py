"""MQAR evaluation: scores against a hand computation, the trainer's MQAR source and probe, the
checkpoint evaluation, the grid summary, and (slow) a tiny Transformer that learns the task."""

import itertools
import json
import logging
import math
from typing import ClassVar

import pytest
import torch

from shareddiff import ModelConfig, build_model
from shareddiff.cli import main
from shareddiff.config import MQARConfig, load_recipe
from shareddiff.data.loader import IGNORE
from shareddiff.data.mqar import mqar_eval_set
from shareddiff.eval.commands import mqar_results
from shareddiff.eval.mqar import mqar_run_record, mqar_summary, steps_to
from shareddiff.train import train
from shareddiff.train.metrics import read_metrics
from shareddiff.train.probes import MQARProbe, mqar_scores


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits are given: row i of the input gets ``logits[i]``."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x[:, 0]]


@pytest.mark.parametrize(("dtype", "rel"), [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_scores_are_taken_at_the_answers_only(seed, dtype, rel):
    logits = torch.randn(3, 5, 6, dtype=dtype)
    inputs = torch.arange(3)[:, None].expand(3, 5).contiguous()  # row i → logits[i]
    targets = torch.full((3, 5), IGNORE)
    answers = [(0, 1, 2), (0, 4, 5), (1, 0, 3), (2, 2, 0), (2, 3, 4)]  # (row, position, value)
    for b, t, v in answers:
        targets[b, t] = v
    logits[2, 2, 0] = logits[2, 2].max() + 1  # at least one answer is right
    scores = mqar_scores(FixedLogits(logits), inputs, targets, batch_size=2)
    nll = [-(logits[b, t].double().log_softmax(-1)[v]).item() for b, t, v in answers]
    hits = [int(logits[b, t].argmax()) == v for b, t, v in answers]
    assert scores["answers"] == 5
    assert scores["loss"] == pytest.approx(sum(nll) / 5, rel=rel)
    assert scores["accuracy"] == sum(hits) / 5 and scores["accuracy"] > 0


def test_probe_evaluates_twice_the_length_when_it_fits():
    config = MQARConfig(vocab_size=64, pairs=4, eval_samples=8)
    model = build_model(ModelConfig(attention="standard", n_heads=4, vocab_size=64, max_seq_len=128))
    record = MQARProbe(config, 64, 128)(model, batch_size=4)
    assert set(record) == {"val_loss", "mqar_loss", "mqar_accuracy", "mqar_loss_2x", "mqar_accuracy_2x"}
    assert record["val_loss"] == record["mqar_loss"] and 0 <= record["mqar_accuracy"] <= 1
    short = MQARProbe(config, 64, 100)
    assert "_2x" not in short.sets and "set model.max_seq_len=128" in short.skipped
    x, _ = mqar_eval_set(config, 64, 8)
    assert torch.equal(x, mqar_eval_set(config, 64, 8)[0])  # fixed: the same set for every run


def mqar_run(tmp_path, *overrides: str):
    base = [
        "data.source=mqar",
        "data.seq_len=64",
        "mqar.vocab_size=64",
        "mqar.pairs=4",
        "mqar.eval_samples=32",
        "model.max_seq_len=128",
        "train.device=cpu",
        "train.micro_batch=16",
        "train.log_every=2",
        f"train.out_dir={tmp_path / 'run'}",
        "checkpoint.every=1000",
    ]
    return load_recipe(None, "transformer-mqar", base + list(overrides))


def test_trainer_records_mqar_accuracy_along_training(tmp_path, caplog):
    run = mqar_run(tmp_path, "train.max_steps=6", "train.eval_every=3", "optim.warmup_steps=2")
    with caplog.at_level(logging.INFO, logger="shareddiff.train.trainer"):
        result = train(run, progress=False)
    evals = [r for r in read_metrics(run.train.out_dir) if "mqar_accuracy" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(r["val_loss"] == r["mqar_loss"] and "mqar_accuracy_2x" in r and "val_ppl" not in r for r in evals)
    assert result.val_loss == evals[-1]["mqar_loss"]
    last = evals[-1]  # the console says what the run is for: its accuracy, at N and 2N
    line = f"step 6: val loss {last['val_loss']:.4f}, MQAR accuracy {last['mqar_accuracy']:.3f} (2× the length: "
    assert line + f"{last['mqar_accuracy_2x']:.3f})" in caplog.messages
    assert math.log(64) - 1.0 < evals[0]["mqar_loss"] < math.log(64) + 1.0  # near chance after 3 steps
    saved = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert saved["model_config"]["vocab_size"] == 64  # the task's vocabulary, not the tokenizer's
    result = mqar_results(str(tmp_path / "run"), None, 16, 0, "cpu", None)
    assert [r["seq_len"] for r in result["rows"]] == [64, 128] and result["pairs"] == 4
    assert result["rows"][0]["answers"] == 16 * 4
    saved_result = json.loads((tmp_path / "run" / "eval" / "mqar.json").read_text())
    assert saved_result["rows"] == result["rows"] and saved_result["step"] == 6  # which checkpoint it measured
    assert saved_result["task"] == {k: v for k, v in saved["run"]["mqar"].items() if k != "eval_samples"}
    line = main(["eval", "mqar", str(tmp_path / "run"), "--lengths", "64", "--samples", "8", "--device", "cpu"])
    assert line == 0
    record = mqar_run_record(tmp_path / "run")
    assert (record["variant"], record["d_model"], record["seq_len"], record["pairs"]) == ("standard", 64, 64, 4)
    assert record["curve"] == [(r["step"], r["mqar_accuracy"]) for r in evals]


@pytest.fixture(scope="module")
def tiny_mqar_run(tmp_path_factory):
    """A run of 1 step on MQAR (vocabulary 64), with its checkpoint."""
    tmp_path = tmp_path_factory.mktemp("mqar")
    train(mqar_run(tmp_path, "train.max_steps=1", "optim.warmup_steps=0", "train.eval_every=1"), progress=False)
    return tmp_path / "run"


@pytest.mark.parametrize(
    ("verb", "args"),
    [
        (["eval", "lm"], []),
        (["generate"], ["--prompt", "Hello"]),
        (["eval", "needle"], []),
        (["eval", "attention"], []),
        (["eval", "icl"], ["--dataset", "trec"]),
    ],
)
def test_text_verbs_refuse_an_mqar_run_and_name_eval_mqar(tiny_mqar_run, capsys, verb, args):
    """The run's embedding holds 64 synthetic tokens: the bundled tokenizer's ids would index past it."""
    run = str(tiny_mqar_run)
    assert main([*verb, run, *args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{run} was trained on MQAR (synthetic vocabulary 64), not on text" in err
    assert f"use `shareddiff eval mqar {run}`" in err


class ScriptedProbe:
    """MQARProbe's stand-in: the accuracies of ``script``, one per evaluation in order (loss 1 − accuracy)."""

    script: ClassVar[list[float]] = []

    def __init__(self, *args) -> None:
        self.skipped = ""

    def __call__(self, model, batch_size, autocast=None) -> dict[str, float]:
        accuracy = self.script.pop(0)
        return {"val_loss": 1 - accuracy, "mqar_loss": 1 - accuracy, "mqar_accuracy": accuracy}


@pytest.fixture
def scripted(monkeypatch):
    """Set the accuracies the trainer's MQAR evaluations will see: ``scripted(0.3, 0.995, ...)``."""
    from shareddiff.train import trainer

    def script(*accuracies: float) -> None:
        monkeypatch.setattr(trainer, "MQARProbe", type("Probe", (ScriptedProbe,), {"script": list(accuracies)}))

    return script


MQAR_ARGS = ["mqar.vocab_size=64", "mqar.pairs=4", "mqar.eval_samples=32"]  # mqar_run's, for the command line
EARLY_STOP = ["train.early_stop_accuracy=0.99", "train.early_stop_patience=2", "train.eval_every=2"]


def test_early_stop_ends_a_solved_run_and_says_when_and_why(tmp_path, scripted, capsys):
    """Evaluations at steps 2, 4, ...: 0.995 at step 4 then 0.97 resets the count; 0.99 (at the threshold) and
    0.999 at steps 8 and 10 are two in a row, so the run of 20 steps ends at step 10 with a checkpoint there;
    the steps to 50 % / 99 % are those of the curve (step 4), the final accuracy the stop's."""
    scripted(0.3, 0.995, 0.97, 0.99, 0.999)
    run = mqar_run(tmp_path, "train.max_steps=20", "optim.warmup_steps=2", *EARLY_STOP)
    result = train(run, progress=False)
    assert result.step == 10 and result.checkpoint.name == "step_00000010"
    stop = result.early_stop
    assert (stop["step"], stop["max_steps"], stop["accuracies"]) == (10, 20, [0.99, 0.999])
    assert stop["reason"] == "mqar_accuracy ≥ 0.99 at 2 consecutive evaluations (steps 8, 10)"
    rows = read_metrics(run.train.out_dir)
    assert rows[-1] == {"step": 10, "tokens": 10 * 16 * 64, "early_stop": stop}
    assert max(r["step"] for r in rows if "loss" in r) == 10
    assert all(r["eval_s"] > 0 for r in rows if "mqar_accuracy" in r)
    state = json.loads((result.checkpoint / "state.json").read_text())
    assert state["step"] == 10 and state["early_stop"] == stop
    record = mqar_run_record(run.train.out_dir)
    assert record["curve"] == [(2, 0.3), (4, 0.995), (6, 0.97), (8, 0.99), (10, 0.999)]
    assert (record["steps"], record["accuracy"], record["early_stop"]) == (10, 0.999, stop)
    best = mqar_summary([record])["best"][0]
    assert (best["steps_to_50"], best["steps_to_99"], best["stopped_early"], best["accuracy"]) == (4, 4, 10, 0.999)
    again = train(run, resume=True, progress=False)  # the stop is the run's end: nothing to resume
    assert again.already_complete and again.step == 10 and again.early_stop == stop
    capsys.readouterr()
    from tests.train.conftest import recipe_args

    assert main(["train", "--no-progress", "--resume", *recipe_args(run), *MQAR_ARGS]) == 0
    out = capsys.readouterr().out
    assert "already complete: step 10 (stopped early of 20: mqar_accuracy ≥ 0.99 at 2 consecutive" in out
    assert out.rstrip().endswith("to train further, set train.early_stop_accuracy=0")


def test_early_stop_counts_across_a_resume(tmp_path, scripted, monkeypatch):
    """Cut off in step 5 after 0.995 at step 4 (checkpoint at 4): the resumed run continues the count and stops
    at step 6, the second evaluation in a row ≥ 0.99."""
    from shareddiff.data.mqar import MQARLoader
    from shareddiff.train.trainer import TrainingInterrupted

    real_batch = MQARLoader.batch

    def cut(self, step, *args, **kwargs):
        if step == 4:
            raise KeyboardInterrupt
        return real_batch(self, step, *args, **kwargs)

    scripted(0.5, 0.995)
    run = mqar_run(tmp_path, "train.max_steps=20", "optim.warmup_steps=2", "checkpoint.every=4", *EARLY_STOP)
    monkeypatch.setattr(MQARLoader, "batch", cut)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 4 of 20; last checkpoint step 4"):
        train(run, progress=False)
    monkeypatch.setattr(MQARLoader, "batch", real_batch)
    scripted(0.999)
    result = train(run, resume=True, progress=False)
    assert result.step == 6 and result.early_stop["reason"].endswith("(steps 4, 6)")


def test_a_stopped_run_continued_to_max_steps_no_longer_counts_as_stopped(tmp_path, scripted):
    """Stopped at step 10 of 20, then resumed with early stop off: it trains to step 20, its record and summary
    report no early stop, and its last checkpoint keeps no count of solved evaluations."""
    scripted(0.3, 0.995, 0.97, 0.99, 0.999)
    run = mqar_run(tmp_path, "train.max_steps=20", "optim.warmup_steps=2", *EARLY_STOP)
    assert train(run, progress=False).early_stop["step"] == 10
    scripted(0.999, 0.999, 0.999, 0.999, 0.999)
    off = mqar_run(tmp_path, "train.max_steps=20", "optim.warmup_steps=2", "train.eval_every=2")
    result = train(off, resume=True, progress=False)
    assert result.step == 20 and result.early_stop is None
    state = json.loads((result.checkpoint / "state.json").read_text())
    assert state["step"] == 20 and state["solved_evals"] == [] and state["early_stop"] is None
    record = mqar_run_record(run.train.out_dir)
    assert record["steps"] == 20 and record["early_stop"] is None
    assert mqar_summary([record])["best"][0]["stopped_early"] is None


@pytest.mark.parametrize(
    ("stricter", "script", "stop_step", "steps"),
    [
        ("train.early_stop_patience=3", (0.995,), 12, "8, 10, 12"),  # 0.99, 0.999 at 8, 10 are two of three
        ("train.early_stop_accuracy=0.999", (0.9995,), 12, "10, 12"),  # only step 10's 0.999 meets 0.999
        ("train.early_stop_accuracy=0.9999", (0.99995, 0.5, 0.99995, 0.99999), 18, "16, 18"),  # 0.5 resets
    ],
)
def test_resume_with_a_stricter_criterion_trains_on_until_it_is_met(
    tmp_path, scripted, stricter, script, stop_step, steps
):
    scripted(0.3, 0.995, 0.97, 0.99, 0.999)
    run = mqar_run(tmp_path, "train.max_steps=20", "optim.warmup_steps=2", *EARLY_STOP)
    assert train(run, progress=False).step == 10
    scripted(*script)
    strict = mqar_run(tmp_path, "train.max_steps=20", "optim.warmup_steps=2", *EARLY_STOP, stricter)
    result = train(strict, resume=True, progress=False)
    assert not result.already_complete and result.step == stop_step
    assert result.early_stop["reason"].endswith(f"consecutive evaluations (steps {steps})")
    assert mqar_run_record(run.train.out_dir)["early_stop"] == result.early_stop


def test_resume_with_a_criterion_the_recorded_evaluations_meet_stays_complete(tmp_path, scripted):
    scripted(0.3, 0.995, 0.97, 0.99, 0.999)
    run = mqar_run(tmp_path, "train.max_steps=20", "optim.warmup_steps=2", *EARLY_STOP)
    stop = train(run, progress=False).early_stop
    looser = mqar_run(
        tmp_path, "train.max_steps=20", "optim.warmup_steps=2", *EARLY_STOP, "train.early_stop_accuracy=0.9"
    )
    again = train(looser, resume=True, progress=False)
    assert again.already_complete and again.step == 10 and again.early_stop == stop


@pytest.mark.parametrize(
    ("accuracies", "why"),
    [((0.98, 0.995, 0.9, 0.999), "never twice in a row"), ((0.5, 0.7, 0.995, 0.999), "twice only at the last step")],
)
def test_a_run_not_solved_before_its_end_runs_to_max_steps(tmp_path, scripted, accuracies, why):
    scripted(*accuracies)
    result = train(mqar_run(tmp_path, "train.max_steps=8", "optim.warmup_steps=2", *EARLY_STOP), progress=False)
    assert result.step == 8 and result.early_stop is None, why
    assert not [r for r in read_metrics(tmp_path / "run") if "early_stop" in r]
    assert mqar_run_record(tmp_path / "run")["early_stop"] is None


def test_a_real_run_below_the_threshold_trains_all_its_steps(tmp_path):
    """A tiny model after 6 steps is near chance (1/32 of the 32 value tokens), far below 0.99."""
    run = mqar_run(tmp_path, "train.max_steps=6", "optim.warmup_steps=2", *EARLY_STOP)
    result = train(run, progress=False)
    evals = [r for r in read_metrics(run.train.out_dir) if "mqar_accuracy" in r]
    assert result.step == 6 and result.early_stop is None and [r["step"] for r in evals] == [2, 4, 6]
    assert max(r["mqar_accuracy"] for r in evals) < 0.5


@pytest.mark.parametrize(("unit", "mode"), [("model", "default"), ("block", "max-autotune-no-cudagraphs")])
def test_a_compiled_mqar_run_compiles_once_and_matches_eager(tmp_path, monkeypatch, unit, mode):
    """train.compile with either parallel.compile_unit: one graph for the whole run (training has one shape;
    the evaluations at N and 2N, 40 sequences in batches of 16, run eager and add none), and the eager run's
    losses and accuracies (≤ 1e-5); train.compile_mode reaches torch.compile. The "aot_eager" backend (it
    takes no mode): Dynamo's graphs and guards without Inductor's compile time."""
    from torch._dynamo.utils import counters

    common = ("train.max_steps=6", "train.eval_every=2", "optim.warmup_steps=2", "mqar.eval_samples=40")
    train(mqar_run(tmp_path / "eager", *common), progress=False)
    compiled = []
    real_compile = torch.compile

    def aot_eager(module, *args, mode=None, **kwargs):
        compiled.append((type(module).__name__, mode))
        return real_compile(module, *args, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", aot_eager)
    torch._dynamo.reset()
    graphs = counters["stats"]["unique_graphs"]
    compiled_run = ("train.compile=true", f"parallel.compile_unit={unit}", f"train.compile_mode={mode}")
    run = mqar_run(tmp_path / unit, *common, *compiled_run)
    train(run, progress=False)
    assert compiled == ([("LanguageModel", mode)] if unit == "model" else [("Block", mode)] * 2)
    assert counters["stats"]["unique_graphs"] == graphs + 1  # the blocks share theirs
    eager, rows = read_metrics(tmp_path / "eager" / "run"), read_metrics(run.train.out_dir)
    assert [r["step"] for r in rows] == [r["step"] for r in eager]
    for key in ("loss", "mqar_loss", "mqar_accuracy", "mqar_loss_2x", "mqar_accuracy_2x"):
        got, want = [r[key] for r in rows if key in r], [r[key] for r in eager if key in r]
        assert len(got) == len(want) == 3
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), key


def test_eval_mqar_refuses_bad_options_naming_them(tiny_mqar_run):
    with pytest.raises(ValueError, match=r"--samples -5 must be at least 1"):
        mqar_results(str(tiny_mqar_run), None, -5, 0, "cpu", None)
    with pytest.raises(ValueError, match=r"--samples 0 must be at least 1"):
        mqar_results(str(tiny_mqar_run), None, 0, 0, "cpu", None)
    with pytest.raises(ValueError, match=r"^--lengths 8 cannot hold 4 key-value pairs .* give longer --lengths$"):
        mqar_results(str(tiny_mqar_run), [64, 8], 4, 0, "cpu", None)


def test_mqar_recipe_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"data.mix='needle:0.2' mixes in corpus rows"):
        mqar_run(tmp_path, 'data.mix="needle:0.2"')
    with pytest.raises(ValueError, match=r"data.source='web' must be 'corpus' or 'mqar'"):
        mqar_run(tmp_path, "data.source=web")
    with pytest.raises(ValueError, match=r"data.seq_len=15 cannot hold 4 key-value pairs"):
        mqar_run(tmp_path, "data.seq_len=15")
    with pytest.raises(ValueError, match=r"model.vocab_size=32 is smaller than mqar.vocab_size 64"):
        train(mqar_run(tmp_path, "model.vocab_size=32"), progress=False)
    with pytest.raises(ValueError, match=r"train.early_stop_accuracy=1.5 must be in \[0, 1\] \(0 = off"):
        mqar_run(tmp_path, "train.early_stop_accuracy=1.5")
    with pytest.raises(ValueError, match=r"train.compile_mode='fast' must be one of 'default', 'reduce-overhead'"):
        mqar_run(tmp_path, "train.compile_mode=fast")
    with pytest.raises(ValueError, match=r"train.early_stop_patience=0 must be a positive integer"):
        mqar_run(tmp_path, "train.early_stop_patience=0")
    with pytest.raises(ValueError, match=r"mqar.pairs, mqar.vocab_size set, but \[mqar\] is read only with data.sou"):
        load_recipe(None, "transformer-tiny", ["mqar.pairs=4", "mqar.vocab_size=64", "data.seq_len=64"])
    with pytest.raises(ValueError, match=r"watches MQAR accuracy, .* data.source='corpus'; set train.early_stop_acc"):
        load_recipe(None, "transformer-tiny", ["train.early_stop_accuracy=0.99"])


def run_row(variant, d_model, lr, curve, seq_len=64, pairs=4, acc_2x=0.1):
    return {
        "variant": variant,
        "d_model": d_model,
        "seq_len": seq_len,
        "pairs": pairs,
        "lr": lr,
        "steps": curve[-1][0],
        "curve": curve,
        "accuracy": curve[-1][1],
        "accuracy_2x": acc_2x,
    }


def test_summary_picks_the_best_learning_rate_per_cell():
    assert steps_to([(100, 0.2), (200, 0.6), (300, 0.995)], 0.5) == 200
    assert steps_to([(100, 0.2), (200, 0.6)], 0.99) is None
    runs = [
        run_row("standard", 64, 1e-3, [(100, 0.3), (200, 0.7), (300, 0.9)]),
        run_row("standard", 64, 3e-3, [(100, 0.6), (200, 0.995), (300, 1.0)], acc_2x=0.4),
        run_row("standard", 64, 1e-2, [(100, 0.1), (200, 0.2), (300, 1.0)]),  # ties on accuracy, later to 99 %
        run_row("diff", 64, 1e-3, [(100, 0.1), (200, 0.2), (300, 0.3)]),
        run_row("standard", 128, 1e-3, [(100, 0.1), (200, 0.2), (300, 0.25)], seq_len=128, pairs=8),
        run_row("standard", 128, 3e-3, [(100, 0.7), (200, 0.8), (300, 0.95)]),  # another width of the cell
    ]
    summary = mqar_summary(runs)
    assert summary["variants"] == ["diff", "standard"]
    cells = {(c["seq_len"], c["d_model"], c["variant"]): c for c in summary["cells"]}
    best = cells[(64, 64, "standard")]
    assert (best["accuracy"], best["lr"], best["steps_to_50"], best["steps_to_99"]) == (1.0, 3e-3, 100, 200)
    assert best["accuracy_2x"] == 0.4 and best["lrs"] == {"0.001": 0.9, "0.003": 1.0, "0.01": 1.0}
    assert cells[(64, 64, "diff")]["steps_to_50"] is None and cells[(128, 128, "standard")]["pairs"] == 8
    assert cells[(64, 128, "standard")]["accuracy"] == 0.95
    best = {(b["seq_len"], b["variant"]): b for b in summary["best"]}
    assert sorted(best) == [(64, "diff"), (64, "standard"), (128, "standard")]
    top = best[(64, "standard")]  # over widths and rates: width 64 at 3e-3 (1.0, and 99 % first)
    assert (top["accuracy"], top["d_model"], top["lr"], top["steps_to_99"], top["runs"]) == (1.0, 64, 3e-3, 200, 4)


def test_heatmap_is_written(tmp_path):
    from shareddiff.plots import plot_mqar_heatmap

    runs = [
        run_row(v, d, 1e-3, [(100, acc)], seq_len=n, pairs=p)
        for v in ("standard", "diff", "shared_diff")
        for d in (64, 128)
        for (n, p), acc in (((64, 4), 0.9), ((128, 8), 0.4))
    ]
    out = plot_mqar_heatmap(mqar_summary(runs), tmp_path / "mqar.png", "MQAR")
    assert out.stat().st_size > 10_000


def test_summary_averages_the_seeds_of_a_learning_rate():
    """``lrs`` holds each rate's mean final accuracy over its seeds, ``lr_seeds`` their number; the best run
    stays one run."""
    runs = [
        run_row("diff", 64, 1e-3, [(100, 1.0)]) | {"run": "diff-lr0.001-s2"},  # listed before seed 1
        run_row("diff", 64, 1e-3, [(100, 0.5)]) | {"run": "diff-lr0.001-s1"},
        run_row("diff", 64, 3e-3, [(100, 0.8)]) | {"run": "diff-lr0.003-s1"},
    ]
    summary = mqar_summary(runs)
    (cell,) = summary["cells"]
    assert cell["lrs"] == {"0.001": 0.75, "0.003": 0.8} and cell["lr_seeds"] == {"0.001": 2, "0.003": 1}
    assert cell["lr_runs"] == {"0.001": [0.5, 1.0], "0.003": [0.8]}  # in seed order
    assert (cell["accuracy"], cell["lr"]) == (1.0, 1e-3)
    from shareddiff.repro.summary import _mqar_lines

    line = [line for line in _mqar_lines(summary) if line.startswith("| 64 | 4 | DIFF | 64 |")][-1]  # per width
    assert line.endswith("| 0.001: 0.75 (0.50, 1.00), 0.003: 0.80 |")
    del cell["lr_runs"]  # a summary written before the seeds were kept: the means alone
    line = [line for line in _mqar_lines(summary) if line.startswith("| 64 | 4 | DIFF | 64 |")][-1]
    assert line.endswith("| 0.001: 0.75, 0.003: 0.80 |")


def test_rates_plot_has_a_panel_per_cell_and_variant_counting_the_solved_settings(tmp_path, saved_figures):
    """mqar_rates.png: rows (N, pairs), columns the variants in the papers' order, each panel width (y) × rate (x)
    annotated with the final accuracy, blank where no run finished, its title counting the settings ≥ 0.99."""
    from shareddiff.plots import plot_mqar_rates

    rates = (1e-3, 3e-3, 1e-2)
    diff_n64 = {(64, 1e-3): 0.995, (64, 3e-3): 0.42, (64, 1e-2): 0.05, (128, 1e-3): 0.99, (128, 3e-3): 0.98999}
    runs = [run_row("diff", d, lr, [(100, acc)]) for (d, lr), acc in diff_n64.items()]  # (128, 1e-2) unfinished
    runs += [
        run_row(v, d, lr, [(100, 1.0)], seq_len=n, pairs=p)
        for v in ("shared_diff", "standard")
        for d in (64, 128)
        for lr in rates
        for n, p in ((64, 4), (128, 8))
    ]
    runs += [run_row("diff", 64, 1e-3, [(100, 0.3)], seq_len=128, pairs=8)]
    runs += [run_row("diff", 64, 1e-3, [(100, 0.5)], seq_len=128, pairs=8)]  # a second seed
    out = plot_mqar_rates(mqar_summary(runs), tmp_path / "mqar_rates.png", "MQAR")
    assert out.stat().st_size > 10_000
    (fig,) = saved_figures
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 6  # 2 cells × 3 variants
    titles = [ax.get_title() for ax in panels]
    assert titles == [
        "Transformer: 6 of 6 ≥ 0.99",
        "DIFF: 2 of 5 ≥ 0.99\n1 not finished",
        "Shared DIFF: 6 of 6 ≥ 0.99",
        "Transformer: 6 of 6 ≥ 0.99",
        "DIFF: 0 of 1 ≥ 0.99\n5 not finished; mean of 2 seeds",
        "Shared DIFF: 6 of 6 ≥ 0.99",
    ]
    diff = panels[1]
    assert panels[0].get_ylabel() == "N=64, 4 pairs\nmodel width" and panels[4].get_xlabel() == "learning rate"
    assert [t.get_text() for t in panels[4].get_xticklabels()] == ["0.001", "0.003", "0.01"]
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["64", "128"]
    values = {(int(t.get_position()[1]), int(t.get_position()[0])): t.get_text() for t in diff.texts}
    assert values == {(0, 0): "0.99", (0, 1): "0.42", (0, 2): "0.05", (1, 0): "0.99", (1, 1): "0.99"}
    bold = {(int(t.get_position()[1]), int(t.get_position()[0])) for t in diff.texts if t.get_fontweight() == "bold"}
    assert bold == {(0, 0), (1, 0)}  # 0.98999 shows as 0.99 but is below the level
    image = diff.images[0].get_array()
    assert image.mask[1, 2] and image[0, 1] == 0.42 and diff.images[0].get_clim() == (0, 1)
    assert [t.get_text() for t in panels[4].texts] == ["0.40"]  # the mean of the two seeds


@pytest.mark.slow
def test_a_tiny_transformer_learns_mqar_and_stops_once_solved(tmp_path):
    """The task is learnable and the harness right: a 2-layer width-64 Transformer (transformer-mqar,
    two heads) reaches ≥ 0.9 accuracy on 4 pairs at length 64 on the CPU (vocabulary 64: with 256 the
    same model sat at chance, 0.25, for 2000 steps; docs/evaluation.md). With the recipe's early stop
    (≥ 0.99 at 2 evaluations in a row, every 50 steps) it ends well before its 1000 steps."""
    run = mqar_run(
        tmp_path,
        "train.max_steps=1000",
        "train.micro_batch=32",
        "train.eval_every=50",
        "train.log_every=50",
        "train.early_stop_accuracy=0.99",
        "train.early_stop_patience=2",
        "optim.lr=3e-3",
        "optim.warmup_steps=100",
        "optim.min_lr_ratio=1.0",  # constant after warmup: no decay while the plateau is left (step 150-200)
        "mqar.eval_samples=256",
    )
    result = train(run, progress=False)
    evals = [r for r in read_metrics(run.train.out_dir) if "mqar_accuracy" in r]
    final = evals[-1]
    assert final["mqar_accuracy"] >= 0.99 and evals[-2]["mqar_accuracy"] >= 0.99, evals
    assert evals[-3]["mqar_accuracy"] < 0.99  # the first two in a row
    assert result.early_stop["step"] == result.step == final["step"] < 1000
    record = mqar_run_record(run.train.out_dir)
    first = next(e["step"] for e in evals if e["mqar_accuracy"] >= 0.99)  # one evaluation may cross, then dip
    assert steps_to(record["curve"], 0.99) == first and record["accuracy_2x"] == final["mqar_accuracy_2x"]


@pytest.mark.parametrize(
    ("variants", "widths"), [(("shared_diff_v2",), (64,)), (("standard",), (64, 128)), (("standard", "diff"), (64,))]
)
def test_heatmap_titles_fit_the_figure_and_do_not_overlap(tmp_path, monkeypatch, variants, widths):
    """The suptitle lies inside the figure and no two panel titles overlap, with one variant and one width
    (the narrowest figure: its suptitle was once cut at both edges, its titles overlapping) or more."""
    import matplotlib.pyplot as plt

    from shareddiff.plots import plot_mqar_heatmap

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    runs = [
        run_row(v, d, 1e-3, [(100, 0.9)], seq_len=n, pairs=p)
        for v in variants
        for d in widths
        for n, p in ((64, 4), (128, 8))
    ]
    plot_mqar_heatmap(mqar_summary(runs), tmp_path / "mqar.png", "mqar_budget")
    fig = figures[0]
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    suptitle = fig._suptitle.get_window_extent(renderer)
    assert box.x0 + 2 <= suptitle.x0 and suptitle.x1 <= box.x1 - 2 and suptitle.y1 <= box.y1
    titles = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    assert len(titles) == len(variants) + 1
    for left, right in itertools.pairwise(titles):
        assert left.x1 + 2 <= right.x0  # side by side, not overlapping
    plt.close("all")
