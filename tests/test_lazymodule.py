"""lazymodule.lazy: a module imported at its first use, and a first use that fails
because the process is out of descriptors (a real EMFILE, in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

# Run in a fresh interpreter: h11 must not be imported yet, and the descriptor limit
# lowered here must not touch pytest's process.
PROGRAM = r"""
import os, resource, sys
from fastproxy.lazymodule import lazy

assert "h11" not in sys.modules
h11 = lazy("h11")
assert "h11" not in sys.modules, "lazy() imported it at once"

resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
try:
    h11.Connection
except OSError as exc:
    print("first use:", type(exc).__name__, exc.errno)
else:
    print("first use: imported with no descriptor free")
for fd in held:
    os.close(fd)
# Descriptors are back: the same placeholder must now give the real module.
import h11 as real
print("second use:", h11.Connection is real.Connection, h11.Request is real.Request)
"""


def test_a_first_use_that_fails_for_want_of_descriptors_is_retried() -> None:
    """Catches importlib's LazyLoader (the old lazy()): its failed first use leaves an
    empty module behind for good, and the admin endpoint answered no one until a
    restart once its first request came while the process was out of descriptors."""
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["first use: OSError 24", "second use: True True"]


def test_a_module_that_is_not_installed_fails_at_once() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from fastproxy.lazymodule import lazy; lazy('no_such_mod')"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "ModuleNotFoundError: No module named 'no_such_mod'" in done.stderr
