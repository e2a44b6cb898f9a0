"""``shareddiff eval <analysis> CHECKPOINT``: load, run, write ``<analysis>.json`` and a PNG into RUN/eval/."""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from shareddiff.eval.common import output_dir, write_json

if TYPE_CHECKING:
    from shareddiff.data import Tokenizer

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the needle's place in the context, from its start (0) to its end (1)


def _load(checkpoint: str, device: str, text: bool = True):
    from shareddiff.train import load_model
    from shareddiff.train.device import select_device

    model, tokenizer, state = load_model(
        checkpoint, device=select_device(device, "--device"), attn_backend="auto", text=text
    )
    return model, tokenizer, state


def _split(state: dict, tokenizer: Tokenizer, split: str):
    from shareddiff.data.bundled import load_data_split

    return load_data_split(state["run"]["data"].get("path"), tokenizer, split)


def _name(state: dict) -> str:
    c = state["model_config"]
    return f"{c['attention']} (D={c['d_model']}, L={c['n_layers']})"


def run_lm(
    checkpoint: str,
    *,
    seq_len: int | None = None,
    max_tokens: int = 262_144,
    max_train_count: int | None = None,
    device: str = "auto",
    out: str | None = None,
) -> str:
    """Validation loss, perplexity and the AR-Hit / Others split of a checkpoint.

    The command line's form of :func:`lm_results`: its result as one line.

    Args:
        checkpoint: a run folder or one of its checkpoints/step_* folders
        seq_len: window length (default: the training length)
        max_tokens: validation tokens to score, at least one window (--seq-len)
        max_train_count: AR-Hit only for bigrams seen at most this often (at least once) in training
        device: auto, cpu or cuda
        out: output folder (default RUN/eval)
    """
    result = lm_results(checkpoint, seq_len, max_tokens, max_train_count, device, out)
    return (
        f"step {result['step']}: loss {result['loss']:.4f} (ppl {result['ppl']:.2f}); "
        f"AR-Hit {result['ar_hit_loss']:.4f} on {result['ar_hit_fraction']:.1%} of tokens; "
        f"Others {result['others_loss']:.4f} → "
        f"{output_dir(checkpoint, out) / 'lm.json'}"
    )


def lm_results(
    checkpoint: str, seq_len: int | None, max_tokens: int, max_train_count: int | None, device: str, out: str | None
) -> dict:
    """Validation loss, perplexity and the AR-Hit / Others split of ``checkpoint``; also written to lm.json."""
    from shareddiff.data import eval_windows
    from shareddiff.eval.lm import lm_loss, rare_bigrams

    check_lm_args(seq_len, max_tokens, max_train_count)
    model, tok, state = _load(checkpoint, device)
    trained = state["run"]["data"]["seq_len"]
    check_lm_args(seq_len or trained, max_tokens, max_train_count, "" if seq_len else " (the training length)")
    seq_len = seq_len or trained
    from shareddiff.eval.common import check_context

    check_context(model, seq_len, f"an evaluation window of {seq_len}")
    windows = eval_windows(_split(state, tok, "val"), seq_len, max_tokens)
    rare = None
    if max_train_count is not None:
        train = _split(state, tok, "train")
        rare = rare_bigrams(train.window(0, len(train)), model.config.vocab_size, max_train_count)
    result = {
        "checkpoint": str(checkpoint),
        "step": state.get("step"),  # the checkpoint evaluated: a run folder's newest intact one
        "model": _name(state),
        "seq_len": seq_len,
        "ar_hit_definition": "target completes a bigram seen earlier in the same window"
        + (f", bigram seen ≤ {max_train_count}× in training" if rare is not None else ""),
        **lm_loss(model, windows, rare=rare),
    }
    write_json(output_dir(checkpoint, out) / "lm.json", result)
    return result


def check_lm_args(seq_len: int | None, max_tokens: int, max_train_count: int | None, what: str = "") -> None:
    """Bad flags of ``eval lm`` as one clear error each, before anything is scored or written; ``seq_len`` None
    (the training length, not yet read) leaves ``max_tokens`` unchecked; ``what`` says where ``seq_len`` came
    from."""
    if seq_len is not None and seq_len < 1:
        raise ValueError(f"--seq-len {seq_len} must be at least 1 (leave it out for the training length)")
    if seq_len is not None and max_tokens < seq_len:  # a window scores seq_len targets
        raise ValueError(
            f"--max-tokens {max_tokens} is below one evaluation window of {seq_len} tokens{what}; "
            f"pass at least {seq_len}"
        )
    if max_train_count is not None and max_train_count < 1:
        raise ValueError(
            f"--max-train-count {max_train_count} must be at least 1 (AR-Hit then counts only the bigrams seen at "
            "most this often in training); leave it out to count every bigram"
        )


def check_probe_args(depths: list[float], samples: int, needles: int, queries: int = 1) -> None:
    """Bad flags of ``eval needle`` / ``eval attention`` as one clear error each."""
    bad = [d for d in depths if not 0 <= d <= 1]
    if bad:
        raise ValueError(
            f"--depths {' '.join(map(str, bad))}: a depth is the answer needle's place as a fraction of the "
            "context, from 0 (start) to 1 (end)"
        )
    if samples < 1:
        raise ValueError(f"--samples {samples} must be at least 1 (each cell's accuracy is a mean over samples)")
    if not 1 <= queries <= needles:
        raise ValueError(f"need 1 ≤ --queries ({queries}) ≤ --needles ({needles})")


def needle_stem(needles: int, queries: int, lengths: list[int], depths: list[float]) -> str:
    """The result's file name: N, R, the lengths and the depths (in %), so other settings never overwrite it."""
    return f"needle_N{needles}_R{queries}_L{'-'.join(map(str, lengths))}_D{'-'.join(f'{d * 100:g}' for d in depths)}"


def default_needle_lengths(max_seq_len: int, room: int) -> tuple[list[int], str | None]:
    """1K, 2K, 4K ... while a prompt and its answers (``room`` positions) fit the context; for a context
    below that, the longest length that fits, with a note saying so."""
    lengths, n = [], 1024
    while n + room <= max_seq_len:
        lengths.append(n)
        n *= 2
    if lengths:
        return lengths, None
    longest = max_seq_len - room
    return [longest], (
        f"note: the model's context is {max_seq_len} tokens, below 1K: testing at length {longest}, the "
        f"longest that leaves room for the answers ({room} positions)"
    )


def run_needle(
    checkpoint: str,
    *,
    lengths: list[int] | None = None,
    depths: Sequence[float] = DEPTHS,
    needles: int = 1,
    queries: int = 1,
    samples: int = 50,
    seed: int = 0,
    device: str = "auto",
    out: str | None = None,
) -> str:
    """Multi-needle retrieval: accuracy per (length, depth) and a heatmap.

    The command line's form of :func:`needle_results`: one line, after a note when the lengths were chosen for it.

    Args:
        checkpoint: a run folder or one of its checkpoints/step_* folders
        lengths: context lengths (default 1K, 2K, ... up to the model's context; below 1K, the longest that fits)
        depths: the answer needle's places, as fractions of the context
        needles: N, the needles in the context
        queries: R, the needles asked for
        samples: prompts per (length, depth) cell
        seed: the prompts' seed
        device: auto, cpu or cuda
        out: output folder (default RUN/eval)
    """
    result = needle_results(checkpoint, lengths, list(depths), needles, queries, samples, seed, device, out)
    stem = output_dir(checkpoint, out) / needle_stem(needles, queries, result["lengths"], result["depths"])
    line = (
        f"mean accuracy {result['accuracy']:.3f}, per-digit {result['digit_accuracy']:.3f}, answer log-prob "
        f"{result['answer_logprob']:.2f} nats over {len(result['cells'])} cells → {stem}.json/.png"
    )
    return f"{result['note']}\n{line}" if result.get("note") else line


def needle_results(
    checkpoint: str,
    lengths: list[int] | None,
    depths: list[float],
    needles: int,
    queries: int,
    samples: int,
    seed: int,
    device: str,
    out: str | None,
    progress: bool = True,
) -> dict:
    """Multi-needle retrieval accuracy per (length, depth); also written as JSON and a heatmap PNG, named by
    the settings (:func:`needle_stem`). Lengths default to :func:`default_needle_lengths`; ``progress``
    False: no progress bar."""
    from tqdm.auto import tqdm

    from shareddiff.data.needle import builder_for_run
    from shareddiff.eval.needle import answer_room, needle_eval
    from shareddiff.plots import plot_needle_heatmap

    check_probe_args(depths, samples, needles, queries)
    if lengths and min(lengths) < 1:
        raise ValueError(f"--lengths {' '.join(map(str, lengths))}: every length must be a positive token count")
    model, tok, state = _load(checkpoint, device)
    builder = builder_for_run(state["run"], tok, _split(state, tok, "val"))
    note = None
    if not lengths:
        lengths, note = default_needle_lengths(model.config.max_seq_len, answer_room(builder.tok, queries))
    with tqdm(total=len(lengths) * len(depths) * samples, unit="sample", disable=not progress) as bar:
        result = needle_eval(model, builder, lengths, depths, needles, queries, samples, seed, bar)
    result.update(checkpoint=str(checkpoint), model=_name(state), lengths=lengths, depths=depths)
    if note:
        result["note"] = note
    folder = output_dir(checkpoint, out)
    stem = needle_stem(needles, queries, lengths, depths)
    write_json(folder / f"{stem}.json", result)
    plot_needle_heatmap(result, folder / f"{stem}.png", f"{_name(state)}: N={needles}, R={queries}")
    return result


def run_attention(
    checkpoint: str,
    *,
    length: int | None = None,
    depths: Sequence[float] = DEPTHS,
    needles: int = 1,
    samples: int = 20,
    seed: int = 0,
    device: str = "auto",
    out: str | None = None,
) -> str:
    """Attention mass on the answer needle vs the rest, per depth.

    The command line's form of :func:`attention_results`: one line, after a note when the length was cut.

    Args:
        checkpoint: a run folder or one of its checkpoints/step_* folders
        length: context length (default 1024, or the model's context if shorter)
        depths: the answer needle's places, as fractions of the context
        needles: the needles in the context
        samples: prompts per depth
        seed: the prompts' seed
        device: auto, cpu or cuda
        out: output folder (default RUN/eval)
    """
    result = attention_results(checkpoint, length, list(depths), needles, samples, seed, device, out)
    rows = ", ".join(
        f"{r['depth']:.0%}: {r['answer']:.3f}/{r['noise']:.3f}/{r['question']:.3f}" for r in result["rows"]
    )
    lambdas = ", ".join("—" if lam is None else f"{lam:.3f}" for lam in result["lambdas"])
    label = "λ by layer"
    layer_lambdas = [[layer["lambda"] for layer in r["layers"]] for r in result["rows"]]
    if all(lam is None for lam in result["lambdas"]) and all(x is not None for row in layer_lambdas for x in row):
        label = "λ at the predicting token by layer (per token in V2; mean over heads, samples, depths)"
        lambdas = ", ".join(f"{statistics.fmean(layer):.3f}" for layer in zip(*layer_lambdas, strict=True))
    line = f"answer/noise/question mass by depth: {rows}; {label}: {lambdas} → "
    line += str(output_dir(checkpoint, out) / "attention.json")
    return f"{result['note']}\n{line}" if result.get("note") else line


def attention_results(
    checkpoint: str,
    length: int | None,
    depths: list[float],
    needles: int,
    samples: int,
    seed: int,
    device: str,
    out: str | None,
) -> dict:
    """Attention mass on the answer needle vs the rest (the paper's Table 5); also JSON and a PNG. The
    length defaults to 1024, or the model's context when that is shorter (with a note)."""
    from shareddiff.data.needle import builder_for_run
    from shareddiff.eval.attention_allocation import attention_eval
    from shareddiff.plots import plot_attention_map

    check_probe_args(depths, samples, needles)
    model, tok, state = _load(checkpoint, device)
    note = None
    if length is None:
        length = min(1024, model.config.max_seq_len)
        if length < 1024:
            note = f"note: the model's context is {length} tokens: probing at that length instead of 1024"
    builder = builder_for_run(state["run"], tok, _split(state, tok, "val"))
    result, example = attention_eval(model, builder, length, depths, needles, samples, seed)
    result.update(checkpoint=str(checkpoint), model=_name(state))
    if note:
        result["note"] = note
    folder = output_dir(checkpoint, out)
    write_json(folder / "attention.json", result)
    plot_attention_map(example, folder / "attention_map.png", _name(state))
    return result


def run_mqar(
    checkpoint: str,
    *,
    lengths: list[int] | None = None,
    samples: int | None = None,
    seed: int = 0,
    device: str = "auto",
    out: str | None = None,
) -> str:
    """MQAR accuracy of a model trained on it, at its training length and 2x.

    The command line's form of :func:`mqar_results`: its result as one line.

    Args:
        checkpoint: a run folder or one of its checkpoints/step_* folders
        lengths: sequence lengths (default: the training length N and 2N)
        samples: sequences per length (default: the run's mqar.eval_samples)
        seed: the sequences' seed
        device: auto, cpu or cuda
        out: output folder (default RUN/eval)
    """
    result = mqar_results(checkpoint, lengths, samples, seed, device, out)
    rows = ", ".join(f"N={r['seq_len']}: {r['accuracy']:.3f}" for r in result["rows"])
    updates = f", {result['task']['updates']} updates" if result["task"].get("updates") else ""
    task = f"{result['pairs']} pairs, {result['queries']} queries{updates}"
    return f"MQAR accuracy ({task}) {rows} → {output_dir(checkpoint, out) / 'mqar.json'}"


def mqar_results(
    checkpoint: str, lengths: list[int] | None, samples: int | None, seed: int, device: str, out: str | None
) -> dict:
    """MQAR loss and accuracy of a checkpoint trained on MQAR (data.source = "mqar"), with the task settings
    it was trained with, at ``lengths`` (default: its training length N and 2N where max_seq_len allows);
    also written to mqar.json."""
    from shareddiff.config import MQARConfig
    from shareddiff.eval.mqar import mqar_eval

    model, _, state = _load(checkpoint, device, text=False)
    run = state["run"]
    if run["data"].get("source") != "mqar":
        raise ValueError(
            f"{checkpoint} was not trained on MQAR (data.source={run['data'].get('source', 'corpus')!r}); "
            "`eval mqar` needs a run trained with data.source=mqar"
        )
    config = MQARConfig(**run["mqar"])
    n = run["data"]["seq_len"]
    if samples is not None and samples < 1:
        raise ValueError(f"--samples {samples} must be at least 1 (each length's accuracy is a mean over sequences)")
    for length in lengths or ():
        config.validate(length, length_option="--lengths")
    lengths = lengths or [length for length in (n, 2 * n) if length <= model.config.max_seq_len]
    result = {
        "checkpoint": str(checkpoint),
        "step": state.get("step"),  # the checkpoint evaluated: a run folder's newest intact one
        "model": _name(state),
        "train_seq_len": n,
        **mqar_eval(model, config, lengths, samples or config.eval_samples, seed),
    }
    write_json(output_dir(checkpoint, out) / "mqar.json", result)
    return result


def run_icl(
    checkpoint: str,
    *,
    dataset: str | None = None,
    test_dataset: str | None = None,
    fine_labels: bool = False,
    shots: list[int] | None = None,
    test_examples: int = 100,
    permutations: int = 5,
    seed: int = 0,
    device: str = "auto",
    out: str | None = None,
) -> str:
    """Many-shot in-context classification and its robustness to the order of the demonstrations.

    Args:
        checkpoint: a run folder or one of its checkpoints/step_* folders
        dataset: a bundled dataset (trec, banking77, clinc150), or a file: JSONL/CSV (text, label), TREC .label
            or CLINC data_full.json; default: a synthetic intent set
        test_dataset: test examples (default: the dataset's test part)
        fine_labels: TREC: the 50 fine labels (TREC-fine)
        shots: k values (default 1, 2, 4, ... up to the context)
        test_examples: test examples scored at each k
        permutations: orders of the demonstrations at each k
        seed: the seed of the demonstrations and their orders
        device: auto, cpu or cuda
        out: output folder (default RUN/eval)
    """
    from shareddiff.eval.icl import BUNDLED_DATASETS, icl_eval, load_bundled, load_examples, synthetic_intents
    from shareddiff.plots import plot_icl

    model, tok, state = _load(checkpoint, device)
    if dataset is None:
        examples = synthetic_intents(seed=seed)
        train, test = examples[: len(examples) // 2], examples[len(examples) // 2 :]
        name = "synthetic intents"
    elif dataset in BUNDLED_DATASETS and test_dataset is None:
        train, test = load_bundled(dataset, fine_labels)
        name = f"{dataset}-fine" if fine_labels else dataset
    else:
        train = load_examples(dataset, fine_labels=fine_labels)
        if test_dataset or dataset.endswith("data_full.json"):
            test = load_examples(test_dataset or dataset, split="test", fine_labels=fine_labels)
        else:  # one file: its second half is the test pool, never shown as demonstrations
            train, test = train[: len(train) // 2], train[len(train) // 2 :]
        name = Path(dataset).name
    test = random.Random(seed).sample(test, min(test_examples, len(test)))
    result = icl_eval(model, tok, train, test, shots, permutations, seed)
    result.update(checkpoint=str(checkpoint), model=_name(state), dataset=name)
    folder = output_dir(checkpoint, out)
    write_json(folder / "icl.json", result)
    plot_icl(result, folder / "icl.png", f"{_name(state)} on {name}")
    rows = ", ".join(f"k={r['shots']}: {r['accuracy']:.3f}±{r['random_order']['std']:.3f}" for r in result["rows"])
    return f"{rows} → {folder / 'icl.json'}"


def run_scaling(runs: list[str], *, reference: str = "diff", out: str) -> str:
    """Power-law fits of loss vs parameters and tokens over run folders.

    Args:
        runs: training run folders
        reference: the variant to match (standard, diff, shared_diff)
        out: output folder
    """
    from shareddiff.eval.scaling import scaling_eval
    from shareddiff.plots import plot_scaling

    result = scaling_eval(runs, reference)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "scaling.json", result)
    plot_scaling(result, folder / "scaling.png", "loss vs parameters and tokens")
    lines = [
        f"{m['variant']} vs {m['reference']} at {m['reference_params']:,} params: "
        + (
            f"{m['params_needed_fraction']:.2f}× the parameters"
            if m["params_needed_fraction"] is not None
            else m["params_note"]
        )
        for m in result["match"]
    ]
    if not result["match"]:
        lines.append(f"no runs of the reference variant {reference!r} to match against; choose it with --reference")
    return "\n".join([*lines, *(f"warning: {w}" for w in result["warnings"]), f"→ {folder / 'scaling.json'}"])
