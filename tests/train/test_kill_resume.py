"""A run killed with SIGKILL at a random moment resumes with no lost or repeated steps."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from shareddiff.train.metrics import read_metrics
from tests.train.conftest import recipe_args
from tests.train.test_trainer import losses


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "shareddiff.cli", "train", "--no-progress", *args]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(make_run):
    reference = make_run("train.max_steps=20", out="reference")
    killed = make_run("train.max_steps=20", out="killed")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_cli(*recipe_args(reference)), check=True, env=env, capture_output=True)

    kill_after = random.SystemRandom().randint(2, 17)
    print(f"killing after step {kill_after}")
    proc = subprocess.Popen(_cli(*recipe_args(killed)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        done = [r["step"] for r in read_metrics(killed.train.out_dir) if "loss" in r]
        if done and done[-1] >= kill_after:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    resumed = subprocess.run(_cli(*recipe_args(killed), "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    steps = [r["step"] for r in read_metrics(killed.train.out_dir) if "loss" in r]
    assert steps == list(range(1, 21))
    assert losses(killed.train.out_dir) == losses(reference.train.out_dir)


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "name"), [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_ctrl_c_saves_a_checkpoint_ends_with_one_line_and_resumes_bitwise(make_run, signum, name):
    """Ctrl-C, and SIGTERM (schedulers, ``timeout``), finish the step, save a checkpoint, end with one line and exit
    with 128 + the signal; the resumed run's losses equal an uninterrupted run's bitwise."""
    from shareddiff.train import train
    from shareddiff.train.checkpoint import list_checkpoints

    reference = make_run("train.max_steps=60", "checkpoint.every=100", out="reference")
    train(reference, progress=False)
    interrupted = make_run("train.max_steps=60", "checkpoint.every=100", out="interrupted")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _cli(*recipe_args(interrupted)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(r.get("step", 0) >= 3 for r in read_metrics(interrupted.train.out_dir)):
            break
        time.sleep(0.01)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    ckpts = list_checkpoints(interrupted.train.out_dir)
    assert len(ckpts) == 1, "the first Ctrl-C saves a checkpoint at the end of the step"
    step = int(ckpts[0].name.removeprefix("step_"))
    assert 3 <= step < 60
    assert err.strip().splitlines()[-1] == (
        f"interrupted at step {step} of 60; last checkpoint step {step} ({ckpts[0]}); continue with --resume"
    )
    assert f"{name}: stopping after this step with a checkpoint" in out

    train(interrupted, resume=True, progress=False)
    assert losses(interrupted.train.out_dir) == losses(reference.train.out_dir)
