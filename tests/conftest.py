import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Test helpers (proxyproc, servers) are plain modules next to the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import proxyproc  # noqa: E402


@pytest.fixture(autouse=True)
def _no_proxy_outlives_its_test() -> Iterator[None]:
    """A failed assertion must not leave a fastproxy process behind (it would hold
    ports, the admin port or the netns's steering for the next test)."""
    yield
    while proxyproc.RUNNING:
        proxyproc.RUNNING.pop().kill()
