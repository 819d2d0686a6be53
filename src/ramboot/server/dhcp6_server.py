"""The DHCPv6 server's asyncio shell: one socket on port 547, the commit, events and metrics.

All decisions live in `ramboot.proto.dhcp6_core` and the policy it is handed
(`Booter.decide` for the server's IPv6 address, over the DHCP server's node
snapshot). This module only moves bytes:
- a UDP socket on [::]:547, bound to the interface, in the
  All_DHCP_Relay_Agents_and_Servers group (ff02::1:2) there;
- a Reply whose result changes leases leaves only once `LeaseCommitter.commit()`
  says its change is durable: the component IPv4 uses, over the `leases6`
  table (alone on SQLite, a burst's leases are one append to their journal);
- a request that waited more than `STALE_AFTER` in the receive queue is
  dropped unanswered, as over IPv4 (its client has sent it again);
- any exception for one datagram is logged and the datagram dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import struct
import time
import uuid
from typing import Any

from .. import metrics
from ..config import Config
from ..inventory.lease_commit import LeaseCommitter
from ..inventory.parts.leases import LeaseCommit
from ..inventory.store import Store
from ..netif import interface_mac
from ..policy import Booter
from ..proto.dhcp6_codec import ALL_SERVERS, SERVER_PORT
from ..proto.dhcp6_core import Dhcp6Core, Dhcp6Settings, Result6, server_duid
from .dhcp_server import _ANC_SPACE, NODES_TTL, RCVBUF, SO_TIMESTAMP, STALE_AFTER, _NodeSnapshot, ancillary
from .events import EventLog

log = logging.getLogger("ramboot.dhcp6")
_LINK_LOCAL = ("fe8", "fe9", "fea", "feb")  # fe80::/10 as inet_ntop writes it (not `ipaddress`: per reply)


def dhcp6_settings(config: Config, server_ip: str, duid: bytes) -> Dhcp6Settings:
    d = config.dhcp6
    first, last = d.range_bounds()
    assert d.prefix is not None  # the config's validator: full mode has a prefix
    return Dhcp6Settings(server_ip=server_ip, server_duid=duid, range_first=str(first), range_last=str(last),
                         prefix=str(d.prefix), lease_time=d.lease_time, dns=tuple(str(a) for a in d.dns),
                         domain=d.domain)


def our_duid(interface: str) -> bytes:
    """DUID-LL of the interface's MAC; without one, a DUID-UUID from the interface's name and the
    host's (stable across restarts either way, so clients renew with the same server)."""
    mac = interface_mac(interface)
    if mac and len(mac) == 6 and any(mac):
        return server_duid(mac)
    return struct.pack("!H", 4) + uuid.uuid5(uuid.NAMESPACE_DNS, f"{interface}.{socket.gethostname()}").bytes


class Dhcp6Server:
    """The running DHCPv6 server; `close()` stops it (every Reply sent was committed first)."""

    def __init__(self, config: Config, booter: Booter, store: Store, events: EventLog, server_ip: str, port: int):
        self.config = config
        self.events = events
        self.interface = config.network.interface
        self.nodes = _NodeSnapshot(store.nodes, store.profiles)
        self.booter = booter.using(self.nodes, manifest_ttl=NODES_TTL, server_ip=server_ip)
        self.leases = LeaseCommitter(store.leases.v6, sender=server_ip)
        self.core = Dhcp6Core(dhcp6_settings(config, server_ip, our_duid(self.interface)), self.booter.decide,
                              leases=store.leases.v6.load())
        self.ifindex = socket.if_nametoindex(self.interface)
        self._loop = asyncio.get_running_loop()
        self._counters: dict[tuple[str, str], Any] = {}
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)  # when each datagram arrived (STALE_AFTER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                         socket.inet_pton(socket.AF_INET6, ALL_SERVERS) + struct.pack("@I", self.ifindex))
            s.bind(("::", port))
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        self.sock = s
        self.port = s.getsockname()[1]
        self._loop.add_reader(s.fileno(), self._readable)

    def _count(self, kind: str, outcome: str) -> None:
        """metrics.DHCP_PACKETS["v6-" + kind, outcome] += 1, with the labelled child looked up once."""
        c = self._counters.get((kind, outcome))
        if c is None:
            c = self._counters[(kind, outcome)] = metrics.DHCP_PACKETS.labels("v6-" + kind, outcome)
        c.inc()

    def _readable(self) -> None:
        recvmsg, handle, now = self.sock.recvmsg, self.core.handle, time.time
        for _ in range(64):  # drain a burst, then let the loop breathe (and the commit run)
            try:
                data, anc, _flags, src = recvmsg(4096, _ANC_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("dhcp6: receive failed: %s", e)
                return
            t = now()
            arrived = ancillary(anc)[2]
            if arrived and t - arrived > STALE_AFTER:
                self._count("stale", "dropped")
                metrics.dropped("dhcp6", "stale")
                continue
            host = src[0]
            try:
                res = handle(data, (host.split("%")[0] if "%" in host else host, src[1]), t)
            except Exception:  # a hostile packet never stops the server
                log.exception("dhcp6: dropped a datagram from %s that broke the handler", host)
                metrics.dropped("dhcp6", "handler-error")
                continue
            self._count(res.kind, res.outcome)
            if res.outcome in ("dropped", "ignored"):
                metrics.dropped("dhcp6", res.reason or res.outcome)
            if res.needs_commit:  # the Reply leaves once its lease change is durable
                self.leases.commit(res).add_done_callback(functools.partial(self._durable, res))
            else:
                self._emit(res)

    def _durable(self, res: Result6, fut: asyncio.Future[LeaseCommit]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # not durable: no Reply (the committer logged it); the client retransmits
        self._emit(res)

    def _emit(self, res: Result6) -> None:
        for s in res.sends:
            scope = self.ifindex if s.host.startswith(_LINK_LOCAL) else 0
            try:
                self.sock.sendto(s.data, (s.host, s.port, 0, scope))
            except OSError as e:
                log.warning("dhcp6: send to [%s]:%d failed: %s", s.host, s.port, e)
        for ev in res.events:
            self.events.add(ev.mac, ev.stage, ev.detail)
        for rec in res.upserts:  # the leased address and the SLAAC one: TFTP and HTTP name the machine by both
            self.events.bind(rec.ip, rec.mac, lease=True)

    async def close(self) -> None:
        try:
            self._loop.remove_reader(self.sock.fileno())  # no new work; finish what is pending
        except (ValueError, RuntimeError):
            pass
        await self.leases.close()  # anything left: made durable, then answered
        self.sock.close()


async def start_dhcp6(config: Config, booter: Booter, store: Store, events: EventLog, server_ip: str,
                      *, port: int = SERVER_PORT) -> Dhcp6Server:
    """Answer DHCPv6 on the configured interface (full mode); `port` exists for tests."""
    svc = Dhcp6Server(config, booter, store, events, server_ip, port)
    log.info("dhcp6: full mode on %s, port %d, range %s", svc.interface, svc.port, config.dhcp6.range6)
    return svc
