"""The PROXY header and ClientHello parsers, and a terminated TLS handshake, under
AddressSanitizer and libFuzzer (fuzz/, `make fuzz-parsers` runs 10 million inputs
each, 200,000 handshakes): a short run of the three harnesses, built from the
relay's own .pxi sources, from the committed seeds. It fails on any memory error ASan
reports and on a broken contract (the harnesses abort: a header longer than its bytes,
a server name outside the hello, waiting for bytes already there, a handshake finished
without a client, an ALPN never offered)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = 20_000
TLS_RUNS = 1_000  # handshakes: ~1.5 s


def test_parsers_survive_a_short_fuzz_run_under_asan() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "run.py"), "--runs", str(RUNS),
         "--tls-runs", str(TLS_RUNS)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = re.findall(r"fuzz-parsers (\w+): (\d+) inputs .* crashes: 0", done.stdout)
    assert sorted(lines) == [("hello", str(RUNS)), ("proxy", str(RUNS)), ("tls", str(TLS_RUNS))], (
        done.stdout
    )
