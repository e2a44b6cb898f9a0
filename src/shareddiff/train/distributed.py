"""Data parallelism on PyTorch's own engine: torchrun, DDP or FSDP2, activation checkpointing.

The model knows nothing of this: ``parallelize(model, config, dist)`` wraps a plain ``LanguageModel``
the way torchtitan's ``parallelize_*`` functions do.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn

from shareddiff.config import ParallelConfig


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
    from shareddiff.train.trainer import select_device

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


def parallelize(model: nn.Module, config: ParallelConfig, dist: DistInfo, device: torch.device) -> nn.Module:
    """Activation checkpointing per block (optional), then DDP or FSDP2 (one unit per block, then the root)."""
    if config.activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for i, block in enumerate(model.layers):
            model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)
    if not dist.enabled:
        return model
    if config.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    policy = MixedPrecisionPolicy(param_dtype=dtypes[config.param_dtype], reduce_dtype=dtypes[config.reduce_dtype])
    for block in model.layers:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain LanguageModel inside a DDP wrapper (FSDP2 shards in place)."""
    return model.module if hasattr(model, "module") and not isinstance(model, nn.ModuleList) else model
