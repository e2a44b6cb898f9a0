"""``shareddiff <verb>``: one command-line entry point, a table of command functions (``COMMANDS``).

Each verb's options are its function's signature and its help the function's docstring (litgpt's pattern,
built here on argparse with ``inspect.signature``): parameters before ``*`` are positional, those after it
options (``max_new_tokens`` is ``--max-new-tokens``; a bool defaulting to True is the switch ``--no-NAME``),
and the docstring's ``Args:`` section is each option's help (of a ``--no-NAME`` switch: what it turns off).
A verb with an ``overrides`` parameter also takes ``section.key=value`` (or ``--section.key value``) anywhere
on its line. ``--help`` imports no torch: the command functions import what they run.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import os
import re
import sys
import time
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from shareddiff.eval import commands
from shareddiff.presets import FAMILIES, PRESET_NAMES, SIZES, size_of


@dataclass(frozen=True)
class Flag:
    """A parameter's option when its name alone does not give it: another ``name`` (``--json`` for
    ``as_json``), or repeatable (``append``: ``--run a --run b``)."""

    name: str | None = None
    append: bool = False


def cmd_params(preset: str, *, as_json: Annotated[bool, Flag("--json")] = False, compare: bool = False) -> str:
    """Parameter counts by component for PRESET (or, with --compare, every family at its size).

    Args:
        preset: a preset name, or with --compare a size (see `shareddiff --help`)
        as_json: print JSON instead of a table
        compare: every family side by side
    """
    from shareddiff.config import ModelConfig
    from shareddiff.params import count_parameters, format_comparison, format_report

    names = [f"{family}-{size_of(preset)}" for family in FAMILIES] if compare else [preset]
    reports = [count_parameters(ModelConfig.from_preset(n)) for n in names]
    if as_json:
        data = {n: r.as_dict() for n, r in zip(names, reports, strict=True)}
        return json.dumps(data if compare else data[preset], indent=2)
    return format_comparison(names, reports) if compare else format_report(preset, reports[0])


def cmd_train(
    *,
    preset: str | None = None,
    config: str | None = None,
    resume: bool = False,
    new_schedule: bool = False,
    progress: bool = True,
    mix: str | None = None,
    overrides: list[str] | None = None,
) -> str:
    """Train a model (a preset and/or a TOML recipe, plus section.key=value overrides).

    Args:
        preset: model preset, e.g. shared_diff-small
        config: a TOML recipe (see configs/)
        resume: continue the run in train.out_dir from its latest intact checkpoint; a run stopped before its
            first checkpoint starts again from step 0; an error when the folder holds no run, a finished run
            without checkpoints, or the run was trained with another model, batches or schedule
        new_schedule: with --resume: accept a changed learning-rate schedule (train.max_steps, optim.lr,
            optim.warmup_steps, optim.min_lr_ratio) for the remaining steps (an error without --resume)
        progress: progress bar
        mix: synthetic rows in training batches, e.g. needle:0.2 (same as data.mix="...")
        overrides: section.key=value or --section.key value, e.g. train.max_steps=200 --model.lowrank_rank 16
    """
    from shareddiff.config import load_recipe
    from shareddiff.train import train

    if mix is not None:
        overrides = [*(overrides or []), f'data.mix="{mix}"']
    run = load_recipe(config, preset, list(overrides or []))
    result = train(run, resume=resume, progress=progress, new_schedule=new_schedule)
    val = f"{result.val_loss:.4f}" if result.val_loss is not None else "n/a"
    stop = result.early_stop
    stopped = f" (stopped early of {stop['max_steps']}: {stop['reason']})" if stop else ""
    if result.already_complete:
        further = "set train.early_stop_accuracy=0" if stop else "raise train.max_steps and pass --new-schedule"
        return (
            f"{result.run_dir} is already complete: step {result.step}{stopped}, validation loss {val}, checkpoint "
            f"{result.checkpoint}. Nothing to train; to train further, {further}"
        )
    return f"done: step {result.step}{stopped}, validation loss {val}, checkpoint {result.checkpoint}"


def cmd_generate(
    checkpoint: str,
    *,
    prompt: str,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = 0.95,
    num_samples: int = 1,
    seed: int = 0,
    device: str = "auto",
    compile: bool = False,
    cuda_graph: bool = True,
) -> str:
    """Sample continuations of a prompt from a checkpoint (or a run folder's latest) with the KV cache.

    Args:
        checkpoint: a run folder or one of its checkpoints/step_* folders
        temperature: 0 = greedy; 1 = the model's own distribution
        top_k: 0 = no top-k filter
        top_p: 1 = no nucleus filter
        device: auto (CUDA when available, else the CPU), cpu, cuda, cuda:N or mps
        compile: decode with fixed shapes and a compiled step (CUDA graphs on a GPU); compiled in a short greedy
            warm-up first, whose seconds are reported apart from the tokens/s
        cuda_graph: CUDA-graph decoding: decode step by step from Python (the reference path, ~10x slower at
            batch 1) instead of the default on a GPU, fixed shapes with each step replayed as one captured CUDA
            graph (a second to capture; with --compile, the compiled step is captured instead). Off a GPU, and for
            a model whose attention backend is "triton" (the fused training kernel takes no attention mask),
            decoding is step by step anyway
    """
    import torch

    from shareddiff.generation import WARMUP_TOKENS, generate, static_cache_len
    from shareddiff.static_decode import StaticDecoder
    from shareddiff.train import load_model
    from shareddiff.train.device import select_device

    _check_sampling(max_new_tokens, temperature, top_k, top_p, num_samples)
    model, tokenizer, _ = load_model(checkpoint, device=select_device(device, "--device"))
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty; give at least one character")
    room = model.config.max_seq_len - len(ids)
    if room < 1:
        raise ValueError(
            f"the prompt is {len(ids)} tokens and the model's context is {model.config.max_seq_len}, which leaves no "
            "room for a new token; shorten it"
        )
    if max_new_tokens > room:
        _note(
            f"--max-new-tokens {max_new_tokens} capped at {room}: the model's context is "
            f"{model.config.max_seq_len} tokens and the prompt takes {len(ids)}"
        )
    dev = next(model.parameters()).device
    prompt_ids = torch.tensor([ids] * num_samples, device=dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    new = min(max_new_tokens, room)
    decoder = None
    if cuda_graph and (why_not := _no_cuda_graph_reason(model, dev)):
        if dev.type == "cuda":
            _note(f"decoding step by step: {why_not}")
        cuda_graph = False
    if compile or cuda_graph:  # compile / capture in a greedy warm-up that draws nothing from ``gen``, untimed
        max_len = static_cache_len(len(ids) + new, model.config.max_seq_len)
        decoder = StaticDecoder(model, max_len, compile=compile, cuda_graph=cuda_graph)
        start = time.perf_counter()
        generate(model, prompt_ids, min(new, WARMUP_TOKENS), temperature=0, decoder=decoder)
        _synchronize(dev)
        warmup = time.perf_counter() - start
        steps = min(new, WARMUP_TOKENS) - 1
        what = "compile and warm-up" if compile else "CUDA-graph capture and warm-up"
        _note(f"{what}: {warmup:.2f} s (prefill and {steps} decode steps; not in the tokens/s below)")
    start = time.perf_counter()
    out = generate(model, prompt_ids, new, temperature, top_k, top_p, tokenizer.eos_id, gen, decoder=decoder)
    _synchronize(dev)
    seconds = time.perf_counter() - start
    new_tokens = [[t for t in row.tolist()[len(ids) :] if t != tokenizer.eos_id] for row in out]
    count = sum(map(len, new_tokens))
    noun = "new token" if count == 1 else "new tokens"
    _note(f"{count} {noun} in {seconds:.2f} s: {count / max(seconds, 1e-9):,.1f} tokens/s")
    texts = [tokenizer.decode(row) for row in new_tokens]
    return "\n\n".join(f"--- sample {i + 1}\n{prompt}{text}" for i, text in enumerate(texts))


def _no_cuda_graph_reason(model, device) -> str | None:
    """Why ``generate`` cannot replay its decode step as a CUDA graph for ``model`` on ``device``, or None."""
    if device.type != "cuda":
        return f"the model is on {device}, and CUDA graphs need a GPU"
    from shareddiff.static_decode import on_triton_backend

    if on_triton_backend(model):
        return "the model's attention backend is 'triton' (the fused training kernel takes no attention mask)"
    return None


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


def _synchronize(device) -> None:
    """Wait for the device's queued work, so that a timer read afterwards covers it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _note(text: str) -> None:
    """A side remark on stderr, so that stdout holds only the command's result."""
    print(text, file=sys.stderr)


def cmd_data_prepare(
    inputs: list[str],
    *,
    out: str,
    tokenizer: str | None = None,
    val: list[str] | None = None,
    val_fraction: float = 0.01,
    shard_tokens: int = 100_000_000,
) -> str:
    """Tokenize text files, folders, .jsonl (a "text" field) or .parquet into memory-mapped shards.

    Args:
        inputs: text files, folders, .jsonl or .parquet files
        out: the output folder
        tokenizer: bundled (default), bundled-4k, docs-16k-digits, or a tokenizer.json
        val: validation inputs (default: a hash split of the inputs)
        val_fraction: the fraction of documents the hash split holds out for validation
        shard_tokens: tokens per shard file
    """
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
    inputs: list[str], *, out: str, vocab_size: int = 16384, split_digits: bool = False, val_fraction: float = 0.0
) -> str:
    """Train a byte-level BPE tokenizer on text files, folders, .jsonl or .parquet.

    Args:
        inputs: text files, folders, .jsonl or .parquet files
        out: the tokenizer.json to write
        split_digits: one token per digit
        val_fraction: train without the validation documents of `data prepare` with this --val-fraction
    """
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


def cmd_export(
    checkpoint: str,
    out: str,
    *,
    to: Literal["safetensors", "hf", "diffllama"] = "safetensors",
    force: bool = False,
) -> str:
    """Export a checkpoint: safetensors weights, a Hugging Face folder, or a native DiffLlama folder.

    Args:
        checkpoint: a run folder or one of its checkpoints/step_* folders
        out: output file (safetensors; an existing folder or one ending in / gets model.safetensors inside it)
            or folder (hf, diffllama); missing parent folders are made; never inside a run's checkpoints/
        to: safetensors (a file), hf (a transformers folder), diffllama (DiffLlamaForCausalLM folder)
        force: overwrite an existing safetensors file (without it, an existing file is an error)
    """
    from shareddiff.train.checkpoint import load_weights, make_readable, read_state, resolve_checkpoint

    target = Path(out)
    into = ""
    if to == "safetensors" and (target.is_dir() or out.endswith(("/", os.sep))):  # the weights go inside it
        target, into = target / "model.safetensors", f" (the folder {out} given: its model.safetensors)"
    _refuse_checkpoint_destination(target, to)
    if to in ("hf", "diffllama"):
        with needs_extra(f"exporting to {'Hugging Face' if to == 'hf' else 'DiffLlama'}"):
            from shareddiff.hf import export

        folder = export(checkpoint, out, to)
        for weights in folder.glob("*.safetensors"):
            make_readable(weights)
        return f"wrote {folder} ({to})"
    if to != "safetensors":
        raise ValueError(f"--to {to!r} is not supported; use safetensors, hf or diffllama")
    if target.exists() and not force:
        raise ValueError(f"{target} already exists; pass --force to overwrite it, or give another path")
    from safetensors.torch import save_file

    ckpt = resolve_checkpoint(checkpoint)
    state = read_state(ckpt)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_weights(ckpt), target, metadata={"model_config": json.dumps(state["model_config"])})
    make_readable(target)
    return f"wrote {target} from {ckpt}{into}"


def _refuse_checkpoint_destination(target: Path, to: str) -> None:
    """A ValueError when ``target`` (the file or folder an export writes) lies in a run's checkpoints/ folder or
    in a checkpoint folder: its files would replace a checkpoint's (or sit among them) and damage it."""
    from shareddiff.train.checkpoint import CHECKPOINTS, STATE

    path = target.expanduser().resolve()
    folders = (path, *path.parents)
    store = next((f for f in folders if f.name == CHECKPOINTS and (f.parent / "run_config.json").is_file()), None)
    store = store or next((f for f in folders if (f / STATE).is_file()), None)
    if store is None:
        return
    what = "a run's checkpoints folder" if store.name == CHECKPOINTS else "a checkpoint folder"
    example = store.parent / ("model.safetensors" if to == "safetensors" else f"model-{to}")
    raise ValueError(
        f"{target} is inside {store} ({what}): an export there would damage the checkpoints; write it outside, "
        f"e.g. {example}"
    )


def cmd_eval_harness(
    checkpoint: str,
    *,
    tasks: str,
    include_path: str | None = None,
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    out: str | None = None,
) -> str:
    """Run lm-evaluation-harness tasks on a checkpoint (hub tasks online; local YAML tasks via --include-path,
    offline).

    Args:
        checkpoint: a run folder or one of its checkpoints/step_* folders
        tasks: comma-separated, e.g. arc_easy,piqa or a local task's name
        include_path: a folder of task YAML files
        limit: at most this many documents per task
        device: cpu, cuda, cuda:N, mps, or auto (CUDA when available, else the CPU)
        out: write the results as JSON here
    """
    from shareddiff.train.device import select_device

    device = str(select_device(device, "--device"))
    with needs_extra("the harness"):
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


# The optional packages the commands import (the top-level module: its name on PyPI, the extra that installs it).
OPTIONAL_PACKAGES = {
    "transformers": ("transformers", "hf"),
    "accelerate": ("accelerate", "hf"),
    "lm_eval": ("lm-eval", "hf"),
}


@contextlib.contextmanager
def needs_extra(what: str) -> Iterator[None]:
    """Turn the ModuleNotFoundError of an optional package (``OPTIONAL_PACKAGES``) into a ValueError naming the
    extra that installs it; any other missing module stays an error of its own."""
    try:
        yield
    except ModuleNotFoundError as err:
        top = (err.name or "").split(".")[0]
        if top not in OPTIONAL_PACKAGES:
            raise
        package, extra = OPTIONAL_PACKAGES[top]
        raise ValueError(
            f"{what} needs the [{extra}] extra: pip install 'shareddiff[{extra}]' ({package} is not installed)"
        ) from err


def cmd_report(runs: list[str], *, out: str = "runs/report.md") -> str:
    """Gather the runs' curves and evaluation results into one markdown page with the plots.

    Args:
        runs: run folders (and folders written by `eval scaling`)
        out: the markdown file to write
    """
    from shareddiff.report import build_report

    return f"wrote {build_report(runs, out)}"


def cmd_demo(
    *,
    out: str = "runs/demo",
    steps: int | None = None,
    baseline: Literal["train", "none"] = "train",
    progress: bool = True,
) -> str:
    """The main job: train a tiny Shared DIFF model on the bundled corpus, compare, sample, report.

    Args:
        out: the demo's folder
        steps: training steps per model (default: the recipe's)
        baseline: train the same-size Transformer too (train), or Shared DIFF alone (none)
        progress: progress bar
    """
    from shareddiff.demo import run_demo

    return run_demo(out, steps=steps, baseline=baseline, progress=progress)


def cmd_reproduce(
    name: str | None = None,
    *,
    runs: Annotated[list[str] | None, Flag("--run", append=True)] = None,
    out: str = "results/repro",
    keep_checkpoints: bool = False,
    jobs: int = 1,
    summary_only: bool = False,
    summary: bool = True,
    list_only: Annotated[bool, Flag("--list")] = False,
    progress: bool = True,
    start_by: float | None = None,
    overrides: list[str] | None = None,
) -> str:
    """Run a reproduction experiment of configs/repro/ (train + evaluate each run, then summarize).

    Finished runs (RUN/record.json) are skipped and cut-off runs resume, so the same command continues an
    interrupted experiment.

    Args:
        name: experiment name (configs/repro/NAME.toml) or path; none: list them
        runs: only this run (repeatable; a shell pattern selects several, e.g. '*-n64-p4-*'), e.g.
            shared_diff-s1; with --list, list only these
        out: where run records and summaries go
        keep_checkpoints: keep each run's checkpoints after its evals
        jobs: runs at once, each in its own process (one GPU each when there are several)
        summary_only: only rewrite the summary from finished runs
        summary: summary (written after the runs)
        list_only: list the experiment's runs (their budgets, whether finished) and the runs it includes
        progress: progress bar
        start_by: seconds after which no run starts afresh (runs with a checkpoint still resume); within a time
            budget, the runs under way then finish sooner; the same command starts the rest
        overrides: section.key=value for every run, e.g. train.max_steps=50
    """
    from shareddiff.repro import experiment_names, load_experiment, reproduce

    if name is None or list_only:
        if name is None:
            return "experiments: " + ", ".join(experiment_names())
        from shareddiff.repro.runner import describe_runs

        exp = load_experiment(name)
        return f"{exp.name}: {exp.description}\n\n{describe_runs(exp, Path(out), runs, list(overrides or []))}"
    return reproduce(
        name, runs, out, list(overrides or []), keep_checkpoints, jobs, summary_only, summary, progress, start_by
    )


COMMANDS: dict[str, Callable[..., str] | tuple[str, dict[str, Callable[..., str]]]] = {
    "params": cmd_params,
    "train": cmd_train,
    "generate": cmd_generate,
    "data": ("prepare token shards", {"prepare": cmd_data_prepare}),
    "tokenizer": ("train a tokenizer", {"train": cmd_tokenizer_train}),
    "export": cmd_export,
    "eval": (
        "evaluate a checkpoint",
        {
            "harness": cmd_eval_harness,
            "lm": commands.run_lm,
            "needle": commands.run_needle,
            "attention": commands.run_attention,
            "mqar": commands.run_mqar,
            "icl": commands.run_icl,
            "scaling": commands.run_scaling,
        },
    ),
    "report": cmd_report,
    "demo": cmd_demo,
    "reproduce": cmd_reproduce,
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every verb in ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="shareddiff",
        description="Shared DIFF Transformer, DIFF Transformer and Transformer language models.",
        epilog=f"presets: {', '.join(PRESET_NAMES)} (sizes: {', '.join(SIZES)})",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, entry in COMMANDS.items():
        if callable(entry):
            add_command(verbs, verb, entry)
            continue
        help_text, actions = entry
        group = verbs.add_parser(verb, help=help_text, description=help_text)
        sub = group.add_subparsers(dest="action", required=True, metavar="ACTION")
        for action, func in actions.items():
            add_command(sub, action, func)
    return parser


def package_version() -> str:
    """The installed distribution's version, else (a source tree on PYTHONPATH) the package's ``__version__``."""
    from importlib import metadata

    import shareddiff

    try:
        return metadata.version("shareddiff")
    except metadata.PackageNotFoundError:
        return shareddiff.__version__


def add_command(sub: argparse._SubParsersAction, name: str, func: Callable[..., str]) -> None:
    """A sub-parser for ``func``: one argument per parameter, help from its docstring."""
    summary, description, helps = parse_docstring(inspect.getdoc(func) or "")
    parser = sub.add_parser(name, help=summary, description=description)
    hints = typing.get_type_hints(func, include_extras=True)
    for param in inspect.signature(func).parameters.values():
        _add_argument(parser, param, hints[param.name], helps.get(param.name))
    parser.set_defaults(func=func)


def parse_docstring(doc: str) -> tuple[str, str, dict[str, str]]:
    """(first line, text before ``Args:``, {parameter: help}) of a Google-style docstring."""
    text, _, args = doc.partition("\nArgs:\n")
    helps: dict[str, str] = {}
    name = None
    for line in args.splitlines():
        match = re.match(r"^ {4}(\w+): (.*)$", line)
        if match:
            name, helps[match[1]] = match[1], match[2]
        elif line.startswith(" " * 8) and name is not None:
            helps[name] += " " + line.strip()
        else:
            name = None
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)  # Sphinx roles read as plain names in --help
    return text.split("\n\n")[0].replace("\n", " "), text.strip(), helps


def _add_argument(parser: argparse.ArgumentParser, param: inspect.Parameter, hint, help_text: str | None) -> None:
    """One parameter as an argparse argument (the rules of this module's docstring)."""
    flag = Flag()
    if typing.get_origin(hint) is Annotated:
        hint, *extras = typing.get_args(hint)
        flag = next((e for e in extras if isinstance(e, Flag)), flag)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None: X, default None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    many = typing.get_origin(hint) in (list, Sequence)
    item = typing.get_args(hint)[0] if many else hint
    has_default = param.default is not inspect.Parameter.empty
    if item is bool and param.default is True:  # the switch --no-NAME: the docstring names the thing it turns off
        help_text = f"no {help_text}"
    kwargs: dict[str, Any] = {"help": _help(help_text, param.default if item is not bool else None)}
    if typing.get_origin(item) is Literal:
        kwargs["choices"], item = list(typing.get_args(item)), str
    if param.kind is not inspect.Parameter.KEYWORD_ONLY or param.name == "overrides":
        nargs = ("*" if has_default else "+") if many else ("?" if has_default else None)
        default = list(param.default or []) if many and has_default else param.default if has_default else None
        parser.add_argument(param.name, type=item, nargs=nargs, default=default, **kwargs)
    elif item is bool:  # a switch: --name turns on what defaults to off, --no-name turns off what defaults to on
        option = flag.name or f"--{'no-' if param.default else ''}{param.name.replace('_', '-')}"
        parser.add_argument(option, dest=param.name, action="store_false" if param.default else "store_true", **kwargs)
    else:
        if many:
            kwargs["action" if flag.append else "nargs"] = "append" if flag.append else "+"
        kwargs["default" if has_default else "required"] = param.default if has_default else True
        option = flag.name or "--" + param.name.replace("_", "-")
        parser.add_argument(option, dest=param.name, type=item, **kwargs)


def _help(text: str | None, default: Any) -> str | None:
    """An argument's help (argparse %-formats it) with its default when it has a telling one."""
    text = (text or "").replace("%", "%%")
    if default is not None and default is not inspect.Parameter.empty and default != ():
        shown = " ".join(map(str, default)) if isinstance(default, tuple | list) else default
        text = f"{text} (default: {shown})".strip()
    return text or None


_OVERRIDE = re.compile(r"^[A-Za-z_]\w*\.[A-Za-z_]\w*=")


def take_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(``argv`` without its overrides, the overrides in their order): ``section.key=value``,
    ``--section.key=value`` and ``--section.key value``, anywhere on the line."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        name = arg[2:].split("=", 1)[0]
        if arg.startswith("--") and "." in name:
            if "=" in arg:
                overrides.append(arg[2:])
            elif i + 1 < len(argv):
                overrides.append(f"{name}={argv[i + 1]}")
                i += 1
            else:
                raise ValueError(f"{arg} needs a value, e.g. {arg}=VALUE")
        elif _OVERRIDE.match(arg):
            overrides.append(arg)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _takes_overrides(argv: list[str]) -> bool:
    entry = COMMANDS.get(argv[0]) if argv else None
    return callable(entry) and "overrides" in inspect.signature(entry).parameters


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
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if _takes_overrides(argv):
        try:
            argv, overrides = take_overrides(argv)
        except ValueError as err:  # exit 2 with one line, as argparse does for a usage error
            print(f"error: {err}", file=sys.stderr)
            return 2
    args = vars(build_parser().parse_args(argv))
    func = args.pop("func")
    args.pop("verb")
    args.pop("action", None)
    if "overrides" in args:
        args["overrides"] = [*overrides, *args["overrides"]]
    try:
        out = func(**args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # a training run says where it stopped and how to continue
        if os.environ.get("RANK", "0") == "0":
            print(str(err) or "interrupted", file=sys.stderr)
        return 128 + getattr(err, "signum", 2)  # 130 for Ctrl-C, 143 for SIGTERM, as a shell reports them
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
