"""A compiled program as data: the instructions bcc hands the kernel and its maps'
definitions, so that it can be loaded again through bpf(2) without compiling.

bcc creates the maps itself and writes their fds into the program: each map reference is a
64-bit immediate load (two instructions) whose source register says "this immediate is a
map fd" (BPF_PSEUDO_MAP_FD) or "the address of this map's value" (BPF_PSEUDO_MAP_VALUE).
Those fds mean nothing in another process, so an image keeps them as relocations (which
instruction takes which map) and zeroes them; loading creates the maps afresh and writes
their new fds back in."""

from __future__ import annotations

import base64
import errno
import os
import resource
import struct
from dataclasses import dataclass
from typing import TypeVar

from .bpfsys import BPF_OBJ_NAME_LEN, MapDef, map_create, prog_load

_INSN = struct.Struct("=BBhi")  # opcode, dst_reg:4 | src_reg:4, offset, immediate
LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: the first half of a 64-bit immediate load
CALL = 0x85  # BPF_JMP | BPF_CALL
PSEUDO_MAP_FD, PSEUDO_MAP_VALUE = 1, 2  # an ld_imm64's src_reg: its immediate is a map fd
PSEUDO_CALL = 1  # a call's src_reg: a call to a function of this program (pc-relative)
MAX_INSNS = 1_000_000  # the kernel's limit for a privileged program

_T = TypeVar("_T")


@dataclass(frozen=True)
class ProgramImage:
    name: str
    prog_type: int
    attach_type: int
    license: str
    kern_version: int
    insns: bytes  # with every map reference's immediate zeroed
    maps: tuple[MapDef, ...]
    relocations: tuple[tuple[int, str], ...]  # (instruction index, map name)

    def load(self) -> dict[str, int]:
        """Create the maps, point the program at them and load it: {"prog": fd, map: fd}.

        Raises OSError (EACCES when the verifier rejects the program)."""
        try:
            return self._load()
        except PermissionError:
            # Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK: lift it, as bcc does.
            try:
                resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY,) * 2)
            except (ValueError, OSError):
                raise PermissionError(errno.EPERM, "BPF memory over RLIMIT_MEMLOCK") from None
            return self._load()

    def _load(self) -> dict[str, int]:
        fds: dict[str, int] = {}
        try:
            for spec in self.maps:
                fds[spec.name] = map_create(spec)
            code = bytearray(self.insns)
            for index, map_name in self.relocations:
                struct.pack_into("=i", code, index * 8 + 4, fds[map_name])
            fds["prog"] = prog_load(
                self.prog_type,
                bytes(code),
                self.license,
                name=self.name,
                attach_type=self.attach_type,
                kern_version=self.kern_version,
            )
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        return fds

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "prog_type": self.prog_type,
            "attach_type": self.attach_type,
            "license": self.license,
            "kern_version": self.kern_version,
            "insns": base64.b64encode(self.insns).decode(),
            "maps": [
                [m.name, m.map_type, m.key_size, m.value_size, m.max_entries, m.flags]
                for m in self.maps
            ],
            "relocations": [list(r) for r in self.relocations],
        }

    @classmethod
    def from_dict(cls, data: object) -> ProgramImage:
        """The image a dict describes, checked to be well-formed; ValueError otherwise."""
        if not isinstance(data, dict) or set(data) != set(_FIELDS):
            raise ValueError("not a program image")
        insns = base64.b64decode(_typed(data["insns"], str), validate=True)
        maps = tuple(MapDef(*_map_fields(m)) for m in _typed(data["maps"], list))
        relocations = tuple(_relocation(r) for r in _typed(data["relocations"], list))
        image = cls(
            _name(data["name"]),
            _u32(data["prog_type"]),
            _u32(data["attach_type"]),
            _typed(data["license"], str),
            _u32(data["kern_version"]),
            insns,
            maps,
            relocations,
        )
        image._check()
        return image

    def _check(self) -> None:
        """The relocations are exactly the program's map references, to maps it defines."""
        count = len(self.insns) // 8
        if len(self.insns) % 8 or not 0 < count <= MAX_INSNS:
            raise ValueError("instructions are not whole")
        names = [m.name for m in self.maps]
        if len(set(names)) != len(names):
            raise ValueError("two maps of the same name")
        if not self.license.isascii() or "\0" in self.license:
            raise ValueError("bad license string")
        wanted = set(map_references(self.insns))
        given = {index for index, _ in self.relocations}
        if wanted != given or len(given) != len(self.relocations):
            raise ValueError("relocations do not match the map references")
        if any(name not in names for _, name in self.relocations):
            raise ValueError("relocation to an unknown map")


_FIELDS = ProgramImage.__dataclass_fields__


def map_references(insns: bytes) -> list[int]:
    """Indexes of the instructions that load a map's fd (or a map value's address).

    ValueError for references an image cannot carry (BTF objects, kernel functions)."""
    found = []
    index, count = 0, len(insns) // 8
    while index < count:
        op, regs, _, _ = _INSN.unpack_from(insns, index * 8)
        src = regs >> 4
        if op == LD_IMM64:
            if src in (PSEUDO_MAP_FD, PSEUDO_MAP_VALUE):
                found.append(index)
            elif src != 0:
                raise ValueError(f"instruction {index}: a 64-bit load of kind {src}")
            index += 1  # its second half
        elif op == CALL and src not in (0, PSEUDO_CALL):
            raise ValueError(f"instruction {index}: a call of kind {src}")
        index += 1
    return found


def capture(
    insns: bytes,
    map_fds: dict[str, int],
    maps: tuple[MapDef, ...],
    *,
    name: str,
    prog_type: int,
    attach_type: int,
    license_: str,
    kern_version: int,
) -> ProgramImage:
    """The image of a program as bcc loads it: map fds (`map_fds`) in its immediates."""
    by_fd = {fd: map_name for map_name, fd in map_fds.items()}
    code = bytearray(insns)
    relocations = []
    for index in map_references(insns):
        fd = _INSN.unpack_from(code, index * 8)[3]
        if fd not in by_fd:
            raise ValueError(f"instruction {index}: fd {fd} is none of the maps")
        relocations.append((index, by_fd[fd]))
        struct.pack_into("=i", code, index * 8 + 4, 0)
    image = ProgramImage(
        name, prog_type, attach_type, license_, kern_version, bytes(code), maps, tuple(relocations)
    )
    image._check()
    return image


def _typed(value: object, kind: type[_T]) -> _T:
    if not isinstance(value, kind):
        raise ValueError(f"expected {kind.__name__}")
    return value


def _u32(value: object) -> int:
    if type(value) is not int or not 0 <= value < 2**32:
        raise ValueError("expected a 32-bit unsigned integer")
    return value


def _name(value: object) -> str:
    if not isinstance(value, str) or not value.isascii() or not 0 < len(value) < BPF_OBJ_NAME_LEN:
        raise ValueError("bad object name")
    return value


def _map_fields(value: object) -> tuple[str, int, int, int, int, int]:
    if not isinstance(value, list) or len(value) != 6:
        raise ValueError("bad map definition")
    name, *numbers = value
    kind, key, val, entries, flags = (_u32(n) for n in numbers)
    return _name(name), kind, key, val, entries, flags


def _relocation(value: object) -> tuple[int, str]:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError("bad relocation")
    return _u32(value[0]), _name(value[1])
