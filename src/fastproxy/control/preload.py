"""Modules the running proxy imports late, loaded before it drops root (`User`).

Start-up loads some modules at their first use (a config mistake's did-you-mean, the
first scrape, the first admin request). After the drop the user may not be able to
read the interpreter's files: a Python under root's 0700 home (pyenv) is one, and then
the first scrape answered 500 and a reload with a typo failed with "internal error".
A start that drops pays for these imports, once, before it drops; one that does not
drop keeps them lazy."""

from __future__ import annotations

import importlib

# Each with what needs it after the drop.
LATE_IMPORTS = (
    ("difflib", "a config mistake's did-you-mean, at a reload"),
    ("tomllib", "a TOML config, at a reload"),
    ("encodings.idna", "resolving a target's host name (a reload's first one)"),
    ("concurrent.futures.thread", "the resolver's threads (concurrent.futures loads it late)"),
    ("traceback", "the watchdog's dump of a stuck main loop"),
    ("h11", "the admin endpoint's HTTP (loaded lazily by httpconn)"),
    ("prometheus_client", "/metrics"),
    ("fastproxy.observe.metrics", "/metrics"),
    ("fastproxy.observe.exposition", "/metrics"),
)


def load_late_imports() -> None:
    # The real modules: a lazy placeholder (lazymodule.py) is never in sys.modules.
    for name, _why in LATE_IMPORTS:
        importlib.import_module(name)
