"""Loading a program of bpf/ (steer.c): the image the wheel carries when it is
for this source (packaged.py), else the bytecode cached from an earlier start, else compiled
and loaded by bcc in a short-lived child process (and then cached). Only the last needs bcc
and the kernel headers."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, NamedTuple

from . import cache, packaged
from .bpfsys import (
    BPF_PROG_TYPE_SK_LOOKUP,
    BPF_SK_LOOKUP,
    map_def,
    probe_sk_lookup,
)
from .errors import SteeringUnavailable, describe
from .image import ProgramImage, capture

PROGRAM_NAME = "fastproxy_steer"  # the C function; also the kernel's name for the program
MAP_NAMES = ("ports", "sockets", "counters", "policies", "allow_nets", "deny_nets", "denied")
COMPILED = "%s: BPF program compiled by bcc in %.0f ms (%s)"

log = logging.getLogger("fastproxy")

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # fastproxy/


# A NamedTuple rather than a frozen dataclass: no methods compiled at import (start-up).
class Program(NamedTuple):
    """One program of bpf/ as the loader needs to know it."""

    label: str  # what log lines start with
    source: str  # file name in bpf/
    function: str  # the C function; also the kernel's name for the program
    prog_type: int
    attach_type: int
    maps: tuple[str, ...]  # handed back in this order after the program's fd


STEER = Program(
    "steering", "steer.c", PROGRAM_NAME, BPF_PROG_TYPE_SK_LOOKUP, BPF_SK_LOOKUP, MAP_NAMES
)
PROGRAMS = {program.source: program for program in (STEER,)}


def _source_path(name: str = STEER.source) -> str | None:
    """A bpf/ source shipped in the package (fastproxy/bpf/), else the repository's bpf/."""
    here = _PACKAGE  # fastproxy/
    for candidate in (
        os.path.join(here, "bpf", name),
        os.path.join(here, os.pardir, os.pardir, "bpf", name),  # a source checkout
    ):
        if os.path.isfile(candidate):
            return os.path.normpath(candidate)
    return None


def probe() -> str | None:
    """None if BPF steering can be loaded here, else a one-line reason why not."""
    if os.geteuid() != 0:
        return "not root"
    reason = compiler_missing(STEER)
    return reason if reason else probe_sk_lookup()


def compiler_missing(program: Program) -> str | None:
    """Why `program` cannot be had here without the packaged image, when bcc or the
    kernel headers would be needed to compile it and are missing; None otherwise."""
    source = _source_path(program.source)
    if source is None:
        return f"BPF source {program.source} not found (neither in the package nor in bpf/)"
    shipped = packaged.problem(source, _identity(program))
    if shipped is None:
        return None
    # Found, not imported: importing loads libbcc and LLVM into this process, which
    # only the compiler child (see compile_program) should carry.
    if importlib.util.find_spec("bcc") is None:
        if os.path.isdir("/usr/lib/python3/dist-packages/bcc"):
            missing = (
                f"bcc not importable by {sys.executable} (link /usr/lib/python3/dist-packages/bcc"
                " into its site-packages, as scripts/link-bcc.sh does)"
            )
        else:
            missing = "bcc not importable (install python3-bpfcc)"
        return f"{shipped} and {missing}; {packaged.REBUILD}"
    build = f"/lib/modules/{os.uname().release}/build"
    if not os.path.isdir(build):
        missing = f"kernel headers missing at {build} (run scripts/install-build-deps.sh)"
        return f"{shipped} and {missing}; {packaged.REBUILD}"
    return None


def _identity(program: Program) -> list[object]:
    """What an image must have been compiled as, beside its source text."""
    return [program.function, program.prog_type, program.attach_type]


@contextlib.contextmanager
def _stderr_captured() -> Iterator[IO[bytes]]:
    """Send fd 2 to a temporary file: bcc's clang and the verifier write there directly."""
    import tempfile  # bcc's path only (with shutil, bz2, lzma): milliseconds of every start

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


def load_program(program: Program = STEER) -> Objects:
    """The program and its maps, loaded: from the package's image when it is for this
    source, else from the cache when it holds this program's bytecode for this kernel
    and bcc, else compiled by bcc (and then cached)."""
    source = _source_path(program.source)
    if source is None:
        raise SteeringUnavailable(f"BPF source {program.source} not found")
    objects = _from_package(program, source)
    if objects is not None:
        return objects
    directory = cache.configured_dir()
    if directory is None:
        return _compiled_uncached(program, source, "cache off")
    with open(source, "rb") as f:
        text = f.read()
    key = cache.cache_key(text, _identity(program))
    try:
        with cache.opened(directory) as store:
            return _cached_or_compiled(program, store, key, source, text)
    except cache.CacheRefused as exc:
        log.warning("%s: BPF program cache not used: %s", program.label, exc)
        return _compiled_uncached(program, source, "cache not used")


def _from_package(program: Program, source: str) -> Objects | None:
    """The packaged image of `source`, loaded; None (with a warning if one ships but is
    not to be used) to go on to the cache and bcc."""
    started = time.monotonic()
    try:
        image = packaged.read(source, _identity(program))
    except packaged.Stale as exc:
        log.warning(
            "%s: not loading the packaged BPF program: %s (%s)",
            program.label,
            exc,
            packaged.REBUILD,
        )
        return None
    if image is None:
        log.info(
            "%s: no packaged BPF program beside %s (%s)", program.label, source, packaged.REBUILD
        )
        return None
    problem = _not_ours(program, image)
    if problem is None:
        try:
            objects = Objects(image.load())
        except OSError as exc:  # this kernel's verifier refuses it
            problem = describe(exc)
        else:
            elapsed = (time.monotonic() - started) * 1e3
            path = packaged.image_path(source)
            log.info(
                "%s: BPF program loaded from the package in %.0f ms (%s)",
                program.label,
                elapsed,
                path,
            )
            return objects
    log.warning(
        "%s: the packaged BPF program is not usable here: %s (%s)",
        program.label,
        problem,
        packaged.REBUILD,
    )
    return None


def _compiled_uncached(program: Program, source: str, why: str) -> Objects:
    objects, _, elapsed = _timed_compile(program, source)
    log.info(COMPILED, program.label, elapsed, why)
    return objects


def _cached_or_compiled(
    program: Program, store: cache.Cache, key: str, source: str, text: bytes
) -> Objects:
    objects = _from_cache(program, store, key)
    if objects is None:
        objects, fresh, elapsed = _timed_compile(program, source)
        log.info(COMPILED, program.label, elapsed, _cache_it(store, key, fresh, source, text))
    return objects


def _from_cache(program: Program, store: cache.Cache, key: str) -> Objects | None:
    """The cached program for `key`, loaded; None (with a warning if there was an entry
    but it was not to be used) to compile."""
    path = store.path(key)
    started = time.monotonic()
    try:
        image = store.read(key)
    except cache.BadEntry as exc:
        log.warning("%s: ignoring the cached BPF program %s: %s", program.label, path, exc)
        return None
    if image is None:
        return None
    problem = _not_ours(program, image)
    if problem is None:
        try:
            objects = Objects(image.load())
        except OSError as exc:  # the verifier or the kernel changed its mind
            problem = describe(exc)
        else:
            elapsed = (time.monotonic() - started) * 1e3
            log.info(
                "%s: BPF program loaded from the cache in %.0f ms (%s)",
                program.label,
                elapsed,
                path,
            )
            return objects
    log.warning("%s: the cached BPF program %s is not usable: %s", program.label, path, problem)
    return None


def _cache_it(
    store: cache.Cache, key: str, image: ProgramImage | str, source: str, text: bytes
) -> str:
    """Write the compiled program's image for `key`; says where, or why not."""
    if not isinstance(image, ProgramImage):
        return f"not cached: {image}"
    with open(source, "rb") as f:
        if f.read() != text:  # then the key does not name what bcc compiled
            return f"not cached: {source} changed meanwhile"
    try:
        store.write(key, image)
    except OSError as exc:
        return f"not cached: {describe(exc)}"
    return f"cached as {store.path(key)}"


def _not_ours(program: Program, image: ProgramImage) -> str | None:
    """Why a well-formed image is still not the program this loader wants, if it is not."""
    if (image.name, image.prog_type, image.attach_type) != (
        program.function,
        program.prog_type,
        program.attach_type,
    ):
        return f"another program ({image.name}, type {image.prog_type})"
    if sorted(m.name for m in image.maps) != sorted(program.maps):
        return "other maps"
    return None


def _timed_compile(program: Program, source: str) -> tuple[Objects, ProgramImage | str, float]:
    """compile_program() and how long it took, in milliseconds."""
    started = time.monotonic()
    objects, image = compile_program(source, program)
    return objects, image, (time.monotonic() - started) * 1e3


def compile_program(source: str, program: Program = STEER) -> tuple[Objects, ProgramImage | str]:
    """Compile and load `source` in a short-lived child process, which hands the
    program's and maps' descriptors back over a socketpair (SCM_RIGHTS), with the
    program's image (or why it has none). bcc maps LLVM into whoever uses it (~130 MiB
    of RSS that would stay with the proxy for its whole life); the child takes that with
    it when it exits."""
    import subprocess  # only when there is no image to load: a compile

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        try:
            with theirs:
                # -I: no current directory on the path (a stray copy.py there would
                # shadow the stdlib); this very package is imported by its location.
                code = (
                    f"import sys; sys.path.insert(0, {_PACKAGE_PARENT!r}); "
                    "from fastproxy.steering.loader import _compiler_main; "
                    f"_compiler_main({source!r}, {theirs.fileno()}, {program.source!r})"
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
            data, fds, _, _ = socket.recv_fds(ours, 65536, len(program.maps) + 1)
            while data and (more := ours.recv(65536)):  # the rest, up to the child's exit
                data += more
        except OSError:
            data, fds = b"", []
    try:
        reply = json.loads(data) if data else {}
    except ValueError:
        reply = {"error": "the BPF compiler's reply is garbled"}
    if "error" in reply or len(fds) != len(program.maps) + 1:
        for fd in fds:
            os.close(fd)
        noise = child.stderr.decode(errors="replace").strip().splitlines()
        raise SteeringUnavailable(
            reply.get("error") or f"the BPF compiler failed: {noise[-1] if noise else '?'}"
        )
    objects = Objects(dict(zip(("prog", *program.maps), fds)))
    try:
        image: ProgramImage | str = ProgramImage.from_dict(reply.get("image"))
    except ValueError:
        image = str(reply.get("uncacheable", "no image"))
    return objects, image


def _compile_here(source: str, program: Program) -> tuple[Objects, ProgramImage | str]:
    """Compile and load with bcc in this process; keep our own duplicates of its fds.
    Also the image of what bcc loaded (or why there is none), for the cache."""
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
                program.function.encode(), program.prog_type, attach_type=program.attach_type
            )
            objects.fds["prog"] = os.dup(prog.fd)
            map_fds = {name: lib.bpf_table_fd(bpf.module, name.encode()) for name in program.maps}
            for name, fd in map_fds.items():
                objects.fds[name] = os.dup(fd)
        except Exception as exc:
            objects.close()
            raise SteeringUnavailable(
                f"cannot load {source}: {_first_error(noise, str(exc))}"
            ) from None
        try:
            # The very instructions bcc handed the kernel, its map fds in them.
            image: ProgramImage | str = capture(
                bpf.dump_func(program.function.encode()),
                map_fds,
                tuple(map_def(fd) for fd in map_fds.values()),
                name=program.function,
                prog_type=program.prog_type,
                attach_type=program.attach_type,
                license_=lib.bpf_module_license(bpf.module).decode(),
                kern_version=lib.bpf_module_kern_version(bpf.module),
            )
        except (ValueError, OSError) as exc:
            image = describe(exc)
        finally:
            bpf.cleanup()  # our dups keep program and maps alive; free bcc's LLVM module
    return objects, image


def _compiler_main(source: str, fd: int, program_source: str = STEER.source) -> None:
    """The child's side of compile_program(): load, send the fds and the image (or the
    error), exit."""
    program = PROGRAMS[program_source]
    with socket.socket(fileno=fd) as channel:
        try:
            objects, image = _compile_here(source, program)
        except SteeringUnavailable as exc:
            channel.sendall(json.dumps({"error": str(exc)}).encode())
            return
        reply: dict[str, object] = {"ok": True}
        if isinstance(image, ProgramImage):
            reply["image"] = image.to_dict()
        else:
            reply["uncacheable"] = image
        fds = [objects.fds["prog"], *(objects.fds[name] for name in program.maps)]
        socket.send_fds(channel, [json.dumps(reply).encode()], fds)


def port_key(port: int) -> bytes:
    return struct.pack("=H", port)


def slot_key(slot: int) -> bytes:
    return struct.pack("=I", slot)
