"""Test backends with behaviour the package's NamedEchoServer does not have."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import struct
import threading
from collections.abc import Callable, Iterable


class Backend:
    """A threaded TCP server running `handler(conn)` for every connection."""

    def __init__(self, handler: Callable[[socket.socket], None], host: str = "127.0.0.1"):
        self.handler = handler
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(1024)
        self.port: int = self.sock.getsockname()[1]
        self.address = f"{host}:{self.port}"
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class HashingEcho:
    """Echoes everything and records the sha256 of what it received."""

    def __init__(self) -> None:
        self.digests: list[str] = []
        self.backend = Backend(self.handle)
        self.address = self.backend.address

    def handle(self, conn: socket.socket) -> None:
        digest = hashlib.sha256()
        while data := conn.recv(1 << 20):
            digest.update(data)
            conn.sendall(data)
        self.digests.append(digest.hexdigest())  # before the FIN: the client checks after it
        conn.shutdown(socket.SHUT_WR)


class RecordingEcho:
    """Echoes everything and keeps every byte it received, per connection."""

    def __init__(self) -> None:
        self.streams: list[bytes] = []
        self.backend = Backend(self.handle)
        self.address = self.backend.address

    def handle(self, conn: socket.socket) -> None:
        stream = bytearray()
        while data := conn.recv(1 << 20):
            stream += data
            conn.sendall(data)
        self.streams.append(bytes(stream))  # before the FIN: the client checks after it
        conn.shutdown(socket.SHUT_WR)


def reset(conn: socket.socket) -> None:
    """Close with RST instead of FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def talk(port: int, payload: bytes, host: str = "127.0.0.1", source: str | None = None) -> bytes:
    """One client: connect, send, half-close, and return everything received."""
    with socket.create_connection(
        (host, port), timeout=10, source_address=(source, 0) if source else None
    ) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def send_and_read_back(
    port: int, chunks: Iterable[bytes], received: Callable[[bytes], object]
) -> None:
    """One client: send every chunk and half-close, while a thread hands every chunk
    that comes back to `received`, until the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:

        def read() -> None:
            while chunk := sock.recv(1 << 20):
                received(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        for chunk in chunks:
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        reader.join(120)
