"""Shared pytest fixtures."""

import os

# torch.compile's CPU backend imports distutils through setuptools' shim, which asserts that no
# stdlib distutils was imported first; in one long pytest process some library does that earlier
# (test-order dependent). The stdlib copy is what Python 3.11 ships: tell the shim to accept it.
os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two spinning
# threads per process are several times slower than one; subprocess tests set their own.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Fixed seed so the suite behaves the same on every machine."""
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` first, the rest in their usual order. Under pytest-xdist
    (``scripts/test.sh``) the long end-to-end tests then start at once, side by side with the
    short ones, instead of last on one worker while the others wait: the wall time stays near
    the total divided by the workers. A module's tests that share a module-scoped fixture are
    marked alike, so the fixture is still set up once."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
