"""The fault-injection suite: every test here is marked `faults`; the long variants
are also marked `soak` (deselected by default, run by `make faults`). Each scenario
fills a Tally; the figures go to benchmarks/RELIABILITY.md when the session ends, in
`make faults` only (FASTPROXY_WRITE_RELIABILITY=1): `make test` and any other run
leave the committed file alone."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faultkit  # noqa: E402
from records import Tally, write_report  # noqa: E402

HERE = Path(__file__).resolve().parent
TALLIES = pytest.StashKey[list[Tally]]()

# Sizes and counts per variant: short runs in `make test`, long in `make faults`.
VARIANTS = ["short", pytest.param("long", marks=pytest.mark.soak)]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.faults)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.when == "call":
        outcome = report.outcome
        if hasattr(report, "wasxfail"):
            outcome = "xpassed" if report.passed else "xfailed"
        item.stash[_OUTCOME] = outcome
    return report


_OUTCOME = pytest.StashKey[str]()


@pytest.fixture(autouse=True)
def _no_target_outlives_its_test() -> Iterator[None]:
    yield
    while faultkit.TARGETS:
        faultkit.TARGETS.pop().close()


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """This scenario's figures. Named after the test; the variant from its `variant`
    parameter when it has one."""
    name = request.node.originalname.removeprefix("test_").replace("_", " ")
    variant = getattr(request.node, "callspec", None)
    params = variant.params if variant is not None else {}
    extra = [f"{k}={v}" for k, v in params.items() if k != "variant"]
    record = Tally(
        scenario=name + (f" [{', '.join(extra)}]" if extra else ""),
        variant=params.get("variant", "short"),
    )
    started = time.monotonic()
    yield record
    record.seconds = time.monotonic() - started
    record.outcome = request.node.stash.get(_OUTCOME, "error")
    request.config.stash.setdefault(TALLIES, []).append(record)


def pytest_sessionfinish(session: pytest.Session) -> None:
    tallies = session.config.stash.get(TALLIES, [])
    if tallies and os.environ.get("FASTPROXY_WRITE_RELIABILITY") == "1":
        args = " ".join(session.config.invocation_params.args)
        write_report(tallies, f"pytest {args}".strip())
