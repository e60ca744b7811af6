"""The BPF links attaching our program to a network namespace: ours, stale and orphaned."""

from __future__ import annotations

import os

from .bpfsys import (
    BPF_LINK_GET_FD_BY_ID,
    BPF_MAP_GET_FD_BY_ID,
    BPF_MAP_TYPE_SOCKMAP,
    BPF_PROG_GET_FD_BY_ID,
    get_fd_by_id,
    link_detach,
    link_ids,
    link_info,
    map_lookup,
    map_type,
    obj_get,
    prog_name_and_maps,
)
from .errors import SteeringUnavailable
from .loader import PROGRAM_NAME, slot_key
from .pins import unlink


def pinned_link(directory: str, ino: int) -> int | None:
    """The pinned link if it still attaches an sk_lookup program to this netns.

    Otherwise (its netns is gone and the inode number was reused, or it is not a link) the
    pin is stale: remove it, so that a new link is created."""
    path = os.path.join(directory, "link")
    try:
        fd = obj_get(path)
    except FileNotFoundError:
        return None
    try:
        info = link_info(fd)
    except OSError:
        info = None
    if info and info.is_sk_lookup and info.netns_ino == ino:
        return fd
    os.close(fd)
    unlink(path)
    return None


def detach_orphans(ino: int, keep_link_id: int | None, takeover: bool) -> None:
    """Detach fastproxy links in this netns that our pins do not name, if they are stale.

    One whose program still has a socket belongs to a live proxy: refuse, unless taking over."""
    orphans = _orphan_links(ino, keep_link_id)
    try:
        for orphan in orphans:
            if _link_has_socket(orphan) and not takeover:
                raise SteeringUnavailable(
                    "another fastproxy owns steering in this netns (its pins are not "
                    "visible here: was bpffs mounted again, e.g. by `ip netns exec`?)"
                )
        for orphan in orphans:
            link_detach(orphan)
    finally:
        for orphan in orphans:
            os.close(orphan)


def _orphan_links(ino: int, keep_link_id: int | None) -> list[int]:
    """fastproxy sk_lookup links attached to this netns that our pins do not name.

    They come from a proxy whose pins we cannot see: bpffs mounted afresh (`ip netns exec`
    remounts /sys), or the pin directory removed by hand. Returned as open fds."""
    orphans = []
    for link_id in link_ids():
        if link_id == keep_link_id:
            continue
        try:
            fd = get_fd_by_id(BPF_LINK_GET_FD_BY_ID, link_id)
        except OSError:
            continue  # went away meanwhile
        try:
            info = link_info(fd)
            mine = info.is_sk_lookup and info.netns_ino == ino and _is_ours(info.prog_id)
        except OSError:
            mine = False
        if mine:
            orphans.append(fd)
        else:
            os.close(fd)
    return orphans


def _is_ours(prog_id: int) -> bool:
    try:
        fd = get_fd_by_id(BPF_PROG_GET_FD_BY_ID, prog_id)
    except OSError:
        return False
    try:
        return prog_name_and_maps(fd)[0] == PROGRAM_NAME
    finally:
        os.close(fd)


def _link_has_socket(link_fd: int) -> bool:
    """Whether the program behind a link still has a listening socket in its sockmap.

    A proxy's socket leaves the sockmap when it is closed, so an empty sockmap means that
    nobody serves through this program any more."""
    prog_fd = get_fd_by_id(BPF_PROG_GET_FD_BY_ID, link_info(link_fd).prog_id)
    try:
        map_ids = prog_name_and_maps(prog_fd)[1]
    finally:
        os.close(prog_fd)
    for map_id in map_ids:
        map_fd = get_fd_by_id(BPF_MAP_GET_FD_BY_ID, map_id)
        try:
            if map_type(map_fd) == BPF_MAP_TYPE_SOCKMAP and any(
                map_lookup(map_fd, slot_key(slot), 8) for slot in (0, 1)
            ):
                return True
        finally:
            os.close(map_fd)
    return False
