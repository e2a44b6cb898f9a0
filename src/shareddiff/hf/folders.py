"""Export checkpoints to Hugging Face folders and load such folders back, with clear errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from shareddiff.data.tokenizer import EOS_TOKEN
from shareddiff.hf.diffllama import to_diffllama
from shareddiff.hf.modeling import ShareddiffConfig, ShareddiffForCausalLM, check_loading_info
from shareddiff.hf.remote_code import AUTO_MAP, write_remote_code
from shareddiff.model import LanguageModel

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
ATTENTION_NAMES = {  # what each attention variant is, for the model card
    "standard": "standard softmax attention (a LLaMA-style Transformer, the baseline)",
    "diff": "differential attention (DIFF Transformer, arXiv 2410.05258)",
    "shared_diff": "Shared DIFF attention (Shared DIFF Transformer, arXiv 2501.17900)",
    "diff_v2": "differential attention V2 (2h query heads, a per-token λ)",
    "shared_diff_v2": "Shared DIFF attention over differential attention V2 (a shared base plus low-rank updates)",
}


def hf_tokenizer(tokenizer_file: str | Path) -> PreTrainedTokenizerFast:
    """The project's tokenizer.json as a ``PreTrainedTokenizerFast``; EOS doubles as padding, which goes on
    the left, as batched generation needs (the model takes left-padded batches)."""
    return PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file), eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, padding_side="left"
    )


def wrap(model: LanguageModel, eos_id: int | None = None) -> ShareddiffForCausalLM:
    config = ShareddiffConfig.from_model_config(model.config, eos_token_id=eos_id, pad_token_id=eos_id)
    return ShareddiffForCausalLM(config, model).eval()


def export(checkpoint: str | Path, out_dir: str | Path, to: str) -> Path:
    """Write ``checkpoint`` as a Hugging Face folder: ``to="hf"`` (shareddiff) or ``"diffllama"`` (native).

    A run trained on text gets its tokenizer beside the weights. A run trained on MQAR gets none: its
    vocabulary is the task's synthetic ids (``shareddiff.data.mqar``), which no text tokenizer maps to, so
    the folder's config names no end-of-text or padding id and its README.md gives the ids' layout instead
    (as a model on synthetic tokens is published on the Hub: weights and a model card, no tokenizer). A text
    run's folder gets a README.md model card saying what the model is and how to load it. A ``to="hf"`` folder
    also carries the code files its config.json's ``auto_map`` names (``remote_code.py``), so that
    ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` loads it without ``import
    shareddiff.hf``. Raises ``ValueError`` if ``out_dir`` (or a folder above it) is an existing file."""
    from shareddiff.train import load_model

    out = Path(out_dir)
    _check_folder_path(out, to)
    model, tokenizer, state = load_model(checkpoint, text=False)
    mqar = state["run"]["data"].get("source") == "mqar"
    eos_id = None if mqar else tokenizer.eos_id
    if to == "hf":
        hf_model = wrap(model, eos_id)
    elif to == "diffllama":
        hf_model = to_diffllama(model, eos_id)
    else:
        raise ValueError(f"--to {to!r} is not a Hugging Face format; use hf or diffllama")
    stale = [name for name in TOKENIZER_FILES if mqar and (out / name).is_file()]
    if stale:
        raise ValueError(
            f"{out} already holds a tokenizer ({', '.join(stale)}) and {checkpoint} was trained on MQAR, whose ids "
            "no tokenizer maps to: loading the folder would pair them; export into a new folder, or remove those files"
        )
    if to == "hf":  # transformers loads the folder by itself (trust_remote_code=True), through its own code files
        hf_model.config.auto_map = AUTO_MAP
        out.mkdir(parents=True, exist_ok=True)
        write_remote_code(out)
    hf_model.save_pretrained(out)
    if not mqar:
        hf_tokenizer(tokenizer.path).save_pretrained(out)
        (out / "README.md").write_text(_text_card(model, state, to))
        return out
    (out / "README.md").write_text(_mqar_card(state, to))
    log.info(
        "%s was trained on MQAR: its %d ids are the task's, so no tokenizer is written (%s says how they are "
        "laid out); feed the model token ids",
        checkpoint,
        model.config.vocab_size,
        out / "README.md",
    )
    return out


def _check_folder_path(out: Path, to: str) -> None:
    """Raise ``ValueError`` if ``out``, or a folder it would sit in, is an existing file (a folder is written)."""
    for path in (out, *out.parents):
        if not path.exists():
            continue
        if path.is_dir():
            return
        where = "" if path == out else f" (a folder {out} cannot sit in it)"
        raise ValueError(
            f"{path} is a file{where}: --to {to} writes a folder (config.json, weights, tokenizer); give a folder "
            f"path, new or existing, e.g. {path.parent / (path.stem + '-' + to)}"
        )


def _loading(to: str) -> str:
    """How a Hugging Face user loads the folder (for its model card)."""
    if to == "hf":
        return (
            "`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`: the folder's "
            "`modeling_shareddiff.py` imports the model from the `shareddiff` package (`pip install 'shareddiff[hf]'`)"
        )
    return "`AutoModelForCausalLM.from_pretrained(folder)` (transformers' own DiffLlamaForCausalLM)"


def _text_card(model: LanguageModel, state: dict, to: str) -> str:
    """The model card of a text run's export: what the model is and how to load it."""
    c = model.config
    params = sum(p.numel() for p in model.parameters())
    preset = state["run"]["model"].get("preset")
    lines = [
        "---",
        "library_name: transformers",
        f"tags: [shareddiff, {c.attention}]",
        "---",
        f"# A shareddiff language model{f' ({preset})' if preset else ''}",
        "",
        f"A decoder-only language model with {ATTENTION_NAMES[c.attention]}, trained for {state['step']} step(s)",
        f"with [shareddiff](https://arxiv.org/abs/2501.17900): {params:,} parameters, {c.n_layers} layers,",
        f"width {c.d_model}, {c.n_heads} heads, vocabulary {c.vocab_size}, context {c.max_seq_len} tokens.",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"model = AutoModelForCausalLM.from_pretrained(folder{', trust_remote_code=True' if to == 'hf' else ''})",
        "tokenizer = AutoTokenizer.from_pretrained(folder)  # pads on the left, as batched generation needs",
        "```",
        "",
        f"Load with {_loading(to)}.",
        "The tokenizer's end-of-text token ends generation and doubles as padding.",
        "",
    ]
    return "\n".join(lines)


def _mqar_card(state: dict, to: str) -> str:
    """The model card of an MQAR run's export: the task it learned and its vocabulary, id by id."""
    task, seq_len, vocab = state["run"]["mqar"], state["run"]["data"]["seq_len"], state["model_config"]["vocab_size"]
    half, task_vocab = task["vocab_size"] // 2, task["vocab_size"]
    queries = task["pairs"] if task.get("queries") is None else task["queries"]
    unused = f"; ids {task_vocab} to {vocab - 1} are never seen" if vocab > task_vocab else ""
    distractors = [f"{task['key_len']} tokens per key"] if task["key_len"] > 1 else []
    distractors += ["keys in pairs sharing a prefix"] if task.get("shared_prefix") else []
    distractors += [f"{task['updates']} value updates (the last value answers)"] if task.get("updates") else []
    lines = [
        "---",
        "library_name: transformers",
        "tags: [shareddiff, mqar, synthetic]",
        "---",
        "# A shareddiff model trained on MQAR (no tokenizer)",
        "",
        f"Trained for {state['step']} step(s) on multi-query associative recall (MQAR; Zoology, Arora et al. 2023,",
        "§3), a synthetic task, not on text.",
        "",
        f"- Vocabulary: {vocab} ids, the task's: blank (0), keys (1 to {half - 1}), values ({half} to "
        f"{task_vocab - 1}){unused}.",
        f"- Sequences of {seq_len} tokens: {task['pairs']} key-value pairs, then blanks with {queries} of the keys "
        "queried among them; the answer to a query (its key's value) is predicted at the query's last key token.",
        *([f"- Distractors: {', '.join(distractors)}."] if distractors else []),
        "",
        "No tokenizer is included: none maps text to these ids. Feed token ids (`model(input_ids)`), built as",
        f"`shareddiff.data.mqar.mqar_batch` builds them. Load with {_loading(to)}.",
        "",
    ]
    return "\n".join(lines)


def load_pretrained(path: str | Path):
    """(model, tokenizer) from a folder written by ``export`` (shareddiff or DiffLlama); the tokenizer is None
    for a folder without one (the export of an MQAR run)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(
            f"{folder} is not a Hugging Face model folder (no config.json); "
            "write one with `shareddiff export CHECKPOINT --to hf DIR`"
        )
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type == "shareddiff":
        model = ShareddiffForCausalLM.from_pretrained(folder)
    elif model_type == "diffllama":
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, output_loading_info=True, ignore_mismatched_sizes=True
        )
        check_loading_info(info, folder)
    else:
        raise ValueError(f"{folder} holds a {model_type!r} model, not a shareddiff or DiffLlama one")
    has_tokenizer = any((folder / name).is_file() for name in TOKENIZER_FILES)
    return model.eval(), AutoTokenizer.from_pretrained(folder) if has_tokenizer else None
