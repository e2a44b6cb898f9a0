"""benchmarks/generate.py's options for the decoder rows: --fusion (a row per choice), --inductor-option (inductor's
options for the compiled modes only)."""

import argparse

import pytest
import torch
from generate import build_parser, decoder_settings, inductor_option, row_plan


def test_inductor_options_parse_as_literals():
    assert inductor_option("coordinate_descent_tuning=True") == ("coordinate_descent_tuning", True)
    assert inductor_option("max_autotune_gemm_backends=ATEN,TRITON") == ("max_autotune_gemm_backends", "ATEN,TRITON")
    assert inductor_option("triton.cudagraph_skip_dynamic_graphs=0") == ("triton.cudagraph_skip_dynamic_graphs", 0)
    with pytest.raises(argparse.ArgumentTypeError, match="expected KEY=VALUE"):
        inductor_option("coordinate_descent_tuning")


def test_decoder_rows_and_settings():
    """A decoder mode gives a row per --fusion, other modes one; inductor options reach the compiled modes only,
    and only with the inductor backend."""
    command = "--modes eager graph compiled-graph --fusion fused unfused --inductor-option coordinate_descent_tuning=1"
    args = build_parser().parse_args(command.split())
    plan = row_plan(args.modes, args)
    assert plan == [
        ("eager", None, None),
        *[(m, f, "default") for m in ("graph", "compiled-graph") for f in (True, False)],
    ]
    assert decoder_settings("graph", True, args) == {"cuda_graph": True, "fused": True, "backend": "inductor"}
    compiled = decoder_settings("compiled-graph", False, args)
    assert compiled["compile_options"] == {"coordinate_descent_tuning": 1} and compiled["fused"] is False
    args.compile_backend = "aot_eager"
    assert "compile_options" not in decoder_settings("compiled-graph", True, args)
    assert build_parser().parse_args([]).fusion == ["fused"]


def test_decode_kernel_rows_and_settings():
    """--decode-kernel on off: a row each per decoder mode and fusion, handing decode_kernel=True/False to the
    decoder; the default leaves the decoder's own default (no decode_kernel argument)."""
    args = build_parser().parse_args("--modes eager compiled-graph --decode-kernel on off".split())
    assert row_plan(args.modes, args) == [
        ("eager", None, None),
        ("compiled-graph", True, "on"),
        ("compiled-graph", True, "off"),
    ]
    assert decoder_settings("compiled-graph", True, args, "on")["decode_kernel"] is True
    assert decoder_settings("compiled-graph", True, args, "off")["decode_kernel"] is False
    assert "decode_kernel" not in decoder_settings("compiled-graph", True, args)
    assert build_parser().parse_args([]).decode_kernel == ["default"]
    # the Transformer and the V2 variants have no layer the kernel serves: no "on" row for them
    for family, on in (("transformer", False), ("diff_v2", False), ("diff", True), ("shared_diff", True)):
        kernels = [k for mode, _, k in row_plan(args.modes, args, family) if mode == "compiled-graph"]
        assert kernels == (["on", "off"] if on else ["off"]), family


def test_decode_speed_subtracts_the_prefill(monkeypatch):
    """The decode steps alone: (new tokens − 1) / (whole call − prefill), both medians; None where noise leaves no
    positive difference."""
    import generate as bench

    monkeypatch.setattr(bench, "timed", lambda fn, device, repeats: (9.0, [0.010, 0.030, 0.005]))
    speed = bench.decode_speed(None, torch.device("cpu"), 3, batch=2, new_tokens=256, call_s=0.265)
    assert speed["prefill_s"] == 0.010
    assert speed["decode_tokens_per_s"] == pytest.approx(2 * 255 / 0.255)
    assert speed["decode_ms_per_step"] == pytest.approx(1.0)
    noisy = bench.decode_speed(None, torch.device("cpu"), 3, batch=1, new_tokens=2, call_s=0.009)
    assert noisy["decode_tokens_per_s"] is None and noisy["decode_ms_per_step"] is None


def test_device_kernels_sum_each_kernels_time_and_calls_per_token():
    from types import SimpleNamespace

    import numpy as np
    from generate import device_kernels
    from torch.autograd import DeviceType

    rng = np.random.default_rng()
    names = ["triton_poi_fused_add_0", "sm90_xmma_gemm_bf16", "decode_kernel_" + "x" * 300]
    events, want = [], {}
    for _ in range(60):
        name = names[rng.integers(3)]
        us = float(rng.uniform(1, 50))
        events.append(SimpleNamespace(name=name, device_type=DeviceType.CUDA, device_time_total=us))
        key = name[:160]
        want[key] = [want.get(key, [0.0, 0])[0] + us, want.get(key, [0.0, 0])[1] + 1]
    events.append(SimpleNamespace(name="aten::mm", device_type=DeviceType.CPU, device_time_total=999.0))
    got = device_kernels(events, new=4, top=2)
    ranked = sorted(want.items(), key=lambda kv: -kv[1][0])[:2]
    assert list(got) == [name for name, _ in ranked]  # the costliest first, the CPU operator left out
    for name, (us, calls) in ranked:
        assert got[name]["us_per_token"] == pytest.approx(us / 4)
        assert got[name]["calls_per_token"] == pytest.approx(calls / 4)
    assert all(len(name) <= 160 for name in device_kernels(events, new=1))
