"""The one access rule: is this request from node M, and how do we know.

Every node-facing path that hands out a secret or writes to a node's record asks
here, and nowhere else: the node's overlay (its SSH host keys, machine id,
authorized_keys), its reports (stage events, inventory) and the boot scripts and
configs, which carry the boot's credential and open its timeline. The state it
reads and writes is in the store, so every server of a cluster agrees.

The rule (docs/security.md has the threat model):

- **Who is node M.** In full mode, the address that holds M's *hardware lease*: a
  lease whose chaddr is M and whose client id is none, `01`+M, or the firmware's
  machine id (type 0) equal to the UUID M is registered with. A lease another
  client took for M's chaddr under a client id of its own is not M's. When a
  machine is found by its UUID on another NIC, that NIC's lease must carry the
  same UUID (the firmware's option 97), not only the URL. In proxy and off mode
  ramboot leases nothing: the address is taken at its word (`proven` is False).
- **A per-boot credential.** When M's script or config is served to M, a random
  token is minted for that boot (only its sha256 is kept) and put on the kernel
  command line; every earlier unclaimed one of M is superseded. M's secrets are
  handed out once, against that token, from M's hardware-lease address (full
  mode) or, with `[security] proxy_secrets = "first-claim"`, from the address it
  was minted to (proxy and off mode; with "none" there, no secret at all).
- **Contested.** A claim with a token that was already claimed or superseded is a
  second claim on a boot: refused, and the boot is marked `contested` (an event, a
  metric, `node show`). So a layer-2 impersonator who takes M's MAC and address
  before M boots takes at most that one boot, and M's own claim then fails loudly.
- **Who may become a node.** With `[boot] unknown_nodes = "discover"`, a machine that
  reports its hardware and that nobody registered, by MAC or by UUID, is registered
  (`discovered`); nothing else ever writes a node from a node's request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from .config import BootConfig
from .inventory.records import CredentialRecord, NodeSpec
from .macaddr import normalize_mac
from .proto.dhcp_core import LeaseRecord
from .proto.pxe import uuid_to_wire

TOKEN_BYTES = 24  # 192 bits, url-safe base64 on the command line
CREDENTIAL_KEEP = 7 * 86400.0  # credentials older than this are forgotten (their boots are long over)


class CredentialStore(Protocol):
    """The store's credentials table (`inventory/credentials.py`)."""

    def mint(self, rec: CredentialRecord, keep_after: float) -> None: ...

    def get(self, token_sha256: str) -> CredentialRecord | None: ...

    def claim(self, token_sha256: str, ip: str, now: float) -> bool: ...

    def contest(self, token_sha256: str) -> None: ...

    def current(self, node: str) -> CredentialRecord | None: ...


class LeaseDirectory(Protocol):
    """What the rule reads of the leases and nodes."""

    def leases_of(self, mac: str, now: float) -> list[LeaseRecord]: ...

    def lease_at(self, ip: str, now: float) -> LeaseRecord | None: ...

    def get_node(self, mac: str) -> NodeSpec | None: ...


class NodeDirectory(Protocol):
    """The registered nodes, by NIC and by SMBIOS UUID (the store, or `policy.Directory`)."""

    def get_node(self, mac: str) -> NodeSpec | None: ...

    def node_by_uuid(self, uuid: str) -> NodeSpec | None: ...


@dataclass(frozen=True)
class Verdict:
    ok: bool
    why: str
    proven: bool = True  # False: proxy or off mode, where an address is taken at its word


@dataclass(frozen=True)
class Claim:
    """The answer to a claim of a node's secrets with a credential."""

    status: Literal[200, 403, 409]
    why: str
    credential: CredentialRecord | None = None
    contested: bool = False  # a second claim on one boot: record it, loudly


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _uuid_hex(uuid: str | None) -> set[str]:
    """A UUID's 16 bytes as hex, in both byte orders firmware uses (EFI GUID, as option 97
    carries it, and RFC 4122)."""
    if not uuid:
        return set()
    return {uuid_to_wire(uuid).hex(), uuid.replace("-", "").lower()}


def hardware_lease(leases: Iterable[LeaseRecord], mac: str, uuid: str | None,
                   firmware: bool = False) -> LeaseRecord | None:
    """M's hardware lease among its unexpired ones: keyed by M itself (no client id, or
    `01`+M), or by the firmware's machine id (client id type 0) when it is `uuid`, the
    UUID M is registered with. Never a lease another client id took for M's chaddr.

    `firmware`: also a machine id that is the lease's own option 97 (a UEFI firmware's
    lease, for a node registered without its UUID). Anyone can send both, so this opens
    a boot (its script, its credential) but never hands out a secret."""
    mac = normalize_mac(mac)
    machine_ids = {"00" + h for h in _uuid_hex(uuid)}
    best: LeaseRecord | None = None
    for lease in leases:
        if lease.mac != mac:
            continue
        cid = (lease.client_id or "").lower()
        own = firmware and cid.startswith("00") and cid in {"00" + h for h in _uuid_hex(lease.uuid)}
        if lease.key == "hw:" + mac or cid in machine_ids or own:
            if best is None or lease.expires > best.expires:
                best = lease
    return best


class AccessRule:
    """The rule over the store's leases, nodes and credentials; time passed in or read once per call."""

    def __init__(self, mode: str, proxy_secrets: str, directory: LeaseDirectory, credentials: CredentialStore,
                 clock: Callable[[], float] = time.time):
        self.mode = mode
        self.proxy_secrets = proxy_secrets
        self.directory = directory
        self.credentials = credentials
        self.clock = clock

    # -- who is this -----------------------------------------------------------
    def is_node(self, nic: str, ip: str, node: str | None = None, uuid: str | None = None,
                firmware: bool = False) -> Verdict:
        """Is a request from `ip` the machine whose NIC is `nic`, booting as `node`?

        `node`/`uuid`: the registered node the decision resolved to and the UUID it
        resolved by, when that is not `nic` itself (a machine found by its UUID).
        `firmware`: a UEFI firmware's own lease counts too (`hardware_lease`)."""
        if self.mode != "full":
            return Verdict(True, f"{self.mode} mode: {ip} is taken at its word", proven=False)
        nic = normalize_mac(nic)
        now = self.clock()
        spec = self.directory.get_node(node or nic)
        leases = self.directory.leases_of(nic, now)
        uuid_of = spec.uuid if spec else None
        # A dual-stack machine holds a hardware lease in each family: the one at `ip` counts.
        lease = hardware_lease([x for x in leases if x.ip == ip], nic, uuid_of, firmware)
        if lease is None:
            if hardware_lease(leases, nic, uuid_of, firmware) is None:
                return Verdict(False, f"{nic} holds no lease of its own")
            return Verdict(False, f"{ip} does not hold {nic}'s lease")
        if node is not None and normalize_mac(node) != nic and (uuid is None or lease.uuid != uuid):
            return Verdict(False, f"{nic}'s lease does not carry the UUID {node} is registered with")
        return Verdict(True, f"{ip} holds {nic}'s lease")

    # -- the boot's credential -------------------------------------------------
    def mint(self, nic: str, node: str | None, uuid: str | None, ip: str) -> str | None:
        """A new credential for this boot if `ip` is the node, else None (nothing is minted,
        and the caller serves the script without one and records no stage)."""
        if not nic:
            lease = self.directory.lease_at(ip, self.clock()) if self.mode == "full" else None
            if lease is None:
                return None
            nic = lease.mac
        verdict = self.is_node(nic, ip, node, uuid, firmware=True)
        if not verdict.ok:
            return None
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = self.clock()
        self.credentials.mint(CredentialRecord(token_sha256(token), normalize_mac(nic), normalize_mac(node or nic),
                                               uuid, ip, now, "issued"), keep_after=now - CREDENTIAL_KEEP)
        return token

    def claim(self, nic: str, ip: str, token: str | None, peek: bool = False) -> Claim:
        """A claim of the node's secrets (its overlay) with this boot's credential.

        `peek`: check only (the overlay's sha256 file); the claim itself uses it up."""
        if self.mode != "full" and self.proxy_secrets != "first-claim":
            return Claim(403, f'{self.mode} mode serves no secrets unless [security] proxy_secrets = "first-claim"')
        if not token:
            return Claim(403, "no credential: a node's secrets go only with its boot's credential")
        rec = self.credentials.get(token_sha256(token))
        if rec is None or not hmac.compare_digest(rec.nic, normalize_mac(nic)):
            return Claim(403, f"not a credential of {normalize_mac(nic)}")
        if self.mode == "full":
            verdict = self.is_node(rec.nic, ip, rec.node, rec.uuid)
            if not verdict.ok:
                return Claim(403, verdict.why)
        elif ip != rec.ip:
            return Claim(403, f"first-claim: the credential was minted to {rec.ip}, not {ip}")
        if rec.state == "issued" and peek:
            return Claim(200, "valid", rec)
        if rec.state == "issued" and self.credentials.claim(rec.token_sha256, ip, self.clock()):
            return Claim(200, "claimed", rec)
        # Claimed already (perhaps a moment ago, by another server), superseded or contested:
        # two parties hold this node's boot. Never serve it twice.
        self.credentials.contest(rec.token_sha256)
        was = rec.state if rec.state != "issued" else "claimed"
        return Claim(409, f"contested: this boot's credential was already {was}", rec, contested=True)

    # -- reports ---------------------------------------------------------------
    def reporter(self, mac: str, ip: str, token: str | None) -> Verdict:
        """May `ip` report stages and inventory for `mac`? In full mode, from the address
        holding `mac`'s hardware lease (a credential alone is not enough: one minted to a
        firmware's lease proves less). In proxy and off mode, with this boot's credential
        (issued or claimed, the newest of its node)."""
        mac = normalize_mac(mac)
        if self.mode == "full":
            return self.is_node(mac, ip)
        if token:
            rec = self.credentials.get(token_sha256(token))
            if rec is not None and mac in (rec.nic, rec.node) and rec.state in ("issued", "claimed"):
                current = self.credentials.current(rec.node)
                if current is not None and current.token_sha256 == rec.token_sha256:
                    return Verdict(True, "this boot's credential")
            return Verdict(False, f"not the current credential of {mac}")
        return Verdict(False, f"{self.mode} mode: a report needs this boot's credential (ramboot.token=)")


# -- discovery ---------------------------------------------------------------------
def discovered(boot: BootConfig, nodes: NodeDirectory, mac: str, uuid: str | None) -> NodeSpec | None:
    """The node to register for a machine that reported its hardware, or None.

    Only in `unknown_nodes = "discover"` and only for a machine nobody registered (by
    this NIC, or by its UUID: a known machine on a new NIC is registered already).
    """
    if boot.unknown_nodes != "discover" or nodes.get_node(mac) is not None:
        return None
    if uuid and nodes.node_by_uuid(uuid) is not None:
        return None
    return NodeSpec(mac=normalize_mac(mac), image=boot.default_image, uuid=uuid, discovered=True)
