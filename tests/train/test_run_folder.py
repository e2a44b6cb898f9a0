"""What `train` and `train --resume` do with a run folder that already holds something: a finished run, a run
killed before its first checkpoint, a live run, skipped checkpoints. Nothing recorded is overwritten or lost."""

import logging
import shutil

import pytest

from shareddiff.train import train
from shareddiff.train.checkpoint import list_checkpoints
from shareddiff.train.metrics import read_metrics
from shareddiff.train.runlock import RunLock
from shareddiff.train.trainer import ScheduleChanged
from tests.train.test_trainer import kill_before_first_checkpoint, logged_warnings, losses


def records(run_dir) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in ("metrics.jsonl", "run_config.json")}


@pytest.fixture
def killed_at_step_2(make_run, tmp_path):
    """A 4-step run killed after step 2, before its first checkpoint (checkpoint.every=3)."""
    train(make_run("train.max_steps=4"), progress=False)
    kill_before_first_checkpoint(tmp_path / "run", after_step=2)
    return tmp_path / "run"


def test_resume_refuses_a_finished_run_whose_checkpoints_were_deleted(make_run, tmp_path):
    """reproduce deletes a finished run's checkpoints after its evals: --resume must not start it again over its
    records (record.json there), nor any run whose metrics go past its first checkpoint."""
    run = make_run("train.max_steps=4")
    train(run, progress=False)
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    before = records(tmp_path / "run")
    with pytest.raises(ValueError, match=r"its metrics.jsonl logs step 4, after the run's first checkpoint \(step 3\)"):
        train(run, resume=True, progress=False)
    (tmp_path / "run" / "record.json").write_text("{}")
    with pytest.raises(
        ValueError, match=rf"--resume: {tmp_path / 'run'} holds a finished run \(record.json\) whose checkpoints were"
    ):
        train(run, resume=True, progress=False)
    assert records(tmp_path / "run") == before


def test_a_run_killed_while_writing_its_first_checkpoint_starts_again(make_run, tmp_path):
    """Step 3 logged, its checkpoint cut mid-write (never renamed into place): the run starts again from step 0."""
    run = make_run("train.max_steps=4")
    train(run, progress=False)
    kill_before_first_checkpoint(tmp_path / "run", after_step=3)
    assert train(run, resume=True, progress=False).step == 4
    assert [r["step"] for r in read_metrics(tmp_path / "run") if "loss" in r] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("override", "error", "match"),
    [
        ("model.lowrank_rank=4", ValueError, r"another model config \(model.lowrank_rank: run 8, this run 4"),
        ("optim.lr=2e-2", ScheduleChanged, r"another learning-rate schedule \(optim.lr 0.01 → 0.02\)"),
        ("train.max_steps=5", ScheduleChanged, r"another learning-rate schedule \(train.max_steps 4 → 5\)"),
        ("train.seed=7", ValueError, r"another batch sequence \(train.seed 1337 → 7\)"),
    ],
)
def test_restart_of_a_killed_run_refuses_another_recipe(make_run, killed_at_step_2, override, error, match):
    """A run killed before its first checkpoint starts again only with its own recipe (its run_config.json):
    the same refusals as a checkpoint resume, before anything is written."""
    before = records(killed_at_step_2)
    with pytest.raises(error, match=match):
        train(make_run("train.max_steps=4", override), resume=True, progress=False)
    assert records(killed_at_step_2) == before


def test_restart_refusal_names_the_run_config(make_run, killed_at_step_2):
    with pytest.raises(ScheduleChanged) as refused:
        train(make_run("train.max_steps=5"), resume=True, progress=False)
    assert str(refused.value).startswith(
        f"the run recorded in {killed_at_step_2 / 'run_config.json'} was trained on another learning-rate schedule"
    )


@pytest.mark.parametrize("finished", ["record.json", "eval"])
def test_plain_train_refuses_a_folder_holding_a_finished_run(make_run, tmp_path, finished):
    run = make_run("train.max_steps=3")
    train(run, progress=False)
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    if finished == "eval":
        (tmp_path / "run" / "eval").mkdir()
        (tmp_path / "run" / "eval" / "ppl.json").write_text("{}")
    else:
        (tmp_path / "run" / "record.json").write_text("{}")
    before = records(tmp_path / "run")
    with pytest.raises(
        ValueError,
        match=rf"{tmp_path / 'run'} holds a finished run \({finished}/?\); training into it would overwrite its "
        r"metrics.jsonl and run_config.json: set train.out_dir to another folder",
    ):
        train(run, progress=False)
    assert records(tmp_path / "run") == before


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.seed=7", r"train.seed 1337 → 7"),
        ("data.seq_len=16", r"data.seq_len 32 → 16"),
        ("train.micro_batch=2", r"global batch \(.*\) 4 × 1 × 1 = 4 → 2 × 1 × 1 = 2"),
    ],
)
def test_resume_refuses_another_batch_sequence(make_run, tmp_path, override, match):
    run = make_run("train.max_steps=4")
    train(run, progress=False)
    before = records(tmp_path / "run")
    with pytest.raises(ValueError, match=r"checkpoint step_00000004 was trained on another batch sequence \(" + match):
        train(make_run("train.max_steps=4", override), resume=True, progress=False)
    assert records(tmp_path / "run") == before


def test_resume_accepts_the_same_global_batch_split_otherwise(make_run, tmp_path):
    """micro_batch × grad_accum is memory only: 4 × 1 → 2 × 2 continues the same batches (float sums in another
    order: close, not bitwise)."""
    reference = make_run("train.max_steps=6", out="reference")
    train(reference, progress=False)
    run = make_run("train.max_steps=6")
    train(run, progress=False)
    shutil.rmtree(list_checkpoints(tmp_path / "run")[-1])  # resume from step 3
    split = make_run("train.max_steps=6", "train.micro_batch=2", "train.grad_accum=2")
    assert train(split, resume=True, progress=False).step == 6
    ref, got = losses(tmp_path / "reference"), losses(tmp_path / "run")
    assert sorted(got) == list(range(1, 7))
    assert all(abs(got[s] - ref[s]) < 1e-4 for s in range(4, 7)), (got, ref)


def test_resume_into_a_live_run_says_nothing_of_a_restart(make_run, killed_at_step_2, caplog):
    live = RunLock(killed_at_step_2)
    with live, caplog.at_level(logging.INFO, logger="shareddiff"), pytest.raises(ValueError, match=r"is in use by"):
        train(make_run("train.max_steps=4"), resume=True, progress=False)
    assert "starting it again" not in caplog.text


def test_new_schedule_without_resume_is_an_error(make_run, tmp_path):
    with pytest.raises(ValueError, match=r"--new-schedule .* needs --resume .*: add --resume, or drop --new-schedule"):
        train(make_run("train.max_steps=2"), new_schedule=True, progress=False)
    assert not (tmp_path / "run").exists()


def test_train_help_describes_resume_as_it_behaves():
    from shareddiff.cli import build_parser

    parser = build_parser()
    text = " ".join(parser._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "an error if it holds none" not in text
    assert "a run stopped before its first checkpoint starts again from step 0" in text
    assert "for the remaining steps (an error without --resume)" in text


def test_a_skipped_step_folder_saved_again_is_moved_aside_not_deleted(make_run, tmp_path, caplog):
    run = make_run("train.max_steps=6")
    train(run, progress=False)
    skipped = list_checkpoints(tmp_path / "run")[-1]
    (skipped / "manifest.json").unlink()
    (skipped / "note.txt").write_text("kept")
    with caplog.at_level(logging.WARNING, logger="shareddiff"):
        train(run, resume=True, progress=False)  # from step 3, saves step 6 again
    (aside,) = (tmp_path / "run" / "checkpoints" / "rejected").iterdir()
    assert aside.name.startswith("step_00000006-") and (aside / "note.txt").read_text() == "kept"
    assert (skipped / "manifest.json").is_file()  # the new step 6
    assert [p.name for p in list_checkpoints(tmp_path / "run")][-1] == "step_00000006"
    assert f"step_00000006: incomplete; kept as {aside}" in logged_warnings(caplog)


def test_a_skipped_folder_of_a_step_not_saved_again_outlives_rotation(make_run, tmp_path, caplog):
    """A damaged folder of a step the resumed run does not save again (as one written at a Ctrl-C between the
    periodic saves) is set aside when the run resumes past it, so rotation (keep_last) cannot delete it later."""
    train(make_run("train.max_steps=6"), progress=False)
    run = make_run("train.max_steps=6", "checkpoint.keep_last=1")
    root = tmp_path / "run" / "checkpoints"
    shutil.rmtree(root / "step_00000006")
    shutil.copytree(root / "step_00000003", root / "step_00000004")  # its state says step 3: damaged
    with caplog.at_level(logging.WARNING, logger="shareddiff"):
        train(run, resume=True, progress=False)  # from step 3; saves step 6, rotation keeps that one only
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000006"]
    (aside,) = (root / "rejected").iterdir()
    assert aside.name.startswith("step_00000004-") and (aside / "manifest.json").is_file()
    assert f"step_00000004: damaged; kept as {aside}" in logged_warnings(caplog)


def test_a_config_error_leaves_no_new_folder_behind(make_run, tmp_path):
    with pytest.raises(ValueError, match=r"data.seq_len=4096 exceeds model max_seq_len"):
        train(make_run("data.seq_len=4096", out="new"), progress=False)
    assert not (tmp_path / "new").exists()


def test_restart_with_a_damaged_run_config_is_an_error_naming_it(make_run, killed_at_step_2):
    (killed_at_step_2 / "run_config.json").write_text('{"run": {')  # killed while writing it
    with pytest.raises(ValueError, match=r"run_config.json is damaged .* drop --resume to start the run over there"):
        train(make_run("train.max_steps=4"), resume=True, progress=False)


def test_resuming_over_a_metrics_file_that_lacks_the_earlier_steps_warns(make_run, tmp_path, caplog):
    """metrics.jsonl emptied (or truncated, or restored from an older copy) while a checkpoint stays: the run
    resumes, and says which steps its curves will miss; a resume over an intact file says nothing of the kind."""
    run = make_run("train.max_steps=6")
    train(run, progress=False)
    folder = tmp_path / "run"
    shutil.rmtree(folder / "checkpoints" / "step_00000006")
    with caplog.at_level(logging.WARNING, logger="shareddiff"):
        train(run, resume=True, progress=False)  # from step 3 over the whole file
    assert not [w for w in logged_warnings(caplog) if "holds training rows only up to" in w]
    shutil.rmtree(folder / "checkpoints" / "step_00000006")
    (folder / "metrics.jsonl").write_text("")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="shareddiff"):
        train(run, resume=True, progress=False)
    (line,) = [w for w in logged_warnings(caplog) if "holds training rows only up to" in w]
    assert line == (
        f"{folder / 'metrics.jsonl'} holds training rows only up to step 0, and the run resumes from step 3: its "
        "curves (and what is read from them: steps to an accuracy, the loss tail) miss steps 1-3; restore the file "
        "from a copy before resuming to keep them"
    )
    assert [r["step"] for r in read_metrics(folder) if "loss" in r] == [4, 5, 6]


def test_an_mqar_preset_on_the_corpus_is_named(make_run, caplog):
    """A preset sized for the MQAR task trained on text (data.source not mqar) trains, and says so."""
    from shareddiff.train.trainer import _checked_model_config

    run = make_run("model.preset=diff_v2-mqar", "model.d_model=32")
    with caplog.at_level(logging.WARNING, logger="shareddiff"):
        _checked_model_config(run, type("Tok", (), {"vocab_size": 512})())
    (line,) = logged_warnings(caplog)
    assert line.startswith("preset diff_v2-mqar is sized for the MQAR task, but data.source is 'corpus'")
    assert line.endswith("the tokenizer's vocabulary (512); add data.source=mqar (or use "
                         "configs/repro/recipe-mqar.toml) for the task")  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="shareddiff"):
        _checked_model_config(make_run("model.d_model=32"), type("Tok", (), {"vocab_size": 512})())
    assert logged_warnings(caplog) == []
