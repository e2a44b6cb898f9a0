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
    assert lm["step"] == 3 and capsys.readouterr().out.splitlines()[-1].startswith("step 3: loss ")  # its checkpoint
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
    needle = json.loads((ev / "needle_N2_R2_L300-400_D0-100.json").read_text())
    assert [(c["length"], c["depth"], c["n"]) for c in needle["cells"]] == [
        (300, 0.0, 4),
        (300, 1.0, 4),
        (400, 0.0, 4),
        (400, 1.0, 4),
    ]
    assert (ev / "needle_N2_R2_L300-400_D0-100.png").stat().st_size > 5000
    assert main(["eval", "needle", ckpt, "--lengths", "300", "--depths", "0.5", "--needles", "2", "--queries", "2",
                 "--samples", "1", "--device", "cpu"]) == 0  # fmt: skip
    assert json.loads((ev / "needle_N2_R2_L300-400_D0-100.json").read_text()) == needle  # not overwritten
    assert [c["length"] for c in json.loads((ev / "needle_N2_R2_L300_D50.json").read_text())["cells"]] == [300]
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


@pytest.mark.parametrize(
    ("verb", "flags", "message"),
    [
        ("needle", ["--depths", "1.5"], "--depths 1.5: a depth is the answer needle's place as a fraction"),
        ("needle", ["--depths", "0", "-0.1"], "--depths -0.1: a depth"),
        ("needle", ["--samples", "0"], "--samples 0 must be at least 1"),
        ("needle", ["--needles", "2", "--queries", "3"], "need 1 ≤ --queries (3) ≤ --needles (2)"),
        ("needle", ["--lengths", "0"], "--lengths 0: every length must be a positive token count"),
        ("attention", ["--depths", "2"], "--depths 2.0: a depth"),
        ("attention", ["--samples", "0"], "--samples 0 must be at least 1"),
        ("lm", ["--seq-len", "0"], "--seq-len 0 must be at least 1 (leave it out for the training length)"),
        ("lm", ["--seq-len", "64", "--max-tokens", "63"], "--max-tokens 63 is below one evaluation window of 64"),
        ("lm", ["--max-train-count", "-1"], "--max-train-count -1 must be at least 1 (AR-Hit then counts only the"),
        ("lm", ["--max-train-count", "0"], "--max-train-count 0 must be at least 1"),
    ],
)
def test_probe_flags_are_checked_before_anything_runs(tmp_path, capsys, verb, flags, message):
    assert main(["eval", verb, str(tmp_path / "no-run"), *flags]) == 2
    assert message in capsys.readouterr().err


def test_lm_max_tokens_below_one_training_length_window_is_refused_before_lm_json_is_written(
    make_run, tmp_path, capsys
):
    ckpt = str(train(make_run("train.max_steps=1", "checkpoint.every=1"), progress=False).checkpoint)
    for max_tokens in ("-1", "0", "1", "31"):
        assert main(["eval", "lm", ckpt, "--max-tokens", max_tokens, "--device", "cpu"]) == 2
        assert capsys.readouterr().err == (
            f"error: --max-tokens {max_tokens} is below one evaluation window of 32 tokens (the training length); "
            "pass at least 32\n"
        )
    assert not (tmp_path / "run" / "eval" / "lm.json").exists()
    assert main(["eval", "lm", ckpt, "--max-tokens", "32", "--device", "cpu"]) == 0  # one window: its 32 targets
    assert json.loads((tmp_path / "run" / "eval" / "lm.json").read_text())["tokens"] == 32


def test_needle_results_are_named_by_their_settings():
    from shareddiff.eval.commands import needle_stem

    assert needle_stem(4, 2, [1024, 2048], [0.0, 0.25, 0.5, 0.75, 1.0]) == "needle_N4_R2_L1024-2048_D0-25-50-75-100"
    assert needle_stem(1, 1, [300], [0.125]) == "needle_N1_R1_L300_D12.5"


def test_default_lengths_fit_the_context():
    from shareddiff.eval.commands import default_needle_lengths

    assert default_needle_lengths(4096, 46) == ([1024, 2048], None)
    lengths, note = default_needle_lengths(256, 46)
    assert lengths == [210]
    assert note == (
        "note: the model's context is 256 tokens, below 1K: testing at length 210, the longest that leaves room "
        "for the answers (46 positions)"
    )


def test_attention_line_gives_v2_lambda_at_the_predicting_token(monkeypatch, tmp_path):
    """V2 has no λ per layer ("lambdas" all None); the line reports its per-token λ at the predicting row by
    layer, the mean over depths of what attention_eval recorded; DIFF keeps "λ by layer"."""
    from shareddiff.eval import commands

    def fake(lambdas, per_row):
        rows = [
            {"depth": d, "answer": 0.5, "noise": 0.1, "question": 0.2, "layers": [{"lambda": x} for x in lams]}
            for d, lams in per_row
        ]
        return {"lambdas": lambdas, "rows": rows}

    v2 = fake([None, None], [(0.0, [0.2, 0.6]), (1.0, [0.4, 0.8])])
    monkeypatch.setattr(commands, "attention_results", lambda *a, **k: v2)
    line = commands.run_attention(str(tmp_path))
    assert "λ at the predicting token by layer (per token in V2; mean over heads, samples, depths): 0.300, 0.700" in (
        line
    )
    monkeypatch.setattr(commands, "attention_results", lambda *a, **k: fake([0.7, 0.9], [(0.0, [0.7, 0.9])]))
    assert "λ by layer: 0.700, 0.900" in commands.run_attention(str(tmp_path))
