"""A few-kilobyte summary of a ``torch.profiler`` run, small enough to bring back from a remote GPU.

Reports, per profiled step: the top GPU kernels; the time NCCL kernels run and the part of it that no
computation kernel overlaps (exposed communication); GPU idle time inside the profiled span (the GPU
waiting for the CPU); and the CPU time of the annotated phases (``FSDP::*``, ``DDP``, optimizer, the
benchmark's own ``step::*`` ranges) and of the costliest CPU operators. The CPU time of an annotated
range is inclusive (nested ranges count in their parents too); FSDP2's per-module ranges are summed
over the modules.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

Interval = tuple[float, float]


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """The union of ``intervals`` as sorted, disjoint (start, end) pairs; empty ones dropped."""
    merged: list[list[float]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def union_length(intervals: Iterable[Interval]) -> float:
    """Length of the union of ``intervals``."""
    return sum(e - s for s, e in merge(intervals))


def overlap_length(intervals: Iterable[Interval], cover: Iterable[Interval]) -> float:
    """Length of union(``intervals``) ∩ union(``cover``)."""
    a, b = merge(intervals), merge(cover)
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def is_communication(kernel_name: str) -> bool:
    return "nccl" in kernel_name.lower()


def kernel_summary(kernels: list[tuple[str, float, float]], steps: int, top: int = 15) -> dict:
    """Kernel statistics from (name, start µs, end µs) GPU events of ``steps`` profiled steps (ms per step)."""
    if not kernels:
        return {"gpu_kernels": 0}
    comm = [(s, e) for name, s, e in kernels if is_communication(name)]
    compute = [(s, e) for name, s, e in kernels if not is_communication(name)]
    span = max(e for _, _, e in kernels) - min(s for _, s, _ in kernels)
    busy = union_length((s, e) for _, s, e in kernels)
    comm_total = union_length(comm)
    per_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for name, s, e in kernels:
        per_name[name][0] += e - s
        per_name[name][1] += 1
    ranked = sorted(per_name.items(), key=lambda kv: -kv[1][0])

    def row(name: str, total: float, calls: int) -> dict:
        return {"name": name[:160], "ms_per_step": total / 1e3 / steps, "calls_per_step": calls / steps}

    return {
        "gpu_kernels": len(kernels),
        "span_ms_per_step": span / 1e3 / steps,
        "busy_ms_per_step": busy / 1e3 / steps,
        "idle_ms_per_step": (span - busy) / 1e3 / steps,
        "compute_ms_per_step": union_length(compute) / 1e3 / steps,
        "nccl_ms_per_step": comm_total / 1e3 / steps,
        "nccl_exposed_ms_per_step": (comm_total - overlap_length(comm, compute)) / 1e3 / steps,
        "top_kernels": [row(n, t, c) for n, (t, c) in ranked[:top]],
        "nccl_kernels": [row(n, t, c) for n, (t, c) in ranked if is_communication(n)],
    }


def _is_annotation(event) -> bool:
    """A ``record_function`` range drawn on the GPU timeline (not work the GPU does)."""
    return (
        bool(getattr(event, "is_user_annotation", False))
        or "annotation" in str(getattr(event, "activity_type", "")).lower()
    )


ANNOTATIONS = ("FSDP::", "DistributedDataParallel", "Optimizer.", "step::", "ProfilerStep")


def _family(annotation: str) -> str:
    """FSDP2 names its ranges per module ("FSDP::all_gather (layers.3)", "FSDP::forward_prefetch for
    layers.2"); a family sums them over the modules."""
    return re.split(r" \(| for ", annotation, maxsplit=1)[0]


def summarize(prof, steps: int, top: int = 15) -> dict:
    """Summary of a finished ``torch.profiler.profile`` that recorded ``steps`` steps (times in ms per step)."""
    from torch.autograd import DeviceType

    kernels = [
        (e.name, e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == DeviceType.CUDA and not _is_annotation(e)
    ]
    averages = [a for a in prof.key_averages() if a.device_type == DeviceType.CPU]
    annotated: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for a in averages:
        if a.key.startswith(ANNOTATIONS):
            annotated[_family(a.key)][0] += a.cpu_time_total
            annotated[_family(a.key)][1] += a.count
    operators = sorted((a for a in averages if not a.key.startswith(ANNOTATIONS)), key=lambda a: -a.self_cpu_time_total)
    return {
        "steps": steps,
        **kernel_summary(kernels, steps, top),
        "cpu_annotations": [
            {"name": name, "cpu_ms_per_step": total / 1e3 / steps, "calls_per_step": calls / steps}
            for name, (total, calls) in sorted(annotated.items(), key=lambda kv: -kv[1][0])
        ],
        "top_cpu_operators": [
            {
                "name": a.key,
                "self_cpu_ms_per_step": a.self_cpu_time_total / 1e3 / steps,
                "calls_per_step": a.count / steps,
            }
            for a in operators[:top]
        ],
    }
