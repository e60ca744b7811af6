"""A TLS client for bulk tests: sends and reads in one thread. Python's ssl does not
lock its SSL object, so a reader thread and a writer thread on one SSLSocket race inside
OpenSSL (seen here: stalls with the reader's socket full and the reader asleep)."""

from __future__ import annotations

import hashlib
import selectors
import ssl
import time


def exchange(sock: ssl.SSLSocket, data: bytes, timeout: float = 60.0) -> tuple[str, int]:
    """Send `data` and read as much back, in one thread (an SSL object must not be
    used by two threads at once): returns (sha256 of what came back, its length)."""
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    view = memoryview(data)
    sent = received = 0
    digest = hashlib.sha256()
    deadline = time.monotonic() + timeout
    while received < len(data):
        if time.monotonic() > deadline:
            raise TimeoutError(f"sent {sent}, received {received} of {len(data)}")
        progress = False
        if sent < len(data):
            try:
                n = sock.send(view[sent : sent + (1 << 18)])
                sent += n
                progress = n > 0
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                pass
        while True:
            try:
                chunk = sock.recv(1 << 18)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            if not chunk:
                raise ConnectionError(f"EOF after {received} of {len(data)}")
            digest.update(chunk)
            received += len(chunk)
            progress = True
        if not progress:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if sent < len(data) else 0)
            sel.modify(sock, events)
            sel.select(1.0)
    sel.close()
    return digest.hexdigest(), received
