"""The plain values the store reads and writes: no SQLAlchemy here.

The policy and the protocol shells use these without importing the database
layer; leases are the DHCP core's own `LeaseRecord`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class NodeSpec:
    """What an operator says about a node; the store's input and output."""

    mac: str
    image: str | None = None
    hostname: str | None = None
    ip: str | None = None
    loader: str | None = None
    uuid: str | None = None
    kernel_args: str = ""
    labels: dict[str, Any] = field(default_factory=dict)
    discovered: bool = False


@dataclass
class EventRecord:
    mac: str
    stage: str
    at: float
    source: str = "server"
    detail: dict[str, Any] = field(default_factory=dict)
