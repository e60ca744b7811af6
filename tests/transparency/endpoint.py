"""One end of a scenario's connection: its script on one thread, its reads on another,
and what it observed.

Urgent bytes: no socket sets SO_OOBINLINE, so a receiver's recv() steps over an urgent
byte as Linux does by default, and the relay drops it likewise. Data bytes never take the
urgent byte's value (0xff): a receiver counts any 0xff it sees (Linux turns an earlier
urgent byte into data when a newer mark overtakes it unread) and leaves it out of the
stream it hashes, so "every data byte, in order, once" is exact whatever urgent bytes did.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import random
import select
import socket
import struct
import termios
import threading
import time
from dataclasses import dataclass

from transparency.scenario import Side

URGENT = b"\xff"
PERIOD = 65521  # a prime: a shifted or repeated block shows in the checksum
MAX_WRITE = 4 << 20
TCP_CLOSE = 7  # tcpi_state


def _pattern(seed: int) -> bytes:
    block = random.Random(seed).randbytes(PERIOD).replace(URGENT, b"\x00")
    return block * (MAX_WRITE // PERIOD + 2)


# What each end sends, by the name of the sender: a different stream for each direction.
STREAMS = {"client": _pattern(1), "target": _pattern(2)}


def chunk(sender: str, offset: int, n: int) -> memoryview:
    start = offset % PERIOD
    return memoryview(STREAMS[sender])[start : start + n]


@functools.lru_cache(maxsize=4096)
def expected_digest(sender: str, n: int) -> str:
    """sha256 of the first n data bytes `sender` writes."""
    digest = hashlib.sha256()
    offset = 0
    while offset < n:
        step = min(n - offset, MAX_WRITE)
        digest.update(chunk(sender, offset, step))
        offset += step
    return digest.hexdigest()


@dataclass
class Obs:
    """What one end observed."""

    got: int = 0  # data bytes received (urgent bytes not counted)
    digest: str = hashlib.sha256().hexdigest()
    urgent_inline: int = 0  # urgent bytes that came as data
    end: str = "none"  # eof | reset | cut (its own end stopped it) | timeout | none (never read)
    wrote: int = 0  # data bytes its writes handed to the kernel
    write_error: str = ""  # errno name of its first failed write or shutdown

    def reading(self) -> str:
        return f"{self.got} then {self.end}"


def _errname(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    return errno.errorcode.get(exc.errno or 0, str(exc))


def _ioctl_int(sock: socket.socket, request: int) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0\0\0\0"))[0]


def _closed(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_CLOSE


class End:
    """Runs one Side on a connected socket; `obs` holds what it saw once joined."""

    def __init__(self, name: str, sock: socket.socket, side: Side, timeout: float) -> None:
        self.name = name
        self.sock = sock
        self.side = side
        self.obs = Obs()
        self.deadline = time.monotonic() + timeout
        sock.settimeout(timeout)
        self._cut = ""  # why the reads were stopped: "cut" (its own end) or "timeout"
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._script = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        if self.side.reader != "never":
            self._reader.start()
        self._script.start()

    def join(self) -> None:
        self._script.join(max(0.0, self.deadline - time.monotonic()) + 5)
        if self._reader.is_alive():
            self._reader.join(5)

    # The reads
    def _read(self) -> None:
        slow = self.side.reader == "slow"
        size = 4096 if slow else 1 << 20
        digest = hashlib.sha256()
        obs = self.obs
        try:
            while True:
                data = self.sock.recv(size)
                if not data:
                    obs.end = self._cut or "eof"
                    break
                if URGENT in data:
                    obs.urgent_inline += data.count(URGENT)
                    data = data.replace(URGENT, b"")
                digest.update(data)
                obs.got += len(data)
                if slow:
                    time.sleep(self.side.slow_ms / 1000)
        except OSError as exc:
            obs.end = self._cut or _errname(exc)
            if obs.end in ("ECONNRESET", "EPIPE"):
                obs.end = "reset"
        obs.digest = digest.hexdigest()

    # The script
    def _run(self) -> None:
        try:
            for act in self.side.acts:
                if act[0] == "w":
                    self._write(int(act[1:]))
                elif act == "u":
                    self.sock.send(URGENT, socket.MSG_OOB)
                else:
                    time.sleep(int(act[1:]) / 1000)
            self._end()
        except OSError as exc:
            self.obs.write_error = _errname(exc)
            self._finish_reading()
            self.sock.close()

    def _write(self, n: int) -> None:
        view = chunk(self.name, self.obs.wrote, n)
        while view:
            sent = self.sock.send(view)
            self.obs.wrote += sent
            view = view[sent:]

    def _end(self) -> None:
        end = self.side.end
        if end.startswith("fin"):
            self.sock.shutdown(socket.SHUT_WR)
        if end == "fin":
            self._finish_reading()
            self.sock.close()
            return
        self._wait(lambda: _ioctl_int(self.sock, termios.TIOCOUTQ) == 0)  # all acknowledged
        if end.endswith("close-unread"):
            # Readable, not FIONREAD: that says 0 while an urgent byte is the next one.
            self._wait(lambda: select.select([self.sock], [], [], 0)[0])
        else:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._cut_reading()
        self.sock.close()

    def _wait(self, done: object) -> None:
        """Until done() or the connection is gone (a reset) or the deadline."""
        while not done() and not _closed(self.sock) and time.monotonic() < self.deadline:  # type: ignore[operator]
            time.sleep(0.002)

    def _finish_reading(self) -> None:
        if self._reader.is_alive():
            self._reader.join(max(0.0, self.deadline - time.monotonic()))
        self._cut_reading("timeout")

    def _cut_reading(self, why: str = "cut") -> None:
        """Stop the reads where they are: SHUT_RD sends nothing, it wakes recv() with 0."""
        if self._reader.is_alive():
            self._cut = why
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RD)
            self._reader.join(5)
