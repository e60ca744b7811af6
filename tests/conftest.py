import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Test helpers (proxyproc, servers) are plain modules next to the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import proxyproc  # noqa: E402

# The compiled BPF program is cached for the session in a private directory of its own,
# not in the system's /var/cache (a run may set FASTPROXY_BPF_CACHE itself: "off" compiles
# at every start, a warmed directory loads every start from the cache).
_SESSION_BPF_CACHE = None
if "FASTPROXY_BPF_CACHE" not in os.environ:
    _SESSION_BPF_CACHE = tempfile.mkdtemp(prefix="fastproxy-bpf-cache-")
    os.environ["FASTPROXY_BPF_CACHE"] = _SESSION_BPF_CACHE


def pytest_sessionfinish() -> None:
    if _SESSION_BPF_CACHE is not None:
        shutil.rmtree(_SESSION_BPF_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_proxy_outlives_its_test() -> Iterator[None]:
    """A failed assertion must not leave a fastproxy process behind (it would hold
    ports, the admin port or the netns's steering for the next test)."""
    yield
    while proxyproc.RUNNING:
        proxyproc.RUNNING.pop().kill()
