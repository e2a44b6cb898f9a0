"""The needle-in-a-haystack samples (Kamradt's multi-needle retrieval, as the DIFF / Shared DIFF papers run
it) and the synthetic retrieval training mixture built from them (``data.mix``).

N needles "The magic number of <city> is <number>." sit in filler text taken from a corpus split;
the answer needle at a requested depth, the others at random places, then a question about R of the
cities. Numbers are tokenized one digit per token by default (``split_digits``). Samples are token-id
sequences built from pieces, so their length is exact and a seed fixes them. Scoring lives in
``shareddiff.eval.needle``; the trainer's probe in ``shareddiff.train.probes``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import numpy as np

from shareddiff.data.shards import TokenData
from shareddiff.data.tokenizer import Tokenizer

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
    """Builds samples from a tokenizer and a split to draw filler from (validation for eval, train for training).

    ``split_digits`` (default) encodes every digit of the numbers as a token of its own, with any
    tokenizer (``Tokenizer(split_digits=True)``); False keeps the tokenizer's own pieces.
    """

    def __init__(self, tokenizer: Tokenizer, filler: TokenData, split_digits: bool = True) -> None:
        if split_digits and not tokenizer.split_digits:
            tokenizer = Tokenizer(tokenizer.path, split_digits=True)
        self.tok, self.filler, self.split_digits = tokenizer, filler, split_digits
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

    def answer_ids(self, number: str) -> list[int]:
        """The tokens the model must produce after "... is": " <number>" (the period after it not included)."""
        return self.tok.encode(f" {number}")

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
            raise ValueError(
                f"a context of {length} tokens leaves no room for filler around {n_needles} needle(s) "
                f"({length - budget} tokens of needles and question, at least 16 of filler needed): use a longer "
                "context (data.seq_len in training, --lengths in eval needle) or fewer needles"
            )
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

    def training_row(
        self, length: int, n_needles: int, rng: random.Random, sample_len: int | None = None
    ) -> tuple[list[int], tuple[int, int]]:
        """One training sequence of exactly ``length`` tokens, a sample with its first answer appended, and
        the answer's token span in it. With ``sample_len`` < ``length`` the sample (and its answer) fills
        only the end of the row, after filler text closed by an end-of-text token."""
        sample_len = length if sample_len is None else sample_len
        answer_len = len(self.follow_up_ids("1234567", None))
        sample = self.sample(sample_len - answer_len, n_needles, 1, rng.random(), rng)
        number = sample.numbers[sample.queries[0]]
        head: list[int] = []
        if sample_len < length:
            start = rng.randrange(0, max(1, len(self.filler) - length))
            head = [*self.filler.window(start, length - sample_len - 1).tolist(), self.tok.eos_id]
        row = head + sample.ids + self.follow_up_ids(number, None)
        answer_start = len(head) + len(sample.ids)
        span = (min(answer_start, length), min(answer_start + len(self.answer_ids(number)), length))
        return (row + [self.tok.eos_id] * length)[:length], span


class NeedleMix:
    """The synthetic retrieval training mixture: a fraction of training rows are needle prompts with
    their answer, filler from the training split (``parse_mix`` reads ``data.mix``).

    ``answer_weight``: the loss weight of the answer tokens " <number>" in those rows (1 elsewhere, see
    ``shareddiff.train.loss.token_loss``); ``min_len``: sample lengths drawn uniformly from
    [min_len, row length] (None: every sample fills its row), so that one training length covers
    shorter evaluation lengths as well.
    """

    def __init__(
        self,
        builder: NeedleBuilder,
        fraction: float,
        max_needles: int = 4,
        answer_weight: float = 1.0,
        min_len: int | None = None,
    ) -> None:
        self.builder, self.fraction, self.max_needles = builder, fraction, max_needles
        self.answer_weight, self.min_len = answer_weight, min_len

    def row(self, length: int, rng: random.Random) -> tuple[list[int], np.ndarray | None]:
        """(ids, per-token loss weights or None when every token weighs 1) of one row of ``length`` tokens."""
        sample_len = length if self.min_len is None else rng.randint(min(self.min_len, length), length)
        ids, (start, end) = self.builder.training_row(length, rng.randint(1, self.max_needles), rng, sample_len)
        if self.answer_weight == 1.0:
            return ids, None
        weights = np.ones(length, dtype=np.float32)
        weights[start:end] = self.answer_weight
        return ids, weights


MIX_HELP = (
    "use needle:FRACTION[:MAX_NEEDLES][:OPTION=VALUE...] with options answer_weight (loss weight of the "
    "answer's tokens, ≥ 0, default 1), min_len (shortest sample, default: the row length) and digits "
    "(split or bpe, default split), e.g. needle:0.2:6:answer_weight=10:min_len=256"
)


def mix_options(spec: str) -> dict:
    """The fields of a ``data.mix`` spec: fraction, max_needles, answer_weight, min_len, split_digits.
    Raises ``ValueError`` naming the spec and the grammar for anything else."""
    name, _, rest = spec.partition(":")
    positional, options = [], {}
    for part in rest.split(":") if rest else []:
        key, eq, value = part.partition("=")
        if eq:
            options[key] = value
        else:
            positional.append(part)
    try:
        if name != "needle" or not 1 <= len(positional) <= 2 or set(options) - {"answer_weight", "min_len", "digits"}:
            raise ValueError
        fields = {
            "fraction": float(positional[0]),
            "max_needles": int(positional[1]) if len(positional) > 1 else 4,
            "answer_weight": float(options.get("answer_weight", 1.0)),
            "min_len": int(options["min_len"]) if "min_len" in options else None,
            "split_digits": {"split": True, "bpe": False}[options.get("digits", "split")],
        }
    except (ValueError, KeyError):
        raise ValueError(f"data.mix={spec!r} is not understood; {MIX_HELP}") from None
    if not 0 < fields["fraction"] <= 1 or fields["max_needles"] < 1 or fields["answer_weight"] < 0:
        raise ValueError(
            f"data.mix={spec!r} is not understood: it needs 0 < FRACTION ≤ 1, MAX_NEEDLES ≥ 1 and "
            f"answer_weight ≥ 0; {MIX_HELP}"
        )
    return fields


def parse_mix(spec: str, tokenizer: Tokenizer, train_data: TokenData) -> NeedleMix | None:
    """The ``NeedleMix`` of a ``data.mix`` spec (see ``MIX_HELP``), or None for an empty spec."""
    if not spec:
        return None
    fields = mix_options(spec)
    builder = NeedleBuilder(tokenizer, train_data, split_digits=fields.pop("split_digits"))
    mix = NeedleMix(builder, **fields)
    if mix.min_len is not None:
        try:
            builder.training_row(mix.min_len + 1, mix.max_needles, random.Random(0))
        except ValueError as err:
            raise ValueError(f"data.mix={spec!r}: min_len={mix.min_len} is too short ({err}); raise it") from None
    return mix


def builder_for_run(run: dict, tokenizer: Tokenizer, filler: TokenData) -> NeedleBuilder:
    """A builder that tokenizes numbers as the run (its recipe as a dict) was trained to: the digits
    option of its needle mix, split digits when it had none."""
    mix = run.get("data", {}).get("mix", "")
    split = mix_options(mix)["split_digits"] if mix.startswith("needle") else True
    return NeedleBuilder(tokenizer, filler, split_digits=split)
