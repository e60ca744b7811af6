"""Tests for fastproxy.config: the JSON config format of SPEC section 1."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from fastproxy.config import (
    App,
    Config,
    ConfigError,
    HealthCheck,
    Target,
    format_ports,
    load_config,
    parse_config,
    parse_host_port,
    summary,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SRC = "proxy.json"  # the source name used in messages


def two_apps(**top: Any) -> dict[str, Any]:
    """A small valid config; tests copy it and break one thing."""
    data: dict[str, Any] = {
        "Apps": [
            {"Name": "a", "Ports": [5001, 5002], "Targets": ["backend-a:80"]},
            {"Name": "b", "Ports": [6001], "Targets": ["10.0.0.1:80", "[::1]:8080"]},
        ]
    }
    data.update(top)
    return data


def with_app(index: int, **fields: Any) -> dict[str, Any]:
    """two_apps() with fields of Apps[index] replaced (a value of ... deletes the key)."""
    data = two_apps()
    for key, value in fields.items():
        if value is ...:
            del data["Apps"][index][key]
        else:
            data["Apps"][index][key] = value
    return data


def error_of(data: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, SRC)
    message = str(info.value)
    assert "\n" not in message and len(message.splitlines()) == 1, message
    assert message.startswith(f"{SRC}: "), message
    return message


# --------------------------------------------------------------------------- valid configs


def test_challenge_config_loads_unchanged() -> None:
    path = EXAMPLES / "challenge.json"
    config = load_config(path)
    assert config.source == str(path)
    assert [app.name for app in config.apps] == ["five-thousand", "six-thousand"]
    five, six = config.apps
    assert five.ports == (5001, 5200, 5300, 5400)
    assert six.ports == (6001, 6200, 6300, 6400)
    assert [t.address for t in five.targets] == ["tcp-echo.fly.dev:5001", "tcp-echo.fly.dev:5002"]
    assert six.targets[2] == Target("bad.target.for.testing", 6003)  # unresolvable is fine
    # every optional key has its default
    assert five.balance == "round-robin"
    assert five.health_check == HealthCheck(interval=2.0, timeout=1.0, rise=2, fall=3)
    assert (five.connect_timeout, five.idle_timeout) == (5.0, 3600.0)
    assert (five.max_connections, five.proxy_protocol) == (0, None)
    assert config.listen == ("::",)
    assert config.admin == ("127.0.0.1", 9901)
    assert (config.workers, config.steering, config.drain_timeout) == (0, "auto", 30.0)
    assert (config.relay, config.pipe_size) == ("splice", 0)
    assert config.port_owner()[6300] == "six-thousand"
    assert len(config.port_owner()) == 8
    assert config.app("six-thousand") is six
    with pytest.raises(KeyError):
        config.app("seven-thousand")


def test_all_optional_keys() -> None:
    data = two_apps(
        Listen=["0.0.0.0", "[::1]"],
        Admin="[::1]:9000",
        AdminTokenFile="/etc/fastproxy/token",
        Workers=4,
        Steering="ports",
        DrainTimeout=0,
        Relay="copy",
        PipeSize=65536,
    )
    data["Apps"][0].update(
        Balance="least-conn",
        HealthCheck={"Interval": 0.5, "Fall": 1},
        ConnectTimeout=1,
        IdleTimeout=0,
        MaxConnections=100,
        ProxyProtocol="v2",
    )
    config = parse_config(data, SRC)
    app = config.apps[0]
    assert app.balance == "least-conn"
    assert app.health_check == HealthCheck(interval=0.5, timeout=1.0, rise=2, fall=1)
    assert (app.connect_timeout, app.idle_timeout, app.max_connections) == (1.0, 0.0, 100)
    assert isinstance(app.connect_timeout, float)
    assert app.proxy_protocol == "v2"
    assert config.listen == ("0.0.0.0", "::1")
    assert config.admin == ("::1", 9000)
    assert config.admin_token_file == "/etc/fastproxy/token"
    assert (config.workers, config.steering, config.relay) == (4, "ports", "copy")
    assert (config.drain_timeout, config.pipe_size) == (0.0, 65536)


def test_relay_sockmap_is_refused_with_one_line_saying_why() -> None:
    """The in-kernel relay was taken out (the kernel may send a segment twice): a config
    that still names it gets one line naming the reason and what to use instead."""
    error = error_of(two_apps(Relay="sockmap"))
    assert error == (
        f'{SRC}: Relay: "sockmap" is no longer offered (the kernel\'s sk_skb redirect may'
        ' send a segment twice: benchmarks/sockmap/README.md); use "splice" or "copy"'
    ), error
    assert parse_config(two_apps(), SRC).relay == "splice"


def test_listen_accepts_a_single_string_and_null_proxy_protocol() -> None:
    config = parse_config(with_app(0, ProxyProtocol=None) | {"Listen": "127.0.0.1"}, SRC)
    assert config.listen == ("127.0.0.1",)
    assert config.apps[0].proxy_protocol is None


def test_port_ranges_expand() -> None:
    config = parse_config(with_app(0, Ports=["7000-7999", 5001, "8000", " 9000 - 9002 "]), SRC)
    ports = config.apps[0].ports
    assert ports[:2] == (7000, 7001) and ports[999] == 7999
    assert ports[1000:] == (5001, 8000, 9000, 9001, 9002)
    assert len(config.port_owner()) == 1000 + 5 + 1  # app b has one port


def test_whole_port_range_in_one_app() -> None:
    data: dict[str, Any] = {"Apps": [{"Name": "all", "Ports": ["1-65535"], "Targets": ["x:1"]}]}
    data["Admin"] = "127.0.0.1:0"  # every port is taken; the admin endpoint gets a free one
    config = parse_config(data, SRC)
    assert len(config.apps[0].ports) == 65535


def test_defaults_of_dataclasses() -> None:
    app = App(name="x", ports=(1,), targets=(Target("h", 2),))
    assert app.health_check == HealthCheck()
    assert Config(apps=(app,)).source == "<config>"


@pytest.mark.parametrize(
    ("text", "host", "port", "address"),
    [
        ("10.0.0.1:80", "10.0.0.1", 80, "10.0.0.1:80"),
        ("[::1]:80", "::1", 80, "[::1]:80"),
        ("[2001:DB8:0:0::1]:443", "2001:db8::1", 443, "[2001:db8::1]:443"),
        ("[fe80::1%eth0]:22", "fe80::1%eth0", 22, "[fe80::1%eth0]:22"),
        ("tcp-echo.fly.dev:5001", "tcp-echo.fly.dev", 5001, "tcp-echo.fly.dev:5001"),
        ("Backend_1.Example.COM.:65535", "backend_1.example.com.", 65535, None),
        ("localhost:1", "localhost", 1, "localhost:1"),
        (" padded:8080 ", "padded", 8080, "padded:8080"),
    ],
)
def test_target_address_round_trip(text: str, host: str, port: int, address: str | None) -> None:
    config = parse_config(with_app(0, Targets=[text]), SRC)
    target = config.apps[0].targets[0]
    assert (target.host, target.port) == (host, port)
    assert target.address == (address or f"{host}:{port}")
    assert str(target) == target.address
    # the canonical address parses back to the same target
    assert Target(*parse_host_port(target.address)) == target


def test_target_address_from_fields() -> None:
    assert Target("::1", 80).address == "[::1]:80"
    assert Target("1.2.3.4", 80).address == "1.2.3.4:80"
    assert Target("example.com", 443).address == "example.com:443"


def test_parse_host_port_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r'write "\[::1\]:9901"'):
        parse_host_port("::1:9901")
    assert parse_host_port("127.0.0.1:0", allow_port_zero=True) == ("127.0.0.1", 0)
    with pytest.raises(ConfigError, match="out of range 1..65535"):
        parse_host_port("127.0.0.1:0")


def test_format_ports() -> None:
    assert format_ports([5003, 5001, 5002, 6000, 7000, 7001]) == "5001-5003, 6000, 7000, 7001"
    assert format_ports([]) == ""


def test_summary() -> None:
    config = parse_config(with_app(0, Ports=["7000-7999", 5001]), SRC)
    text = summary(config)
    assert text.splitlines()[0] == f"{SRC}: OK, 2 apps, 1002 ports, 3 targets"
    assert "5001, 7000-7999 (1001 ports)" in text
    assert "[::1]:8080" in text
    assert "round-robin" in text
    assert "127.0.0.1:9901" in text
    assert "admin token: /run/fastproxy/admin-token" in text
    assert "one per CPU" in text
    assert all(len(line) <= 100 for line in text.splitlines())


def test_weighted_and_backup_targets() -> None:
    targets = ["a:1", {"Address": "b:2", "Weight": 3}, {"Address": "[::1]:3", "Backup": True}]
    app = parse_config(with_app(0, Targets=targets), SRC).apps[0]
    assert [(t.address, t.weight, t.backup) for t in app.targets] == [
        ("a:1", 1, False),
        ("b:2", 3, False),
        ("[::1]:3", 1, True),
    ]
    text = summary(parse_config(with_app(0, Targets=targets), SRC))
    assert "a:1, b:2 (weight 3), [::1]:3 (backup)" in text


def test_health_check_types() -> None:
    check = {"Type": "send-expect", "Send": "PING\\r\\n\\x00\\\\", "Expect": "+PONG\r\n"}
    hc = parse_config(with_app(0, HealthCheck=check), SRC).apps[0].health_check
    assert (hc.type, hc.send, hc.expect) == ("send-expect", b"PING\r\n\x00\\", b"+PONG\r\n")
    text = summary(parse_config(with_app(0, HealthCheck=check), SRC))
    assert 'health:      send-expect send "PING\\r\\n\\u0000\\\\" expect "+PONG\\r\\n"' in text
    check = {"Type": "http", "Path": "/healthz?full=1", "Host": "svc.local", "ExpectStatus": 204}
    hc = parse_config(with_app(0, HealthCheck=check), SRC).apps[0].health_check
    assert (hc.path, hc.host, hc.expect_status) == ("/healthz?full=1", "svc.local", (204, 204))
    text = summary(parse_config(with_app(0, HealthCheck=check), SRC))
    assert "http GET /healthz?full=1 Host svc.local expect status 204" in text
    hc = parse_config(with_app(0, HealthCheck={"Type": "http"}), SRC).apps[0].health_check
    assert (hc.path, hc.host, hc.expect_status) == ("/", None, (200, 399))
    hc = parse_config(with_app(0, HealthCheck={}), SRC).apps[0].health_check
    assert hc.type == "tcp"


# --------------------------------------------------------------------------- errors

APP_B = f'{SRC}: app "b" (Apps[1]): '
APP_A = f'{SRC}: app "a" (Apps[0]): '

ERROR_CASES: list[tuple[str, object, list[str]]] = [
    # --- top level
    ("top not an object", [1, 2], ["expected a JSON object at the top level, got list"]),
    ("Apps missing", {}, [f"{SRC}: Apps: missing required key"]),
    ("Apps not a list", {"Apps": {}}, [f"{SRC}: Apps: expected a list of apps, got object"]),
    ("Apps empty", {"Apps": []}, [f"{SRC}: Apps: empty list"]),
    (
        "unknown top key",
        two_apps(Steerig="bpf"),
        [f'{SRC}: Steerig: unknown key (did you mean "Steering"?)'],
    ),
    ("wrong case key", {"apps": []}, [f'{SRC}: apps: unknown key (did you mean "Apps"?)']),
    ("hopeless key", two_apps(Zzz=1), [f"{SRC}: Zzz: unknown key (known keys: Apps, Listen"]),
    (
        "bad steering",
        two_apps(Steering="ebpf"),
        [f'{SRC}: Steering: "ebpf" is not one of "auto", "bpf", "ports" (did you mean "bpf"?)'],
    ),
    ("bad relay", two_apps(Relay="zerocopy"), [f'{SRC}: Relay: "zerocopy" is not one of "splice"']),
    ("workers negative", two_apps(Workers=-1), [f"{SRC}: Workers: must be between 0 and"]),
    ("workers bool", two_apps(Workers=True), [f"{SRC}: Workers: expected an integer, got boolean"]),
    (
        "workers float",
        two_apps(Workers=2.0),
        [f"{SRC}: Workers: expected an integer, got number 2.0"],
    ),
    (
        "drain negative",
        two_apps(DrainTimeout=-1),
        [f"{SRC}: DrainTimeout: must be >= 0 seconds"],
    ),
    ("drain nan", two_apps(DrainTimeout=math.nan), [f"{SRC}: DrainTimeout: must be a finite"]),
    ("pipe size small", two_apps(PipeSize=100), [f"{SRC}: PipeSize: must be 0 (kernel default)"]),
    ("listen type", two_apps(Listen=5), [f"{SRC}: Listen: expected an address or a list"]),
    ("listen empty", two_apps(Listen=[]), [f"{SRC}: Listen: empty list"]),
    (
        "listen with port",
        two_apps(Listen=["0.0.0.0:80"]),
        [f'{SRC}: Listen[0]: "0.0.0.0:80": give the address alone'],
    ),
    (
        "listen twice",
        two_apps(Listen=["::", "[::]"]),
        [f'{SRC}: Listen[1]: "::" is listed more than once'],
    ),
    ("admin no port", two_apps(Admin="localhost"), [f'{SRC}: Admin: "localhost": missing port']),
    (
        "token file type",
        two_apps(AdminTokenFile=1),
        [f"{SRC}: AdminTokenFile: expected a file path, got integer 1"],
    ),
    (
        "token file relative",
        two_apps(AdminTokenFile="token"),
        [f'{SRC}: AdminTokenFile: "token" is not an absolute path to a file'],
    ),
    (
        "token file a directory",
        two_apps(AdminTokenFile="/run/"),
        [f'{SRC}: AdminTokenFile: "/run/" is not an absolute path to a file'],
    ),
    (
        "token file NUL",
        two_apps(AdminTokenFile="/run/a\0b"),
        [f"{SRC}: AdminTokenFile: ", "contains a NUL character"],
    ),
    (
        "admin bare ipv6",
        two_apps(Admin="::1:9901"),
        [f'{SRC}: Admin: "::1:9901": IPv6 addresses need brackets, write "[::1]:9901"'],
    ),
    (
        "admin on an app port",
        two_apps(Admin="127.0.0.1:6001"),
        [f'{SRC}: Admin: port 6001 is also a port of app "b"'],
    ),
    (
        "default admin port taken",
        with_app(1, Ports=[9901]),
        [f'{SRC}: Admin: the default admin port 9901 is also a port of app "b", set Admin to'],
    ),
    # --- app structure and names
    ("app not an object", {"Apps": ["a"]}, [f"{SRC}: Apps[0]: expected an app object, got string"]),
    (
        "unknown app key",
        with_app(1, Targts=["x:1"]),
        [APP_B + 'Targts: unknown key (did you mean "Targets"?)'],
    ),
    ("name missing", with_app(1, Name=...), [f"{SRC}: Apps[1]: Name: missing required key"]),
    ("name empty", with_app(1, Name=""), [f"{SRC}: Apps[1]: Name: must not be empty"]),
    ("name type", with_app(1, Name=7), [f"{SRC}: Apps[1]: Name: expected a string, got integer 7"]),
    ("name slash", with_app(1, Name="b/c"), ['(Apps[1]): Name: "b/c" must not contain "/"']),
    (
        "duplicate name",
        with_app(1, Name="a"),
        [f'{SRC}: app "a" (Apps[1]): Name: duplicate app name, already used by Apps[0]'],
    ),
    # --- ports
    (
        "duplicate port across apps",
        with_app(1, Ports=[6001, 5001]),
        [APP_B + 'Ports: port 5001 is already used by app "a"'],
    ),
    (
        "duplicate port through a range",
        with_app(1, Ports=["4990-5010"]),
        [APP_B + 'Ports: port 5001 is already used by app "a"'],
    ),
    (
        "port repeated in one app",
        with_app(1, Ports=[6001, 6002, 6001]),
        [APP_B + "Ports: port 6001 is listed more than once"],
    ),
    (
        "ranges of one app overlap",  # the first port seen again, in the order listed
        with_app(1, Ports=["6001-6010", 6020, "6015-6030"]),
        [APP_B + "Ports: port 6020 is listed more than once"],
    ),
    ("port zero", with_app(1, Ports=[0]), [APP_B + "Ports[0]: port 0 is out of range 1..65535"]),
    ("port too big", with_app(1, Ports=[6001, 65536]), [APP_B + "Ports[1]: port 65536 is out of"]),
    ("port negative", with_app(1, Ports=[-5]), [APP_B + "Ports[0]: port -5 is out of range"]),
    (
        "port bool",
        with_app(1, Ports=[True]),
        [APP_B + 'Ports[0]: expected a port number or a "first-last" range, got boolean true'],
    ),
    ("port float", with_app(1, Ports=[80.0]), [APP_B + "Ports[0]: expected a port number", "80.0"]),
    (
        "ports not a list",
        with_app(1, Ports="7000-7999"),
        [APP_B + 'Ports: expected a list of ports, got string "7000-7999"'],
    ),
    ("ports empty", with_app(1, Ports=[]), [APP_B + "Ports: empty list"]),
    ("ports missing", with_app(1, Ports=...), [APP_B + "Ports: missing required key"]),
    (
        "port range garbage",
        with_app(1, Ports=["7000..7999"]),
        [APP_B + 'Ports[0]: "7000..7999" is not a port number or a "first-last" range'],
    ),
    (
        "port range reversed",
        with_app(1, Ports=["7999-7000"]),
        [APP_B + 'Ports[0]: range "7999-7000" is reversed, write "7000-7999"'],
    ),
    (
        "port range out of range",
        with_app(1, Ports=["65000-70000"]),
        [APP_B + "Ports[0]: port 70000 is out of range"],
    ),
    ("huge port string", with_app(1, Ports=["9" * 5000]), [APP_B + "Ports[0]: port 999"]),
    (
        "huge port int",
        with_app(1, Ports=[10**5000]),
        [APP_B + "Ports[0]: port <about 5001 digits>"],
    ),
    (
        "huge timeout",
        with_app(1, IdleTimeout=-(10**5000)),
        [APP_B + "IdleTimeout: must be >= 0 seconds, got <about 5001 digits>"],
    ),
    # --- targets
    ("targets empty", with_app(1, Targets=[]), [APP_B + "Targets: empty list"]),
    ("targets missing", with_app(1, Targets=...), [APP_B + "Targets: missing required key"]),
    (
        "targets not a list",
        with_app(1, Targets="x:1"),
        [APP_B + 'Targets: expected a list of "host:port" strings, got string'],
    ),
    (
        "target object with an unknown key",
        with_app(1, Targets=["x:1", {"Host": "x"}]),
        [
            APP_B + "Targets[1].Host: unknown key (known keys: Address, Weight, Backup,"
            " MaxConnections, SoftLimit)"
        ],
    ),
    (
        "target weight misspelt",
        with_app(1, Targets=[{"Address": "x:1", "Weigth": 2}]),
        [APP_B + 'Targets[0].Weigth: unknown key (did you mean "Weight"?)'],
    ),
    (
        "target weight zero",
        with_app(1, Targets=[{"Address": "x:1", "Weight": 0}]),
        [APP_B + "Targets[0].Weight: must be between 1 and 1000, got 0"],
    ),
    (
        "target weight too large",
        with_app(1, Targets=[{"Address": "x:1", "Weight": 1001}]),
        [APP_B + "Targets[0].Weight: must be between 1 and 1000, got 1001"],
    ),
    (
        "target backup not a boolean",
        with_app(1, Targets=[{"Address": "x:1", "Backup": "yes"}]),
        [APP_B + 'Targets[0].Backup: expected true or false, got string "yes"'],
    ),
    (
        "target object without address",
        with_app(1, Targets=[{"Weight": 2}]),
        [APP_B + "Targets[0].Address: missing required key"],
    ),
    (
        "target object with a bad address",
        with_app(1, Targets=[{"Address": "x"}]),
        [APP_B + 'Targets[0].Address: "x": missing port'],
    ),
    (
        "target object listed twice",
        with_app(1, Targets=["x:1", {"Address": "x:1", "Backup": True}]),
        [APP_B + 'Targets[1]: "x:1" is already listed as Targets[0]'],
    ),
    (
        "health type unknown",
        with_app(1, HealthCheck={"Type": "htp"}),
        [APP_B + 'HealthCheck.Type: "htp" is not one of', '(did you mean "http"?)'],
    ),
    (
        "health send without send-expect",
        with_app(1, HealthCheck={"Send": "x"}),
        [APP_B + 'HealthCheck.Send: only used when HealthCheck.Type is "send-expect", not "tcp"'],
    ),
    (
        "health path without http",
        with_app(1, HealthCheck={"Type": "send-expect", "Expect": "x", "Path": "/"}),
        [APP_B + 'HealthCheck.Path: only used when HealthCheck.Type is "http"'],
    ),
    (
        "health expect missing",
        with_app(1, HealthCheck={"Type": "send-expect", "Send": "x"}),
        [APP_B + 'HealthCheck.Expect: missing required key for Type "send-expect"'],
    ),
    (
        "health expect empty",
        with_app(1, HealthCheck={"Type": "send-expect", "Expect": ""}),
        [APP_B + "HealthCheck.Expect: must not be empty"],
    ),
    (
        "health send bad escape",
        with_app(1, HealthCheck={"Type": "send-expect", "Send": "a\\q", "Expect": "x"}),
        [APP_B + "HealthCheck.Send: unknown escape \\q, use"],
    ),
    (
        "health send too long",
        with_app(1, HealthCheck={"Type": "send-expect", "Send": "x" * 5000, "Expect": "x"}),
        [APP_B + "HealthCheck.Send: at most 4096 bytes, got 5000"],
    ),
    (
        "health expect not a string",
        with_app(1, HealthCheck={"Type": "send-expect", "Expect": 5}),
        [APP_B + "HealthCheck.Expect: expected a string, got integer 5"],
    ),
    (
        "health path relative",
        with_app(1, HealthCheck={"Type": "http", "Path": "health"}),
        [APP_B + 'HealthCheck.Path: "health" must start with "/"'],
    ),
    (
        "health path with a space",
        with_app(1, HealthCheck={"Type": "http", "Path": "/a b"}),
        [APP_B + "HealthCheck.Path: "],
    ),
    (
        "health host with a newline",
        with_app(1, HealthCheck={"Type": "http", "Host": "a\nb"}),
        [APP_B + "HealthCheck.Host: "],
    ),
    (
        "health status out of range",
        with_app(1, HealthCheck={"Type": "http", "ExpectStatus": 700}),
        [APP_B + "HealthCheck.ExpectStatus: status 700 is out of range 100..599"],
    ),
    (
        "health status range reversed",
        with_app(1, HealthCheck={"Type": "http", "ExpectStatus": "399-200"}),
        [APP_B + 'HealthCheck.ExpectStatus: range "399-200" is reversed'],
    ),
    (
        "health status not a number",
        with_app(1, HealthCheck={"Type": "http", "ExpectStatus": "ok"}),
        [APP_B + 'HealthCheck.ExpectStatus: "ok" is not a status code'],
    ),
    (
        "health status boolean",
        with_app(1, HealthCheck={"Type": "http", "ExpectStatus": True}),
        [APP_B + "HealthCheck.ExpectStatus: expected a status code"],
    ),
    (
        "target missing port",
        with_app(1, Targets=["backend"]),
        [APP_B + 'Targets[0]: "backend": missing port'],
    ),
    (
        "target empty port",
        with_app(1, Targets=["backend:"]),
        [APP_B + 'Targets[0]: "backend:": missing port'],
    ),
    (
        "target port not a number",
        with_app(1, Targets=["backend:http"]),
        [APP_B + 'Targets[0]: "backend:http": port "http" is not a number'],
    ),
    (
        "target port out of range",
        with_app(1, Targets=["backend:65536"]),
        [APP_B + 'Targets[0]: "backend:65536": port 65536 is out of range 1..65535'],
    ),
    ("target empty host", with_app(1, Targets=[":80"]), [APP_B + 'Targets[0]: ":80": empty host']),
    ("target empty", with_app(1, Targets=[""]), [APP_B + "Targets[0]: empty"]),
    (
        "target ipv6 without brackets",
        with_app(1, Targets=["::1:80"]),
        [APP_B + 'Targets[0]: "::1:80": IPv6 addresses need brackets, write "[::1]:80"'],
    ),
    (
        "target ipv6 without port",
        with_app(1, Targets=["[::1]"]),
        [APP_B + 'Targets[0]: "[::1]": missing port'],
    ),
    (
        "target garbage in brackets",
        with_app(1, Targets=["[not-v6]:80"]),
        [APP_B + 'Targets[0]: "[not-v6]:80": "not-v6" in brackets is not an IPv6 address'],
    ),
    (
        "target unclosed bracket",
        with_app(1, Targets=["[::1:80"]),
        [APP_B + 'Targets[0]: "[::1:80": missing "]"'],
    ),
    (
        "target bad hostname",
        with_app(1, Targets=["bad host:80"]),
        [APP_B + 'Targets[0]: "bad host:80": "bad host" is not a valid hostname or IP address'],
    ),
    (
        "target bad ipv4",
        with_app(1, Targets=["10.0.0.300:80"]),
        [APP_B + 'Targets[0]: "10.0.0.300:80": "10.0.0.300" is not a valid IPv4 address'],
    ),
    (
        "target listed twice",
        with_app(1, Targets=["x:1", "X:1"]),
        [APP_B + 'Targets[1]: "x:1" is already listed as Targets[0]'],
    ),
    # --- per-app options
    (
        "bad balance",
        with_app(1, Balance="roundrobin"),
        [
            APP_B + 'Balance: "roundrobin" is not one of "round-robin", "least-conn", "random",'
            ' "source-hash", "maglev" (did you mean "round-robin"?)'
        ],
    ),
    (
        "bad proxy protocol",
        with_app(1, ProxyProtocol="v3"),
        [APP_B + 'ProxyProtocol: "v3" is not one of "v1", "v2"'],
    ),
    (
        "proxy protocol type",
        with_app(1, ProxyProtocol=True),
        [APP_B + 'ProxyProtocol: expected one of "v1", "v2", got boolean true'],
    ),
    (
        "healthcheck type",
        with_app(1, HealthCheck=[]),
        [APP_B + "HealthCheck: expected an object with Interval, Timeout, Rise, Fall, Type, Send"],
    ),
    (
        "healthcheck unknown key",
        with_app(1, HealthCheck={"Intervall": 1}),
        [APP_B + 'HealthCheck.Intervall: unknown key (did you mean "Interval"?)'],
    ),
    (
        "healthcheck interval zero",
        with_app(1, HealthCheck={"Interval": 0}),
        [APP_B + "HealthCheck.Interval: must be > 0 seconds, got 0"],
    ),
    (
        "healthcheck timeout negative",
        with_app(1, HealthCheck={"Timeout": -1}),
        [APP_B + "HealthCheck.Timeout: must be > 0 seconds"],
    ),
    (
        "healthcheck interval string",
        with_app(1, HealthCheck={"Interval": "2 weeks"}),
        [
            APP_B + 'HealthCheck.Interval: expected a duration such as "250ms", "2s", "5m"'
            ' or a number of seconds, got "2 weeks"'
        ],
    ),
    (
        "healthcheck rise zero",
        with_app(1, HealthCheck={"Rise": 0}),
        [APP_B + "HealthCheck.Rise: must be between 1 and"],
    ),
    (
        "healthcheck fall float",
        with_app(1, HealthCheck={"Fall": 1.5}),
        [APP_B + "HealthCheck.Fall: expected an integer, got number 1.5"],
    ),
    (
        "connect timeout zero",
        with_app(1, ConnectTimeout=0),
        [APP_B + "ConnectTimeout: must be > 0 seconds"],
    ),
    (
        "connect timeout infinite",
        with_app(1, ConnectTimeout=math.inf),
        [APP_B + "ConnectTimeout: must be a finite number"],
    ),
    (
        "idle timeout negative",
        with_app(1, IdleTimeout=-1),
        [APP_B + "IdleTimeout: must be >= 0 seconds"],
    ),
    (
        "idle timeout absurd",
        with_app(1, IdleTimeout=1e12),
        [APP_B + "IdleTimeout: must be at most 31536000 seconds"],
    ),
    (
        "max connections negative",
        with_app(1, MaxConnections=-1),
        [APP_B + "MaxConnections: must be between 0 and"],
    ),
    (
        "max connections null",
        with_app(1, MaxConnections=None),
        [APP_B + "MaxConnections: expected an integer, got null"],
    ),
    # --- order: the first problem in file order wins
    (
        "first app's error first",
        {"Apps": [{"Name": "a", "Ports": [0], "Targets": []}, {"Name": "a"}]},
        [APP_A + "Ports[0]: port 0"],
    ),
]


@pytest.mark.parametrize(
    ("data", "expected"),
    [pytest.param(data, expected, id=name) for name, data, expected in ERROR_CASES],
)
def test_error_messages(data: object, expected: list[str]) -> None:
    message = error_of(copy.deepcopy(data))
    for part in expected:
        assert part in message


def test_error_names_both_apps_for_duplicate_port() -> None:
    message = error_of(with_app(1, Ports=[5002]))
    assert message == (
        f'{SRC}: app "b" (Apps[1]): Ports: port 5002 is already used by app "a" (apps share'
        " a port only when they route by ServerNames; at most one of them, the default, may"
        " have none)"
    )


def test_messages_stay_on_one_line_with_hostile_text() -> None:
    message = error_of(with_app(1, Name="x\u2028y\nz", Ports=[0]))
    assert len(message.splitlines()) == 1
    message = error_of(with_app(1, Targets=["bad\nhost:80"]))
    assert "\\n" in message and len(message.splitlines()) == 1


# --------------------------------------------------------------------------- files


def write(tmp_path: Path, text: str | bytes, name: str = "proxy.json") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(str(path))
    return message


def test_file_not_found(tmp_path: Path) -> None:
    assert load_error(tmp_path / "missing.json").endswith("missing.json: file not found")


def test_file_is_a_directory(tmp_path: Path) -> None:
    assert "is a directory" in load_error(tmp_path)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    started = time.monotonic()
    assert load_error(fifo).endswith("is a FIFO (named pipe), expected a JSON file")
    assert time.monotonic() - started < 2


def test_device_is_refused() -> None:
    assert load_error(Path("/dev/zero")).endswith("is a device, expected a JSON file")


def test_file_over_16_mib_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.truncate((16 << 20) + 1)
    assert load_error(path).endswith("is larger than 16 MiB, too large for a config file")
    with open(path, "r+b") as f:  # 16 MiB exactly is read (and then judged as JSON)
        f.truncate(16 << 20)
    assert "larger" not in load_error(path)


def test_invalid_json_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "Apps": [\n    {"Name": "a",, }\n  ]\n}\n')
    message = load_error(path)
    assert message.startswith(f"{path}:3:18: invalid JSON: ")


def test_empty_file(tmp_path: Path) -> None:
    assert "the file is empty" in load_error(write(tmp_path, "  \n"))


def test_not_utf8(tmp_path: Path) -> None:
    assert "not UTF-8" in load_error(write(tmp_path, b'{"Apps": "\xff"}'))


def test_bom_is_accepted(tmp_path: Path) -> None:
    text = (EXAMPLES / "challenge.json").read_text(encoding="utf-8")
    assert len(load_config(write(tmp_path, "\ufeff" + text)).apps) == 2


def test_number_with_thousands_of_digits(tmp_path: Path) -> None:
    text = '{"Apps": [{"Name": "a", "Ports": [%s], "Targets": ["x:1"]}]}' % ("1" * 5000)
    assert "a number has too many digits" in load_error(write(tmp_path, text))


def test_deeply_nested_json(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, "[" * 100_000 + "]" * 100_000))
    assert "nested too deeply" in message


def test_duplicate_json_key_is_reported_in_context(tmp_path: Path) -> None:
    text = '{"Apps": [{"Name": "a", "Ports": [1], "Ports": [2], "Targets": ["x:1"]}]}'
    message = load_error(write(tmp_path, text))
    assert (
        message == f'{tmp_path / "proxy.json"}: app "a" (Apps[0]): Ports: key given more than once'
    )


def test_errors_from_file_name_the_file(tmp_path: Path) -> None:
    data = two_apps()
    data["Apps"][1]["Targts"] = []
    path = write(tmp_path, json.dumps(data), name="edge.json")
    message = load_error(path)
    assert message == f'{path}: app "b" (Apps[1]): Targts: unknown key (did you mean "Targets"?)'


# --------------------------------------------------------------------------- fuzz

ODD_VALUES: list[object] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    65536,
    2**70,
    10**5000,
    1.5,
    math.nan,
    math.inf,
    "",
    "x",
    "::1:80",
    "[::1]:80",
    "1-99999",
    "7000-7999",
    [],
    [1],
    ["a:1"],
    {},
    {"Name": "x"},
    [[[]]],
]


def _containers(node: object, found: list[object]) -> list[object]:
    """Every dict and list inside node (node included)."""
    if isinstance(node, (dict, list)):
        found.append(node)
        for child in node.values() if isinstance(node, dict) else node:
            _containers(child, found)
    return found


def _mutate(data: dict[str, Any], rng: random.Random) -> None:
    for _ in range(rng.randint(1, 3)):
        node = rng.choice(_containers(data, []))
        if isinstance(node, dict):
            action = rng.choice(["delete", "swap", "add"])
            if action == "add" or not node:
                node[rng.choice(["Extra", "Port", "name", "Interval", "Apps"])] = rng.choice(
                    ODD_VALUES
                )
            elif action == "delete":
                del node[rng.choice(list(node))]
            else:
                node[rng.choice(list(node))] = copy.deepcopy(rng.choice(ODD_VALUES))
        elif isinstance(node, list):
            action = rng.choice(["delete", "swap", "append"])
            if action == "append" or not node:
                node.append(copy.deepcopy(rng.choice(ODD_VALUES + [copy.deepcopy(node)])))
            elif action == "delete":
                del node[rng.randrange(len(node))]
            else:
                node[rng.randrange(len(node))] = copy.deepcopy(rng.choice(ODD_VALUES))


def _rich_config() -> dict[str, Any]:
    data = two_apps(Listen=["::"], Admin="127.0.0.1:9901", Workers=2, PipeSize=65536)
    data["Apps"][0].update(
        Balance="random",
        HealthCheck={"Interval": 1, "Timeout": 0.5, "Rise": 1, "Fall": 2},
        ProxyProtocol="v1",
        Ports=["7000-7010", 5001],
    )
    return data


def test_fuzz_mutations_only_raise_config_error() -> None:
    rng = random.Random(1234)
    outcomes = {"valid": 0, "error": 0}
    for _ in range(500):
        data = _rich_config()
        _mutate(data, rng)
        try:
            config = parse_config(data, SRC)
        except ConfigError as exc:
            message = str(exc)
            assert len(message.splitlines()) == 1 and message.startswith(f"{SRC}: "), message
            assert "cannot validate" not in message, message  # the safety net hides a bug
            outcomes["error"] += 1
        else:
            assert isinstance(config, Config)
            summary(config)  # a valid config always summarizes
            outcomes["valid"] += 1
    assert outcomes["valid"] > 20 and outcomes["error"] > 100  # the fuzzing did explore


def test_fuzz_corrupted_json_text_only_raises_config_error(tmp_path: Path) -> None:
    rng = random.Random(1234)
    text = json.dumps(_rich_config())
    path = tmp_path / "fuzz.json"
    for _ in range(200):
        chars = list(text)
        for _ in range(rng.randint(1, 4)):
            chars[rng.randrange(len(chars))] = rng.choice('{}[],:"0-x \\\n')
        path.write_text("".join(chars), encoding="utf-8")
        try:
            load_config(path)
        except ConfigError as exc:
            assert len(str(exc).splitlines()) == 1
            assert "cannot validate" not in str(exc)


@pytest.mark.parametrize("data", [None, 1, "x", [], 1.5, True, {1: 2}, {"Apps": [None]}])
def test_any_top_level_value_is_a_config_error(data: object) -> None:
    error_of(data)


# --------------------------------------------------------------------------- L4 client features


def sharing(*apps: dict[str, Any]) -> dict[str, Any]:
    return {"Apps": [{"Targets": ["10.0.0.1:443"], **a} for a in apps]}


def test_apps_share_a_port_by_server_name() -> None:
    config = parse_config(
        sharing(
            {"Name": "a", "Ports": [443], "ServerNames": ["A.example.com"]},
            {"Name": "w", "Ports": [443, 8443], "ServerNames": ["*.example.com"]},
            {"Name": "default", "Ports": [443]},
        ),
        SRC,
    )
    assert config.app("a").server_names == ("a.example.com",)
    assert [a.name for a in config.port_apps()[443]] == ["a", "w", "default"]
    assert config.port_owner() == {443: "default", 8443: "w"}
    text = summary(config)
    assert "server names: a.example.com" in text
    assert "access log:  off" in text


def test_new_keys_parse_and_show_in_the_summary() -> None:
    data = with_app(0, AcceptProxyProtocol=True, MaxConnectionsPerSource=3)
    data["AccessLog"] = "/var/log/fastproxy/access.log"
    config = parse_config(data, SRC)
    assert config.apps[0].accept_proxy_protocol is True
    assert config.apps[0].max_connections_per_source == 3
    assert config.access_log == "/var/log/fastproxy/access.log"
    text = summary(config)
    assert "max 3 per source (IPv4 /32, IPv6 /64), max 1024 in preface" in text
    assert "PROXY in:    required, from any sender" in text
    behind = with_app(0, AcceptProxyProtocol=["10.0.0.0/8"], Deny=["192.0.2.0/24"],
                    MaxConnectionRate=50)  # fmt: skip
    assert "access log:  /var/log/fastproxy/access.log" in text
    text = summary(parse_config(behind, SRC))
    assert "PROXY in:    required, from 10.0.0.0/8" in text
    assert (
        "admission:   allow all, deny 1 network, new connections 50/s, per source unlimited" in text
    )
    assert "access log:  stderr" in summary(parse_config(two_apps(AccessLog="-"), SRC))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            with_app(1, AcceptProxyProtocol="yes"),
            APP_B + "AcceptProxyProtocol: expected true, false or a list of trusted sender"
            ' CIDRs ("10.0.0.0/8"), got string "yes"',
        ),
        (
            with_app(1, AcceptProxyProtocol=[]),
            APP_B + "AcceptProxyProtocol: empty list, write false to accept no PROXY header",
        ),
        (
            with_app(1, AcceptProxyProtocol=["10.0.0.1/8"]),
            APP_B + 'AcceptProxyProtocol[0]: "10.0.0.1/8" has bits set past its prefix,'
            " did you mean 10.0.0.0/8?",
        ),
        (
            with_app(1, Deny=["10.0.0.0/33"]),
            APP_B + 'Deny[0]: "10.0.0.0/33" is not a CIDR ("10.0.0.0/8", "2001:db8::/32")',
        ),
        (
            with_app(1, Allow="10.0.0.0/8"),
            APP_B + 'Allow: expected a list of CIDRs ("10.0.0.0/8"), got string "10.0.0.0/8"',
        ),
        (
            with_app(1, SourceMask={"IPv6": 129}),
            APP_B + "SourceMask.IPv6: must be between 1 and 128, got 129",
        ),
        (
            with_app(1, SourceMask={"Ipv4": 24}),
            APP_B + 'SourceMask.Ipv4: unknown key (did you mean "IPv4"?)',
        ),
        (
            with_app(1, MaxConnectionRate=-1),
            APP_B + "MaxConnectionRate: must be between 0 and 1000000 per second, got -1",
        ),
        (
            with_app(1, MaxConnectionRatePerSouce=5),
            APP_B
            + 'MaxConnectionRatePerSouce: unknown key (did you mean "MaxConnectionRatePerSource"?)',
        ),
        (
            with_app(1, MaxConnectionsInPreface=0),
            APP_B + "MaxConnectionsInPreface: must be between 1 and 2147483647, got 0",
        ),
        (
            with_app(1, MaxConnectionsPerSource=-1),
            APP_B + "MaxConnectionsPerSource: must be between 0 and 2147483647, got -1",
        ),
        (with_app(1, ServerNames="a.com"), APP_B + "ServerNames: expected a list of server names"),
        (with_app(1, ServerNames=[]), APP_B + "ServerNames: empty list"),
        (
            with_app(1, ServerNames=["a.com", "bad name"]),
            APP_B + 'ServerNames[1]: "bad name" is not a server name',
        ),
        (with_app(1, ServerNames=["a.*.com"]), APP_B + 'ServerNames[0]: "a.*.com" is not a server'),
        (
            with_app(1, ServerNames=["a.com", "A.com"]),
            APP_B + 'ServerNames[1]: "A.com" is listed more than once',
        ),
        (two_apps(AccessLog=1), f'{SRC}: AccessLog: expected a file path or "-" for stderr'),
        (two_apps(AccessLog=" "), f'{SRC}: AccessLog: " " is not a file path'),
        (
            sharing(
                {"Name": "x", "Ports": [443], "ServerNames": ["x.com"]},
                {"Name": "y", "Ports": [443]},
                {"Name": "z", "Ports": [443]},
            ),
            f'{SRC}: app "z" (Apps[2]): Ports: port 443 is already used by app "y" (apps share',
        ),
        (
            sharing(
                {"Name": "x", "Ports": [443], "ServerNames": ["x.com", "*.x.com"]},
                {"Name": "y", "Ports": [443], "ServerNames": ["*.x.com"]},
            ),
            f'{SRC}: app "y" (Apps[1]): ServerNames: "*.x.com" is also a server name of app "x"'
            " on port 443",
        ),
        (
            sharing(
                {"Name": "x", "Ports": [443], "ServerNames": ["x.com"]},
                {
                    "Name": "y",
                    "Ports": [443],
                    "ServerNames": ["y.com"],
                    "AcceptProxyProtocol": True,
                },
            ),
            f'{SRC}: app "y" (Apps[1]): AcceptProxyProtocol: apps sharing port 443 must agree,'
            ' app "x" has false',
        ),
    ],
)
def test_new_key_errors(data: dict[str, Any], expected: str) -> None:
    assert error_of(data).startswith(expected)
