"""benchmarks/data_parallel.py on CPU (gloo): its forms, and the same loss on 1 and 2 processes."""

import json
import os
import subprocess
import sys

import pytest
from data_parallel import parse_form

from tests.benchmarks.conftest import BENCHMARKS

TINY = ["--preset=shared_diff-tiny", "--seq-len=32", "--global-batch=8", "--micro-batch=2", "--vocab-size=300"]
FAST = ["--steps=2", "--warmup=1", "--device=cpu"]


def test_forms_parse_into_parallel_configs():
    form = parse_form("fsdp/block,prefetch_blocks=2,reshard_after_forward=never", world=2)
    assert (form.strategy, form.compile) == ("fsdp", "block")
    assert (form.parallel.strategy, form.parallel.compile_unit) == ("fsdp", "block")
    assert (form.parallel.prefetch_blocks, form.parallel.reshard_after_forward) == (2, "never")
    assert parse_form("single", world=1).compile == "eager"
    assert parse_form("ddp/model", world=2).parallel.compile_unit == "model"


@pytest.mark.parametrize(
    ("text", "world", "message"),
    [
        ("zero3/block", 2, r"STRATEGY/COMPILE with STRATEGY in \('single', 'ddp', 'fsdp'\)"),
        ("fsdp/jit", 2, r"COMPILE in \('eager', 'block', 'model'\)"),
        ("single/eager", 2, "needs one process, this launch has 2"),
        ("ddp/eager", 1, "needs torchrun with several processes, this launch has 1"),
        ("fsdp/eager,prefetch_blocks", 2, "must look like field=value"),
        ("fsdp/eager,prefetch=2", 2, r"unknown \[parallel\] field .* valid fields are"),
        ("fsdp/eager,reshard_after_forward=later", 2, "parallel.reshard_after_forward='later' must be one of"),
    ],
)
def test_bad_forms_name_the_fix(text, world, message):
    with pytest.raises(ValueError, match=message):
        parse_form(text, world)


def run(*args: str, nproc: int = 1) -> str:
    prefix = [sys.executable]
    if nproc > 1:
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*prefix, str(BENCHMARKS / "data_parallel.py"), *args], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_every_form_trains_on_the_same_global_batch(tmp_path):
    """One process (micro 2 × accum 4) and two (micro 2 × accum 2), DDP and FSDP2 with options: the same
    global batch, so the same loss after the same steps (float32 on CPU, TOL of the trainer's tests)."""
    out = f"--out={tmp_path}"
    run("--forms", "single/eager", *TINY, *FAST, out)
    forms = ("ddp/eager", "fsdp/eager,prefetch_blocks=1,reshard_after_forward=never,grad_sync=last")
    printed = run("--forms", *forms, *TINY, *FAST, "--profile", out, nproc=2)
    assert printed.count("ROW ") == 2
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [(r["form"], r["gpus"], r["grad_accum"]) for r in rows] == [
        ("single/eager", 1, 4),
        ("ddp/eager", 2, 2),
        (forms[1], 2, 2),
    ]
    for r in rows[1:]:
        assert r["loss"] == pytest.approx(rows[0]["loss"], rel=1e-5)
        assert r["grad_norm"] == pytest.approx(rows[0]["grad_norm"], rel=1e-4)
        assert r["parallel"]["strategy"] == r["strategy"]
    assert rows[2]["parallel"]["prefetch_blocks"] == 1
    profiles = json.loads((tmp_path / "profiles.json").read_text())
    fsdp = profiles[f"shared_diff-tiny gpus=2 {forms[1]}"]
    assert len(fsdp["ranks"]) == 2
    families = {a["name"]: a["calls_per_step"] for a in fsdp["ranks"][0]["cpu_annotations"]}
    assert families["FSDP::post_backward_reduce"] == 3  # 2 blocks + the root, on the last micro-batch only
    assert families["step::optimizer"] == 1
    table = run("--table", str(tmp_path / "rows.jsonl"))
    assert "fsdp/eager,prefetch_blocks=1" in table and "wrote " in table
