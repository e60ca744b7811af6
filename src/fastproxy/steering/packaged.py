"""The compiled programs the wheel carries: fastproxy/bpf/<name>.image.json beside each
bpf/<name>.c, made by bcc when the wheel is built (setup.py runs build.build_main() in a
child that can import bcc) and loaded at run time through bpf(2), with no bcc and no kernel
headers.

An image is believed only for the very source text beside it: the file records the
source's sha256, and a bpf/*.c that changed since makes the image stale (then the program
is compiled by bcc, as in a source checkout, and the log says so). It is as trusted as
the package's Python code beside it: no ownership checks beyond those of the install.
sk_lookup and sk_skb programs use only the stable UAPI (context layout, helper numbers),
so bytecode compiled on one kernel loads on another; the verifier checks it anyway."""

from __future__ import annotations

import hashlib
import json
import os
import sys

from .image import ProgramImage

FORMAT = 1  # of an image file: one of another format is stale
SUFFIX = ".image.json"
MAX_BYTES = 1 << 20
REBUILD = "bcc and kernel headers are needed only to rebuild it"


class Stale(Exception):
    """An image ships but is not for this source or this loader: str() says why."""


def image_path(source: str) -> str:
    """Where the image of bpf/<name>.c ships: bpf/<name>.image.json."""
    return os.path.splitext(source)[0] + SUFFIX


def _wanted(text: bytes, program: list[object]) -> dict[str, object]:
    return {
        "format": FORMAT,
        "source_sha256": hashlib.sha256(text).hexdigest(),
        "program": program,
    }


def read(source: str, program: list[object]) -> ProgramImage | None:
    """The image shipped for `source` (`program`: function name, program and attach
    types); None when none ships; Stale when one ships but is not to be used."""
    path = image_path(source)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Stale(f"{path}: {exc.strerror or exc}") from None
    with open(source, "rb") as f:
        wanted = _wanted(f.read(), program)
    name = os.path.basename(source)
    try:
        if len(data) > MAX_BYTES:
            raise ValueError("too large")
        entry = json.loads(data)
        if not isinstance(entry, dict):
            raise ValueError("not an image file")
        if entry.get("format") != wanted["format"]:
            raise Stale(f"{path} is of another format ({entry.get('format')!r})")
        if entry.get("source_sha256") != wanted["source_sha256"]:
            raise Stale(f"{path} was compiled from another {name} than the one beside it")
        if entry.get("program") != wanted["program"]:
            raise Stale(f"{path} is of another program ({entry.get('program')!r})")
        return ProgramImage.from_dict(entry["image"])
    except (ValueError, KeyError) as exc:  # JSONDecodeError and UnicodeError included
        raise Stale(f"{path} is corrupt ({str(exc).splitlines()[0]})") from None


def problem(source: str, program: list[object]) -> str | None:
    """None when a usable image ships for `source`, else why there is none."""
    try:
        image = read(source, program)
    except Stale as exc:
        return f"the packaged BPF program is stale: {exc}"
    return None if image is not None else f"no packaged BPF program for {source}"


def write(path: str, text: bytes, program: list[object], image: ProgramImage) -> None:
    """The image file for the source `text` (what build.build_main() writes)."""
    entry = {
        **_wanted(text, program),
        "built_on": {"kernel": os.uname().release, "python": sys.version.split()[0]},
        "image": image.to_dict(),
    }
    with open(path, "w") as f:
        json.dump(entry, f, sort_keys=True)
        f.write("\n")
