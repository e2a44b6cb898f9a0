"""Many-shot in-context classification as Bertsch et al. (2024) run it, with constrained decoding.

Prompt: k demonstrations "Input: <text>\\nLabel: <label>\\n\\n", then "Input: <text>\\nLabel:". The
prediction is the label whose tokens " <label>" have the highest total log-likelihood after the
prompt (Ratner et al., constrained decoding). k runs from 1 shot up to what fits the context.
Robustness (the paper's Figure 5): for one set of demonstrations, the spread of accuracy over P
orders, random and class-alternating.
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from shareddiff.data.tokenizer import Tokenizer
from shareddiff.precision import upcast

Example = tuple[str, str]  # (text, label)

ICL_DATA = Path(__file__).resolve().parents[1] / "data" / "icl"  # the paper's datasets, with their licences
BUNDLED_DATASETS = {  # name: (demonstration pool, test items), files under ICL_DATA (see its README.md)
    "trec": ("trec/train_5500.label", "trec/TREC_10.label"),
    "banking77": ("banking77/train.csv", "banking77/test.csv"),
    "clinc150": ("clinc150/data_full.json", "clinc150/data_full.json"),
}


def load_bundled(name: str, fine_labels: bool = False) -> tuple[list[Example], list[Example]]:
    """(demonstration pool, test items) of a dataset shipped with the package: trec, banking77, clinc150."""
    if name not in BUNDLED_DATASETS:
        raise ValueError(f"no bundled ICL dataset {name!r}; the bundled ones are {sorted(BUNDLED_DATASETS)}")
    train, test = (ICL_DATA / part for part in BUNDLED_DATASETS[name])
    return (
        load_examples(train, split="train", fine_labels=fine_labels),
        load_examples(test, split="test", fine_labels=fine_labels),
    )


def synthetic_intents(n_classes: int = 12, per_class: int = 40, seed: int = 0) -> list[Example]:
    """A many-class intent set: each class has its own verb and object words in shared templates."""
    verbs = [
        "book",
        "cancel",
        "check",
        "change",
        "find",
        "order",
        "pay",
        "report",
        "reset",
        "send",
        "track",
        "update",
        "open",
        "close",
        "move",
        "rate",
        "renew",
        "share",
        "stop",
        "start",
    ]
    objects = [
        "flight",
        "card",
        "balance",
        "password",
        "parcel",
        "order",
        "bill",
        "account",
        "meeting",
        "table",
        "ticket",
        "address",
        "loan",
        "subscription",
        "refund",
        "alarm",
        "playlist",
        "invoice",
        "car",
        "room",
    ]
    templates = [
        "please {v} my {o}",
        "i want to {v} the {o}",
        "can you {v} a {o} for me",
        "{v} {o} now",
        "how do i {v} my {o}",
        "help me {v} this {o} today",
    ]
    if n_classes > min(len(verbs), len(objects)):
        raise ValueError(f"at most {min(len(verbs), len(objects))} synthetic classes")
    rng = random.Random(seed)
    data = []
    for c in range(n_classes):
        label = f"{verbs[c]}_{objects[c]}"
        for _ in range(per_class):
            data.append((rng.choice(templates).format(v=verbs[c], o=objects[c]), label))
    rng.shuffle(data)
    return data


def load_examples(path: str | Path, split: str = "train", fine_labels: bool = False) -> list[Example]:
    """(text, label) pairs from JSONL/CSV (fields text, label or category), TREC ``*.label`` files
    ("COARSE:fine text"; the 6 coarse labels, or with ``fine_labels`` the 50 fine ones, TREC-fine),
    or CLINC-150's ``data_full.json`` (its ``split`` list)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"dataset {path} does not exist; give a file, or one of the bundled datasets {sorted(BUNDLED_DATASETS)}"
        )
    if path.suffix == ".label":
        rows = []
        for line in path.read_text(encoding="latin-1").splitlines():
            label, _, text = line.partition(" ")
            rows.append((text.strip(), label if fine_labels else label.split(":")[0]))
        return rows
    if path.name == "data_full.json":
        return [(t, label) for t, label in json.loads(path.read_text())[split]]
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            key = "label" if "label" in (reader.fieldnames or []) else "category"
            return [(r["text"], r[key]) for r in reader]
    if path.suffix == ".jsonl":
        return [(r["text"], str(r["label"])) for r in map(json.loads, path.read_text().splitlines()) if r]
    raise ValueError(
        f"{path}: use .jsonl or .csv with text and label fields, a TREC .label file, or CLINC-150's data_full.json"
    )


def demo_ids(tok: Tokenizer, text: str, label: str) -> list[int]:
    return tok.encode(f"Input: {text}\nLabel: {label}\n\n")


def query_ids(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(f"Input: {text}\nLabel:")


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax over the vocabulary in float32, or float64 for float64 logits."""
    return upcast(logits).log_softmax(-1)


@torch.no_grad()
def label_scores(model, prompt: list[int], labels: list[list[int]]) -> list[float]:
    """Σ log p(label tokens | prompt) for every candidate, sharing the prompt's KV cache."""
    device = next(model.parameters()).device
    longest = max(map(len, labels))
    cache = model.new_cache(len(prompt) + longest)
    last = _log_probs(model(torch.tensor([prompt], device=device), cache)[0, -1])
    scores = []
    for ids in labels:
        branch = cache.copy()
        score = last[ids[0]].item()
        if len(ids) > 1:
            logp = _log_probs(model(torch.tensor([ids[:-1]], device=device), branch)[0])
            score += sum(logp[i, ids[i + 1]].item() for i in range(len(ids) - 1))
        scores.append(score)
    return scores


def classify(model, tok: Tokenizer, demos: list[Example], text: str, labels: list[str]) -> int:
    prompt = [t for d in demos for t in demo_ids(tok, *d)] + query_ids(tok, text)
    scores = label_scores(model, prompt, [tok.encode(" " + label) for label in labels])
    return int(np.argmax(scores))


def alternate_by_class(demos: list[Example], rng: random.Random) -> list[Example]:
    """Round-robin over classes (in a random class order): A B C A B C ..."""
    by_class: dict[str, list[Example]] = defaultdict(list)
    for d in demos:
        by_class[d[1]].append(d)
    order = list(by_class)
    rng.shuffle(order)
    out = []
    while any(by_class.values()):
        for label in order:
            if by_class[label]:
                out.append(by_class[label].pop())
    return out


def accuracy(model, tok, demos, test, labels) -> float:
    return float(np.mean([labels[classify(model, tok, demos, text, labels)] == gold for text, gold in test]))


def icl_eval(
    model,
    tok: Tokenizer,
    train: list[Example],
    test: list[Example],
    shots: list[int] | None,
    permutations: int,
    seed: int,
) -> dict:
    """Accuracy per k, and the spread over ``permutations`` orders (random, class-alternating) per k."""
    labels = sorted({label for _, label in train + test})
    unknown = sorted({label for _, label in test} - {label for _, label in train})
    if unknown:
        raise ValueError(f"test labels {unknown[:5]} never appear among the demonstrations' labels")
    limit = model.config.max_seq_len
    longest_query = max(len(query_ids(tok, t)) for t, _ in test) + max(len(tok.encode(" " + lb)) for lb in labels)
    mean_demo = float(np.mean([len(demo_ids(tok, *d)) for d in train[:200]]))
    if shots is None:
        shots, k = [], 1
        while k <= len(train) and k * mean_demo * 1.2 + longest_query <= limit:
            shots.append(k)
            k *= 2
    if not shots:
        raise ValueError(f"not even one demonstration fits max_seq_len={limit}; use a model with a longer context")
    rows = []
    for k in shots:
        rng = random.Random(f"icl-{seed}-{k}")
        demos = rng.sample(train, k)
        length = sum(len(demo_ids(tok, *d)) for d in demos) + longest_query
        if length > limit:
            raise ValueError(
                f"{k} demonstrations need {length} positions, beyond max_seq_len={limit}; ask for fewer shots"
            )
        shuffled = []
        for _ in range(permutations):
            order = demos[:]
            rng.shuffle(order)
            shuffled.append(accuracy(model, tok, order, test, labels))
        alternating = [accuracy(model, tok, alternate_by_class(demos, rng), test, labels) for _ in range(permutations)]
        rows.append(
            {
                "shots": k,
                "accuracy": float(np.mean(shuffled)),
                "random_order": _spread(shuffled),
                "class_alternating": _spread(alternating),
                "prompt_tokens": length,
            }
        )
    return {"labels": len(labels), "test_examples": len(test), "permutations": permutations, "rows": rows}


def _spread(values: list[float]) -> dict:
    return {
        "values": values,
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
    }
