"""The systemd unit for an installation (`fastproxy systemd-unit`): its own entry point,
a config check before start and reload, state and runtime directories, the fd store that
makes `systemctl restart` refuse no client, and the sandbox it can run in.
packaging/fastproxy.service is this text for /usr/local/bin/fastproxy."""

from __future__ import annotations

import os
import shutil
import sys

DEFAULT_CONFIG = "/etc/fastproxy/fastproxy.json"
# One stored socket per port and Listen address in ports mode (two in bpf mode), plus
# the admin's: enough for every port there is.
FD_STORE_MAX = 131072
CAPABILITIES = (
    "CAP_NET_BIND_SERVICE CAP_NET_ADMIN CAP_BPF CAP_PERFMON CAP_SYS_ADMIN"
    " CAP_SETUID CAP_SETGID CAP_SETPCAP CAP_CHOWN"
)

TEMPLATE = """\
# fastproxy as a systemd service; made by `fastproxy systemd-unit` for {exe}.
#
# It starts as root (binding ports below 1024, loading the BPF steering program,
# writing /run/fastproxy/admin-token) and, with "User" in the config, drops to that
# user keeping only CAP_NET_BIND_SERVICE (+ CAP_NET_ADMIN and CAP_BPF in bpf mode).
# The bounding set below is what the start-up as root needs, nothing more.
[Unit]
Description=fastproxy zero-copy TCP proxy and load balancer
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
# A bad config fails the start (and `systemctl reload`) with its one-line error.
ExecStartPre={exe} check {config}
ExecStart={exe} serve {config}
ExecReload={exe} reload --config {config}
# SIGTERM drains (DrainTimeout, 30 s by default) before exiting.
TimeoutStopSec=45
Restart=on-failure
RestartSec=1
# The listening sockets are kept here across a restart: clients that connect while no
# process runs wait in their backlog and are served by the next one.
FileDescriptorStoreMax={fd_store_max}

# /run/fastproxy: the control socket and the admin token (fastproxy hands the
# directory to "User" before it drops root).
RuntimeDirectory=fastproxy
RuntimeDirectoryMode=0700
# /var/lib/fastproxy: with an etcds:// CONFIG, the last applied fleet config (handed to
# "User" before the drop; believed only if root's or User's and 0700/0600).
StateDirectory=fastproxy
StateDirectoryMode=0700
# /var/cache/fastproxy/bpf: the compiled steering program, so that only the first start
# runs the compiler (root's and private: whoever writes there chooses the program).
CacheDirectory=fastproxy
CacheDirectoryMode=0700

# Start-up as root needs: SETUID/SETGID/SETPCAP to drop, CHOWN for /run/fastproxy
# and /var/lib/fastproxy, NET_BIND_SERVICE for low ports; in bpf mode NET_ADMIN and
# BPF (sk_lookup), PERFMON (bcc's loader) and SYS_ADMIN (enumerating BPF links,
# mounting bpffs if missing).
CapabilityBoundingSet={capabilities}
# Started as root, it has these already; no capability is passed on to anything else.
AmbientCapabilities=
NoNewPrivileges=yes

ProtectSystem=strict
# bpf steering pins its state there ("-": fine where bpffs is not mounted)
ReadWritePaths=-/sys/fs/bpf
# {home_why}
ProtectHome={protect_home}
PrivateTmp=yes
PrivateDevices=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
UMask=0077

# Two descriptors per relayed connection; BPF maps are charged to the memlock limit
# on older kernels.
LimitNOFILE=1048576
LimitMEMLOCK=infinity

[Install]
WantedBy=multi-user.target
"""


def entry_point() -> str:
    """The `fastproxy` command of this installation (its venv's, if run from one)."""
    beside = os.path.join(os.path.dirname(sys.executable), "fastproxy")
    if os.access(beside, os.X_OK):
        return os.path.abspath(beside)
    return os.path.abspath(shutil.which("fastproxy") or beside)


def unit_text(exe: str, config: str = DEFAULT_CONFIG) -> str:
    # An installation under /home or /root (pip --user, a venv there) must stay readable.
    in_home = exe.startswith(("/home/", "/root/")) or config.startswith(("/home/", "/root/"))
    return TEMPLATE.format(
        exe=exe,
        config=config,
        fd_store_max=FD_STORE_MAX,
        capabilities=CAPABILITIES,
        protect_home="read-only" if in_home else "yes",
        home_why=(
            "read-only, not yes: this installation lives under a home directory"
            if in_home
            else "no home directory is needed: the installation and config live elsewhere"
        ),
    )
