"""One run per run folder: a second training process is refused by name while the first lives; the lock
dies with its holder (SIGKILL included), so it never needs cleaning up."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shareddiff.train.checkpoint import list_checkpoints
from shareddiff.train.metrics import read_metrics
from shareddiff.train.runlock import LOCK_FILE, RunFolderBusy, RunLock
from tests.train.conftest import recipe_args


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "shareddiff.cli", "train", "--no-progress", *args]


def _wait_until_training(run_dir: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any("loss" in r for r in read_metrics(run_dir)):
            return
        time.sleep(0.05)
    raise AssertionError(f"run A never trained a step (exit code {proc.poll()})")


@pytest.mark.slow
def test_second_run_into_a_live_run_folder_is_refused_naming_the_holder(make_run):
    run_a = make_run("optim.lr=1e-3", "train.max_steps=100000", "checkpoint.every=100000")
    run_b = make_run("optim.lr=1e-2", "train.max_steps=3")
    folder = Path(run_a.train.out_dir)
    assert run_b.train.out_dir == str(folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    a = subprocess.Popen(_cli(*recipe_args(run_a)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until_training(folder, a)
        b = subprocess.run(_cli(*recipe_args(run_b)), env=env, capture_output=True, text=True, timeout=300)
        assert a.poll() is None, "run A stopped while B tried its folder"
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait()
    holder = json.loads((folder / LOCK_FILE).read_text())
    assert b.returncode == 2
    message = b.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: {folder} is in use by another training run (pid {a.pid} on ")
    assert socket.gethostname() in message and f"started {holder['started']}" in message
    assert "optim.lr=0.001" in message and "optim.lr=0.01" not in message
    assert "set train.out_dir to another folder" in message
    recorded = json.loads((folder / "run_config.json").read_text())
    assert recorded["run"]["optim"]["lr"] == 1e-3  # B wrote nothing into A's folder
    assert not list_checkpoints(folder)

    with RunLock(folder):  # A was SIGKILLed: its lock went with it, nothing to clean up
        pass


def test_lock_refuses_a_second_holder_and_frees_on_release(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    with pytest.raises(RunFolderBusy, match=rf"in use by another training run \(pid {os.getpid()} on "):
        RunLock(tmp_path).acquire()
    first.release()
    with RunLock(tmp_path):
        pass


def test_a_filesystem_without_locks_warns_and_runs(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match=r"cannot lock .*\.lock \(No locks available\): nothing stops a second run"):
        RunLock(tmp_path).acquire()
