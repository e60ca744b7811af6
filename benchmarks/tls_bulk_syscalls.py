"""A TLS client downloads N MiB through one fastproxy worker terminating TLS; prints
the proxy's CPU per GB and, unless NOSTRACE=1, its syscalls (strace -c on every thread).
Not part of the suite: the evidence behind results/profiles/tls_splice_buffers.md.

    .venv/bin/python benchmarks/tls_bulk_syscalls.py splice|copy WORKDIR MIB"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tlscerts import Pki  # noqa: E402

MIB = 1 << 20


def backend(mib: int) -> int:
    """A plain target that sends `mib` MiB to whoever connects, then its FIN."""
    server = socket.create_server(("127.0.0.1", 0))
    payload = os.urandom(MIB)

    def one(conn: socket.socket) -> None:
        try:
            for _ in range(mib):
                conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(MIB):
                pass
        except OSError:  # a health check's connection
            pass
        conn.close()

    def accept() -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return int(server.getsockname()[1])


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def main() -> None:
    mode, where, mib = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    where.mkdir(parents=True, exist_ok=True)
    pki = Pki(where / "pki")
    cert, key = pki.issue("a", ["a.test"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = {"Name": "t", "Ports": [port], "Targets": [f"127.0.0.1:{backend(mib)}"],
           "Tls": {"Certificates": [{"Cert": cert, "Key": key}]}}  # fmt: skip
    config = {"Relay": mode, "Workers": 1, "Admin": "127.0.0.1:0", "Apps": [app]}
    (where / "c.json").write_text(json.dumps(config))
    log = where / "log"
    proxy = subprocess.Popen(
        [sys.executable, "-m", "fastproxy", "serve", str(where / "c.json"), "--no-watch",
         "--state-dir", str(where / "state"), "--control-socket", str(where / "ctl.sock")],
        stderr=log.open("w"),
    )  # fmt: skip
    try:
        while b"serving" not in log.read_bytes():
            time.sleep(0.05)
        context = ssl.create_default_context(cafile=pki.ca)

        def download() -> int:
            raw = socket.create_connection(("127.0.0.1", port))
            with context.wrap_socket(raw, server_hostname="a.test") as tls:
                got = 0
                while chunk := tls.recv(MIB):
                    got += len(chunk)
                return got

        download()  # warm: pools, tickets
        strace = None
        if os.environ.get("NOSTRACE") != "1":
            threads = [a for tid in os.listdir(f"/proc/{proxy.pid}/task") for a in ("-p", tid)]
            out = where / f"strace-{mode}.txt"
            strace = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), *threads],
                                      stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(1)
        before = cpu_ticks(proxy.pid)
        got = download()
        ticks = cpu_ticks(proxy.pid) - before
        if strace is not None:
            strace.send_signal(2)
            strace.wait()
        ms_per_gb = ticks * 1000 / os.sysconf("SC_CLK_TCK") / (got / 1e9)
        print(f"{mode}: {got} bytes, proxy CPU {ms_per_gb:.0f} ms/GB")
        if strace is not None:
            print(out.read_text())
    finally:
        proxy.terminate()
        proxy.wait()


if __name__ == "__main__":
    main()
