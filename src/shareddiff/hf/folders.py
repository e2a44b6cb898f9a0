"""Export checkpoints to Hugging Face folders and load such folders back, with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from shareddiff.data.tokenizer import EOS_TOKEN
from shareddiff.hf.diffllama import to_diffllama
from shareddiff.hf.modeling import ShareddiffConfig, ShareddiffForCausalLM, check_loading_info
from shareddiff.model import LanguageModel


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
    """Write ``checkpoint`` as a Hugging Face folder: ``to="hf"`` (shareddiff) or ``"diffllama"`` (native)."""
    from shareddiff.train import load_model

    model, tokenizer, _ = load_model(checkpoint, text=False)  # an MQAR run exports as it is
    if to == "hf":
        hf_model = wrap(model, tokenizer.eos_id)
    elif to == "diffllama":
        hf_model = to_diffllama(model, tokenizer.eos_id)
    else:
        raise ValueError(f"--to {to!r} is not a Hugging Face format; use hf or diffllama")
    out = Path(out_dir)
    hf_model.save_pretrained(out)
    hf_tokenizer(tokenizer.path).save_pretrained(out)
    return out


def load_pretrained(path: str | Path):
    """(model, tokenizer) from a folder written by ``export`` (shareddiff or DiffLlama)."""
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
    return model.eval(), AutoTokenizer.from_pretrained(folder)
