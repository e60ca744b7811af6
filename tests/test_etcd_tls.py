"""Who may write a fleet's config (SPEC section 12, issue 19 finding 1): etcd over TLS
with client certificates, plain etcd:// only on loopback, host-local settings never
from a fleet document, and a config cache no other user could have planted. Against
a real etcd whose client port speaks only TLS and takes only our CA's clients."""

from __future__ import annotations

import base64
import itertools
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from etcdproc import TLS, Etcd, EtcdProxy, cli, client, have_etcd, instances, push
from fastproxy.backends import NamedEchoServer
from fastproxy.cli import main
from proxyproc import app, free_ports
from test_etcd import answers, ask, config, wait_until

pytestmark = pytest.mark.skipif(not have_etcd(), reason="etcd-server not installed")

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLS:
    return TLS(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory, tls: TLS) -> Iterator[Etcd]:
    server = Etcd(tmp_path_factory.mktemp("etcd-tls") / "data", tls=tls).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def url(etcd: Etcd) -> str:
    return etcd.url(f"tls{os.getpid()}-{next(_prefixes)}")


@pytest.fixture
def backends() -> Iterator[dict[str, NamedEchoServer]]:
    servers = {name: NamedEchoServer(name) for name in ("a", "b")}
    yield servers
    for server in servers.values():
        server.close()


def fastproxy(
    *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`fastproxy ARGS...` in this process (click's runner), as cli() does in a process
    of its own: starting Python is most of a short command's time."""
    done = CliRunner().invoke(main, list(args), env=env)
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        raise done.exception
    assert not check or done.exit_code == 0, done.stderr
    return subprocess.CompletedProcess(list(args), done.exit_code, done.stdout, done.stderr)


def one_line_error(done: Any, code: int = 1) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return str(lines[0])


def test_etcds_with_a_client_certificate_serves_and_nothing_else_gets_in(
    tmp_path: Path, tls: TLS, url: str, backends: dict[str, NamedEchoServer]
) -> None:
    (p1,) = free_ports(1)
    first = config(app("x", [p1], [backends["a"].address]))
    (tmp_path / "first.json").write_text(json.dumps(first))
    revision = int(cli("config", "push", str(tmp_path / "first.json"), url, *tls.args()).stdout)
    proxy = EtcdProxy(tmp_path / "i", url, *tls.args(), instance_id="tls")
    assert ask(p1) == "a"
    # the watch and the registration go over TLS too
    push(config(app("x", [p1], [backends["b"].address])), url, tls.security())
    wait_until(answers(p1, "b"), what="a change seen through the TLS watch")
    wait_until(
        lambda: instances(url, tls.security()).get("tls", {}).get("config_revision", 0) > revision
    )
    # the cache it wrote: 0600 in a 0700 directory
    cache = proxy.cache_dir / f"etcd-{url.rsplit('/', 1)[1]}.json"
    assert oct(cache.stat().st_mode & 0o777) == "0o600"
    assert oct(proxy.cache_dir.stat().st_mode & 0o777) == "0o700"
    # the same flags from the environment
    env = {"FASTPROXY_ETCD_CACERT": str(tls.ca), "FASTPROXY_ETCD_CERT": str(tls.cert),
           "FASTPROXY_ETCD_KEY": str(tls.key)}  # fmt: skip
    assert "revision" in fastproxy("config", "get", url, env=env).stderr
    assert "tls" in fastproxy("cluster", "status", url, env=env).stdout

    # no client certificate: one line, and nothing read
    line = one_line_error(
        fastproxy("config", "get", url, "--etcd-cacert", str(tls.ca), check=False)
    )
    assert "etcd unreachable" in line and "TLS" in line, line
    # a CA that did not sign etcd's certificate: one line
    other = TLS(tmp_path / "other", name="other")
    args = [
        "--etcd-cacert",
        str(other.ca),
        "--etcd-cert",
        str(tls.cert),
        "--etcd-key",
        str(tls.key),
    ]
    line = one_line_error(fastproxy("config", "get", url, *args, check=False))
    assert "not signed by a CA we trust" in line, line
    # another CA's client certificate: etcd refuses it
    args = ["--etcd-cacert", str(tls.ca), "--etcd-cert", str(other.cert),
            "--etcd-key", str(other.key)]  # fmt: skip
    line = one_line_error(fastproxy("config", "get", url, *args, check=False))
    assert "TLS" in line, line
    # an instance without a certificate waits for etcd, one line per try
    stray = EtcdProxy(tmp_path / "j", url, "--etcd-cacert", str(tls.ca), instance_id="no-cert",
                      wait=False)  # fmt: skip
    stray.wait_log("retry 2 in")
    assert "Traceback" not in stray.log() and "TLS: " in stray.log(), stray.log()
    stray.kill()
    assert proxy.stop() == 0


def test_an_attackers_plain_http_put_cannot_reach_a_tls_only_etcd(
    tls: TLS, etcd: Etcd, url: str
) -> None:
    """Issue 19's attack: one curl to /v3/kv/put repointed an app's target."""
    good = push(config(app("x", [7000], ["127.0.0.1:9"])), url, tls.security())
    key = client(url, tls.security()).url.config_key
    evil = json.dumps(config(app("x", [7000], ["127.0.0.1:6666"])))
    body = json.dumps({"key": base64.b64encode(key.encode()).decode(),
                       "value": base64.b64encode(evil.encode()).decode()}).encode()  # fmt: skip
    for scheme, context in (
        ("http", None),  # curl http://...
        ("https", ssl.create_default_context(cafile=str(tls.ca))),  # curl --cacert, no cert
        ("https", ssl._create_unverified_context()),  # curl -k
    ):
        request = urllib.request.Request(f"{scheme}://{etcd.endpoint}/v3/kv/put", data=body)
        with (
            pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)),
            urllib.request.urlopen(request, timeout=5, context=context) as answer,
        ):
            answer.read()
    doc, _ = client(url, tls.security()).read(key)
    assert doc is not None and doc.revision == good and b"6666" not in doc.value


def test_plain_etcd_beyond_loopback_is_refused_unless_insecure(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    plain = Etcd(tmp_path_factory.mktemp("etcd-plain") / "data").start()
    try:
        push(config(app("x", [7000], ["127.0.0.1:9"])), plain.url())
        # 0.0.0.0 is not a loopback address, yet connecting to it stays on this host
        remote = f"etcd://0.0.0.0:{plain.client_port}/fp"
        for args in (("config", "get", remote), ("cluster", "status", remote),
                     ("serve", remote, "--cache-dir", str(tmp_path / "c"))):  # fmt: skip
            line = one_line_error(fastproxy(*args, check=False), code=2)
            assert "plain etcd:// to 0.0.0.0" in line and "--etcd-insecure" in line, line
        good = tmp_path / "good.json"
        good.write_text(json.dumps(config(app("x", [7001], ["127.0.0.1:9"]))))
        one_line_error(fastproxy("config", "push", str(good), remote, check=False), code=2)
        assert '"Ports": [7000]' in fastproxy("config", "get", plain.url()).stdout  # not written
        assert "7000" in fastproxy("config", "get", remote, "--etcd-insecure").stdout
        assert (
            "7000"
            in fastproxy("config", "get", remote, env={"FASTPROXY_ETCD_INSECURE": "1"}).stdout
        )
        # TLS flags on a plain URL are a mistake, not silently unused
        line = one_line_error(
            fastproxy("config", "get", plain.url(), "--etcd-cacert", "/x", check=False), 2
        )
        assert "etcds://" in line
    finally:
        plain.stop()


def test_a_fleet_document_setting_a_host_local_key_is_rejected(
    tmp_path: Path, tls: TLS, url: str, backends: dict[str, NamedEchoServer]
) -> None:
    """Whoever writes etcd chose the file root appends to (AccessLog), the admin address,
    the user: now the host alone decides those."""
    (p1,) = free_ports(1)
    evil_log = tmp_path / "evil.log"
    evil = {"AccessLog": str(evil_log), **config(app("x", [p1], [backends["b"].address]))}
    (tmp_path / "evil.json").write_text(json.dumps(evil))
    # at push time: one line naming the key, and nothing written
    line = one_line_error(
        fastproxy("config", "push", str(tmp_path / "evil.json"), url, *tls.args(), check=False), 2
    )
    assert "AccessLog: a host-local setting" in line, line
    assert "no config" in fastproxy("config", "get", url, *tls.args(), check=False).stderr

    good = push(config(app("x", [p1], [backends["a"].address])), url, tls.security())
    proxy = EtcdProxy(tmp_path / "i", url, *tls.args(), instance_id="local")
    # at watch time, written straight into etcd: rejected, reported, the old config stays
    for key, value in (("AccessLog", str(evil_log)), ("User", "nobody"), ("Admin", "0.0.0.0:1")):
        bad = push({key: value, **config(app("x", [p1], [backends["b"].address]))}, url,
                   tls.security())  # fmt: skip
        wait_until(
            lambda b=bad: (
                instances(url, tls.security()).get("local", {}).get("rejected_revision") == b
            )
        )
        record = instances(url, tls.security())["local"]
        assert f"{key}: a host-local setting" in record["rejected_error"]
        assert record["config_revision"] == good
        assert ask(p1) == "a"
        assert f"reload (etcd revision {bad}) rejected" in proxy.log()
    assert proxy.status()["reloads"] == {"success": 0, "failure": 3}
    assert not evil_log.exists()
    assert proxy.stop() == 0
    # the admin port is each host's: a fleet's app may take 9901, the default one (it
    # was refused, "set Admin to another address", which a fleet document may not do)
    (tmp_path / "9901.json").write_text(json.dumps(config(app("x", [9901], ["127.0.0.1:9"]))))
    fastproxy("config", "push", str(tmp_path / "9901.json"), url, *tls.args())
    # the host's own file holds only host-local keys
    (tmp_path / "local.json").write_text(json.dumps({"Apps": []}))
    done = fastproxy("serve", url, *tls.args(), "--local-config", str(tmp_path / "local.json"),
               check=False)  # fmt: skip
    assert "Apps: a setting of the fleet" in one_line_error(done, 2)


@pytest.mark.parametrize("planted", ["other-owner", "mode-0666", "directory-of-another"])
def test_a_planted_config_cache_is_not_trusted(
    tmp_path: Path, planted: str, backends: dict[str, NamedEchoServer]
) -> None:
    """etcd is away; the cache someone else could have written is ignored (the instance
    waits for etcd) where today's code served it."""
    (p1,) = free_ports(1)
    (dead,) = free_ports(1)
    url = f"etcd://127.0.0.1:{dead}/fp"
    cache_dir = tmp_path / "i" / "cache"
    cache_dir.mkdir(parents=True, mode=0o700)
    cache = cache_dir / "etcd-fp.json"
    planted_config = config(app("x", [p1], [backends["b"].address]))
    cache.write_text(json.dumps({"revision": 7, "config": json.dumps(planted_config)}))
    if planted == "other-owner":
        cache.chmod(0o600)
        os.chown(cache, 65534, 65534)
        why = "it is owned by uid 65534, not root or the proxy's user"
    elif planted == "mode-0666":
        cache.chmod(0o666)
        why = "it is writable by group or others (mode 0666)"
    else:  # the file is fine, but another user could have replaced it
        cache.chmod(0o600)
        os.chown(cache_dir, 65534, 65534)
        why = f"its directory {cache_dir} is owned by uid 65534, not root or the proxy's user"
    proxy = EtcdProxy(tmp_path / "i", url, instance_id="planted", wait=False)
    proxy.wait_log("waiting for etcd")
    assert f"ignoring the config cache {cache}: {why}" in proxy.log(), proxy.log()
    assert "starting on the cached config" not in proxy.log()
    with pytest.raises(OSError):
        ask(p1)
    proxy.kill()
    # the same file, owned by us and 0600: served (the test plants what a cache holds)
    os.chown(cache, os.geteuid(), os.getegid())
    os.chown(cache_dir, os.geteuid(), os.getegid())
    cache.chmod(0o600)
    proxy = EtcdProxy(tmp_path / "i", url, instance_id="planted")
    assert "starting on the cached config of revision 7" in proxy.log()
    assert ask(p1) == "b"
    assert proxy.stop() == 0


def test_user_and_password_over_tls(
    tmp_path: Path, tls: TLS, backends: dict[str, NamedEchoServer]
) -> None:
    """etcd's own users, through the token our client gets from /v3/auth/authenticate
    (etcd3gw has no login). Not with --client-cert-auth: there etcd 3.4's gateway
    refuses every request once auth is on ("CommonName of client sending a request
    against gateway will be ignored"). Tokens live 1 s: the instance logs in again."""
    etcd = Etcd(tmp_path / "etcd", tls=tls, client_cert_auth=False,
                extra=("--auth-token-ttl=1",)).start()  # fmt: skip
    try:
        b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
        for path, body in (
            ("/v3/auth/user/add", {"name": "root", "password": "root-pw"}),
            ("/v3/auth/role/add", {"name": "root"}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/user/add", {"name": "fleet", "password": "fleet-pw"}),
            ("/v3/auth/role/add", {"name": "fleet"}),
            ("/v3/auth/role/grant", {"name": "fleet", "perm": {
                "permType": "READWRITE", "key": b64("/auth"), "range_end": b64("/auti")}}),
            ("/v3/auth/user/grant", {"user": "fleet", "role": "fleet"}),
            ("/v3/auth/enable", {}),
        ):  # fmt: skip
            etcd.post(path, body)
        url = etcd.url("auth")
        (tmp_path / "pw").write_text("fleet-pw\n")
        (tmp_path / "wrong").write_text("guess\n")
        server_only = ["--etcd-cacert", str(tls.ca)]
        auth = [*server_only, "--etcd-user", "fleet", "--etcd-password-file", str(tmp_path / "pw")]
        line = one_line_error(fastproxy("config", "get", url, *server_only, check=False))
        assert "etcd refused: etcdserver: user name is empty" in line, line
        wrong = [*server_only, "--etcd-user", "fleet", "--etcd-password-file",
                 str(tmp_path / "wrong")]  # fmt: skip
        line = one_line_error(fastproxy("config", "get", url, *wrong, check=False))
        assert "authentication failed" in line, line

        (p1,) = free_ports(1)
        for name in "ab":
            (tmp_path / f"{name}.json").write_text(
                json.dumps(config(app("x", [p1], [backends[name].address])))
            )
        fastproxy("config", "push", str(tmp_path / "a.json"), url, *auth)
        proxy = EtcdProxy(tmp_path / "i", url, *auth, instance_id="user")
        assert ask(p1) == "a"
        time.sleep(1.5)  # every token the instance holds has expired
        fastproxy("config", "push", str(tmp_path / "b.json"), url, *auth)
        wait_until(answers(p1, "b"), what="a push seen after the token expired")
        # The record follows the apply from the lease thread, which may first have to
        # log in again: it is current soon after, not at once (CI saw it lag here).
        status = lambda: fastproxy("cluster", "status", url, *auth, check=False)  # noqa: E731
        wait_until(lambda: status().returncode == 0, what="the record of revision b")
        assert "user" in status().stdout
        assert proxy.stop() == 0
    finally:
        etcd.stop()
