"""The cache of the compiled steering program: a second start loads the cached bytecode
without compiling, and nothing in the cache is believed unless root put it there whole.

Each test has a cache directory of its own and a fresh network namespace. Compiling takes
a second or more: the tests that must compile do so once each."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fastproxy import netns
from fastproxy.steering import Steering, bpfsys, cache, loader, pins

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="BPF steering needs root"),
    pytest.mark.timeout(120),
]

PIN_ROOT = f"/sys/fs/bpf/fastproxy-cache-test-{os.getpid()}"
HIT = "loaded from the cache"
COMPILED = "compiled by bcc"


@pytest.fixture(autouse=True)
def _netns_and_pins() -> Iterator[None]:
    with netns.temporary("fpcache"):
        yield
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(PIN_ROOT):
            pins.remove_dir(os.path.join(PIN_ROOT, name))
        os.rmdir(PIN_ROOT)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "bpf-cache"
    monkeypatch.setenv(cache.ENV_VAR, str(directory))
    return directory


@pytest.fixture(scope="module")
def valid_entry(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    """(file name, content) of an entry written by a real compile, for tests to plant."""
    directory = tmp_path_factory.mktemp("warm") / "bpf-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(cache.ENV_VAR, str(directory))
        loader.load_program().close()
    (entry,) = directory.iterdir()
    return entry.name, entry.read_bytes()


@pytest.fixture
def start(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], tuple[str, bytes]]]:
    """Attach steering of port 20000 to a fresh socket, check a connection is steered,
    detach; returns (what the loader logged, the program's tag)."""
    made: list[socket.socket] = []

    def _start() -> tuple[str, bytes]:
        caplog.clear()
        srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        made.append(srv)
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        srv.bind(("::", 0))
        srv.listen(8)
        srv.settimeout(5)
        with (
            caplog.at_level(logging.INFO, logger="fastproxy"),
            Steering.attach([srv], [20000], pin_root=PIN_ROOT) as st,
        ):
            with socket.create_connection(("127.0.0.1", 20000), timeout=5) as client:
                accepted, _ = srv.accept()
                with accepted:
                    assert accepted.getsockname()[1] == 20000
                    accepted.sendall(b"steered")
                    assert client.recv(16) == b"steered"
            assert st.counters()["steered"] == 1
            tag = bpfsys.prog_tag(st._fd("prog"))
        return caplog.text, tag

    yield _start
    for sock in made:
        sock.close()


def entries(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


def test_second_start_loads_the_cached_program_without_compiling(
    cache_dir: Path, start: Callable[[], tuple[str, bytes]]
) -> None:
    first, compiled_tag = start()
    assert COMPILED in first and HIT not in first, first
    (entry,) = entries(cache_dir)
    assert f"cached as {entry}" in first
    assert (os.stat(cache_dir).st_mode & 0o7777, os.stat(entry).st_mode & 0o7777) == (0o700, 0o600)

    second, cached_tag = start()
    assert HIT in second and COMPILED not in second, second
    # The kernel's hash of the instructions (map fds left out): the very same bytecode.
    assert cached_tag == compiled_tag
    assert entries(cache_dir) == [entry]


def _truncated(content: bytes) -> bytes:
    return content[: len(content) // 2]


def _tampered(content: bytes) -> bytes:
    """Still JSON, still an image, but one instruction changed: the digest says so."""
    entry = json.loads(content)
    insns = bytearray(base64.b64decode(entry["image"]["insns"]))
    insns[-8] ^= 0x01
    entry["image"]["insns"] = base64.b64encode(bytes(insns)).decode()
    return json.dumps(entry).encode()


@pytest.mark.parametrize(
    "spoil, reason",
    [
        (_truncated, "corrupt"),
        (_tampered, "corrupt (digest mismatch)"),
        ("chown", "owned by uid 65534"),
    ],
)
def test_a_bad_entry_is_ignored_recompiled_and_replaced(
    cache_dir: Path,
    start: Callable[[], tuple[str, bytes]],
    valid_entry: tuple[str, bytes],
    spoil: Callable[[bytes], bytes] | str,
    reason: str,
) -> None:
    name, content = valid_entry
    cache_dir.mkdir(mode=0o700)
    entry = cache_dir / name
    if spoil == "chown":
        entry.write_bytes(content)
        os.chown(entry, 65534, 65534)
    else:
        assert callable(spoil)
        entry.write_bytes(spoil(content))

    logged, _ = start()
    assert f"ignoring the cached BPF program {entry}: {reason}" in logged, logged
    assert COMPILED in logged and HIT not in logged
    # Replaced by a good entry, root's: the next start loads it.
    assert (os.stat(entry).st_uid, os.stat(entry).st_mode & 0o7777) == (0, 0o600)
    logged, _ = start()
    assert HIT in logged and COMPILED not in logged, logged


def test_a_cache_dir_owned_by_another_user_is_not_read_nor_written(
    cache_dir: Path, start: Callable[[], tuple[str, bytes]], valid_entry: tuple[str, bytes]
) -> None:
    # A valid entry in it: reading the directory would load it instead of compiling.
    name, content = valid_entry
    cache_dir.mkdir(mode=0o700)
    (cache_dir / name).write_bytes(content)
    os.chown(cache_dir, 65534, 65534)

    logged, _ = start()
    assert f"BPF program cache not used: {cache_dir} is owned by uid 65534, not root" in logged
    assert COMPILED in logged and HIT not in logged, logged
    assert [p.name for p in entries(cache_dir)] == [name]
    assert (cache_dir / name).read_bytes() == content


def test_the_key_changes_with_the_source_and_what_bcc_compiles_against(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = Path(loader._source_path() or "").read_bytes()
    program: list[object] = ["fastproxy_steer", 30, 36]
    key = cache.cache_key(source, program)
    assert cache.cache_key(source, program) == key  # stable
    assert cache.cache_key(source + b"\n", program) != key
    assert cache.cache_key(source, ["other", 30, 36]) != key
    monkeypatch.setenv("BCC_LINUX_VERSION_CODE", "393216")
    assert cache.cache_key(source, program) != key


def test_an_edited_source_is_compiled_and_cached_beside_the_old(
    cache_dir: Path,
    start: Callable[[], tuple[str, bytes]],
    valid_entry: tuple[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, content = valid_entry
    cache_dir.mkdir(mode=0o700)
    (cache_dir / name).write_bytes(content)
    assert HIT in start()[0]  # the shipped source: cached

    edited = tmp_path / "steer.c"
    shutil.copy(loader._source_path() or "", edited)
    with edited.open("a") as f:
        f.write("// an edit\n")
    monkeypatch.setattr(loader, "_source_path", lambda name="steer.c": str(edited))
    logged, _ = start()
    assert COMPILED in logged and HIT not in logged, logged
    assert len(entries(cache_dir)) == 2
    assert HIT in start()[0]
