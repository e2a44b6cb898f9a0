"""Checkpoints: one folder per step, written atomically; model + optimizer through PyTorch's
distributed checkpoint (sharded, resumable on any number of processes), weights also as safetensors.

    OUT/checkpoints/step_00000100/
        dcp/                  model + AdamW state, torch.distributed.checkpoint (one shard per rank)
        model.safetensors     the full weights, gathered on rank 0 (generate / export / eval read these)
        rng_rank{R}.pt        each rank's torch / CUDA / Python RNG states (torch.load(weights_only=True))
        tokenizer.json        the tokenizer the run used
        state.json            step, tokens, configs, tokenizer hash, world size — written last

Every rank writes into ``step_X.tmp``; once all have finished, rank 0 fsyncs the files and renames the
folder, so a run killed mid-write (any rank, any moment) leaves only a ``.tmp`` folder, never loaded.
A multi-node run needs the run folder on a filesystem every node sees.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from shareddiff.train.distributed import DistInfo, barrier

CHECKPOINTS = "checkpoints"
STATE = "state.json"
FORMAT = "shareddiff-checkpoint/2"
DCP_DIR = "dcp"
FILES = ("model.safetensors", "rng_rank0.pt", "tokenizer.json", STATE, f"{DCP_DIR}/.metadata")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        _fsync(path)
    _fsync(root)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def _single_process_is_fine():
    """Silence DCP's notice that it runs without a process group: one process is a supported setup here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    tokenizer_path: str | Path,
    keep_last: int,
    dist: DistInfo | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step_{step}`` (a collective: every rank calls it), then prune to ``keep_last``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    dist = dist or DistInfo()
    root = Path(run_dir) / CHECKPOINTS
    final, tmp = root / f"step_{step:08d}", root / f"step_{step:08d}.tmp"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(dist)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _single_process_is_fine():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / DCP_DIR))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    torch.save(rng_state(), tmp / f"rng_rank{dist.rank}.pt")
    barrier(dist)
    if dist.is_main:
        weights = {k: v.detach().to("cpu").contiguous() for k, v in full.items()}
        save_file(weights, tmp / "model.safetensors", metadata={"format": FORMAT})
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
        (tmp / STATE).write_text(
            json.dumps({"format": FORMAT, "step": step, "world_size": dist.world, **state}, indent=2)
        )
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step after a resume: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(root)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(dist)
    return final


def load_training_state(
    ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, dist: DistInfo | None = None
) -> None:
    """Load model + optimizer from the checkpoint's DCP shards (any saving world size) and this rank's RNG."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    dist = dist or DistInfo()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    target = {"model": model_sd, "optim": optim_sd}
    with _single_process_is_fine():
        dcp.load(target, checkpoint_id=str(ckpt / DCP_DIR))
    set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optim"])
    rng_file = ckpt / f"rng_rank{dist.rank}.pt"
    set_rng_state(torch.load(rng_file if rng_file.is_file() else ckpt / "rng_rank0.pt", weights_only=True))


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
    try:
        torch.load(ckpt / "rng_rank0.pt", weights_only=True)
    except Exception as err:
        raise ValueError(f"checkpoint {ckpt} has an unreadable rng_rank0.pt ({err})") from err
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
