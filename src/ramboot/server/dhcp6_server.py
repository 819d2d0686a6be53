"""The DHCPv6 server's asyncio shell: one socket on port 547, the commit, events and metrics.

All decisions live in `ramboot.proto.dhcp6_core` and the policy it is handed
(`Booter.decide` for the server's IPv6 address, over the DHCP server's node
snapshot). This module only moves bytes:
- a UDP socket on [::]:547, bound to the interface, in the
  All_DHCP_Relay_Agents_and_Servers group (ff02::1:2) there;
- the datagrams of one burst are handled, their lease changes committed in
  one transaction, and only then are their replies sent: a Reply's lease is
  durable before it leaves;
- any exception for one datagram is logged and the datagram dropped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import time
import uuid

from .. import metrics
from ..config import Config
from ..inventory.store import Store
from ..netif import interface_mac
from ..policy import Booter
from ..proto.dhcp6_codec import ALL_SERVERS, SERVER_PORT
from ..proto.dhcp6_core import Dhcp6Core, Dhcp6Settings, Result6, server_duid
from .dhcp_server import NODES_TTL, RCVBUF, _NodeSnapshot
from .events import EventLog

log = logging.getLogger("ramboot.dhcp6")


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
        self.store = store
        self.events = events
        self.interface = config.network.interface
        self.nodes = _NodeSnapshot(store.nodes, store.profiles)
        self.booter = booter.using(self.nodes, manifest_ttl=NODES_TTL, server_ip=server_ip)
        self.core = Dhcp6Core(dhcp6_settings(config, server_ip, our_duid(self.interface)), self.booter.decide,
                              leases=store.leases.load6())
        self.ifindex = socket.if_nametoindex(self.interface)
        self._loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
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

    def _readable(self) -> None:
        batch: list[Result6] = []
        for _ in range(64):  # a burst, then one commit
            try:
                data, src = self.sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                log.warning("dhcp6: receive failed: %s", e)
                break
            try:
                res = self.core.handle(data, (src[0].split("%")[0], src[1]), time.time())
            except Exception:  # a hostile packet never stops the server
                log.exception("dhcp6: dropped a datagram from %s that broke the handler", src[0])
                metrics.dropped("dhcp6", "handler-error")
                continue
            metrics.DHCP_PACKETS.labels("v6-" + res.kind, res.outcome).inc()
            if res.outcome in ("dropped", "ignored"):
                metrics.dropped("dhcp6", res.reason or res.outcome)
            batch.append(res)
        if not batch:
            return
        upserts = [u for r in batch for u in r.upserts]
        deletes = [d for r in batch for d in r.deletes]
        if upserts or deletes:
            try:
                self.store.leases.save6(upserts, deletes)
            except Exception:
                # Without the commit, no Reply: the clients retransmit and we answer again.
                log.exception("dhcp6: lease commit failed; %d replies withheld", len(batch))
                metrics.dropped("dhcp6", "commit-failed", len(batch))
                return
        for res in batch:
            self._emit(res)

    def _emit(self, res: Result6) -> None:
        for s in res.sends:
            scope = self.ifindex if ipaddress.IPv6Address(s.host).is_link_local else 0
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
            self._loop.remove_reader(self.sock.fileno())
        except (ValueError, RuntimeError):
            pass
        self.sock.close()


async def start_dhcp6(config: Config, booter: Booter, store: Store, events: EventLog, server_ip: str,
                      *, port: int = SERVER_PORT) -> Dhcp6Server:
    """Answer DHCPv6 on the configured interface (full mode); `port` exists for tests."""
    svc = Dhcp6Server(config, booter, store, events, server_ip, port)
    log.info("dhcp6: full mode on %s, port %d, range %s", svc.interface, svc.port, config.dhcp6.range6)
    return svc
