"""Shared pytest fixtures."""

import pytest
import torch

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two spinning
# threads per process are several times slower than one; subprocess tests set their own.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Fixed seed so the suite behaves the same on every machine."""
    torch.manual_seed(0)
    yield
