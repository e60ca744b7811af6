"""The process's signals, delivered to the main loop as data instead of acted on in
handlers.

Why the handlers do nothing: CPython runs a Python signal handler on the main thread
between two bytecodes, wherever that thread happens to be, including inside a lock it
holds (an Event's condition on the way out of Event.wait or Event.clear, logging's
lock, the access log's). A handler that takes a lock, or calls anything that may
(Event.set, logging, reopening a file), can then wait for that lock on its own thread
for ever: the main loop stops, reloads stop, SIGTERM is ignored. So a handler here only
stores a flag in a preallocated list (no lock, no allocation), and CPython's C-level
handler writes the signal's number into a pipe (signal.set_wakeup_fd) that wakes the
main loop; the loop then acts on what arrived, outside any handler.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
from types import FrameType

# Highest signal number we may be asked to watch (NSIG is 65 on Linux).
_NSIG = getattr(signal, "NSIG", 65)


class SignalInbox:
    """Watches `signals` while open (main thread only, as CPython requires):
    `wait(timeout)` returns the signals that arrived since the last call, oldest first,
    each once however often it came."""

    def __init__(self, signals: tuple[signal.Signals, ...]) -> None:
        self._signals = signals
        # A flag per signal number, set by the handler: the pipe alone could drop a
        # signal if a flood filled it before the loop read it.
        self._seen = [False] * _NSIG
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._read_fd, select.POLLIN)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous = {sig: signal.signal(sig, self._handler) for sig in signals}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        # Runs between two bytecodes of whatever the main thread was doing: a list store
        # takes no lock and allocates nothing. Nothing else may happen here.
        self._seen[signum] = True

    def wait(self, timeout: float) -> list[signal.Signals]:
        """Sleep until a signal arrives or `timeout` seconds pass (0: just look)."""
        with contextlib.suppress(InterruptedError):
            self._poll.poll(max(0, int(timeout * 1000)))
        self._drain_pipe()
        arrived = [sig for sig in self._signals if self._seen[sig]]
        for sig in arrived:
            self._seen[sig] = False
        return arrived

    def _drain_pipe(self) -> None:
        while True:
            try:
                if not os.read(self._read_fd, 4096):
                    return
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    return
                raise

    def close(self, ignore: tuple[signal.Signals, ...] = ()) -> None:
        """Put back the handlers and the wakeup fd that were there before; the signals
        in `ignore` are ignored instead (a SIGHUP's default action is to kill)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if sig in ignore else handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._read_fd)
        os.close(self._write_fd)

    def __enter__(self) -> SignalInbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
