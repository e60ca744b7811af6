"""`fastproxy demo`: everything a newcomer needs to watch traffic flow, on loopback."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections import Counter
from importlib import resources

from .backends import NamedEchoServer
from .config import load_config
from .server import Server
from .signals import SignalInbox

log = logging.getLogger("fastproxy")


def _ask(port: int, message: bytes) -> tuple[str, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(message)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    name, _, echo = data.partition(b"\n")
    return name.decode(), echo


def default_config() -> str:
    """The demo config: shipped in the package (setup.py copies examples/demo.json into
    fastproxy/examples/), else the source checkout's."""
    shipped = resources.files("fastproxy") / "examples" / "demo.json"
    if shipped.is_file():
        return str(shipped)  # a wheel installs files: a path of its own
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, os.pardir, os.pardir, "examples", "demo.json"))


def run_demo(config_path: str, *, connections: int) -> int:
    config = load_config(config_path)
    backends = []
    for app in config.apps:
        for target in app.targets:
            if target.host in ("127.0.0.1", "localhost"):
                name = f"{app.name}/{target.address}"
                backends.append(NamedEchoServer(name, "127.0.0.1", target.port))
    server = Server(config)
    server.start()
    print(f"demo: {len(backends)} backends started on loopback; proxy serving.")
    for app in config.apps:
        seen: Counter[str] = Counter()
        for i in range(connections):
            port = app.ports[i % len(app.ports)]
            message = f"hello #{i} via port {port}".encode()
            try:
                name, echo = _ask(port, message)
                seen[name if echo == message else f"{name} (bad echo!)"] += 1
            except OSError as exc:
                seen[f"failed: {exc}"] += 1
        print(f"demo: app {app.name}: {connections} connections -> {dict(seen)}")
    for app in config.apps:
        stats = server.routes.stats(server.routes.apps[app.name].slot)
        print(
            f"demo: app {app.name}: bytes in {stats['bytes_in']}, out {stats['bytes_out']}, "
            f"connections {stats['connections']}"
        )
    # Watched before saying so: a signal right after the line stops the demo too. No
    # Event.set in a handler: it could wait on a lock its own thread holds (signals.py).
    with SignalInbox((signal.SIGINT, signal.SIGTERM)) as inbox:
        port = config.apps[0].ports[0]
        print(f"demo: try it yourself: nc 127.0.0.1 {port}   (Ctrl-C stops the demo)", flush=True)
        while not inbox.wait(0.5):
            pass
    server.stop_accepting()
    server.drain(2.0)
    server.close()
    for backend in backends:
        backend.close()
    time.sleep(0.1)
    return 0
