"""`fastproxy` command line: a thin click layer over process.run() and friends.
Expected failures print one line, `error: ...`, and exit non-zero; never a traceback."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from . import __version__
from .cluster.flags import etcd_options
from .cluster.options import DEFAULT_CACHE_DIR, LEASE_TTL, ClusterOptions, Security, is_etcd_url
from .config import (
    RELAY_MODES,
    STEERING_MODES,
    Config,
    ConfigError,
    format_ports,
    load_config,
    load_local_config,
    parse_host_port,
    summary,
)
from .control import adminsocket
from .control.admin import TARGET_ACTIONS
from .control.adminsocket import DEFAULT_PATH as DEFAULT_ADMIN_SOCKET
from .control.admintoken import DEFAULT_PATH as DEFAULT_TOKEN_FILE
from .control.admintoken import TokenError, read_token
from .control.handover import DEFAULT_PATH as DEFAULT_CONTROL_SOCKET
from .control.handover import TakeoverError
from .control.privileges import PrivilegeError
from .listeners.sockets import ListenError
from .wording import plural


def _setup_logging(level: str, fmt: str = "text") -> None:
    from .observe.logsetup import setup

    setup(level, fmt)


def _fail(message: Any, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Commands(click.Group):
    """The top-level commands. `config` and `cluster` (etcd's commands, cluster/cli.py)
    are imported only when one of them is run or listed: `serve` must not pay for them."""

    lazy = {"config": "config_group", "cluster": "cluster_group"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            from .cluster import cli as cluster_cli

            command: click.Command = getattr(cluster_cli, self.lazy[cmd_name])
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="fastproxy")
def main() -> None:
    """fastproxy: a zero-copy TCP proxy and load balancer for Linux."""


@main.command()
@click.argument("config", type=click.Path())
@click.option("--steering", type=click.Choice(STEERING_MODES), help="Override Steering.")
@click.option("--workers", type=click.IntRange(1, 1024), help="Relay threads (default: CPUs).")
@click.option(
    "--relay",
    type=click.Choice(RELAY_MODES),
    help="splice (zero copy) or copy (recv/send).",
)
@click.option("--pipe-size", type=click.IntRange(4096, 1 << 20), help="Pipe size in bytes.")
@click.option("--admin", metavar="HOST:PORT", help="Admin endpoint (default 127.0.0.1:9901).")
@click.option(
    "--admin-socket",
    default=DEFAULT_ADMIN_SOCKET,
    show_default=True,
    help="Unix socket serving the admin API too (0600, the proxy's user): the CLI's way in.",
)
@click.option(
    "--takeover",
    is_flag=True,
    help="Zero-downtime upgrade: take the listening sockets of the running fastproxy.",
)
@click.option(
    "--control-socket",
    default=DEFAULT_CONTROL_SOCKET,
    show_default=True,
    help="Unix socket a successor takes over through.",
)
@click.option(
    "--instance-id",
    help="With an etcd:// CONFIG: this instance's name in the cluster (default HOSTNAME-PID).",
)
@click.option(
    "--cache-dir",
    default=DEFAULT_CACHE_DIR,
    show_default=True,
    help="With an etcd:// CONFIG: where the last applied config is kept for starts without etcd.",
)
@click.option("--lease-ttl", type=click.IntRange(2, 3600), default=LEASE_TTL, hidden=True)
@click.option(
    "--state-dir",
    default=DEFAULT_CACHE_DIR,
    show_default=True,
    help="Where runtime target state (drain, disable, weight) is kept across restarts.",
)
@click.option(
    "--local-config",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="With an etcd:// CONFIG: this host's own settings (Admin, User, AccessLog, Listen...),"
    " which the fleet's config may not set.",
)
@etcd_options
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option(
    "--watch/--no-watch",
    default=True,
    show_default=True,
    help="Reload the config file when it changes (--no-watch: only on SIGHUP or"
    " `fastproxy reload`, so that a half-finished edit never goes live).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: ISO 8601 UTC times (under journald: <N> priority prefixes, no time);"
    " json: one object a line.",
)
def serve(
    config: str,
    log_level: str,
    log_format: str,
    watch: bool,
    instance_id: str | None,
    cache_dir: str,
    lease_ttl: int,
    local_config: str | None,
    security: Security,
    state_dir: str,
    **overrides: Any,
) -> None:
    """Run the proxy in the foreground until SIGTERM or SIGINT. CONFIG is a file, or
    etcd[s]://HOST:PORT[,HOST:PORT...]/PREFIX to serve a fleet's config from etcd."""
    from .process import run  # the relay extension loads only when serving

    _setup_logging(log_level, log_format)
    try:
        local = {}
        if local_config is not None:
            if not is_etcd_url(config):
                raise ConfigError("--local-config goes with an etcd:// CONFIG (a file has it all)")
            local = load_local_config(local_config)
        cluster = ClusterOptions(instance_id, cache_dir, lease_ttl, security, local)
        if overrides.get("admin") is not None:
            overrides["admin"] = _admin_address(overrides["admin"])
        code = run(config, cluster=cluster, watch=watch, state_dir=state_dir, **overrides)
    except (ConfigError, ListenError, TakeoverError, PrivilegeError, TokenError) as exc:
        _fail(exc, 2 if isinstance(exc, ConfigError) else 1)
    except KeyboardInterrupt:  # Ctrl-C while waiting for etcd, before serving
        sys.exit(130)
    sys.exit(code)


@main.command()
@click.argument("config", type=click.Path())
def check(config: str) -> None:
    """Validate CONFIG and print a summary; exit non-zero when it is invalid."""
    from .plausibility import warnings
    from .tlsconfig import load_contexts

    try:
        parsed = load_config(config)
        load_contexts(parsed)  # certificates and keys: what serving them would load
    except ConfigError as exc:
        _fail(exc, 2)
    click.echo(summary(parsed))
    for warning in warnings(parsed):
        click.echo(f"warning: {warning}", err=True)


def _admin_address(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text, allow_port_zero=True)
    except ConfigError as exc:
        raise ConfigError(f"--admin: {exc}") from None


# -- talking to a running proxy ----------------------------------------------------

admin_option = click.option(
    "--admin",
    metavar="HOST:PORT",
    help="Talk to the admin endpoint over TCP instead (POSTs then send the token to"
    " whoever holds that port).",
)
admin_socket_option = click.option(
    "--admin-socket",
    metavar="PATH",
    default=DEFAULT_ADMIN_SOCKET,
    show_default=True,
    help="The running proxy's admin unix socket (used unless --admin is given).",
)
config_option = click.option(
    "--config",
    "config_path",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="The running proxy's config file: its AdminTokenFile is used.",
)
token_option = click.option(
    "--token-file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help=f"Admin token (default: AdminTokenFile of --config, else {DEFAULT_TOKEN_FILE}).",
)


def _unix_connection(path: str, timeout: float) -> Any:
    """An http.client connection over the admin unix socket, to a peer checked by
    adminsocket.connect (http.client is imported only when needed)."""
    import http.client

    class UnixHTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = adminsocket.connect(path, timeout)

    return UnixHTTPConnection("localhost", timeout=timeout)


class _Endpoint:
    """Where the running proxy's admin endpoint is (its unix socket unless a TCP
    address is given), and its token when needed."""

    def __init__(self, admin: str | None, admin_socket: str, config_path: str | None) -> None:
        self.config: Config | None = None
        if config_path is not None:
            try:
                self.config = load_config(config_path)
            except ConfigError as exc:
                _fail(exc, 2)
        self.address: tuple[str, int] | None = None
        self.path = admin_socket
        if admin is not None:
            try:
                self.address = _admin_address(admin)
            except ConfigError as exc:
                _fail(exc, 2)

    def token(self, token_file: str | None) -> str:
        path = token_file or (self.config.admin_token_file if self.config else DEFAULT_TOKEN_FILE)
        try:
            return read_token(path)
        except TokenError as exc:
            _fail(exc)
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, token: str | None = None) -> tuple[int, bytes]:
        import http.client

        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        conn: http.client.HTTPConnection
        if self.address is None:
            where = self.path
            conn = _unix_connection(self.path, timeout=30)
        else:
            host, port = self.address
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        except adminsocket.AdminSocketError as exc:
            _fail(exc)
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            hint = " (is fastproxy running? see --admin-socket)" if self.address is None else ""
            _fail(f"cannot reach the admin endpoint at {where}: {reason}{hint}")
        finally:
            conn.close()
        raise AssertionError("unreachable")

    def post(self, path: str, token_file: str | None, what: str) -> dict[str, Any]:
        """POST with the token; the JSON answer, or a one-line error and exit."""
        import json

        code, body = self.request("POST", path, self.token(token_file))
        try:
            answer = json.loads(body)
        except ValueError:
            answer = {"error": body.decode(errors="replace").strip()}
        if code == 200:
            return dict(answer)
        if code == 401:
            _fail(
                f"{what} refused: the admin endpoint does not accept the token (see --token-file)"
            )
        _fail(f"{what} rejected: {answer.get('error', '')}")
        raise AssertionError("unreachable")


@main.command()
@admin_option
@admin_socket_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw /status JSON.")
def status(admin: str | None, admin_socket: str, config_path: str | None, as_json: bool) -> None:
    """Apps, ports and targets of a running proxy, with health and connections.
    A read: no token needed."""
    import json

    code, body = _Endpoint(admin, admin_socket, config_path).request("GET", "/status")
    if code != 200:
        _fail(f"admin endpoint answered {code}: {body.decode(errors='replace').strip()}")
    if as_json:
        click.echo(body.decode())
        return
    click.echo(format_status(json.loads(body)))


def format_status(status: dict[str, Any]) -> str:
    lines = [
        f"fastproxy {status['version']} (pid {status.get('pid')}), steering {status['steering']}, "
        f"relay {status.get('relay')}, " + plural(status.get("connections", 0), "open connection")
    ]
    header = f"  {'TARGET':<40} {'STATE':<9} {'ACTIVE':>7} {'TOTAL':>9} {'FAILED':>7}"
    for app in status["apps"]:
        lines.append("")
        lines.append(
            f"{app['name']}  ports {format_ports(app['ports'])}  balance {app['balance']}  "
            f"active {app['active']}  total {app['connections']}  "
            f"in {app['bytes_in']} B  out {app['bytes_out']} B"
        )
        lines.append(header)
        for t in app["targets"]:
            lines.append(
                f"  {t['address']:<40} {t['state']:<9} {t['active']:>7} "
                f"{t['connections']:>9} {t['connect_failures']:>7}{_target_notes(t)}"
            )
    if status.get("restart_required"):
        lines.append("")
        lines.append(f"needs a restart to apply: {', '.join(status['restart_required'])}")
    return "\n".join(lines)


def _target_notes(target: dict[str, Any]) -> str:
    """Weight and backup when not the default, and why the last check failed."""
    notes = []
    if target.get("weight", 1) != 1:
        notes.append(f"weight {target['weight']}")
    if target.get("backup"):
        notes.append("backup")
    check = target.get("last_check")
    if check and not check["ok"]:
        notes.append(f"check: {check['error']}")
    return "  " + ", ".join(notes) if notes else ""


@main.command()
@admin_option
@admin_socket_option
@config_option
@token_option
def reload(
    admin: str | None, admin_socket: str, config_path: str | None, token_file: str | None
) -> None:
    """Ask the running proxy to reload its config file. Exit 0 when all of it is in
    force; 3 when some changed settings need a restart (named); 1 when rejected."""
    answer = _Endpoint(admin, admin_socket, config_path).post("/reload", token_file, "reload")
    pending = answer.get("restart_required") or []
    if pending:
        click.echo(
            f"reloaded, except what needs a restart to take effect: {', '.join(pending)}",
            err=True,
        )
        sys.exit(3)
    click.echo("reloaded")


@main.group()
def target() -> None:
    """Runtime control of one target of an app in the running proxy."""


TARGET_HELP = {
    "drain": "No new connections to TARGET of APP; open ones finish; checks go on.",
    "disable": "No new connections to TARGET of APP; open ones finish; no checks.",
    "enable": "Put TARGET of APP back in rotation (after drain or disable).",
}


def _target_command(action: str) -> click.Command:
    @click.argument("app")
    @click.argument("target_address", metavar="TARGET")
    @admin_option
    @admin_socket_option
    @config_option
    @token_option
    def command(
        app: str,
        target_address: str,
        admin: str | None,
        admin_socket: str,
        config_path: str | None,
        token_file: str | None,
        close: bool = False,
    ) -> None:
        from urllib.parse import quote

        path = f"/targets/{quote(app, safe='')}/{quote(target_address, safe='')}/{action}"
        if close:
            path += "?close=1"
        answer = _Endpoint(admin, admin_socket, config_path).post(path, token_file, action)
        click.echo(f"app {answer.get('app')}: target {answer.get('target')}: {answer.get('state')}")

    command.__doc__ = TARGET_HELP[action] + " TARGET is host:port, as in the config."
    if action == "disable":
        command = click.option(
            "--close",
            is_flag=True,
            help="Also close its open connections (each worker closes its own within"
            " the app's health-check interval).",
        )(command)
    return click.command(action)(command)


for _action in TARGET_ACTIONS:
    target.add_command(_target_command(_action))


@target.command("weight")
@click.argument("app")
@click.argument("target_address", metavar="TARGET")
@click.argument("weight", type=click.IntRange(1, 1000))
@admin_option
@admin_socket_option
@config_option
@token_option
def target_weight(
    app: str,
    target_address: str,
    weight: int,
    admin: str | None,
    admin_socket: str,
    config_path: str | None,
    token_file: str | None,
) -> None:
    """Set the weight of TARGET of APP at run time (1..1000); kept across restarts
    (in --state-dir) until the config changes that target."""
    from urllib.parse import quote

    path = f"/targets/{quote(app, safe='')}/{quote(target_address, safe='')}/weight/{weight}"
    answer = _Endpoint(admin, admin_socket, config_path).post(path, token_file, "weight")
    click.echo(
        f"app {answer.get('app')}: target {answer.get('target')}: weight {answer.get('weight')}"
    )


@main.command()
@click.argument("config", type=click.Path(dir_okay=False), required=False)
@click.option("--connections", default=12, show_default=True, help="Demo clients per app.")
def demo(config: str | None, connections: int) -> None:
    """Start demo backends for CONFIG's loopback targets, the proxy, and some
    traffic to show it flowing; then keep serving until Ctrl-C. CONFIG defaults to
    the demo config installed with fastproxy (examples/demo.json)."""
    from .demo import default_config, run_demo

    _setup_logging("info")
    try:
        sys.exit(run_demo(config or default_config(), connections=connections))
    except (ConfigError, ListenError, TokenError) as exc:
        _fail(exc, 2 if isinstance(exc, ConfigError) else 1)


@main.command("systemd-unit")
@click.option(
    "--config",
    "config_path",
    default="/etc/fastproxy/fastproxy.json",
    show_default=True,
    help="The config the unit serves (checked before start and reload).",
)
def systemd_unit(config_path: str) -> None:
    """Print a systemd unit for this installation (its own entry point). Install it with
    `fastproxy systemd-unit > /etc/systemd/system/fastproxy.service`."""
    from .systemd_unit import entry_point, unit_text

    click.echo(unit_text(entry_point(), os.path.abspath(config_path)), nl=False)


if __name__ == "__main__":
    main()
