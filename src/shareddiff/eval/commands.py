"""``shareddiff eval <analysis> CHECKPOINT``: load, run, write ``<analysis>.json`` and a PNG into RUN/eval/."""

from __future__ import annotations

import random
from pathlib import Path

from shareddiff.data import Tokenizer, eval_windows
from shareddiff.data.bundled import load_data_split
from shareddiff.eval.common import output_dir, write_json


def _load(checkpoint: str, device: str):
    from shareddiff.train import load_model
    from shareddiff.train.trainer import select_device

    model, tokenizer, state = load_model(checkpoint, device=select_device(device), attn_backend="auto")
    return model, tokenizer, state


def _split(state: dict, tokenizer: Tokenizer, split: str):
    return load_data_split(state["run"]["data"].get("path"), tokenizer, split)


def _name(state: dict) -> str:
    c = state["model_config"]
    return f"{c['attention']} (D={c['d_model']}, L={c['n_layers']})"


def run_lm(
    checkpoint: str, seq_len: int | None, max_tokens: int, max_train_count: int | None, device: str, out: str | None
) -> str:
    """`eval lm`: :func:`lm_results` as one line."""
    result = lm_results(checkpoint, seq_len, max_tokens, max_train_count, device, out)
    return (
        f"loss {result['loss']:.4f} (ppl {result['ppl']:.2f}); AR-Hit {result['ar_hit_loss']:.4f} "
        f"on {result['ar_hit_fraction']:.1%} of tokens; Others {result['others_loss']:.4f} → "
        f"{output_dir(checkpoint, out) / 'lm.json'}"
    )


def lm_results(
    checkpoint: str, seq_len: int | None, max_tokens: int, max_train_count: int | None, device: str, out: str | None
) -> dict:
    """Validation loss, perplexity and the AR-Hit / Others split of ``checkpoint``; also written to lm.json."""
    from shareddiff.eval.lm import lm_loss, rare_bigrams

    model, tok, state = _load(checkpoint, device)
    seq_len = seq_len or state["run"]["data"]["seq_len"]
    from shareddiff.eval.common import check_context

    check_context(model, seq_len, f"an evaluation window of {seq_len}")
    windows = eval_windows(_split(state, tok, "val"), seq_len, max_tokens)
    rare = None
    if max_train_count is not None:
        train = _split(state, tok, "train")
        rare = rare_bigrams(train.window(0, len(train)), model.config.vocab_size, max_train_count)
    result = {
        "checkpoint": str(checkpoint),
        "model": _name(state),
        "seq_len": seq_len,
        "ar_hit_definition": "target completes a bigram seen earlier in the same window"
        + (f", bigram seen ≤ {max_train_count}× in training" if rare is not None else ""),
        **lm_loss(model, windows, rare=rare),
    }
    write_json(output_dir(checkpoint, out) / "lm.json", result)
    return result


def run_needle(
    checkpoint: str,
    lengths: list[int] | None,
    depths: list[float],
    needles: int,
    queries: int,
    samples: int,
    seed: int,
    device: str,
    out: str | None,
) -> str:
    """`eval needle`: :func:`needle_results` as one line."""
    result = needle_results(checkpoint, lengths, depths, needles, queries, samples, seed, device, out)
    stem = output_dir(checkpoint, out) / f"needle_N{needles}_R{queries}"
    return (
        f"mean accuracy {result['accuracy']:.3f}, per-digit {result['digit_accuracy']:.3f}, answer log-prob "
        f"{result['answer_logprob']:.2f} nats over {len(result['cells'])} cells → {stem}.json/.png"
    )


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
) -> dict:
    """Multi-needle retrieval accuracy per (length, depth); also written as JSON and a heatmap PNG."""
    from tqdm.auto import tqdm

    from shareddiff.eval.needle import builder_for_run, needle_eval, plot_heatmap

    model, tok, state = _load(checkpoint, device)
    if not lengths:
        lengths, n = [], 1024
        while n <= model.config.max_seq_len - 64:
            lengths.append(n)
            n *= 2
        lengths = lengths or [model.config.max_seq_len // 2]
    builder = builder_for_run(state["run"], tok, _split(state, tok, "val"))
    with tqdm(total=len(lengths) * len(depths) * samples, unit="sample") as bar:
        result = needle_eval(model, builder, lengths, depths, needles, queries, samples, seed, bar)
    result.update(checkpoint=str(checkpoint), model=_name(state))
    folder = output_dir(checkpoint, out)
    stem = f"needle_N{needles}_R{queries}"
    write_json(folder / f"{stem}.json", result)
    plot_heatmap(result, folder / f"{stem}.png", f"{_name(state)}: N={needles}, R={queries}")
    return result


def run_attention(
    checkpoint: str,
    length: int,
    depths: list[float],
    needles: int,
    samples: int,
    seed: int,
    device: str,
    out: str | None,
) -> str:
    """`eval attention`: :func:`attention_results` as one line."""
    result = attention_results(checkpoint, length, depths, needles, samples, seed, device, out)
    rows = ", ".join(
        f"{r['depth']:.0%}: {r['answer']:.3f}/{r['noise']:.3f}/{r['question']:.3f}" for r in result["rows"]
    )
    lambdas = ", ".join("—" if lam is None else f"{lam:.3f}" for lam in result["lambdas"])
    path = output_dir(checkpoint, out) / "attention.json"
    return f"answer/noise/question mass by depth: {rows}; λ by layer: {lambdas} → {path}"


def attention_results(
    checkpoint: str,
    length: int,
    depths: list[float],
    needles: int,
    samples: int,
    seed: int,
    device: str,
    out: str | None,
) -> dict:
    """Attention mass on the answer needle vs the rest (the paper's Table 5); also JSON and a PNG."""
    from shareddiff.eval.attention import attention_eval, plot_example
    from shareddiff.eval.needle import builder_for_run

    model, tok, state = _load(checkpoint, device)
    builder = builder_for_run(state["run"], tok, _split(state, tok, "val"))
    result, example = attention_eval(model, builder, length, depths, needles, samples, seed)
    result.update(checkpoint=str(checkpoint), model=_name(state))
    folder = output_dir(checkpoint, out)
    write_json(folder / "attention.json", result)
    plot_example(example, folder / "attention_map.png", _name(state))
    return result


def run_mqar(
    checkpoint: str, lengths: list[int] | None, samples: int | None, seed: int, device: str, out: str | None
) -> str:
    """`eval mqar`: :func:`mqar_results` as one line."""
    result = mqar_results(checkpoint, lengths, samples, seed, device, out)
    rows = ", ".join(f"N={r['seq_len']}: {r['accuracy']:.3f}" for r in result["rows"])
    return f"MQAR accuracy ({result['pairs']} pairs) {rows} → {output_dir(checkpoint, out) / 'mqar.json'}"


def mqar_results(
    checkpoint: str, lengths: list[int] | None, samples: int | None, seed: int, device: str, out: str | None
) -> dict:
    """MQAR loss and accuracy of a checkpoint trained on MQAR (data.source = "mqar"), with the task settings
    it was trained with, at ``lengths`` (default: its training length N and 2N where max_seq_len allows);
    also written to mqar.json."""
    from shareddiff.config import MQARConfig
    from shareddiff.eval.mqar import mqar_eval

    model, _, state = _load(checkpoint, device)
    run = state["run"]
    if run["data"].get("source") != "mqar":
        raise ValueError(
            f"{checkpoint} was not trained on MQAR (data.source={run['data'].get('source', 'corpus')!r}); "
            "`eval mqar` needs a run trained with data.source=mqar"
        )
    config = MQARConfig(**run["mqar"])
    n = run["data"]["seq_len"]
    lengths = lengths or [length for length in (n, 2 * n) if length <= model.config.max_seq_len]
    result = {
        "checkpoint": str(checkpoint),
        "model": _name(state),
        "train_seq_len": n,
        **mqar_eval(model, config, lengths, samples or config.eval_samples, seed),
    }
    write_json(output_dir(checkpoint, out) / "mqar.json", result)
    return result


def run_icl(
    checkpoint: str,
    dataset: str | None,
    test_dataset: str | None,
    fine_labels: bool,
    shots: list[int] | None,
    test_examples: int,
    permutations: int,
    seed: int,
    device: str,
    out: str | None,
) -> str:
    from shareddiff.eval.icl import icl_eval, load_examples, plot_icl, synthetic_intents

    model, tok, state = _load(checkpoint, device)
    if dataset is None:
        examples = synthetic_intents(seed=seed)
        train, test = examples[: len(examples) // 2], examples[len(examples) // 2 :]
        name = "synthetic intents"
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


def run_scaling(runs: list[str], reference: str, out: str) -> str:
    from shareddiff.eval.scaling import plot_scaling, scaling_eval

    result = scaling_eval(runs, reference)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "scaling.json", result)
    plot_scaling(result, folder / "scaling.png", "loss vs parameters and tokens")
    lines = [
        f"{m['variant']} vs {m['reference']} at {m['reference_params']:,} params: "
        f"{m.get('params_needed_fraction', float('nan')):.2f}× the parameters"
        for m in result["match"]
    ]
    return "\n".join([*lines, f"→ {folder / 'scaling.json'}"])
