"""Scaling fits recover known parameters; matching ratios on synthetic run folders."""

import json

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
