"""The main job end to end on a few steps: two trained variants, samples, report and plot."""

from pathlib import Path

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


def test_the_report_shows_the_median_and_the_overall_speed_with_what_each_is():
    """Windows of 300 tokens at 100 tok/s and 400 at 200: median 150 tok/s, overall 700 tokens in 5 s = 140."""
    from shareddiff.demo import _overall_tokens_per_s, _report, _train_seconds

    rows = [
        {"step": 2, "loss": 4.0, "tokens": 300, "tokens_per_s": 100.0},
        {"step": 2, "val_loss": 4.1, "tokens": 300},
        {"step": 4, "loss": 3.0, "tokens": 700, "tokens_per_s": 200.0},
    ]
    assert _overall_tokens_per_s(rows) == pytest.approx(700 / 5)
    assert _overall_tokens_per_s([{"step": 1, "loss": 5.0, "tokens": 100}]) != _overall_tokens_per_s(rows)  # NaN
    summary = {"label": "Shared DIFF", "params": 10, "params_non_embedding": 5, "val_loss": 3.0, "tokens": 700}
    summary |= {"tokens_per_s": 150.0, "overall_tokens_per_s": _overall_tokens_per_s(rows)}
    summary["seconds"] = _train_seconds(rows)
    report = _report([summary], [], "x.png", "", Path("configs/demo.toml"))
    assert "| Shared DIFF | 10 | 5 | 3.0000 | 20.1 | 700 | 150 | 140 | 5 |" in report
    assert (
        "² the median over the log windows" in report and "³ the tokens of the logged windows ÷ training s¹" in report
    )


@pytest.mark.slow
def test_a_rerun_demo_says_it_reuses_the_finished_run(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SHAREDDIFF_CACHE", str(tmp_path / "cache"))
    run_demo(str(tmp_path / "demo"), steps=2, baseline="none", progress=False)
    caplog.clear()
    with caplog.at_level("INFO", logger="shareddiff"):
        run_demo(str(tmp_path / "demo"), steps=2, baseline="none", progress=False)
    assert "== training" not in caplog.text
    assert (
        f"== Shared DIFF (shared_diff-mini): reusing the finished run in {tmp_path / 'demo' / 'shared_diff'} (step 2)"
        in (caplog.text)
    )
