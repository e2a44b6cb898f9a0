"""Benchmark scripts run end to end on the CPU (their smoke modes)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_generate_benchmark_smoke(tmp_path):
    """benchmarks/generate.py --smoke: one row per batch size and mode (the decoder modes fused and unfused), a
    passing check of the compiled decoder against the exact and reference decodes, positive speeds, and the JSON.
    Without conftest's TRITON_INTERPRET=1: on a GPU machine a compiled mode would otherwise run inductor's Triton
    kernels in the CPU interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": str(ROOT / "src")}
    modes = ["eager", "compiled", "wrapper", "hf"]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "generate.py"), "--smoke", "--families", "shared_diff"]
    done = subprocess.run([*cmd, "--modes", *modes, "--out", str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (result,) = tmp_path.glob("generate-smoke-*.json")
    rows = json.loads(result.read_text())["results"]
    expected = [(m, f, b) for b in (1, 3) for m in modes for f in (["fused", "unfused"] if m == "compiled" else [None])]
    assert [(r["mode"], r.get("fusion"), r["batch"]) for r in rows] == expected
    assert all(r["tokens_per_s"] > 0 and r["new_tokens"] == 6 for r in rows)
    # the eager and decoder rows also time the prefill alone (one new token), shorter than the whole call
    timed_prefill = [r for r in rows if r["mode"] in ("eager", "compiled")]
    assert all(0 < r["prefill_s"] < min(r["call_s"]) or r["decode_tokens_per_s"] is None for r in timed_prefill)
    assert all("prefill_s" not in r for r in rows if r["mode"] in ("wrapper", "hf"))
    checks = [r["check"] for r in rows if r["mode"] == "compiled"]
    assert len(checks) == 4 and all(c["ok"] and c["max_rel_err"] <= 1e-4 for c in checks)
    assert all(c["reference_rel_err"] < 1e-5 and c["error_factor"] == 2 for c in checks)
    assert re.search(r"shared_diff-tiny +compiled unfused +batch +3: .* check rel err .* ok", done.stdout)


def test_train_throughput_runs_each_family_on_a_backend_it_has(tmp_path):
    """--backend triton over several families: DIFF keeps the fused kernel's name, the Transformer (whose op has
    no such backend) runs and records 'auto', and the script says so instead of failing or hiding it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--sizes", "tiny", "--seq-len", "32"]
    cmd += ["--batch", "1", "--steps", "1", "--warmup", "0", "--families", "transformer", "diff", "--backend", "triton"]
    done = subprocess.run([*cmd, "--out", str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (result,) = tmp_path.glob("train_throughput-*.json")
    rows = json.loads(result.read_text())["results"]
    assert [(r["preset"], r["backend"]) for r in rows] == [("transformer-tiny", "auto"), ("diff-tiny", "triton")]
    assert "transformer-tiny: attention backend 'triton' is not one of its own; it runs 'auto' (SDPA)" in done.stdout


def test_mqar_step_benchmark_smoke(tmp_path):
    """benchmarks/mqar_step.py --smoke: the full-logits and answers-only steps of each variant give the same loss
    (its own check passes), positive times, and the JSON it writes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "mqar_step.py"), "--smoke", "--out", str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (result,) = tmp_path.glob("mqar_step-smoke-*.json")
    rows = json.loads(result.read_text())["results"]
    assert [r["variant"] for r in rows] == ["transformer", "diff", "shared_diff"]
    assert all(r["check_ok"] and r["loss_rel_diff"] <= 1e-4 and r["full_ms"] > 0 and r["answers_ms"] > 0 for r in rows)
