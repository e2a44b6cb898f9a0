"""`shareddiff eval ...` and `shareddiff report` end to end on a tiny checkpoint (trained with the needle mix)."""

import json

import pytest

from shareddiff.cli import main
from shareddiff.train import train


@pytest.mark.slow
def test_eval_commands_and_report(make_run, tmp_path, capsys):
    run = make_run(
        "model.max_seq_len=512", "data.seq_len=256", "data.mix=needle:0.3:1", "train.micro_batch=2", "train.max_steps=3"
    )
    result = train(run, progress=False)
    ckpt = str(result.checkpoint)
    ev = tmp_path / "run" / "eval"
    assert main(["eval", "lm", ckpt, "--device", "cpu"]) == 0
    lm = json.loads((ev / "lm.json").read_text())
    assert lm["seq_len"] == 256 and lm["tokens"] > 0 and 0 < lm["ar_hit_fraction"] < 1
    assert (
        main(
            [
                "eval",
                "needle",
                ckpt,
                "--lengths",
                "300",
                "400",
                "--depths",
                "0",
                "1",
                "--needles",
                "2",
                "--queries",
                "2",
                "--samples",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    needle = json.loads((ev / "needle_N2_R2.json").read_text())
    assert [(c["length"], c["depth"], c["n"]) for c in needle["cells"]] == [
        (300, 0.0, 4),
        (300, 1.0, 4),
        (400, 0.0, 4),
        (400, 1.0, 4),
    ]
    assert (ev / "needle_N2_R2.png").stat().st_size > 5000
    assert (
        main(
            [
                "eval",
                "attention",
                ckpt,
                "--length",
                "300",
                "--depths",
                "0",
                "0.5",
                "1",
                "--samples",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (ev / "attention_map.png").is_file()
    assert (
        main(
            ["eval", "icl", ckpt, "--shots", "1", "2", "--test-examples", "4", "--permutations", "2", "--device", "cpu"]
        )
        == 0
    )
    assert [r["shots"] for r in json.loads((ev / "icl.json").read_text())["rows"]] == [1, 2]
    assert main(["eval", "needle", ckpt, "--lengths", "4096", "--samples", "1"]) == 2
    assert "max_seq_len is 512" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "report.md")]) == 0
    report = (tmp_path / "report.md").read_text()
    for part in ("Multi-needle retrieval", "Attention mass", "Many-shot ICL", "Language modelling", ".png"):
        assert part in report
