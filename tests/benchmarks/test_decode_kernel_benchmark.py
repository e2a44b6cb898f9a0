"""benchmarks/decode_kernel.py --smoke: the plumbing of the kernel's benchmark on the CPU (Triton's interpreter): every
configuration checked against the float32 SDPA path before it is timed, the JSON written, and a wrong output
stopping the run."""

import json

import pytest

pytest.importorskip("triton")

import decode_kernel


def test_smoke_run_writes_checked_rows(tmp_path):
    """The SDPA path, then the kernel and the decode step's call with 1 and 3 splits (40 keys in blocks of 16: 3
    splits), each with a relative error against the float32 SDPA path below bf16's 1e-2 but above 0 (bfloat16
    inputs), and a summary per shape and path."""
    assert decode_kernel.main(["--smoke", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("decode_kernel-*.json")
    payload = json.loads(path.read_text())
    rows = payload["results"]
    expected = [("sdpa", None), ("kernel", 1), ("step", 1), ("kernel", 3), ("step", 3)]
    assert [(r["path"], r.get("splits")) for r in rows] == expected
    assert all(0 < r["rel_err"] <= 1e-2 and r["eager_us"] > 0 for r in rows)
    assert [r.get("default") for r in rows] == [None, True, True, False, False]
    assert [(s["path"], s["batch"], s["n_k"], s["default_splits"]) for s in payload["summary"]] == [
        ("kernel", 2, 40, 1),
        ("step", 2, 40, 1),
    ]
    assert payload["layout"] == {"n_heads": 2, "n_kv_heads": 2, "head_dim": 16, "sm_count": 1}


def test_a_wrong_kernel_output_stops_the_run(tmp_path, monkeypatch):
    """The kernel's output off by 5 % (above --tol 1e-2): the run raises naming the configuration, writes nothing."""
    right = decode_kernel.kernel_path
    monkeypatch.setattr(decode_kernel, "kernel_path", lambda *args: right(*args) * 1.05)
    with pytest.raises(RuntimeError, match=r"'path': 'kernel'.*relative error .* > --tol 0.01"):
        decode_kernel.main(["--smoke", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())
