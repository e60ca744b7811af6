"""Named points where a test can make a step of a reload or an upgrade fail, to prove
that every failure path leaves the proxy whole (as etcd's gofail does).

`FASTPROXY_FAILPOINTS="reload.routed,takeover.before-ready"` makes each named point
raise FailpointError the first time it is reached (`name*N`: the N-th time);
`name=pause` makes it write "failpoint NAME paused" to stderr and wait there until the
process is killed, so a test can kill -9 it at exactly that step; `name=delay` writes
"failpoint NAME delayed" and goes on after a second (time for a test to send a signal).
Read once at import; unset (as in production) a failpoint costs one test of an empty
dict on a cold path.
"""

from __future__ import annotations

import os
import sys
import threading
import time


class FailpointError(RuntimeError):
    """Raised where a test asked a step to fail."""


PAUSE = 0  # armed count meaning "wait here for ever"
DELAY = -1  # ...meaning "wait a second, then go on"


def _parse(text: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in text.split(","):
        item, _, action = item.strip().partition("=")
        name, _, nth = item.partition("*")
        if name:
            count = int(nth) if nth.isdigit() else 1
            armed[name] = {"pause": PAUSE, "delay": DELAY}.get(action, count)
    return armed


_armed = _parse(os.environ.get("FASTPROXY_FAILPOINTS", ""))
_lock = threading.Lock()


def failpoint(name: str) -> None:
    if not _armed:
        return
    with _lock:
        left = _armed.get(name)
        if left is None:
            return
        if left > 1:
            _armed[name] = left - 1
            return
        if left != PAUSE:
            del _armed[name]
    if left == PAUSE:
        _say(f"failpoint {name} paused")
        while True:
            time.sleep(3600)
    if left == DELAY:
        _say(f"failpoint {name} delayed")
        time.sleep(1.0)
        return
    raise FailpointError(f"failpoint {name}")


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
