"""benchmarks/attention.py's checks, run on the CPU interpreter at a tiny shape: every fused-kernel mode it
times passes them, and a kernel that leaves an output element unwritten fails them."""

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
