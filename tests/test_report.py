"""`shareddiff report` over training run folders and `eval scaling` folders, as its help says."""

import json

import pytest

from shareddiff import ModelConfig
from shareddiff.cli import main
from shareddiff.params import count_parameters


def synthetic_runs(root, widths: dict[str, list[int]]) -> list[str]:
    """Run folders (run_config.json + metrics.jsonl) whose losses follow a known power law."""
    runs = []
    for attention, sizes in widths.items():
        for width in sizes:
            config = ModelConfig(attention=attention, d_model=width, n_heads=2, n_layers=4)
            n = count_parameters(config).non_embedding
            loss = 30.0 * (n / (0.6 if attention == "shared_diff" else 1.0)) ** -0.3 + 2.0
            run = root / f"{attention}-{width}"
            run.mkdir(parents=True)
            (run / "run_config.json").write_text(json.dumps({"model_config": config.to_dict()}))
            rows = [
                {"step": s, "tokens": 1000 * s, "loss": loss + 6.0 / s, "val_loss": loss + 5.0 / s} for s in (1, 2, 4)
            ]
            rows.append({"step": 8, "tokens": 8000, "val_loss": loss})
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            runs.append(str(run))
    return runs


def test_report_takes_scaling_folders(tmp_path, capsys):
    runs = synthetic_runs(tmp_path / "runs", {"diff": [64, 128, 256], "shared_diff": [64, 128, 256, 512]})
    scaling = tmp_path / "scaling"
    assert main(["eval", "scaling", *runs, "--out", str(scaling)]) == 0
    out = capsys.readouterr().out
    assert "warning: diff: 3 sizes for a 3-parameter fit, which passes through every point exactly" in out
    assert main(["report", runs[0], runs[3], str(scaling), "--out", str(tmp_path / "out" / "report.md")]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| diff-64 | diff | 64 × 4 |" in report and "| shared_diff-64 | shared_diff | 64 × 4 |" in report
    assert "## Scaling (scaling)" in report and "![scaling](scaling_scaling.png)" in report
    assert "- shared_diff vs diff at " in report and "× its parameters" in report
    assert "- warning: diff: 3 sizes for a 3-parameter fit" in report
    assert (tmp_path / "out" / "scaling_scaling.png").stat().st_size > 10_000
    assert main(["report", str(scaling), "--out", str(tmp_path / "only.md")]) == 0  # a scaling folder alone
    assert "## Scaling (scaling)" in (tmp_path / "only.md").read_text()


def test_report_names_a_folder_of_neither_kind(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.md")]) == 2
    assert "is neither a training run folder (no run_config.json) nor an `eval scaling` folder" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("sizes", [[64, 128], [64]])
def test_scaling_without_a_fit_says_why_instead_of_nan(tmp_path, capsys, sizes):
    runs = synthetic_runs(tmp_path / "runs", {"diff": [64, 128, 256], "shared_diff": sizes})
    assert main(["eval", "scaling", *runs, "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and "inf" not in out.lower()
    assert "no params fit for shared_diff" in out
    assert f"warning: shared_diff: {len(sizes)} size(s), no loss-vs-parameters fit (a · N^(−b) + c needs 3)" in out
    text = (tmp_path / "s" / "scaling.json").read_text()
    assert "NaN" not in text and "Infinity" not in text


def mqar_run_folder(root, name: str, early_stop: dict | None, continued: bool = False):
    """An MQAR run folder (run_config.json, metrics.jsonl, eval/mqar.json) evaluated at steps 2, 4, 6, 8."""
    run = root / name
    (run / "eval").mkdir(parents=True)
    config = ModelConfig(attention="standard", d_model=64, n_heads=2, n_layers=2, vocab_size=64).to_dict()
    run_config = {"data": {"source": "mqar", "seq_len": 64}, "mqar": {"pairs": 4}, "optim": {"lr": 1e-3}}
    run_config["train"] = {"max_steps": 20}
    (run / "run_config.json").write_text(json.dumps({"run": run_config, "model_config": config}))
    accuracies = {2: (0.3, 0.1), 4: (0.6, 0.2), 6: (0.995, 0.3), 8: (0.999, 0.4)}
    rows = [{"step": s, "tokens": 64 * s, "loss": 1.0 / s} for s in (2, 4, 6, 8)]
    rows += [
        {"step": s, "tokens": 64 * s, "val_loss": 1 - a, "mqar_accuracy": a, "mqar_accuracy_2x": b}
        for s, (a, b) in accuracies.items()
    ]
    rows.sort(key=lambda r: r["step"])
    if early_stop:
        rows.append({"step": 8, "tokens": 512, "early_stop": early_stop})
    if continued:  # resumed with train.early_stop_accuracy=0 to step 20
        rows += [
            {"step": 20, "tokens": 64 * 20, "loss": 0.01},
            {"step": 20, "tokens": 64 * 20, "val_loss": 0.0, "mqar_accuracy": 1.0, "mqar_accuracy_2x": 0.5},
        ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mqar = {"pairs": 4, "samples": 32, "rows": [{"seq_len": 64, "accuracy": 0.998}, {"seq_len": 128, "accuracy": 0.41}]}
    if continued:  # `eval mqar` records the checkpoint's step (older records have none)
        mqar["step"] = 8
    (run / "eval" / "mqar.json").write_text(json.dumps(mqar))
    return run


def test_report_shows_mqar_accuracy_along_training_the_early_stop_and_eval_mqar(tmp_path):
    stop = {"step": 8, "max_steps": 20, "reason": "mqar_accuracy ≥ 0.99 at 2 consecutive evaluations (steps 6, 8)"}
    stopped = mqar_run_folder(tmp_path, "stopped", stop)
    continued = mqar_run_folder(tmp_path, "continued", stop, continued=True)
    out = tmp_path / "out" / "report.md"
    assert main(["report", str(stopped), str(continued), "--out", str(out)]) == 0
    report = out.read_text()
    assert (
        "**MQAR** (N = 64, 4 pairs): accuracy 0.999 at N, 0.400 at 2N = 128, at step 8; steps to 50%: step 4, "
        "to 99%: step 6. Stopped early at step 8 of 20: mqar_accuracy ≥ 0.99 at 2 consecutive evaluations "
        "(steps 6, 8)." in report
    )
    assert (
        "accuracy 1.000 at N, 0.500 at 2N = 128, at step 20; steps to 50%: step 4, to 99%: step 6. "
        "No early stop: trained to step 20 of 20." in report
    )
    assert "![MQAR accuracy](stopped_mqar.png)" in report and "![MQAR accuracy](continued_mqar.png)" in report
    assert (tmp_path / "out" / "stopped_mqar.png").stat().st_size > 10_000
    assert "**MQAR evaluation** (`mqar.json`, 4 pairs, 32 sequences per length): N=64 accuracy 0.998, " in report
    evaluated = "**MQAR evaluation** (`mqar.json`, the checkpoint of step 8, 4 pairs, 32 sequences per length): "
    assert evaluated + "N=64 accuracy 0.998, " in report  # beside "at step 20" of training: now it says when
    assert "N=128 accuracy 0.410" in report
