"""Checkpoints are trusted only when every file matches the manifest; a damaged one, or a step folder without
manifest, is skipped by name (a log line) for the one before and never deleted; a write that runs out of space
says so, cleans up, and leaves the previous checkpoint loadable."""

import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

import shareddiff.train.checkpoint as checkpoint
from shareddiff.train import latest_checkpoint, load_model, train
from shareddiff.train.checkpoint import CheckpointWriteError, filesystem_of, list_checkpoints, verify_checkpoint
from tests.conftest import tiny_recipe
from tests.train.test_trainer import logged_warnings, losses

# Every kind of file a one-process checkpoint holds.
KINDS = [
    "model.safetensors",
    "rng_rank0.pt",
    "tokenizer.json",
    "state.json",
    "manifest.json",
    "dcp/.metadata",
    "dcp/__0_0.distcp",
]


def test_manifest_lists_every_file_with_size_and_sha256(make_run):
    result = train(make_run("train.max_steps=3"), progress=False)
    ckpt = result.checkpoint
    files = json.loads((ckpt / "manifest.json").read_text())["files"]
    on_disk = sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file())
    assert sorted(files) == [f for f in on_disk if f != "manifest.json"]
    assert sorted(files) == sorted(k for k in KINDS if k != "manifest.json")
    for name, entry in files.items():
        assert entry == {"bytes": (ckpt / name).stat().st_size, "sha256": checkpoint._sha256(ckpt / name)[1]}


@pytest.fixture(scope="module")
def nine_steps(tmp_path_factory, tiny_data, tiny_tokenizer):
    """A run of 9 steps with checkpoints at 3, 6 and 9, trained once for the module."""
    run = tiny_recipe(tiny_data, tiny_tokenizer, tmp_path_factory.mktemp("full") / "run", "train.max_steps=9")
    train(run, progress=False)
    return run


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_truncated_file_of_each_kind_is_skipped_and_resume_uses_the_previous(
    nine_steps, make_run, tmp_path, caplog, kind
):
    full = nine_steps
    damaged_dir = tmp_path / "damaged"
    shutil.copytree(full.train.out_dir, damaged_dir)
    newest = list_checkpoints(damaged_dir)[-1]
    assert newest.name == "step_00000009"
    path = newest / kind
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    resumed = make_run("train.max_steps=9", out="damaged")
    with caplog.at_level(logging.WARNING, logger="shareddiff"):
        result = train(resumed, resume=True, progress=False)
    line, moved = logged_warnings(caplog)
    assert re.fullmatch(rf"skipping damaged checkpoint {newest}: {kind} .*; using step_00000006 instead", line)
    (aside,) = (damaged_dir / "checkpoints" / "rejected").iterdir()  # set aside on resume: the damaged one kept
    assert moved == f"step_00000009: damaged; kept as {aside}"
    assert (aside / kind).stat().st_size < (newest / kind).stat().st_size
    assert result.step == 9 and not result.already_complete
    assert losses(damaged_dir) == losses(full.train.out_dir)  # steps 7-9 retrained from step 6, bitwise
    verify_checkpoint(list_checkpoints(damaged_dir)[-1])  # the re-written step 9 is whole again


def test_every_checkpoint_damaged_is_refused_not_restarted(make_run, caplog):
    run = make_run("train.max_steps=6")
    train(run, progress=False)
    for ckpt in list_checkpoints(run.train.out_dir):
        shard = ckpt / "dcp" / "__0_0.distcp"
        shard.write_bytes(shard.read_bytes()[:10])
    with pytest.raises(ValueError) as caught:
        train(run, resume=True, progress=False)
    message = str(caught.value)
    assert re.match(
        r"no checkpoint of .*run is intact \(step_00000006: damaged, dcp/__0_0.distcp has 10 bytes, the manifest says "
        r"\d+; step_00000003: damaged, dcp/__0_0.distcp has 10 bytes",
        message,
    )
    assert "move " in message and "aside to start over, or start a new run folder (nothing was deleted)" in message
    lines = logged_warnings(caplog)
    assert len(lines) == 2 and all(line.endswith("; no earlier checkpoint is complete") for line in lines)
    assert len(list_checkpoints(run.train.out_dir)) == 2


def test_an_altered_file_of_the_same_size_is_caught_by_its_sha256(make_run):
    result = train(make_run("train.max_steps=3"), progress=False)
    shard = result.checkpoint / "dcp" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"dcp/__0_0.distcp differs from the manifest \(sha256\)"):
        verify_checkpoint(result.checkpoint)
    load_model(result.checkpoint)  # the weights, tokenizer and state are intact: generate and eval still work


def test_step_folder_without_manifest_is_skipped_by_name_kept_and_resumed_past(make_run, caplog):
    """A step folder without manifest.json (a partial or foreign copy) is never trusted: the newest complete one
    is used, the log line names the folder, the reason and the step used instead, and the folder is kept."""
    run = make_run("train.max_steps=6")
    train(run, progress=False)
    newest = list_checkpoints(run.train.out_dir)[-1]
    (newest / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING, logger="shareddiff"):
        assert latest_checkpoint(run.train.out_dir).name == "step_00000003"
    assert logged_warnings(caplog) == [
        f"skipping incomplete checkpoint {newest}: manifest.json is missing (the trainer writes it last, inside "
        "the rename: this folder is a partial or foreign copy, or was written before checkpoints had manifests); "
        "using step_00000003 instead"
    ]
    assert (newest / "model.safetensors").is_file()  # skipped, not deleted
    state = load_model(run.train.out_dir)[2]  # generate / eval / export fall back the same way
    assert state["step"] == 3
    with pytest.raises(ValueError, match=r"step_00000006 is incomplete: manifest.json is missing .*; use an earlier"):
        load_model(newest)  # the folder named directly: an error naming the problem and the fix
    train(make_run("train.max_steps=9", out="run"), resume=True, progress=False, new_schedule=True)
    assert sorted(losses(run.train.out_dir)) == list(range(1, 10))  # steps 4-9 trained from step 3
    verify_checkpoint(list_checkpoints(run.train.out_dir)[-1])


def test_only_folders_without_manifest_is_an_error_naming_each_and_the_fix(make_run):
    run = make_run("train.max_steps=6")
    train(run, progress=False)
    for ckpt in list_checkpoints(run.train.out_dir):
        (ckpt / "manifest.json").unlink()
    for load in (lambda: train(run, resume=True, progress=False), lambda: load_model(run.train.out_dir)):
        with pytest.raises(ValueError) as caught:
            load()
        message = str(caught.value)
        assert "is intact (step_00000006: incomplete, manifest.json is missing" in message
        assert "; step_00000003: incomplete, manifest.json is missing" in message
        assert "if the run folder was copied from elsewhere, copy it again whole; otherwise " in message
    assert [p.name for p in list_checkpoints(run.train.out_dir)] == ["step_00000003", "step_00000006"]


def test_a_foreign_step_folder_whose_state_is_another_step_is_skipped(make_run, caplog):
    """A whole checkpoint copied under another step's name matches its own manifest, but not its folder name."""
    run = make_run("train.max_steps=3")
    result = train(run, progress=False)
    foreign = result.checkpoint.parent / "step_00000009"
    shutil.copytree(result.checkpoint, foreign)
    with caplog.at_level(logging.WARNING, logger="shareddiff"):
        assert latest_checkpoint(run.train.out_dir) == result.checkpoint
    assert logged_warnings(caplog) == [
        f"skipping damaged checkpoint {foreign}: state.json says step 3, the folder's name step_00000009; "
        "using step_00000003 instead"
    ]


def test_pruning_never_deletes_a_folder_without_manifest(make_run):
    """keep_last rotates complete checkpoints only: an incomplete folder is left for the user to look at."""
    run = make_run("train.max_steps=3", "checkpoint.keep_last=1")
    train(run, progress=False)
    stray = Path(run.train.out_dir) / "checkpoints" / "step_00000001"
    stray.mkdir()
    (stray / "state.json").write_text("{}")
    train(make_run("train.max_steps=9", "checkpoint.keep_last=1"), resume=True, progress=False, new_schedule=True)
    assert [p.name for p in list_checkpoints(run.train.out_dir)] == ["step_00000001", "step_00000009"]


def _fail_second(real, error):
    calls = {"n": 0}

    def writer(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the first checkpoint is written, the second hits the full disk
            raise error
        return real(*args, **kwargs)

    return writer


def _patch_safetensors(monkeypatch):
    monkeypatch.setattr(
        checkpoint, "save_file", _fail_second(checkpoint.save_file, OSError(errno.ENOSPC, "No space left on device"))
    )


def _patch_dcp_writer(monkeypatch):
    from torch.distributed.checkpoint.filesystem import FileSystemWriter

    monkeypatch.setattr(
        FileSystemWriter,
        "write_data",
        _fail_second(FileSystemWriter.write_data, OSError(errno.ENOSPC, "No space left on device")),
    )


def _patch_torch_save_without_errno(monkeypatch):
    """torch.save's zip writer reports a full disk as a bare RuntimeError; the free space tells."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if str(f).endswith("rng_rank0.pt") and "step_00000006" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage._replace(free=4096))


@pytest.mark.parametrize("patch", [_patch_safetensors, _patch_dcp_writer, _patch_torch_save_without_errno])
def test_full_disk_is_named_cleaned_up_and_the_previous_checkpoint_loads(make_run, monkeypatch, patch):
    run = make_run("train.max_steps=6")
    patch(monkeypatch)
    root = run.train.out_dir + "/checkpoints"
    with pytest.raises(CheckpointWriteError) as caught:
        train(run, progress=False)
    message = str(caught.value)
    assert "could not write checkpoint step_00000006: no space left on device" in message
    assert filesystem_of(root) in message and f"free at {root}" in message
    assert "the last checkpoint (step_00000003) is intact" in message and "--resume" in message
    assert "\n" not in message
    assert sorted(os.listdir(root)) == ["step_00000003"]  # no step_00000006.tmp left behind
    monkeypatch.undo()
    model, _, state = load_model(run.train.out_dir)
    assert state["step"] == 3 and model.config.attention == "shared_diff"
    train(run, resume=True, progress=False)
    assert sorted(losses(run.train.out_dir)) == list(range(1, 7))


def test_other_write_errors_are_one_line_with_their_cause(make_run, monkeypatch):
    monkeypatch.setattr(checkpoint, "save_file", _fail_second(checkpoint.save_file, PermissionError(13, "denied")))
    run = make_run("train.max_steps=6")
    with pytest.raises(CheckpointWriteError, match=r"step_00000006 in .* \(PermissionError: \[Errno 13\] denied\)"):
        train(run, progress=False)


def test_filesystem_is_named_by_device_and_mount_point(tmp_path):
    name = filesystem_of(tmp_path)
    mounts = [line.split()[:2] for line in Path("/proc/self/mounts").read_text().splitlines()]
    device, mount = name.split(" (mounted on ")
    assert [device, mount.rstrip(")")] in mounts
    assert str(tmp_path.resolve()).startswith(mount.rstrip(")"))


def test_a_run_whose_every_checkpoint_is_damaged_is_named_so(tmp_path):
    """Checkpoints that exist but fail verification are not reported as 'no checkpoint'."""
    from shareddiff.train.checkpoint import resolve_checkpoint

    step = tmp_path / "checkpoints" / "step_00000010"
    step.mkdir(parents=True)
    (step / "state.json").write_text("{}")  # no weights: damaged
    with pytest.raises(ValueError, match=r"no checkpoint of .* is intact \(step_00000010: damaged, state.json is not"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="holds no checkpoint; pass a run folder"):
        resolve_checkpoint(tmp_path / "checkpoints" / "step_00000010" / "..")  # a folder without checkpoints/
