"""How evenly long-lived connections spread over the relay's workers, four ways
(issue 12, item 4: one SO_REUSEPORT listener per worker against EPOLLEXCLUSIVE):

- exclusive:          one listening socket, every worker waits on it with EPOLLEXCLUSIVE
                      (what the relay did before the hand-off);
- exclusive+handoff:  the same, and the accepting worker hands a client to a worker with
                      at least two connections fewer (the relay today, handoff.pxi);
- reuseport:          a SO_REUSEPORT group of one socket per worker, each worker waiting
                      on its own (the kernel picks a socket by a hash of the 4-tuple);
- reuseport+handoff:  both.

Loads: `burst`, N clients connect at once (each then gets its greeting through the
relay); `one-by-one`, N clients connect one after the other, each relayed before the
next; `refill`, N in a burst, then the first half of them close and N/2 new clients come
(can a worker that lost its connections get the new ones?). After each round: the
connections each worker holds (Relay.worker_connections), and the busiest worker's
share (0.5 is even with two workers). The relay runs in this process, through its API,
with a threaded echo target. As root, in a network namespace of its own:

    unshare --net sh -c 'ip link set lo up && .venv/bin/python benchmarks/spread.py'

Writes a Markdown table to stdout (committed as results/profiles/spread.md)."""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

from fastproxy import _relay
from fastproxy.backends import NamedEchoServer

MODES = ("exclusive", "exclusive+handoff", "reuseport", "reuseport+handoff")
LOADS = ("burst", "one-by-one", "refill")
GREETING = b"spread\n"


def listeners(mode: str, workers: int) -> list[socket.socket]:
    """The listening sockets of one port: one shared, or one per worker in a group."""
    count = workers if mode.startswith("reuseport") else 1
    socks: list[socket.socket] = []
    port = 0
    for _ in range(count):
        sock = socket.socket()
        if count > 1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(4096)
        port = sock.getsockname()[1]
        socks.append(sock)
    return socks


def start_relay(mode: str, workers: int, target: int) -> tuple[_relay.Relay, list, int]:
    relay = _relay.Relay(workers=workers, handoff=mode.endswith("+handoff"))
    up = (socket.AF_INET, "127.0.0.1", target, 1, _relay.TARGET_UP, 1, False)
    relay.set_app(0, app_slot=0, targets=[up])
    socks = listeners(mode, workers)
    port = socks[0].getsockname()[1]
    relay.set_port(port, 0)
    for i, sock in enumerate(socks):
        relay.add_listener(sock.fileno(), port, worker=i if len(socks) > 1 else -1)
    relay.start()
    return relay, socks, port


def stop_relay(relay: _relay.Relay, socks: list[socket.socket]) -> None:
    for sock in socks:
        relay.remove_listener(sock.fileno())
        sock.close()
    relay.stop()


def greeted(sock: socket.socket) -> None:
    got = b""
    while len(got) < len(GREETING):
        chunk = sock.recv(64)
        if not chunk:
            raise RuntimeError("closed before the greeting came through")
        got += chunk


def connect_burst(port: int, count: int) -> list[socket.socket]:
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    for client in clients:
        greeted(client)
    return clients


def connect_one_by_one(port: int, count: int) -> list[socket.socket]:
    clients = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        greeted(client)
        clients.append(client)
    return clients


def settled(relay: _relay.Relay, total: int) -> list[int]:
    """Connections per worker once the relay holds `total` of them."""
    deadline = time.monotonic() + 10
    while sum(counts := list(relay.worker_connections())) != total:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the relay holds {counts}, not {total}")
        time.sleep(0.005)
    return counts


def load(name: str, relay: _relay.Relay, port: int, count: int) -> tuple[list[int], list]:
    if name == "burst":
        clients = connect_burst(port, count)
    elif name == "one-by-one":
        clients = connect_one_by_one(port, count)
    else:  # refill
        clients = connect_burst(port, count)
        settled(relay, count)
        half = count // 2
        for client in clients[:half]:
            client.close()
        settled(relay, count - half)
        clients = clients[half:] + connect_burst(port, half)
    return settled(relay, count), clients


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, nargs="+", default=[32, 256])
    args = parser.parse_args()
    target = NamedEchoServer(GREETING.decode().strip())
    rows: list[str] = []
    for load_name in LOADS:
        for count in args.clients:
            for mode in MODES:
                shares, worst = [], [0] * args.workers
                for _ in range(args.rounds):
                    relay, socks, port = start_relay(mode, args.workers, target.port)
                    counts, clients = load(load_name, relay, port, count)
                    shares.append(max(counts) / count)
                    if max(counts) >= max(worst):
                        worst = sorted(counts, reverse=True)
                    for client in clients:
                        client.close()
                    settled(relay, 0)
                    stop_relay(relay, socks)
                rows.append(
                    f"| {load_name} | {count} | {mode} | {statistics.median(shares):.3f}"
                    f" | {max(shares):.3f} | {'/'.join(map(str, worst))} |"
                )
                print(rows[-1], file=sys.stderr, flush=True)
    target.close()
    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout
    print(f"# Spreading long-lived connections over {args.workers} relay workers\n")
    print(
        f"`benchmarks/spread.py --rounds {args.rounds}` at {commit}{' (dirty)' if dirty else ''},"
        f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Linux {os.uname().release},"
        f" {os.cpu_count()} CPUs. Busiest worker's share of the connections after each round"
        " (0.500 is even): median and worst over the rounds, and the worst round's split.\n"
    )
    print("| load | clients | listeners | busiest share, median | worst | worst split |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
