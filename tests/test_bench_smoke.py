"""Benchmarks never rot: every benchmark of benchmarks/ run once with tiny loads
(BENCH_SMOKE=1), in a network namespace of its own; each must produce its figures, and
the report must be generated from them. Timings are never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
# Root (CI) gets a plain network namespace; others map themselves to root in a user one.
UNSHARE = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--map-root-user", "--net"]


def collected(env: dict[str, str]) -> set[str]:
    out = subprocess.run(
        [*PYTEST, "--collect-only", "-q", "benchmarks"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return {line for line in out.stdout.splitlines() if "::" in line}


def failures(stdout: str) -> str:
    """What failed and why: every exception line of the FAILURES section and the short
    summary, not the timing tables pytest-benchmark prints (CI shows only this text)."""
    head, sep, rest = stdout.partition("= FAILURES =")
    if not sep:
        return stdout[-4000:]
    errors = [line for line in rest.splitlines() if line.startswith("E  ") and "Error" in line]
    summary = rest[rest.find("short test summary info") :]
    return "\n".join(errors[-40:]) + "\n" + summary[-3000:]


@pytest.mark.timeout(400)
def test_every_benchmark_produces_figures(tmp_path: Path) -> None:
    results = tmp_path / "results"
    env = {**os.environ, "BENCH_SMOKE": "1", "BENCH_RESULTS_DIR": str(results)}
    run = subprocess.run(
        [*UNSHARE, "--", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', *PYTEST]
        + ["-q", "-rfEs", "benchmarks", f"--benchmark-json={tmp_path / 'smoke.json'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert run.returncode == 0, failures(run.stdout) + run.stderr[-2000:]
    assert "SKIPPED" not in run.stdout, run.stdout[-4000:]
    benchmarks = json.loads((tmp_path / "smoke.json").read_text())["benchmarks"]
    produced = {b["fullname"].rsplit("::", 1)[0] for b in benchmarks}
    assert produced == collected(env)
    for bench in benchmarks:
        metrics = bench["extra_info"]["metrics"]
        assert metrics and all(metrics.values()), bench["name"]
        assert bench["stats"]["rounds"] >= 1
        raw = results / "raw" / bench["extra_info"]["raw"]
        assert raw.stat().st_size > 0, raw
    report = subprocess.run(
        [sys.executable, "benchmarks/report.py", str(tmp_path / "smoke.json")],
        cwd=ROOT,
        env={**env, "BENCH_ALLOW_DIRTY": "1"},
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## What an operator pays" in text
    assert "## Against the best peer on each metric" in text
    assert "### http-keepalive" in text
