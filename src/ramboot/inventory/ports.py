"""The narrow views of the store that its consumers name (like `policy.Directory`).

Each protocol is what one kind of consumer needs from one part of the store
(`parts/`); the store's parts satisfy them structurally, and so do a
snapshot, a cache or a test's double. Nothing here imports SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any, Protocol

from ..power.bmc import Bmc
from .records import EventRecord, Lease6Record, LeaseRecord, NodeSpec, ProfileSpec, ServerRecord


class NodeReader(Protocol):
    def get(self, mac: str) -> NodeSpec | None: ...

    def all(self, macs: Collection[str] | None = None) -> list[NodeSpec]: ...


class ProfileReader(Protocol):
    def get(self, name: str) -> ProfileSpec | None: ...

    def all(self) -> list[ProfileSpec]: ...


class SecretSource(Protocol):
    """identity.py: a secret made once and kept (sealed), and replaced."""

    def get(self, name: str, make: Callable[[], str]) -> str: ...

    def set(self, name: str, value: str) -> None: ...


class LeaseReader(Protocol):
    def load(self) -> list[LeaseRecord]: ...

    def active(self, macs: Collection[str] | None = None, now: float | None = None) -> list[LeaseRecord]: ...


class Lease6Store(Protocol):
    """The DHCPv6 server: its core is the authority, so a batch is one plain transaction."""

    def load6(self) -> list[Lease6Record]: ...

    def save6(self, upserts: Iterable[Lease6Record], deletes: Iterable[str] = ()) -> None: ...


class EventSink(Protocol):
    """The event log's flush and retention pass."""

    def add(self, events: Iterable[EventRecord]) -> None: ...

    def prune(self, before: float, keep_per_node: int, now: float | None = None) -> int: ...


class EventReader(Protocol):
    def of(self, mac: str, limit: int = 200) -> list[EventRecord]: ...

    def last_id(self) -> int: ...

    def after(self, after: int, not_server: str | None = None, limit: int = 5000) -> list[tuple[int, EventRecord]]: ...


class ServerDirectory(Protocol):
    """The servers on one database (cluster.py)."""

    def heartbeat(self, rec: ServerRecord) -> None: ...

    def touch(self, name: str, at: float) -> bool: ...

    def all(self) -> list[ServerRecord]: ...

    def remove(self, name: str) -> None: ...


class HardwareReports(Protocol):
    def add(self, mac: str, data: dict[str, Any], at: float | None = None) -> None: ...

    def latest(self, mac: str) -> dict[str, Any] | None: ...


class PowerLog(Protocol):
    """A node's BMC, the power counters and console lines (power/)."""

    def bmc(self, mac: str) -> Bmc | None: ...

    def count(self, action: str, result: str) -> None: ...

    def add_console_lines(self, mac: str, lines: list[tuple[float, str]], keep: int) -> None: ...
