"""Notices a main loop that has stopped turning, so that a hang is seen from outside.

The main loop acts on signals (reload, stop, log reopen) and on a successor's takeover;
the relay and the admin endpoint run on their own threads and would go on serving while
it is stuck, hiding the hang. The loop calls `beat()` every turn (a plain store, no
lock); a thread of our own checks the age of the last beat. Past `stall_after` seconds,
`stalled()` reports it (for /healthz to answer 503) and the main thread's stack is
logged once, with every other thread's, so the operator sees where it is stuck.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

log = logging.getLogger("fastproxy")

STALL_AFTER = 5.0  # seconds; the loop turns at least every 0.2 s when well


class MainLoopWatchdog:
    def __init__(self, stall_after: float = STALL_AFTER) -> None:
        self.stall_after = stall_after
        self._last_beat = time.monotonic()
        self._main = threading.main_thread()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fp-watchdog", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> None:
        """Called by the main loop each turn. A float store: safe anywhere."""
        self._last_beat = time.monotonic()

    def stalled(self) -> float | None:
        """Seconds since the last turn when that is too long, else None."""
        age = time.monotonic() - self._last_beat
        return age if age > self.stall_after and not self._stop.is_set() else None

    def _watch(self) -> None:
        reported = False
        while not self._stop.wait(min(1.0, self.stall_after / 4)):
            age = self.stalled()
            if age is None:
                if reported:
                    log.warning("main loop turning again")
                reported = False
            elif not reported:
                reported = True
                log.error(
                    "main loop stuck for %.1fs (reloads and signals are not acted on); "
                    "its stack:\n%s",
                    age,
                    self._stacks(),
                )

    def _stacks(self) -> str:
        import traceback  # only once stuck: start-up is counted in milliseconds

        frames = sys._current_frames()
        parts = []
        main = frames.get(self._main.ident or -1)
        if main is not None:
            parts.append("".join(traceback.format_stack(main)))
        for thread in threading.enumerate():
            frame = frames.get(thread.ident or -1)
            if thread is self._main or frame is None or thread.name == "fp-watchdog":
                continue
            parts.append(f"thread {thread.name}:\n" + "".join(traceback.format_stack(frame)))
        return "\n".join(parts)
