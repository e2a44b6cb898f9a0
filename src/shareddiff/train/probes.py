"""The trainer's periodic measurements of a synthetic task, beside its validation loss: MQAR accuracy
(``MQARProbe``) and needle retrieval (``NeedleProbe``), each on a fixed set fixed at the start of a run.

They sit below ``shareddiff.eval`` (which reuses ``mqar_scores``) so that training imports nothing
from the evaluation suite.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from shareddiff.config import MQARConfig
from shareddiff.data.loader import IGNORE
from shareddiff.data.mqar import mqar_eval_set
from shareddiff.data.needle import NeedleBuilder
from shareddiff.precision import upcast


@torch.no_grad()
def mqar_scores(
    model, inputs: Tensor, targets: Tensor, batch_size: int = 64, autocast: Callable = contextlib.nullcontext
) -> dict[str, float]:
    """Loss (mean cross-entropy, nats) and accuracy over the answer positions (targets ≠ IGNORE) of
    ``inputs``/``targets`` (N, T); evaluated ``batch_size`` rows at a time on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for i in range(0, len(inputs), batch_size):
        x, y = inputs[i : i + batch_size].to(device), targets[i : i + batch_size].to(device)
        with autocast():
            logits = model(x)
        answer = y != IGNORE
        picked = upcast(logits[answer])  # (answers, V), in float32 (float64 for a float64 model)
        loss_sum += F.cross_entropy(picked, y[answer], reduction="sum").item()
        correct += int((picked.argmax(-1) == y[answer]).sum())
        count += int(answer.sum())
    model.train(was_training)
    return {"loss": loss_sum / count, "accuracy": correct / count, "answers": count}


class MQARProbe:
    """The trainer's periodic MQAR evaluation: fixed sets at the training length N and, when the model's
    ``max_seq_len`` allows, at 2N. Calling it gives the metrics record (``val_loss`` = the loss at N)."""

    def __init__(self, config: MQARConfig, seq_len: int, max_seq_len: int) -> None:
        self.sets = {"": mqar_eval_set(config, seq_len, config.eval_samples)}
        self.skipped = ""
        if 2 * seq_len <= max_seq_len:
            self.sets["_2x"] = mqar_eval_set(config, 2 * seq_len, config.eval_samples)
        else:
            self.skipped = (
                f"MQAR at 2x the training length ({2 * seq_len}) is not evaluated: model.max_seq_len={max_seq_len}; "
                f"set model.max_seq_len={2 * seq_len} (RoPE has no position parameters) to measure it"
            )

    def __call__(self, model, batch_size: int, autocast: Callable = contextlib.nullcontext) -> dict[str, float]:
        record: dict[str, float] = {}
        for suffix, (inputs, targets) in self.sets.items():
            scores = mqar_scores(model, inputs, targets, batch_size, autocast)
            record[f"mqar_loss{suffix}"] = scores["loss"]
            record[f"mqar_accuracy{suffix}"] = scores["accuracy"]
        return {"val_loss": record["mqar_loss"], **record}


PROBE_SAMPLES = 64  # prompts of the trainer's needle probe


class NeedleProbe:
    """The trainer's periodic needle measurement (the learning curve of a run with a needle mix): a fixed
    set of prompts of ``length`` tokens (1 to ``max_needles`` needles, filler from the validation split),
    each followed by its answer, scored teacher-forced in one forward pass per batch.

    Calling it gives ``needle_accuracy`` (every answer token is the argmax: greedy decoding would give
    the number, the exact match of ``needle_eval``), ``needle_token_accuracy`` (the fraction of answer
    tokens that are the argmax given the true ones before them; per digit with split digits) and
    ``needle_answer_logprob`` (mean log p(" <number>" | prompt), nats).
    """

    def __init__(
        self, builder: NeedleBuilder, length: int, max_needles: int, samples: int = PROBE_SAMPLES, seed: int = 0
    ) -> None:
        rng = random.Random(f"needle-probe-{seed}-{length}-{max_needles}")
        answer_len = len(builder.answer_ids("1234567"))
        self.rows: list[tuple[list[int], list[int]]] = []  # (prompt, answer)
        for _ in range(samples):
            sample = builder.sample(length - answer_len, rng.randint(1, max_needles), 1, rng.random(), rng)
            self.rows.append((sample.ids, builder.answer_ids(sample.numbers[sample.queries[0]])))
        self.pad = builder.tok.eos_id

    @torch.no_grad()
    def __call__(self, model, batch_size: int, autocast: Callable = contextlib.nullcontext) -> dict[str, float]:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        exact, token_hits, tokens, logprob = 0, 0, 0, 0.0
        for i in range(0, len(self.rows), batch_size):
            chunk = self.rows[i : i + batch_size]
            width = max(len(p) + len(a) for p, a in chunk) - 1
            ids = torch.full((len(chunk), width), self.pad, dtype=torch.long)
            for row, (prompt, answer) in enumerate(chunk):
                full = prompt + answer[:-1]
                ids[row, : len(full)] = torch.tensor(full)
            with autocast():
                logits = model(ids.to(device))
            for row, (prompt, answer) in enumerate(chunk):
                at = logits[row, len(prompt) - 1 : len(prompt) - 1 + len(answer)].double().log_softmax(-1)
                target = torch.tensor(answer, device=at.device)
                hits = at.argmax(-1) == target
                exact += int(hits.all())
                token_hits, tokens = token_hits + int(hits.sum()), tokens + len(answer)
                logprob += at.gather(1, target[:, None]).sum().item()
        model.train(was_training)
        n = len(self.rows)
        return {
            "needle_accuracy": exact / n,
            "needle_token_accuracy": token_hits / tokens,
            "needle_answer_logprob": logprob / n,
        }
