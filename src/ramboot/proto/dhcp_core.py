"""DHCPv4 server logic, sans-IO: a datagram and the time in, replies and actions out.

`DhcpCore.handle()` never touches a socket, a clock or the store. It is built
from plain frozen `DhcpSettings` and asks two injected callables: `decide(Client)`
(the policy seam: the boot program, the fixed address and the hostname, once
per request) and `reserved()` (the fixed addresses of every node, so no lease
takes one). Lease changes come back as `Result.upserts`/`deletes`; the shell
must commit them before it sends `Result.sends`, so an ACKed lease is on disk
first.

One lease rule, here and nowhere else: a lease belongs to the client
identifier (option 61), or to the MAC when there is none (RFC 2131 §4.2), see
`lease_key`. The store keeps one lease per key, exactly as the core does.

Modes (`DhcpSettings.mode`):
- `full`: leases from the range, fixed addresses for known nodes, the whole
  RFC 2131 state machine (DISCOVER/OFFER, REQUEST in SELECTING, INIT-REBOOT,
  RENEWING and REBINDING, ACK/NAK, DECLINE, RELEASE, INFORM, relays).
- `proxy`: proxyDHCP (PXE 2.1): boot information only, to PXE clients only,
  on port 67 (DISCOVER) and 4011 (REQUEST); never an address.

Answering iPXE at once: iPXE's `dhcp_discovery_rx()` leaves the discovery
state as soon as it has an address offer AND either a ProxyDHCP offer (any
reply with option 60 "PXEClient" and a server id) or option 175.176
(`no_pxedhcp`). Otherwise it waits DHCP_DISC_PROXY_TIMEOUT_SEC for a
ProxyDHCP offer. So every answer to a PXEClient carries option 60 "PXEClient"
with siaddr and a boot file (iPXE's `dhcp_has_pxeopts()`, so it needs no
ProxyDHCPREQUEST either), and full-mode answers to iPXE also carry 175.176=1.

A UEFI PXE firmware in proxy mode goes through port 4011: the proxy offer on 67
carries no PXE vendor options (43), which edk2 reads as a "BINL" proxy offer
(`PxeBcParseDhcp4Packet`), so after the site server's ACK it asks ramboot again
on 4011 (`PxeBcRetryBinlOffer`) and boots what that ACK names. A BIOS PXE ROM
keeps option 43 "use the boot file" and boots from the offer itself.
"""

from __future__ import annotations

import bisect
import ipaddress
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from .dhcp_codec import (
    BOOTREPLY,
    BOOTREQUEST,
    FLAG_BROADCAST,
    IPXE_NO_PXEDHCP,
    PXE_DISCOVERY_CONTROL,
    PXE_DISCOVERY_USE_BOOTFILE,
    ZERO_IP,
    DhcpDecodeError,
    DhcpEncodeError,
    DhcpPacket,
    MsgType,
    Opt,
    decode,
    encode,
    encode_suboptions,
    socket_aton,
)
from .pxe import BootFile, Client, Firmware

SERVER_PORT = 67
CLIENT_PORT = 68
PXE_PORT = 4011
BROADCAST = "255.255.255.255"
OFFER_HOLD = 60.0  # seconds an offered address stays reserved for its client (while the pool has others)
# After a search of the whole range found nothing free, the next this many seconds skip the
# search: a DISCOVER flood on a full pool would otherwise cost one walk of the range per packet.
RESCAN_AFTER = 1.0
RECLAIM_TRIES = 64  # oldest offers looked at per DISCOVER when the pool is full
# A DECLINE counts only this soon after its lease was bound: a client declines right after
# the ACK, once its ARP probe found the address taken (RFC 2131 §4.4.1), never later.
DECLINE_WINDOW = 60.0
_PXE_USE_BOOTFILE = encode_suboptions({PXE_DISCOVERY_CONTROL: bytes((PXE_DISCOVERY_USE_BOOTFILE,))}, end=True)
_IPXE_NO_PXEDHCP = encode_suboptions({IPXE_NO_PXEDHCP: b"\x01"})
# The metrics label per message type.
_KIND: dict[int | None, str] = {None: "bootp", **{int(m): m.name.lower() for m in MsgType}}
_CLASS_OPTIONS = (Opt.CLIENT_ARCH, Opt.VENDOR_CLASS, Opt.USER_CLASS, Opt.IPXE_ENCAP)


@dataclass(frozen=True)
class SubnetSettings:
    """One subnet's range and what its clients are told, as plain values."""

    range_first: str
    range_last: str
    netmask: str | None = None  # None: derived from the range
    router: str | None = None
    dns: tuple[str, ...] = ()
    domain: str | None = None


@dataclass(frozen=True)
class DhcpSettings:
    """What the core needs from the configuration, as plain values. The one-range form
    (`range_first` … `domain`) is one subnet; `subnets` are more (`[[dhcp.subnet]]`)."""

    mode: str  # full | proxy (the shell runs no core for "off")
    server_ip: str
    range_first: str | None = None  # full mode
    range_last: str | None = None
    netmask: str | None = None  # None: derived from the range
    router: str | None = None
    dns: tuple[str, ...] = ()
    domain: str | None = None
    subnets: tuple[SubnetSettings, ...] = ()
    lease_time: int = 3600
    # Where in the range the search for a free address starts: several servers on one
    # database start at different places, so their offers to new clients seldom meet.
    cursor_seed: int = 0
    # Leases and offers to machines nobody registered, at most (0: three quarters of the
    # range): DISCOVERs from made-up MACs never take the addresses registered nodes need.
    max_unknown: int = 0

    def all_subnets(self) -> tuple[SubnetSettings, ...]:
        top = () if self.range_first is None or self.range_last is None else (SubnetSettings(
            self.range_first, self.range_last, self.netmask, self.router, self.dns, self.domain),)
        return top + self.subnets


class _Subnet:
    """One subnet's range, its search cursor and its encoded options."""

    def __init__(self, st: SubnetSettings, cursor_seed: int):
        first, last = ipaddress.IPv4Address(st.range_first), ipaddress.IPv4Address(st.range_last)
        self.first, self.last = int(first), int(last)
        mask = st.netmask
        if mask is None:
            span = ipaddress.summarize_address_range(first, last)
            prefix = min(24, min(n.prefixlen for n in span))
            while last not in ipaddress.IPv4Network(f"{first}/{prefix}", strict=False):
                prefix -= 1
            mask = str(ipaddress.IPv4Network(f"{first}/{prefix}", strict=False).netmask)
        self.network = ipaddress.IPv4Network(f"{first}/{mask}", strict=False)
        self.net_first = int(self.network.network_address)
        self.net_last = int(self.network.broadcast_address)
        self.cursor = self.first + cursor_seed % (self.last - self.first + 1)
        self.full_until = 0.0  # no search of the range before this time (RESCAN_AFTER)
        net: dict[int, bytes] = {Opt.SUBNET_MASK: self.network.netmask.packed}
        if st.router:
            net[Opt.ROUTER] = socket_aton(st.router)
        if st.dns:
            net[Opt.DNS] = b"".join(socket_aton(a) for a in st.dns)
        if st.domain:
            net[Opt.DOMAIN] = st.domain.encode()
        self.options = net

    def holds(self, ip: int) -> bool:
        return self.net_first <= ip <= self.net_last

    def in_range(self, ip: int) -> bool:
        return self.first <= ip <= self.last


class Answer(Protocol):
    """What the policy says about one client; `policy.Decision` is one."""

    @property
    def boot_file(self) -> BootFile: ...

    @property
    def fixed_ip(self) -> str | None: ...

    @property
    def hostname(self) -> str | None: ...

    @property
    def node(self) -> str | None: ...  # the registered node, None for a machine nobody registered


Decide = Callable[[Client], Answer | None]  # None: do not answer this client at all


@dataclass(frozen=True)
class LeaseRecord:
    """One bound lease as the store keeps it; `key` is `lease_key()`'s."""

    key: str
    ip: str
    mac: str
    expires: float
    client_id: str | None = None
    hostname: str | None = None
    uuid: str | None = None  # the SMBIOS UUID the firmware sent for this lease, if any


@dataclass(frozen=True)
class Send:
    """One reply datagram. `new_client`: unicast to an address the client does not
    answer ARP for yet (RFC 2131 §4.1); the shell may broadcast it instead."""

    data: bytes
    host: str
    port: int
    src_port: int = SERVER_PORT
    new_client: bool = False


@dataclass(frozen=True)
class BootEvent:
    mac: str
    stage: str
    detail: dict[str, object]


@dataclass
class Result:
    """What one datagram caused. `kind`/`outcome` label the metrics."""

    kind: str
    outcome: str
    sends: list[Send] = field(default_factory=list)
    upserts: list[LeaseRecord] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    events: list[BootEvent] = field(default_factory=list)
    bound: tuple[str, str] | None = None  # (ip, mac): a new or renewed lease, or the address a client told us
    reason: str = ""  # why a datagram was dropped or ignored, for the metrics (empty: see outcome)
    moved: dict[str, str] = field(default_factory=dict)  # lease key -> the address it leaves (the core knew it)
    owners: dict[str, str] = field(default_factory=dict)  # deleted address -> the key that held it
    request: DhcpPacket | None = None  # an ACK's request, so a bind the database refuses can become a NAK

    @property
    def needs_commit(self) -> bool:
        return bool(self.upserts or self.deletes)


@dataclass
class _Lease:
    ip: int
    key: str
    mac: str
    expires: float
    bound: bool
    client_id: str | None = None
    hostname: str | None = None
    client: Client | None = None  # what the DISCOVER said, so the ACK boots the same file
    uuid: str | None = None  # the firmware's option 97, kept for the OS's own DHCP client that sends none
    unknown: bool = False  # for a machine nobody registered (the `max_unknown` cap)


def client_of(pkt: DhcpPacket, mac: str) -> Client:
    users = pkt.user_classes
    return Client(
        mac=mac,
        arch=pkt.arch,
        vendor_class=pkt.vendor_class,
        user_class="iPXE" if "iPXE" in users else (users[0] if users else ""),
        uuid=pkt.uuid,
        ipxe=Opt.IPXE_ENCAP in pkt.options,
    )


def _key(pkt: DhcpPacket, mac: str) -> str:
    return lease_key(pkt.client_id.hex() if pkt.client_id else None, mac)


def _detail(ip: str, client: Client, bf: BootFile, key: str) -> dict[str, object]:
    """What a DHCP event records: the address, and what was booted, if anything. A client
    id of the client's own (not the MAC, not a firmware's machine id) is named: such a lease
    is not the machine's hardware lease (access.py), and its events are only notes in the
    chaddr's timeline (inventory/timeline.py), never the start of its boot."""
    out: dict[str, object] = {"ip": ip, "firmware": "os"} if not client.is_pxe else {
        "ip": ip, "bootfile": bf.filename, "firmware": client.firmware.value}
    if not hardware_key(key):
        out["client_id"] = key[3:]
    return out


def hardware_key(key: str) -> bool:
    """A lease key of the machine itself: its MAC, or a firmware's machine id (type 0)."""
    return key.startswith("hw:") or key.startswith("id:00")


def lease_key(client_id_hex: str | None, mac: str) -> str:
    """Who holds a lease: the client identifier, else the MAC (RFC 2131 §4.2).

    A client id that is just `01` + the MAC (iPXE, udhcpc, dhclient) is the
    MAC: the firmware sent none, and the loader it chains to must get the same
    address, not a second lease. Any other client id is its own client, even
    on a MAC that also holds a lease without one.
    """
    if not client_id_hex or client_id_hex == "01" + mac.replace(":", ""):
        return "hw:" + mac
    return "id:" + client_id_hex


def _ipint(ip: str) -> int:
    return int.from_bytes(socket_aton(ip), "big")


def _ipstr(n: int) -> str:
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


class DhcpCore:
    """The DHCP state machine for one server address; see the module notes."""

    def __init__(
        self,
        settings: DhcpSettings,
        decide: Decide,
        reserved: Callable[[], Mapping[str, str]] = dict,
        leases: Iterable[LeaseRecord] = (),
    ):
        self.settings = settings
        self.mode = settings.mode
        self.server_ip = server_ip = settings.server_ip
        self._server_id = ipaddress.IPv4Address(server_ip).packed
        self._server_int = int(ipaddress.IPv4Address(server_ip))
        self.decide = decide
        self.reserved = reserved
        self.lease_time = settings.lease_time
        self.by_ip: dict[int, _Lease] = {}
        self.by_key: dict[str, int] = {}
        self.declined: dict[int, float] = {}
        # Unbound offers, oldest first: on a full pool the oldest goes to the next new client,
        # so DISCOVERs from made-up MACs hold the pool no longer than the next real client.
        self._offers: dict[int, None] = {}
        self._unknown: set[int] = set()  # addresses held or offered for unregistered machines
        self._unknown_pruned = 0.0
        # Every subnet served, by network address: a request is served from exactly one.
        self.subnets: list[_Subnet] = []
        self._starts: list[int] = []
        if self.mode == "full":
            if not settings.all_subnets():
                raise ValueError("full mode needs a range")
            self.subnets = sorted((_Subnet(st, settings.cursor_seed) for st in settings.all_subnets()),
                                  key=lambda sn: sn.net_first)
            for a, b in zip(self.subnets, self.subnets[1:], strict=False):
                if b.net_first <= a.net_last:
                    raise ValueError(f"subnets {a.network} and {b.network} overlap")
            self._starts = [sn.net_first for sn in self.subnets]
            size = sum(sn.last - sn.first + 1 for sn in self.subnets)
            self.max_unknown = settings.max_unknown or max(1, size * 3 // 4)
            for rec in leases:
                self._put(_Lease(_ipint(rec.ip), rec.key, rec.mac, rec.expires, True, rec.client_id, rec.hostname,
                                 uuid=rec.uuid))
        self._constant_options()

    # -- entry point -----------------------------------------------------
    def handle(self, data: bytes, src: tuple[str, int], port: int, now: float, local: str | None = None) -> Result:
        """One received datagram on `port` (67 or 4011) from `src`; `local`: the address of
        the interface it arrived on (None: the server's own)."""
        try:
            pkt = decode(data)
        except DhcpDecodeError as e:
            return Result("malformed", "dropped", reason=e.reason)
        mt = pkt.msg_type
        kind = _KIND.get(mt, "other")
        mac = pkt.mac
        if pkt.op != BOOTREQUEST:
            return Result(kind, "ignored", reason="not-a-request")
        if mt is None:
            return Result(kind, "ignored", reason="no-message-type")
        if mac is None:
            return Result(kind, "ignored", reason="no-mac")
        try:
            if self.mode == "proxy":
                return self._proxy(pkt, kind, mac, src, port)
            if self.mode == "full" and port == SERVER_PORT:
                return self._full(pkt, mt, kind, mac, src, now, local)
        except DhcpEncodeError:
            return Result(kind, "too-big")
        return Result(kind, "ignored")

    # -- proxy mode --------------------------------------------------------
    def _proxy(self, pkt: DhcpPacket, kind: str, mac: str, src: tuple[str, int], port: int) -> Result:
        client = client_of(pkt, mac)
        if not client.is_pxe:
            return Result(kind, "ignored")
        if port == SERVER_PORT and pkt.msg_type == MsgType.DISCOVER:
            reply_type, dest = MsgType.OFFER, self._dest(pkt, MsgType.OFFER, ZERO_IP)
        elif port == PXE_PORT and pkt.msg_type in (MsgType.REQUEST, MsgType.INFORM):
            # The client has its address now and talks to us directly.
            reply_type, dest = MsgType.ACK, (src[0], src[1], False)
        else:
            return Result(kind, "ignored")
        answer = self.decide(client)
        if answer is None:
            return Result(kind, "ignored")
        bf = answer.boot_file
        reply = self._reply(pkt, reply_type, ZERO_IP)
        # UEFI on 67: a BINL offer (no option 43), so edk2 comes back on 4011 (module notes).
        binl = port == SERVER_PORT and client.firmware is Firmware.UEFI
        self._boot_options(reply, client, bf, pxe_options=not binl)
        if Opt.CLIENT_UUID in pkt.options:  # PXE 2.1: echo the client machine identifier
            reply.options[Opt.CLIENT_UUID] = pkt.options[Opt.CLIENT_UUID]
        send = Send(encode(reply, pkt.max_message_size), dest[0], dest[1], port, dest[2])
        ev = BootEvent(mac, "proxy-offer", {"bootfile": bf.filename, "firmware": client.firmware.value, "port": port})
        # On 4011 the client sends from the address the site's server gave it: TFTP and HTTP
        # can name it from here on (the loader included, which no name carries).
        told = (src[0], mac) if port == PXE_PORT and src[0] != ZERO_IP else None
        return Result(kind, "offer" if reply_type == MsgType.OFFER else "ack", [send], events=[ev], bound=told)

    # -- full mode ---------------------------------------------------------
    def subnet_of(self, ip: str) -> _Subnet | None:
        """The subnet that holds `ip`, if any."""
        n = _ipint(ip)
        i = bisect.bisect_right(self._starts, n) - 1
        return self.subnets[i] if i >= 0 and self.subnets[i].holds(n) else None

    def _pick(self, pkt: DhcpPacket, local: str | None) -> _Subnet | None:
        """The subnet a request is served from (RFC 2131 §4.3.1): a relay's giaddr names it;
        a client that has an address (RENEWING, INFORM) is on the subnet of ciaddr; any other
        is on the subnet of the interface address it arrived on. The one-range form also
        serves direct requests when that address is on no subnet (a range behind the server's
        own router, as before there were several subnets)."""
        if pkt.giaddr != ZERO_IP:
            return self.subnet_of(pkt.giaddr)
        if pkt.ciaddr != ZERO_IP and (sn := self.subnet_of(pkt.ciaddr)) is not None:
            return sn
        sn = self.subnet_of(local or self.server_ip)
        if sn is None and len(self.subnets) == 1 and not self.settings.subnets:
            return self.subnets[0]
        return sn

    def _full(self, pkt: DhcpPacket, mt: int, kind: str, mac: str, src: tuple[str, int], now: float,
              local: str | None) -> Result:
        sn = self._pick(pkt, local)
        if sn is None:
            return Result(kind, "ignored", reason="no-subnet")  # a relay (or link) we have no range for
        if mt == MsgType.DISCOVER:
            return self._discover(pkt, kind, mac, now, sn)
        if mt == MsgType.REQUEST:
            return self._request(pkt, kind, mac, now, sn)
        if mt == MsgType.DECLINE:
            return self._decline(pkt, kind, mac, now)
        if mt == MsgType.RELEASE:
            return self._release(pkt, kind, mac, src)
        if mt == MsgType.INFORM:
            return self._inform(pkt, kind, mac, sn)
        return Result(kind, "ignored")

    def _client(self, pkt: DhcpPacket, mac: str, key: str) -> Client:
        """The client as this packet describes it. The UUID the firmware sent stays with
        its lease: the initramfs's and the OS's DHCP clients send none, and a node found
        by UUID on a new NIC must still be that node when they ask."""
        client = client_of(pkt, mac)
        if client.uuid is None:
            held = self.by_ip.get(self.by_key.get(key, -1))
            if held is not None and held.key == key and held.uuid:
                client = replace(client, uuid=held.uuid)
        return client

    def _discover(self, pkt: DhcpPacket, kind: str, mac: str, now: float, sn: _Subnet) -> Result:
        key = _key(pkt, mac)
        client = self._client(pkt, mac, key)
        answer = self.decide(client)
        if answer is None:
            return Result(kind, "ignored")
        unknown = answer.node is None
        if unknown and self._over_unknown_cap(key, now):
            return Result(kind, "ignored", reason="unknown-cap")
        ip = self._allocate(pkt, key, mac, answer.fixed_ip, now, sn)
        if ip is None:
            return Result(kind, "exhausted")
        lease = self.by_ip.get(ip)
        if lease is None or lease.key != key or not lease.bound:
            lease = _Lease(ip, key, mac, now + OFFER_HOLD, False, unknown=unknown)
            self._put(lease)
        lease.client = client
        lease.uuid = client.uuid
        yiaddr = _ipstr(ip)
        reply = self._reply(pkt, MsgType.OFFER, yiaddr)
        self._lease_options(reply, answer.hostname, sn)
        self._boot_options(reply, client, answer.boot_file)
        send = self._send(pkt, reply, MsgType.OFFER)
        ev = BootEvent(mac, "dhcp-offer", _detail(yiaddr, client, answer.boot_file, key))
        return Result(kind, "offer", [send], events=[ev])

    def _request(self, pkt: DhcpPacket, kind: str, mac: str, now: float, sn: _Subnet) -> Result:
        key = _key(pkt, mac)
        sid = pkt.server_id
        if sid is not None:  # SELECTING
            if sid != self.server_ip:
                self._drop_offer(key)
                return Result(kind, "other-server")
            want = pkt.requested_ip
        elif pkt.requested_ip:  # INIT-REBOOT
            want = pkt.requested_ip
        elif pkt.ciaddr != ZERO_IP:  # RENEWING (unicast) or REBINDING (broadcast)
            want = pkt.ciaddr
        else:
            return Result(kind, "ignored")
        if want is None:
            return Result(kind, "ignored")
        held = self.by_ip.get(self.by_key.get(key, -1))
        client = self._client(pkt, mac, key)
        if held is not None and held.client is not None and not any(o in pkt.options for o in _CLASS_OPTIONS):
            client = held.client  # the REQUEST repeats no class: boot what was offered
        answer = self.decide(client)
        if answer is None:
            return Result(kind, "ignored")
        ip = _ipint(want)
        unknown = answer.node is None
        if unknown and self._over_unknown_cap(key, now):
            return Result(kind, "ignored", reason="unknown-cap")
        if not self._may_bind(ip, key, mac, answer.fixed_ip, now, sn):
            return Result(kind, "nak", [self._nak(pkt, "address not available")])
        moved = {key: _ipstr(held.ip)} if held is not None and held.key == key and held.bound and held.ip != ip else {}
        lease = _Lease(ip, key, mac, now + self.lease_time, True, key[3:] if key.startswith("id:") else None,
                       _hostname(pkt), client, client.uuid, unknown)
        self._put(lease)
        yiaddr = want
        reply = self._reply(pkt, MsgType.ACK, yiaddr)
        self._lease_options(reply, answer.hostname, sn)
        self._boot_options(reply, client, answer.boot_file)
        send = self._send(pkt, reply, MsgType.ACK)
        rec = LeaseRecord(key, yiaddr, mac, lease.expires, lease.client_id, lease.hostname, lease.uuid)
        ev = BootEvent(mac, "dhcp-ack", _detail(yiaddr, client, answer.boot_file, key))
        # Only the machine's own lease names it by address (TFTP and HTTP attribute files by it).
        bound = (yiaddr, mac) if hardware_key(key) else None
        return Result(kind, "ack", [send], upserts=[rec], events=[ev], bound=bound, moved=moved, request=pkt)

    def _decline(self, pkt: DhcpPacket, kind: str, mac: str, now: float) -> Result:
        """The client found the address in use (ARP): quarantine it for a lease time."""
        if pkt.server_id not in (None, self.server_ip) or not pkt.requested_ip:
            return Result(kind, "ignored")
        ip = _ipint(pkt.requested_ip)
        lease = self.by_ip.get(ip)
        if lease is None or lease.key != _key(pkt, mac):
            return Result(kind, "ignored", reason="not-the-holder")
        if lease.bound and lease.expires - self.lease_time < now - DECLINE_WINDOW:
            return Result(kind, "ignored", reason="decline-too-late")
        self._remove(lease)
        self.declined[ip] = now + self.lease_time
        return Result(kind, "declined", deletes=[pkt.requested_ip], owners={pkt.requested_ip: lease.key})

    def _release(self, pkt: DhcpPacket, kind: str, mac: str, src: tuple[str, int]) -> Result:
        """RFC 2131 §4.4.6: the holder unicasts it from the address it releases. A RELEASE
        from any other source (a spoofed one, a relay) frees nothing."""
        if pkt.ciaddr == ZERO_IP:
            return Result(kind, "ignored")
        if src[0] != pkt.ciaddr:
            return Result(kind, "ignored", reason="not-the-holder")
        lease = self.by_ip.get(_ipint(pkt.ciaddr))
        if lease is None or lease.key != _key(pkt, mac):
            return Result(kind, "ignored", reason="not-the-holder")
        self._remove(lease)
        return Result(kind, "released", deletes=[pkt.ciaddr], owners={pkt.ciaddr: lease.key})

    def _inform(self, pkt: DhcpPacket, kind: str, mac: str, sn: _Subnet) -> Result:
        """RFC 2131 §3.4: configuration only, no yiaddr and no lease time."""
        client = self._client(pkt, mac, _key(pkt, mac))
        answer = self.decide(client)
        if answer is None:
            return Result(kind, "ignored")
        reply = self._reply(pkt, MsgType.ACK, ZERO_IP)
        self._lease_options(reply, answer.hostname, sn, lease=False)
        self._boot_options(reply, client, answer.boot_file)
        return Result(kind, "ack", [self._send(pkt, reply, MsgType.ACK)])

    # -- other servers on the same database -----------------------------------
    def learn(self, records: Iterable[LeaseRecord], deleted: Iterable[tuple[str, str | None]] = ()) -> None:
        """Leases another server committed (or the database kept over ours): hold them as bound.
        `deleted`: (address, key or None) another server released."""
        if self.mode != "full":
            return
        for rec in records:
            ip = _ipint(rec.ip)
            mine = self.by_ip.get(ip)
            held = self.by_ip.get(self.by_key.get(rec.key, -1))
            # A newer bind than this record (its expiry is later) is kept: a periodic load may
            # read a row that a commit of ours has already replaced.
            if (mine is not None and mine.bound and mine.expires > rec.expires) or (
                    held is not None and held.bound and held.key == rec.key and held.expires > rec.expires):
                continue
            if mine is not None and mine.key == rec.key:
                mine.expires, mine.bound, mine.mac = rec.expires, True, rec.mac
                mine.client_id, mine.hostname = rec.client_id, rec.hostname
                mine.uuid = rec.uuid or mine.uuid
                self.by_key[rec.key] = ip
                continue
            self._put(_Lease(ip, rec.key, rec.mac, rec.expires, True, rec.client_id, rec.hostname, uuid=rec.uuid))
        for ip_s, key in deleted:
            lease = self.by_ip.get(_ipint(ip_s))
            if lease is not None and lease.bound and (key is None or lease.key == key):
                self._remove(lease)

    def refused(self, res: Result, holders: Iterable[LeaseRecord]) -> Result:
        """The database refused this ACK's bind (another server's client holds the address,
        or this client holds another one): forget ours, learn theirs, NAK instead (RFC 2131
        §4.3.2: the client starts over and is offered what it holds)."""
        for rec in res.upserts:
            lease = self.by_ip.get(_ipint(rec.ip))
            if lease is not None and lease.key == rec.key:
                self._remove(lease)
        self.learn(holders)
        assert res.request is not None
        return Result(res.kind, "nak-taken", [self._nak(res.request, "address not available")])

    # -- address allocation ------------------------------------------------
    @staticmethod
    def _fixed(fixed_ip: str | None, sn: _Subnet) -> int | None:
        """The node's fixed address as an integer, if it is on the subnet it asks from."""
        if not fixed_ip:
            return None
        ip = _ipint(fixed_ip)
        return ip if sn.holds(ip) else None

    def _usable(self, ip: int, key: str, mac: str, now: float, reserved: Mapping[str, str], sn: _Subnet) -> bool:
        if ip == self._server_int or ip == sn.net_first or ip == sn.net_last:
            return False
        if self.declined.get(ip, 0) > now:
            return False
        if reserved:
            other = reserved.get(_ipstr(ip))
            if other is not None and other != mac:
                return False
        lease = self.by_ip.get(ip)
        return lease is None or lease.key == key or lease.expires <= now

    def _allocate(self, pkt: DhcpPacket, key: str, mac: str, fixed_ip: str | None, now: float,
                  sn: _Subnet) -> int | None:
        """Fixed address, else this client's lease or offer, else its wish, else the next free,
        all in the subnet `sn`."""
        fixed = self._fixed(fixed_ip, sn)
        if fixed is not None:
            return fixed
        reserved = self.reserved()
        mine = self.by_key.get(key)
        if mine is not None and sn.in_range(mine) and self._usable(mine, key, mac, now, reserved, sn):
            return mine
        wish = pkt.requested_ip
        if wish:
            w = _ipint(wish)
            if sn.in_range(w) and self._usable(w, key, mac, now, reserved, sn):
                return w
        if now >= sn.full_until:
            size = sn.last - sn.first + 1
            cur = sn.cursor
            for _ in range(size):
                ip = cur
                cur = sn.first if cur >= sn.last else cur + 1
                if self._usable(ip, key, mac, now, reserved, sn):
                    sn.cursor = cur
                    return ip
            sn.full_until = now + RESCAN_AFTER
        return self._reclaim_offer(mac, reserved, sn)

    def _reclaim_offer(self, mac: str, reserved: Mapping[str, str], sn: _Subnet) -> int | None:
        """The pool is full: the oldest unbound offer's address, taken back (its client, if it
        ever asks, is NAKed and starts over). Bound leases are never taken."""
        for _ in range(min(RECLAIM_TRIES, len(self._offers))):
            ip = next(iter(self._offers))
            del self._offers[ip]
            lease = self.by_ip.get(ip)
            if lease is None or lease.bound or not sn.in_range(ip):
                continue
            other = reserved.get(_ipstr(ip)) if reserved else None
            if other is not None and other != mac:
                continue
            self._remove(lease)
            return ip
        return None

    def _may_bind(self, ip: int, key: str, mac: str, fixed_ip: str | None, now: float, sn: _Subnet) -> bool:
        fixed = self._fixed(fixed_ip, sn)
        if fixed is not None:
            return ip == fixed
        if not sn.in_range(ip):
            return False
        return self._usable(ip, key, mac, now, self.reserved(), sn)

    def _over_unknown_cap(self, key: str, now: float) -> bool:
        """An unregistered machine that holds nothing yet, with `max_unknown` addresses already
        held or offered for such machines: no answer (counted as `unknown-cap`)."""
        held = self.by_ip.get(self.by_key.get(key, -1))
        if held is not None and held.key == key:
            return False
        if len(self._unknown) >= self.max_unknown and now - self._unknown_pruned >= RESCAN_AFTER:
            self._unknown_pruned = now  # expired ones drop out, at most once a second
            self._unknown = {ip for ip in self._unknown if (lease := self.by_ip.get(ip)) and lease.expires > now}
        return len(self._unknown) >= self.max_unknown

    def _put(self, lease: _Lease) -> None:
        old = self.by_key.get(lease.key)
        if old is not None and old != lease.ip:
            prev = self.by_ip.get(old)
            if prev is not None and prev.key == lease.key:
                del self.by_ip[old]
                self._unknown.discard(old)
        self.by_ip[lease.ip] = lease
        self.by_key[lease.key] = lease.ip
        if lease.unknown:
            self._unknown.add(lease.ip)
        else:
            self._unknown.discard(lease.ip)
        self._offers.pop(lease.ip, None)
        if not lease.bound:
            self._offers[lease.ip] = None  # the newest offer last

    def _remove(self, lease: _Lease) -> None:
        self.by_ip.pop(lease.ip, None)
        self._unknown.discard(lease.ip)
        self._offers.pop(lease.ip, None)
        sn = self.subnet_of(_ipstr(lease.ip))
        if sn is not None:
            sn.full_until = 0.0  # an address is free again
        if self.by_key.get(lease.key) == lease.ip:
            del self.by_key[lease.key]

    def _drop_offer(self, key: str) -> None:
        """The client chose another server: our unbound offer is free again."""
        lease = self.by_ip.get(self.by_key.get(key, -1))
        if lease is not None and not lease.bound:
            self._remove(lease)

    # -- building replies --------------------------------------------------
    def _reply(self, req: DhcpPacket, mt: MsgType, yiaddr: str) -> DhcpPacket:
        rep = DhcpPacket(
            op=BOOTREPLY, htype=req.htype, hlen=req.hlen, xid=req.xid, flags=req.flags,
            ciaddr=req.ciaddr if mt == MsgType.ACK else ZERO_IP,
            yiaddr=yiaddr, giaddr=req.giaddr, chaddr=req.chaddr,
        )
        rep.options[Opt.MESSAGE_TYPE] = bytes((mt,))
        rep.options[Opt.SERVER_ID] = self._server_id
        if Opt.RELAY_AGENT in req.options:  # RFC 3046 §2.2: echo to the relay
            rep.options[Opt.RELAY_AGENT] = req.options[Opt.RELAY_AGENT]
        return rep

    def _lease_options(self, rep: DhcpPacket, hostname: str | None, sn: _Subnet, lease: bool = True) -> None:
        o = rep.options
        if lease:
            o.update(self._lease_opts)
        o.update(sn.options)
        if hostname:
            o[Opt.HOSTNAME] = hostname.encode()

    def _constant_options(self) -> None:
        """The lease options, the same in every reply, encoded once (a subnet's own are in `_Subnet`)."""
        lt = self.lease_time
        self._lease_opts: dict[int, bytes] = {
            Opt.LEASE_TIME: struct.pack("!I", lt),
            Opt.RENEWAL_TIME: struct.pack("!I", lt // 2),
            Opt.REBINDING_TIME: struct.pack("!I", lt * 7 // 8),
        }

    def _boot_options(self, rep: DhcpPacket, client: Client, bf: BootFile, pxe_options: bool = True) -> None:
        """The boot program, as both the `file` field and option 67 (ROMs read one or the other).

        Only for PXE/HTTP-boot firmware and iPXE: an operating system's own DHCP
        client (the initramfs, the booted root) gets its address and nothing to boot.
        """
        if not client.is_pxe:
            return
        name = bf.filename.encode()
        rep.siaddr = self.server_ip
        rep.file = name if len(name) <= 127 else b""
        o = rep.options
        o[Opt.BOOTFILE] = name
        o[Opt.TFTP_SERVER] = self.server_ip.encode()
        ipxe = client.firmware is Firmware.IPXE
        if bf.http:
            o[Opt.VENDOR_CLASS] = b"HTTPClient"  # UEFI HTTP boot only takes an offer that says so
        elif client.vendor_class.startswith("PXEClient") or ipxe:
            o[Opt.VENDOR_CLASS] = b"PXEClient"
            if not ipxe and pxe_options:
                o[Opt.VENDOR_SPECIFIC] = _PXE_USE_BOOTFILE
        if ipxe and self.mode == "full":
            o[Opt.IPXE_ENCAP] = _IPXE_NO_PXEDHCP

    def _dest(self, req: DhcpPacket, mt: MsgType, yiaddr: str) -> tuple[str, int, bool]:
        """RFC 2131 §4.1: where a reply goes. The flag marks a not-yet-ARPable client."""
        if req.giaddr != ZERO_IP:
            return req.giaddr, SERVER_PORT, False
        if mt == MsgType.NAK:
            return BROADCAST, CLIENT_PORT, False
        if req.ciaddr != ZERO_IP:
            return req.ciaddr, CLIENT_PORT, False
        if req.broadcast_flag or yiaddr == ZERO_IP:
            return BROADCAST, CLIENT_PORT, False
        return yiaddr, CLIENT_PORT, True

    def _send(self, req: DhcpPacket, rep: DhcpPacket, mt: MsgType) -> Send:
        host, port, new = self._dest(req, mt, rep.yiaddr)
        return Send(encode(rep, req.max_message_size), host, port, SERVER_PORT, new)

    def _nak(self, req: DhcpPacket, why: str) -> Send:
        rep = self._reply(req, MsgType.NAK, ZERO_IP)
        if req.giaddr != ZERO_IP:
            rep.flags |= FLAG_BROADCAST  # §4.3.2: the relay must broadcast a NAK
        rep.options[Opt.MESSAGE] = why.encode()
        return self._send(req, rep, MsgType.NAK)


def _hostname(pkt: DhcpPacket) -> str | None:
    v = pkt.options.get(Opt.HOSTNAME)
    return v.decode("latin-1")[:253] if v else None
