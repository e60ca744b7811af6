"""Runtime weights and runtime target state kept across restarts (issue 23):
`fastproxy target weight`, the admin POST, and the state directory, which gives drain,
disable and weight back after a restart until the config changes that target."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from fastproxy.backends import NamedEchoServer
from proxyproc import Proxy, app, free_ports
from servers import talk


def ask(port: int) -> str:
    return talk(port, b"x").partition(b"\n")[0].decode()


def weighted(server: NamedEchoServer, weight: int = 1) -> dict[str, object]:
    return {"Address": f"127.0.0.1:{server.port}", "Weight": weight}


def test_runtime_weight_and_state_across_restarts(tmp_path: Path) -> None:
    a, b = NamedEchoServer("a"), NamedEchoServer("b")
    try:
        (port,) = free_ports(1)
        state = tmp_path / "state"
        address_a, address_b = (f"127.0.0.1:{s.port}" for s in (a, b))
        config = {"Apps": [app("web", [port], [weighted(a), weighted(b)])]}
        proxy = Proxy(tmp_path, config, "--state-dir", str(state))

        done = subprocess.run(
            [sys.executable, "-m", "fastproxy", "target", "weight", "web", address_b, "3",
             "--admin-socket", proxy.admin_socket, "--token-file", str(proxy.token_file)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "weight 3" in done.stdout
        assert Counter(ask(port) for _ in range(8)) == {"a": 2, "b": 6}
        # Bad weights: one-line errors, nothing changes.
        for bad in ("0", "1001", "x"):
            code, body = proxy.http("POST", f"/targets/web/{address_b}/weight/{bad}")
            assert code == 400 and b"weight must be an integer 1..1000" in body, body
        assert proxy.http("POST", f"/targets/web/{address_a}/drain")[0] == 200
        saved = json.loads((state / "target-state.json").read_text())
        assert saved["apps"]["web"][address_b]["weight"] == 3
        assert saved["apps"]["web"][address_a]["admin"] == "draining"
        assert proxy.stop() == 0

        # Restarted with the same config: drained and weighted as before.
        proxy = Proxy(tmp_path, config, "--state-dir", str(state))
        targets = {t["address"]: t for t in proxy.status()["apps"][0]["targets"]}
        assert targets[address_a]["state"] == "draining"
        assert (targets[address_b]["weight"], targets[address_b]["config_weight"]) == (3, 1)
        assert {ask(port) for _ in range(6)} == {"b"}
        assert proxy.stop() == 0

        # The config changes b (its weight): b's runtime weight goes, a's drain stays.
        changed = {"Apps": [app("web", [port], [weighted(a), weighted(b, 2)])]}
        proxy = Proxy(tmp_path, changed, "--state-dir", str(state))
        targets = {t["address"]: t for t in proxy.status()["apps"][0]["targets"]}
        assert targets[address_a]["state"] == "draining"
        assert targets[address_b]["weight"] == 2
        saved = json.loads((state / "target-state.json").read_text())
        assert address_b not in saved["apps"]["web"]
        assert proxy.http("POST", f"/targets/web/{address_a}/enable")[0] == 200
        assert Counter(ask(port) for _ in range(6)) == {"a": 2, "b": 4}
        assert proxy.stop() == 0
    finally:
        a.close()
        b.close()
