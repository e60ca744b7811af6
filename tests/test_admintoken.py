"""The admin token file: created private and atomically, refused when others could
have planted or read it."""

from __future__ import annotations

import os
import re
import stat
import threading
from pathlib import Path

import pytest

from fastproxy.control.admintoken import TokenError, ensure_token, read_token

NOBODY = 65534


def test_created_random_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "run" / "fastproxy" / "admin-token"
    token = ensure_token(str(path))
    assert re.fullmatch(r"[0-9a-f]{64}", token)  # 256 bits
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ensure_token(str(path)) == token == read_token(str(path))
    assert os.listdir(path.parent) == ["admin-token"]  # nothing left aside
    assert ensure_token(str(tmp_path / "other")) != token


def test_concurrent_starts_agree_on_one_token(tmp_path: Path) -> None:
    path = str(tmp_path / "admin-token")
    tokens: list[str] = []

    def start() -> None:
        tokens.append(ensure_token(path))

    threads = [threading.Thread(target=start) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(tokens) == 16 and len(set(tokens)) == 1
    assert read_token(path) == tokens[0]


def refusal(path: Path) -> str:
    with pytest.raises(TokenError) as info:
        ensure_token(str(path))
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_open_mode_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text("planted\n")
    path.chmod(0o644)
    assert "mode 0644" in refusal(path) and "chmod 600" in refusal(path)
    path.chmod(0o620)
    assert "mode 0620" in refusal(path)
    assert read_token(str(path)) == "planted"  # a client only reads it


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_another_owner_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text("planted\n")
    path.chmod(0o600)
    os.chown(path, NOBODY, NOBODY)
    assert f"owned by uid {NOBODY}" in refusal(path)


def test_symlink_fifo_directory_and_junk_are_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text("x" * 64)
    real.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(real)
    assert "symbolic link" in refusal(link)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    assert "not a regular file" in refusal(fifo)  # and does not block
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    assert "not a regular file" in refusal(directory)
    for content in (b"", b" \n", b"tok en", "tøken".encode(), b"x" * 2000):
        real.write_bytes(content)
        refusal(real)


def test_a_client_is_told_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="not found.*--token-file"):
        read_token(str(tmp_path / "nope"))
