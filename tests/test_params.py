"""Parameter accounting against closed forms written here from the architecture page."""

import json
import re

import pytest

from shareddiff import PRESET_NAMES, ModelConfig
from shareddiff.cli import main
from shareddiff.params import attention_formula, count_parameters, qk_formula


def attention_closed_form(c: ModelConfig) -> tuple[int, int, int]:
    """(Q/K, V/O, λ + head norm) parameters of one layer."""
    dm, h, d, kv = c.d_model, c.n_heads, c.head_dim, c.n_kv_heads
    if c.attention == "standard":
        return dm * dm + dm * kv * d, dm * kv * d + dm * dm, 0
    # DIFF V2 (README): W_Q (D, 2h·d), W_K, W_V (D, h_kv·d), W_O (h·d, D), W_λ (D, h); Shared DIFF V2 replaces
    # W_Q by a base (D, h·d) and two rank-r updates A (D, r) B (r, h·d).
    if c.attention == "diff_v2":
        return dm * 2 * h * d + dm * kv * d, dm * kv * d + h * d * dm, dm * h
    if c.attention == "shared_diff_v2":
        r = c.lowrank_rank
        return dm * h * d + 2 * (dm * r + r * h * d) + dm * kv * d, dm * kv * d + h * d * dm, dm * h
    extras = 4 * d + (2 * d if c.head_norm and c.head_norm_weight else 0)
    vo = dm * kv * 2 * d + dm * dm
    if c.attention == "diff":
        return dm * dm + dm * 2 * kv * d, vo, extras
    r = c.lowrank_rank
    if c.base_sharing == "branches":
        qk = dm * h * d + dm * kv * d + 2 * r * (dm + h * d) + 2 * r * (dm + kv * d)
    else:
        qk = 2 * dm * d + 2 * h * r * (dm + d) + 2 * kv * r * (dm + d)
    return qk, vo, extras


def total_closed_form(c: ModelConfig) -> int:
    qk, vo, extras = attention_closed_form(c)
    per_layer = qk + vo + extras + 3 * c.d_model * c.ffn_dim + 2 * c.d_model
    embeddings = c.vocab_size * c.d_model * (1 if c.tie_embeddings else 2)
    return embeddings + c.n_layers * per_layer + c.d_model


CUSTOM = [
    dict(attention="shared_diff", base_sharing="heads", d_model=96, n_heads=3, lowrank_rank=5),
    dict(attention="shared_diff", d_model=128, n_heads=4, n_kv_heads=2, lowrank_rank=12, tie_embeddings=True),
    dict(attention="diff", d_model=128, n_heads=4, n_kv_heads=1, head_norm_weight=False),
    dict(attention="diff", head_norm=False),
    dict(attention="standard", d_model=128, n_heads=8, n_kv_heads=2),
    dict(attention="diff_v2", d_model=128, n_heads=4, n_kv_heads=2),
    dict(attention="diff_v2", d_model=96, n_heads=3, tie_embeddings=True),
    dict(attention="shared_diff_v2", d_model=128, n_heads=8, n_kv_heads=1, lowrank_rank=12),
    dict(attention="shared_diff_v2", d_model=96, n_heads=2, lowrank_rank=95, lowrank_init="lora"),
]


@pytest.mark.parametrize("fields", [{"preset": n} for n in PRESET_NAMES] + CUSTOM)
def test_counts_equal_closed_forms(fields):
    fields = dict(fields)
    config = ModelConfig.from_preset(fields.pop("preset")) if "preset" in fields else ModelConfig(**fields)
    report = count_parameters(config)
    qk, vo, extras = attention_closed_form(config)
    assert report.total == total_closed_form(config)
    assert report.counts["attention_qk"] == config.n_layers * qk
    assert report.counts["attention_vo"] == config.n_layers * vo
    assert report.attention_per_layer == qk + vo + extras
    assert qk_formula(config)[1] == qk and attention_formula(config)[1] == qk + vo + extras
    assert report.counts["ffn"] == config.n_layers * 3 * config.d_model * config.ffn_dim
    assert report.non_embedding == report.total - report.counts["embeddings"]


def test_paper_section_2_3_example():
    """§2.3, 3B row (D = 2880, r = 256): DIFF 16.59 M and Shared DIFF 12.72 M Q/K parameters per layer."""
    diff = count_parameters(ModelConfig.from_preset("diff-3b")).qk_per_layer
    shared = count_parameters(ModelConfig.from_preset("shared_diff-3b")).qk_per_layer
    assert diff == 2 * 2880**2 == 16_588_800
    assert shared == 2880**2 + 6 * 256 * 2880 == 12_718_080


def test_v2_closed_forms_at_the_headline_size():
    """23m (D 384, 6 heads of 64, r 24): DIFF V2 = Transformer + D² + D·h, Shared DIFF V2 = Transformer + 4rD + D·h
    per layer (Q/K: 3D² and 2D² + 4rD)."""
    t, v2, sv2 = (
        count_parameters(ModelConfig.from_preset(f"{f}-23m")) for f in ("transformer", "diff_v2", "shared_diff_v2")
    )
    assert v2.qk_per_layer == 3 * 384**2 and sv2.qk_per_layer == 2 * 384**2 + 4 * 24 * 384
    assert v2.attention_per_layer - t.attention_per_layer == 384**2 + 384 * 6
    assert sv2.attention_per_layer - t.attention_per_layer == 4 * 24 * 384 + 384 * 6


def test_cli_json(capsys):
    assert main(["params", "shared_diff-tiny", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    config = ModelConfig.from_preset("shared_diff-tiny")
    assert data["total"] == total_closed_form(config)
    assert data["qk_per_layer"]["counted"] == data["qk_per_layer"]["formula_value"]
    assert data["attention_per_layer"]["counted"] == data["attention_per_layer"]["formula_value"]


def test_cli_compare(capsys):
    assert main(["params", "830m", "--compare"]) == 0
    out = capsys.readouterr().out
    for name in (
        "transformer-830m",
        "diff-830m",
        "shared_diff-830m",
        "diff_v2-830m",
        "shared_diff_v2-830m",
        "D² + 6·r·D",
        "2D² + D·(D·h_kv/h)",  # DIFF V2's Q/K
        "D² + 4·r·D + D·(D·h_kv/h)",  # Shared DIFF V2's Q/K
        "Q/K + D² + D·(D·h_kv/h) + D·h",  # a V2 attention layer
        "Q/K per layer, closed form",
        "attention per layer, closed form",
        "shared_diff_v2-830m vs diff_v2-830m: 25.0% fewer",  # (2D² + 4rD) / 3D² with r = D/16
    ):
        assert name in out
    assert "23.3% fewer" not in out and "fewer" in out


def test_cli_unknown_preset(capsys):
    assert main(["params", "transformer-9b"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'transformer-9b'" in err and "; valid presets are: transformer-tiny" in err


def evaluate(expression: str, config: ModelConfig) -> int:
    """A printed closed form ("2D² = 4·D·(D/2)", "D² + D·(D·h_kv/h)") evaluated at the config's D, h, h_kv, d, r."""
    symbols = {"D": config.d_model, "h": config.n_heads, "h_kv": config.n_kv_heads, "d": config.head_dim}
    symbols |= {"r": config.lowrank_rank, "r_h": config.lowrank_rank}
    python = expression.replace("·", "*").replace("²", "**2")
    python = re.sub(r"(\d)([A-Za-z(])", r"\1*\2", python)  # 2D → 2*D
    python = re.sub(r"[A-Za-z_]+", lambda m: str(symbols[m.group()]), python)
    return round(eval(python))


@pytest.mark.parametrize("fields", [{"preset": n} for n in PRESET_NAMES if "tiny" in n] + CUSTOM)
def test_printed_qk_formula_evaluates_to_its_value(fields):
    """Each side of the printed Q/K expression, at the config's symbols, equals the counted value: with GQA the
    DIFF and Shared DIFF labels must carry h_kv (they showed the paper's 2D² beside a GQA count)."""
    fields = dict(fields)
    config = ModelConfig.from_preset(fields.pop("preset")) if "preset" in fields else ModelConfig(**fields)
    expression, value = qk_formula(config)
    for side in expression.split(" = "):
        assert evaluate(side, config) == value, (side, value)
