"""A module loaded at its first use rather than at import: start-up with 10,000 ports
is counted in milliseconds, and what only the first admin request needs (h11) can wait.

A late import can fail: a process out of descriptors (EMFILE) cannot open the module's
files. importlib's LazyLoader then leaves an empty module behind for good (it turns
the placeholder into a plain module before running the code), so one unlucky moment
broke the admin endpoint until a restart. Here the placeholder stays a placeholder
until the real import succeeds, and a failed import leaves nothing in sys.modules:
the next use tries again."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any


class _Placeholder(ModuleType):
    """Stands for a module until it is imported; reads of its attributes import it."""

    def __getattr__(self, attr: str) -> Any:
        # Only attributes not yet here: after the first success they all are. The
        # import machinery's per-module locks make this safe from any thread.
        module = importlib.import_module(self.__name__)
        self.__dict__.update(vars(module))
        return getattr(module, attr)


def lazy(name: str) -> ModuleType:
    """`name`, imported when one of its attributes is first read."""
    if name in sys.modules:
        return sys.modules[name]
    # Fail now, not at the first use, when it is not installed at all.
    if importlib.util.find_spec(name) is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    return _Placeholder(name)
