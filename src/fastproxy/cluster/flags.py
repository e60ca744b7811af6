"""The --etcd-* options of every command that reaches etcd (`serve`, `config push`...),
apart from the commands themselves: `serve` takes them without loading the etcd
client or the cluster commands."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from .options import Security

_FILE = click.Path(dir_okay=False)
# How every etcd command reaches etcd (SPEC section 12): etcdctl's flag names, and the
# same settings from FASTPROXY_ETCD_* for a unit file or a shell profile.
_ETCD_OPTIONS = [
    click.option("--etcd-cacert", metavar="FILE", type=_FILE, envvar="FASTPROXY_ETCD_CACERT",
                 help="CA that signed etcd's certificate (etcds://; default: certifi's CAs)."),
    click.option("--etcd-cert", metavar="FILE", type=_FILE, envvar="FASTPROXY_ETCD_CERT",
                 help="Client certificate to present to etcd (etcds://)."),
    click.option("--etcd-key", metavar="FILE", type=_FILE, envvar="FASTPROXY_ETCD_KEY",
                 help="Key of --etcd-cert."),
    click.option("--etcd-user", metavar="NAME", envvar="FASTPROXY_ETCD_USER",
                 help="etcd user (etcd's own authentication); needs --etcd-password-file."),
    click.option("--etcd-password-file", metavar="FILE", type=_FILE,
                 envvar="FASTPROXY_ETCD_PASSWORD_FILE", help="The password of --etcd-user."),
    click.option("--etcd-insecure", is_flag=True, envvar="FASTPROXY_ETCD_INSECURE",
                 help="Allow plain etcd:// to addresses beyond loopback (a trusted network)."),
]  # fmt: skip


def etcd_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The --etcd-* options, handed to the command as one `security` argument."""

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        etcd_cacert: str | None,
        etcd_cert: str | None,
        etcd_key: str | None,
        etcd_user: str | None,
        etcd_password_file: str | None,
        etcd_insecure: bool,
        **kwargs: Any,
    ) -> Any:
        security = Security(
            etcd_cacert, etcd_cert, etcd_key, etcd_user, etcd_password_file, etcd_insecure
        )
        return command(*args, security=security, **kwargs)

    for option in reversed(_ETCD_OPTIONS):
        wrapper = option(wrapper)
    return wrapper
