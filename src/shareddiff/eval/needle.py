"""Multi-needle retrieval (Kamradt's needle in a haystack as the DIFF / Shared DIFF papers run it).

N needles "The magic number of <city> is <number>." sit in filler text taken from a corpus split;
the answer needle at a requested depth, the others at random places. R of the cities are queried;
the model must produce each number after "The magic number of <city> is" (greedy decoding, earlier
answers given). Accuracy is over (sample, queried city) pairs; beside exact match, the fraction of
the 7 digits right (per-digit accuracy) and the teacher-forced log-probability of the answer show
partial progress. Numbers are tokenized one digit per token by default (``split_digits``). The samples
(``shareddiff.data.needle``) are token-id sequences built from pieces, so their length is exact and a
seed fixes them.
"""

from __future__ import annotations

import random
import re

import numpy as np
import torch
from torch import Tensor

from shareddiff.data.needle import NeedleBuilder, NeedleSample
from shareddiff.data.tokenizer import Tokenizer
from shareddiff.eval.common import check_context

SCORES = {"accuracy": "correct", "digit_accuracy": "digit_accuracy", "answer_logprob": "answer_logprob"}


def _digits(text: str) -> str:
    match = re.search(r"\d+", text)
    return match.group(0) if match else ""


def digit_accuracy(predicted: str, number: str) -> float:
    """The fraction of ``number``'s digits that ``predicted`` has at the same place (a digit missing
    from a short answer counts wrong; digits beyond ``number``'s length are ignored)."""
    return sum(p == t for p, t in zip(predicted, number, strict=False)) / len(number)


def answer_logprob(last_logits: Tensor, teacher_logits: Tensor, answer: list[int]) -> float:
    """log p(answer | prompt) in nats: ``last_logits`` (V,) predict answer[0], ``teacher_logits``
    (len(answer) − 1, V) are the logits at answer[0..−2] (teacher forcing) and predict the rest."""
    logits = torch.cat([last_logits[None], teacher_logits]).double().log_softmax(-1)
    return logits.gather(1, torch.tensor(answer, device=logits.device)[:, None]).sum().item()


@torch.no_grad()
def score_sample(model, builder: NeedleBuilder, sample: NeedleSample) -> list[dict]:
    """Per queried city, earlier answers given: exact match and per-digit accuracy of the greedy answer,
    and the teacher-forced log-probability (nats) of the answer tokens " <number>"."""
    device = next(model.parameters()).device
    prompt = list(sample.ids)
    scores = []
    max_new = len(builder.tok.encode(" 12345678.")) + 1
    for i, city in enumerate(sample.queries):
        number = sample.numbers[city]
        answer = builder.answer_ids(number)
        cache = model.new_cache(len(prompt) + max(max_new, len(answer)))
        last = model(torch.tensor([prompt], device=device), cache)[0, -1]  # predicts the first answer token
        teacher = last[None][:0]  # (0, V): a one-token answer has nothing to teacher-force
        if len(answer) > 1:
            teacher = model(torch.tensor([answer[:-1]], device=device), cache.copy())[0]
        greedy = builder.tok.decode(_greedy(model, last, cache, max_new))
        scores.append(
            {
                "correct": _digits(greedy) == number,
                "digit_accuracy": digit_accuracy(_digits(greedy), number),
                "answer_logprob": answer_logprob(last, teacher, answer),
            }
        )
        next_city = sample.queries[i + 1] if i + 1 < len(sample.queries) else None
        prompt += builder.follow_up_ids(number, next_city)
    return scores


def _greedy(model, logits: Tensor, cache, steps: int) -> list[int]:
    """``steps`` greedy tokens from the next-token ``logits`` (V,) of the prompt held in ``cache``."""
    tokens = [int(logits.argmax())]
    while len(tokens) < steps:
        logits = model(torch.tensor([[tokens[-1]]], device=logits.device), cache)[0, -1]
        tokens.append(int(logits.argmax()))
    return tokens


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
    """Exact-match accuracy, per-digit accuracy and mean answer log-probability (nats) per (length, depth)
    cell over ``samples`` samples each, and their means over the cells."""
    extra = answer_room(builder.tok, n_queries)
    check_context(model, max(lengths) + extra, f"needle retrieval at length {max(lengths)}")
    cells = []
    for length in lengths:
        for depth in depths:
            rng = random.Random(f"needle-{seed}-{length}-{depth}-{n_needles}-{n_queries}")
            scores = []
            for _ in range(samples):
                scores += score_sample(model, builder, builder.sample(length, n_needles, n_queries, depth, rng))
                if progress is not None:
                    progress.update(1)
            cell = {"length": length, "depth": depth, "n": len(scores)}
            cell |= {name: float(np.mean([s[key] for s in scores])) for name, key in SCORES.items()}
            cells.append(cell)
    return {
        "n_needles": n_needles,
        "n_queries": n_queries,
        "samples": samples,
        "seed": seed,
        "split_digits": builder.split_digits,
        "cells": cells,
        **{name: float(np.mean([c[name] for c in cells])) for name in SCORES},
    }
