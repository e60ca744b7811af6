"""The admin token (SPEC section 7): a random secret in a file only its owner can
read. `fastproxy serve` creates it when missing; the CLI reads it and sends it with
every POST. Anything wrong with the file is a one-line TokenError."""

from __future__ import annotations

import contextlib
import errno
import os
import stat

DEFAULT_PATH = "/run/fastproxy/admin-token"
TOKEN_BYTES = 32  # 256 bits
MAX_TOKEN_LENGTH = 1024  # it travels in an HTTP header


class TokenError(Exception):
    """One-line reason the token file cannot be used."""


def ensure_token(path: str) -> str:
    """The token in `path`, created (random, mode 0600, ours) if the file is missing.
    An existing file that others can read or write, or that another user owns, is
    refused: whoever planted or can read it could steer the proxy."""
    try:
        return _read(path, check_owner=True)
    except FileNotFoundError:
        pass
    import secrets  # only to make a token (with its imports: milliseconds of every start)

    _create(path, secrets.token_hex(TOKEN_BYTES))
    try:
        return _read(path, check_owner=True)  # another process may have won the race
    except FileNotFoundError:
        raise TokenError(f"admin token file {path}: vanished right after it was created") from None


def read_token(path: str) -> str:
    """The token for a client (the CLI): any readable file will do."""
    try:
        return _read(path, check_owner=False)
    except FileNotFoundError:
        raise TokenError(
            f"admin token file {path} not found (is fastproxy running with this"
            " AdminTokenFile? see --token-file and --config)"
        ) from None


def _read(path: str, *, check_owner: bool) -> str:
    # O_NOFOLLOW: a symlink planted in the token's place is refused, not followed.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TokenError(f"admin token file {path}: is a symbolic link, refused") from None
        raise TokenError(f"admin token file {path}: {_reason(exc)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TokenError(f"admin token file {path}: not a regular file")
        if check_owner:
            _check_private(path, st)
        data = os.read(fd, MAX_TOKEN_LENGTH + 2)
    except OSError as exc:
        raise TokenError(f"admin token file {path}: {_reason(exc)}") from None
    finally:
        os.close(fd)
    token = data.strip()
    if not token:
        raise TokenError(f"admin token file {path}: empty")
    if len(token) > MAX_TOKEN_LENGTH or not all(0x21 <= b <= 0x7E for b in token):
        raise TokenError(
            f"admin token file {path}: expected at most {MAX_TOKEN_LENGTH} printable ASCII"
            " characters"
        )
    return token.decode("ascii")


def _check_private(path: str, st: os.stat_result) -> None:
    uid = os.geteuid()
    if st.st_uid != uid:
        raise TokenError(
            f"admin token file {path}: owned by uid {st.st_uid}, not by us (uid {uid});"
            " remove it or give it to this user"
        )
    if st.st_mode & 0o077:
        raise TokenError(
            f"admin token file {path}: mode {stat.S_IMODE(st.st_mode):04o} lets others read"
            f" or write it; chmod 600 {path}"
        )


def _create(path: str, token: str) -> None:
    """Write the token aside, then link() it into place: the file appears whole and
    with its final mode, and an existing one (a concurrent start) is never replaced."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    except OSError as exc:
        reason = _reason(exc)
        raise TokenError(f"admin token file {path}: cannot create {parent}: {reason}") from None
    import secrets

    aside = os.path.join(parent, f".{os.path.basename(path)}.{secrets.token_hex(8)}")
    try:
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
            os.write(fd, token.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    except OSError as exc:
        raise TokenError(f"admin token file {path}: cannot create it: {_reason(exc)}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(aside)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
