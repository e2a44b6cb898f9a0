"""``shareddiff <verb>``: one command-line entry point; each verb is a function listed in ``VERBS``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shareddiff.presets import FAMILIES, PRESET_NAMES, SIZES, size_of


def cmd_params(preset: str, as_json: bool = False, compare: bool = False) -> str:
    """Parameter counts by component for PRESET (or, with --compare, every family at its size)."""
    from shareddiff.config import ModelConfig
    from shareddiff.params import count_parameters, format_comparison, format_report

    names = [f"{family}-{size_of(preset)}" for family in FAMILIES] if compare else [preset]
    reports = [count_parameters(ModelConfig.from_preset(n)) for n in names]
    if as_json:
        data = {n: r.as_dict() for n, r in zip(names, reports, strict=True)}
        return json.dumps(data if compare else data[preset], indent=2)
    return format_comparison(names, reports) if compare else format_report(preset, reports[0])


def _add_params(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("params", help=cmd_params.__doc__, description=cmd_params.__doc__)
    p.add_argument("preset", help=f"a preset name, or with --compare a size ({', '.join(SIZES)})")
    p.add_argument("--json", dest="as_json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--compare", action="store_true", help=f"every family ({', '.join(FAMILIES)}) side by side")
    p.set_defaults(func=cmd_params)


def cmd_train(
    preset: str | None,
    config: str | None,
    resume: bool,
    new_schedule: bool,
    progress: bool,
    mix: str | None,
    overrides: list[str],
) -> str:
    """Train a model (a preset and/or a TOML recipe, plus section.key=value overrides)."""
    from shareddiff.config import load_recipe
    from shareddiff.train import train

    if mix is not None:
        overrides = [*overrides, f'data.mix="{mix}"']
    run = load_recipe(config, preset, overrides)
    result = train(run, resume=resume, progress=progress, new_schedule=new_schedule)
    val = f"{result.val_loss:.4f}" if result.val_loss is not None else "n/a"
    if result.already_complete:
        return (
            f"{result.run_dir} is already complete: step {result.step}, validation loss {val}, checkpoint "
            f"{result.checkpoint}. Nothing to train; to train further, raise train.max_steps and pass --new-schedule"
        )
    return f"done: step {result.step}, validation loss {val}, checkpoint {result.checkpoint}"


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help=cmd_train.__doc__,
        description=cmd_train.__doc__,
        epilog="overrides: section.key=value or --section.key value, e.g. train.max_steps=200 "
        "--model.lowrank_rank 16 --data.path data/mine",
    )
    p.add_argument("--preset", help="model preset, e.g. shared_diff-small")
    p.add_argument("--config", help="a TOML recipe (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of train.out_dir")
    p.add_argument(
        "--new-schedule",
        action="store_true",
        help="with --resume: accept a changed learning-rate schedule (train.max_steps, optim.lr, "
        "optim.warmup_steps, optim.min_lr_ratio) for the remaining steps",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--mix", help='synthetic rows in training batches, e.g. needle:0.2 (same as data.mix="...")')
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.set_defaults(func=cmd_train)


def cmd_generate(
    checkpoint: str,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    num_samples: int,
    seed: int,
    device: str,
    compile: bool = False,
) -> str:
    """Sample continuations of a prompt from a checkpoint (or a run folder's latest) with the KV cache."""
    import torch

    from shareddiff.generation import generate
    from shareddiff.train import load_model
    from shareddiff.train.device import select_device

    _check_sampling(max_new_tokens, temperature, top_k, top_p, num_samples)
    model, tokenizer, _ = load_model(checkpoint, device=select_device(device))
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty; give at least one character")
    room = model.config.max_seq_len - len(ids)
    if room < 1:
        raise ValueError(
            f"the prompt is {len(ids)} tokens, which fills the model's context ({model.config.max_seq_len}); shorten it"
        )
    if max_new_tokens > room:
        _note(
            f"--max-new-tokens {max_new_tokens} capped at {room}: the model's context is "
            f"{model.config.max_seq_len} tokens and the prompt takes {len(ids)}"
        )
    dev = next(model.parameters()).device
    prompt_ids = torch.tensor([ids] * num_samples, device=dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    start = time.perf_counter()
    out = generate(
        model, prompt_ids, min(max_new_tokens, room), temperature, top_k, top_p, tokenizer.eos_id, gen, compile=compile
    )
    seconds = time.perf_counter() - start
    new_tokens = [[t for t in row.tolist()[len(ids) :] if t != tokenizer.eos_id] for row in out]
    count = sum(map(len, new_tokens))
    _note(f"{count} new tokens in {seconds:.2f} s: {count / max(seconds, 1e-9):,.1f} tokens/s")
    texts = [tokenizer.decode(row) for row in new_tokens]
    return "\n\n".join(f"--- sample {i + 1}\n{prompt}{text}" for i, text in enumerate(texts))


def _check_sampling(
    max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None, num_samples: int
) -> None:
    if not temperature >= 0:
        raise ValueError(f"--temperature {temperature} must be ≥ 0 (0 = greedy; 1 = the model's own distribution)")
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {max_new_tokens} must be at least 1")
    if top_k is not None and top_k < 0:
        raise ValueError(f"--top-k {top_k} must be ≥ 0 (0 = no top-k filter)")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"--top-p {top_p} must be in (0, 1] (1 = no nucleus filter)")
    if num_samples < 1:
        raise ValueError(f"--num-samples {num_samples} must be at least 1")


def _note(text: str) -> None:
    """A side remark on stderr, so that stdout holds only the command's result."""
    print(text, file=sys.stderr)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help=cmd_generate.__doc__, description=cmd_generate.__doc__)
    p.add_argument("checkpoint", help="a run folder or one of its checkpoints/step_* folders")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--compile",
        action="store_true",
        help="decode with fixed shapes and a compiled step (CUDA graphs on a GPU); the first call compiles",
    )
    p.set_defaults(func=cmd_generate)


def cmd_data_prepare(
    inputs: list[str], out: str, tokenizer: str | None, val: list[str] | None, val_fraction: float, shard_tokens: int
) -> str:
    """Tokenize text files, folders, .jsonl (a "text" field) or .parquet into memory-mapped shards."""
    from shareddiff.data import Tokenizer, iter_documents, prepare_splits, split_by_hash

    tok = Tokenizer(tokenizer)
    files = _readable_files(inputs)
    if val:
        splits = {"train": iter_documents(files), "val": iter_documents(_readable_files(val))}
    else:
        train_docs, val_docs = split_by_hash((d for d in iter_documents(files) if d.strip()), val_fraction)
        if not train_docs and not val_docs:
            raise ValueError(f"the {len(files)} file(s) read hold no text (every document is empty)")
        if not val_docs:
            raise ValueError(
                f"--val-fraction {val_fraction} left no validation document among {len(train_docs)}; "
                "raise it or pass --val FILES"
            )
        splits = {"train": train_docs, "val": val_docs}
    manifest = prepare_splits(
        splits, out, tok, shard_tokens=shard_tokens, sources=[*inputs, *(val or [])], progress=True
    )
    rows = [
        f"{s}: {m['documents']} documents, {m['tokens']:,} tokens in {len(m['shards'])} shard(s)"
        for s, m in manifest["splits"].items()
    ]
    return "\n".join([f"wrote {out} ({manifest['dtype']}, tokenizer {tok.sha256[:12]}…)", *rows])


def _readable_files(inputs: list[str]) -> list:
    """The files ``inputs`` name or hold; an error saying what was found when none is readable, and a note on
    files left out of folders for their suffix."""
    from shareddiff.data.documents import ACCEPTED, scan_inputs

    files, skipped = scan_inputs(inputs)
    left_out = ", ".join(f"{n} {suffix or 'without suffix'}" for suffix, n in sorted(skipped.items()))
    how = (
        f"folders are read for {ACCEPTED} (also .gz/.xz compressed); name other files explicitly "
        "(e.g. corpus/*.py) to read them as plain text"
    )
    if not files:
        found = f"found only files left out for their suffix ({left_out})" if skipped else "found no files"
        raise ValueError(f"no readable documents in {' '.join(inputs)}: {found}; {how}")
    if skipped:
        _note(f"read {len(files)} file(s); left out {left_out}: {how}")
    return files


def cmd_tokenizer_train(
    inputs: list[str], out: str, vocab_size: int, split_digits: bool = False, val_fraction: float = 0.0
) -> str:
    """Train a byte-level BPE tokenizer on text files, folders, .jsonl or .parquet."""
    import itertools

    from shareddiff.data import iter_documents, split_by_hash, train_tokenizer

    docs = iter_documents(_readable_files(inputs))
    if val_fraction:  # leave out the documents `data prepare --val-fraction` holds out
        docs = split_by_hash(docs, val_fraction)[0]
    docs = (d for d in docs if d.strip())
    first = next(docs, None)
    if first is None:
        raise ValueError(f"{' '.join(inputs)} hold no text to learn a vocabulary from (every document is empty)")
    tok = train_tokenizer(itertools.chain([first], docs), vocab_size, out, split_digits=split_digits)
    line = f"wrote {out}: vocab {tok.vocab_size}, sha256 {tok.sha256[:12]}…"
    if tok.vocab_size < vocab_size:
        line += (
            f"\nnote: the corpus reached only {tok.vocab_size} of the {vocab_size} entries asked: it has too "
            f"little text for more merges; give more text, or pass --vocab-size {tok.vocab_size} to ask for "
            "what it supports"
        )
    return line


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="prepare token shards").add_subparsers(dest="action", required=True)
    p = data.add_parser("prepare", help=cmd_data_prepare.__doc__, description=cmd_data_prepare.__doc__)
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--tokenizer", help="bundled (default), bundled-4k, docs-16k-digits, or a tokenizer.json")
    p.add_argument("--val", nargs="+", help="validation inputs (default: a hash split of the inputs)")
    p.add_argument("--val-fraction", type=float, default=0.01)
    p.add_argument("--shard-tokens", type=int, default=100_000_000)
    p.set_defaults(func=cmd_data_prepare)
    tok = sub.add_parser("tokenizer", help="train a tokenizer").add_subparsers(dest="action", required=True)
    p = tok.add_parser("train", help=cmd_tokenizer_train.__doc__, description=cmd_tokenizer_train.__doc__)
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=16384)
    p.add_argument("--split-digits", action="store_true", help="one token per digit")
    p.add_argument(
        "--val-fraction", type=float, default=0.0, help="train without the validation documents of data prepare"
    )
    p.set_defaults(func=cmd_tokenizer_train)


def cmd_export(checkpoint: str, to: str, out: str) -> str:
    """Export a checkpoint: safetensors weights, a Hugging Face folder, or a native DiffLlama folder."""
    from shareddiff.train.checkpoint import load_weights, make_readable, read_state, resolve_checkpoint

    if to in ("hf", "diffllama"):
        from shareddiff.hf import export

        folder = export(checkpoint, out, to)
        for weights in folder.glob("*.safetensors"):
            make_readable(weights)
        return f"wrote {folder} ({to})"
    if to != "safetensors":
        raise ValueError(f"--to {to!r} is not supported; use safetensors, hf or diffllama")
    from safetensors.torch import save_file

    ckpt = resolve_checkpoint(checkpoint)
    state = read_state(ckpt)
    save_file(load_weights(ckpt), out, metadata={"model_config": json.dumps(state["model_config"])})
    make_readable(out)
    return f"wrote {out} from {ckpt}"


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help=cmd_export.__doc__, description=cmd_export.__doc__)
    p.add_argument("checkpoint", help="a run folder or one of its checkpoints/step_* folders")
    p.add_argument(
        "--to",
        default="safetensors",
        choices=["safetensors", "hf", "diffllama"],
        help="safetensors (a file), hf (a transformers folder), diffllama (DiffLlamaForCausalLM folder)",
    )
    p.add_argument("out", help="output file (safetensors) or folder (hf, diffllama)")
    p.set_defaults(func=cmd_export)


def cmd_eval_harness(
    checkpoint: str,
    tasks: str,
    include_path: str | None,
    num_fewshot: int | None,
    limit: int | None,
    batch_size: int,
    device: str,
    out: str | None,
) -> str:
    """Run lm-evaluation-harness tasks on a checkpoint (hub tasks online; local YAML tasks via --include-path,
    offline)."""
    from shareddiff.hf.harness import hub_mode, run_harness

    _note(hub_mode(tasks.split(","), include_path)[1])
    results = run_harness(checkpoint, tasks.split(","), include_path, num_fewshot, limit, batch_size, device)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(
            json.dumps({"results": results["results"], "config": str(results.get("config"))}, indent=2, default=str)
        )
    from lm_eval.utils import make_table

    return make_table(results)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from shareddiff.eval import commands

    evals = sub.add_parser("eval", help="evaluate a checkpoint").add_subparsers(dest="action", required=True)
    p = evals.add_parser("harness", help=cmd_eval_harness.__doc__, description=cmd_eval_harness.__doc__)
    p.add_argument("checkpoint")
    p.add_argument("--tasks", required=True, help="comma-separated, e.g. arc_easy,piqa or a local task's name")
    p.add_argument("--include-path", help="a folder of task YAML files")
    p.add_argument("--num-fewshot", type=int)
    p.add_argument("--limit", type=int, help="at most this many documents per task")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the results as JSON here")
    p.set_defaults(func=cmd_eval_harness)

    def common(p, seed=True):
        p.add_argument("checkpoint", help="a run folder or one of its checkpoints/step_* folders")
        p.add_argument("--device", default="auto")
        p.add_argument("--out", help="output folder (default RUN/eval)")
        if seed:
            p.add_argument("--seed", type=int, default=0)

    p = evals.add_parser("lm", help="validation loss, perplexity, AR-Hit / Others split")
    common(p, seed=False)
    p.add_argument("--seq-len", type=int, help="window length (default: the training length)")
    p.add_argument("--max-tokens", type=int, default=262_144)
    p.add_argument("--max-train-count", type=int, help="AR-Hit only for bigrams seen at most this often in training")
    p.set_defaults(func=commands.run_lm)

    depths = [0.0, 0.25, 0.5, 0.75, 1.0]
    p = evals.add_parser("needle", help="multi-needle retrieval: accuracy per (length, depth) and a heatmap")
    common(p)
    p.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        help="context lengths (default 1K, 2K, ... up to the model's context; below 1K, the longest that fits)",
    )
    p.add_argument("--depths", type=float, nargs="+", default=depths)
    p.add_argument("--needles", type=int, default=1, help="N")
    p.add_argument("--queries", type=int, default=1, help="R")
    p.add_argument("--samples", type=int, default=50)
    p.set_defaults(func=commands.run_needle)

    p = evals.add_parser("attention", help="attention mass on the answer needle vs the rest, per depth")
    common(p)
    p.add_argument("--length", type=int, help="context length (default 1024, or the model's context if shorter)")
    p.add_argument("--depths", type=float, nargs="+", default=depths)
    p.add_argument("--needles", type=int, default=1)
    p.add_argument("--samples", type=int, default=20)
    p.set_defaults(func=commands.run_attention)

    p = evals.add_parser("icl", help="many-shot in-context classification and its robustness to order")
    common(p)
    p.add_argument(
        "--dataset",
        help="a bundled dataset (trec, banking77, clinc150), or a file: JSONL/CSV (text, label), TREC .label or "
        "CLINC data_full.json; default: a synthetic intent set",
    )
    p.add_argument("--test-dataset", help="test examples (default: the dataset's test part)")
    p.add_argument("--fine-labels", action="store_true", help="TREC: the 50 fine labels (TREC-fine)")
    p.add_argument("--shots", type=int, nargs="+", help="k values (default 1, 2, 4, ... up to the context)")
    p.add_argument("--test-examples", type=int, default=100)
    p.add_argument("--permutations", type=int, default=5)
    p.set_defaults(func=commands.run_icl)

    p = evals.add_parser("scaling", help="power-law fits of loss vs parameters and tokens over run folders")
    p.add_argument("runs", nargs="+")
    p.add_argument("--reference", default="diff", help="the variant to match (standard, diff, shared_diff)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=commands.run_scaling)


def cmd_report(runs: list[str], out: str) -> str:
    """Gather the runs' curves and evaluation results into one markdown page with the plots."""
    from shareddiff.report import build_report

    return f"wrote {build_report(runs, out)}"


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help=cmd_report.__doc__, description=cmd_report.__doc__)
    p.add_argument("runs", nargs="+", help="run folders (and folders written by `eval scaling`)")
    p.add_argument("--out", default="runs/report.md")
    p.set_defaults(func=cmd_report)


def cmd_demo(out: str, steps: int, baseline: str, progress: bool) -> str:
    """The main job: train a tiny Shared DIFF model on the bundled corpus, compare, sample, report."""
    from shareddiff.demo import run_demo

    return run_demo(out, steps=steps, baseline=baseline, progress=progress)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default: the recipe's)")
    p.add_argument(
        "--baseline",
        choices=["train", "cached"],
        default="train",
        help="train the same-size Transformer too, or show the cached figure",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=cmd_demo)


def cmd_reproduce(
    name: str | None,
    runs: list[str] | None,
    out: str,
    keep_checkpoints: bool,
    jobs: int,
    summary_only: bool,
    summary: bool,
    list_only: bool,
    progress: bool,
    overrides: list[str],
) -> str:
    """Run a reproduction experiment of configs/repro/ (train + evaluate each run, then summarize)."""
    from shareddiff.repro import experiment_names, load_experiment, reproduce

    if name is None or list_only:
        if name is None:
            return "experiments: " + ", ".join(experiment_names())
        exp = load_experiment(name)
        return "\n".join([f"{exp.name}: {exp.description}", *(f"  {s.name}: {s.preset}" for s in exp.runs)])
    return reproduce(name, runs, out, overrides, keep_checkpoints, jobs, summary_only, summary, progress)


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help=cmd_reproduce.__doc__,
        description=cmd_reproduce.__doc__,
        epilog="Finished runs (RUN/record.json) are skipped and cut-off runs resume, so the same command "
        "continues an interrupted experiment. Overrides (section.key=value) apply to every run.",
    )
    p.add_argument("name", nargs="?", help="experiment name (configs/repro/NAME.toml) or path; none: list them")
    p.add_argument("--run", dest="runs", action="append", help="only this run (repeatable), e.g. shared_diff-s1")
    p.add_argument("--out", default="results/repro", help="where run records and summaries go")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's checkpoints after its evals")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once, each in its own process (one GPU each when there are several)",
    )
    p.add_argument("--summary-only", action="store_true", help="only rewrite the summary from finished runs")
    p.add_argument("--no-summary", dest="summary", action="store_false", help="skip the summary")
    p.add_argument("--list", dest="list_only", action="store_true", help="list the experiment's runs")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("overrides", nargs="*", help="section.key=value for every run, e.g. train.max_steps=50")
    p.set_defaults(func=cmd_reproduce)


VERBS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_params,
    _add_train,
    _add_generate,
    _add_data,
    _add_export,
    _add_eval,
    _add_report,
    _add_demo,
    _add_reproduce,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shareddiff",
        description="Shared DIFF Transformer, DIFF Transformer and Transformer language models.",
        epilog=f"presets: {', '.join(PRESET_NAMES)}",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for add in VERBS:
        add(sub)
    return parser


_OVERRIDE = re.compile(r"^[A-Za-z_]\w*\.[A-Za-z_]\w*=")


def _split_dashed_overrides(argv: list[str]) -> list[str]:
    """Turn ``--section.key value`` and ``--section.key=value`` into ``section.key=value``."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name = arg[2:].split("=", 1)[0]
        if arg.startswith("--") and "." in name:
            if "=" in arg:
                out.append(arg[2:])
            elif i + 1 < len(argv):
                out.append(f"{name}={argv[i + 1]}")
                i += 1
            else:
                raise SystemExit(f"error: {arg} needs a value")
        else:
            out.append(arg)
        i += 1
    if out and out[0] in ("train", "reproduce"):  # let overrides and options mix in any order
        overrides = [a for a in out if _OVERRIDE.match(a)]
        rest = [a for a in out if not _OVERRIDE.match(a)]
        # argparse fills positionals from one run of bare words: overrides go right after NAME
        at = 2 if out[0] == "reproduce" and len(rest) > 1 and not rest[1].startswith("-") else len(rest)
        out = rest[:at] + overrides + rest[at:]
    return out


class _StdoutHandler(logging.StreamHandler):
    """Writes each record to whatever ``sys.stdout`` is at the time (so redirections are honoured), above a
    progress bar when one is shown."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:
            self.handleError(record)


def configure_logging() -> None:
    """The package's log records (``logging.getLogger(__name__)`` in each module) as plain lines on stdout:
    rank 0's from INFO up, the other ranks' of a torchrun launch from WARNING up."""
    logger = logging.getLogger("shareddiff")
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    argv = _split_dashed_overrides(list(sys.argv[1:] if argv is None else argv))
    args = vars(build_parser().parse_args(argv))
    func = args.pop("func")
    args.pop("verb")
    args.pop("action", None)
    try:
        out = func(**args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # a training run says where it stopped and how to continue
        if os.environ.get("RANK", "0") == "0":
            print(str(err) or "interrupted", file=sys.stderr)
        return 130
    if out:
        return _print_result(out)
    return 0


def _print_result(text: str) -> int:
    """Print ``text``; when the reader has gone (``shareddiff params ... | head``), stop quietly with 141."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 141  # 128 + SIGPIPE, what a shell tool killed by the closed pipe returns
    return 0


if __name__ == "__main__":
    sys.exit(main())
