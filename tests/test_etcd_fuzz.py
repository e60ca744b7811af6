"""Hostile fleet documents (issue 19, "Also"): wrong types, 17 MiB, 100,000 levels of
nesting, invalid UTF-8, NUL bytes, written straight into a real etcd. The instance
keeps serving its config and logs one line for each, never a traceback; `config push`
refuses each with one line."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from etcdproc import Etcd, EtcdProxy, have_etcd, push
from fastproxy.backends import NamedEchoServer
from fastproxy.cli import main
from fastproxy.cluster.etcd import Etcd as EtcdClient
from fastproxy.cluster.etcd import EtcdURL
from fastproxy.config import MAX_CONFIG_BYTES
from proxyproc import app, free_ports
from test_etcd import answers, ask, config, wait_until

pytestmark = pytest.mark.skipif(not have_etcd(), reason="etcd-server not installed")

HUGE = MAX_CONFIG_BYTES + (1 << 20)  # 17 MiB: over the limit, and etcd writes it in seconds


def hostile(port: int) -> dict[str, bytes]:
    """Documents by what is wrong with them; `port` is the one the instance serves."""

    def with_app(name: str = '"x"', ports: str = f"[{port}]", targets: str = '["127.0.0.1:9"]',
                 rest: str = "") -> bytes:  # fmt: skip
        one = f'{{"Name": {name}, "Ports": {ports}, "Targets": {targets}}}'
        return f'{{"Apps": [{one}]{rest}}}'.encode()

    return {
        "empty": b"",
        "a list": b"[]",
        "a string": b'"Apps"',
        "null": b"null",
        "Apps a string": b'{"Apps": "x"}',
        "a name that is a number": with_app(name="5"),
        "ports that are objects": with_app(ports='[{"a": 1}]'),
        "targets an object": with_app(targets="{}"),
        "a 100,000-digit port": with_app(ports=f"[{'9' * 100_000}]"),
        "an infinite timeout": with_app(rest=', "DrainTimeout": 1e999'),
        "a key twice": with_app(rest=', "Apps": []'),
        "100,000 nested lists": b"[" * 100_000 + b"]" * 100_000,
        "100,000 nested objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        "nested deep inside an app": with_app(targets="[" * 50_000 + "]" * 50_000),
        "invalid UTF-8": with_app(name='"x"').replace(b'"x"', b'"\xff\xfe"'),
        "a NUL in a name": with_app(name='"x\\u0000y"'),
        "a NUL in a target": with_app(targets='["127.0.0.1\\u0000:9"]'),
        "a NUL byte in the text": with_app(name='"x\0y"'),
        "a NUL in a key": b'{"Apps\0": []}',
        "only NULs": b"\0" * 64,
        # valid but for its size (spaces): only the limit refuses it. Last: etcd is slow on it
        "17 MiB": with_app(rest=" " * HUGE),
    }


@pytest.fixture
def backends() -> Iterator[dict[str, NamedEchoServer]]:
    servers = {name: NamedEchoServer(name) for name in ("a", "b")}
    yield servers
    for server in servers.values():
        server.close()


def test_hostile_documents_are_refused_in_one_line_and_the_instance_keeps_serving(
    tmp_path: Path, backends: dict[str, NamedEchoServer]
) -> None:
    # etcd's own limit (1.5 MiB) would stop the 17 MiB document before we see it; its
    # data in memory, as fsyncing 20 MB twice took 9 s on a busy machine
    data = tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    etcd = Etcd(Path(data.name) / "data", max_request_bytes=64 << 20).start()
    try:
        url = etcd.url("fuzz")
        (p1,) = free_ports(1)
        documents = hostile(p1)
        # `config push` (in process: the start of 20 Python processes is most of the
        # time otherwise): each refused with one line before reaching etcd
        runner = CliRunner()
        for i, (what, value) in enumerate(documents.items()):
            (tmp_path / f"{i}.json").write_bytes(value)
            done = runner.invoke(main, ["config", "push", str(tmp_path / f"{i}.json"), url])
            assert done.exit_code == 2 and not done.stdout, (what, done.output)
            assert done.stderr.startswith("error: "), (what, done.stderr)
            assert len(done.stderr.splitlines()) == 1, (what, done.stderr)
        good = push(config(app("x", [p1], [backends["a"].address])), url)
        proxy = EtcdProxy(tmp_path / "i", url, instance_id="fuzzed")
        # writing 17 MiB may keep etcd (fsync) longer than a read's timeout
        etcd_client = EtcdClient(EtcdURL.parse(url), timeout=60)
        key = etcd_client.url.config_key
        for what, value in documents.items():
            bad = etcd_client.put_if(key, value, None)  # past any validation
            # the instance's own word: etcd may be too busy with 17 MiB to answer us
            proxy.wait_log(f"reload (etcd revision {bad}) rejected", timeout=60)
            assert ask(p1) == "a", what
        log = proxy.log()
        assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
        for line in log.splitlines():  # every line is a log record of its own
            assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", line), line[:300]
        rejected = re.findall(r"reload \(etcd revision (\d+)\) rejected", log)
        assert len(rejected) == len(documents), rejected
        assert proxy.metric("fastproxy_config_revision") == good
        assert proxy.status()["reloads"] == {"success": 0, "failure": len(documents)}
        # and it still takes a good one
        push(config(app("x", [p1], [backends["b"].address])), url)
        wait_until(answers(p1, "b"), what="a good document after the hostile ones")
        assert proxy.stop() == 0
    finally:
        etcd.stop()
        data.cleanup()
