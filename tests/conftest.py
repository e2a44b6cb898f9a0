"""Shared fixtures: every numeric test draws fresh random inputs and prints its seed on failure."""

import random

import pytest
import torch


@pytest.fixture
def seed() -> int:
    """A fresh seed per test (printed, so a failure can be replayed with torch.manual_seed)."""
    value = random.SystemRandom().randrange(2**31)
    torch.manual_seed(value)
    print(f"seed={value}")
    return value


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ in float64; the absolute error where the expected value is exactly 0
    (e.g. the query gradient with a single key)."""
    actual, expected = actual.double(), expected.double()
    denom = expected.norm().item()
    return (actual - expected).norm().item() / (denom if denom > 0 else 1.0)
