"""A minimal IPv6 Router Advertisement responder, so iPXE stops waiting for IPv6.

iPXE's `ifconf` ("Configuring (net0 ...)") waits for *every* configurator to
finish, DHCPv4 and IPv6 alike. On a network with no IPv6 router, its router
solicitations back off (0.25, 0.5, 1, 2, 4, 8 s) and only time out about 16 s
later, even though DHCPv4 finished within milliseconds. Measured in the lab:
ACK at 2.8 s, "Configuring ... ok" at 19 s.

iPXE ends IPv6 autoconfiguration at the first solicited RA whose M and O flags
are clear (src/net/ndp.c, `ipv6conf_rx_router_advertisement`). So we answer
Router Solicitations on the provisioning interface with the smallest RA that
says nothing: router lifetime 0 (not a default router), no prefix, M=O=0, no
DNS. A host receiving it changes nothing.

Two ways of answering, chosen by the DHCP mode (no switch to set; see
docs/decisions.md, "Answering router solicitations in proxy mode"):
- full mode, where ramboot owns the provisioning network: every solicitation
  gets the bare RA, multicast to all nodes;
- proxy mode (guarded), beside a site DHCP server on a network ramboot does
  not own: only a solicitation from a machine that asked ramboot for PXE boot
  information in the last `PXE_RECENT` seconds (its MAC, from the source
  link-layer option or the EUI-64 link-local source) is answered, by unicast
  to that machine only, and never while a real router is advertising on the
  link (any RA not ours seen in the last `ROUTER_QUIET` seconds): then that
  router's own answer ends iPXE's wait and carries the prefixes it should use.
  `network.answer_router_solicitations = false` turns both off; `true` answers
  every solicitation in any mode.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..netif import interface_mac

if TYPE_CHECKING:
    from ..config import Config
    from ..inventory.records import EventRecord
    from .events import EventLog

log = logging.getLogger("ramboot.ra")

ICMPV6_RS = 133
ICMPV6_RA = 134
ALL_NODES = "ff02::1"
ALL_ROUTERS = "ff02::2"
IPV6_JOIN_GROUP = getattr(socket, "IPV6_JOIN_GROUP", 20)
ICMP6_FILTER = 1
OPT_SOURCE_LL = 1
OPT_PREFIX_INFO = 3
RA_MANAGED = 0x80  # the M flag: addresses from DHCPv6
PREFIX_ON_LINK = 0x80  # the L flag
PREFIX_AUTONOMOUS = 0x40  # the A flag: SLAAC
PREFIX_VALID, PREFIX_PREFERRED = 86400, 14400  # seconds
PXE_RECENT = 120.0  # seconds a PXE request to ramboot lets its MAC's solicitations be answered (proxy mode)
RS_PENDING = 10.0  # seconds an unanswered solicitation waits for its MAC's PXE request (they are sent together)
ROUTER_QUIET = 3600.0  # seconds after another router's RA during which proxy mode stays silent
# The stages that mean "this MAC is PXE-booting through ramboot right now".
PXE_STAGES = frozenset({"proxy-offer", "dhcp-offer", "dhcp-ack"})


def router_advertisement(mac: bytes | None, prefix: ipaddress.IPv6Network | None = None,
                         router_lifetime: int = 0) -> bytes:
    """RA: hop limit 64, router lifetime 0 unless asked, no timers; source link-layer option if known.

    With `prefix` (DHCPv6 full mode, RFC 4861 §4.2 and §4.6.2): the M flag (firmware and
    iPXE take their address from DHCPv6) and the prefix as on-link (L) and for SLAAC (A): an
    initramfs with no DHCPv6 client configures itself from the RA alone (dhcp6_core._slaac)."""
    flags = RA_MANAGED if prefix is not None else 0
    body = struct.pack("!BBHBBHII", ICMPV6_RA, 0, 0, 64, flags, router_lifetime, 0, 0)
    if mac and len(mac) == 6:
        body += struct.pack("!BB6s", 1, 1, mac)
    if prefix is not None:
        body += struct.pack("!BBBBIII16s", OPT_PREFIX_INFO, 4, prefix.prefixlen, PREFIX_ON_LINK | PREFIX_AUTONOMOUS,
                            PREFIX_VALID, PREFIX_PREFERRED, 0, prefix.network_address.packed)
    return body  # the kernel fills the checksum of raw ICMPv6 sockets


def source_mac(data: bytes, src: str) -> str | None:
    """The sender's MAC ("aa:bb:..."): the source link-layer option of an RS or RA, else
    the EUI-64 interface identifier of a link-local source (iPXE's own), else None."""
    hdr = 8 if data[:1] == bytes((ICMPV6_RS,)) else 16
    i = hdr
    while i + 2 <= len(data):
        typ, n = data[i], data[i + 1] * 8
        if n == 0 or i + n > len(data):
            break
        if typ == OPT_SOURCE_LL and n >= 8:
            return data[i + 2:i + 8].hex(":")
        i += n
    try:
        a = socket.inet_pton(socket.AF_INET6, src.split("%")[0])
    except OSError:
        return None
    if a[:8] != bytes.fromhex("fe80000000000000") or a[11:13] != b"\xff\xfe":
        return None
    return (bytes((a[8] ^ 2,)) + a[9:11] + a[13:16]).hex(":")


class RaGuard:
    """Whom to answer, and how: pure bookkeeping, time passed in.

    `guarded` (proxy mode): answer only recent PXE clients, by unicast, and never
    while another router advertises. Unguarded: answer everyone by multicast.
    """

    def __init__(self, guarded: bool, own_mac: str | None = None):
        self.guarded = guarded
        self.own_mac = own_mac
        self.pxe: dict[str, float] = {}  # MAC -> when it last asked ramboot for PXE boot information
        self.router_seen = -ROUTER_QUIET  # when an RA that is not ours was last seen
        self.pending: dict[str, tuple[str, float]] = {}  # MAC -> (link-local source, when) of a silent RS

    def pxe_client(self, mac: str, now: float) -> str | None:
        """`mac` asked us for PXE boot information. Returns where to answer a solicitation it
        sent just before (iPXE sends its first RS with its DISCOVER), or None."""
        self.pxe[mac] = now
        if len(self.pxe) > 8192:  # a storm: forget the stale ones
            self.pxe = {m: t for m, t in self.pxe.items() if now - t < PXE_RECENT}
        waiting = self.pending.pop(mac, None)
        if waiting is None or now - waiting[1] >= RS_PENDING:
            return None
        return self.answer(mac, waiting[0], now)

    def advertisement(self, mac: str | None, now: float) -> None:
        """Another RA was seen on the link (ours never counts)."""
        if mac is None or mac != self.own_mac:
            self.router_seen = now

    def answer(self, mac: str | None, src: str, now: float) -> str | None:
        """Where to send the bare RA for this solicitation (an address), or None: stay silent."""
        if not self.guarded:
            return ALL_NODES
        if now - self.router_seen < ROUTER_QUIET:
            return None  # a real router is here: its answer is the one to have
        if src.startswith("::") or not src.lower().startswith("fe80"):
            return None  # no link-local source to unicast to
        if mac is None:
            return None
        if now - self.pxe.get(mac, -PXE_RECENT) >= PXE_RECENT:
            # not (yet) a machine booting through us: kept a moment for its DISCOVER
            if len(self.pending) > 1024:
                self.pending = {m: w for m, w in self.pending.items() if now - w[1] < RS_PENDING}
            if len(self.pending) <= 1024:
                self.pending[mac] = (src, now)
            return None
        return src


class RaServer:
    def __init__(self, ifname: str, guarded: bool = False, prefix: ipaddress.IPv6Network | None = None,
                 router_lifetime: int = 0):
        self.ifname = ifname
        self.ifindex = socket.if_nametoindex(ifname)
        self.loop = asyncio.get_running_loop()
        mac = interface_mac(ifname)
        self.guard = RaGuard(guarded, mac.hex(":") if mac else None)
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            # ICMP6_FILTER: block every type but Router Solicitation, and Router
            # Advertisement when guarded (to see other routers); a bit set = blocked
            bits = bytearray(b"\xff" * 32)
            for t in (ICMPV6_RS, ICMPV6_RA) if guarded else (ICMPV6_RS,):
                bits[t >> 3] &= ~(1 << (t & 7)) & 0xFF
            s.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, bytes(bits))
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_JOIN_GROUP,
                         socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("@I", self.ifindex))
            if guarded:  # unsolicited RAs of other routers go to all nodes
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_JOIN_GROUP,
                             socket.inet_pton(socket.AF_INET6, ALL_NODES) + struct.pack("@I", self.ifindex))
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        self.sock = s
        self.ra = router_advertisement(mac, prefix, router_lifetime)
        self.loop.add_reader(s.fileno(), self._readable)
        if prefix is not None:
            self._send(ALL_NODES)  # one unsolicited RA at start: hosts already up learn the prefix

    def on_event(self, rec: EventRecord) -> None:
        """An EventLog watcher: a PXE stage for a MAC marks it as booting through us."""
        if rec.stage in PXE_STAGES:
            dest = self.guard.pxe_client(rec.mac, time.monotonic())
            if dest is not None:  # it solicited just before asking us: answer now, not at its next RS
                self._send(dest)

    def _readable(self) -> None:
        for _ in range(64):
            try:
                data, src = self.sock.recvfrom(1500)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("ra: receive failed: %s", e)
                return
            if len(data) < 8 or data[1] != 0:
                continue
            now = time.monotonic()
            if data[0] == ICMPV6_RA:
                if len(data) >= 16:
                    self.guard.advertisement(source_mac(data, src[0]), now)
                continue
            if data[0] != ICMPV6_RS:
                continue
            dest = self.guard.answer(source_mac(data, src[0]), src[0], now)
            if dest is not None:
                self._send(dest)

    def _send(self, dest: str) -> None:
        try:
            self.sock.sendto(self.ra, (dest.split("%")[0], 0, 0, self.ifindex))
        except OSError as e:
            log.debug("ra: send to %s failed: %s", dest, e)

    async def close(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
        try:
            self.loop.remove_reader(self.sock.fileno())
        except (ValueError, RuntimeError):
            pass
        self.sock.close()

    _unwatch: Callable[[], None] | None = None


async def start_ra(config: Config, events: EventLog | None = None) -> RaServer | None:
    """Answer router solicitations on the DHCP interface (see the module notes); None if not.

    `events` (the EventLog) tells a guarded responder which MACs are PXE-booting through us.
    """
    wanted = config.network.answer_router_solicitations
    full6 = config.dhcp6.mode == "full"
    if not full6 and (wanted is False or (config.dhcp.mode == "off" and wanted == "auto")):
        return None
    # DHCPv6 full mode: ramboot owns the IPv6 side of the network, every client gets the prefix.
    guarded = not full6 and wanted == "auto" and config.dhcp.mode == "proxy"
    try:
        r = RaServer(config.network.interface, guarded=guarded, prefix=config.dhcp6.prefix if full6 else None,
                     router_lifetime=config.dhcp6.router_lifetime if full6 else 0)
    except OSError as e:  # no IPv6 on this host or interface: iPXE only waits longer
        log.info("ra: not answering IPv6 router solicitations on %s: %s", config.network.interface, e)
        return None
    if events is not None and guarded:  # full mode needs no watcher on the DHCP hot path
        r._unwatch = events.watch(r.on_event)
    how = ("PXE clients of ours only, by unicast, while no other router advertises" if guarded
           else "everyone")
    what = (f"prefix {config.dhcp6.prefix}, M flag, lifetime {config.dhcp6.router_lifetime}" if full6
            else "no prefix, lifetime 0")
    log.info("ra: answering IPv6 router solicitations on %s (%s; %s)", config.network.interface, what, how)
    return r
