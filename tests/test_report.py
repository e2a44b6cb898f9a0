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
