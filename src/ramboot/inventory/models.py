"""The store's tables: nodes, leases, boot events and hardware inventory."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Node(Base):
    __tablename__ = "nodes"

    mac: Mapped[str] = mapped_column(String(17), primary_key=True)
    uuid: Mapped[str | None] = mapped_column(String(36), index=True)
    hostname: Mapped[str | None] = mapped_column(String(253))
    ip: Mapped[str | None] = mapped_column(String(15), unique=True)
    image: Mapped[str | None] = mapped_column(String(128))
    loader: Mapped[str | None] = mapped_column(String(16))
    kernel_args: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    discovered: Mapped[bool] = mapped_column(default=False)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ssh_keys: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    profiles: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    overlays: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    bmc: Mapped[str | None] = mapped_column(String(1024))  # the BMC URL, password cut out (sealed in secrets)
    boot_once: Mapped[str | None] = mapped_column(String(128))  # an image for the next boot only


class Profile(Base):
    """Settings that nodes inherit: image, kernel arguments, SSH keys, overlays, labels."""

    __tablename__ = "profiles"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    image: Mapped[str | None] = mapped_column(String(128))
    kernel_args: Mapped[str] = mapped_column(Text, default="")
    ssh_keys: Mapped[list[str]] = mapped_column(JSON, default=list)
    overlays: Mapped[list[str]] = mapped_column(JSON, default=list)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    bmc: Mapped[str | None] = mapped_column(String(1024))


class Secret(Base):
    """What the server keeps for nodes and itself: SSH host keys, the SSH CA, machine ids.

    In the database, so several servers on one PostgreSQL hand a node the same keys.
    """

    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Lease(Base):
    """A bound lease; one per lease key (the DHCP core's `lease_key`: client id, else MAC)."""

    __tablename__ = "leases"
    __table_args__ = (Index("ux_leases_key", "key", unique=True),)

    ip: Mapped[str] = mapped_column(String(15), primary_key=True)
    key: Mapped[str] = mapped_column(String(300))
    mac: Mapped[str] = mapped_column(String(17), index=True)
    client_id: Mapped[str | None] = mapped_column(String(255))
    hostname: Mapped[str | None] = mapped_column(String(253))
    uuid: Mapped[str | None] = mapped_column(String(36))  # the firmware's option 97, kept with the lease
    expires: Mapped[float] = mapped_column(Float)  # unix time
    # When the row was last written (the database's clock on PostgreSQL): other servers
    # load what changed since their last look (`store.leases.since`).
    updated: Mapped[float] = mapped_column(Float, default=0.0, server_default="0", index=True)


class Lease6(Base):
    """A bound DHCPv6 lease; one per IA (the DHCPv6 core's `lease_key`: DUID and IAID)."""

    __tablename__ = "leases6"
    __table_args__ = (Index("ux_leases6_key", "key", unique=True),)

    ip: Mapped[str] = mapped_column(String(39), primary_key=True)
    key: Mapped[str] = mapped_column(String(300))
    mac: Mapped[str] = mapped_column(String(17), index=True)  # from option 79, the EUI-64 source or the DUID
    expires: Mapped[float] = mapped_column(Float)  # unix time


class Server(Base):
    """A ramboot server on this database: its URLs, the images it holds verified, its heartbeat."""

    __tablename__ = "servers"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(45))
    http_base: Mapped[str] = mapped_column(String(255))  # http://HOST[:PORT], what nodes are told
    # image name -> {file: sha256}, verified only
    images: Mapped[dict[str, dict[str, str]]] = mapped_column(JSON, default=dict)
    started: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float, index=True)  # unix time of the last heartbeat
    group: Mapped[str | None] = mapped_column("group_name", String(63), nullable=True)  # [cluster] group


class Event(Base):
    """One boot stage of one node, from the server (what it served) or the node."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_mac_at", "mac", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    mac: Mapped[str] = mapped_column(String(17))
    stage: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(8), default="server")  # server | node
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[float] = mapped_column(Float)  # unix time, sub-second
    server: Mapped[str | None] = mapped_column(String(64))  # which server recorded it (several on one database)


class Inventory(Base):
    """A hardware report; every report is kept, so history is visible."""

    __tablename__ = "inventory"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    mac: Mapped[str] = mapped_column(String(17), index=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    at: Mapped[float] = mapped_column(Float)


class Credential(Base):
    """One boot's node credential (access.py): minted when the node's script or config is
    served to it, claimed once for its secrets. Only the token's sha256 is kept."""

    __tablename__ = "credentials"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    nic: Mapped[str] = mapped_column(String(17), index=True)  # the MAC the script was made for
    node: Mapped[str] = mapped_column(String(17), index=True)  # the node it resolved to (its MAC)
    uuid: Mapped[str | None] = mapped_column(String(36))
    ip: Mapped[str] = mapped_column(String(45))  # who it was minted to
    minted: Mapped[float] = mapped_column(Float, index=True)
    state: Mapped[str] = mapped_column(String(12))  # issued | claimed | superseded | contested
    claimed_ip: Mapped[str | None] = mapped_column(String(45))
    claimed_at: Mapped[float | None] = mapped_column(Float)


class Tpm(Base):
    """A node's TPM (tpm_gate.py): the endorsement key it enrolled, and whether the operator
    (or the first boot) trusts it. A different EK later is refused and kept here to show."""

    __tablename__ = "tpms"

    node: Mapped[str] = mapped_column(String(17), primary_key=True)
    ek_fingerprint: Mapped[str] = mapped_column(String(71))  # sha256:<hex> of the EK's SubjectPublicKeyInfo
    ek_public: Mapped[str] = mapped_column(Text)  # the TPM2B_PUBLIC, base64
    ek_cert: Mapped[str | None] = mapped_column(String(512))  # issuer and expiry of its EK certificate, if any
    state: Mapped[str] = mapped_column(String(8))  # pending | trusted
    seen: Mapped[float] = mapped_column(Float)
    trusted_at: Mapped[float | None] = mapped_column(Float)
    refused_fingerprint: Mapped[str | None] = mapped_column(String(71))  # the last other EK that asked
    refused_public: Mapped[str | None] = mapped_column(Text)
    refused_at: Mapped[float | None] = mapped_column(Float)
    # This boot's attestation key (its credential's sha256, the AK's TPM2B_PUBLIC in base64)
    # and the last report counter it signed: a report signed again with it is a replay.
    boot: Mapped[str | None] = mapped_column(String(64))
    ak_public: Mapped[str | None] = mapped_column(Text)
    report_seq: Mapped[int | None] = mapped_column(Integer)
    # Measured boot: {image: {pcr: hex}} as first trusted, and the last boot refused for a PCR.
    pcrs: Mapped[dict[str, dict[str, str]] | None] = mapped_column(JSON)
    pcr_refused: Mapped[str | None] = mapped_column(String(300))
    pcr_refused_at: Mapped[float | None] = mapped_column(Float)


class PowerCount(Base):
    """`ramboot_power_actions_total{action,result}`: kept in the database, since the CLI acts on
    BMCs from its own process and every server on the database shows the same counts."""

    __tablename__ = "power_counts"

    action: Mapped[str] = mapped_column(String(16), primary_key=True)
    result: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(Integer, default=0)


class ConsoleLine(Base):
    """A line of a node's serial console (`[console] capture`), shown with the boot it falls in.
    Kept apart from the events: a boot prints hundreds, which would push its stages out of view."""

    __tablename__ = "console_lines"
    __table_args__ = (Index("ix_console_lines_mac_at", "mac", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    mac: Mapped[str] = mapped_column(String(17))
    at: Mapped[float] = mapped_column(Float)
    line: Mapped[str] = mapped_column(String(200))
