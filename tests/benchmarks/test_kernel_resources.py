"""The pure parts of benchmarks/kernel_resources.py: its mode strings and its reading of ``ptxas -v``."""

import pytest

pytest.importorskip("triton")

from kernel_resources import parse_mode, parse_ptxas, parse_sass

from shareddiff.ops.kernel_settings import Blocks, KernelSettings


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
