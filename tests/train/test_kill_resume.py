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
