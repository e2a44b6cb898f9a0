"""benchmarks/attention.py's checks, run on the CPU interpreter at a tiny shape: every fused-kernel mode it
times passes them, and a kernel that leaves an output element unwritten fails them."""

import contextlib
import json
import sys

import pytest
import torch

pytest.importorskip("triton")

import attention
from shareddiff.ops.kernel_settings import DQ_MODES, FORWARD_MODES


@pytest.fixture
def on_cpu(monkeypatch):
    monkeypatch.setattr(attention, "DEVICE", "cpu")
    monkeypatch.setattr(attention, "poison", lambda: None)  # (the GPU's NaN fill; tests/ops fill outputs instead)


def test_every_mode_is_benchmarked():
    assert {s.dq for s in attention.MODES.values()} == set(DQ_MODES)
    assert {s.forward for s in attention.MODES.values()} == set(FORWARD_MODES)
    assert attention.MODES["split"] == attention.KernelSettings()  # the default, timed as before
    assert attention.parse_size("8192x64") == (8192, 64)


@pytest.mark.parametrize("mode", [m for m in attention.MODES if m != "tma"])  # (tma needs a descriptor reduce)
def test_checks_pass_for_each_mode(seed, on_cpu, mode):
    c = attention.check(f"triton {mode}", attention.kernel(attention.MODES[mode]), torch.float32, 1, 2, 1, 19, 16)
    assert c["ok"] and c["finite"] and max(c["errors"].values()) <= 1e-4, c


def test_checks_fail_on_an_unwritten_output(seed, on_cpu):
    def leaves_a_row_unwritten(*a):
        out = attention.kernel(attention.MODES["split"])(*a)
        return out.index_fill(2, torch.tensor([3]), float("nan"))

    c = attention.check("broken", leaves_a_row_unwritten, torch.float32, 1, 2, 1, 19, 16)
    assert not c["ok"] and not c["finite"]


def test_a_kernel_that_raises_fails_its_check(on_cpu):
    def does_not_compile(*a):
        raise RuntimeError("out of resource: shared memory")

    c = attention.checked("triton tma", does_not_compile, torch.float32, 1, 19, 16)
    assert not c["ok"] and c["shape"] == [1, 4, 1, 19, 16]
    assert c["error"] == "RuntimeError: out of resource: shared memory"


def test_only_the_modes_that_passed_are_timed():
    def checks(**ok):
        return [{"backend": label.replace("_", " "), "ok": passed} for label, passed in ok.items()]

    passed = checks(sdpa=True, triton_split=True, triton_tma=False, triton_maps=True)
    assert attention.modes_that_passed(passed, ["split", "tma", "maps", "reduce"]) == ["split", "maps"]  # reduce: none
    assert attention.modes_that_passed(checks(sdpa=False, triton_split=True), ["split"]) is None
    assert attention.modes_that_passed(checks(triton_split=True), ["split"]) is None  # sdpa not checked


def test_timing_skips_the_modes_that_failed_an_earlier_check(monkeypatch, tmp_path, capsys):
    """--skip-checks --passed-in: a mode whose check failed in the earlier run is not timed, the others are."""
    for name in ("DEVICE", "WIDTH", "TOKENS", "CHECK_SHAPES", "BF16"):  # (--smoke sets them; restored after)
        monkeypatch.setattr(attention, name, getattr(attention, name))

    def bench(n, d, modes):
        times = {"fwd_ms": 1.0, "fwd_bwd_ms": 2.0, "peak_gib_fwd_bwd": 0.0}
        return [{"n": n, "d": d, "variant": v, **times} for v in ["DIFF 2 SDPA calls", *modes]]

    monkeypatch.setattr(attention, "bench", bench)
    earlier = tmp_path / "checks.json"
    backends = ("sdpa", "triton split", "triton tma")
    earlier.write_text(json.dumps({"checks": [{"backend": b, "ok": b != "triton tma"} for b in backends]}))
    argv = ["attention.py", "--smoke", "--skip-checks", "--passed-in", str(earlier), "--no-projections"]
    monkeypatch.setattr(sys, "argv", [*argv, "--modes", "split", "tma", "--out", str(tmp_path / "out")])
    attention.main()
    (result,) = (tmp_path / "out").glob("attention-*.json")
    assert [r["variant"] for r in json.loads(result.read_text())["timings"]] == ["DIFF 2 SDPA calls", "split"]
    assert "not timed, a check failed or did not run: tma" in capsys.readouterr().out


def test_sweep_names_its_kernels():
    """--sweep alone: every kernel of SWEEP; --sweep FWD: the forward's shapes alone; an unknown name is refused."""
    parser = attention.build_parser()
    assert parser.parse_args([]).sweep is None
    assert parser.parse_args(["--sweep"]).sweep == []
    assert parser.parse_args(["--sweep", "FWD", "BWD, dQ tma"]).sweep == ["FWD", "BWD, dQ tma"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--sweep", "fwd"])


def test_sweep_times_only_the_named_kernels(monkeypatch):
    timed = []

    def time_variant(fn, inputs, backward):
        timed.append(backward)
        return 1.0, 0.0

    monkeypatch.setattr(attention, "kernel_inputs", lambda n, d: ())
    monkeypatch.setattr(attention, "time_variant", time_variant)
    rows = attention.sweep(8192, 128, ["FWD"])
    assert [r["blocks"] for r in rows] == attention.SWEEP[("FWD", 128)] and timed == [False] * len(rows)
    assert {r["kernel"] for r in attention.sweep(8192, 64)} == set(attention.SWEEP_KERNELS)


def test_profile_options_need_profile(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["attention.py", "--forward-only"])
    with pytest.raises(SystemExit):
        attention.main()
    assert "add --profile" in capsys.readouterr().err


def test_profile_runs_sdpa_then_each_mode_forward_only(on_cpu, monkeypatch, capsys):
    """--profile --forward-only --with-sdpa: at each size, SDPA's pass first, then each mode's, none recording a
    graph (no_grad)."""
    monkeypatch.setattr(attention, "WIDTH", 64)
    monkeypatch.setattr(attention, "TOKENS", 64)
    monkeypatch.setattr(attention, "BF16", torch.float16)
    recorded = []
    monkeypatch.setattr(attention, "standard_sdpa", lambda *a: recorded.append(("sdpa", torch.is_grad_enabled())))
    monkeypatch.setattr(attention, "kernel", lambda s: lambda *a: recorded.append((s, torch.is_grad_enabled())))
    attention.profile_once([(32, 16), (16, 32)], ["split", "lazy"], forward_only=True, with_sdpa=True)
    modes = attention.MODES
    expected = [("sdpa", False), (modes["split"], False), (modes["lazy"], False)]
    assert recorded == expected * 2
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "profiled N=32 d=16 sdpa (forward)" and printed[-1] == "profiled N=16 d=32 mode lazy (forward)"


@pytest.mark.parametrize(("flags", "swept"), [([], None), (["--sweep"], "all"), (["--sweep", "FWD"], ["FWD"])])
def test_main_sweeps_what_the_command_names(monkeypatch, tmp_path, flags, swept):
    """--sweep alone sweeps every kernel of SWEEP at each size (the documented ``--quick --sweep``), --sweep FWD the
    forward's shapes alone, no --sweep nothing."""
    for name in ("DEVICE", "WIDTH", "TOKENS", "CHECK_SHAPES", "BF16"):  # (--smoke sets them; restored after)
        monkeypatch.setattr(attention, name, getattr(attention, name))
    monkeypatch.setattr(attention, "bench", lambda n, d, modes: [])
    calls = []
    monkeypatch.setattr(attention, "sweep", lambda n, d, kernels: calls.append((n, d, kernels)) or [])
    argv = ["attention.py", "--smoke", "--skip-checks", "--no-projections", "--modes", "split", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [*argv, *flags])
    attention.main()
    expected = [] if swept is None else [(32, 16, attention.SWEEP_KERNELS if swept == "all" else swept)]
    assert calls == expected


def test_profile_closes_its_range_around_each_pass(monkeypatch):
    """On the GPU each profiled pass runs inside one NVTX range "profile", closed even when the pass raises."""
    events = []

    @contextlib.contextmanager
    def nvtx_range(name):
        events.append(("push", name))
        try:
            yield
        finally:
            events.append(("pop", name))

    def failing(settings):
        def run():
            events.append(("kernel",))
            raise RuntimeError("launch failed")

        return run

    monkeypatch.setattr(attention, "DEVICE", "cuda")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda.nvtx, "range", nvtx_range)
    monkeypatch.setattr(attention, "kernel_inputs", lambda n, d: ())
    monkeypatch.setattr(attention, "standard_inputs", lambda *a: ())
    monkeypatch.setattr(attention, "standard_sdpa", lambda: events.append(("sdpa",)))
    monkeypatch.setattr(attention, "kernel", failing)
    with pytest.raises(RuntimeError, match="launch failed"):
        attention.profile_once([(8192, 64)], ["split"], forward_only=True, with_sdpa=True)
    push, pop = ("push", "profile"), ("pop", "profile")
    assert events == [push, ("sdpa",), pop, push, ("kernel",), pop]
