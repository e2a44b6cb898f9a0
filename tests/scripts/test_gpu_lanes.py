"""scripts/gpu_lanes.sh (over scripts/gpu_reproduce.sh): runs of several experiments in one lane per device
within one budget, each lane's records packed without checkpoints. Run here on the CPU with tiny experiments."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import synthetic_documents

ROOT = Path(__file__).resolve().parents[2]
LANES = ROOT / "scripts" / "gpu_lanes.sh"
REPRODUCE = ROOT / "scripts" / "gpu_reproduce.sh"


def _env() -> dict[str, str]:
    python_dir = str(Path(sys.executable).parent)  # the scripts call `python3`: this interpreter's
    if not (Path(python_dir) / "python3").exists():
        pytest.skip("no python3 beside this interpreter")
    return {
        **os.environ,
        "PATH": f"{python_dir}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture
def experiments(tmp_path: Path) -> Path:
    from shareddiff.data import prepare_splits, train_tokenizer

    tokenizer = train_tokenizer(synthetic_documents(50, 80, seed=1), 300, tmp_path / "tokenizer.json")
    docs = {"train": synthetic_documents(60, 100, seed=2), "val": synthetic_documents(5, 100, seed=3)}
    prepare_splits(docs, tmp_path / "data", tokenizer)
    (tmp_path / "recipe.toml").write_text(
        f'[data]\npath = "{tmp_path / "data"}"\ntokenizer = "{tmp_path / "tokenizer.json"}"\nseq_len = 16\n'
        "val_tokens = 64\n[optim]\nlr = 1e-2\nwarmup_steps = 1\n[train]\nmax_steps = 2\nmicro_batch = 2\n"
        'eval_every = 2\nlog_every = 1\ndevice = "cpu"\n[checkpoint]\nevery = 2\nkeep_last = 1\n'
    )
    for name, preset in (("ea", "transformer"), ("eb", "shared_diff")):
        (tmp_path / f"{name}.toml").write_text(
            f'[experiment]\ndescription = "{name}"\nrecipe = "recipe.toml"\nevals = []\n'
            f'[[run]]\ngroup = "{preset}"\npreset = "{preset}-tiny"\nseeds = [1, 2]\n'
        )
    return tmp_path


@pytest.mark.slow
def test_two_lanes_run_their_runs_and_pack_records(experiments, tmp_path):
    if shutil.which("bash") is None or shutil.which("setsid") is None:
        pytest.skip("needs bash and setsid")
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    # another lane's run of ea, still in progress: its truncated metrics must not travel in this lane's tgz
    other = work / "runs" / "repro" / "ea" / "transformer-s9"
    other.mkdir(parents=True)
    (other / "metrics.jsonl").write_text('{"step": 1}\n')
    (other / ".lock").write_text("")
    ea, eb = experiments / "ea.toml", experiments / "eb.toml"
    lanes = [f"{ea}:transformer-s1 {eb}:shared_diff-s1", f"{ea}:transformer-s[2]"]  # a name, and a pattern
    result = subprocess.run(
        ["bash", str(LANES), "240", str(out), *lanes], cwd=work, env=_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    for experiment, run in (("ea", "transformer-s1"), ("eb", "shared_diff-s1"), ("ea", "transformer-s2")):
        record = json.loads((work / "runs" / "repro" / experiment / run / "record.json").read_text())
        assert record["run"] == run and record["max_steps"] == 2
    # lane 0 ran ea then eb, lane 1 only ea; each lane packed what it ran, never checkpoints
    assert sorted(p.name for p in (out / "g0").iterdir()) == [
        "ea-records.tgz",
        "ea.log",
        "eb-records.tgz",
        "eb.log",
        "lanes.log",
    ]
    assert sorted(p.name for p in (out / "g1").iterdir()) == ["ea-records.tgz", "ea.log", "lanes.log"]
    with tarfile.open(out / "g1" / "ea-records.tgz") as tar:
        names = tar.getnames()
    assert "runs/repro/ea/transformer-s2/record.json" in names
    assert not any("checkpoints" in n or n.endswith(".lock") for n in names)
    # each lane packs only its own runs: never the other lane's, nor one in progress
    assert not any("transformer-s1" in n or "transformer-s9" in n for n in names)
    with tarfile.open(out / "g0" / "ea-records.tgz") as tar:
        names = tar.getnames()
    assert "runs/repro/ea/transformer-s1/record.json" in names
    assert not any("transformer-s2" in n or "transformer-s9" in n or n.endswith(".lock") for n in names)
    assert "lane 1: " + f"{ea}:transformer-s[2]" in result.stdout


def test_a_spent_budget_starts_nothing(experiments, tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    result = subprocess.run(
        ["bash", str(LANES), "5", str(out), f"{experiments / 'ea.toml'}:transformer-s1"],
        cwd=work,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "lane 0: budget spent before" in result.stdout
    assert not (work / "runs").exists()


FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for python3: the import check passes; the reproduce command waits for SIGINT, as a run does
if [ "$1" = "-c" ]; then echo "torch 0.fake"; exit 0; fi
trap 'echo INT >>"$MARK"; exit 130' INT
echo "started" >>"$MARK"
[ -n "${FAIL:-}" ] && exit "$FAIL"
sleep 300 & wait $!
"""


def _fake_python(tmp_path: Path, body: str = FAKE_PYTHON) -> Path:
    path = tmp_path / "fakepython"
    path.write_text(body)
    path.chmod(0o755)
    return path


def _reproduce(tmp_path: Path, seconds: int, env: dict, *args: str) -> subprocess.CompletedProcess:
    if shutil.which("bash") is None or shutil.which("setsid") is None:
        pytest.skip("needs bash and setsid")
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return subprocess.run(
        ["bash", str(REPRODUCE), "ea", str(seconds), str(tmp_path / "new" / "out"), *args],
        cwd=work,
        env={**os.environ, "MARK": str(tmp_path / "mark"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_budget_stops_runs_with_sigint_within_seconds(tmp_path):
    start = time.monotonic()
    result = _reproduce(tmp_path, 47, {"PYTHON": str(_fake_python(tmp_path))}, "--run", "transformer-s1")
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr  # stopped by the budget is not a failure
    assert (tmp_path / "mark").read_text().split() == ["started", "INT"]  # SIGINT reached the run: it saves
    assert elapsed < 20  # the stop began at SECONDS - 45, not after SECONDS: the whole script fits in 47 s
    log = (tmp_path / "new" / "out" / "ea.log").read_text()  # OUT_DIR created
    assert "stopping transformer-s1 with SIGINT" in log and "resumes them" in log
    assert f"python: {tmp_path / 'fakepython'}" in log
    assert "killing" not in log


def test_a_failed_reproduce_command_exits_nonzero(tmp_path):
    result = _reproduce(tmp_path, 100, {"PYTHON": str(_fake_python(tmp_path)), "FAIL": "3"})
    assert result.returncode == 3
    assert "the reproduce command failed (exit 3)" in result.stderr


def test_a_python_without_torch_fails_fast(tmp_path):
    broken = _fake_python(tmp_path, "#!/usr/bin/env bash\necho 'No module named torch' >&2\nexit 1\n")
    result = _reproduce(tmp_path, 100, {"PYTHON": str(broken)})
    assert result.returncode == 2
    assert "cannot import torch and shareddiff" in result.stderr and str(broken) in result.stderr
    assert not (tmp_path / "mark").exists()
