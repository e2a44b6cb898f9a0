"""Multi-needle retrieval (Kamradt's needle in a haystack as the DIFF / Shared DIFF papers run it).

N needles "The magic number of <city> is <number>." sit in filler text taken from a corpus split;
the answer needle at a requested depth, the others at random places. R of the cities are queried;
the model must produce each number after "The magic number of <city> is" (greedy decoding, earlier
answers given). Accuracy is over (sample, queried city) pairs. Samples are token-id sequences built
from pieces, so their length is exact and a seed fixes them.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from shareddiff.data.shards import TokenData
from shareddiff.data.tokenizer import Tokenizer
from shareddiff.eval.common import check_context
from shareddiff.generation import generate

CITIES = [
    "Lisbon",
    "Oslo",
    "Nairobi",
    "Lima",
    "Hanoi",
    "Quito",
    "Dakar",
    "Tunis",
    "Riga",
    "Vilnius",
    "Tallinn",
    "Helsinki",
    "Dublin",
    "Cardiff",
    "Bergen",
    "Porto",
    "Seville",
    "Valencia",
    "Lyon",
    "Marseille",
    "Geneva",
    "Zurich",
    "Munich",
    "Hamburg",
    "Leipzig",
    "Krakow",
    "Gdansk",
    "Prague",
    "Vienna",
    "Budapest",
    "Zagreb",
    "Sofia",
    "Athens",
    "Izmir",
    "Ankara",
    "Tbilisi",
    "Yerevan",
    "Baku",
    "Tehran",
    "Muscat",
    "Doha",
    "Amman",
    "Beirut",
    "Cairo",
    "Accra",
    "Lagos",
    "Kampala",
    "Lusaka",
    "Harare",
    "Durban",
    "Perth",
    "Hobart",
    "Auckland",
    "Wellington",
    "Osaka",
    "Kyoto",
    "Busan",
    "Manila",
    "Jakarta",
    "Medan",
    "Colombo",
    "Dhaka",
    "Kathmandu",
    "Lahore",
    "Montreal",
    "Quebec",
    "Denver",
    "Boston",
    "Austin",
    "Seattle",
    "Havana",
    "Bogota",
]


@dataclass
class NeedleSample:
    ids: list[int]  # context + question, ending right before the first answer
    cities: list[str]  # every needle's city
    numbers: dict[str, str]
    queries: list[str]  # the queried cities, the answer needle's first
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # needle token spans in ``ids``
    depth: float = 0.0
    sentence_ends: list[int] = field(default_factory=list)  # filler positions where a needle may go
    answer_position: int = 0  # the answer needle's position in the filler (one of sentence_ends)

    def answer_span(self) -> tuple[int, int]:
        return self.spans[self.queries[0]]


class NeedleBuilder:
    """Builds samples from a tokenizer and a split to draw filler from (validation for eval, train for training)."""

    def __init__(self, tokenizer: Tokenizer, filler: TokenData) -> None:
        self.tok, self.filler = tokenizer, filler
        boundary = [
            i
            for i in range(tokenizer.vocab_size)
            if i == tokenizer.eos_id or re.search(r"(\.\s*$)|\n", tokenizer.decode([i]) or "")
        ]
        self.is_boundary = np.zeros(tokenizer.vocab_size, dtype=bool)
        self.is_boundary[boundary] = True

    def needle_ids(self, city: str, number: str) -> list[int]:
        return self.tok.encode(f"\nThe magic number of {city} is {number}.\n")

    def question_ids(self, queries: list[str]) -> list[int]:
        names = " and ".join(queries)
        return self.tok.encode(
            f"\nQuestion: What is the magic number of {names}?\nAnswer: The magic number of {queries[0]} is"
        )

    def follow_up_ids(self, number: str, next_city: str | None) -> list[int]:
        """The given answer, then the start of the next query's answer."""
        text = f" {number}."
        if next_city is not None:
            text += f" The magic number of {next_city} is"
        return self.tok.encode(text)

    def sample(self, length: int, n_needles: int, n_queries: int, depth: float, rng: random.Random) -> NeedleSample:
        if not 1 <= n_queries <= n_needles <= len(CITIES):
            raise ValueError(f"need 1 ≤ queries ({n_queries}) ≤ needles ({n_needles}) ≤ {len(CITIES)}")
        cities = rng.sample(CITIES, n_needles)
        numbers = {c: str(rng.randrange(1_000_000, 10_000_000)) for c in cities}
        queries = cities[:n_queries]  # cities[0] is the answer needle
        needles = {c: self.needle_ids(c, numbers[c]) for c in cities}
        question = self.question_ids(queries)
        budget = length - len(question) - sum(map(len, needles.values()))
        if budget < 16:
            raise ValueError(f"a context of {length} tokens leaves no room for filler around {n_needles} needles")
        start = rng.randrange(0, max(1, len(self.filler) - budget))
        filler = self.filler.window(start, budget)
        cuts = np.flatnonzero(self.is_boundary[filler]) + 1  # positions right after a sentence end
        cuts = np.concatenate([[0], cuts[cuts < budget], [budget]])
        positions = {cities[0]: int(cuts[np.abs(cuts - depth * budget).argmin()])}
        for city in cities[1:]:
            positions[city] = int(cuts[rng.randrange(len(cuts))])
        order = sorted(cities, key=lambda c: (positions[c], c != cities[0], rng.random()))
        ids: list[int] = []
        spans: dict[str, tuple[int, int]] = {}
        cursor = 0
        for city in order:
            ids.extend(filler[cursor : positions[city]].tolist())
            cursor = positions[city]
            spans[city] = (len(ids), len(ids) + len(needles[city]))
            ids.extend(needles[city])
        ids.extend(filler[cursor:].tolist())
        ids.extend(question)
        return NeedleSample(ids, cities, numbers, queries, spans, depth, cuts.tolist(), positions[cities[0]])

    def training_row(self, length: int, n_needles: int, rng: random.Random) -> list[int]:
        """One training sequence of exactly ``length`` tokens: a sample with its first answer appended."""
        answer_len = len(self.follow_up_ids("1234567", None))
        sample = self.sample(length - answer_len, n_needles, 1, rng.random(), rng)
        row = sample.ids + self.follow_up_ids(sample.numbers[sample.queries[0]], None)
        return (row + [self.tok.eos_id] * length)[:length]


class NeedleMix:
    """The synthetic retrieval training mixture (``data.mix = "needle:FRACTION[:MAX_NEEDLES]"``): that
    fraction of training rows are needle prompts with their answer, filler from the training split."""

    def __init__(self, builder: NeedleBuilder, fraction: float, max_needles: int = 4) -> None:
        self.builder, self.fraction, self.max_needles = builder, fraction, max_needles

    def row(self, length: int, rng: random.Random) -> list[int]:
        return self.builder.training_row(length, rng.randint(1, self.max_needles), rng)


def parse_mix(spec: str, tokenizer: Tokenizer, train_data: TokenData) -> NeedleMix | None:
    if not spec:
        return None
    name, _, rest = spec.partition(":")
    parts = rest.split(":") if rest else []
    try:
        fraction = float(parts[0])
        max_needles = int(parts[1]) if len(parts) > 1 else 4
    except (IndexError, ValueError):
        fraction, max_needles = -1.0, 0
    if name != "needle" or not 0 < fraction <= 1 or max_needles < 1:
        raise ValueError(f"data.mix={spec!r} is not understood; use needle:FRACTION[:MAX_NEEDLES], e.g. needle:0.2")
    return NeedleMix(NeedleBuilder(tokenizer, train_data), fraction, max_needles)


def _digits(text: str) -> str:
    match = re.search(r"\d+", text)
    return match.group(0) if match else ""


@torch.no_grad()
def score_sample(model, builder: NeedleBuilder, sample: NeedleSample) -> list[bool]:
    """Greedy answers for each queried city, earlier answers given (teacher forcing)."""
    device = next(model.parameters()).device
    prompt = list(sample.ids)
    correct = []
    max_new = len(builder.tok.encode(" 12345678.")) + 1
    for i, city in enumerate(sample.queries):
        out = generate(model, torch.tensor([prompt], device=device), max_new, temperature=0)
        answer = builder.tok.decode(out[0, len(prompt) :].tolist())
        correct.append(_digits(answer) == sample.numbers[city])
        next_city = sample.queries[i + 1] if i + 1 < len(sample.queries) else None
        prompt += builder.follow_up_ids(sample.numbers[city], next_city)
    return correct


def answer_room(tok: Tokenizer, n_queries: int) -> int:
    """Positions a prompt of length N needs beyond N: the answers and follow-ups of ``n_queries`` queries."""
    return n_queries * (len(tok.encode(" 12345678.")) + 10) + 16


def needle_eval(
    model,
    builder: NeedleBuilder,
    lengths: list[int],
    depths: list[float],
    n_needles: int,
    n_queries: int,
    samples: int,
    seed: int,
    progress=None,
) -> dict:
    """Accuracy per (length, depth) cell over ``samples`` samples each."""
    extra = answer_room(builder.tok, n_queries)
    check_context(model, max(lengths) + extra, f"needle retrieval at length {max(lengths)}")
    cells = []
    for length in lengths:
        for depth in depths:
            rng = random.Random(f"needle-{seed}-{length}-{depth}-{n_needles}-{n_queries}")
            hits = []
            for _ in range(samples):
                hits += score_sample(model, builder, builder.sample(length, n_needles, n_queries, depth, rng))
                if progress is not None:
                    progress.update(1)
            cells.append({"length": length, "depth": depth, "accuracy": float(np.mean(hits)), "n": len(hits)})
    return {
        "n_needles": n_needles,
        "n_queries": n_queries,
        "samples": samples,
        "seed": seed,
        "cells": cells,
        "accuracy": float(np.mean([c["accuracy"] for c in cells])),
    }


def plot_heatmap(result: dict, out, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({c["length"] for c in result["cells"]})
    depths = sorted({c["depth"] for c in result["cells"]})
    grid = np.array(
        [
            [next(c["accuracy"] for c in result["cells"] if c["length"] == n and c["depth"] == d) for n in lengths]
            for d in depths
        ]
    )
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 2.5, 0.6 * len(depths) + 1.8), dpi=120)
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" if n >= 1024 else str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    for i in range(len(depths)):
        for j in range(len(lengths)):
            dark = grid[i, j] < 0.15 or grid[i, j] > 0.85  # the ends of RdYlGn
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8, color="w" if dark else "k")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("answer needle depth")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.05, label="retrieval accuracy (queried numbers right)")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
