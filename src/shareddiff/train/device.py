"""The device and the compute precision of a run: below the trainer, the checkpoints and the process group."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch


def select_device(name: str, option: str = "train.device") -> torch.device:
    """``train.device`` (or the command-line ``option`` that named it, e.g. "--device") as a device: "auto" is
    CUDA when available, else the CPU. Raises ValueError, naming ``option``, for a name torch does not read as a
    device and for a CUDA device on a machine without one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sep = "=" if option.startswith("train.") else " "
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:  # torch's "Expected one of cpu, cuda, ... device type at start of ..."
        raise ValueError(
            f"{option}{sep}{name} is not a device; use auto (CUDA when available, else the CPU), cpu, cuda, cuda:N "
            "(the GPU numbered N) or mps"
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option}{sep}{name} but no CUDA device is available; use {option}{sep}cpu (or auto)")
    return device


def compute_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` made concrete: "auto" is "bf16" on CUDA, "fp32" elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast_for(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the forward pass's context: bf16 autocast, or no change for fp32."""
    if compute_precision(precision, device) == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
