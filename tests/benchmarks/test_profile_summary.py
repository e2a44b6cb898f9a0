"""The interval arithmetic behind the exposed-communication figure, against a count over a unit grid."""

import itertools
import random

import pytest
from profile_summary import kernel_summary, merge, overlap_length, union_length


def random_intervals(rng: random.Random, n: int) -> list[tuple[int, int]]:
    starts = [rng.randrange(200) for _ in range(n)]
    return [(s, s + rng.randrange(0, 30)) for s in starts]


def covered_cells(intervals) -> set[int]:
    return {cell for start, end in intervals for cell in range(start, end)}


def test_union_and_overlap_match_a_grid_count(seed):
    rng = random.Random(seed)
    for _ in range(200):
        a, b = random_intervals(rng, rng.randrange(0, 12)), random_intervals(rng, rng.randrange(0, 12))
        assert union_length(a) == len(covered_cells(a))
        assert overlap_length(a, b) == len(covered_cells(a) & covered_cells(b))
        merged = merge(a)
        assert all(e1 < s2 for (_, e1), (s2, _) in itertools.pairwise(merged))


def test_kernel_summary_counts_only_uncovered_communication_as_exposed():
    kernels = [  # (name, start µs, end µs) over 2 steps
        ("ampere_bf16_gemm", 0.0, 100.0),
        ("ampere_bf16_gemm", 150.0, 200.0),
        ("ncclDevKernel_AllGather_RING_LL", 80.0, 160.0),  # 30 µs of it under the GEMMs
        ("ncclDevKernel_ReduceScatter_Sum_f32_RING_LL", 300.0, 310.0),  # none of it covered
    ]
    summary = kernel_summary(kernels, steps=2)
    assert summary["nccl_ms_per_step"] == pytest.approx(90 / 1e3 / 2)
    assert summary["nccl_exposed_ms_per_step"] == pytest.approx(60 / 1e3 / 2)
    assert summary["span_ms_per_step"] == pytest.approx(310 / 1e3 / 2)
    assert summary["busy_ms_per_step"] == pytest.approx(210 / 1e3 / 2)
    assert summary["idle_ms_per_step"] == pytest.approx(100 / 1e3 / 2)
    assert summary["top_kernels"][0] == {"name": "ampere_bf16_gemm", "ms_per_step": 0.075, "calls_per_step": 1.0}
    assert [k["name"] for k in summary["nccl_kernels"]] == [kernels[2][0], kernels[3][0]]
    assert kernel_summary([], steps=2) == {"gpu_kernels": 0}
