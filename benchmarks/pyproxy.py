"""A minimal asyncio TCP proxy: the "plain Python" contender of the benchmarks.

    python benchmarks/pyproxy.py LISTEN_PORT TARGET_PORT [LISTEN_PORT TARGET_PORT ...] [--uvloop]

Listens on 127.0.0.1:LISTEN_PORT and relays each connection to 127.0.0.1:TARGET_PORT with
asyncio Protocols: each side's data_received writes to the other side's transport, and
when a transport's write buffer is full (pause_writing) the other side stops reading
until it drains (resume_writing): backpressure instead of growing memory. With --uvloop
the same code runs on uvloop's event loop. One relay per connection, no balancing,
health checks or half-close: the floor of what a Python proxy costs."""

from __future__ import annotations

import asyncio
import resource
import sys

HOST = "127.0.0.1"


class Side(asyncio.Protocol):
    """One socket of a proxied connection; `peer` is the other one's protocol."""

    def __init__(self, target: int, peer: Side | None = None) -> None:
        self.target = target
        self.peer = peer
        self.transport: asyncio.Transport
        self.early: list[bytes] = []  # client bytes read before the target connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.peer is None:  # an accepted client: read nothing until its target is there
            transport.pause_reading()  # type: ignore[attr-defined]
            asyncio.ensure_future(self.connect())
        elif self.peer.transport.is_closing():  # the client left while we connected
            transport.close()
        else:  # the target side, connected
            self.peer.peer = self
            if self.peer.early:
                transport.write(b"".join(self.peer.early))  # type: ignore[attr-defined]
            self.peer.transport.resume_reading()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: Side(self.target, self), HOST, self.target)
        except OSError:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:  # uvloop may read once before pause_reading takes effect
            self.early.append(data)
        else:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        # An end from either side closes both, each once its buffered bytes are written.
        # No half-close: uvloop 0.23 aborts ("double free or corruption") when a
        # transport is closed after write_eof().
        if self.peer is not None:
            self.peer.transport.close()
        return False  # close our transport too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:  # our write buffer is full: stop the source
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()


async def serve(pairs: list[tuple[int, int]]) -> None:
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(lambda t=target: Side(t), HOST, listen, backlog=4096)
        for listen, target in pairs
    ]
    print("serving", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main(argv: list[str]) -> None:
    ports = [int(arg) for arg in argv if arg != "--uvloop"]
    pairs = list(zip(ports[::2], ports[1::2]))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # 10,000 idle connections and more
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if "--uvloop" in argv:
        import uvloop

        uvloop.run(serve(pairs))
    else:
        asyncio.run(serve(pairs))


if __name__ == "__main__":
    main(sys.argv[1:])
