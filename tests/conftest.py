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


@pytest.fixture(params=["ports", "bpf"])
def steering(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Config keys for both steering modes; bpf runs in a fresh netns (root only)."""
    if request.param == "ports":
        yield {"Steering": "ports"}
        return
    if os.geteuid() != 0:
        pytest.skip("bpf steering needs root")
    from fastproxy import netns

    with netns.temporary("fpsteer"):
        yield {"Steering": "bpf", "Listen": "::"}


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


# No silent skips in CI. CI runs `make test` as root with every package of
# scripts/install-system-deps.sh installed, so a test that skips there tests nothing and
# says nothing: in CI (CI=true, as root) a skip fails its test, unless its reason is one
# CI cannot meet, listed here with why. Today no test needs one.
SKIPS_CI_CANNOT_MEET: dict[str, str] = {
    # "exact skip reason": "why CI cannot meet it",
}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes") and os.geteuid() == 0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = skip_reason(report)
        if reason not in SKIPS_CI_CANNOT_MEET:
            report.outcome = "failed"
            report.longrepr = (
                f"skipped in CI ({reason!r}): CI runs as root with every dependency"
                " installed, so this test must run (or its reason be listed, with why,"
                " in tests/conftest.py SKIPS_CI_CANNOT_MEET)"
            )
    return report


def skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


@pytest.fixture(autouse=True)
def _no_proxy_outlives_its_test() -> Iterator[None]:
    """A failed assertion must not leave a fastproxy process behind (it would hold
    ports, the admin port or the netns's steering for the next test)."""
    yield
    while proxyproc.RUNNING:
        proxyproc.RUNNING.pop().kill()
