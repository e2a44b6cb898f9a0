"""The main job end to end on a few steps: two trained variants, samples, report and plot."""

import pytest

from shareddiff.demo import run_demo


@pytest.mark.slow
def test_demo_writes_report_and_plot(tmp_path, monkeypatch):
    monkeypatch.setenv("SHAREDDIFF_CACHE", str(tmp_path / "cache"))
    summary = run_demo(str(tmp_path / "demo"), steps=2, progress=False)
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "| Shared DIFF |" in report and "| Transformer |" in report
    png = tmp_path / "demo" / "loss_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "== samples (Shared DIFF)" in summary and "val loss" in summary
    again = run_demo(str(tmp_path / "demo"), steps=2, progress=False)  # a finished demo re-runs without training
    assert again.splitlines()[1] == summary.splitlines()[1]
    with pytest.raises(ValueError, match=r"holds a demo run trained with other settings \(train.max_steps 2 → 3"):
        run_demo(str(tmp_path / "demo"), steps=3, progress=False)  # not a silent change of its schedule
