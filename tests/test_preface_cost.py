"""A slow preface costs the proxy CPU in proportion to its bytes (issue 19, finding 4).

Eight clients each send a 16 KB ClientHello one byte per TCP segment. Peeking the
whole hello again on every segment, and parsing it from the start, made that
quadratic; and even a single peek of a queue of 16,384 one-byte segments costs the
kernel 0.6 s (it walks the receive queue from its head for every segment copied),
so the relay now reads the hello off the socket. Here the proxy's CPU time
(/proc/PID/stat) must stay below the attackers' own (before: 2.6 to 7 times theirs),
and a well-behaved client of the same worker (Workers: 1) keeps every round trip
under 200 ms (before: stalls of 1 to 5 s; the margin is for a machine shared by
other test runs)."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from proxyproc import Proxy, app, free_ports
from servers import RecordingEcho

CLIENTS = 8
SNI_MAX = 16384  # the most a ClientHello may take on the wire (structs.pxi)
NAME = b"big.example.com"
SPREAD = 2.5  # seconds the attack takes


def big_hello() -> bytes:
    """A valid ClientHello of exactly SNI_MAX bytes, one record, its server name
    last, after a padding extension."""
    entry = b"\x00" + struct.pack("!H", len(NAME)) + NAME
    sni = struct.pack("!HHH", 0, len(entry) + 2, len(entry)) + entry
    head = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    pad = SNI_MAX - 5 - 4 - len(head) - 2 - 4 - len(sni)
    exts = struct.pack("!HH", 21, pad) + bytes(pad) + sni
    body = head + struct.pack("!H", len(exts)) + exts
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    framed = b"\x16\x03\x01" + struct.pack("!H", len(message)) + message
    assert len(framed) == SNI_MAX
    return framed


# The attackers, in a process of their own so that their CPU time is theirs alone:
# round robin over the clients, one byte each, then a pause, so every byte is a segment.
# Paced to end in SPREAD seconds, well inside the relay's 5 s for a preface.
ATTACK = """
import socket, sys, time, hashlib
port, clients, hello = int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.stdin.read())
pace = float(sys.argv[3]) / len(hello)
socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(clients)]
for s in socks:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
start = time.monotonic()
for i in range(len(hello)):
    byte = hello[i : i + 1]
    for s in socks:
        s.send(byte)
    ahead = start + i * pace - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
for s in socks:
    s.shutdown(socket.SHUT_WR)
    echo = b""
    while chunk := s.recv(65536):
        echo += chunk
    print(hashlib.sha256(echo).hexdigest())
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_byte_by_byte_hello_costs_linear_cpu_and_stalls_no_one(tmp_path: Path) -> None:
    named, plain = RecordingEcho(), RecordingEcho()
    port, other = free_ports(2)
    apps = [
        app("named", [port], [named.address], ServerNames=[NAME.decode()]),
        app("plain", [other], [plain.address]),
    ]
    proxy = Proxy(tmp_path, {"Apps": apps, "Workers": 1})
    hello = big_hello()
    with socket.create_connection(("127.0.0.1", other), timeout=10) as good:
        good.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        before = cpu_seconds(proxy.pid)
        attack = subprocess.Popen(
            [sys.executable, "-c", ATTACK, str(port), str(CLIENTS), str(SPREAD)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert attack.stdin is not None
        attack.stdin.write(hello.hex())
        attack.stdin.close()
        worst, trips, deadline = 0.0, 0, time.monotonic() + 60
        # Popen.poll would reap the attackers without their rusage: wait4 does both.
        while (ended := os.wait4(attack.pid, os.WNOHANG))[0] == 0:
            assert time.monotonic() < deadline, "the attack took over a minute"
            start = time.monotonic()
            good.sendall(b"ping")
            assert good.recv(4) == b"ping"
            worst = max(worst, time.monotonic() - start)
            trips += 1
            time.sleep(0.005)
        proxy_cpu = cpu_seconds(proxy.pid) - before
        _, status, usage = ended
        attack.returncode = os.waitstatus_to_exitcode(status)
        assert attack.stdout is not None
        digests = attack.stdout.read().split()
    client_cpu = usage.ru_utime + usage.ru_stime
    print(f"proxy cpu {proxy_cpu:.3f} s, clients {client_cpu:.3f} s, "
          f"worst round trip {worst * 1000:.1f} ms of {trips}")  # fmt: skip
    assert attack.returncode == 0
    # Every hello went through whole, to the app it names.
    assert digests == [hashlib.sha256(hello).hexdigest()] * CLIENTS
    assert trips > 50
    assert proxy_cpu < client_cpu, (proxy_cpu, client_cpu)
    assert worst < 0.2, worst
    named.backend.close()
    plain.backend.close()
