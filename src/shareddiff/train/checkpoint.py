"""Checkpoints: one folder per step, written atomically, loaded safely (safetensors, weights_only).

    OUT/checkpoints/step_00000100/
        model.safetensors     weights (exportable as they are)
        optimizer.pt          AdamW state            (torch.load(weights_only=True))
        rng.pt                torch / CUDA / Python RNG states
        tokenizer.json        the tokenizer the run used
        state.json            step, tokens, configs, tokenizer hash — written last

A checkpoint is written into a temporary folder, each file fsynced, then renamed into place, so a
run killed mid-write leaves only a ``.tmp`` folder that is never loaded.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
STATE = "state.json"
FORMAT = "shareddiff-checkpoint/1"
FILES = ("model.safetensors", "optimizer.pt", "rng.pt", "tokenizer.json", STATE)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of the weights (safetensors wants no shared or strided storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    tokenizer_path: str | Path,
    keep_last: int,
) -> Path:
    """Write ``run_dir/checkpoints/step_{step}`` atomically, then keep only the last ``keep_last``."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f"step_{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(model_state_for_saving(model), tmp / "model.safetensors", metadata={"format": FORMAT})
    torch.save(optimizer.state_dict() if optimizer is not None else {}, tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
    (tmp / STATE).write_text(json.dumps({"format": FORMAT, "step": step, **state}, indent=2))
    for name in FILES:
        _fsync(tmp / name)
    if final.exists():  # re-saving a step after a resume: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (``.tmp`` leftovers excluded)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and p.suffix != ".tmp")


def read_state(ckpt: str | Path) -> dict[str, Any]:
    """The ``state.json`` of a checkpoint folder; a clear error if it is not one of ours or is damaged."""
    path = Path(ckpt) / STATE
    if not path.is_file():
        raise ValueError(
            f"{ckpt} is not a shareddiff checkpoint (no {STATE}); pass a folder under RUN/checkpoints/ or a run folder"
        )
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"checkpoint {ckpt} is damaged: {STATE} is not valid JSON ({err.msg})") from err
    if state.get("format") != FORMAT:
        raise ValueError(f"{ckpt} is not a {FORMAT} checkpoint (format={state.get('format')!r})")
    return state


def load_weights(ckpt: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(Path(ckpt) / "model.safetensors")
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"checkpoint {ckpt} has unreadable weights ({err}); use an earlier checkpoint") from err


def check_complete(ckpt: Path) -> dict[str, Any]:
    """Read and verify every file of ``ckpt``; raise ValueError naming what is wrong."""
    state = read_state(ckpt)
    missing = [name for name in FILES if not (ckpt / name).is_file()]
    if missing:
        raise ValueError(f"checkpoint {ckpt} is incomplete: missing {missing}")
    load_weights(ckpt)
    for name in ("optimizer.pt", "rng.pt"):
        try:
            torch.load(ckpt / name, weights_only=True)
        except Exception as err:
            raise ValueError(f"checkpoint {ckpt} has an unreadable {name} ({err})") from err
    return state


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of ``run_dir`` that reads back whole; damaged newer ones are skipped with a warning."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            check_complete(ckpt)
            return ckpt
        except ValueError as err:
            warnings.warn(f"skipping damaged checkpoint: {err}", stacklevel=2)
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or the latest good checkpoint of a run folder."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist; pass a run folder or one of its checkpoints/step_* folders")
    if (path / STATE).is_file():
        return path
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise ValueError(f"{path} holds no usable checkpoint; pass a run folder with checkpoints/ or a step_* folder")
    return ckpt


def load_model(path: str | Path, device: str | torch.device = "cpu", attn_backend: str = "auto"):
    """(model in eval mode, Tokenizer, state) from a checkpoint or run folder."""
    from shareddiff.config import ModelConfig
    from shareddiff.data.tokenizer import Tokenizer
    from shareddiff.model import build_model

    ckpt = resolve_checkpoint(path)
    state = read_state(ckpt)
    config = ModelConfig.from_dict(state["model_config"])
    model = build_model(config, attn_backend=attn_backend)
    load_state_into(model, load_weights(ckpt), ckpt)
    tokenizer = Tokenizer(ckpt / "tokenizer.json")
    return model.to(device).eval(), tokenizer, state


def load_state_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``weights`` strictly, naming missing, unexpected or mis-shaped tensors on failure."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [
        f"{k}: {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"weights in {source} do not fit the model config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}"
        )
    model.load_state_dict(weights)
