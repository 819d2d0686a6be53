"""DHCPv6 server logic (RFC 8415), sans-IO: a datagram and the time in, replies and lease changes out.

Like `dhcp_core` for IPv4: `Dhcp6Core.handle()` touches no socket, clock or
store; it asks the injected `decide(Client)` (the one policy seam) what a
machine boots, and returns `Result.upserts`/`deletes` that the shell commits
before it sends `Result.sends`, so a Reply's lease is durable first.

Who the machine is: DHCPv6 has no chaddr, and nodes are registered by MAC.
The MAC is taken, most trusted first, from the relay's client link-layer
address (RFC 6939, option 79), the modified EUI-64 of the client's link-local
source (the interface that asks; the peer address when relayed), else a
DUID-LL or DUID-LLT (one DUID per machine, RFC 8415 §11, so it may name
another NIC). A DUID-UUID (RFC 6355, what iPXE and edk2 send) gives the
machine's SMBIOS UUID, as option 97 does over IPv4. A client with no MAC at
all is not answered (`no-mac`), as over IPv4.

One lease rule: a lease belongs to one IA_NA of one client, the key
`<DUID hex>/<IAID>` (RFC 8415 §12), one address per key.

Boot (RFC 5970): a firmware that says `PXEClient` (edk2's PXE) gets option 59
as `tftp://[server]/file` and no vendor class back (with one, edk2 asks a BINL
server on port 4011), `HTTPClient` (UEFI HTTP boot) the http URL with its
vendor class echoed (edk2's HttpBootDxe takes only an offer that says so),
iPXE (user class "iPXE") the http URL of its script. An operating system's
own client gets an address and nothing to boot.

Advertise carries preference 255, so a client requests at once instead of
collecting Advertises for a second (RFC 8415 §18.2.1); Solicit with Rapid
Commit is answered by a committed Reply.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .dhcp6_codec import (
    CLIENT_PORT,
    ENTERPRISE_UEFI,
    MAX_RELAY_DEPTH,
    SERVER_PORT,
    Dhcp6DecodeError,
    IaNa,
    Message,
    Msg,
    Opt,
    Options,
    RelayMessage,
    Status,
    class_data,
    client_arches,
    decode,
    decode_ia_na,
    duid_mac,
    duid_uuid,
    encode,
    encode_domains,
    encode_ia_na,
    encode_options,
    encode_vendor_class,
    eui64_mac,
    header,
    ia_na_option,
    iaaddr_option,
    linklayer_mac,
    ntop,
    option,
    pton,
    status,
    vendor_class,
)
from .dhcp_core import (
    Answer,
    BootEvent,  # the same boot events as IPv4: one timeline
    LeaseRecord,
)
from .pxe import BootFile, Client

OFFER_HOLD = 60.0  # seconds an advertised address stays held for its client
MAX_OFFERS = 4096  # unbound offers kept at most; the oldest goes first (a Solicit flood holds nothing long)
SCAN_LIMIT = 4096  # addresses looked at per allocation (a /64 range is never searched whole)
DECLINE_HOLD = 3600.0  # seconds a declined address stays out of the pool
SLAAC_KEY = "slaac:"  # a record of the address a machine takes by SLAAC, not a lease the core hands out
_KIND = {int(m): m.name.lower().replace("_", "-") for m in Msg}
_NOTHING: Mapping[str, str] = MappingProxyType({})
_PREFERENCE = option(Opt.PREFERENCE, b"\xff")
_RAPID_COMMIT = option(Opt.RAPID_COMMIT, b"")
_NO_BINDING = option(*status(Status.NO_BINDING))
_NO_ADDRS = option(*status(Status.NO_ADDRS_AVAIL))


@dataclass(frozen=True)
class Dhcp6Settings:
    """What the core needs from the configuration, as plain values."""

    server_ip: str  # the address clients are told (boot URLs)
    server_duid: bytes  # our DUID (option 2)
    range_first: str
    range_last: str
    prefix: str  # the on-link prefix (Confirm; relays' link addresses)
    lease_time: int = 3600
    dns: tuple[str, ...] = ()
    domain: str | None = None
    max_leases: int = 65536  # bound leases at most (a DUID flood cannot grow the table without end)


Decide = Callable[[Client], Answer | None]  # the policy seam, as over IPv4


# One bound lease as the store keeps it: IPv4's record (key "<duid hex>/<iaid>"; client_id, hostname
# and uuid unset), so one lease journal and one `LeaseCommitter` make both families durable.
Lease6Record = LeaseRecord


@dataclass(frozen=True)
class Send6:
    data: bytes
    host: str
    port: int


@dataclass
class Result6:
    kind: str
    outcome: str
    sends: list[Send6] = field(default_factory=list)
    upserts: list[Lease6Record] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    events: list[BootEvent] = field(default_factory=list)
    bound: tuple[str, str] | None = None  # (ip, mac) of a new or renewed lease
    reason: str = ""

    @property
    def needs_commit(self) -> bool:
        return bool(self.upserts or self.deletes)

    @property
    def moved(self) -> Mapping[str, str]:
        """IPv4's conditional binds' inputs (`LeaseChanges`): none here, the core is the one authority."""
        return _NOTHING

    @property
    def owners(self) -> Mapping[str, str]:
        return _NOTHING


@dataclass
class _Lease:
    ip: int
    key: str
    mac: str
    expires: float
    bound: bool


@dataclass(frozen=True)
class _Via:
    """How the message reached us: directly (no relays) or through relays, innermost last."""

    relays: tuple[RelayMessage, ...]
    src: tuple[str, int]


def _ip(n: int) -> str:
    return ntop(n.to_bytes(16, "big"))


def _int(addr: str) -> int:
    return int.from_bytes(pton(addr), "big")


def lease_key(duid: bytes, iaid: int) -> str:
    """`<DUID hex>/<IAID>`: one lease per IA_NA of one client (RFC 8415 §12)."""
    return f"{duid.hex()}/{iaid}"


class Dhcp6Core:
    """The DHCPv6 state machine for one server; see the module notes."""

    def __init__(self, settings: Dhcp6Settings, decide: Decide, leases: Iterable[Lease6Record] = ()):
        self.settings = st = settings
        self.decide = decide
        self.server_ip = st.server_ip
        self.duid = st.server_duid
        self.first = int(ipaddress.IPv6Address(st.range_first))
        self.last = int(ipaddress.IPv6Address(st.range_last))
        if self.last < self.first:
            raise ValueError("range6: the last address is below the first")
        self.prefix = ipaddress.IPv6Network(st.prefix, strict=False)
        self._prefix64 = self.prefix.network_address.packed[:8] if self.prefix.prefixlen == 64 else None
        self._server_int = int(ipaddress.IPv6Address(st.server_ip))
        self.lease_time = st.lease_time
        self.by_ip: dict[int, _Lease] = {}
        self.by_key: dict[str, int] = {}
        self.declined: dict[int, float] = {}
        self._offers: dict[int, None] = {}  # unbound offers, oldest first
        self._bound = 0
        self._cursor = self.first
        for rec in leases:
            if rec.key.startswith(SLAAC_KEY):
                continue
            self._put(_Lease(int(ipaddress.IPv6Address(rec.ip)), rec.key, rec.mac, rec.expires, True))
        # Encoded once: what every reply carries whoever asks.
        self._config = self._config_options()
        self._server_id = option(Opt.SERVERID, self.duid)
        self._boot: dict[BootFile, bytes] = {}  # a boot file's options, encoded (512 at most)

    # -- entry point -----------------------------------------------------------
    def handle(self, data: bytes, src: tuple[str, int], now: float) -> Result6:
        try:
            msg = decode(data)
            relays: list[RelayMessage] = []
            while isinstance(msg, RelayMessage):
                if msg.msg_type != Msg.RELAY_FORW:
                    return Result6("relay-repl", "ignored", reason="not-a-request")
                if len(relays) >= MAX_RELAY_DEPTH:
                    return Result6("relay-forw", "dropped", reason="relay-depth")
                relays.append(msg)
                inner = msg.get(Opt.RELAY_MSG)
                if inner is None:
                    return Result6("relay-forw", "dropped", reason="no-relay-msg")
                msg = decode(inner)
            kind = _KIND.get(msg.msg_type, "other")
            via = _Via(tuple(relays), src)
            return self._client_message(msg, kind, via, now)
        except Dhcp6DecodeError as e:
            return Result6("malformed", "dropped", reason=e.reason)

    def _client_message(self, msg: Message, kind: str, via: _Via, now: float) -> Result6:
        mt = msg.msg_type
        if mt not in (Msg.SOLICIT, Msg.REQUEST, Msg.CONFIRM, Msg.RENEW, Msg.REBIND, Msg.RELEASE, Msg.DECLINE,
                      Msg.INFORMATION_REQUEST):
            return Result6(kind, "ignored", reason="not-a-request")
        duid = msg.get(Opt.CLIENTID)
        sid = msg.get(Opt.SERVERID)
        # RFC 8415 §16: which messages must and must not name a server.
        if duid is None and mt != Msg.INFORMATION_REQUEST:
            return Result6(kind, "ignored", reason="no-client-id")
        if mt in (Msg.SOLICIT, Msg.CONFIRM, Msg.REBIND) and sid is not None:
            return Result6(kind, "ignored", reason="server-id-present")
        if mt in (Msg.REQUEST, Msg.RENEW, Msg.RELEASE, Msg.DECLINE) and sid != self.duid:
            return Result6(kind, "other-server" if sid else "ignored", reason="" if sid else "no-server-id")
        if mt == Msg.INFORMATION_REQUEST and sid is not None and sid != self.duid:
            return Result6(kind, "other-server")
        if via.relays and not self._our_link(via.relays[-1].link_address):
            return Result6(kind, "ignored", reason="foreign-link")
        mac = self._mac(msg, duid or b"", via)
        if mac is None:
            return Result6(kind, "ignored", reason="no-mac")
        client = client_of(msg, mac, duid or b"")
        answer = self.decide(client)
        if answer is None:
            return Result6(kind, "ignored")
        if mt == Msg.SOLICIT:
            return self._solicit(msg, kind, via, client, answer, now)
        if mt in (Msg.REQUEST, Msg.RENEW, Msg.REBIND):
            return self._bind(msg, kind, via, client, answer, now)
        if mt in (Msg.RELEASE, Msg.DECLINE):
            return self._release(msg, kind, via, mac, now)
        if mt == Msg.CONFIRM:
            return self._confirm(msg, kind, via)
        return self._reply(msg, Msg.REPLY, kind, "reply", via, [], client, answer)

    # -- identity -------------------------------------------------------------------
    def _our_link(self, link: str) -> bool:
        """A relay's link address: ours (in the prefix), or unspecified (a link-local-only relay)."""
        a = ipaddress.IPv6Address(link)
        return a.is_unspecified or a in self.prefix

    @staticmethod
    def _mac(msg: Message, duid: bytes, via: _Via) -> str | None:
        if via.relays:
            inner = via.relays[-1]
            ll = inner.get(Opt.CLIENT_LINKLAYER_ADDR)
            found = linklayer_mac(ll) if ll is not None else None
            return found or eui64_mac(inner.peer_address) or duid_mac(duid)
        return eui64_mac(via.src[0]) or duid_mac(duid)

    # -- the exchanges ----------------------------------------------------------------
    def _solicit(self, msg: Message, kind: str, via: _Via, client: Client, answer: Answer, now: float) -> Result6:
        duid = msg.get(Opt.CLIENTID) or b""
        rapid = msg.get(Opt.RAPID_COMMIT) is not None
        ias, upserts, bound = self._assign(msg, duid, client.mac, now, commit=rapid, unknown=answer.node is None)
        mt = Msg.REPLY if rapid else Msg.ADVERTISE
        res = self._reply(msg, mt, kind, "reply" if rapid else "advertise", via, ias, client, answer)
        res.upserts = upserts + self._slaac(client.mac, upserts)
        if bound:
            stage = "dhcp-ack" if rapid else "dhcp-offer"
            res.events.append(BootEvent(client.mac, stage, _detail(bound, client, answer.boot_file)))
            if rapid:
                res.bound = (bound, client.mac)
        elif ias:
            res.outcome = "exhausted"
        return res

    def _bind(self, msg: Message, kind: str, via: _Via, client: Client, answer: Answer, now: float) -> Result6:
        """Request, Renew and Rebind: bind (or extend) each IA_NA; Renew of an unknown IA gets NoBinding."""
        duid = msg.get(Opt.CLIENTID) or b""
        ias, upserts, bound = self._assign(msg, duid, client.mac, now, commit=True, unknown=answer.node is None,
                                           renew=msg.msg_type == Msg.RENEW)
        res = self._reply(msg, Msg.REPLY, kind, "reply", via, ias, client, answer)
        res.upserts = upserts + self._slaac(client.mac, upserts)
        if bound:
            res.events.append(BootEvent(client.mac, "dhcp-ack", _detail(bound, client, answer.boot_file)))
            res.bound = (bound, client.mac)
        return res

    def _slaac(self, mac: str, upserts: list[Lease6Record]) -> list[Lease6Record]:
        """The address the machine's own OS takes by SLAAC in a /64 (the prefix and the EUI-64 of
        its MAC, RFC 4862 and RFC 4291 appendix A), recorded with its lease and expiring with it:
        ramboot's initramfs has no DHCPv6 client (busybox's udhcpc6 is not built in Debian) and
        comes back from that address, which the access rule and the timeline must know."""
        if not upserts or self._prefix64 is None:
            return []
        m = bytes.fromhex(mac.replace(":", ""))
        iid = bytes((m[0] ^ 2,)) + m[1:3] + b"\xff\xfe" + m[3:6]
        addr = ntop(self._prefix64 + iid)
        return [Lease6Record(SLAAC_KEY + mac, addr, mac, max(u.expires for u in upserts))]

    def _release(self, msg: Message, kind: str, via: _Via, mac: str, now: float) -> Result6:
        duid = msg.get(Opt.CLIENTID) or b""
        deletes: list[str] = []
        ias: list[tuple[int, bytes]] = []
        for raw in msg.all(Opt.IA_NA):
            ia = decode_ia_na(raw)
            key = lease_key(duid, ia.iaid)
            held = self.by_ip.get(self.by_key.get(key, -1))
            if held is None or held.key != key or not held.bound:
                ias.append((Opt.IA_NA, encode_ia_na(IaNa(ia.iaid, 0, 0, [status(Status.NO_BINDING)]))))
                continue
            if any(_int(a.addr) == held.ip for a in ia.addresses()):
                self._remove(held)
                deletes.append(_ip(held.ip))
                if msg.msg_type == Msg.DECLINE:
                    self.declined[held.ip] = now + DECLINE_HOLD
        rep = Message(Msg.REPLY, msg.txid, [(Opt.CLIENTID, duid), (Opt.SERVERID, self.duid),
                                              status(Status.SUCCESS), *ias])
        outcome = "declined" if msg.msg_type == Msg.DECLINE else "released"
        return Result6(kind, outcome if deletes else "no-binding", [self._send(encode(rep), via)], deletes=deletes)

    def _confirm(self, msg: Message, kind: str, via: _Via) -> Result6:
        """RFC 8415 §18.3.3: are the client's addresses on this link? No addresses: no reply."""
        addrs = [a for raw in msg.all(Opt.IA_NA) for a in decode_ia_na(raw).addresses()]
        if not addrs:
            return Result6(kind, "ignored", reason="no-addresses")
        on_link = all(ipaddress.IPv6Address(a.addr) in self.prefix for a in addrs)
        code = Status.SUCCESS if on_link else Status.NOT_ON_LINK
        rep = Message(Msg.REPLY, msg.txid, [(Opt.CLIENTID, msg.get(Opt.CLIENTID) or b""), (Opt.SERVERID, self.duid),
                                              status(code)])
        return Result6(kind, "reply" if on_link else "not-on-link", [self._send(encode(rep), via)])

    # -- addresses ----------------------------------------------------------------------
    def _assign(self, msg: Message, duid: bytes, mac: str, now: float, *, commit: bool, unknown: bool,
                renew: bool = False) -> tuple[list[bytes], list[Lease6Record], str | None]:
        """One address per IA_NA of the message: the IA options to answer with, the leases to commit,
        and the first address handed out (for the event)."""
        ias: list[bytes] = []
        upserts: list[Lease6Record] = []
        first: str | None = None
        t1, t2, valid = self.lease_time // 2, self.lease_time * 4 // 5, self.lease_time
        for raw in msg.all(Opt.IA_NA):
            ia = decode_ia_na(raw)
            key = lease_key(duid, ia.iaid)
            held = self.by_ip.get(self.by_key.get(key, -1))
            has = held is not None and held.key == key and held.bound and held.expires > now
            if renew and not has:
                ias.append(ia_na_option(ia.iaid, 0, 0, _NO_BINDING))
                continue
            hints = [_int(a.addr) for a in ia.addresses()]
            ip = self._allocate(key, hints, now, commit and unknown)
            if ip is None:
                ias.append(ia_na_option(ia.iaid, 0, 0, _NO_ADDRS))
                continue
            expires = now + (valid if commit else OFFER_HOLD)
            self._put(_Lease(ip, key, mac, expires, commit))
            packed = ip.to_bytes(16, "big")
            addr = ntop(packed)
            inner = iaaddr_option(packed, valid, valid)
            # Addresses the client asked for and does not get: lifetimes 0, so it drops them (§18.3.4).
            for h in hints:
                if h != ip:
                    inner += iaaddr_option(h.to_bytes(16, "big"), 0, 0)
            ias.append(ia_na_option(ia.iaid, t1, t2, inner))
            if commit:
                upserts.append(Lease6Record(key, addr, mac, expires))
            first = first or addr
        return ias, upserts, first

    def _usable(self, ip: int, key: str, now: float) -> bool:
        if not self.first <= ip <= self.last or ip == self._server_int:
            return False
        if self.declined.get(ip, 0) > now:
            return False
        lease = self.by_ip.get(ip)
        return lease is None or lease.key == key or lease.expires <= now

    def _allocate(self, key: str, hints: list[int], now: float, capped: bool) -> int | None:
        """This key's address, else the client's hint, else the next free one (a bounded scan)."""
        mine = self.by_key.get(key)
        if mine is not None and self._usable(mine, key, now):
            return mine
        if capped and self._bound >= self.settings.max_leases:
            return None
        for h in hints:
            if self._usable(h, key, now):
                return h
        size = self.last - self.first + 1
        cur = self._cursor
        for _ in range(min(size, SCAN_LIMIT)):
            ip = cur
            cur = self.first if cur >= self.last else cur + 1
            if self._usable(ip, key, now):
                self._cursor = cur
                return ip
        return self._reclaim_offer()

    def _reclaim_offer(self) -> int | None:
        while self._offers:
            ip = next(iter(self._offers))
            del self._offers[ip]
            lease = self.by_ip.get(ip)
            if lease is not None and not lease.bound:
                self._remove(lease)
                return ip
        return None

    def _put(self, lease: _Lease) -> None:
        old = self.by_key.get(lease.key)
        if old is not None and old != lease.ip:
            prev = self.by_ip.get(old)
            if prev is not None and prev.key == lease.key:
                self._remove(prev)
        prev = self.by_ip.get(lease.ip)
        if prev is not None:
            self._remove(prev)
        self.by_ip[lease.ip] = lease
        self.by_key[lease.key] = lease.ip
        if lease.bound:
            self._bound += 1
        else:
            self._offers[lease.ip] = None
            if len(self._offers) > MAX_OFFERS:
                self._reclaim_offer()

    def _remove(self, lease: _Lease) -> None:
        if self.by_ip.get(lease.ip) is lease:
            del self.by_ip[lease.ip]
            if lease.bound:
                self._bound -= 1
        self._offers.pop(lease.ip, None)
        if self.by_key.get(lease.key) == lease.ip:
            del self.by_key[lease.key]

    # -- replies --------------------------------------------------------------------------
    def _config_options(self) -> bytes:
        st = self.settings
        out: Options = []
        if st.dns:
            out.append((Opt.DNS_SERVERS, b"".join(ipaddress.IPv6Address(a).packed for a in st.dns)))
        if st.domain:
            out.append((Opt.DOMAIN_LIST, encode_domains([st.domain])))
        return encode_options(out)

    def _reply(self, msg: Message, mt: Msg, kind: str, outcome: str, via: _Via, ias: list[bytes],
               client: Client, answer: Answer) -> Result6:
        """The reply as bytes: the client's id, then the options encoded once (ours, the preference or
        rapid commit, the configuration, the boot options per distinct boot file)."""
        parts = [header(mt, msg.txid)]
        duid = msg.get(Opt.CLIENTID)
        if duid is not None:
            parts.append(option(Opt.CLIENTID, duid))
        parts.append(self._server_id)
        parts += ias
        if mt == Msg.ADVERTISE:
            parts.append(_PREFERENCE)
        if mt == Msg.REPLY and msg.msg_type == Msg.SOLICIT:
            parts.append(_RAPID_COMMIT)
        parts.append(self._config)
        if client.is_pxe:
            bf = answer.boot_file
            boot = self._boot.get(bf)
            if boot is None:
                if len(self._boot) >= 512:
                    self._boot.clear()
                boot = self._boot[bf] = encode_options(self._boot_options(bf))
            parts.append(boot)
        return Result6(kind, outcome, [self._send(b"".join(parts), via)])

    def _boot_options(self, bf: BootFile) -> Options:
        """RFC 5970 option 59 (and the vendor class the firmware looks for), for boot firmware only."""
        if bf.http or bf.filename.startswith("http"):
            url = bf.filename
        else:
            url = f"tftp://[{self.server_ip}]/{bf.filename}"
        out: Options = [(Opt.BOOTFILE_URL, url.encode())]
        if bf.http:
            # edk2's HttpBootDxe takes only an offer that says HTTPClient. Never PXEClient: edk2's
            # PXE reads an offer with it as a BINL offer and asks again on port 4011
            # (PxeBcParseDhcp6Packet, PxeBcRetryDhcp6Binl); without it, the offer is "DHCP only
            # with a boot file URL" and boots that URL.
            out.append((Opt.VENDOR_CLASS, encode_vendor_class(ENTERPRISE_UEFI, b"HTTPClient")))
        return out

    def _send(self, data: bytes, via: _Via) -> Send6:
        """The encoded reply directly to the client's port 546, or wrapped back through each relay
        (RFC 8415 §19.3), echoing its interface-id, to the outermost relay's port 547."""
        if not via.relays:
            return Send6(data, via.src[0], via.src[1] or CLIENT_PORT)
        for relay in reversed(via.relays):
            opts: Options = []
            iid = relay.get(Opt.INTERFACE_ID)
            if iid is not None:
                opts.append((Opt.INTERFACE_ID, iid))
            opts.append((Opt.RELAY_MSG, data))
            data = encode(RelayMessage(Msg.RELAY_REPL, relay.hop_count, relay.link_address, relay.peer_address, opts))
        return Send6(data, via.src[0], via.src[1] or SERVER_PORT)


def client_of(msg: Message, mac: str, duid: bytes) -> Client:
    """The client as the policy sees it, from RFC 5970's options (the same `Client` as over IPv4)."""
    arch = msg.get(Opt.CLIENT_ARCH_TYPE)
    arches = client_arches(arch) if arch else []
    vclass = ""
    for raw in msg.all(Opt.VENDOR_CLASS):
        try:
            _, items = vendor_class(raw)
        except Dhcp6DecodeError:
            continue
        if items:
            vclass = items[0].decode("latin-1")
            break
    users = [u for raw in msg.all(Opt.USER_CLASS) for u in class_data(raw)]
    ipxe = b"iPXE" in users
    return Client(mac=mac, arch=arches[0] if arches else None, vendor_class=vclass,
                  user_class="iPXE" if ipxe else (users[0].decode("latin-1") if users else ""),
                  uuid=duid_uuid(duid), ipxe=ipxe)


def _detail(ip: str, client: Client, bf: BootFile) -> dict[str, object]:
    if not client.is_pxe:
        return {"ip": ip, "firmware": "os", "family": 6}
    return {"ip": ip, "bootfile": bf.filename, "firmware": client.firmware.value, "family": 6}


def server_duid(mac: bytes) -> bytes:
    """Our DUID-LL (RFC 8415 §11.4): stable across restarts without a file, as long as the NIC stays."""
    return struct.pack("!HH", 3, 1) + mac
