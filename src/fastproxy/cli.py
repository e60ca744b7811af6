"""`fastproxy` command line: a thin click layer over server.run() and friends.
Expected failures print one line, `error: ...`, and exit non-zero; never a traceback."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from . import __version__
from .config import RELAY_MODES, STEERING_MODES, ConfigError, load_config, summary
from .listeners import ListenError


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s fastproxy %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _fail(message: Any, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fastproxy")
def main() -> None:
    """fastproxy: a zero-copy TCP proxy and load balancer for Linux."""


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--steering", type=click.Choice(STEERING_MODES), help="Override Steering.")
@click.option("--workers", type=click.IntRange(1, 1024), help="Relay threads (default: CPUs).")
@click.option("--relay", type=click.Choice(RELAY_MODES), help="splice (zero copy) or copy.")
@click.option("--pipe-size", type=click.IntRange(4096, 1 << 20), help="Pipe size in bytes.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def serve(config: str, log_level: str, **overrides: Any) -> None:
    """Run the proxy in the foreground until SIGTERM or SIGINT."""
    from .server import run  # the relay extension loads only when serving

    _setup_logging(log_level)
    try:
        code = run(config, **overrides)
    except (ConfigError, ListenError) as exc:
        _fail(exc, 2 if isinstance(exc, ConfigError) else 1)
    sys.exit(code)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
def check(config: str) -> None:
    """Validate CONFIG and print a summary; exit non-zero when it is invalid."""
    try:
        parsed = load_config(config)
    except ConfigError as exc:
        _fail(exc, 2)
    click.echo(summary(parsed))


@main.command()
@click.argument("config", type=click.Path(dir_okay=False), default="examples/demo.json")
@click.option("--connections", default=12, show_default=True, help="Demo clients per app.")
def demo(config: str, connections: int) -> None:
    """Start demo backends for CONFIG's loopback targets, the proxy, and some
    traffic to show it flowing; then keep serving until Ctrl-C."""
    from .demo import run_demo

    _setup_logging("info")
    try:
        sys.exit(run_demo(config, connections=connections))
    except (ConfigError, ListenError) as exc:
        _fail(exc, 2 if isinstance(exc, ConfigError) else 1)


if __name__ == "__main__":
    main()
