"""Scaling fits recover known parameters; matching ratios on synthetic run folders."""

import json
from pathlib import Path

import numpy as np
import pytest

from shareddiff import ModelConfig
from shareddiff.eval.scaling import fit_power_law, needed_for_loss, predict, scaling_eval
from shareddiff.params import count_parameters


def test_fit_recovers_known_parameters():
    x = np.geomspace(1e6, 1e9, 7)
    y = 40.0 * x**-0.25 + 1.9
    fit = fit_power_law(x, y)
    assert fit["a"] == pytest.approx(40.0, rel=1e-3) and fit["b"] == pytest.approx(0.25, rel=1e-3)
    assert fit["c"] == pytest.approx(1.9, rel=1e-3)
    assert needed_for_loss(fit, float(predict(fit, 3e7))) == pytest.approx(3e7, rel=1e-3)
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_power_law([1, 2], [3, 2])


def test_scaling_eval_on_run_folders(tmp_path):
    # Shared DIFF reaches a given loss with 0.6× DIFF's parameters: L_s(N) = L_d(N / 0.6).
    runs = []
    for attention in ("diff", "shared_diff"):
        for width in (64, 128, 256):
            config = ModelConfig(attention=attention, d_model=width, n_heads=2, n_layers=4)
            n = count_parameters(config).non_embedding
            scale = 1 / 0.6 if attention == "shared_diff" else 1.0
            loss = 30.0 * (n * scale) ** -0.3 + 2.0
            run = tmp_path / f"{attention}-{width}"
            run.mkdir()
            (run / "run_config.json").write_text(json.dumps({"model_config": config.to_dict()}))
            rows = [{"step": s, "tokens": 1000 * s, "val_loss": loss + 5.0 / s} for s in (1, 2, 4, 8)]
            rows[-1]["val_loss"] = loss
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            runs.append(run)
    result = scaling_eval(runs, reference="diff")
    fractions = [m["params_needed_fraction"] for m in result["match"]]
    assert fractions == pytest.approx([0.6, 0.6, 0.6], rel=0.02)
    with pytest.raises(ValueError, match="not a training run folder"):
        scaling_eval([tmp_path])


def test_scaling_plot_shows_points_readable_ticks_and_warnings(tmp_path, saved_figures):
    from matplotlib.ticker import NullFormatter

    from shareddiff.plots import plot_scaling
    from tests.test_report import synthetic_runs

    runs = synthetic_runs(tmp_path / "runs", {"diff": [64, 128, 256], "shared_diff": [64, 128, 256, 512]})
    result = scaling_eval(runs, reference="diff")
    plot_scaling(result, tmp_path / "scaling.png", "title")
    fig = saved_figures[0]
    params_ax, tokens_ax = fig.axes
    for ax in (params_ax, tokens_ax):
        assert isinstance(ax.xaxis.get_minor_formatter(), NullFormatter)  # no crowded minor labels
        fig.canvas.draw()
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert labels and all(len(text) <= 5 for text in labels), labels  # 200K, 1M, 2M...
    # the tokens panel draws each variant's measured points, not only its fitted curve
    assert [len(c.get_offsets()) for c in tokens_ax.collections] == [4, 4]
    assert [len(c.get_offsets()) for c in params_ax.collections] == [3, 4]
    assert "note: diff: 3 sizes for a 3-parameter fit" in " ".join(t.get_text() for t in fig.texts)


def test_unreachable_loss_is_a_note_not_infinity(tmp_path):
    from tests.test_report import synthetic_runs

    runs = synthetic_runs(tmp_path / "runs", {"diff": [64, 128, 256], "shared_diff": [64, 128, 256]})
    path = Path(runs[0]) / "metrics.jsonl"  # the smallest DIFF run reaches a loss below Shared DIFF's asymptote
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[-1]["val_loss"] = 1.0
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    row = scaling_eval(runs, reference="diff")["match"][0]
    assert row["params_needed_fraction"] is None
    assert row["params_note"].startswith("not reached: loss 1.0000 lies below shared_diff's fitted asymptote")
