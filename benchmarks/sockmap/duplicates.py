"""Why `Relay: sockmap` was taken out of fastproxy: the kernel's sk_skb redirect now and
then sends one segment twice, with none of fastproxy's relay code running.

Each round pairs two sockets in relay.c's maps (beside this file) exactly as the relay
did (no worker, no epoll loop, no SO_RCVLOWAT), streams 256 MiB through an echo and
compares the bytes. Rounds alternate between sockets nobody waits on and sockets
registered in an epoll set with no events asked for (as the relay's are, to see FIN and
reset), where it happens more often. Run as root in a network namespace of its own:
`make sockmap-duplicates`. Needs bcc and the kernel headers (it compiles relay.c
itself). Prints one line per corrupted round and a summary."""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import socket
import struct
import sys
import threading
import time

from fastproxy.steering.bpfsys import (
    BPF_PROG_TYPE_SK_SKB,
    BPF_SK_SKB_VERDICT,
    map_delete,
    map_update,
    prog_attach,
)

SO_COOKIE = 57
SIZE = 256 << 20
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay.c")
MAPS = ("socks", "sources", "peers")


def load() -> tuple[object, dict[str, int]]:
    """relay.c compiled and loaded by bcc, its verdict program attached to `sources` (the
    sockets whose bytes it moves); bcc's object (keep it) and the maps' fds."""
    from bcc import BPF, lib

    bpf = BPF(src_file=SOURCE.encode())
    prog = bpf.load_func(b"fastproxy_relay", BPF_PROG_TYPE_SK_SKB, attach_type=BPF_SK_SKB_VERDICT)
    fds = {name: lib.bpf_table_fd(bpf.module, name.encode()) for name in MAPS}
    prog_attach(prog.fd, fds["sources"], BPF_SK_SKB_VERDICT)
    return bpf, fds


def echo_server() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            with conn:
                while data := conn.recv(1 << 20):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server


def cookie(sock: socket.socket) -> bytes:
    return sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8)


def one_round(fds: dict[str, int], front: socket.socket, backend: tuple, waiter: bool) -> str:
    """'' when the bytes came back intact, else what differed."""
    payload = os.urandom(SIZE)
    client = socket.create_connection(front.getsockname())
    near, _ = front.accept()
    far = socket.create_connection(backend)
    pair = [(near, far), (far, near)]
    for sock, peer in pair:
        map_update(fds["peers"], cookie(sock), cookie(peer) + struct.pack("Q", 0))
    for sock, _ in pair:
        map_update(fds["socks"], cookie(sock), struct.pack("I", sock.fileno()))
    for sock, _ in pair:
        map_update(fds["sources"], cookie(sock), struct.pack("I", sock.fileno()))
    watcher = select.epoll()
    if waiter:
        for sock, _ in pair:
            watcher.register(sock.fileno(), 0)
    got = bytearray()

    def read() -> None:
        while len(got) < SIZE and (chunk := client.recv(1 << 20)):
            got.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    view = memoryview(payload)
    for offset in range(0, SIZE, 1 << 20):
        client.sendall(view[offset : offset + (1 << 20)])
    reader.join(60)
    time.sleep(0.05)  # anything extra still on its way
    client.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        got.extend(client.recv(1 << 22))
    watcher.close()
    for name in ("sources", "socks", "peers"):
        for sock, _ in pair:
            map_delete(fds[name], cookie(sock))
    for sock in (client, near, far):
        sock.close()
    if bytes(got) == payload:
        return ""
    first = next(i for i in range(min(len(got), SIZE)) if got[i] != payload[i])
    again = payload.rfind(bytes(got[first : first + 64]), 0, first + 63)
    replay = f", bytes {again}..{first} sent twice" if 0 <= again < first else ""
    return f"{len(got) - SIZE:+d} bytes, first difference at {first}{replay}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="rounds of each kind")
    args = parser.parse_args()
    bpf, fds = load()
    front = socket.socket()
    front.bind(("127.0.0.1", 0))
    front.listen()
    backend = echo_server().getsockname()
    failed = {False: 0, True: 0}
    for n in range(args.rounds * 2):
        waiter = bool(n % 2)
        what = one_round(fds, front, backend, waiter)
        if what:
            failed[waiter] += 1
            print(f"round {n} ({'epoll waiter' if waiter else 'no waiter'}): {what}", flush=True)
    bpf.cleanup()  # type: ignore[attr-defined]
    print(
        f"{os.uname().release}: corrupted {failed[True]} of {args.rounds} rounds with an epoll"
        f" waiter, {failed[False]} of {args.rounds} without ({SIZE >> 20} MiB each way each)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
