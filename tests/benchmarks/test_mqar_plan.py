"""benchmarks/mqar_plan.py and mqar_plan.sh: the pieces' experiments, the speed read from a run's records,
the fits and the projected GPU time against hand computations, and (slow) the CPU dry run of the script."""

import json
import math
import os
import shlex
import subprocess

import pytest
from mqar_plan import (
    CELLS,
    MODE_OVERRIDES,
    VARIANTS,
    PieceModel,
    eval_flops,
    fit_line,
    grid_runs,
    group_name,
    pieces,
    prepare,
    project,
    read_piece,
    run_speed,
    step_flops,
)

from shareddiff.repro.runner import run_recipe
from shareddiff.repro.spec import load_experiment
from tests.benchmarks.conftest import BENCHMARKS


def test_fit_line_recovers_a_line_and_never_goes_negative():
    a, b = fit_line([(1.0, 3.0), (2.0, 5.0), (4.0, 9.0)])  # y = 1 + 2x
    assert (a, b) == (pytest.approx(1.0), pytest.approx(2.0))
    assert fit_line([(5.0, 2.0)]) == (2.0, 0.0)  # one point: a constant
    assert fit_line([(1.0, 4.0), (1.0, 2.0)]) == (3.0, 0.0)  # one x: the mean
    assert fit_line([(1.0, 4.0), (2.0, 2.0)]) == (3.0, 0.0)  # slower when smaller: the mean, no negative slope
    a, b = fit_line([(1.0, 1.0), (2.0, 3.0)])  # y = −1 + 2x would be negative at 0: through the origin instead
    assert a == 0.0 and b == pytest.approx((1 * 1 + 2 * 3) / (1 + 4))
    with pytest.raises(ValueError, match="at least one point"):
        fit_line([])


def test_grid_runs_are_the_experiments_runs():
    budget = grid_runs("mqar_budget", [])
    assert len(budget) == 16 and {r[0] for r in budget} == {"transformer"}
    assert {(r[2], r[3], r[4]) for r in budget} == {(12_500, 250, 2)}  # max_steps, eval_every, patience
    assert {r[1] for r in budget} == {(64, 4, 512, 64), (64, 4, 512, 128), (128, 8, 512, 64), (128, 8, 512, 128)}
    grid = grid_runs("mqar", ["train.max_steps=3000"])
    assert len(grid) == 144 and {r[2] for r in grid} == {3000}
    assert {r[0] for r in grid} == {"transformer", "diff", "shared_diff"}
    assert {r[1][:3] for r in grid} == {(64, 4, 512), (128, 8, 512), (256, 16, 256), (512, 64, 128)}


def test_projection_equals_a_hand_computation():
    """10 ms a step, 0.5 s an evaluation, 10 s more per run, 4 runs per GPU. mqar_budget: 16 runs of 12,500
    steps evaluated every 250 (50 evaluations): 125 + 25 + 10 = 160 s each; stopped at the first possible
    early stop (2 × 250 = 500 steps, 2 evaluations): 5 + 1 + 10 = 16 s."""
    flat = {v: (0.01, 0.0) for v in ("transformer", "diff", "shared_diff")}
    model = PieceModel("eager", 4, flat, {v: (0.5, 0.0) for v in flat}, overhead_s=10.0)
    result = project(model, grid_runs("mqar_budget", []), samples=1000, gpus=2)
    assert result["runs"] == 16
    assert result["gpu_minutes_upper"] == pytest.approx(16 * 160 / 4 / 60)
    assert result["gpu_minutes_lower"] == pytest.approx(16 * 16 / 4 / 60)
    assert result["wall_minutes_upper"] == pytest.approx(result["gpu_minutes_upper"] / 2)
    odd = project(model, grid_runs("mqar", ["train.max_steps=2100"]), samples=1000, gpus=1)  # 9 evaluations
    assert odd["gpu_minutes_upper"] == pytest.approx(144 * (21 + 9 * 0.5 + 10) / 4 / 60)
    slope = PieceModel("eager", 1, {"transformer": (0.0, 1e-12)}, {"transformer": (0.0, 1e-12)}, 0.0)
    cell = CELLS[0]
    seconds = slope.run_seconds("transformer", cell, 1000, 250, 1000)
    assert seconds == pytest.approx(
        1e-12 * (1000 * step_flops("transformer", cell) + 4 * eval_flops("transformer", cell, 1000))
    )


def test_flops_grow_with_the_cell():
    sizes = [step_flops("shared_diff", cell) for cell in CELLS]
    assert sizes == sorted(sizes) and sizes[-1] > 10 * sizes[0]
    assert step_flops("diff", CELLS[2]) > step_flops("transformer", CELLS[2])  # 6 attention width units, not 4
    at_512 = eval_flops("transformer", CELLS[3], 1000)
    assert eval_flops("transformer", CELLS[3], 2000) == pytest.approx(2 * at_512)
    no_2x = eval_flops("transformer", CELLS[3], 1000, max_seq_len=512)  # 2N does not fit: N alone
    assert no_2x < at_512 / 2


def test_prepare_writes_experiments_of_the_planned_runs(tmp_path):
    lines = prepare(tmp_path / "scratch", tmp_path / "out", gpus=2, dry=False, only=[])
    names = [line.split("\t")[0] for line in lines]
    planned = [p.name for p in pieces()]
    assert names == [*planned[:4], "overhead", *planned[4:]]
    for piece in pieces():
        line = next(line for line in lines if line.startswith(piece.name + "\t"))
        _, seconds, command = line.split("\t")
        args = shlex.split(command)
        assert int(seconds) == piece.seconds and args[args.index("--jobs") + 1] == str(piece.per_gpu * 2)
        assert "train.max_steps=300" in args and all(o in args for o in MODE_OVERRIDES[piece.mode])
        exp = load_experiment(str(tmp_path / "scratch" / f"{piece.name}.toml"))
        assert len(exp.runs) == piece.runs() and sorted(s.seed for s in exp.runs)[-1] == (
            2 if piece.per_gpu == 8 else 1
        )
        configs = {group_name(variant, cell): (variant, cell) for variant, cell in piece.configs}
        for spec in exp.runs:
            run = run_recipe(exp, spec, tmp_path / "runs", args[args.index("--no-summary") + 1 :])
            variant, (seq_len, pairs, batch, d_model) = configs[spec.group]
            assert run.model["preset"] == f"{variant}-mqar" and run.optim.lr == 1e-3 and run.train.max_steps == 300
            cell = (run.data.seq_len, run.mqar.pairs, run.train.micro_batch, run.model_config().d_model)
            assert cell == (seq_len, pairs, batch, d_model)
            assert run.train.early_stop_accuracy == 0 and run.mqar.eval_samples == 1000
    assert [(p.mode, p.per_gpu) for p in pieces()][:4] == [
        ("eager", 1),
        ("eager", 8),
        ("cudagraphs", 8),
        ("compiled", 8),
    ]
    for piece in pieces():  # every variant in two cells at least: a line per variant
        assert all(len({c for v, c in piece.configs if v == variant}) >= 2 for variant in VARIANTS), piece.name
    assert {v for p in pieces() for v, _ in p.configs} == {"transformer", "diff", "shared_diff"}
    only = prepare(tmp_path / "scratch", tmp_path / "out", gpus=2, dry=False, only=["compiled-1"])
    assert [line.split("\t")[0] for line in only] == ["compiled-1"]


def fake_run(folder, windows, evals, seconds_total=None, tokens_per_step=1000):
    """A measured run's records: log windows of tokens/s, evaluations' seconds, and the record when finished."""
    folder.mkdir(parents=True)
    run = {"data": {"seq_len": 64}, "mqar": {"pairs": 4}, "train": {"micro_batch": 512}, "model": {"d_model": 64}}
    config = {"run": run, "model_config": {"attention": "diff"}, "tokens_per_step": tokens_per_step}
    (folder / "run_config.json").write_text(json.dumps(config))
    rows = [{"step": 50 * (i + 1), "loss": 1.0, "tokens_per_s": t} for i, t in enumerate(windows)]
    rows += [{"step": 150 * (i + 1), "mqar_accuracy": 0.1, "eval_s": s} for i, s in enumerate(evals)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if seconds_total is not None:
        (folder / "record.json").write_text(json.dumps({"seconds_total": seconds_total}))


def test_speed_comes_from_the_windows_after_the_first(tmp_path):
    """Windows of 1000, 20000, 30000, 10000 tokens/s at 1000 tokens a step: the first (compilation) is left
    out, the median of the rest is 20 steps/s; the run's 200 steps take 10 s, its evaluations 3 s, so 5 s of
    its 18 s are overhead. A run cut off (no record) has a speed and no overhead."""
    fake_run(tmp_path / "runs" / "eager-1" / "done", [1000, 20000, 30000, 10000], [1.0, 2.0], seconds_total=18.0)
    fake_run(tmp_path / "runs" / "eager-1" / "cut", [5000, 8000], [])
    speed = run_speed(tmp_path / "runs" / "eager-1" / "done")
    assert speed["steps_per_s"] == 20.0 and speed["steps"] == 300 and speed["eval_s"] == 1.5
    assert speed["overhead_s"] == pytest.approx(18.0 - 300 / 20 - 3.0)
    assert speed["variant"] == "diff" and speed["cell"] == (64, 4, 512, 64)
    cut = run_speed(tmp_path / "runs" / "eager-1" / "cut")
    assert (cut["steps_per_s"], cut["eval_s"], cut["overhead_s"]) == (8.0, None, None)
    piece = pieces()[0]
    out = read_piece(tmp_path, piece, {"rc": 124, "seconds": 130})
    assert (out["status"], out["finished_runs"], len(out["runs"])) == ("out of time", 1, 2)
    assert read_piece(tmp_path, piece, {"skipped": True})["status"] == "skipped: out of budget"
    assert read_piece(tmp_path, piece, {"rc": 1})["status"] == "failed"
    assert (
        read_piece(tmp_path, pieces()[1], {})["status"] == "not run"
        and not read_piece(tmp_path, pieces()[1], {})["runs"]
    )


@pytest.mark.slow
def test_the_plan_runs_dry_on_the_cpu(tmp_path):
    """DRY=1: tiny cells, 6 steps, eager with 1 and 2 runs at once, the overhead timing; every piece done,
    every run's speed read, the report written; the scratch folder removed."""
    env = {
        **os.environ,
        "DRY": "1",
        "OUT": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "PYTHON": shlex.quote(os.sys.executable),
    }
    done = subprocess.run(["bash", str(BENCHMARKS / "mqar_plan.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "mqar_plan.json").read_text())
    assert [(p["name"], p["status"], p["finished_runs"]) for p in result["pieces"]] == [
        ("eager-1", "done", 2),
        ("eager-2", "done", 2),
    ]
    assert all(
        len(p["runs"]) == 2 and all(r["steps"] == 6 and r["steps_per_s"] > 0 for r in p["runs"])
        for p in result["pieces"]
    )
    assert all(r["evals"] == 2 and r["overhead_s"] is not None for p in result["pieces"] for r in p["runs"])
    assert {m["per_gpu"] for m in result["models"]} == {1, 2} and result["projections"] == []
    (timing,) = result["overhead"]
    assert timing["step_s"] > 0 and math.isclose(sum(timing["fraction"].values()), 1.0)
    assert [s["rc"] for s in result["statuses"]] == [0, 0, 0]
    text = (tmp_path / "mqar_plan.txt").read_text()
    assert "eager-2: done (2/2 runs)" in text and "overhead: rc 0" in text
    scratch = next(line for line in done.stdout.splitlines() if "scratch" in line).rsplit(" ", 1)[1]
    assert not os.path.exists(scratch)
