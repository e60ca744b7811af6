"""Compiling and loading bpf/steer.c with bcc, in a short-lived child process."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from .bpfsys import BPF_PROG_TYPE_SK_LOOKUP, BPF_SK_LOOKUP, probe_sk_lookup
from .errors import SteeringUnavailable

PROGRAM_NAME = "fastproxy_steer"  # the C function; also the kernel's name for the program
MAP_NAMES = ("ports", "sockets", "counters")

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # fastproxy/


def _source_path() -> str | None:
    """steer.c shipped in the package (fastproxy/bpf/), else the repository's bpf/."""
    here = _PACKAGE  # fastproxy/
    for candidate in (
        os.path.join(here, "bpf", "steer.c"),
        os.path.join(here, os.pardir, os.pardir, "bpf", "steer.c"),  # a source checkout
    ):
        if os.path.isfile(candidate):
            return os.path.normpath(candidate)
    return None


def probe() -> str | None:
    """None if BPF steering can be loaded here, else a one-line reason why not."""
    if os.geteuid() != 0:
        return "not root"
    # Found, not imported: importing loads libbcc and LLVM into this process, which
    # only the compiler child (see compile_program) should carry.
    if importlib.util.find_spec("bcc") is None:
        if os.path.isdir("/usr/lib/python3/dist-packages/bcc"):
            return f"bcc not importable by {sys.executable} (link it: scripts/link-bcc.sh)"
        return "bcc not importable (install python3-bpfcc)"
    build = f"/lib/modules/{os.uname().release}/build"
    if not os.path.isdir(build):
        return f"kernel headers missing at {build} (run scripts/install-system-deps.sh)"
    if _source_path() is None:
        return "BPF source steer.c not found (neither in the package nor in bpf/)"
    return probe_sk_lookup()


@contextlib.contextmanager
def _stderr_captured() -> Iterator[IO[bytes]]:
    """Send fd 2 to a temporary file: bcc's clang and the verifier write there directly."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield tmp
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _first_error(tmp: IO[bytes], fallback: str) -> str:
    tmp.seek(0)
    lines = [ln.strip() for ln in tmp.read().decode(errors="replace").splitlines() if ln.strip()]
    for line in lines:
        if "error" in line.lower():
            return line
    return lines[-1] if lines else fallback


@dataclass
class Objects:
    """File descriptors of one loaded program and its maps (and link, once attached)."""

    fds: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


_PACKAGE_PARENT = os.path.dirname(_PACKAGE)


def compile_program() -> Objects:
    """Compile and load bpf/steer.c in a short-lived child process, which hands the
    program's and maps' descriptors back over a socketpair (SCM_RIGHTS). bcc maps
    LLVM into whoever uses it (~130 MiB of RSS that would stay with the proxy for
    its whole life); the child takes that with it when it exits."""
    source = _source_path()
    if source is None:
        raise SteeringUnavailable("BPF source steer.c not found")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        try:
            with theirs:
                # -I: no current directory on the path (a stray copy.py there would
                # shadow the stdlib); this very package is imported by its location.
                code = (
                    f"import sys; sys.path.insert(0, {_PACKAGE_PARENT!r}); "
                    "from fastproxy.steering.loader import _compiler_main; "
                    f"_compiler_main({source!r}, {theirs.fileno()})"
                )
                child = subprocess.run(
                    [sys.executable, "-I", "-c", code],
                    pass_fds=[theirs.fileno()],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=120,
                )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SteeringUnavailable(f"cannot run the BPF compiler: {exc}") from None
        ours.settimeout(5)
        try:
            data, fds, _, _ = socket.recv_fds(ours, 65536, len(MAP_NAMES) + 1)
        except OSError:
            data, fds = b"", []
    reply = json.loads(data) if data else {}
    if "error" in reply or len(fds) != len(MAP_NAMES) + 1:
        for fd in fds:
            os.close(fd)
        noise = child.stderr.decode(errors="replace").strip().splitlines()
        raise SteeringUnavailable(
            reply.get("error") or f"the BPF compiler failed: {noise[-1] if noise else '?'}"
        )
    return Objects(dict(zip(("prog", *MAP_NAMES), fds)))


def _compile_here(source: str) -> Objects:
    """Compile and load with bcc in this process; keep our own duplicates of its fds."""
    from bcc import BPF, lib

    objects = Objects()
    with _stderr_captured() as noise:
        try:
            bpf = BPF(src_file=source.encode())
        except Exception:
            raise SteeringUnavailable(
                f"cannot compile {source}: {_first_error(noise, 'bcc failed')}"
            ) from None
        try:
            prog = bpf.load_func(
                PROGRAM_NAME.encode(), BPF_PROG_TYPE_SK_LOOKUP, attach_type=BPF_SK_LOOKUP
            )
            objects.fds["prog"] = os.dup(prog.fd)
            for name in MAP_NAMES:
                objects.fds[name] = os.dup(lib.bpf_table_fd(bpf.module, name.encode()))
        except Exception as exc:
            objects.close()
            raise SteeringUnavailable(
                f"cannot load {source}: {_first_error(noise, str(exc))}"
            ) from None
        finally:
            bpf.cleanup()  # our dups keep program and maps alive; free bcc's LLVM module
    return objects


def _compiler_main(source: str, fd: int) -> None:
    """The child's side of compile_program(): load, send the fds (or the error), exit."""
    with socket.socket(fileno=fd) as channel:
        try:
            objects = _compile_here(source)
        except SteeringUnavailable as exc:
            channel.sendall(json.dumps({"error": str(exc)}).encode())
            return
        fds = [objects.fds["prog"], *(objects.fds[name] for name in MAP_NAMES)]
        socket.send_fds(channel, [json.dumps({"ok": True}).encode()], fds)


def port_key(port: int) -> bytes:
    return struct.pack("=H", port)


def slot_key(slot: int) -> bytes:
    return struct.pack("=I", slot)
