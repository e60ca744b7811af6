"""Building the wheel's program images (packaged.py): every program of bpf/ compiled by
bcc through the loader, written beside its source. Apart from packaged.py, which only
reads images at run time, so that the loader and the packaged images need not know
each other both ways."""

from __future__ import annotations

import os
import sys

from . import packaged
from .errors import SteeringUnavailable
from .image import ProgramImage
from .loader import PROGRAMS, _compile_here


def build_main(bpf_dir: str, out_dir: str) -> None:
    """Compile every program of bpf/ with bcc (loading it once, so the verifier has
    accepted it on the build machine) and write its image into `out_dir`. Run by
    setup.py in a child process that can import bcc; exits non-zero with one line on
    stderr if any program fails."""
    for name, program in sorted(PROGRAMS.items()):
        source = os.path.join(bpf_dir, name)
        with open(source, "rb") as f:
            text = f.read()
        try:
            objects, image = _compile_here(source, program)
        except SteeringUnavailable as exc:
            sys.exit(f"{name}: {exc}")
        objects.close()
        if not isinstance(image, ProgramImage):
            sys.exit(f"{name}: no image of the compiled program: {image}")
        out = packaged.image_path(os.path.join(out_dir, name))
        packaged.write(out, text, [program.function, program.prog_type, program.attach_type], image)
        print(f"{name}: compiled by bcc into {out}")
