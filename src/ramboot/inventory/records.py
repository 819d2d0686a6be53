"""The plain values the store reads and writes: no SQLAlchemy here.

The policy and the protocol shells use these without importing the database
layer.

Leases: `LeaseRecord` and `Lease6Record` are the DHCP cores' own value types
(`proto/` stands alone and builds them on every bind), named here so that
nothing outside the cores and their shells imports them from `proto/`. One
type, not a copy converted at the shell: the hot path stays one allocation per
bind and the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..proto.dhcp6_core import Lease6Record
from ..proto.dhcp_core import LeaseRecord

__all__ = ["CredentialRecord", "EventRecord", "Lease6Record", "LeaseRecord", "NodeSpec", "ProfileSpec",
           "ServerRecord", "TpmRecord"]


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
    ssh_keys: list[str] = field(default_factory=list)  # public keys for root's authorized_keys
    profiles: list[str] = field(default_factory=list)  # inherited in order; the node's own settings win
    overlays: list[str] = field(default_factory=list)  # DATA/overlays/NAME trees, laid on at boot
    bmc: str | None = None  # BMC URL (power/bmc.py); read back with the password as ***
    boot_once: str | None = None  # an image for the next boot only (consumed when that boot reports booted)


@dataclass
class ProfileSpec:
    """A named set of settings that nodes inherit (`node add --profile`, `[boot] profile`)."""

    name: str
    image: str | None = None
    kernel_args: str = ""
    ssh_keys: list[str] = field(default_factory=list)
    overlays: list[str] = field(default_factory=list)
    labels: dict[str, Any] = field(default_factory=dict)
    bmc: str | None = None


@dataclass
class EventRecord:
    mac: str
    stage: str
    at: float
    source: str = "server"
    detail: dict[str, Any] = field(default_factory=dict)
    server: str | None = None  # the server that recorded it (several may share one database)


@dataclass
class ServerRecord:
    """One ramboot server on the database: what it tells nodes and when it was last seen."""

    name: str
    address: str
    http_base: str  # http://HOST[:PORT]
    images: dict[str, dict[str, str]]  # image -> {file: sha256}, only images it holds verified
    started: float
    last_seen: float
    group: str | None = None  # `[cluster] group`: its rack or row


@dataclass
class CredentialRecord:
    """One boot's node credential (access.py); the token itself is never kept, only its sha256."""

    token_sha256: str
    nic: str  # the MAC whose script carried it
    node: str  # the node it resolved to
    uuid: str | None
    ip: str  # the address it was minted to
    minted: float
    state: str  # issued | claimed | superseded | contested
    claimed_ip: str | None = None
    claimed_at: float | None = None


@dataclass(frozen=True)
class TpmRecord:
    """A node's enrolled TPM (tpm_gate.py): its EK and whether it is trusted."""

    node: str
    ek_fingerprint: str
    ek_public: str  # base64 TPM2B_PUBLIC
    ek_cert: str | None
    state: str  # pending | trusted
    seen: float
    trusted_at: float | None = None
    refused_fingerprint: str | None = None
    refused_public: str | None = None
    refused_at: float | None = None
    boot: str | None = None  # the credential's sha256 of the boot whose AK signs reports
    ak_public: str | None = None  # base64 TPM2B_PUBLIC of that AK
    report_seq: int | None = None  # the last report counter accepted from it
    pcrs: dict[str, dict[str, str]] | None = None  # measured boot: {image: {pcr: hex}}, first trusted
    pcr_refused: str | None = None  # the last boot refused for its PCRs: which, and for which image
    pcr_refused_at: float | None = None
