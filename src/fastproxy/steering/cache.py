"""The cache of compiled programs: bcc's output for steer.c, so that later starts skip clang.

    <cache dir>/<key>.json   one program image (image.py), its digest, and its key

The key is a hash of everything the bytecode depends on: the source text, the kernel
(release and build), the kernel headers bcc compiles against, bcc's version and bcc's
environment variables. Only root may choose what goes in there: the directory must be
root's own and private (0700), like the pin root, and an entry is believed only when it is
a regular file of root's, writable by nobody else, whole (its digest matches) and for this
key. Anything else is ignored and the program compiled as if there were no entry. The
verifier checks whatever is loaded anyway; the ownership checks are what keep another user
from choosing the program that steers our ports."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import stat
from collections.abc import Iterator

from .image import ProgramImage

DEFAULT_CACHE_DIR = "/var/cache/fastproxy/bpf"
ENV_VAR = "FASTPROXY_BPF_CACHE"  # another directory, or "off"
FORMAT = 1  # of an entry; part of the key, so a new format never reads an old entry
MAX_ENTRY_BYTES = 1 << 20
KEEP = 16  # entries kept: a few kernels, bcc versions and fastproxy versions side by side


class CacheRefused(Exception):
    """The cache directory is not a private directory of root's: str() says why."""


class BadEntry(Exception):
    """An entry exists for the key but is not to be believed: str() says why."""


def configured_dir() -> str | None:
    """The cache directory, None when the cache is off."""
    value = os.environ.get(ENV_VAR, DEFAULT_CACHE_DIR)
    return None if value == "off" else value


def cache_key(source: bytes, program: list[object]) -> str:
    """Hex digest of what the bytecode of `source` compiled by bcc depends on; `program`
    adds what the loader asks for (function name, program and attach types)."""
    uname = os.uname()
    material = {
        "format": FORMAT,
        "source": hashlib.sha256(source).hexdigest(),
        "program": program,
        "kernel": [uname.release, uname.version, uname.machine],
        "headers": _headers_identity(uname.release),
        "bcc": _bcc_identity(),
        "bcc_env": sorted((k, v) for k, v in os.environ.items() if k.startswith("BCC_")),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _stat_identity(path: str) -> list[object] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _headers_identity(release: str) -> list[object]:
    """Where the headers bcc uses are, and their package's files: an update of the
    headers package rewrites them (dpkg keeps each package version's mtimes)."""
    modules = f"/lib/modules/{release}"
    build = os.path.join(modules, "build")
    files = (
        ".config",
        "include/generated/autoconf.h",
        "include/generated/package.h",
        "include/generated/uapi/linux/version.h",
    )
    return [
        os.path.realpath(build),
        os.path.realpath(os.path.join(modules, "source")),
        [_stat_identity(os.path.join(build, name)) for name in files],
    ]


def _bcc_identity() -> list[object]:
    """bcc's version (found, not imported: importing it loads LLVM)."""
    spec = importlib.util.find_spec("bcc")
    if spec is None or not spec.submodule_search_locations:
        return []
    version = os.path.join(list(spec.submodule_search_locations)[0], "version.py")
    try:
        with open(version, "rb") as f:
            text = f.read(4096).decode(errors="replace")
    except OSError:
        return []
    return [text, _stat_identity(version)]


class Cache:
    """An open cache directory, checked to be root's own and private."""

    def __init__(self, directory: str, dir_fd: int) -> None:
        self.directory = directory
        self._fd = dir_fd

    def path(self, key: str) -> str:
        return os.path.join(self.directory, f"{key}.json")

    def read(self, key: str) -> ProgramImage | None:
        """The image cached for `key`; None when there is none; BadEntry when the file
        there is not to be believed."""
        name = f"{key}.json"
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._fd)
        except FileNotFoundError:
            return None
        except OSError as exc:  # ELOOP: a symbolic link
            raise BadEntry(exc.strerror or str(exc)) from None
        with open(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise BadEntry("not a regular file")
            if st.st_uid != os.geteuid():
                raise BadEntry(f"owned by uid {st.st_uid}")
            if st.st_mode & 0o022:
                raise BadEntry(f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")
            data = f.read(MAX_ENTRY_BYTES + 1)
        if len(data) > MAX_ENTRY_BYTES:
            raise BadEntry("too large")
        try:
            entry = json.loads(data)
            if not isinstance(entry, dict) or entry.get("format") != FORMAT:
                raise ValueError("not an entry of this format")
            if entry.get("key") != key:
                raise ValueError("made for another key")
            if entry.get("digest") != _digest(entry.get("image")):
                raise ValueError("digest mismatch")
            return ProgramImage.from_dict(entry["image"])
        except (ValueError, KeyError) as exc:  # JSONDecodeError and UnicodeError included
            raise BadEntry(f"corrupt ({str(exc).splitlines()[0]})") from None

    def write(self, key: str, image: ProgramImage) -> None:
        """Write the entry for `key` atomically (aside, then renamed over), 0600; keep
        only the KEEP newest entries."""
        body = image.to_dict()
        entry = {"format": FORMAT, "key": key, "digest": _digest(body), "image": body}
        name, aside = f"{key}.json", f".{key}.{os.getpid()}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(aside, flags, 0o600, dir_fd=self._fd)
        try:
            with open(fd, "wb") as f:
                f.write(json.dumps(entry).encode())
                f.flush()
                os.fsync(f.fileno())
            os.rename(aside, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(aside, dir_fd=self._fd)
            raise
        self._prune()

    def _prune(self) -> None:
        ages = []
        for name in os.listdir(self._fd):
            with contextlib.suppress(OSError):
                ages.append((os.stat(name, dir_fd=self._fd).st_mtime_ns, name))
        for _, name in sorted(ages, reverse=True)[KEEP:]:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self._fd)


def _digest(body: object) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def opened(directory: str) -> Iterator[Cache]:
    """The cache directory, created 0700 if missing; CacheRefused unless it is a directory
    of root's (our euid's) that nobody else may write."""
    parent = os.path.dirname(os.path.abspath(directory))
    try:
        os.makedirs(parent, 0o755, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise CacheRefused(f"{directory}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise CacheRefused(f"{directory} is owned by uid {st.st_uid}, not root")
        if st.st_mode & 0o022:
            mode = stat.S_IMODE(st.st_mode)
            raise CacheRefused(f"{directory} is writable by group or others (mode {mode:04o})")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o700)  # made readable by others by hand: the pin root's rule
        yield Cache(directory, fd)
    finally:
        os.close(fd)
