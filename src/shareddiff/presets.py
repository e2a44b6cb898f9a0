"""Named presets: ``<family>-<size>`` for family ``transformer``, ``diff``, ``shared_diff``, ``diff_v2`` or
``shared_diff_v2``.

A size fixes width, depth, differential head count ``h``, rank and vocabulary; the families of one
size share all of them. The Transformer baseline uses ``2h`` heads so its head dimension equals
the differential half-dim ``d`` (the official DIFF code's matching rule, architecture §2). The V2
families take the Transformer's heads as their output heads and add a second query head to each
(DIFF V2 README: "we introduce additional parameters for Q2"; its blog post: W_O stays the baseline's), so
they are not parameter-matched: see ``FAMILY_NOTES``.

Paper rows (Table 3 and Table 1) keep width, depth and rank. Where the paper's head count does not
divide the width into heads of even half-dim ``d`` (architecture §5), the nearest head count that
does is used, and the preset's ``notes`` say so. Training length, RoPE θ and tying are not in the
paper: 4096 tokens (the DIFF paper's training length), θ = 10000, untied.
"""

from __future__ import annotations

import difflib
from typing import Any

FAMILIES = {
    "transformer": "standard",
    "diff": "diff",
    "shared_diff": "shared_diff",
    "diff_v2": "diff_v2",
    "shared_diff_v2": "shared_diff_v2",
}
FAMILY_NOTES = {
    "diff_v2": "DIFF V2 as its README matches it: the Transformer's heads (dim d) as output heads, its W_K, W_V, "
    "W_O, plus a second query head per head (D² more) and W_λ (D·n_heads more) per layer.",
    "shared_diff_v2": "Shared DIFF V2: DIFF V2's layout with Q1, Q2 = X(W_Q + A B) of rank r: the Transformer "
    "plus 4·r·D + D·n_heads parameters per layer.",
}

PAPER_VOCAB = 100_288  # cl100k_base padded (architecture §4, "Protocol details")

# h = differential heads; the Transformer preset of the same size gets 2h heads of dim d = D / 2h.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        d_model=64,
        n_layers=2,
        n_heads=2,
        lowrank_rank=8,
        vocab_size=512,
        max_seq_len=256,
        notes="CPU tests: well under 1M parameters.",
    ),
    # MQAR (configs/repro/mqar.toml): Zoology's 2-layer models with one differential head (the
    # Transformer: two); the experiment sweeps model.d_model, and the rank follows D/16 (at least 8).
    "mqar": dict(
        d_model=64,
        n_layers=2,
        n_heads=1,
        vocab_size=8192,
        max_seq_len=1024,
        notes="MQAR grid: width swept (64-256), 1024 positions so that length 512 is also evaluated at 2x.",
    ),
    "mini": dict(
        d_model=128,
        n_layers=4,
        n_heads=2,
        lowrank_rank=8,
        vocab_size=4096,
        max_seq_len=256,
        notes="The CPU demo (`make demo`): about 1.9M parameters with the bundled 4K tokenizer.",
    ),
    "small": dict(
        d_model=384,
        n_layers=6,
        n_heads=3,
        lowrank_rank=24,
        vocab_size=16384,
        max_seq_len=1024,
        notes="CPU/one-GPU experiments with the bundled 16K BPE.",
    ),
    # The reproduction ladder (configs/repro/): the 16K BPE and 4096 positions, so that needle prompts
    # run to 4x a 1024-token training length. Names are the Transformer's total parameters.
    "8m": dict(
        d_model=192,
        n_layers=4,
        n_heads=2,
        lowrank_rank=12,
        vocab_size=16384,
        max_seq_len=4096,
        notes="Reproduction ladder, smallest rung (d = 48).",
    ),
    "13m": dict(
        d_model=256,
        n_layers=6,
        n_heads=2,
        lowrank_rank=16,
        vocab_size=16384,
        max_seq_len=4096,
        notes="Reproduction ladder (d = 64).",
    ),
    "23m": dict(
        d_model=384,
        n_layers=6,
        n_heads=3,
        lowrank_rank=24,
        vocab_size=16384,
        max_seq_len=4096,
        notes="Reproduction ladder, headline size: the shape of `small` with 4096 positions (d = 64).",
    ),
    "42m": dict(
        d_model=512,
        n_layers=8,
        n_heads=4,
        lowrank_rank=32,
        vocab_size=16384,
        max_seq_len=4096,
        notes="Reproduction ladder, largest rung (d = 64).",
    ),
    "125m": dict(
        d_model=768,
        n_layers=12,
        n_heads=6,
        lowrank_rank=48,
        vocab_size=32768,
        max_seq_len=2048,
        notes="GPT-2-small shape (D 768, L 12).",
    ),
    "350m": dict(
        d_model=1024,
        n_layers=24,
        n_heads=8,
        lowrank_rank=64,
        vocab_size=32768,
        max_seq_len=2048,
        notes="GPT-2-medium shape (D 1024, L 24).",
    ),
    "830m": dict(
        d_model=1536,
        n_layers=24,
        n_heads=8,
        lowrank_rank=96,
        vocab_size=PAPER_VOCAB,
        max_seq_len=4096,
        notes="Paper Table 3, as printed (8 heads, d = 96).",
    ),
    "1.4b": dict(
        d_model=2048,
        n_layers=24,
        n_heads=8,
        lowrank_rank=128,
        vocab_size=PAPER_VOCAB,
        max_seq_len=4096,
        notes="Paper Table 3 says 10 heads, which do not divide 2048 into even d; 8 heads "
        "(d = 128) as in the paper's own Table 6 ablations.",
    ),
    "2.8b": dict(
        d_model=2880,
        n_layers=32,
        n_heads=15,
        lowrank_rank=256,
        vocab_size=PAPER_VOCAB,
        max_seq_len=4096,
        notes="Paper Table 3 says 14 heads (2880/28 is not an integer); 15 heads (d = 96), "
        "the nearest count giving an even d.",
    ),
    "3b": dict(
        d_model=2880,
        n_layers=30,
        n_heads=15,
        lowrank_rank=256,
        vocab_size=PAPER_VOCAB,
        ffn_dim=7680,
        max_seq_len=4096,
        notes="Paper Table 1 (FFN 7680) says 14 heads (2880/28 is not an integer); 15 heads "
        "(d = 96), the nearest count giving an even d.",
    ),
    "6.8b": dict(
        d_model=4096,
        n_layers=35,
        n_heads=16,
        lowrank_rank=320,
        vocab_size=PAPER_VOCAB,
        max_seq_len=4096,
        notes="Paper Table 3 says 20 heads (4096/40 is not an integer); 16 heads (d = 128), "
        "the nearest count giving an even d.",
    ),
    "13.1b": dict(
        d_model=5120,
        n_layers=44,
        n_heads=32,
        lowrank_rank=448,
        vocab_size=PAPER_VOCAB,
        max_seq_len=4096,
        notes="Paper Table 3 says 30 heads (5120/60 is not an integer); 32 heads (d = 80), "
        "the nearest count giving an even d.",
    ),
}

PRESET_NAMES: list[str] = [f"{family}-{size}" for size in SIZES for family in FAMILIES]


def preset_dict(name: str) -> dict[str, Any]:
    """Field values of preset ``name`` (exact match); an unknown name lists the valid ones."""
    family, _, size = name.partition("-")
    if family not in FAMILIES or size not in SIZES:
        hint = ""
        if name in SIZES:
            hint = (
                f" ({name!r} is a size: name a family too, e.g. 'shared_diff-{name}', "
                f"or see them all with `shareddiff params {name} --compare`)"
            )
        elif close := difflib.get_close_matches(name, PRESET_NAMES, n=3, cutoff=0.8):
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)"
        raise ValueError(f"unknown preset {name!r}{hint}; valid presets are: {', '.join(PRESET_NAMES)}")
    values = dict(SIZES[size])
    values["attention"] = FAMILIES[family]
    if family in ("transformer", "diff_v2", "shared_diff_v2"):
        values["n_heads"] *= 2  # heads of dim d = D / 2h
    if family not in ("shared_diff", "shared_diff_v2"):
        values.pop("lowrank_rank", None)  # sizes without it (mqar) take the D/16 rule for shared_diff
    if family in FAMILY_NOTES:
        values["notes"] = f"{values['notes']} {FAMILY_NOTES[family]}"
    return values


def size_of(name: str) -> str:
    """The size part of a preset name, or the name itself if it is already a size."""
    if name in SIZES:
        return name
    preset_dict(name)
    return name.partition("-")[2]
