# Type stub of the Cython relay (src/fastproxy/_relay.pyx).

from collections.abc import Sequence
from typing import Any

TARGET_UP: int
TARGET_DOWN: int
TARGET_DRAINING: int
TARGET_DISABLED: int
BALANCE: dict[str, int]
MAX_SLOTS: int
STATS_FIELDS: tuple[str, ...]
CONNECT_BUCKETS: tuple[float, ...]
ACCESS_RESULTS: tuple[str, ...]
NO_SLOT_ID: int

def parse_proxy_header_for_tests(
    data: bytes,
) -> int | tuple[int, tuple[str, int] | None, tuple[str, int] | None]: ...
def parse_client_hello_for_tests(data: bytes) -> str | None | int: ...
def preface_need_for_tests(data: bytes, proxy: bool) -> int: ...

class TlsFileError(ValueError):
    field: str
    reason: str

TLS_VERSIONS: dict[str, int]

def rotate_ticket_keys() -> None: ...

class TlsContext:
    certificates: list[tuple[str, float]]  # (name, not after, Unix time)
    reencrypt: bool
    def __init__(
        self,
        certificates: list[tuple[str, str]],
        *,
        min_version: str = "1.2",
        alpn: Sequence[str] = (),
        client_ca: str | None = None,
        target_ca: str | None = None,
        target_names: list[str] | None = None,
        handshake_timeout: float = 5.0,
        ktls: bool = False,
    ) -> None: ...
    ktls: bool

class Relay:
    def __init__(
        self,
        *,
        workers: int = 1,
        splice: bool = True,
        pipe_size: int = 0,
        buffer_size: int = 65536,
        handoff: bool = True,
    ) -> None: ...
    @property
    def workers(self) -> int: ...
    @property
    def splice(self) -> bool: ...
    @property
    def channel_capacity(self) -> int: ...
    @property
    def listener_fds(self) -> list[int]: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def quiesce(self) -> None: ...
    def add_listener(self, fd: int, port: int = 0, worker: int = -1) -> None: ...
    def remove_listener(self, fd: int) -> None: ...
    def set_port(self, port: int, app_id: int) -> None: ...
    def ensure_slot(self, slot: int) -> None: ...
    def slot_in_use(self, slot: int) -> bool: ...
    def clear_slot(self, slot: int) -> None: ...
    def set_app(
        self,
        app_id: int,
        *,
        targets: list[tuple[int, str, int, int, int, int, bool]]
        | list[tuple[int, str, int, int, int, int, bool, int, int]],
        app_slot: int,
        balance: str = "round-robin",
        connect_timeout: float = 5.0,
        idle_timeout: float = 0.0,
        max_connections: int = 0,
        proxy_protocol: int = 0,
        accept_proxy_protocol: bool = False,
        max_connections_per_source: int = 0,
        panic: bool = True,
        source_mask: tuple[int, int] = (32, 64),
        max_in_preface: int = 1024,
        rate: float = 0.0,
        source_rate: float = 0.0,
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
        proxy_senders: Sequence[str] = (),
        keepalive: tuple[int, int, int] | None = None,
        user_timeout: float = 0.0,
        max_duration: float = 0.0,
        down_check: float = 0.0,
        queue_timeout: float = 0.0,
        slow_start: float = 0.0,
        maglev_keys: Sequence[int] = (),
        tls: TlsContext | None = None,
    ) -> None: ...
    def set_port_sni(
        self,
        port: int,
        names: list[tuple[str, int]],
        *,
        default_app: int = -1,
        accept_proxy: bool = False,
        need_local: bool = False,
        count_slot: int,
        count_app: int = -1,
    ) -> None: ...
    def set_access_log(self, on: bool) -> None: ...
    def drain_access_log(
        self,
    ) -> list[tuple[int, int, int, int, int, int, int, int, int, str, int]]: ...
    def access_log_dropped(self) -> int: ...
    def remove_app(self, app_id: int) -> None: ...
    def set_target_state(self, app_id: int, index: int, state: int) -> None: ...
    def close_target(self, slot: int) -> None: ...
    def target_came_up(self, slot: int) -> None: ...
    @property
    def outlier_fd(self) -> int: ...
    def set_outlier_threshold(self, slot: int, threshold: int) -> None: ...
    def outlier_take(self, slot: int, reset: bool) -> bool: ...
    def stats(self, slot: int) -> tuple[int, ...]: ...
    def connect_times(self, slot: int) -> tuple[tuple[int, ...], float]: ...
    def connections(self) -> int: ...
    def worker_connections(self) -> list[int]: ...

# Test-only (relay/harness.pxi): drive worker 0 of a never-started relay by hand.
DEBUG: bool
STATE_NAMES: dict[int, str]

def harness_step(relay: Relay, timeout_ms: int = 0) -> int: ...
def harness_inject(relay: Relay, batch: list[tuple[int, str, int]]) -> None: ...
def harness_connections(relay: Relay) -> list[dict[str, Any]]: ...
def harness_inbox(relay: Relay) -> list[int]: ...
def harness_held(relay: Relay) -> dict[str, int]: ...
