"""bpf(2) through ctypes: the few commands steering needs, each a small struct.pack of
union bpf_attr. Everything after loading (maps, pins, links) goes through these, so pinned
objects of another process are handled the same way as our own."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator
from typing import NamedTuple

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_ATTACH = 8
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_GET_NEXT_ID = 31
BPF_MAP_UPDATE_BATCH = 26
BPF_LINK_DETACH = 34
_CMD_NAMES = {value: name for name, value in list(globals().items()) if name.startswith("BPF_")}

BPF_PROG_TYPE_SK_LOOKUP = 30
BPF_SK_LOOKUP = 36  # attach type
BPF_LINK_TYPE_NETNS = 5
BPF_MAP_TYPE_SOCKMAP = 15
BPF_PROG_TYPE_SK_SKB = 14
BPF_SK_SKB_VERDICT = 38  # attach type: an sk_skb verdict with no stream parser (5.13+)
BPF_OBJ_NAME_LEN = 16  # names of programs and maps, with the NUL

_ATTR_SIZE = 128  # >= every bpf_attr variant used here; the kernel wants the tail zeroed
_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]


def _bpf_attr(cmd: int, attr: ctypes.Array[ctypes.c_char], path: str | None = None) -> int:
    """bpf(cmd, attr, sizeof attr); raises OSError (FileNotFoundError, ...) on failure."""
    ret = libc.syscall(ctypes.c_long(_SYS_BPF), ctypes.c_long(cmd), attr, ctypes.c_ulong(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{_CMD_NAMES.get(cmd, cmd)}: {os.strerror(err)}", path)
    return int(ret)


def _bpf(cmd: int, fmt: str, *fields: object, path: str | None = None) -> int:
    """bpf(cmd, attr) with attr packed from fmt/fields, the rest of union bpf_attr zero."""
    return _bpf_attr(cmd, ctypes.create_string_buffer(struct.pack(fmt, *fields), _ATTR_SIZE), path)


def _addr(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)


def _buf(data: bytes) -> ctypes.Array[ctypes.c_char]:
    """A C buffer holding exactly `data` (create_string_buffer alone would add a NUL)."""
    return ctypes.create_string_buffer(data, len(data))


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    k, v = _buf(key), ctypes.create_string_buffer(value_size)
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, "=I4xQQQ", map_fd, _addr(k), _addr(v), 0)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return v.raw


def map_update(map_fd: int, key: bytes, value: bytes) -> None:
    k, v = _buf(key), _buf(value)
    _bpf(BPF_MAP_UPDATE_ELEM, "=I4xQQQ", map_fd, _addr(k), _addr(v), 0)


def map_update_batch(map_fd: int, keys: bytes, values: bytes, count: int) -> None:
    """`count` updates in one call: keys and values each `count` equal-sized, packed."""
    k, v = _buf(keys), _buf(values)
    # struct bpf_attr.batch: in_batch, out_batch, keys, values, count, map_fd, elem_flags, flags
    _bpf(BPF_MAP_UPDATE_BATCH, "=QQQQIIQQ", 0, 0, _addr(k), _addr(v), count, map_fd, 0, 0)


def map_delete(map_fd: int, key: bytes) -> bool:
    k = _buf(key)
    try:
        _bpf(BPF_MAP_DELETE_ELEM, "=I4xQ", map_fd, _addr(k))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_keys(map_fd: int, key_size: int) -> Iterator[bytes]:
    """Every key of a map (GET_NEXT_KEY from no key starts at the first)."""
    key: ctypes.Array[ctypes.c_char] | None = None
    while True:
        nxt = ctypes.create_string_buffer(key_size)
        try:
            _bpf(
                BPF_MAP_GET_NEXT_KEY,
                "=I4xQQ",
                map_fd,
                0 if key is None else _addr(key),
                _addr(nxt),
            )
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise
        yield nxt.raw
        key = nxt


def obj_pin(fd: int, path: str) -> None:
    p = ctypes.create_string_buffer(os.fsencode(path))
    _bpf(BPF_OBJ_PIN, "=QII", _addr(p), fd, 0, path=path)


def obj_get(path: str) -> int:
    p = ctypes.create_string_buffer(os.fsencode(path))
    return _bpf(BPF_OBJ_GET, "=QII", _addr(p), 0, 0, path=path)


def obj_info(fd: int, size: int, preset: bytes = b"") -> bytes:
    info = ctypes.create_string_buffer(preset, size)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, "=IIQ", fd, size, _addr(info))
    return info.raw


def get_fd_by_id(cmd: int, obj_id: int) -> int:
    return _bpf(cmd, "=III", obj_id, 0, 0)


def prog_attach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    """Attach a program to an object that is not a link target (a sockmap's verdict)."""
    # union bpf_attr: target_fd, attach_bpf_fd, attach_type, attach_flags
    _bpf(BPF_PROG_ATTACH, "=IIII", target_fd, prog_fd, attach_type, 0)


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    return _bpf(BPF_LINK_CREATE, "=IIII", prog_fd, target_fd, attach_type, 0)


def link_update(link_fd: int, new_prog_fd: int) -> None:
    _bpf(BPF_LINK_UPDATE, "=IIII", link_fd, new_prog_fd, 0, 0)


def link_detach(link_fd: int) -> None:
    _bpf(BPF_LINK_DETACH, "=I", link_fd)


def link_ids() -> Iterator[int]:
    """Ids of every BPF link on the system."""
    link_id = 0
    while True:
        attr = ctypes.create_string_buffer(struct.pack("=I", link_id), _ATTR_SIZE)
        try:
            _bpf_attr(BPF_LINK_GET_NEXT_ID, attr)  # {start_id, next_id (out)}
        except FileNotFoundError:
            return
        link_id = struct.unpack_from("=I", attr.raw, 4)[0]
        yield link_id


# A NamedTuple rather than a frozen dataclass: no methods compiled at import (start-up).
class _LinkInfo(NamedTuple):
    link_id: int
    prog_id: int
    netns_ino: int  # 0 once the netns is gone (the link is then "defunct")
    is_sk_lookup: bool


def link_info(link_fd: int) -> _LinkInfo:
    # struct bpf_link_info: type, id, prog_id, (pad), union { netns: { netns_ino, attach_type } }
    kind, link_id, prog_id, ino, attach = struct.unpack_from("=III4xII", obj_info(link_fd, 64))
    is_sk_lookup = kind == BPF_LINK_TYPE_NETNS and attach == BPF_SK_LOOKUP
    return _LinkInfo(link_id, prog_id, ino, is_sk_lookup)


def prog_name_and_maps(prog_fd: int) -> tuple[str, list[int]]:
    # struct bpf_prog_info: nr_map_ids at 52, map_ids (pointer, in) at 56, name[16] at 64.
    ids = (ctypes.c_uint32 * 8)()
    preset = struct.pack("=52xIQ", len(ids), ctypes.addressof(ids))
    raw = obj_info(prog_fd, 128, preset)
    nr_maps = struct.unpack_from("=I", raw, 52)[0]
    name = raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    return name, list(ids[: min(nr_maps, len(ids))])


def map_type(map_fd: int) -> int:
    return int(struct.unpack_from("=I", obj_info(map_fd, 80))[0])


# A NamedTuple rather than a frozen dataclass: no methods compiled at import (start-up).
class MapDef(NamedTuple):
    """What BPF_MAP_CREATE needs to make a map like another one (BTF aside)."""

    name: str
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


def map_def(map_fd: int) -> MapDef:
    # struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags, name[16]
    raw = obj_info(map_fd, 80)
    kind, _, key, value, entries, flags = struct.unpack_from("=6I", raw)
    name = raw[24:40].split(b"\0", 1)[0].decode()
    return MapDef(name, kind, key, value, entries, flags)


def map_create(spec: MapDef) -> int:
    # union bpf_attr: map_type, key_size, value_size, max_entries, map_flags, inner_map_fd,
    # numa_node, map_name[16]
    name = spec.name.encode()[: BPF_OBJ_NAME_LEN - 1]
    return _bpf(
        BPF_MAP_CREATE,
        "=7I16s",
        spec.map_type, spec.key_size, spec.value_size, spec.max_entries, spec.flags, 0, 0, name,
    )  # fmt: skip


def prog_load(
    prog_type: int,
    insns: bytes,
    license_: str,
    *,
    name: str,
    attach_type: int,
    kern_version: int = 0,
) -> int:
    """BPF_PROG_LOAD; the verifier's verdict is the errno (EACCES: rejected)."""
    code = _buf(insns)
    lic = ctypes.create_string_buffer(license_.encode())
    return _bpf(
        BPF_PROG_LOAD,
        "=IIQQIIQII16sII",
        prog_type, len(insns) // 8, _addr(code), _addr(lic),
        0, 0, 0, kern_version, 0, name.encode()[: BPF_OBJ_NAME_LEN - 1], 0, attach_type,
    )  # fmt: skip


def prog_tag(prog_fd: int) -> bytes:
    """The kernel's hash of the program's instructions (map references left out)."""
    # struct bpf_prog_info: type, id, tag[8]
    return obj_info(prog_fd, 16)[8:16]


def probe_sk_lookup() -> str | None:
    """Load `r0 = SK_PASS; exit` as an sk_lookup program: the kernel says if it has the type."""
    insns = struct.pack("=BBhi", 0xB7, 0, 0, 1) + struct.pack("=BBhi", 0x95, 0, 0, 0)
    try:
        fd = prog_load(BPF_PROG_TYPE_SK_LOOKUP, insns, "GPL", name="", attach_type=BPF_SK_LOOKUP)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return "kernel has no sk_lookup support (needs Linux 5.9 or later)"
        if exc.errno in (errno.EPERM, errno.EACCES):
            return "not permitted to load BPF programs (needs CAP_BPF and CAP_NET_ADMIN)"
        if exc.errno == errno.ENOSYS:
            return "kernel has no bpf() system call"
        return f"cannot load BPF programs: {exc.strerror}"
    os.close(fd)
    return None


def possible_cpus() -> int:
    """Number of possible CPUs: the width of a per-CPU map value."""
    with open("/sys/devices/system/cpu/possible") as f:
        spec = f.read().strip()
    count = 0
    for part in spec.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count
