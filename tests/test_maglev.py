"""Balance: maglev (issue 23): the same target for a client on every instance with the
same targets, and little movement when a target is added, removed or down."""

from __future__ import annotations

import random
from pathlib import Path

from fastproxy import _relay
from fastproxy.backends import NamedEchoServer
from fastproxy.targets.routing import maglev_key
from proxyproc import Proxy, app, free_ports
from servers import talk

SOURCES = [f"127.0.{i // 200 + 1}.{i % 200 + 2}" for i in range(60)]


def answers(port: int) -> list[str]:
    return [talk(port, b"x", source=s).partition(b"\n")[0].decode() for s in SOURCES]


def test_maglev_same_pick_everywhere_and_little_movement(tmp_path: Path) -> None:
    servers = [NamedEchoServer(name) for name in "abcd"]
    try:
        targets = [f"127.0.0.1:{s.port}" for s in servers]
        one, two = free_ports(2)
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        first = Proxy(tmp_path / "a", {"Apps": [app("m", [one], targets, Balance="maglev")]})
        # Another instance, its targets listed in another order.
        config = {"Apps": [app("m", [two], targets[::-1], Balance="maglev")]}
        second = Proxy(tmp_path / "b", config)
        before = answers(one)
        assert answers(two) == before
        assert set(before) == set("abcd")  # spread over all of them
        # A target down (no reload): only its clients move.
        assert second.http("POST", f"/targets/m/{targets[3]}/disable")[0] == 200
        down = answers(two)
        assert all(b == d for b, d in zip(before, down) if b != "d"), (before, down)
        assert "d" not in down
        # A target removed by a reload: its clients move, the others (almost) stay.
        first.write_config({"Apps": [app("m", [one], targets[:3], Balance="maglev")]})
        first.http("POST", "/reload")
        removed = answers(one)
        moved = sum(1 for b, r in zip(before, removed) if b != "d" and b != r)
        print(f"removing 1 of 4: {moved} of {sum(b != 'd' for b in before)} others moved")
        assert "d" not in removed and moved <= 1, (before, removed)
        assert first.stop() == 0
        assert second.stop() == 0
    finally:
        for server in servers:
            server.close()


def test_maglev_movement_figures() -> None:
    """The figures of the issue's closing note, from the relay's own table and hash."""
    rng = random.Random(1)
    ips = [
        f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        for _ in range(100000)
    ]
    hashes = [_relay.addr_hash_for_tests(ip) for ip in ips]

    def picks(addresses: list[str]) -> list[str]:
        keys = [maglev_key(a) for a in addresses]
        return [addresses[i] for i in _relay.maglev_for_tests(keys, [1] * len(keys), hashes)]

    for n in (3, 10, 50):
        addresses = [f"10.0.0.{i}:80" for i in range(n)]
        base = picks(addresses)
        shares = [base.count(a) / len(base) * n for a in addresses]
        without = picks(addresses[:-1])
        others_moved = sum(b != w for b, w in zip(base, without) if b != addresses[-1]) / len(base)
        added = picks([*addresses, "10.0.1.1:80"])
        moved = sum(b != a for b, a in zip(base, added)) / len(base)
        print(
            f"N={n}: shares {min(shares):.3f}..{max(shares):.3f} of fair;"
            f" removing one moves {others_moved:.4f} of the clients it did not have;"
            f" adding one moves {moved:.4f} (ideal {1 / (n + 1):.4f})"
        )
        assert min(shares) > 0.9 and max(shares) < 1.1
        assert others_moved < 0.01
        assert moved < 1.3 / (n + 1)
