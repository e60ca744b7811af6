"""`fastproxy config push|get` and `fastproxy cluster status`: the fleet's config and
its instances, in etcd (SPEC section 8). Failures print one line and exit non-zero."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click

from ..config import ConfigError, parse_fleet_config, read_config_file
from .etcd import Etcd, EtcdError, EtcdURL
from .flags import etcd_options
from .options import Security


def _fail(message: Any, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _connect(etcd_url: str, security: Security) -> Etcd:
    try:
        return Etcd(EtcdURL.parse(etcd_url), security)
    except ConfigError as exc:
        _fail(exc, 2)


etcd_url_argument = click.argument("etcd_url", metavar="ETCD_URL")


@click.group("config")
def config_group() -> None:
    """The config a fleet serves, in etcd (ETCD_URL: etcd[s]://HOST:PORT[,...]/PREFIX)."""


@config_group.command()
@click.argument("file", type=click.Path(dir_okay=False))
@etcd_url_argument
@click.option(
    "--if-revision",
    type=click.IntRange(0),
    help="Write only if the config is still at this revision (0: not there yet).",
)
@etcd_options
def push(file: str, etcd_url: str, if_revision: int | None, security: Security) -> None:
    """Validate FILE, then store it as the fleet's config; print the new revision.
    An invalid file, or one that sets a host-local setting (Admin, User, AccessLog...),
    is never written."""
    try:
        document = read_config_file(file)
        parse_fleet_config(document, file)  # what is written is what was validated
    except ConfigError as exc:
        _fail(exc, 2)
    etcd = _connect(etcd_url, security)
    try:
        revision = etcd.put_if(etcd.url.config_key, document, if_revision)
    except EtcdError as exc:
        _fail(exc)
    click.echo(revision)


@config_group.command()
@etcd_url_argument
@etcd_options
def get(etcd_url: str, security: Security) -> None:
    """Print the fleet's config (its revision goes to stderr)."""
    etcd = _connect(etcd_url, security)
    try:
        doc, _ = etcd.read(etcd.url.config_key)
    except EtcdError as exc:
        _fail(exc)
    if doc is None:
        _fail(f"no config at {etcd.url.name(etcd.url.config_key)}")
    click.echo(f"revision {doc.revision}", err=True)
    click.echo(doc.value.decode(errors="replace").rstrip("\n"))


@click.group("cluster")
def cluster_group() -> None:
    """The instances serving a config from etcd."""


@cluster_group.command()
@etcd_url_argument
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
@etcd_options
def status(etcd_url: str, as_json: bool, security: Security) -> None:
    """List the instances, the revision each serves and whether it lags. Exit 0 when
    every instance serves the current revision and is healthy; 3 when one lags, has
    rejected a revision, is unhealthy or unreadable (a monitoring check can use it)."""
    etcd = _connect(etcd_url, security)
    try:
        current, instances = cluster_state(etcd)
    except EtcdError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps({"config_revision": current, "instances": instances}, indent=2))
    else:
        click.echo(format_cluster(etcd.url.name(etcd.url.config_key), current, instances))
    if any(_off_track(r) for r in instances):
        sys.exit(3)


def _off_track(record: dict[str, Any]) -> bool:
    return bool(
        record["lags"]
        or record.get("rejected_revision")
        or not record.get("healthy")
        or record.get("error")
    )


def cluster_state(etcd: Etcd) -> tuple[int, list[dict[str, Any]]]:
    """The config's revision, and the instances' records, each with whether it lags."""
    doc, _ = etcd.read(etcd.url.config_key)
    records = etcd.read_prefix(etcd.url.instances_prefix)
    current = doc.revision if doc is not None else 0
    instances = []
    for key, value in records:
        try:
            record = json.loads(value)
        except ValueError:
            record = {"id": key.rsplit("/", 1)[-1], "error": "unreadable record"}
        record["lags"] = record.get("config_revision") != current
        instances.append(record)
    instances.sort(key=lambda r: str(r.get("id")))
    return current, instances


def format_cluster(name: str, current: int, instances: list[dict[str, Any]]) -> str:
    lines = [f"{name}: revision {current}, {len(instances)} instances"]
    if instances:
        lines.append(
            f"  {'ID':<24} {'HOST':<16} {'PID':>7} {'REVISION':>8}  {'STATE':<8} "
            f"{'STEERING':<8} {'HEALTHY':<7} APPLIED"
        )
    for r in instances:
        state = "lags" if r["lags"] else "current"
        lines.append(
            f"  {str(r.get('id')):<24} {str(r.get('host')):<16} {str(r.get('pid')):>7} "
            f"{str(r.get('config_revision')):>8}  {state:<8} {str(r.get('steering')):<8} "
            f"{'yes' if r.get('healthy') else 'no':<7} {r.get('applied_at')}"
        )
        if r.get("rejected_revision"):
            lines.append(
                f"    rejected revision {r['rejected_revision']}: {r.get('rejected_error')}"
            )
    return "\n".join(lines)
