"""The wheel is what users install: it must carry the compiled relay and the BPF
sources, and work from a clean virtualenv."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from proxyproc import ROOT


def test_wheel_carries_relay_and_bpf_sources_and_installs(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("fastproxy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("fastproxy/_relay.") and n.endswith(".so") for n in names)
    assert "fastproxy/bpf/steer.c" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([venv / "bin/pip", "install", "-q", str(wheel)], check=True, timeout=600)
    version = subprocess.run(
        [venv / "bin/fastproxy", "--version"], capture_output=True, text=True, check=True
    )
    assert "fastproxy" in version.stdout
    # Run from elsewhere, so the source tree cannot stand in for the install.
    check = subprocess.run(
        [venv / "bin/fastproxy", "check", str(ROOT / "examples/challenge.json")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr
    imported = subprocess.run(
        [venv / "bin/python", "-c", "import fastproxy._relay as r; print(r.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert str(venv) in imported.stdout
