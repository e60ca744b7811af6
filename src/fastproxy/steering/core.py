"""The Steering object: a loaded program with its maps, put in effect and pinned."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import Iterable, Mapping

from .bpfsys import (
    BPF_SK_LOOKUP,
    link_create,
    link_detach,
    link_info,
    link_update,
    map_delete,
    map_keys,
    map_lookup,
    map_update,
    map_update_batch,
    obj_info,
    obj_pin,
    possible_cpus,
)
from .errors import SteeringUnavailable, describe
from .links import detach_orphans, pinned_link
from .loader import Objects, load_program, port_key, probe, slot_key
from .pins import (
    DEFAULT_PIN_ROOT,
    dropped,
    ensure_bpffs,
    locked,
    netns_inode,
    open_netns,
    owner_record,
    private_pin_root,
    read_owner,
    remove_dir,
    sweep_dead_namespaces,
    unlink,
)

COUNTER_NAMES = ("lookups", "steered", "misses", "errors", "denied")  # enum counter in steer.c
SLOT_IPV4, SLOT_IPV6 = 0, 1  # keys of the sockets map (SOCKET_IPV4/6 in steer.c)
POLICY_HAS_ALLOW, POLICY_ID_MASK = 0x80000000, 0xFFFF  # steer.c


def acl_key(policy: int, prefixlen: int, address: int) -> bytes:
    """A key of steer.c's allow_nets / deny_nets: (32 + prefix length, policy, address),
    the address 128 bits (IPv4 as ::ffff:a.b.c.d, prefix length + 96)."""
    return struct.pack("=II", 32 + prefixlen, policy) + address.to_bytes(16, "big")


def _socket_slots(sockets: list[socket.socket]) -> dict[int, socket.socket]:
    """Which socket takes IPv4 lookups (slot 0) and which IPv6 (slot 1)."""
    if not sockets:
        raise SteeringUnavailable("no listening socket to steer to")
    slots: dict[int, socket.socket] = {}
    claimed: set[int] = set()  # each socket's own family, which no other socket may take
    # Dual-stack sockets first, so that an AF_INET socket given alongside takes IPv4.
    for sock in sorted(sockets, key=lambda s: s.family != socket.AF_INET6):
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise SteeringUnavailable("steering needs TCP sockets (AF_INET or AF_INET6)")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise SteeringUnavailable("steering needs listening sockets (call listen() first)")
        if sock.family == socket.AF_INET:
            serves = [SLOT_IPV4]
        elif sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
            serves = [SLOT_IPV6]
        else:
            serves = [SLOT_IPV6, SLOT_IPV4]  # IPV6_V6ONLY=0 takes IPv4 as ::ffff:a.b.c.d
        if serves[0] in claimed:
            raise SteeringUnavailable(
                "one listening socket per address family (for an SO_REUSEPORT group, pass one)"
            )
        claimed.add(serves[0])
        for slot in serves:
            slots[slot] = sock
    return slots


def _check_ports(ports: Iterable[int]) -> frozenset[int]:
    result = frozenset(map(int, ports))
    if result and not 1 <= min(result) <= max(result) <= 65535:
        raise ValueError(f"port out of 1..65535: {min(p for p in result if not 1 <= p <= 65535)}")
    return result


class Steering:
    """sk_lookup steering of the configured ports to our listening socket(s), in this netns."""

    def __init__(
        self, objects: Objects, directory: str, ino: int, ports: frozenset[int], pin_root: str
    ) -> None:
        self._objects = objects
        self._directory = directory
        self._pin_root = pin_root
        self._ino = ino
        self._ports = ports
        self._pid = os.getpid()
        self._owner = owner_record(self._pid)
        self._closed = False
        # Admission control as last written (set_admission): port -> policy word, and the
        # keys of both tries.
        self._policies: dict[int, int] = {}
        self._nets: dict[str, frozenset[bytes]] = {
            "allow_nets": frozenset(),
            "deny_nets": frozenset(),
        }

    # -- attach ---------------------------------------------------------------------------

    @classmethod
    def attach(
        cls,
        sockets: list[socket.socket],
        ports: Iterable[int],
        *,
        pin_root: str = DEFAULT_PIN_ROOT,
        takeover: bool = False,
    ) -> Steering:
        """Steer `ports` in the calling thread's netns to `sockets` (listening, TCP).

        One dual-stack AF_INET6 socket serves both families; or give one socket per family.
        Pinned state left by a dead owner is replaced in place. A live owner makes this fail,
        unless `takeover`. Every failure is a SteeringUnavailable with a one-line reason."""
        steering = cls.prepare(sockets, ports, pin_root=pin_root)
        try:
            steering.commit(takeover=takeover)
        except BaseException:
            steering.release()
            raise
        return steering

    @classmethod
    def prepare(
        cls, sockets: list[socket.socket], ports: Iterable[int], *, pin_root: str = DEFAULT_PIN_ROOT
    ) -> Steering:
        """Load the program (cached, else compiled) with its maps filled, without putting it
        in effect: nothing that steers connections in this netns changes until commit(). A
        takeover prepares while the running process still serves, and commits only once it
        has handed over, so a successor that fails before that changes nothing."""
        try:
            wanted = _check_ports(ports)
            slots = _socket_slots(list(sockets))
            reason = probe()
            if reason:
                raise SteeringUnavailable(reason)
            ensure_bpffs(pin_root)
            private_pin_root(pin_root)
            ino = netns_inode()
            objects = load_program()
            try:
                fds = objects.fds
                if wanted:  # one call for any number of ports: start-up with 10,000 is fast
                    keys = struct.pack(f"={len(wanted)}H", *sorted(wanted))  # port_key()s
                    map_update_batch(fds["ports"], keys, b"\x01" * len(wanted), len(wanted))
                for slot, sock in slots.items():
                    map_update(fds["sockets"], slot_key(slot), struct.pack("=Q", sock.fileno()))
            except BaseException:
                objects.close()
                raise
        except SteeringUnavailable:
            raise
        except Exception as exc:  # one line for the operator, never a traceback
            raise SteeringUnavailable(describe(exc)) from None
        directory = os.path.join(pin_root, str(ino))
        return cls(objects, directory, ino, wanted, pin_root)

    def commit(self, *, takeover: bool = False) -> None:
        """Put the prepared program in effect and pin it: atomically in place of a previous
        owner's (dead, or handing over to us when `takeover`), else with a new link."""
        try:
            netns_fd, ino = open_netns()
            try:
                if ino != self._ino:
                    raise SteeringUnavailable("commit from another network namespace")
                with locked(self._pin_root):
                    sweep_dead_namespaces(self._pin_root, ino)
                    self._commit_locked(netns_fd, takeover)
            finally:
                os.close(netns_fd)
        except SteeringUnavailable:
            raise
        except Exception as exc:
            raise SteeringUnavailable(describe(exc)) from None

    def _commit_locked(self, netns_fd: int, takeover: bool) -> None:
        directory = self._directory
        owner = read_owner(directory)
        if owner and owner[1] and not takeover:
            pid = owner[0]
            who = "this process" if pid == os.getpid() else f"another fastproxy (pid {pid})"
            raise SteeringUnavailable(f"{who} owns steering in this netns ({directory})")
        fds = self._objects.fds
        os.makedirs(directory, exist_ok=True)
        fds["link"] = self._attach_link(fds["prog"], directory, netns_fd, self._ino, takeover)
        try:
            self._pin(self._objects, directory)
        except BaseException:
            # Our program is in effect but cannot be pinned: take it out again rather than
            # leave a program nobody can find steering ports away (the caller may fall back
            # to `ports` mode). A previous owner's state is gone too: it was dead or handed over.
            with contextlib.suppress(OSError):
                link_detach(fds["link"])
                remove_dir(directory)
            raise
        self._owner = owner_record(os.getpid())

    def in_effect(self) -> bool:
        """Whether our program is the one attached to this netns through our link."""
        try:
            info = link_info(self._fd("link"))
        except (OSError, KeyError, SteeringUnavailable):
            return False
        return info.netns_ino == self._ino and info.prog_id == self._prog_id()

    def restore(self) -> None:
        """Put our program back in effect (and our pins back) if something replaced or
        detached it: a successor that died or gave up half way through a takeover."""
        was_dropped = dropped()  # then the pins are out of reach: being in effect is what counts
        if self.in_effect() and (was_dropped or self._owns_pins()):
            return
        netns_fd, _ = open_netns()
        try:
            with contextlib.nullcontext() if was_dropped else locked(self._pin_root):
                fds = self._objects.fds
                link = fds.get("link")
                try:
                    if link is None:
                        raise OSError(errno.ENOLINK, "no link")
                    link_update(link, fds["prog"])
                except OSError:
                    # Detached links cannot be updated: attach afresh.
                    if link is not None:
                        os.close(fds.pop("link"))
                    if not was_dropped:  # listing links takes CAP_SYS_ADMIN
                        detach_orphans(self._ino, None, takeover=True)
                    fds["link"] = link_create(fds["prog"], netns_fd, BPF_SK_LOOKUP)
                if was_dropped:
                    return
                os.makedirs(self._directory, exist_ok=True)
                for name, fd in fds.items():
                    path = os.path.join(self._directory, name)
                    unlink(path)
                    obj_pin(fd, path)
                owner = os.path.join(self._directory, "owner")
                unlink(owner)
                os.symlink(self._owner, owner)
        except OSError as exc:
            raise SteeringUnavailable(f"cannot restore steering: {describe(exc)}") from None
        finally:
            os.close(netns_fd)

    def _prog_id(self) -> int:
        # struct bpf_prog_info: type, id
        return int(struct.unpack_from("=4xI", obj_info(self._fd("prog"), 8))[0])

    @staticmethod
    def _attach_link(prog_fd: int, directory: str, netns_fd: int, ino: int, takeover: bool) -> int:
        """Put prog_fd in effect in this netns, with exactly one fastproxy link there.

        A pinned link of a previous owner is updated to the new program (BPF_LINK_UPDATE is
        atomic: no lookup sees neither program, none sees both). Otherwise a new link."""
        link_fd = pinned_link(directory, ino)
        try:
            keep = None if link_fd is None else link_info(link_fd).link_id
            detach_orphans(ino, keep, takeover)
            if link_fd is None:
                return link_create(prog_fd, netns_fd, BPF_SK_LOOKUP)
            link_update(link_fd, prog_fd)
        except BaseException:
            if link_fd is not None:
                os.close(link_fd)
            raise
        return link_fd

    @staticmethod
    def _pin(objects: Objects, directory: str) -> None:
        """Pin (or re-pin over a previous owner's) program, maps and link, then the owner."""
        for name, fd in objects.fds.items():
            path = os.path.join(directory, name)
            if name == "link" and os.path.exists(path):
                continue  # the same link object, updated in place
            unlink(path)
            obj_pin(fd, path)
        owner = os.path.join(directory, "owner")
        unlink(owner)
        os.symlink(owner_record(os.getpid()), owner)

    # -- ports ----------------------------------------------------------------------------

    @property
    def ports(self) -> frozenset[int]:
        """The configured ports (as last set through this object)."""
        return self._ports

    def set_ports(self, ports: Iterable[int]) -> None:
        """Change the steered ports in place: new ones first, then remove the old ones.

        In that order no port of both the old and the new set ever stops being steered, and
        connections already accepted are never touched (steering acts on new SYNs only)."""
        wanted = _check_ports(ports)
        fd = self._fd("ports")
        try:
            for port in sorted(wanted - self._ports):
                map_update(fd, port_key(port), b"\x01")
                self._ports = self._ports | {port}
            for port in sorted(self._ports - wanted):
                map_delete(fd, port_key(port))
                self._ports = self._ports - {port}
        except OSError as exc:
            raise SteeringUnavailable(f"cannot update the port map: {describe(exc)}") from None

    def read_ports(self) -> frozenset[int]:
        """The ports in the BPF map, read back from the kernel."""
        keys = map_keys(self._fd("ports"), 2)
        return frozenset(struct.unpack("=H", key)[0] for key in keys)

    # -- admission control ----------------------------------------------------------------

    def set_admission(
        self, policies: Mapping[int, int], allow: Iterable[bytes], deny: Iterable[bytes]
    ) -> None:
        """Allow / Deny in the program (steer.c's `refused`): `policies` maps a port to its
        policy word (app id, POLICY_HAS_ALLOW), `allow` and `deny` are acl_key()s. Entries
        are added before the ports point at them and removed after, so a reload never
        lets a refused client through a half-written list, nor refuses on one."""
        wanted = {"allow_nets": frozenset(allow), "deny_nets": frozenset(deny)}
        try:
            for name, keys in wanted.items():
                fd = self._fd(name)
                for key in keys - self._nets[name]:
                    map_update(fd, key, b"\x01")
            fd = self._fd("policies")
            for port, word in policies.items():
                if self._policies.get(port) != word:
                    map_update(fd, port_key(port), struct.pack("=I", word))
            for port in self._policies.keys() - policies.keys():
                map_delete(fd, port_key(port))
            self._policies = dict(policies)
            for name, keys in wanted.items():
                fd = self._fd(name)
                for key in self._nets[name] - keys:
                    map_delete(fd, key)
                self._nets[name] = keys
            live = {word & POLICY_ID_MASK for word in policies.values()}
            for policy in self.denied().keys() - live:  # a later app may get the id
                map_delete(self._fd("denied"), struct.pack("=I", policy))
        except OSError as exc:
            raise SteeringUnavailable(f"cannot update Allow / Deny: {describe(exc)}") from None

    def denied(self) -> dict[int, int]:
        """Clients refused by Allow / Deny, per policy (app id), summed over CPUs."""
        fd = self._fd("denied")
        size = 8 * possible_cpus()
        result = {}
        for key in list(map_keys(fd, 4)):
            raw = map_lookup(fd, key, size)
            if raw:
                result[struct.unpack("=I", key)[0]] = sum(struct.unpack(f"={len(raw) // 8}Q", raw))
        return result

    # -- observation ----------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """{"lookups", "steered", "misses", "errors", "denied"}, summed over CPUs."""
        fd = self._fd("counters")
        size = 8 * possible_cpus()
        result = {}
        for index, name in enumerate(COUNTER_NAMES):
            raw = map_lookup(fd, struct.pack("=I", index), size) or b""
            result[name] = sum(struct.unpack(f"={len(raw) // 8}Q", raw))
        return result

    def socket_cookies(self) -> dict[int, int]:
        """Slot -> SO_COOKIE of the socket in the sockmap (slot 0: IPv4, 1: IPv6)."""
        result = {}
        for slot in (SLOT_IPV4, SLOT_IPV6):
            raw = map_lookup(self._fd("sockets"), slot_key(slot), 8)
            if raw:
                result[slot] = struct.unpack("=Q", raw)[0]
        return result

    @property
    def directory(self) -> str:
        """Where the state is pinned: <pin_root>/<netns inode>."""
        return self._directory

    @property
    def netns_inode(self) -> int:
        return self._ino

    @property
    def link_id(self) -> int:
        return link_info(self._fd("link")).link_id

    @property
    def prog_id(self) -> int:
        return link_info(self._fd("link")).prog_id

    # -- shutdown -------------------------------------------------------------------------

    def close(self) -> None:
        """Detach the program, unpin everything and remove the pin directory (after a
        privilege drop, only detach).

        Only while we still own the state: after a takeover the pins belong to the new
        process, and in a forked child they belong to the parent; then this is release()."""
        if self._closed:
            return
        try:
            if dropped() and os.getpid() == self._pid:
                # Root's 0700 pin root is out of reach: detach our link (steering stops at
                # once) and leave the pins, which the next start replaces.
                with contextlib.suppress(OSError, KeyError):  # KeyError: never committed
                    link_detach(self._fd("link"))
                return
            with locked(self._pin_root):
                if self._owns_pins():
                    # Detach explicitly: unpinning alone would leave the program attached
                    # while any other holder of the link (bpftool, a forked child) lives.
                    with contextlib.suppress(OSError):
                        link_detach(self._fd("link"))
                    remove_dir(self._directory)
        except OSError as exc:
            raise SteeringUnavailable(f"cannot remove steering: {describe(exc)}") from None
        finally:
            self.release()

    def release(self) -> None:
        """Close our descriptors and leave the pinned state (program attached) in place.

        For a takeover: the new process attaches with takeover=True and replaces the program
        atomically. Until then the pinned program keeps steering to the socket(s) in the
        sockmap, which stay there as long as some process keeps them open."""
        self._objects.close()
        self._closed = True

    def __enter__(self) -> Steering:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _owns_pins(self) -> bool:
        if os.getpid() != self._pid:
            return False
        try:
            return os.readlink(os.path.join(self._directory, "owner")) == self._owner
        except OSError:
            return False

    def _fd(self, name: str) -> int:
        if self._closed:
            raise SteeringUnavailable("steering is closed")
        return self._objects.fds[name]
