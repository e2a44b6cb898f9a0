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
    assert (tmp_path / "demo" / "report.md").read_text() == report  # its training seconds too: from the records
    with pytest.raises(ValueError, match="baseline='cached'; use 'train'"):
        run_demo(str(tmp_path / "demo"), steps=2, baseline="cached", progress=False)
    with pytest.raises(ValueError, match=r"holds a demo run trained with other settings \(train.max_steps 2 → 3"):
        run_demo(str(tmp_path / "demo"), steps=3, progress=False)  # not a silent change of its schedule


def test_training_seconds_come_from_the_log_windows():
    """Each window's tokens over its tokens/s, summed; validation rows and rows without a speed add nothing."""
    from shareddiff.demo import _train_seconds

    rows = [
        {"step": 1, "loss": 5.0, "tokens": 100},
        {"step": 2, "loss": 4.0, "tokens": 300, "tokens_per_s": 100.0},
        {"step": 2, "val_loss": 4.1, "tokens": 300},
        {"step": 4, "loss": 3.0, "tokens": 700, "tokens_per_s": 200.0},
    ]
    assert _train_seconds(rows) == pytest.approx(300 / 100 + 400 / 200)
