"""perf record on each TLS contender (HAProxy, nginx stream, fastproxy copy mode) during
full and resumed ECDSA handshake loads (tlsload, 16 in flight, 4 s each): where a
handshake's CPU goes, and how much of it is locking. Not part of the suite; the evidence
behind results/profiles/tls_handshake_locks.md. As root, in a netns of its own:

    unshare --net sh -c 'ip link set lo up && .venv/bin/python \
        benchmarks/tls_handshake_profile.py OUTDIR'"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_backends import start_nginx
from bench_procs import free_ports
from bench_tls import TlsContenders, make_certificates
from bench_tlsload import run_tlsload

NAMES = ("haproxy", "nginx-stream", "fastproxy-copy")


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tls-profile-"))
    (http_port,) = free_ports(1)
    nginx = start_nginx(http_port, work / "nginx")
    (work / "tls").mkdir()
    running = TlsContenders(work / "tls", http_port, make_certificates(work / "certs"))
    try:
        names = running.available(NAMES)
        for mode in ("full", "resumed"):
            for name in names:
                contender = running.get(name)
                port = contender.ports["ecdsa"]
                run_tlsload(mode, port, connections=16, seconds=1, warmup=0.5,
                            proxy_pid=contender.pid)  # fmt: skip
                data = out / f"{mode}-{name}.data"
                record = ["perf", "record", "-g", "-F", "2000", "-o", str(data)]
                perf = subprocess.Popen([*record, "-p", str(contender.pid)],
                                        stderr=subprocess.DEVNULL)  # fmt: skip
                time.sleep(0.5)
                figures, _ = run_tlsload(mode, port, connections=16, seconds=4, warmup=0.5,
                                         proxy_pid=contender.pid)  # fmt: skip
                perf.send_signal(2)
                perf.wait()
                shown = {k: round(v, 1) for k, v in figures.items() if "handshake" in k}
                print(mode, name, shown)
    finally:
        running.stop_all()
        nginx.stop()


if __name__ == "__main__":
    main()
