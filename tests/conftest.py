"""Shared pytest fixtures."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Fixed seed and a small thread count so the suite behaves the same on 2-core CI."""
    torch.manual_seed(0)
    yield
