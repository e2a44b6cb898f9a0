"""Data parallelism on PyTorch's own engine: torchrun, DDP or FSDP2, activation checkpointing, per-block
compile, gradient sync under accumulation.

The model knows nothing of this: ``parallelize(model, config, dist, device)`` wraps a plain
``LanguageModel`` the way torchtitan's ``parallelize_*`` functions do; docs/distributed.md describes
the options.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn

from shareddiff.config import ParallelConfig
from shareddiff.train.device import select_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU); one process otherwise."""
    device = select_device(device_name)
    if not launched_by_torchrun():
        return DistInfo(), device
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None
        )
    return DistInfo(torch_dist.get_rank(), torch_dist.get_world_size(), local_rank), device


def shutdown(dist: DistInfo) -> None:
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def barrier(dist: DistInfo) -> None:
    if dist.enabled:
        torch_dist.barrier()


def all_gather_objects(obj, dist: DistInfo) -> list:
    """``obj`` of every rank, in rank order (a collective; ``[obj]`` in one process)."""
    if not dist.enabled:
        return [obj]
    out: list = [None] * dist.world
    torch_dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, dist: DistInfo, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (a collective; ``obj`` itself in one process)."""
    if not dist.enabled:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def mean_across_ranks(value: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    if dist.enabled:
        value = value.clone()
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.AVG if value.is_cuda else torch_dist.ReduceOp.SUM)
        if not value.is_cuda:  # gloo has no AVG
            value /= dist.world
    return value


def check_same_recipe(recipe: dict, dist: DistInfo) -> None:
    """Fail fast, on every rank, if the ranks were launched with different recipes."""
    if not dist.enabled:
        return
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()
    digests: list[str] = [""] * dist.world
    torch_dist.all_gather_object(digests, digest)
    odd = [r for r, d in enumerate(digests) if d != digests[0]]
    if odd:
        raise ValueError(
            f"ranks {odd} were launched with a recipe that differs from rank 0's "
            f"(sha256 {digests[0][:12]}… vs {digests[odd[0]][:12]}…); launch every rank with the "
            "same --config, --preset and overrides"
        )


def parallelize(
    model: nn.Module,
    config: ParallelConfig,
    dist: DistInfo,
    device: torch.device,
    *,
    compile: bool = False,
    precision: str = "fp32",
    compile_mode: str = "default",
) -> nn.Module:
    """Wrap a plain ``LanguageModel`` in torchtitan's order (``parallelize_llama``): activation
    checkpointing per block, ``torch.compile`` per block, then DDP or FSDP2.

    ``compile`` is ``train.compile`` (``compile_mode`` its ``train.compile_mode``); with
    ``config.compile_unit == "block"`` each block is compiled here, before any wrapping (identical blocks
    reuse the compiled code: compile time does not grow with depth), and the caller compiles nothing else.
    ``precision`` is the run's compute precision, "bf16" or "fp32" (already resolved from "auto"): FSDP2's
    ``param_dtype="auto"`` gathers parameters in it.
    In one process only the first two steps apply. FSDP2 units: one per block
    (``config.reshard_after_forward``, ``config.prefetch_blocks``), then the root (embeddings, final
    norm, output head), whose parameters stay gathered from forward to backward unless
    ``reshard_after_forward="always"``.
    """
    if config.activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for i, block in enumerate(model.layers):
            model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)
    if compile and config.compile_unit == "block":
        for i, block in enumerate(model.layers):
            model.layers[i] = torch.compile(
                block, mode=compile_mode
            )  # checkpoints and safetensors keep the plain names
    if not dist.enabled:
        return model
    if config.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    _fully_shard(model, config, precision)
    return model


def _fully_shard(model: nn.Module, config: ParallelConfig, precision: str) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    param_dtype = precision if config.param_dtype == "auto" else config.param_dtype
    policy = MixedPrecisionPolicy(param_dtype=dtypes[param_dtype], reduce_dtype=dtypes[config.reduce_dtype])
    blocks = list(model.layers)
    for i, block in enumerate(blocks):
        keep = config.reshard_after_forward == "never" or (
            config.reshard_after_forward == "auto" and i == len(blocks) - 1
        )
        fully_shard(block, mp_policy=policy, reshard_after_forward=not keep)
    fully_shard(model, mp_policy=policy, reshard_after_forward=config.reshard_after_forward == "always")
    if config.prefetch_blocks > 0:
        n = config.prefetch_blocks
        forward_order, backward_order = [model, *blocks], [model, *reversed(blocks)]
        for i, unit in enumerate(forward_order):
            unit.set_modules_to_forward_prefetch(forward_order[i + 1 : i + 1 + n])
        for i, unit in enumerate(backward_order):
            unit.set_modules_to_backward_prefetch(backward_order[i + 1 : i + 1 + n])


@contextlib.contextmanager
def gradient_sync(model: nn.Module, config: ParallelConfig, last_micro_batch: bool) -> Iterator[None]:
    """Run one micro-batch's forward and backward in this context. Under gradient accumulation the
    gradients are reduced across processes on the last micro-batch only (DDP ``no_sync``, FSDP2
    ``set_requires_gradient_sync(False)``: unsharded gradients are held until then) or on every one,
    as ``config.grad_sync`` says. Nothing to do in one process."""
    policy = config.grad_sync
    if policy == "auto":
        policy = "every" if config.strategy == "fsdp" else "last"
    if last_micro_batch or policy == "every":
        yield
    elif hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def unwrap(model: nn.Module) -> nn.Module:
    """The plain LanguageModel inside a DDP wrapper (FSDP2 shards in place)."""
    return model.module if hasattr(model, "module") and not isinstance(model, nn.ModuleList) else model
