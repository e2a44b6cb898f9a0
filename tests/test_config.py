"""ModelConfig validation and presets."""

import re

import pytest

from shareddiff import PRESET_NAMES, ModelConfig
from shareddiff.config import load_recipe
from shareddiff.params import count_parameters
from shareddiff.presets import SIZES


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(attention="mamba"), r"attention='mamba' is not a known variant; use one of \['standard', 'diff'"),
        (dict(attention="diff", d_model=100, n_heads=3), r"d_model=100 is not divisible by 2·n_heads"),
        (dict(attention="standard", d_model=100, n_heads=3), r"d_model=100 is not divisible by n_heads"),
        (dict(attention="diff", d_model=72, n_heads=4), r"head dim 9 .* is odd, but RoPE"),
        (dict(attention="standard", d_model=60, n_heads=4), r"head dim 15 .* is odd"),
        (
            dict(attention="shared_diff", d_model=64, lowrank_rank=0),
            r"lowrank_rank=0 must satisfy 0 < lowrank_rank < d_model/2 = 32",
        ),
        (dict(attention="shared_diff", d_model=64, lowrank_rank=32), r"lowrank_rank=32 must satisfy"),
        (dict(attention="shared_diff", base_sharing="heads", lowrank_rank=16), r"< the head half-dim d = 16"),
        (dict(attention="diff", n_heads=4, n_kv_heads=3), r"n_kv_heads=3 must divide n_heads=4"),
        (dict(attention="standard", n_heads=4, n_kv_heads=8), r"n_kv_heads=8 must divide n_heads=4"),
        (dict(attention="shared_diff", base_sharing="layers"), r"base_sharing='layers' is not known"),
        (dict(attention="shared_diff", lowrank_init="xavier"), r"lowrank_init='xavier' is not known"),
        (dict(attention="diff_v2", d_model=100, n_heads=3), r"d_model=100 is not divisible by n_heads = 3"),
        (dict(attention="diff_v2", d_model=60, n_heads=4), r"head dim 15 .* is odd"),
        (
            dict(attention="diff_v2", n_heads=4, n_kv_heads=3),
            r"n_kv_heads=3 must divide n_heads=4 .*both query heads of a DIFF V2 pair must share one.*divisor of 4",
        ),
        (dict(attention="shared_diff_v2", n_heads=2, n_kv_heads=4), r"n_kv_heads=4 must divide n_heads=2"),
        (
            dict(attention="shared_diff_v2", d_model=64, lowrank_rank=0),
            r"lowrank_rank=0 must satisfy 0 < lowrank_rank < d_model \(the width of W_Q\) = 64 .*e\.g\. 8",
        ),
        (dict(attention="shared_diff_v2", d_model=64, lowrank_rank=64), r"lowrank_rank=64 must satisfy"),
        (dict(attention="shared_diff_v2", lowrank_rank=2.5), r"lowrank_rank=2.5 is not an integer; it must satisfy"),
        (
            dict(attention="shared_diff_v2", base_sharing="heads"),
            r"base_sharing='heads' is defined for shared_diff only.*leave base_sharing='branches'",
        ),
        (dict(attention="shared_diff_v2", lowrank_init="xavier"), r"lowrank_init='xavier' is not known"),
        (dict(d_model=0), r"d_model=0 must be a positive integer"),
        (dict(lambda_init=1.5), r"lambda_init=1.5 must be in \[0, 1\)"),
    ],
)
def test_bad_config_names_field_and_fix(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)


@pytest.mark.parametrize(
    ("fields", "rank"),
    [
        (dict(attention="shared_diff_v2", d_model=8, n_heads=2), 4),  # D/16 → 8 is not below D = 8: half of it
        (dict(attention="shared_diff", d_model=16, n_heads=2), 4),  # 8 is not below D/2 = 8
        (dict(attention="shared_diff", d_model=64, n_heads=2), 8),  # the D/16 rule's floor, below D/2 = 32
        (dict(attention="shared_diff_v2", d_model=1024, n_heads=8), 64),  # D/16
        (dict(attention="shared_diff", base_sharing="heads", d_model=256, n_heads=4), 8),  # d/4, d = 32
    ],
)
def test_the_default_rank_fits_every_width(fields, rank):
    """Without lowrank_rank the default is D/16 (at least 8; per-head sharing d/4), lowered to half the bound at
    widths where it would not be below it, so a small model builds without a rank of its own."""
    assert ModelConfig(**fields).lowrank_rank == rank


def test_a_rank_out_of_range_is_answered_with_a_valid_one():
    with pytest.raises(ValueError, match=r"lowrank_rank=8 must satisfy 0 < lowrank_rank < d_model .* = 8 .*e\.g\. 4 "):
        ModelConfig(attention="shared_diff_v2", d_model=8, n_heads=2, lowrank_rank=8)
    # the smallest shape RoPE allows (head half-dim 2) still has a rank below its bound: 1
    assert ModelConfig(attention="shared_diff", d_model=4, n_heads=1).lowrank_rank == 1


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'shared_diff-7b' \(did you mean .*\); valid presets are: "):
        ModelConfig.from_preset("shared_diff-7b")
    with pytest.raises(ValueError, match=r"unknown preset 'foo'; valid presets are: .*shared_diff-830m"):
        ModelConfig.from_preset("foo")


def test_a_misspelt_preset_gets_the_nearest_names():
    """A typo of a preset is answered with the closest valid names first (difflib's ratio ≥ 0.8)."""
    with pytest.raises(ValueError, match=r"unknown preset 'shareddiff-mini' \(did you mean 'shared_diff-mini'"):
        ModelConfig.from_preset("shareddiff-mini")
    with pytest.raises(ValueError, match=r"unknown preset 'transformr-23m' \(did you mean 'transformer-23m'"):
        ModelConfig.from_preset("transformr-23m")


def test_unknown_field_in_dict():
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\) \['n_head'\]"):
        ModelConfig.from_dict({"n_head": 4})


def test_preset_overrides_and_round_trip():
    config = ModelConfig.from_preset("shared_diff-small", lowrank_rank=16, lambda_init=0.5)
    assert (config.d_model, config.lowrank_rank, config.lambda_init) == (384, 16, 0.5)
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_defaults():
    config = ModelConfig(attention="shared_diff", d_model=1536, n_heads=8)
    assert config.ffn_dim == 4096 and config.lowrank_rank == 96  # 8/3·D rounded to 64; D/16
    assert ModelConfig(attention="shared_diff", d_model=2880, n_heads=15).ffn_dim == 7680
    heads = ModelConfig(attention="shared_diff", d_model=64, n_heads=2, base_sharing="heads")
    assert heads.lowrank_rank == heads.head_dim // 4 == 4
    v2 = ModelConfig(attention="shared_diff_v2", d_model=1536, n_heads=16)
    assert (v2.lowrank_rank, v2.head_dim) == (96, 96)  # D/16; V2 heads are D/h wide


def test_every_preset_is_valid_and_families_match():
    assert len(PRESET_NAMES) == 5 * len(SIZES)
    for size in SIZES:
        t, d, s, v2, sv2 = (
            ModelConfig.from_preset(f"{f}-{size}")
            for f in ("transformer", "diff", "shared_diff", "diff_v2", "shared_diff_v2")
        )
        assert t.d_model == d.d_model == s.d_model == v2.d_model == sv2.d_model
        assert t.n_layers == d.n_layers == s.n_layers == v2.n_layers == sv2.n_layers
        assert t.n_heads == 2 * d.n_heads and t.head_dim == d.head_dim == s.head_dim  # architecture §2
        # V2 (README): the Transformer's heads as output heads, each with a pair of query heads of dim d
        assert v2.n_heads == sv2.n_heads == t.n_heads and v2.head_dim == sv2.head_dim == t.head_dim
        assert sv2.lowrank_rank == s.lowrank_rank and "README" in v2.notes
        assert d.head_dim % 2 == 0


@pytest.mark.parametrize(("size", "low", "high"), [("tiny", 0, 1e6), ("small", 10e6, 30e6)])
def test_small_preset_sizes(size, low, high):
    for family in ("transformer", "diff", "shared_diff", "diff_v2", "shared_diff_v2"):
        total = count_parameters(ModelConfig.from_preset(f"{family}-{size}")).total
        assert low < total < high, (family, total)


def test_paper_rows_keep_width_depth_rank():
    rows = {
        "830m": (1536, 24, 96),
        "1.4b": (2048, 24, 128),
        "2.8b": (2880, 32, 256),
        "3b": (2880, 30, 256),
        "6.8b": (4096, 35, 320),
        "13.1b": (5120, 44, 448),
    }
    for size, (width, depth, rank) in rows.items():
        config = ModelConfig.from_preset(f"shared_diff-{size}")
        assert (config.d_model, config.n_layers, config.lowrank_rank, config.vocab_size) == (width, depth, rank, 100288)
    assert ModelConfig.from_preset("diff-3b").ffn_dim == 7680
    assert "Table 6" in ModelConfig.from_preset("diff-1.4b").notes


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.tie_embeddings=off", "tie_embeddings='off' must be true or false"),
        ('model.head_norm="false"', "head_norm='false' must be true or false"),
        ("train.compile=maybe", "train.compile='maybe' must be true or false"),
        ("parallel.activation_checkpointing=1", "parallel.activation_checkpointing=1 must be true or false"),
    ],
)
def test_flags_take_booleans_only(override, message):
    """A flag given another value is refused, instead of counting as true ("off" used to tie the embeddings)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        load_recipe(None, "shared_diff-tiny", [override]).model_config()  # the model table becomes a ModelConfig
    assert load_recipe(None, "shared_diff-tiny", ["model.tie_embeddings=false"]).model_config().tie_embeddings is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "train.max_steps=1e3",
            "train.max_steps=1000.0 must be a positive integer; it is a float, not an integer (TOML reads 1e3 and "
            "1000.0 as floats): write 1000",
        ),
        (
            "model.lowrank_rank=abc",
            "lowrank_rank='abc' is not an integer; it must satisfy 0 < lowrank_rank < d_model/2",
        ),
        ("model.lowrank_rank=8.0", "lowrank_rank=8.0 is a float, not an integer (TOML reads 1e3 and 1000.0 as floats)"),
        ("model.d_model=abc", "d_model='abc' must be a positive integer; it is not an integer"),
        ("model.n_heads=2.0", "n_heads=2.0 must be a positive integer; it is a float, not an integer"),
        ("train.micro_batch=x", "train.micro_batch='x' must be a positive integer; it is not an integer"),
        ("mqar.pairs=1e1", "mqar.pairs=10.0 must be a positive integer; it is a float, not an integer"),
    ],
)
def test_a_count_that_is_not_an_integer_says_so(override, message):
    """A count given as a float (1e3) or a word is named as not an integer, not as out of range (or a TypeError)."""
    extra = ["data.source=mqar"] if override.startswith("mqar.") else []
    with pytest.raises(ValueError) as refused:
        load_recipe(None, "shared_diff-tiny", [override, *extra]).model_config()
    assert str(refused.value).startswith(message)


def test_a_size_given_as_a_preset_gets_a_hint():
    with pytest.raises(ValueError, match=re.escape("'23m' is a size: name a family too, e.g. 'shared_diff-23m'")):
        ModelConfig.from_preset("23m")
