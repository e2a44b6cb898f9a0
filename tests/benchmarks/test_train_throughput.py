"""benchmarks/train_throughput.py: every compiled row compiles its own model, a failing row is recorded while
the others run, and --budget-s starts no row after its time."""

import json
import sys

import pytest
import torch
import train_throughput

CPU = torch.device("cpu")


def test_each_compiled_row_compiles_its_own_model(monkeypatch):
    """With dynamo's recompile limit at 1, the second model of a run still compiles (before the per-row reset,
    a run's ninth model exceeded the default limit of 8 and ran eager, unnoticed)."""
    compile_eagerly = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: compile_eagerly(model, backend="eager"))
    with torch._dynamo.config.patch(recompile_limit=1):
        rows = [train_throughput.bench(f"{f}-tiny", 16, 1, 1, 0, CPU, True, "auto") for f in ("transformer", "diff")]
    assert [r["compiled_graphs"] for r in rows] == [1, 1]
    eager = train_throughput.bench("diff-tiny", 16, 1, 1, 0, CPU, False, "auto")
    assert eager["compiled_graphs"] == 0


def run_main(monkeypatch, tmp_path, *args: str) -> dict:
    argv = ["train_throughput.py", "--sizes", "tiny", "--seq-len", "16", "--batch", "1", "--steps", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--warmup", "0", "--out", str(tmp_path), *args])
    try:
        train_throughput.main()
        code = 0
    except SystemExit as stop:
        code = stop.code
    (path,) = tmp_path.glob("train_throughput-*.json")
    return {"code": code, **json.loads(path.read_text())}


def test_a_failing_row_is_recorded_and_the_rest_run(monkeypatch, tmp_path, capsys):
    real_bench = train_throughput.bench

    def bench(preset, *args, **kwargs):
        if preset.startswith("diff-"):
            raise torch.OutOfMemoryError("CUDA out of memory (a test's)")
        return real_bench(preset, *args, **kwargs)

    monkeypatch.setattr(train_throughput, "bench", bench)
    result = run_main(monkeypatch, tmp_path, "--families", "transformer", "diff", "shared_diff")
    assert [r["preset"] for r in result["results"]] == ["transformer-tiny", "shared_diff-tiny"]
    row = "diff-tiny seq 16 batch 1 compile False projections fused"
    assert result["failures"] == [{"row": row, "error": "OutOfMemoryError: CUDA out of memory (a test's)"}]
    assert result["code"] == f"1 rows failed: {row}"
    assert json.loads((tmp_path / "partial.json").read_text())[-1]["preset"] == "shared_diff-tiny"
    assert f"{row}: FAILED OutOfMemoryError" in capsys.readouterr().out


@pytest.mark.parametrize(("budget", "measured"), [("0", []), ("1000", ["transformer-tiny", "diff-tiny"])])
def test_budget_starts_no_row_after_its_time(monkeypatch, tmp_path, capsys, budget, measured):
    result = run_main(monkeypatch, tmp_path, "--families", "transformer", "diff", "--budget-s", budget)
    assert result["code"] == 0 and [r["preset"] for r in result["results"]] == measured
    assert capsys.readouterr().out.count("skipped (--budget-s") == 2 - len(measured)
