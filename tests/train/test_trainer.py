"""The trainer: it learns, logs, checkpoints, resumes exactly, and refuses bad input with clear errors."""

import contextlib
import json
import logging
import math

import pytest
import torch

from shareddiff import ModelConfig, build_model
from shareddiff.config import OptimConfig, load_recipe
from shareddiff.train import TrainingDiverged, latest_checkpoint, load_model, lr_at, train
from shareddiff.train.checkpoint import list_checkpoints
from shareddiff.train.metrics import read_metrics
from shareddiff.train.trainer import build_optimizer, evaluate


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def logged_warnings(caplog) -> list[str]:
    """The package's log lines at WARNING and above that a test caught."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("shareddiff")]


def test_training_learns_and_writes_its_record(make_run):
    run = make_run("train.max_steps=16", "checkpoint.keep_last=2")
    result = train(run, progress=False)
    curve = losses(run.train.out_dir)
    assert sorted(curve) == list(range(1, 17))
    assert curve[16] < curve[1] - 1.0, curve  # a tiny model on repetitive text learns fast
    assert result.val_loss is not None and result.val_loss < math.log(300)
    assert [p.name for p in list_checkpoints(run.train.out_dir)] == ["step_00000015", "step_00000016"]
    state = json.loads((result.checkpoint / "state.json").read_text())
    assert state["step"] == 16 and state["tokens"] == 16 * 4 * 32
    model, tok, _ = load_model(result.checkpoint)
    assert model.config.vocab_size == tok.vocab_size == 300  # the vocabulary comes from the tokenizer


def test_resume_continues_the_same_curve_bitwise(make_run, monkeypatch):
    from shareddiff.data import WindowLoader

    full = make_run(out="full")
    train(full, progress=False)
    real_batch = WindowLoader.batch

    def interrupted(self, step, *args, **kwargs):
        if step == 7:  # killed during step 8; the last checkpoint is step 6
            raise KeyboardInterrupt
        return real_batch(self, step, *args, **kwargs)

    monkeypatch.setattr(WindowLoader, "batch", interrupted)
    part = make_run(out="part")
    with pytest.raises(
        KeyboardInterrupt,
        match=r"^interrupted at step 7 of 12; last checkpoint step 6 \(.*"
        r"step_00000006\); continue with --resume$",
    ):
        train(part, progress=False)
    with pytest.raises(KeyboardInterrupt, match=r"step_00000006\); run the same command again to continue$"):
        train(part, resume="if_present", progress=False)  # as reproduce and demo resume: their command again
    monkeypatch.setattr(WindowLoader, "batch", real_batch)
    train(part, resume=True, progress=False)
    assert losses(part.train.out_dir) == losses(full.train.out_dir)
    steps = [r["step"] for r in read_metrics(part.train.out_dir) if "loss" in r]
    assert steps == list(range(1, 13))  # nothing lost, nothing repeated


def test_truncated_checkpoint_is_never_loaded(make_run, caplog):
    run = make_run()
    train(run, progress=False)
    ckpts = list_checkpoints(run.train.out_dir)
    newest = ckpts[-1] / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    (ckpts[-1].parent / "step_00000099.tmp").mkdir()  # a write that never finished
    with caplog.at_level(logging.WARNING, logger="shareddiff"):
        assert latest_checkpoint(run.train.out_dir) == ckpts[-2]
    [line] = logged_warnings(caplog)
    assert line.startswith(f"skipping damaged checkpoint {ckpts[-1]}: model.safetensors has ")
    assert line.endswith(f"; using {ckpts[-2].name} instead")


def test_resume_refuses_another_config(make_run, tmp_path):
    train(make_run("train.max_steps=3"), progress=False)
    with pytest.raises(ValueError, match=r"another model config \(model.lowrank_rank: checkpoint 8, this run 4") as e:
        train(make_run("model.lowrank_rank=4"), resume=True, progress=False)
    record = tmp_path / "run" / "run_config.json"
    assert str(e.value).endswith(
        f"; resume with the recipe it was made with, as {record} records it: its --config FILE and overrides, or "
        "this command with train.max_steps=3 and without model.lowrank_rank=4; or start a new run folder"
    )
    with pytest.raises(ValueError, match=r"another model config \(model.d_model: checkpoint 64") as e:
        # the recipe left out (`train train.out_dir=RUN --resume`): the values to pass, written as overrides
        train(
            load_recipe(None, "shared_diff-small", [f"train.out_dir={tmp_path / 'run'}"]), resume=True, progress=False
        )
    hint = str(e.value).split("; resume with the recipe it was made with, ")[1]
    assert hint.startswith(f"as {record} records it: its --config FILE and overrides, or this command with ")
    assert "model.preset=shared_diff-tiny " in hint and "data.seq_len=32 " in hint and "train.device=cpu " in hint
    assert (
        "data.path=" in hint and "data.tokenizer=" in hint and "optim.lr=0.01 " in hint and "train.out_dir" not in hint
    )
    with pytest.raises(ValueError, match=r"already holds checkpoints; pass --resume"):
        train(make_run(), progress=False)


def test_resume_of_a_folder_without_a_run_is_an_error_not_a_fresh_run(make_run, tmp_path, capsys):
    """--resume into a mistyped folder (missing, or holding no checkpoint) names it, what was looked for and the
    fix, and creates nothing; resume="if_present" (reproduce, demo) starts such a run from step 0."""
    from shareddiff.cli import main
    from tests.train.conftest import recipe_args

    typo = make_run(out="typo")
    with pytest.raises(ValueError) as caught:
        train(typo, resume=True, progress=False)
    assert str(caught.value) == (
        f"--resume: {tmp_path / 'typo'} does not exist, so there is no run to continue (looked for "
        f"{tmp_path / 'typo' / 'checkpoints'}/step_*); set train.out_dir to the folder of the run to continue, "
        "or drop --resume to start a new run"
    )
    assert not (tmp_path / "typo").exists()
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    assert main(["train", "--no-progress", "--resume", *recipe_args(make_run(out="empty"))]) == 2
    assert capsys.readouterr().err == (
        f"error: --resume: {tmp_path / 'empty'} holds no checkpoint to continue from (looked for "
        f"{tmp_path / 'empty' / 'checkpoints'}/step_*); set train.out_dir to the folder of the run to continue, "
        "or drop --resume to start a new run there\n"
    )
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["checkpoints"]  # no lock, no records
    result = train(make_run("train.max_steps=3", out="typo"), resume="if_present", progress=False)
    assert result.step == 3 and not result.already_complete
    with pytest.raises(ValueError, match=r"resume='yes'; use True \(a run must exist\), 'if_present' or False"):
        train(typo, resume="yes", progress=False)


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_again(make_run, tmp_path, caplog):
    """A started run (run_config.json) with no checkpoint yet has nothing to continue: --resume starts it again
    from step 0, says so, and its metrics hold each step once, equal to an uninterrupted run's."""
    import logging

    reference = make_run("train.max_steps=4", out="reference")
    train(reference, progress=False)
    killed = make_run("train.max_steps=4", out="killed")
    train(killed, progress=False)
    kill_before_first_checkpoint(tmp_path / "killed", after_step=2)  # checkpoint.every=3
    with caplog.at_level(logging.WARNING, logger="shareddiff.train.trainer"):
        result = train(killed, resume=True, progress=False)
    assert result.step == 4
    assert (
        f"--resume: the run in {tmp_path / 'killed'} stopped before its first checkpoint; starting it again "
        "from step 0" in caplog.text
    )
    assert [r["step"] for r in read_metrics(tmp_path / "killed") if "loss" in r] == [1, 2, 3, 4]
    assert losses(tmp_path / "killed") == losses(tmp_path / "reference")


def kill_before_first_checkpoint(run_dir, after_step: int) -> None:
    """``run_dir`` as a run killed after ``after_step`` steps, before its first checkpoint, leaves it: no
    checkpoint, metrics up to that step."""
    import shutil

    shutil.rmtree(run_dir / "checkpoints")
    kept = [r for r in read_metrics(run_dir) if r["step"] <= after_step]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))


def test_an_interruption_before_any_checkpoint_does_not_send_the_user_to_resume():
    from shareddiff.train import TrainingInterrupted

    assert str(TrainingInterrupted(5, 60, None)) == (
        "interrupted at step 5 of 60; no checkpoint yet, so nothing to resume: run the same command again "
        "(without --resume) to start over"
    )


def test_resume_refuses_another_tokenizer(make_run, tmp_path, tiny_data):
    from shareddiff.data import train_tokenizer
    from tests.conftest import synthetic_documents

    train(make_run("train.max_steps=3"), progress=False)
    other = train_tokenizer(synthetic_documents(30, 40, seed=9), 300, tmp_path / "other.json")
    with pytest.raises(ValueError, match=r"tokenized with a tokenizer not shipped with the package \(sha256 "):
        train(make_run(f"data.tokenizer={other.path}"), resume=True, progress=False)


def test_diverged_run_stops_and_keeps_the_last_good_checkpoint(make_run, monkeypatch):
    import shareddiff.train.trainer as trainer

    real = trainer.F.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss  # the 5th training step (no eval before)

    monkeypatch.setattr(trainer.F, "cross_entropy", poisoned)
    run = make_run("train.eval_every=100")
    with pytest.raises(
        TrainingDiverged,
        match=r"diverged at step 5: loss=nan.*last good checkpoint is kept "
        r"\(.*step_00000003\).*--resume",
    ):
        train(run, progress=False)
    assert [p.name for p in list_checkpoints(run.train.out_dir)] == ["step_00000003"]
    assert latest_checkpoint(run.train.out_dir).name == "step_00000003"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.seq_len=300"], "data.seq_len=300 exceeds model max_seq_len=256"),
        (["model.vocab_size=100"], "model.vocab_size=100 is smaller than the tokenizer's 300"),
        (["train.micro_batch=0"], "train.micro_batch=0 must be a positive integer"),
        (["train.precision=fp8"], "train.precision='fp8' must be"),
        (["model.attention=mamba"], "attention='mamba' is not a known variant"),
        (["parallel.compile_unit=layer"], "parallel.compile_unit='layer' must be one of 'model', 'block'"),
        (["parallel.param_dtype=fp16"], "parallel.param_dtype='fp16' must be one of 'auto', 'fp32', 'bf16'"),
        (["parallel.reshard_after_forward=sometimes"], "reshard_after_forward='sometimes' must be one of 'auto'"),
        (["parallel.grad_sync=first"], "parallel.grad_sync='first' must be one of 'auto', 'last', 'every'"),
        (["parallel.prefetch_blocks=-1"], r"parallel.prefetch_blocks=-1 must be an integer ≥ 0 \(0 = FSDP2's implicit"),
    ],
)
def test_bad_recipes(make_run, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(make_run(*overrides), progress=False)


def test_short_validation_split(make_run, tmp_path, tiny_tokenizer):
    from shareddiff.data import prepare_splits

    prepare_splits({"train": ["many words here " * 100], "val": ["short"]}, tmp_path / "d", tiny_tokenizer)
    with pytest.raises(ValueError, match=r"validation split has .* tokens, fewer than seq_len"):
        train(make_run(f"data.path={tmp_path / 'd'}"), progress=False)


def test_lr_schedule():
    optim = OptimConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert [lr_at(s, optim, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(9, optim, 14) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert lr_at(14, optim, 14) == pytest.approx(0.1) and lr_at(100, optim, 14) == pytest.approx(0.1)


def test_weight_decay_on_matrices_only():
    from shareddiff import ModelConfig, build_model

    model = build_model(ModelConfig(attention="shared_diff", base_sharing="heads"))
    opt = build_optimizer(model, OptimConfig(), torch.device("cpu"))
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    for name, p in model.named_parameters():
        is_matrix = p.dim() >= 2
        assert (id(p) in decayed) == is_matrix, name
        if "lambda_" in name or "norm" in name:
            assert not is_matrix


def test_load_model_names_damaged_or_foreign_checkpoints(make_run, tmp_path):
    result = train(make_run("train.max_steps=3"), progress=False)
    weights = result.checkpoint / "model.safetensors"
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"model.safetensors has 22 bytes, the manifest says \d+; use an earlier"):
        load_model(result.checkpoint)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "state.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"is damaged: state.json is not valid JSON"):
        load_model(foreign)


def test_ctrl_c_on_the_command_line_is_one_line(make_run, monkeypatch, capsys):
    from shareddiff.cli import main
    from shareddiff.data import WindowLoader
    from tests.train.conftest import recipe_args

    real_batch = WindowLoader.batch

    def interrupted(self, step, *args, **kwargs):
        if step == 4:  # during step 5; the last checkpoint is step 3
            raise KeyboardInterrupt
        return real_batch(self, step, *args, **kwargs)

    monkeypatch.setattr(WindowLoader, "batch", interrupted)
    run = make_run()
    assert main(["train", "--no-progress", *recipe_args(run)]) == 130
    err = capsys.readouterr().err
    assert err == (
        f"interrupted at step 4 of 12; last checkpoint step 3 ({run.train.out_dir}/checkpoints/step_00000003); "
        "continue with --resume\n"
    )


@pytest.mark.slow
def test_resume_refuses_a_changed_schedule_unless_asked(make_run, caplog):
    train(make_run("train.max_steps=6"), progress=False)
    longer = make_run("train.max_steps=9", "optim.lr=2e-2")
    with pytest.raises(
        ValueError,
        match=r"step_00000006 was trained on another learning-rate schedule \(train.max_steps 6 → 9; "
        r"optim.lr 0.01 → 0.02\).*pass --new-schedule",
    ):
        train(longer, resume=True, progress=False)
    with caplog.at_level(logging.INFO, logger="shareddiff"):
        result = train(longer, resume=True, progress=False, new_schedule=True)
    said = [r.getMessage() for r in caplog.records if r.name == "shareddiff.train.trainer"]
    assert result.step == 9 and sorted(losses(longer.train.out_dir)) == list(range(1, 10))
    assert "continuing on a new learning-rate schedule from step 6: train.max_steps 6 → 9; optim.lr 0.01 → 0.02" in said


def test_resume_of_a_finished_run_says_it_is_complete(make_run, capsys):
    from shareddiff.cli import main
    from tests.train.conftest import recipe_args

    run = make_run("train.max_steps=6")
    first = train(run, progress=False)
    again = train(run, resume=True, progress=False)
    assert again.already_complete and again.step == 6 and again.val_loss == first.val_loss
    assert again.checkpoint == first.checkpoint and sorted(losses(run.train.out_dir)) == list(range(1, 7))
    capsys.readouterr()
    assert main(["train", "--no-progress", "--resume", *recipe_args(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f"{run.train.out_dir} is already complete: step 6, validation loss {first.val_loss:.4f}, checkpoint "
    )
    assert "validation loss n/a" not in out and "raise train.max_steps and pass --new-schedule" in out


def test_a_wrong_model_table_fails_before_the_run_folder_is_made(tmp_path):
    from shareddiff.config import load_recipe

    run = load_recipe(None, "shared_diff-tiny", ["model.lowrank_rank=0", f"train.out_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match="lowrank_rank"):
        train(run)
    assert not (tmp_path / "run").exists()


def test_a_warmup_as_long_as_the_run_is_named(make_run, caplog):
    with caplog.at_level(logging.WARNING, logger="shareddiff.train.trainer"):
        train(make_run("train.max_steps=3", "optim.warmup_steps=3"), progress=False)
    assert "optim.warmup_steps=3 is not below train.max_steps=3" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="shareddiff.train.trainer"):
        train(make_run("train.max_steps=4", "optim.warmup_steps=1", out="run-b"), progress=False)
    assert "warmup" not in caplog.text


def test_the_triton_backend_on_the_cpu_is_refused_before_the_run_folder_is_made(tmp_path, monkeypatch):
    from shareddiff.config import load_recipe

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    run = load_recipe(
        None, "diff-tiny", ["train.attn_backend=triton", "train.device=cpu", f"train.out_dir={tmp_path / 'r'}"]
    )
    with pytest.raises(ValueError, match=r"train.attn_backend='triton' runs on CUDA, and this run trains on cpu"):
        train(run)
    assert not (tmp_path / "r").exists()


def test_run_summary_tail_mean_of_the_training_loss():
    """train_loss_tail is the mean of the logged step losses after 90 % of the last logged step (by hand), the
    last row alone when the tail is that row; validation rows do not count."""
    import random
    import statistics

    from shareddiff.train.metrics import summarize_metrics, tail_mean_loss

    rng = random.Random()
    rows = []
    for step in range(50, 3501, 50):
        rows.append({"step": step, "tokens": step * 64, "loss": rng.uniform(2.0, 3.0)})
        if step % 250 == 0:
            rows.append({"step": step, "tokens": step * 64, "val_loss": rng.uniform(2.0, 3.0)})
    by_hand = statistics.fmean(r["loss"] for r in rows if "loss" in r and r["step"] > 3150)
    end = summarize_metrics(rows)
    assert end.train_loss_tail == pytest.approx(by_hand, rel=1e-12)
    assert end.train_loss == rows[-2]["loss"]  # the last training row (the last row is a validation)
    assert tail_mean_loss(rows[:1]) == rows[0]["loss"] and tail_mean_loss([]) is None


@pytest.mark.parametrize(("dtype", "rel"), [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_validation_loss_is_the_mean_next_token_loss(seed, dtype, rel):
    """Reference: one float64 cross-entropy over every window's logits; a float64 model's loss is float64 throughout."""
    model = build_model(ModelConfig(vocab_size=40, d_model=32, n_heads=2, n_layers=1, max_seq_len=16), dtype=dtype)
    windows = torch.randint(0, 40, (5, 13))
    got = evaluate(model, windows, 2, torch.device("cpu"), contextlib.nullcontext)
    with torch.no_grad():
        logits = model(windows[:, :-1]).double().flatten(0, 1)
    assert got == pytest.approx(torch.nn.functional.cross_entropy(logits, windows[:, 1:].flatten()).item(), rel=rel)
