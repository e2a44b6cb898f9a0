"""Data parallelism under torchrun (gloo, CPU): DDP and FSDP2 match one process; save on 2, resume on 1;
a dead rank leaves a loadable checkpoint; ranks with different recipes fail fast."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from shareddiff.train import load_model, train
from shareddiff.train.checkpoint import list_checkpoints
from shareddiff.train.metrics import read_metrics
from tests.train.conftest import recipe_args
from tests.train.test_trainer import losses

TOL = 1e-5  # relative, float32: a 2-process all-reduce sums the gradient in another order than one process


def torchrun(run, *extra: str, nproc: int = 2, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "shareddiff.cli",
        "train",
        "--no-progress",
        *recipe_args(run),
        *extra,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_curves_close(a: dict[int, float], b: dict[int, float]) -> None:
    assert sorted(a) == sorted(b)
    print("max relative difference:", max(abs(a[s] - b[s]) / abs(b[s]) for s in a))
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=TOL), f"step {step}: {a[step]} vs {b[step]}"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(make_run, strategy):
    single = make_run("train.max_steps=8", "train.micro_batch=4", "train.grad_accum=2", out="single")
    train(single, progress=False)
    double = make_run(
        "train.max_steps=8", "train.micro_batch=2", "train.grad_accum=2", f"parallel.strategy={strategy}", out=strategy
    )
    torchrun(double)
    assert_curves_close(losses(double.train.out_dir), losses(single.train.out_dir))
    state = list_checkpoints(double.train.out_dir)[-1] / "state.json"
    assert '"world_size": 2' in state.read_text()


@pytest.mark.slow
def test_save_on_two_resume_on_one(make_run, tmp_path):
    two = make_run("train.micro_batch=2", "parallel.strategy=fsdp", out="two")
    torchrun(two)
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(two.train.out_dir, resumed_dir)
    for ckpt in list_checkpoints(resumed_dir):
        if int(ckpt.name.split("_")[1]) > 6:
            shutil.rmtree(ckpt)
    one = make_run("train.micro_batch=4", "parallel.strategy=fsdp", out="resumed")
    train(one, resume=True, progress=False)
    full, cont = losses(two.train.out_dir), losses(resumed_dir)
    assert_curves_close({s: v for s, v in cont.items() if s > 6}, {s: v for s, v in full.items() if s > 6})
    assert {s: v for s, v in cont.items() if s <= 6} == {s: v for s, v in full.items() if s <= 6}


@pytest.mark.slow
def test_a_dead_rank_leaves_the_last_checkpoint_loadable(make_run):
    run = make_run("train.max_steps=400", "train.micro_batch=2", "checkpoint.every=2", out="dies")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "shareddiff.cli",
        "train",
        "--no-progress",
        *recipe_args(run),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(r.get("step", 0) >= 5 for r in read_metrics(run.train.out_dir)):
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert workers, "no worker processes found"
    os.kill(int(workers[-1]), signal.SIGKILL)  # one rank dies, possibly in the middle of a checkpoint
    assert proc.wait(timeout=120) != 0
    model, _, state = load_model(run.train.out_dir)
    assert state["step"] >= 4 and model.config.attention == "shared_diff"
    end = state["step"] + 4
    finish = make_run(f"train.max_steps={end}", "train.micro_batch=4", out="dies")  # the rest on one process
    train(finish, resume=True, progress=False, new_schedule=True)  # a shorter run than the one started
    assert [r["step"] for r in read_metrics(run.train.out_dir) if "loss" in r] == list(range(1, end + 1))


def _recipe_check_worker(rank: int, port: int, result_dir: str) -> None:
    import torch.distributed as dist

    from shareddiff.train.distributed import DistInfo, check_same_recipe

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        check_same_recipe({"optim": {"lr": 1e-3 if rank == 0 else 2e-3}}, DistInfo(rank, 2, rank))
        message = "no error"
    except ValueError as err:
        message = str(err)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(result_dir, f"rank{rank}.txt"), "w") as f:
        f.write(message)


def test_ranks_with_different_recipes_fail_fast(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_recipe_check_worker, args=(port, str(tmp_path)), nprocs=2)
    for rank in range(2):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert "ranks [1] were launched with a recipe that differs from rank 0's" in message


def test_activation_checkpointing_keeps_the_curve(make_run):
    plain = make_run("train.max_steps=4", out="plain")
    train(plain, progress=False)
    recompute = make_run("train.max_steps=4", "parallel.activation_checkpointing=true", out="ac")
    train(recompute, progress=False)
    assert losses(recompute.train.out_dir) == pytest.approx(losses(plain.train.out_dir), rel=1e-6)
    weights = load_model(recompute.train.out_dir)[0].state_dict()
    assert all("_checkpoint_wrapped_module" not in k for k in weights) and torch.is_tensor(next(iter(weights.values())))
