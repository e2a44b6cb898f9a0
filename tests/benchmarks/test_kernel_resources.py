"""The pure parts of benchmarks/kernel_resources.py: its mode strings, its reading of ``ptxas -v`` and of the
SASS listing, and the launches it records as a GPU's."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

from kernel_resources import parse_mode, parse_ptxas, parse_sass

from shareddiff.ops.kernel_settings import Blocks, KernelSettings

ROOT = Path(__file__).resolve().parents[2]


def test_mode_strings_become_kernel_settings():
    assert parse_mode("dq=split") == KernelSettings()
    assert parse_mode("dq=tma;bwd_blocks=64,128,8,2") == KernelSettings(dq="tma", bwd_blocks=Blocks(64, 128, 8, 2))
    assert parse_mode("forward=maps;fwd_blocks=128,64,8,3;dq=reduce;dq_chunk=3;dq_workspace_mib=8") == KernelSettings(
        dq="reduce", forward="maps", fwd_blocks=Blocks(128, 64, 8, 3), dq_chunk=3, dq_workspace_mib=8
    )


@pytest.mark.parametrize(
    "bad,match",
    [
        ("dq", "name=value"),
        ("dq=fast", "use one of split, atomic, reduce, tma"),
        ("bwd=64,64,4,2", r"unknown fields \['bwd'\]"),
        ("bwd_blocks=64,64,4", "four integers"),
        ("dq_chunk=two", "invalid literal"),
    ],
)
def test_bad_mode_strings_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_mode(bad)


def test_ptxas_report_is_read():
    text = """ptxas-blackwell info    : Compiling entry function '_bwd_kernel' for 'sm_90a'
ptxas-blackwell info    : Function properties for _bwd_kernel
    1216 bytes stack frame, 1960 bytes spill stores, 3196 bytes spill loads
ptxas-blackwell info    : Used 255 registers, used 1 barriers, 1216 bytes cumulative stack size"""
    assert parse_ptxas(text) == {"registers": 255, "spill_stores": 1960, "spill_loads": 3196, "stack_frame": 1216}
    assert parse_ptxas("ptxas info    : Used 48 registers") == {
        "registers": 48, "spill_stores": None, "spill_loads": None, "stack_frame": None
    }  # fmt: skip


def test_sass_listing_counts():
    """nvdisasm's lines: the opcode after the address, with or without a predicate; NOPs and labels not counted."""
    listing = """
        .text._fwd_kernel:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   MUFU.EX2 R4, R5 ;
        /*0020*/               @P0 FFMA R6, R7, R8, R9 ;
        /*0030*/              @!P1 FMUL.FTZ R6, R7, R8 ;
        /*0040*/                   FADD R2, R3, R4 ;
        /*0050*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0060*/                   STL.64 [R1+0x10], R2 ;
        /*0070*/                   LDL R3, [R1+0x10] ;
        /*0080*/                   FSETP.GEU.AND P0, PT, R0, -126, PT ;
        /*0090*/                   NOP;
.L_x_1:
        /*00a0*/                   EXIT ;
    """
    assert parse_sass(listing) == {
        "sass_instructions": 10,
        "sass_mufu": 1,
        "sass_fp32": 3,
        "sass_hgmma": 1,
        "sass_local": 2,
    }


def test_resources_come_from_tritons_own_ptxas_log(monkeypatch):
    """compile_one reads registers and spills from the ptxas -v log of Triton's build (the cubin the SASS counts
    read), compiled afresh; ptxas on the PTX only where that log is empty."""
    import types

    import kernel_resources as kr

    seen = {}

    def fake_compile(
        src, target, options, log="ptxas info    : Used 200 registers, 8 bytes spill stores, 12 bytes spill loads"
    ):
        seen["flags"] = (kr.knobs.nvidia.dump_ptxas_log, kr.knobs.compilation.always_compile)
        if seen.get("print", True):
            print(log)
        return types.SimpleNamespace(
            asm={"ptx": "", "ttgir": "", "cubin": b""}, metadata=types.SimpleNamespace(shared=0)
        )

    monkeypatch.setattr(kr.triton, "compile", fake_compile)
    monkeypatch.setattr(kr, "signature_of", lambda kernel, bound: ({}, {"BM": 64}, {}))
    monkeypatch.setattr(kr, "ASTSource", lambda *a: None)
    monkeypatch.setattr(kr, "sass_report", lambda cubin: {})
    monkeypatch.setattr(kr, "ptxas_report", lambda ptx, cap: {"registers": 99, "spill_stores": 0, "spill_loads": 0})
    kernel = types.SimpleNamespace(__name__="_k")
    row = kr.compile_one(kernel, {"num_warps": 4}, 90)
    assert seen["flags"] == (True, True)
    assert (row["registers"], row["spill_stores"], row["spill_loads"], row["ptxas_log"]) == (200, 8, 12, "triton")
    assert not kr.knobs.nvidia.dump_ptxas_log  # the knobs are restored
    seen["print"] = False
    row = kr.compile_one(kernel, {"num_warps": 4}, 90)
    assert (row["registers"], row["ptxas_log"]) == (99, "ptxas on the PTX")


RECORD_FWD = """
import sys, torch
sys.path.insert(0, "benchmarks")
from kernel_resources import record_launches
from shareddiff.ops.kernel_settings import KernelSettings
for settings in (KernelSettings(), KernelSettings(rescale="lazy"), KernelSettings(forward="maps")):
    for capability in (90, 80):
        launches = record_launches(settings, 128, torch.bfloat16, 256, 2, capability)
        fwd = [b for k, _, b in launches if k.__name__.startswith("_fwd")]
        print(settings.forward, settings.rescale, capability, fwd[0]["num_warps"], fwd[0]["num_stages"])
try:
    record_launches(KernelSettings(), 128, torch.bfloat16, 256, 2, 75)
except ValueError as exc:
    print("refused:", exc)
"""


def test_recorded_forward_launch_takes_the_gpus_shared_memory():
    """The op's own launch path (not fwd_blocks alone) on a GPU of each capability: the d = 128 forward takes a
    third stage where a block holds 232,448 bytes (sm_90) and two where it holds 166,912 (sm_80); "maps" keeps its
    shape. In a process without TRITON_INTERPRET: the recorded launches are the GPU's."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", RECORD_FWD], env=env, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "fused eager 90 8 3",
        "fused eager 80 8 2",
        "fused lazy 90 8 3",
        "fused lazy 80 8 2",
        "maps eager 90 4 2",
        "maps eager 80 4 2",
        "refused: capability 75: no shared-memory limit known; use one of [80, 86, 87, 89, 90, 100, 120]",
    ]
