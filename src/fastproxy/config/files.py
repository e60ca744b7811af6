"""The entry points: reading a config file (JSON or TOML by extension, regular files
only, bounded size), a fleet's document from etcd with the host's own settings, and
turning every problem into one ConfigError line naming the file."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from .errors import ConfigError, _error, _Invalid
from .model import HOST_LOCAL_KEYS, MAX_CONFIG_BYTES, TOP_KEYS, Config
from .top import _parse_local_settings, _parse_top
from .values import _check_keys, _got


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file. Every failure, I/O included, is a ConfigError."""
    source = os.fsdecode(path)
    raw = read_config_file(path)
    if source.endswith(".toml"):  # by extension: TOML has comments, JSON has not
        return parse_config(_decode_toml(raw, source), source)
    return parse_config_bytes(raw, source)


def read_config_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a config file (regular, at most MAX_CONFIG_BYTES); ConfigError else."""
    source = os.fsdecode(path)
    try:
        return _read_regular_file(path, source)
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except PermissionError:
        raise ConfigError(f"{source}: permission denied") from None
    except (OSError, ValueError) as exc:  # ValueError: NUL byte in the path
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{source}: cannot read the file: {reason}") from None


def _decode_toml(raw: bytes, source: str) -> object:
    import tomllib

    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid TOML: nested too deeply") from None


def parse_config_bytes(raw: bytes, source: str) -> Config:
    """Decode and validate a config document that did not come from a file (etcd);
    `source` names it in every message."""
    return parse_config(_decode_json(raw, source), source)


def parse_fleet_config(raw: bytes, source: str, local: dict[str, Any] | None = None) -> Config:
    """A fleet's config (from etcd, or to be pushed there) completed by this host's own
    settings (`local`, from load_local_config). A fleet document that sets a host-local
    setting is refused: only the host decides those."""
    data = _decode_json(raw, source)
    if isinstance(data, dict):
        for key in data:
            if key in HOST_LOCAL_KEYS:
                raise ConfigError(
                    f"{source}: {key}: a host-local setting, never taken from a fleet's config"
                    " (give it on each host: --local-config FILE)"
                )
        # Without a host's settings (a push), Admin is left to each host: port 0 is no
        # app's port, so only a host's own Admin is checked against the apps' ports.
        merged = _JsonObject({**data, **(local if local is not None else {"Admin": "127.0.0.1:0"})})
        merged.duplicates = getattr(data, "duplicates", ())
        data = merged
    return parse_config(data, source)


def load_local_config(path: str) -> dict[str, Any]:
    """The host-local settings of an instance serving a fleet's config (--local-config):
    a JSON object of HOST_LOCAL_KEYS only, validated; ConfigError otherwise."""
    data = _decode_json(read_config_file(path), path)
    try:
        if not isinstance(data, dict):
            raise _Invalid("", f"expected a JSON object at the top level, {_got(data)}")
        for key in data:
            if key in TOP_KEYS and key not in HOST_LOCAL_KEYS:
                raise _Invalid(key, "a setting of the fleet, not of one host: it belongs in etcd")
        _check_keys(data, HOST_LOCAL_KEYS)
        _parse_local_settings(data)
    except _Invalid as err:
        raise _error(path, None, err) from None
    return dict(data)


def _not_a_file(mode: int) -> str | None:
    """Why a file of this mode cannot be a config, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, expected a JSON file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe), expected a JSON file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, expected a JSON file"
    if stat.S_ISSOCK(mode):
        return "is a socket, expected a JSON file"
    return "is not a regular file, expected a JSON file"


def _read_regular_file(path: str | os.PathLike[str], source: str) -> bytes:
    # A reload must never hang: reading a FIFO blocks until a writer comes, and opening
    # some devices has side effects. So stat first, open without blocking, and check
    # again what was opened (the path may have been replaced in between).
    why = _not_a_file(os.stat(path).st_mode)
    if why is None:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            why = _not_a_file(st.st_mode)
            if why is None and st.st_size <= MAX_CONFIG_BYTES:
                raw = f.read(MAX_CONFIG_BYTES + 1)  # it may have grown since fstat
                if len(raw) <= MAX_CONFIG_BYTES:
                    return raw
    if why is None:
        why = f"is larger than {MAX_CONFIG_BYTES >> 20} MiB, too large for a config file"
    raise ConfigError(f"{source}: {why}")


def parse_config(data: object, source: str = "<config>") -> Config:
    """Validate already-decoded JSON data and build a Config; raises only ConfigError."""
    try:
        return _parse_top(data, source)
    except ConfigError:
        raise
    except _Invalid as err:
        raise _error(source, None, err) from None
    except RecursionError:
        raise ConfigError(f"{source}: the config is nested too deeply") from None
    except Exception as exc:  # the contract is "only ConfigError", even if this module errs
        raise ConfigError(f"{source}: cannot validate the config ({exc!r})") from exc


class _JsonObject(dict[str, Any]):
    """A decoded JSON object that remembers keys given twice (json keeps the last silently)."""

    duplicates: tuple[str, ...] = ()

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _JsonObject:
        obj = cls(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            dups = []
            for key, _ in pairs:
                if key in seen and key not in dups:
                    dups.append(key)
                seen.add(key)
            obj.duplicates = tuple(dups)
        return obj


def _decode_json(raw: bytes, source: str) -> object:
    if len(raw) > MAX_CONFIG_BYTES:  # a file is checked before it is read; etcd's value here
        raise ConfigError(
            f"{source}: larger than {MAX_CONFIG_BYTES >> 20} MiB, too large for a config"
        )
    try:
        text = raw.decode("utf-8-sig")  # tolerate a BOM written by some editors
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (bad byte at offset {exc.start})") from None
    if not text.strip():
        raise ConfigError(f"{source}: the file is empty, expected a JSON object") from None
    try:
        return json.loads(text, object_pairs_hook=_JsonObject.from_pairs)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    except ValueError:  # int() refuses numbers of thousands of digits
        raise ConfigError(f"{source}: invalid JSON: a number has too many digits") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid JSON: nested too deeply") from None
