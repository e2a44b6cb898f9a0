"""Data parallelism under torchrun (gloo, CPU): DDP and FSDP2 match one process, with every option of
``parallelize`` (compiled blocks, FSDP2 resharding and prefetching, gradient sync under accumulation);
save on 2, resume on 1; a dead rank leaves a loadable checkpoint; ranks with different recipes fail fast."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.distributed.checkpoint import FileSystemReader

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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and result.returncode != 0 and ABORT_AT_EXIT in result.stderr and not extra:
        # Seen once in ~10 full CPU runs (2026-11-30): rank 0 of a compiled two-process gloo run aborted with
        # this C++ message and no Python traceback; the same test passed 4 times alone. One fresh retry keeps
        # that out of CI while any repeatable failure still fails the test.
        print(f"retrying once after: {ABORT_AT_EXIT}")
        shutil.rmtree(run.train.out_dir, ignore_errors=True)
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


ABORT_AT_EXIT = "terminate called without an active exception"


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
    assert_ran_with(double, strategy=strategy)


def assert_ran_with(run, **parallel) -> None:
    """The torchrun processes trained with these [parallel] settings (their run_config.json says so)."""
    recorded = json.loads((Path(run.train.out_dir) / "run_config.json").read_text())
    assert {k: recorded["run"]["parallel"][k] for k in parallel} == parallel
    assert recorded["world_size"] == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        {"reshard_after_forward": "never", "prefetch_blocks": 2, "grad_sync": "last", "activation_checkpointing": True},
        {"reshard_after_forward": "always", "prefetch_blocks": 1, "grad_sync": "every"},
    ],
    ids=["never-prefetch2-synclast-ac", "always-prefetch1-syncevery"],
)
def test_fsdp_options_two_processes_match_one(make_run, options):
    """Resharding, explicit prefetching and skipped reductions change when bytes move, never the result."""
    single = make_run("train.max_steps=6", "train.micro_batch=4", "train.grad_accum=2", out="single")
    train(single, progress=False)
    overrides = [f"parallel.{k}={str(v).lower()}" for k, v in options.items()]
    double = make_run(
        "train.max_steps=6",
        "train.micro_batch=2",
        "train.grad_accum=2",
        "parallel.strategy=fsdp",
        *overrides,
        out="two",
    )
    torchrun(double)
    assert_curves_close(losses(double.train.out_dir), losses(single.train.out_dir))
    assert_ran_with(double, strategy="fsdp", **options)


@pytest.mark.slow
def test_compiled_blocks_two_processes_match_one(make_run, monkeypatch):
    """parallel.compile_unit=block: each block compiled before wrapping (torchtitan's order), under DDP and
    FSDP2. Micro-batches of 2 on one and on two processes: the same shapes, so the two-process runs reuse
    the compiled code of the first (Inductor's cache) and the test stays short."""
    compiled = []
    real_compile = torch.compile

    def spy(module, *args, **kwargs):
        compiled.append(type(module).__name__)
        return real_compile(module, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    common = ("train.max_steps=4", "train.micro_batch=2", "train.compile=true", "parallel.compile_unit=block")
    single = make_run(*common, "train.grad_accum=2", out="single")
    train(single, progress=False)
    assert compiled == ["Block"] * single.model_config().n_layers  # the blocks, not the whole model
    for strategy in ("ddp", "fsdp"):
        double = make_run(*common, f"parallel.strategy={strategy}", out=strategy)
        torchrun(double)
        assert_curves_close(losses(double.train.out_dir), losses(single.train.out_dir))
        assert_ran_with(double, strategy=strategy, compile_unit="block")
        ckpt = list_checkpoints(double.train.out_dir)[-1]
        load_model(ckpt)  # strict: the safetensors names are the plain model's
        saved = FileSystemReader(str(ckpt / "dcp")).read_metadata().state_dict_metadata
        assert saved and not [k for k in saved if "_orig_mod" in k]


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


def _parallelize_worker(rank: int, port: int, result_dir: str) -> None:
    """What ``parallelize`` builds, seen from inside two gloo processes; the findings go to rank{R}.json."""
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.tensor import DTensor

    from shareddiff.config import ModelConfig, ParallelConfig
    from shareddiff.model import build_model
    from shareddiff.train.distributed import DistInfo, gradient_sync, parallelize

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    info, cpu, found = DistInfo(rank, 2, rank), torch.device("cpu"), {}
    rows = torch.randint(0, 64, (4, 2, 17), generator=torch.Generator().manual_seed(rank))  # 2 micro-batches

    def build(precision: str = "fp32", **options):
        torch.manual_seed(0)
        model = build_model(ModelConfig.from_preset("shared_diff-tiny", vocab_size=64, n_layers=3))
        return parallelize(model, ParallelConfig(**options), info, cpu, precision=precision)

    def loss(model, micro: int):
        x = rows[micro]
        return F.cross_entropy(model(x[:, :-1]).float().flatten(0, 1), x[:, 1:].flatten())

    for policy in ("auto", "always", "never"):  # which units (blocks, then the root) hold gathered parameters
        model = build("bf16", strategy="fsdp", reshard_after_forward=policy)
        logits = model(rows[0][:, :-1])
        found[policy] = [not isinstance(b.ffn_norm.weight, DTensor) for b in model.layers]
        found[policy].append(not isinstance(model.norm.weight, DTensor))
        found[f"{policy} dtype"] = str(logits.dtype)
        logits.float().sum().backward()
    found["fp32 run dtype"] = str(build("fp32", strategy="fsdp")(rows[0][:, :-1]).dtype)
    found["explicit fp32 dtype"] = str(build("bf16", strategy="fsdp", param_dtype="fp32")(rows[0][:, :-1]).dtype)

    for strategy in ("ddp", "fsdp"):  # gradients after the first of two micro-batches, and after both
        for sync in ("last", "every"):
            config = ParallelConfig(strategy=strategy, grad_sync=sync)
            model = build(**vars(config))
            for micro in range(2):
                with gradient_sync(model, config, last_micro_batch=micro == 1):
                    (loss(model, micro) / 2).backward()
                grad = model.module.norm.weight.grad if strategy == "ddp" else model.norm.weight.grad
                if strategy == "fsdp":
                    grad = None if grad is None else grad.full_tensor()
                if micro == 0 and grad is not None:  # the same on both ranks once reduced
                    both = [torch.empty_like(grad) for _ in range(2)]
                    dist.all_gather(both, grad)
                    found[f"{strategy} {sync} reduced after micro 0"] = bool(torch.equal(*both))
                elif micro == 0:
                    found[f"{strategy} {sync} reduced after micro 0"] = None  # FSDP2 holds it unsharded
            found[f"{strategy} {sync} grad"] = grad.tolist()
    dist.destroy_process_group()
    with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as f:
        json.dump(found, f)


@pytest.mark.slow
def test_parallelize_builds_what_its_options_say(tmp_path):
    """Reshard policy and FSDP2 parameter dtype as observed after a forward; gradient reduction skipped on
    the first micro-batch under grad_sync=last, done under every; the same accumulated gradient either way."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_parallelize_worker, args=(port, str(tmp_path)), nprocs=2)
    found = json.loads((tmp_path / "rank0.json").read_text())
    assert found["auto"] == [False, False, True, True]  # the last block and the root keep theirs
    assert found["always"] == [False, False, False, False]
    assert found["never"] == [True, True, True, True]
    assert found["auto dtype"] == "torch.bfloat16"  # param_dtype auto follows a bf16 run
    assert found["fp32 run dtype"] == found["explicit fp32 dtype"] == "torch.float32"
    assert found["ddp last reduced after micro 0"] is False  # no_sync: each rank keeps its own gradient
    assert found["ddp every reduced after micro 0"] is True
    assert found["fsdp last reduced after micro 0"] is None  # no sharded gradient until the last micro-batch
    assert found["fsdp every reduced after micro 0"] is True
    for strategy in ("ddp", "fsdp"):
        last, every = torch.tensor(found[f"{strategy} last grad"]), torch.tensor(found[f"{strategy} every grad"])
        assert torch.allclose(last, every, rtol=1e-5, atol=1e-7), (last - every).abs().max()
    assert torch.allclose(torch.tensor(found["ddp last grad"]), torch.tensor(found["fsdp last grad"]), rtol=1e-5)
