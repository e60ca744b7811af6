"""Dropping root once the privileged work is done (SPEC section 7: `User`, `Group`).

Started as root with `User` set, fastproxy binds its ports, loads BPF and writes its
files first; then `drop()` switches every uid and gid to the user and keeps only the
capabilities a running proxy still uses:

    CAP_NET_BIND_SERVICE   always: a reload may add a port below 1024
    CAP_NET_ADMIN, CAP_BPF bpf steering only: the port map is updated through bpf(2)

The bounding set shrinks to the same, and NO_NEW_PRIVS is set: nothing the process
executes can gain more. Capabilities, the bounding set, KEEPCAPS and NO_NEW_PRIVS are
per thread and inherited by threads started later: NO_NEW_PRIVS is set first thing
(forbid_new_privileges), and the drop runs in the main thread before the threads that
need capabilities (admin, config watcher, control) start. glibc applies setres[ug]id to
every thread, so threads already running (relay workers, health checks, DNS) end up as
the user with no capabilities at all, which is all they need.
"""

from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd
from collections.abc import Iterable
from typing import NamedTuple

log = logging.getLogger("fastproxy")

CAP_SETGID, CAP_SETUID, CAP_SETPCAP = 6, 7, 8
CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_BPF = 39
CAP_NAMES = {CAP_NET_BIND_SERVICE: "net_bind_service", CAP_NET_ADMIN: "net_admin", CAP_BPF: "bpf"}
_NEEDED_TO_DROP = {CAP_SETGID: "setgid", CAP_SETUID: "setuid", CAP_SETPCAP: "setpcap"}

_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4


class PrivilegeError(Exception):
    """One-line reason the privileges could not be dropped; the proxy must not run."""


# A NamedTuple rather than a frozen dataclass: no methods compiled at import (start-up).
class Account(NamedTuple):
    user: str
    uid: int
    gid: int


def account(user: str, group: str | None = None) -> Account:
    """The uid and gid of `user` (its primary group unless `group`); KeyError names
    the one that does not exist."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise KeyError(f'no such user "{user}"') from None
    if group is None:
        return Account(user, entry.pw_uid, entry.pw_gid)
    try:
        return Account(user, entry.pw_uid, grp.getgrnam(group).gr_gid)
    except KeyError:
        raise KeyError(f'no such group "{group}"') from None


def target(user: str | None, group: str | None) -> Account | None:
    """The account a proxy started now will run as, if it switches (root with User).
    PrivilegeError now if it could not: a successor must not find out after its
    predecessor has stopped."""
    if user is None or os.geteuid() != 0:
        return None
    try:
        to = account(user, group)
    except KeyError as exc:
        raise PrivilegeError(f"cannot drop privileges: {exc.args[0]}") from None
    effective = _effective_caps()
    missing = [name for cap, name in _NEEDED_TO_DROP.items() if not effective >> cap & 1]
    if missing:
        raise PrivilegeError(
            f"cannot drop privileges to {user}: no CAP_{', CAP_'.join(missing).upper()}"
        )
    return to


def _effective_caps() -> int:
    with open("/proc/thread-self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def needed(bpf: bool) -> tuple[int, ...]:
    """The capabilities a running proxy keeps."""
    return (CAP_NET_BIND_SERVICE, CAP_NET_ADMIN, CAP_BPF) if bpf else (CAP_NET_BIND_SERVICE,)


def drop_to(user: str | None, group: str | None, *, bpf: bool) -> None:
    """Become `user` if it is set and we are root; a warning if it is set and we are
    not (there is nothing to drop). Raises PrivilegeError."""
    if user is None:
        return
    if os.geteuid() != 0:
        log.warning("User %s is set but fastproxy was not started as root: nothing to drop", user)
        return
    try:
        to = account(user, group)
    except KeyError as exc:
        raise PrivilegeError(f"cannot drop privileges: {exc.args[0]}") from None
    keep = needed(bpf)
    try:
        drop(to, keep)
    except OSError as exc:
        raise PrivilegeError(f"cannot drop privileges to {user}: {exc.strerror}") from None
    log.info(
        "running as %s (uid %d, gid %d) with capabilities %s",
        user,
        to.uid,
        to.gid,
        ",".join(CAP_NAMES[cap] for cap in keep),
    )


def drop(to: Account, keep: Iterable[int]) -> None:
    """Switch the calling thread (and, for ids, the process) to `to`, keeping only
    `keep` in the permitted, effective and bounding sets, with NO_NEW_PRIVS."""
    kept = set(keep)
    _prctl(_PR_SET_KEEPCAPS, 1)  # setuid from root would otherwise clear every set
    for cap in range(_last_cap() + 1):
        if cap not in kept:
            _prctl(_PR_CAPBSET_DROP, cap)
    os.setgroups([to.gid])
    os.setresgid(to.gid, to.gid, to.gid)
    os.setresuid(to.uid, to.uid, to.uid)
    _capset(kept)  # setuid kept the permitted set and cleared the effective one
    _prctl(_PR_SET_KEEPCAPS, 0)
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)


def _last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _capset(caps: set[int]) -> None:
    """Permitted and effective = caps, inheritable empty (version 3: two 32-bit words)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for cap in caps:
        word, bit = divmod(cap, 32)
        data[word].effective |= 1 << bit
        data[word].permitted |= 1 << bit
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def forbid_new_privileges() -> None:
    """NO_NEW_PRIVS for this thread and every thread it starts from now on: nothing
    executed can gain privileges (drop() sets it too; this covers the threads that
    start before it)."""
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
