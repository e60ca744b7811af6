"""Build the parser fuzzers (libFuzzer + AddressSanitizer) and run each for a number
of inputs from the committed seed corpus: `make fuzz-parsers`, and the short run of
tests/test_fuzz_parsers.py. Prints one line per fuzzer: inputs, seconds, coverage,
crashes (with the reproducer's path); exits 1 if either crashed."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SRC = ROOT / "src" / "fastproxy"
BUILD = ROOT / "build" / "fuzz"
# The relay reads at most PP_MAX and SNI_MAX bytes of a preface (relay/structs.pxi); a
# TLS handshake's first flight is bounded by OpenSSL (16 KB records, a few of them).
FUZZERS = {"proxy": 536, "hello": 16384, "tls": 16384}
# The Cython module each harness calls, and what it links besides: tls.pyx holds the
# relay's TLS contexts and callbacks (relay/tlsctx.pxi), with OpenSSL.
MODULES = {"proxy": "parsers", "hello": "parsers", "tls": "tls"}
LIBS = {"parsers": [], "tls": ["-lssl", "-lcrypto"]}
HARNESS = {"proxy": "proxy.c", "hello": "hello.c", "tls": "tls_hello.c"}
CFLAGS = ["-g", "-O1", "-fno-omit-frame-pointer", "-fsanitize=address,fuzzer"]


@dataclass
class Result:
    name: str
    runs: int
    seconds: float
    coverage: str
    crash: str | None


def sources() -> list[Path]:
    relay = SRC / "relay"
    return [HERE / "parsers.pyx", HERE / "tls.pyx", relay / "structs.pxi",
            relay / "proxyproto.pxi", relay / "sni.pxi", relay / "tlsctx.pxi",
            SRC / "includes" / "system.pxd", SRC / "includes" / "openssl.pxd",
            *(HERE / c for c in HARNESS.values())]  # fmt: skip


def run(cmd: list[str | Path]) -> None:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"fuzz: {' '.join(map(str, cmd[:2]))} failed:\n{done.stdout}{done.stderr}")


def build() -> dict[str, Path]:
    """The two fuzzer binaries, rebuilt when a source is newer than them."""
    clang = shutil.which("clang")
    if clang is None:
        sys.exit("fuzz: clang not found: run `bash scripts/install-fuzz-deps.sh` (as root)")
    BUILD.mkdir(parents=True, exist_ok=True)
    binaries = {name: BUILD / f"fuzz-{name}" for name in FUZZERS}
    newest = max(p.stat().st_mtime for p in sources())
    if all(b.exists() and b.stat().st_mtime > newest for b in binaries.values()):
        return binaries
    include = sysconfig.get_paths()["include"]
    libdir = sysconfig.get_config_var("LIBDIR")
    python = f"python{sysconfig.get_config_var('LDVERSION')}"
    cython = Path(sys.executable).parent / "cython"
    # parsers.c references the Python API (module init) that is never called: link
    # libpython only to resolve it.
    includes: list[str | Path] = ["-I", BUILD, "-I", SRC, "-I", include]
    for module in sorted(set(MODULES.values())):
        run([cython, "-3", "-I", ROOT / "src", HERE / f"{module}.pyx", "-o",
             BUILD / f"{module}.c"])  # fmt: skip
        run([clang, *CFLAGS, "-Wno-unused-function", *includes, "-c", BUILD / f"{module}.c",
             "-o", BUILD / f"{module}.o"])  # fmt: skip
    for name, binary in binaries.items():
        module = MODULES[name]
        run([clang, *CFLAGS, *includes, HERE / HARNESS[name], BUILD / f"{module}.o",
             "-o", binary, f"-L{libdir}", f"-Wl,-rpath,{libdir}", f"-l{python}",
             *LIBS[module]])  # fmt: skip
    tls_certificates()
    return binaries


def tls_certificates() -> None:
    """The two certificates the tls harness serves (next to it: tls_hello.c finds them)."""
    for stem, name in (("tls-a", "a.test"), ("tls-b", "b.test")):
        if (BUILD / f"{stem}.pem").exists():
            continue
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", BUILD / f"{stem}.key",
             "-out", BUILD / f"{stem}.pem", "-days", "3650", "-subj", f"/CN={name}",
             "-addext", f"subjectAltName=DNS:{name},DNS:*.{name}"])  # fmt: skip


def fuzz(name: str, binary: Path, runs: int) -> Result:
    """Run one fuzzer: the committed seeds, new inputs kept aside in build/fuzz."""
    work = BUILD / f"corpus-{name}"
    work.mkdir(exist_ok=True)
    start = time.monotonic()
    done = subprocess.run(
        [binary, f"-runs={runs}", f"-max_len={FUZZERS[name]}", "-print_final_stats=1",
         f"-artifact_prefix={BUILD}/{name}-", work, HERE / "corpus" / name],
        capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.monotonic() - start
    out = done.stderr
    executed = re.search(r"stat::number_of_executed_units:\s*(\d+)", out)
    coverage = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", out)
    crash = None
    if done.returncode != 0:
        found = re.search(r"Test unit written to (\S+)", out)
        error = re.search(r"==\d+==ERROR: .*|deadly signal|ABORTING", out)
        crash = f"{error.group(0) if error else 'exit ' + str(done.returncode)}" + (
            f" (reproducer {found.group(1)})" if found else ""
        )
        print(out[-4000:], file=sys.stderr)
    return Result(
        name,
        int(executed.group(1)) if executed else 0,
        seconds,
        f"cov {coverage[-1][0]} ft {coverage[-1][1]} corpus {coverage[-1][2]}"
        if coverage
        else "cov ?",
        crash,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000_000, help="inputs per fuzzer")
    parser.add_argument("--only", choices=sorted(FUZZERS), help="run just this fuzzer")
    parser.add_argument(
        "--tls-runs",
        type=int,
        help="inputs for the tls fuzzer (default --runs): each"
        " input is a handshake, a thousand times slower than a parse",
    )
    args = parser.parse_args()
    binaries = build()
    failed = False
    for name, binary in binaries.items():
        if args.only and name != args.only:
            continue
        runs = args.tls_runs if name == "tls" and args.tls_runs is not None else args.runs
        r = fuzz(name, binary, runs)
        print(f"fuzz-parsers {r.name}: {r.runs} inputs in {r.seconds:.1f} s, {r.coverage}, "
              f"crashes: {r.crash or 0}", flush=True)  # fmt: skip
        failed = failed or r.crash is not None or r.runs < runs
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
