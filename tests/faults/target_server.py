"""A target as a process of its own, so a test can kill it with SIGKILL mid-stream.

    python target_server.py HOST PORT MODE

MODE: `echo` (echo everything, then FIN), `sink` (read to EOF, answer the sha256 hex
and the byte count), `source` (read "COUNT SEED\\n", send that many pattern bytes),
`paced` (as `source`, 8 KiB every 10 ms, about 0.8 MB/s: a stream of a few MiB is
still in flight seconds later; its connections close with a reset when it dies, as a
crashed server's do when bytes it never read are left on them), `noread` (accept and
never read). Prints "ready" once listening."""

from __future__ import annotations

import hashlib
import socket
import struct
import sys
import threading
import time

from pattern import pattern_chunks


def echo(conn: socket.socket) -> None:
    while data := conn.recv(1 << 18):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def sink(conn: socket.socket) -> None:
    digest, count = hashlib.sha256(), 0
    while data := conn.recv(1 << 18):
        digest.update(data)
        count += len(data)
    conn.sendall(f"{digest.hexdigest()} {count}\n".encode())
    conn.shutdown(socket.SHUT_WR)


def source(conn: socket.socket, pause: float = 0.0) -> None:
    request = b""
    while not request.endswith(b"\n"):
        data = conn.recv(64)
        if not data:
            return
        request += data
    count, seed = request.split()
    for chunk in pattern_chunks(int(seed), 0, int(count)):
        conn.sendall(chunk)
        if pause:
            time.sleep(pause)
    conn.shutdown(socket.SHUT_WR)


def paced(conn: socket.socket) -> None:
    # SO_LINGER 0: when the process dies, the kernel resets the connection.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    source(conn, pause=0.01)


def noread(conn: socket.socket) -> None:
    while True:
        time.sleep(3600)


def serve(conn: socket.socket, handler) -> None:  # type: ignore[no-untyped-def]
    try:
        handler(conn)
    except OSError:
        pass
    finally:
        conn.close()


def main() -> None:
    host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    handlers = {"echo": echo, "sink": sink, "source": source, "paced": paced, "noread": noread}
    handler = handlers[mode]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(4096)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, handler), daemon=True).start()


if __name__ == "__main__":
    main()
