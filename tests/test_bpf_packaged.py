"""The compiled program the wheel carries is believed only for the very source beside it
(steering/packaged.py): any other source text, program or format, or a damaged file, is
stale, with a reason, and never loaded. (Loading it, and a stale one in an installed
wheel, are in test_packaging.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from fastproxy.steering import packaged
from fastproxy.steering.bpfsys import MapDef
from fastproxy.steering.image import ProgramImage

# r0 = map fd (ld_imm64, src_reg 1), r0 = 0, exit: one map reference
INSNS = bytes.fromhex("18100000000000000000000000000000b7000000000000009500000000000000")
IMAGE = ProgramImage(
    "fastproxy_steer",
    30,
    36,
    "GPL",
    0,
    INSNS,
    (MapDef("ports", 1, 2, 1, 16, 0),),
    ((0, "ports"),),
)
PROGRAM: list[object] = ["fastproxy_steer", 30, 36]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "steer.c"
    path.write_bytes(b"int fastproxy_steer(void *ctx) { return 0; }\n")
    packaged.write(packaged.image_path(str(path)), path.read_bytes(), PROGRAM, IMAGE)
    return path


def test_the_image_of_this_source_is_read_back(source: Path) -> None:
    assert packaged.image_path(str(source)) == str(source.with_name("steer.image.json"))
    assert packaged.read(str(source), PROGRAM) == IMAGE
    assert packaged.problem(str(source), PROGRAM) is None


def test_no_image_is_none_and_says_so(tmp_path: Path) -> None:
    bare = tmp_path / "steer.c"
    bare.write_bytes(b"x")
    assert packaged.read(str(bare), PROGRAM) is None
    assert packaged.problem(str(bare), PROGRAM) == f"no packaged BPF program for {bare}"


def test_a_changed_source_makes_the_image_stale(source: Path) -> None:
    source.write_bytes(source.read_bytes() + b"/* one more line */\n")
    with pytest.raises(packaged.Stale, match="compiled from another steer.c"):
        packaged.read(str(source), PROGRAM)
    assert "stale" in str(packaged.problem(str(source), PROGRAM))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda text: text.replace('"format": 1', '"format": 2'), "another format"),
        (lambda text: text.replace('"GPL"', '"GPL\\u0000"'), "corrupt"),
        (lambda text: text[: len(text) // 2], "corrupt"),
        (
            lambda text: text.replace('"relocations": [[0, "ports"]]', '"relocations": []'),
            "corrupt",
        ),
    ],
)
def test_a_damaged_image_is_stale(source: Path, damage, reason: str) -> None:
    image = Path(packaged.image_path(str(source)))
    text = image.read_text()
    assert damage(text) != text  # the damage applies to the file as written
    image.write_text(damage(text))
    with pytest.raises(packaged.Stale, match=reason):
        packaged.read(str(source), PROGRAM)


def test_an_image_of_another_program_is_stale(source: Path) -> None:
    with pytest.raises(packaged.Stale, match="another program"):
        packaged.read(str(source), ["fastproxy_relay", 14, 39])
