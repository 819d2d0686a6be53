"""The DHCP server's asyncio shell: sockets, the node cache, events and metrics.

All decisions live in `ramboot.proto.dhcp_core` and the policy it is handed
(`Booter.decide`, over a snapshot of the nodes); how a lease becomes durable
is `inventory.lease_commit`. This module moves bytes:
- UDP sockets on port 67 (and 4011 in proxy mode), bound to the configured
  interface (SO_BINDTODEVICE), with SO_BROADCAST; `recvmsg` + IP_PKTINFO tells
  which interface a request came in on, and replies leave by that interface.
- Replies that RFC 2131 §4.1 would unicast to a client that has no address yet
  (no ARP entry, broadcast flag clear) are broadcast instead: adding ARP
  entries needs privileges and a per-packet netlink call; every client accepts
  a broadcast reply, so it is the robust choice.
- A reply whose result changes leases leaves only once `LeaseCommitter.commit()`
  says its change is durable (group commit, the journal, the conditional binds
  of several servers are all there); a bind the database refused becomes a NAK.
- Any exception for one datagram is logged and the datagram dropped.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import struct
import time
import zlib
from typing import Any

from .. import metrics
from ..config import Config
from ..inventory.lease_commit import LeaseCommitter
from ..inventory.parts.leases import LeaseCommit
from ..inventory.ports import NodeReader, ProfileReader
from ..inventory.records import NodeSpec, ProfileSpec
from ..inventory.store import Store
from ..netif import interface_netmask
from ..policy import Booter
from ..proto.dhcp_core import (
    BROADCAST,
    PXE_PORT,
    SERVER_PORT,
    DhcpCore,
    DhcpSettings,
    Result,
    SubnetSettings,
)
from .cluster import Cluster
from .events import EventLog

log = logging.getLogger("ramboot.dhcp")

IP_PKTINFO = 8  # <linux/in.h>; Python 3.11's socket module lacks the constant
_PKTINFO = struct.Struct("I4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
SO_TIMESTAMP = 29  # <asm-generic/socket.h>; also the SCM type of its control message; not in Python 3.11
_TIMEVAL = struct.Struct("@qq")  # struct timeval: seconds, microseconds
_ANC_SPACE = socket.CMSG_SPACE(_PKTINFO.size) + socket.CMSG_SPACE(_TIMEVAL.size)
# A request that waited longer than this in the receive queue is dropped unanswered: its
# client has already sent it again (iPXE after 1 s, PXE ROMs after 4 s), and answering
# a stale copy under overload only delays the fresh ones behind it (which is how a
# server busy past its share of the CPU collapses instead of shedding load).
STALE_AFTER = 1.0
RCVBUF = 4 << 20
NODES_TTL = 2.0  # seconds a snapshot of the nodes table serves lookups before it is re-read


class _NodeSnapshot:
    """The store's node lookups, answered from one `list_nodes()` read every NODES_TTL seconds.

    Two ORM lookups per packet cost milliseconds; a snapshot costs one query
    per TTL, so the hot path has no database read. A node added or changed is
    seen within NODES_TTL seconds.
    """

    def __init__(self, nodes: NodeReader, profiles: ProfileReader):
        self._nodes, self._profiles_of = nodes, profiles
        self._at = -NODES_TTL
        self._by_mac: dict[str, NodeSpec] = {}
        self._by_uuid: dict[str, NodeSpec] = {}
        self._profiles: dict[str, ProfileSpec] = {}
        self.reserved: dict[str, str] = {}

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._at < NODES_TTL:
            return
        nodes = self._nodes.all()
        self._profiles = {p.name: p for p in self._profiles_of.all()}
        self._by_mac = {n.mac: n for n in nodes}
        self._by_uuid = {n.uuid: n for n in nodes if n.uuid}
        self.reserved = {n.ip: n.mac for n in nodes if n.ip}
        self._at = now

    def get_node(self, mac: str) -> NodeSpec | None:
        self.refresh()
        return self._by_mac.get(mac)

    def node_by_uuid(self, uuid: str) -> NodeSpec | None:
        self.refresh()
        return self._by_uuid.get(uuid)

    def get_profile(self, name: str) -> ProfileSpec | None:
        self.refresh()
        return self._profiles.get(name)

    def reserved_map(self) -> dict[str, str]:
        self.refresh()
        return self.reserved


def _udp_socket(interface: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)  # absorb bursts (PXE storms)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)  # when each datagram arrived (STALE_AFTER)
        # No local copy of each broadcast reply (the kernel loops one back to our own
        # stack, for a port-68 socket this host never has): a clone and a softirq per reply.
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        sock.bind(("0.0.0.0", port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def ancillary(anc: list[tuple[int, int, bytes]]) -> tuple[int, str | None, float]:
    """(the interface index and its local address from IP_PKTINFO, the arrival time from
    SO_TIMESTAMP); 0 or None for what is missing."""
    ifindex, local, arrived = 0, None, 0.0
    for level, typ, val in anc:
        if level == socket.IPPROTO_IP and typ == IP_PKTINFO and len(val) >= _PKTINFO.size:
            ifindex, spec_dst, _ = _PKTINFO.unpack_from(val)
            local = socket.inet_ntoa(spec_dst) if spec_dst != bytes(4) else None
        elif level == socket.SOL_SOCKET and typ == SO_TIMESTAMP and len(val) >= _TIMEVAL.size:
            sec, usec = _TIMEVAL.unpack_from(val)
            arrived = sec + usec * 1e-6
    return ifindex, local, arrived


def dhcp_settings(config: Config, server_ip: str, netmask: str | None = None, cursor_seed: int = 0) -> DhcpSettings:
    """The core's plain settings from the config. `netmask` is the interface's: a subnet
    that names none and whose range is on the interface's network takes it; one behind a
    relay gets the core's derived mask."""
    d = config.dhcp
    local = ipaddress.IPv4Network(f"{server_ip}/{netmask}", strict=False) if netmask else None
    subnets = []
    for sc in d.subnets() if d.mode == "full" else []:
        lo, hi = sc.range_bounds()
        mask = sc.netmask or (local.netmask if local is not None and lo in local and hi in local else None)
        subnets.append(SubnetSettings(
            str(lo), str(hi), str(mask) if mask else None, str(sc.router) if sc.router else None,
            tuple(str(a) for a in sc.dns), sc.domain))
    # The one-range form stays DhcpSettings' own range, so a direct request on a link with no
    # subnet of its own is still served from it (DhcpCore._pick).
    top = subnets[0] if subnets and d.range else None
    return DhcpSettings(
        mode=d.mode, server_ip=server_ip,
        range_first=top.range_first if top else None, range_last=top.range_last if top else None,
        netmask=top.netmask if top else None, router=top.router if top else None,
        dns=top.dns if top else (), domain=top.domain if top else None,
        subnets=tuple(subnets[1:] if top else subnets),
        lease_time=d.lease_time, cursor_seed=cursor_seed, max_unknown=config.security.max_unknown_leases,
    )


class DhcpServer:
    """The running DHCP server; `close()` commits pending leases and stops."""

    def __init__(self, config: Config, booter: Booter, store: Store, events: EventLog, server_ip: str,
                 port: int, pxe_port: int, cluster: Cluster | None = None):
        self.config = config
        self.events = events
        self.cluster = cluster
        self.name = cluster.name if cluster else server_ip
        self.interface = config.network.interface
        self.nodes = _NodeSnapshot(store.nodes, store.profiles)
        # The same policy, reading nodes from the snapshot: no database read per packet.
        self.booter = booter.using(self.nodes, manifest_ttl=NODES_TTL)
        mask = interface_netmask(self.interface) if config.dhcp.mode == "full" else None
        full = config.dhcp.mode == "full"
        self.leases = LeaseCommitter(store.leases, sender=self.name, journal=full)
        self.core = DhcpCore(
            # Alone (SQLite), the search starts at the range's first address; several servers
            # on one database each start elsewhere, so their offers to new clients seldom meet.
            dhcp_settings(config, server_ip, mask, zlib.crc32(self.name.encode()) if store.shared else 0),
            self.booter.decide,
            self.nodes.reserved_map, leases=store.leases.load() if full else [],
        )
        if full and store.shared:
            # Other servers' binds reach this core within milliseconds (NOTIFY in their commit).
            self.leases.follow(cluster.listener if cluster is not None else None, self.core.learn)
        self._loop = asyncio.get_running_loop()
        self._counters: dict[tuple[str, str], Any] = {}
        self._anc: dict[int, list[tuple[int, int, bytes]]] = {0: []}  # ifindex -> IP_PKTINFO data to send with
        self._socks: dict[int, socket.socket] = {}  # logical port (67/4011) -> socket
        ports = {SERVER_PORT: port}
        if config.dhcp.mode == "proxy":
            ports[PXE_PORT] = pxe_port
        try:
            for logical, real in ports.items():
                sock = _udp_socket(self.interface, real)
                self._socks[logical] = sock
                self._loop.add_reader(sock.fileno(), self._readable, sock, logical)
        except OSError:
            self._close_sockets()
            raise
        self.ports = {logical: s.getsockname()[1] for logical, s in self._socks.items()}

    # -- receiving ---------------------------------------------------------
    def _count(self, kind: str, outcome: str) -> None:
        """metrics.DHCP_PACKETS[kind, outcome] += 1, with the labelled child looked up once."""
        c = self._counters.get((kind, outcome))
        if c is None:
            c = self._counters[(kind, outcome)] = metrics.DHCP_PACKETS.labels(kind, outcome)
        c.inc()

    def _readable(self, sock: socket.socket, logical: int) -> None:
        recvmsg, handle, now = sock.recvmsg, self.core.handle, time.time
        for _ in range(64):  # drain a burst, then let the loop breathe
            try:
                data, anc, _flags, src = recvmsg(4096, _ANC_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("dhcp: receive failed on port %d: %s", logical, e)
                return
            ifindex, local, arrived = ancillary(anc)
            t = now()
            if arrived and t - arrived > STALE_AFTER:
                self._count("stale", "dropped")
                metrics.dropped("dhcp", "stale")
                continue
            try:
                res = handle(data, src, logical, t, local)
            except Exception:  # a hostile packet never stops the server
                log.exception("dhcp: dropped a datagram from %s that broke the handler", src[0])
                self._count("error", "dropped")
                metrics.dropped("dhcp", "handler-error")
                continue
            self._count(res.kind, res.outcome)
            if res.outcome in ("dropped", "ignored"):
                metrics.dropped("dhcp", res.reason or res.outcome)
                if res.outcome == "dropped":
                    log.debug("dhcp: malformed datagram from %s:%d dropped: %s", src[0], src[1], res.reason)
            if res.needs_commit:  # the reply leaves once its lease change is durable
                self.leases.commit(res).add_done_callback(functools.partial(self._durable, res, ifindex))
            else:
                self._emit(res, ifindex)

    def _durable(self, res: Result, ifindex: int, fut: asyncio.Future[LeaseCommit]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # not durable: no reply (the committer said so); the client retries
        lost = fut.result().lost
        if lost and any(r.ip in lost for r in res.upserts):
            # Another server's client holds it (or this client holds another address):
            # the database said no, so this ACK never leaves; a NAK does.
            res = self.core.refused(res, fut.result().holders)
            metrics.DHCP_BINDS_REFUSED.inc()
        self._emit(res, ifindex)

    # -- sending -------------------------------------------------------------
    def _emit(self, res: Result, ifindex: int) -> None:
        anc = self._anc.get(ifindex)
        if anc is None:
            # ipi_spec_dst: replies leave from the server's own address even when it is a
            # secondary one on the interface (the server identifier inside says the same).
            src = socket.inet_aton(self.core.server_ip)
            anc = self._anc[ifindex] = [(socket.IPPROTO_IP, IP_PKTINFO, _PKTINFO.pack(ifindex, src, bytes(4)))]
        for s in res.sends:
            sock = self._socks.get(s.src_port) or self._socks[SERVER_PORT]
            host = BROADCAST if s.new_client else s.host
            try:
                sock.sendmsg([s.data], anc, 0, (host, s.port))
            except OSError as e:
                log.warning("dhcp: send to %s:%d failed: %s", host, s.port, e)
        for ev in res.events:
            self.events.add(ev.mac, ev.stage, ev.detail)
        if res.bound:
            ip, mac = res.bound
            self.events.bind(ip, mac, lease=self.core.mode == "full")

    # -- shutdown --------------------------------------------------------------
    def _close_sockets(self) -> None:
        for sock in self._socks.values():
            try:
                self._loop.remove_reader(sock.fileno())
            except (ValueError, RuntimeError):
                pass
            sock.close()
        self._socks.clear()

    async def close(self) -> None:
        for sock in self._socks.values():
            self._loop.remove_reader(sock.fileno())  # no new work; finish what is pending
        await self.leases.close()  # anything left: committed, then answered
        self._close_sockets()


async def start_dhcp(config: Config, booter: Booter, store: Store, events: EventLog, server_ip: str,
                     *, port: int = SERVER_PORT, pxe_port: int = PXE_PORT,
                     cluster: Cluster | None = None) -> DhcpServer:
    """Start answering on the configured interface; `port`/`pxe_port` exist for tests;
    `cluster`: the other servers on the database (their leases reach this core live)."""
    svc = DhcpServer(config, booter, store, events, server_ip, port, pxe_port, cluster)
    log.info("dhcp: %s mode on %s, ports %s", config.dhcp.mode, svc.interface,
             ", ".join(str(p) for p in svc.ports.values()))
    return svc
