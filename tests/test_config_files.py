"""A config path that is not a config file (a FIFO, a directory, a huge file, bytes
that are not UTF-8) fails a reload with one line and never blocks or kills the proxy."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fastproxy.backends import NamedEchoServer
from proxyproc import Proxy, app, free_ports
from servers import talk


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _huge(path: Path) -> None:
    with open(path, "wb") as f:
        f.truncate((16 << 20) + 1)


def _not_utf8(path: Path) -> None:
    path.write_bytes(b'{"Apps": "\xff\xfe"}')


BAD_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (_fifo, "is a FIFO (named pipe), expected a JSON file"),
    "directory": (Path.mkdir, "is a directory, expected a JSON file"),
    "huge": (_huge, "is larger than 16 MiB, too large for a config file"),
    "not-utf8": (_not_utf8, "not UTF-8 text (bad byte at offset 10)"),
}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_reload_from_a_bad_path_fails_and_keeps_serving(tmp_path: Path, kind: str) -> None:
    make, reason = BAD_FILES[kind]
    backend = NamedEchoServer("b")
    (port,) = free_ports(1)
    config = {"Apps": [app("a", [port], [f"127.0.0.1:{backend.port}"])]}
    proxy = Proxy(tmp_path, config)
    try:
        _remove(proxy.config_path)
        make(proxy.config_path)
        proxy.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while proxy.status()["reloads"]["failure"] < 1:
            assert time.monotonic() < deadline, proxy.log()
            time.sleep(0.05)
        assert talk(port, b"still here") == b"b\nstill here"
        assert f"{proxy.config_path}: {reason}" in proxy.log()
        assert "Traceback" not in proxy.log()
        # and it comes back once the file is a file again
        _remove(proxy.config_path)
        proxy.write_config(
            {"Steering": "ports", "Listen": "127.0.0.1", "Admin": "127.0.0.1:0", **config}
        )
        proxy.proc.send_signal(signal.SIGHUP)
        while proxy.status()["reloads"]["success"] < 1:
            assert time.monotonic() < deadline, proxy.log()
            time.sleep(0.05)
        assert proxy.stop() == 0
    finally:
        backend.close()
