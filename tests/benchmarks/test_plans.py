"""The GPU plans (benchmarks/kernel_plan.sh, benchmarks/decode_plan.sh, benchmarks/multi_gpu_plan.sh and the
documented device commands) checked on the CPU before a device call spends time on them: every command's arguments
parse with its script's own parser, its forms and presets exist, its time limits fit one 10-minute call; and the
kernel and decode plans run end to end on the CPU (SMOKE=1), leaving few enough files for a call to bring back."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

import data_parallel
import decode_kernel
import decode_ops
import generate
import resume_world_sizes
import train_throughput

import attention
from shareddiff.config import ModelConfig
from tests.conftest import NATIVE_TRITON_ENV

ROOT = Path(__file__).resolve().parents[2]
DEVICE_CALL_S = 600  # one device command's limit
MAX_FILES = 8  # what one device call brings back from $OUT
KERNEL_TESTS = ["tests/ops/test_triton.py", "-k", "cuda"]  # kernel_plan.sh's step 2


def dry_run(script: str, tmp_path: Path, **env: str) -> str:
    """What ``script`` prints with DRY=1: a line per step it would run, no step run."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    run_env = {**os.environ, "DRY": "1", "OUT": str(tmp_path / "out"), **env}
    done = subprocess.run(["bash", str(ROOT / script)], env=run_env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stdout


def smoke_run(script: str, out: Path, **env: str) -> None:
    """``script`` run with SMOKE=1 (the plan on the CPU, tiny shapes) into ``out``, with this interpreter as the
    ``python3`` it calls; asserts it exits 0."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    python_dir = str(Path(sys.executable).parent)  # the plan calls `python3`: this interpreter's
    if not (Path(python_dir) / "python3").exists():
        pytest.skip("no python3 beside this interpreter")
    run_env = {**os.environ, "SMOKE": "1", "OUT": str(out), "OMP_NUM_THREADS": "1", **env}
    run_env["PATH"] = f"{python_dir}:{run_env.get('PATH', '')}"
    done = subprocess.run(["bash", str(ROOT / script)], env=run_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def plan_commands(printed: str) -> list[tuple[int | None, list[str]]]:
    """(time limit in s or None, argv) of each step in a DRY=1 output."""
    found = re.findall(r"^PLAN command(?: \((\d+) s\))?: (.*)$", printed, re.MULTILINE)
    return [(int(limit) if limit else None, shlex.split(line)) for limit, line in found]


def script_args(argv: list[str]) -> tuple[str, list[str], int]:
    """(script name, its arguments, processes) of a ``python3 [-m torch.distributed.run ...] benchmarks/X.py`` argv."""
    i = next(i for i, a in enumerate(argv) if a.startswith("benchmarks/") and a.endswith(".py"))
    nproc = next((int(a.split("=")[1]) for a in argv[:i] if a.startswith("--nproc_per_node=")), 1)
    return Path(argv[i]).stem, argv[i + 1 :], nproc


def test_kernel_plan_commands_parse_and_fit_one_call(tmp_path):
    printed = dry_run("benchmarks/kernel_plan.sh", tmp_path)
    deadline = int(re.search(r"^PLAN deadline (\d+) s$", printed, re.MULTILINE).group(1))
    assert deadline <= DEVICE_CALL_S - 45  # headroom: start-up, a step's kill grace (10 s), the file listing
    steps = plan_commands(printed)
    # every step but the fp32 checks at its full limit still ends by the deadline; the fp32 checks get the time left
    assert steps[-1][0] == deadline and sum(limit for limit, _ in steps[:-1]) <= deadline
    tests = steps[2][1]  # right after the bf16 checks, before the timings; in one process compiling for the GPU
    assert tests == [
        "env", f"{NATIVE_TRITON_ENV}=1", "python3", "-m", "pytest", "-q", "-p", "no:cacheprovider",
        *KERNEL_TESTS, f"--junitxml={tmp_path / 'out' / 'kernel_tests.xml'}",
    ]  # fmt: skip
    parsed = []
    for _, argv in steps:
        if "benchmarks/attention.py" in argv:
            parsed.append(attention.build_parser().parse_args(script_args(argv)[1]))
        else:
            assert argv[0] in ("python3", "ncu") or argv is tests, argv
    checks = [a for a in parsed if a.checks_only]
    assert sorted(d for a in checks for d in a.check_dtypes) == ["bf16", "fp32"]
    assert all(a.modes == list(attention.MODES) for a in checks)
    timed = next(a for a in parsed if a.skip_checks)
    assert timed.modes == list(attention.MODES) and timed.sizes == [(8192, 64), (8192, 128), (16384, 64), (16384, 128)]
    assert timed.passed_in == str(tmp_path / "out" / "attention-CHECKS.json")  # the modes that passed step 1
    assert parsed[0].check_dtypes == ["bf16"] and parsed[1] is timed  # the tests between them
    profiled = next(a for a in parsed if a.profile)
    ncu = next(argv for _, argv in steps if argv[0] == "ncu" and "--launch-count" in argv)
    assert int(ncu[ncu.index("--launch-count") + 1]) == len(profiled.modes)
    # "reduce" launches the key-block kernel once per chunk of key blocks: last, so each mode gets one launch
    assert profiled.modes[-1] == "reduce" and set(profiled.modes) == {"split", "atomic", "tma", "reduce"}
    assert ncu[ncu.index("--kernel-name") + 1] == "regex:_bwd_kernel"


def test_kernel_plan_profiles_the_forward_too_on_request(tmp_path):
    """NCU_MODES and NCU_FWD=1: the named modes' forward and key-block backward, one launch of each a mode."""
    printed = dry_run("benchmarks/kernel_plan.sh", tmp_path, MODES="split poly", NCU_MODES="split poly", NCU_FWD="1")
    steps = plan_commands(printed)
    ncu = next(argv for _, argv in steps if argv[0] == "ncu" and "--launch-count" in argv)
    profiled = attention.build_parser().parse_args(script_args(ncu)[1])
    assert profiled.profile and profiled.modes == ["split", "poly"]
    assert ncu[ncu.index("--kernel-name") + 1] == "regex:_fwd_kernel|_bwd_kernel"
    assert int(ncu[ncu.index("--launch-count") + 1]) == 4
    report = ncu[ncu.index("--export") + 1]
    assert report == str(tmp_path / "out" / "fwd_bwd_kernel")
    details = next(argv for _, argv in steps if argv[0] == "ncu" and "--import" in argv)
    assert details[details.index("--import") + 1] == report + ".ncu-rep"


def test_kernel_plan_tests_select_the_cuda_tests():
    """The plan's -k expression keeps every test of tests/ops/test_triton.py that skips off a GPU and no other (the
    CPU interpreter's tests would only spend the step's time there)."""
    source = (ROOT / KERNEL_TESTS[0]).read_text()
    cuda_only = set(re.findall(r"skipif\(not torch\.cuda\.is_available\(\).*\n(?:@.*\n)*def (\w+)", source))
    assert {
        "test_cuda_compiled_op_matches_eager_and_float64",
        "test_cuda_compiled_model_step_with_the_kernel_matches_eager",
    } <= cuda_only
    collect = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *KERNEL_TESTS]
    done = subprocess.run(collect, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    selected = [line.split("::")[1] for line in done.stdout.splitlines() if "::" in line]
    assert {name.split("[")[0] for name in selected} == cuda_only
    assert len(selected) == 3  # the op at d = 64 and 128, the model step


@pytest.mark.parametrize("smoke", ["0", "1"])
def test_multi_gpu_plan_commands_parse(tmp_path, smoke):
    """Every step's command: its script's parser takes it, its forms parse for its number of processes, its
    preset exists and its global batch splits into its micro-batches on those processes."""
    steps = plan_commands(dry_run("benchmarks/multi_gpu_plan.sh", tmp_path, SMOKE=smoke))
    names = [script_args(argv)[0] for _, argv in steps]
    assert names == ["data_parallel"] * 2 + ["resume_world_sizes"] + ["data_parallel"] * 4
    for _, argv in steps:
        name, args, nproc = script_args(argv)
        if name == "resume_world_sizes":
            a = resume_world_sizes.build_parser().parse_args(args)
            assert a.global_batch % a.gpus == 0 and 0 < a.resume_at < a.steps
        else:
            a = data_parallel.build_parser().parse_args(args)
            assert a.forms and a.out and a.deadline
            for text in a.forms:
                data_parallel.parse_form(text, nproc)
            micro = a.micro_batch or a.global_batch // nproc
            assert a.global_batch % (micro * nproc) == 0, argv
        ModelConfig.from_preset(a.preset)
        assert (a.device == "cpu") == (smoke == "1")


DECODE_TEST_FILES = ["tests/ops/test_decode_kernel.py", "tests/test_static_decode.py", "tests/test_cli.py"]


def decode_plan_steps(tmp_path: Path, smoke: str) -> tuple[dict[str, int], list[tuple[int, list[str]]]]:
    """(the settings line of decode_plan.sh's DRY=1 output, its steps)."""
    printed = dry_run("benchmarks/decode_plan.sh", tmp_path, SMOKE=smoke)
    found = re.search(r"^PLAN deadline (\d+) s, reserve (\d+) s, last row (\d+) s$", printed, re.MULTILINE)
    return dict(zip(["deadline", "reserve", "last_row"], map(int, found.groups()), strict=True)), plan_commands(printed)


@pytest.mark.parametrize("smoke", ["0", "1"])
def test_decode_plan_commands_parse_and_fit_one_call(tmp_path, smoke):
    """The CUDA tests first, then the kernel alone, the decode steps, the untuned rows and the operator counts; every
    command parses with its script's parser; the steps before the generate.py ones, each at its full limit, leave
    the decode steps time for a row; the generate.py steps share the time left less step 5's, no row starting in
    its last LAST_ROW s."""
    plan, steps = decode_plan_steps(tmp_path, smoke)
    assert plan["deadline"] <= DEVICE_CALL_S - 45  # start-up, a step's kill grace (10 s), the file listing
    names = [script_args(argv)[0] if "-m" not in argv else argv[argv.index("-m") + 1] for _, argv in steps[1:]]
    assert names == ["pytest", "decode_kernel", "generate", "generate", "generate", "decode_ops"]
    assert steps[0][1][:2] == ["python3", "-c"]  # versions
    fixed = sum(limit for limit, _ in steps[:3])
    rows_limit = plan["deadline"] - fixed - plan["reserve"]
    assert rows_limit - plan["last_row"] >= 10  # the worst case still times a row
    tests = steps[1][1]
    assert tests[tests.index("pytest") + 1 :][-len(DECODE_TEST_FILES) - 3 :] == [
        *DECODE_TEST_FILES, "-k", "cuda", f"--junitxml={tmp_path / 'out' / 'decode_tests.xml'}"
    ]  # fmt: skip
    kernel = decode_kernel.build_parser().parse_args(script_args(steps[2][1])[1])
    assert kernel.budget_s == 100 and kernel.smoke == (smoke == "1") and kernel.out == str(tmp_path / "out")
    runs = []
    for limit, argv in steps[3:6]:
        a = generate.build_parser().parse_args(script_args(argv)[1])
        assert (
            limit == rows_limit and a.budget_s == limit - plan["last_row"] and a.fusion == ["fused"]
        )  # --smoke: and unfused
        assert a.smoke == (smoke == "1") and (a.smoke or (a.batch == [1] and a.repeats == 2))
        for family in a.families:
            ModelConfig.from_preset(f"{family}-{a.size if not a.smoke else 'tiny'}")
        runs.append({(f, m, k) for f in a.families for m, _, k in generate.row_plan(a.modes, a, f)})
        runs.append(a.inductor_option)
    graph, untuned_mode = (
        (["compiled", "static"], "compiled") if smoke == "1" else (["compiled-graph", "graph"], "compiled-graph")
    )
    assert runs[0] == {(f, m, k) for f in ("shared_diff", "diff") for m in graph for k in ("on", "off")} | {
        ("transformer", m, "off") for m in graph
    }  # the Transformer has no kernel row
    assert runs[1] == []
    assert runs[2] == {("shared_diff", untuned_mode, "on")} and runs[4] == {("transformer", untuned_mode, "off")}
    assert runs[3] == runs[5] == [("coordinate_descent_tuning", False)]
    ops = decode_ops.build_parser().parse_args(script_args(steps[6][1])[1])
    assert steps[6][0] == plan["reserve"] and ops.families == ["transformer", "shared_diff"]
    assert ops.size == ("tiny" if smoke == "1" else "350m")


def test_decode_plan_tests_select_every_cuda_only_test():
    """The -k expression of the plan's first step keeps every test of its files that skips off a GPU."""
    tests = next(argv for _, argv in plan_commands(dry_run("benchmarks/decode_plan.sh", ROOT)) if "pytest" in argv)
    expression = tests[tests.index("-k") + 1]
    cuda_only = set()
    for path in DECODE_TEST_FILES:
        source = (ROOT / path).read_text()
        cuda_only |= set(re.findall(r"skipif\(not torch\.cuda\.is_available\(\).*\n(?:@.*\n)*def (\w+)", source))
    assert {
        "test_cuda_kernel_matches_float64_reference",
        "test_cuda_graph_decode_with_the_kernel_equals_reference",
        "test_cuda_graph_decode_equals_reference",
        "test_generate_cuda_graph_gives_the_eager_tokens",
    } <= cuda_only
    collect = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *DECODE_TEST_FILES]
    done = subprocess.run([*collect, "-k", expression], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    selected = {line.split("::")[1].split("[")[0] for line in done.stdout.splitlines() if "::" in line}
    assert cuda_only <= selected


DOCUMENTED = {"generate": generate, "train_throughput": train_throughput}


def documented_device_commands() -> list[str]:
    """The indented command lines of docs/performance.md that run generate.py or train_throughput.py with $OUT."""
    text = (ROOT / "docs" / "performance.md").read_text()
    lines = re.findall(r"^    (python3 benchmarks/(?:generate|train_throughput)\.py .*\$OUT.*)$", text, re.MULTILINE)
    return [line.split("  #")[0] for line in lines]


def test_documented_device_commands_parse():
    commands = documented_device_commands()
    assert {script_args(shlex.split(c))[0] for c in commands} == set(DOCUMENTED)
    for command in commands:
        name, args, _ = script_args(shlex.split(command.replace("$OUT", "/tmp/out")))
        a = DOCUMENTED[name].build_parser().parse_args(args)
        assert a.out == "/tmp/out" and a.budget_s is not None, command
        sizes = [a.size] if name == "generate" else a.sizes
        for family in a.families:
            for size in sizes:
                ModelConfig.from_preset(f"{family}-{size}")


@pytest.mark.slow
def test_kernel_plan_runs_on_the_cpu_interpreter(tmp_path):
    """SMOKE=1 (two modes): the checks pass in both dtypes, the CUDA tests skip themselves, every variant is timed,
    few files come back."""
    out = tmp_path / "out"
    smoke_run("benchmarks/kernel_plan.sh", out, MODES="split tma")
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= MAX_FILES and {"kernel_plan.log", "kernel_tests.xml"} <= set(files)
    results = [json.loads(p.read_text()) for p in sorted(out.glob("attention-*.json"))]
    checks = [c for r in results for c in r["checks"]]
    assert sorted({(c["backend"], c["dtype"]) for c in checks}) == sorted(
        (b, d) for b in ("sdpa", "triton split", "triton tma") for d in ("torch.float16", "torch.float32")
    )
    assert all(c["ok"] for c in checks)
    timed = [row["variant"] for r in results for row in r["timings"]]
    sdpa = ["standard SDPA", "DIFF 2 SDPA calls", "DIFF 4 SDPA calls"]
    assert timed == [*sdpa, "fused kernel, split", "fused kernel, tma"]
    log = (out / "kernel_plan.log").read_text()
    assert "Nsight Compute skipped" in log and "compiled op tests: 0 passed, 0 failed, 3 skipped" in log
    assert log.count("rc 0") == 5  # versions, bf16 checks, compiled op tests (skipped: no GPU), timings, fp32 checks


def test_benchmarks_run_this_checkout_without_pythonpath(tmp_path):
    """A bare GPU machine has neither PYTHONPATH=src nor an install: importing benchmarks/common.py puts this
    checkout's src first, for the script and for the processes it starts (torchrun, the CLI)."""
    code = "import os, sys; sys.path.insert(0, 'benchmarks'); import common, shareddiff; "
    code += "print(shareddiff.__file__); print(os.environ['PYTHONPATH'])"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    module, pythonpath = done.stdout.splitlines()
    assert Path(module) == ROOT / "src" / "shareddiff" / "__init__.py"
    assert pythonpath.split(os.pathsep)[0] == str(ROOT / "src")


@pytest.mark.slow
def test_decode_plan_runs_on_the_cpu(tmp_path):
    """SMOKE=1: all 7 steps run (the CUDA tests skip themselves, none fails, so the kernel rows run); the decode steps
    time Shared DIFF and DIFF with the kernel on and off and the Transformer without it, every row checked; the
    untuned rows turn the CUDA default inductor option off; every compiled row passes its check; few small files
    come back."""
    out = tmp_path / "out"
    smoke_run("benchmarks/decode_plan.sh", out)
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 7 and {"decode_plan.log", "decode_tests.xml"} <= set(files)
    assert all(p.stat().st_size < 2**20 and p.suffix in (".log", ".xml", ".json") for p in out.iterdir())
    log = (out / "decode_plan.log").read_text()
    assert log.count(", rc 0") == 7 and "decode kernel tests: 0 passed, 0 failed of 17" in log  # skipped off a GPU
    (kernel,) = [json.loads(p.read_text()) for p in out.glob("decode_kernel-*.json")]
    assert kernel["results"] and not any("skipped" in r for r in kernel["results"])
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("generate-*.json"))]
    rows = [row for run in runs for row in run["results"]]
    assert len(runs) == 3 and all(row["check"]["ok"] for row in rows if row["mode"] != "static")  # static: unchecked

    def labels(run: dict) -> set[tuple[str, str]]:  # of the fused rows (--smoke adds unfused ones)
        return {(row["preset"], generate.label(row)) for row in run["results"] if row["fusion"] == "fused"}

    modes = [f"{m} kernel {k}" for m in ("compiled", "static") for k in ("on", "off")]
    assert labels(runs[0]) == {(f"{f}-tiny", m) for f in ("shared_diff", "diff") for m in modes} | {
        ("transformer-tiny", m) for m in modes if m.endswith("off")
    }  # the Transformer has no kernel row
    assert [labels(run) for run in runs[1:]] == [
        {("shared_diff-tiny", "compiled kernel on")}, {("transformer-tiny", "compiled kernel off")}
    ]  # fmt: skip
    assert all(run["settings"]["inductor_option"] == [["coordinate_descent_tuning", False]] for run in runs[1:])
    (ops,) = [json.loads(p.read_text()) for p in out.glob("decode_ops-*.json")]
    assert sorted({r["preset"] for r in ops["results"]}) == ["shared_diff-tiny", "transformer-tiny"]


@pytest.mark.parametrize(
    ("cases", "smoke", "tested"),
    [
        ('<testcase classname="tests.ops.test_decode_kernel" name="a"/>', "0", True),
        ('<testcase classname="tests.ops.test_decode_kernel" name="a"><failure/></testcase>', "0", False),
        ('<testcase classname="tests.ops.test_decode_kernel" name="a"><error/></testcase>', "1", False),
        ('<testcase classname="tests.ops.test_decode_kernel" name="a"><skipped/></testcase>', "0", False),  # on a GPU
        ('<testcase classname="tests.ops.test_decode_kernel" name="a"><skipped/></testcase>', "1", True),  # CPU
        ('<testcase classname="tests.ops.test_decode_kernel" name="a"/><testcase classname="x" name="b"><failure/>'
         "</testcase>", "0", True),  # another file's failure: the kernel rows run, without that mode's rows
    ],
)  # fmt: skip
def test_decode_plan_times_the_kernel_only_after_its_tests_pass(tmp_path, cases, smoke, tested):
    """The verdict of decode_plan.sh on step 1's JUnit file: no decode kernel test failed and, on a GPU, one passed."""
    script = (ROOT / "benchmarks" / "decode_plan.sh").read_text()
    verdict = re.search(r"<<'EOF' 2>&1 \| tee -a \"\$LOG\"\n(.*?)\nEOF\n", script, re.DOTALL).group(1)
    xml = tmp_path / "decode_tests.xml"
    xml.write_text(f"<testsuites><testsuite>{cases}</testsuite></testsuites>")
    done = subprocess.run([sys.executable, "-c", verdict, str(xml), smoke], capture_output=True, text=True)
    assert (done.returncode == 0) == tested, done.stdout + done.stderr
    assert done.stdout.startswith("PLAN decode kernel tests:")


@pytest.mark.parametrize(
    "env,message",
    [
        ({"NCU_MODES": " "}, "NCU_MODES is empty"),
        ({"NCU_MODES": "reduce split"}, "put reduce last"),
        ({"NCU_MODES": "split bogus"}, "unknown mode 'bogus'"),
        ({"NCU_FWD": "1", "NCU_MODES": "maps reduce"}, "_fwd_map_kernel"),
        ({"NCU_FWD": "yes"}, "NCU_FWD=yes; use 1"),
    ],
)
def test_kernel_plan_refuses_profile_settings_that_would_miscount(tmp_path, env, message):
    """Step 4 counts kernel launches: modes it cannot attribute are refused before step 1, not minutes into a call."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    run_env = {**os.environ, "DRY": "1", "OUT": str(tmp_path / "out"), **env}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks/kernel_plan.sh")], env=run_env, capture_output=True, text=True
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "PLAN command" not in done.stdout


def test_forward_profile_commands_parse_and_fit_one_call(tmp_path):
    """forward_profile.sh: the forward's block shapes alone, then one Nsight Compute pass that takes only the
    profiled calls' kernels (NVTX range "profile") of SDPA and the named modes, forward only; its limits fit one
    call, and a dry run writes nothing."""
    printed = dry_run("benchmarks/forward_profile.sh", tmp_path, MODES="split lazy")
    steps = plan_commands(printed)
    assert sum(limit for limit, _ in steps) <= DEVICE_CALL_S - 45
    shapes = attention.build_parser().parse_args(script_args(steps[1][1])[1])
    assert shapes.sweep == ["FWD"] and shapes.skip_checks and shapes.modes == ["split"]
    assert shapes.sizes == [(8192, 64), (8192, 128)]
    ncu = next(argv for _, argv in steps if argv[0] == "ncu" and "--export" in argv)
    assert ncu[ncu.index("--nvtx-include") + 1] == "profile/" and "--nvtx" in ncu
    profiled = attention.build_parser().parse_args(script_args(ncu)[1])
    assert profiled.profile and profiled.forward_only and profiled.with_sdpa and profiled.modes == ["split", "lazy"]
    imports = [argv for _, argv in steps if argv[0] == "ncu" and "--import" in argv]
    report = ncu[ncu.index("--export") + 1] + ".ncu-rep"
    assert len(imports) == 2 and all(argv[argv.index("--import") + 1] == report for argv in imports)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("modes", "message"),
    [(" ", "MODES is empty"), ("split bogus", "unknown mode 'bogus'; use one of: split atomic reduce tma vsplit")],
)
def test_forward_profile_refuses_bad_modes_before_any_step(tmp_path, modes, message):
    """Checked first (SMOKE=1 would run step 1 otherwise): rc 2, the problem named, nothing written."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path / "out"), "MODES": modes}
    script = str(ROOT / "benchmarks/forward_profile.sh")
    done = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr and "PLAN" not in done.stdout
    assert not (tmp_path / "out").exists()


def test_forward_profile_exits_1_naming_the_failed_steps(tmp_path):
    """A python3 that fails every command: each step fails, the plan goes on, and its exit status and last line
    say which steps failed."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text("#!/bin/sh\nexit 3\n")
    (fake / "python3").chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "PATH": f"{fake}:{os.environ.get('PATH', '')}"}
    script = str(ROOT / "benchmarks/forward_profile.sh")
    done = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr
    last = (out / "forward_profile.log").read_text().splitlines()[-1]
    assert last.startswith("PLAN failed steps: versions forward block shapes profiled passes")


@pytest.mark.slow
def test_forward_profile_runs_on_the_cpu_interpreter(tmp_path):
    """SMOKE=1: the block-shape step times the split mode (SWEEP has no shapes at the smoke's d = 16, and says so),
    and the profiled passes run SDPA, then each mode, forward only."""
    out = tmp_path / "out"
    smoke_run("benchmarks/forward_profile.sh", out, MODES="split lazy")
    log = (out / "forward_profile.log").read_text()
    assert "sweep N=32 d=16 FWD: no shapes in SWEEP for d = 16" in log
    profiled = re.findall(r"^profiled N=32 d=16 (.*)$", log, re.MULTILINE)
    assert profiled == ["sdpa (forward)", "mode split (forward)", "mode lazy (forward)"]
    (result,) = out.glob("attention-*.json")
    assert [r["variant"] for r in json.loads(result.read_text())["timings"]][-1] == "fused kernel, split"


def test_plans_know_attention_py_s_modes():
    """plan_steps.sh's ATTENTION_MODES (what kernel_plan.sh and forward_profile.sh accept) is attention.py's MODES."""
    source = (ROOT / "benchmarks/plan_steps.sh").read_text()
    modes = re.search(r'^ATTENTION_MODES="([^"]*)"', source, re.MULTILINE).group(1).split()
    assert modes == list(attention.MODES)
