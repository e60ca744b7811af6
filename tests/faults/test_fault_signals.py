"""The long signal flood: six rounds of 40,000 SIGHUP/SIGUSR1 against a busy proxy."""

from __future__ import annotations

from pathlib import Path

import pytest

from records import Tally
from signalflood import flood_then_check


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(6))
def test_signal_flood_long(tmp_path: Path, tally: Tally, seed: int) -> None:
    tally.connections += flood_then_check(tmp_path, signals=40_000, seed=seed)
    tally.note("40,000 SIGHUP/SIGUSR1 under load, then a SIGHUP reload applied and SIGTERM")
